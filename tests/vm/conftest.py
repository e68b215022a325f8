"""Fixtures shared by the VM tests: the offline stand-in of the Arch ISO, and the
unprivileged user (with the CLI installed for it) that the end-to-end tests run as."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests.standin.archive import ArchiveUnavailable, ensure_archive
from tests.standin.build import ensure_standin
from tests.standin.mirror import Mirror
from tests.vm.unprivileged import E2EUser, ensure_user, install_cli


@pytest.fixture(scope="session")
def standin_iso() -> pathlib.Path:
    """The stand-in ISO, from the cache or built on first use (needs root
    then; `python3 -m tests.standin.build` builds it ahead of time).
    PROVISION_ARCH_STANDIN_ISO names another one (e.g. a stand-in in the works)."""
    given = os.environ.get("PROVISION_ARCH_STANDIN_ISO")
    return pathlib.Path(given) if given else ensure_standin()


@pytest.fixture(scope="module")
def mirror() -> Iterator[Mirror]:
    """The stand-in archive (tests/standin/archive.py) served over HTTP on the host's loopback,
    which a guest reaches as 10.0.2.2; built on first use (as root)."""
    try:
        archive = ensure_archive()
    except ArchiveUnavailable as exc:
        pytest.skip(str(exc))
    with Mirror(archive) as served:
        yield served


@pytest.fixture(scope="session")
def user() -> E2EUser:
    if os.geteuid() != 0:
        pytest.skip("the end-to-end setup creates a user: run as root")
    return ensure_user()


@pytest.fixture(scope="session")
def cli(user: E2EUser) -> pathlib.Path:
    return install_cli()


@pytest.fixture(scope="module")
def workdir(user: E2EUser) -> Iterator[pathlib.Path]:
    """A directory of the user's, one per test module."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="provision-arch-e2e-", dir="/var/tmp"))
    os.chown(path, user.uid, user.gid)
    yield path
    # The tree holds files owned by the user's subordinate ids: remove it as root.
    shutil.rmtree(path, ignore_errors=True)

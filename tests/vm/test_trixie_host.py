"""The VM tier's core on another host's QEMU and virtiofsd: install, boot over 9p, boot over virtiofs.

Run by `make test-trixie-host` (tests/hosts/trixie.py) chrooted in a Debian 13 root, and
skipped anywhere else. The tests are test_e2e's and test_virtiofs's own, imported; only the
fixtures that reach the host differ: the root's own user (not provision-e2e), the CLI from
the root's venv, and the stand-in archive the host built (its cache key names the host's
Debian packages, which the root does not have).
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import report
from tests.standin.mirror import Mirror
from tests.vm.test_e2e import (  # noqa: F401  (collected here)
    Installed,
    install_as,
    test_boot_the_result_and_log_in,
    test_install_succeeds_with_one_qemu_and_every_step,
    test_ownership_lands_in_the_users_ids,
    test_password_set_from_the_hash_and_never_written_in_clear,
)
from tests.vm.test_virtiofs import (  # noqa: F401  (collected here)
    base,
    booting,
    test_boot_on_virtiofs_and_log_in,
    test_provision_arch_killed_takes_qemu_and_virtiofsd_along,
    test_qemu_killed_from_outside_ends_virtiofsd,
)
from tests.vm.unprivileged import TIMES, E2EUser, first_range

USER = "PROVISION_ARCH_HOST_USER"

pytestmark = [pytest.mark.vm, pytest.mark.skipif(USER not in os.environ, reason="run by make test-trixie-host")]


@pytest.fixture(scope="session")
def user() -> E2EUser:
    """The root's own test user, made by tests/hosts/trixie.py with its own subordinate ranges."""
    entry = pwd.getpwnam(os.environ[USER])
    name = entry.pw_name
    subuid, subgid = first_range(Path("/etc/subuid"), name), first_range(Path("/etc/subgid"), name)
    return E2EUser(name, entry.pw_uid, entry.pw_gid, subuid, subgid)


@pytest.fixture(scope="session")
def cli() -> Path:
    return Path(os.environ["PROVISION_ARCH_HOST_CLI"])


@pytest.fixture(scope="module")
def mirror() -> Iterator[Mirror]:
    with Mirror(Path(os.environ["PROVISION_ARCH_TRIXIE_ARCHIVE"])) as served:
        yield served


@pytest.fixture(scope="module")
def installed(user: E2EUser, cli: Path, workdir: Path, standin_iso: Path) -> Installed:
    """test_e2e's default install, beside test_virtiofs's box (./base) in the same directory.

    Its package cache ($XDG_CACHE_HOME/provision-arch/pkg) goes afterwards: the ISO's
    repository and the stand-in archive build packages of one name and version with different
    bytes (on Arch they are one file), and test_virtiofs's install would find a cached
    archlinux-keyring whose checksum is not its mirror's."""
    done = install_as(user, cli, workdir, standin_iso, "e2e-base")
    shutil.rmtree(workdir / "cache/provision-arch/pkg")
    return done


def test_zz_report_phase_times(request: pytest.FixtureRequest) -> None:
    report(request, "phase wall times (s)", TIMES)
    assert TIMES, "no phase ran"

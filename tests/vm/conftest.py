"""Fixtures shared by the VM tests: the offline stand-in of the Arch ISO, and an unprivileged
user with subordinate ids who runs the CLI, installed from this checkout."""

from __future__ import annotations

import hashlib
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.standin.build import ensure_standin

ROOT = Path(__file__).parents[2]
USER = "provision-e2e"
# One venv per checkout: worktrees on the same machine must not reinstall each other's CLI.
VENV = Path("/opt/provision-arch-e2e") / f"venv-{hashlib.sha256(str(ROOT.resolve()).encode()).hexdigest()[:12]}"
TIMES: dict[str, float] = {}  # phase -> seconds, printed by test_e2e


@pytest.fixture(scope="session")
def standin_iso() -> pathlib.Path:
    """The stand-in ISO, from the cache or built on first use (needs root
    then; `python3 -m tests.standin.build` builds it ahead of time).
    PROVISION_ARCH_STANDIN_ISO names another one (e.g. a stand-in in the works)."""
    given = os.environ.get("PROVISION_ARCH_STANDIN_ISO")
    return pathlib.Path(given) if given else ensure_standin()


@dataclass(frozen=True)
class E2EUser:
    name: str
    uid: int
    gid: int
    subuid: int
    subgid: int


def first_range(path: Path, user: E2EUser | str) -> int:
    name = user if isinstance(user, str) else user.name
    for line in path.read_text().splitlines():
        owner, start, count = line.split(":")
        if owner == name and int(count) >= 65536:
            return int(start)
    raise LookupError(f"no range for {name} in {path}")


@pytest.fixture(scope="module")
def user() -> E2EUser:
    if os.geteuid() != 0:
        pytest.skip("the end-to-end setup creates a user: run as root")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
    for kind, flag in (("subuid", "--add-subuids"), ("subgid", "--add-subgids")):
        try:
            first_range(Path("/etc") / kind, USER)
        except LookupError:
            subprocess.run(["usermod", flag, "300000-365535", USER], check=True)
    entry = pwd.getpwnam(USER)
    return E2EUser(
        USER, entry.pw_uid, entry.pw_gid, first_range(Path("/etc/subuid"), USER), first_range(Path("/etc/subgid"), USER)
    )


@pytest.fixture(scope="module")
def cli(user: E2EUser) -> Path:
    """The CLI installed from this checkout into a venv outside root's closed home."""
    started = time.monotonic()
    if not (VENV / "bin/python").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(VENV / "bin/pip"), "install", "-q", "--force-reinstall", "--no-deps", str(ROOT)], check=True, capture_output=True
    )
    subprocess.run([str(VENV / "bin/pip"), "install", "-q", str(ROOT)], check=True, capture_output=True)
    TIMES["install the CLI"] = time.monotonic() - started
    return VENV / "bin/provision-arch"


@pytest.fixture(scope="module")
def workdir(user: E2EUser) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="provision-arch-e2e-", dir="/var/tmp"))
    os.chown(path, user.uid, user.gid)
    yield path
    # The tree holds files owned by the user's subordinate ids: remove it as root.
    shutil.rmtree(path, ignore_errors=True)


def as_user(user: E2EUser, workdir: Path, argv: list[str]) -> list[str]:
    env = [
        f"HOME={workdir}",
        f"XDG_CACHE_HOME={workdir}/cache",
        "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG=C.UTF-8",
    ]
    return ["runuser", "-u", user.name, "--", "env", "-i", *env, *argv]

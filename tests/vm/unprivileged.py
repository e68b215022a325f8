"""The unprivileged user the VM tests run the CLI as, and the CLI installed for it.

As root, the setup creates the user with subuid/subgid ranges (what a user's machine has)
and installs the CLI from this checkout into a venv that user can read (root's home is
closed). ``tests/vm/conftest.py`` turns these into fixtures.
"""

from __future__ import annotations

import hashlib
import pwd
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from provisioner.workspace import Workspace

ROOT = Path(__file__).parents[2]
USER = "provision-e2e"
# One venv per checkout: several checkouts on one machine (worktrees) must not reinstall
# each other's CLI under a running test.
VENV = Path("/opt/provision-arch-e2e") / f"venv-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]}"
TIMES: dict[str, float] = {}  # phase -> seconds, printed by test_e2e


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


def ensure_user() -> E2EUser:
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


def install_cli() -> Path:
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


def user_workspace(target: Path, workdir: Path | None = None) -> Workspace:
    """The workspace the CLI, run by ``as_user`` with ``workdir`` (default: the target's parent)
    as its home, keeps for ``target``."""
    home = (workdir or target.parent) / ".local/state/provision-arch"
    return Workspace.of(target, home=home)


def as_user(user: E2EUser, workdir: Path, argv: list[str]) -> list[str]:
    env = [
        f"HOME={workdir}",
        f"XDG_CACHE_HOME={workdir}/cache",
        "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG=C.UTF-8",
    ]
    return ["runuser", "-u", user.name, "--", "env", "-i", *env, *argv]


def user_processes(uid: int, prefix: str) -> list[int]:
    """The pids of ``uid``'s processes whose name starts with ``prefix`` (e.g. qemu-system-x86)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if proc.stat().st_uid == uid and (proc / "comm").read_text().strip().startswith(prefix):
                found.append(int(proc.name))
        except OSError:
            continue
    return found

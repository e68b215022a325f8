"""The unprivileged user the VM tests run the CLI as, and the CLI installed for it.

As root, the setup creates the user with subuid/subgid ranges (what a user's machine has)
and installs the CLI from this checkout into a venv that user can read (root's home is
closed). ``tests/vm/conftest.py`` turns these into fixtures. Both run once per test process
and `make test` runs two (xdist): each takes a host-wide lock, and the CLI is reinstalled
only when this checkout's sources changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import pwd
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from provisioner.workspace import Workspace

ROOT = Path(__file__).parents[2]
USER = "provision-e2e"
# One venv per checkout: several checkouts on one machine (worktrees) must not reinstall
# each other's CLI under a running test.
SETUP = Path("/opt/provision-arch-e2e")
VENV = SETUP / f"venv-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]}"
STAMP = VENV / "installed-from"  # the sources_digest() of the last install
SOURCES = ("pyproject.toml", "provisioner", "templates")
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


@contextmanager
def setting_up() -> Iterator[None]:
    """Hold the host-wide lock of this setup (user and venvs): two test processes run at once."""
    SETUP.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(SETUP / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_user() -> E2EUser:
    with setting_up():
        return _ensure_user()


def _ensure_user() -> E2EUser:
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


def sources_digest() -> str:
    """What the CLI is installed from: every file of the package, its templates and metadata."""
    digest = hashlib.sha256()
    for name in SOURCES:
        top = ROOT / name
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        for path in sorted(files):
            digest.update(f"{path.relative_to(ROOT)}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def install_cli() -> Path:
    """The CLI installed from this checkout into a venv outside root's closed home; left as it
    is when it was installed from the same sources (another test process may be running it)."""
    started = time.monotonic()
    digest = sources_digest()
    with setting_up():
        if not (STAMP.exists() and STAMP.read_text() == digest):
            _install_cli()
            STAMP.write_text(digest)
    TIMES["install the CLI"] = time.monotonic() - started
    return VENV / "bin/provision-arch"


def _install_cli() -> None:
    STAMP.unlink(missing_ok=True)
    if not (VENV / "bin/python").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(VENV / "bin/pip"), "install", "-q", "--force-reinstall", "--no-deps", str(ROOT)], check=True, capture_output=True
    )
    subprocess.run([str(VENV / "bin/pip"), "install", "-q", str(ROOT)], check=True, capture_output=True)


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


def box_processes(user: E2EUser, base: Path) -> dict[int, str]:
    """The user's processes that belong to a boot of ``base``: the CLI and virtiofsd (they name
    it in their arguments), QEMU (it names the box's workspace, where the boot files are
    copied out of the tree) and the namespace holder (it names the box). pid -> command line."""
    marks = (str(base), str(user_workspace(base).root))
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if proc.stat().st_uid != user.uid:
                continue
            cmdline = (proc / "cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(mark in cmdline for mark in marks):
            found[int(proc.name)] = cmdline
    return found


def named(processes: dict[int, str], program: str) -> list[int]:
    return [pid for pid, cmdline in processes.items() if Path(cmdline.split()[0]).name == program]

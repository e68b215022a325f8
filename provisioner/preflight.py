"""Host checks before anything starts: each problem comes with the command that fixes it."""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from provisioner.config import Config
from provisioner.errors import HostError
from provisioner.qemu import QEMU
from provisioner.run import NotFound, run


@dataclass(frozen=True)
class Problem:
    message: str
    fix: str


Check = Callable[[], Iterator[Problem]]


def check_qemu() -> Iterator[Problem]:
    try:
        result = run([QEMU, "-device", "help"])
    except NotFound:
        yield Problem(f"{QEMU} is not installed", "sudo apt-get install qemu-system-x86  (Arch: pacman -S qemu-base)")
        return
    except subprocess.TimeoutExpired:
        yield Problem(f"{QEMU} -device help did not answer in 30 s", f"check that {QEMU} runs at all")
        return
    if "virtio-9p-pci" not in result.stdout + result.stderr:
        yield Problem(f"{QEMU} has no virtio-9p support", "install a QEMU built with virtfs, e.g. Debian's qemu-system-x86")


def check_user_namespace(user: str | None = None, etc: Path = Path("/etc")) -> Iterator[Problem]:
    """Not root: QEMU runs under ``unshare --map-auto --map-root-user``; all its parts must work."""
    user = user or getpass.getuser()
    help_text = ""
    try:
        help_text = run(["unshare", "--help"]).stdout
    except NotFound:
        yield Problem("unshare is not installed", "sudo apt-get install util-linux")
        return
    if "--map-auto" not in help_text:
        yield Problem("unshare has no --map-auto (util-linux older than 2.38)", "upgrade util-linux to 2.38 or newer")
        return
    for tool in ("newuidmap", "newgidmap"):
        try:
            run([tool])
        except NotFound:
            yield Problem(f"{tool} is not installed", "sudo apt-get install uidmap  (Arch: pacman -S shadow)")
            return
    uid = str(os.getuid())
    for kind in ("subuid", "subgid"):
        if not _has_range(etc / kind, user, uid):
            yield Problem(
                f"no {kind} range for user {user} in {etc / kind}",
                f"sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}",
            )
            return
    probe = run(["unshare", "--map-auto", "--map-root-user", "true"])
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["unknown error"])[-1]
        yield Problem(
            f"cannot create a user namespace: {reason}",
            "sudo sysctl kernel.unprivileged_userns_clone=1  (Ubuntu 24.04+: kernel.apparmor_restrict_unprivileged_userns=0)",
        )


def _has_range(path: Path, user: str, uid: str) -> bool:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, uid) and fields[2].isdigit() and int(fields[2]) > 1000:
            return True
    return False


def check_target(target: Path, force: bool) -> Iterator[Problem]:
    if target.exists() and not target.is_dir():
        yield Problem(f"{target} exists and is not a directory", "give a directory path as the target")
        return
    if target.is_dir():
        entries = [entry.name for entry in target.iterdir()]
        if entries and not force:
            yield Problem(
                f"{target} is not empty ({len(entries)} entries)",
                f"use an empty directory, or add --force to install over {target}",
            )
        if not os.access(target, os.W_OK | os.X_OK):
            yield Problem(f"{target} is not writable by {getpass.getuser()}", f"sudo chown {getpass.getuser()} {target}")
        return
    parent = _existing_parent(target)
    if not os.access(parent, os.W_OK | os.X_OK):
        yield Problem(f"cannot create {target}: {parent} is not writable", "choose a target under a directory you own")


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_iso(iso: Path) -> Iterator[Problem]:
    if not iso.is_file():
        yield Problem(f"ISO {iso} does not exist", "download archlinux-x86_64.iso and pass it with --iso PATH")
    elif not os.access(iso, os.R_OK):
        yield Problem(f"ISO {iso} is not readable", f"chmod a+r {iso}")


def check_installed(target: Path) -> Iterator[Problem]:
    for name in ("boot/vmlinuz-linux", "boot/initramfs-linux.img"):
        if not (target / name).is_file():
            yield Problem(
                f"{target / name} is missing: {target} is not an installed system", f"install first: provision-arch {target}"
            )


def is_root() -> bool:
    return os.geteuid() == 0


def host_checks() -> list[Check]:
    """The checks every QEMU start needs."""
    checks: list[Check] = [check_qemu]
    if not is_root():
        checks.append(check_user_namespace)
    return checks


def problems(checks: list[Check]) -> list[Problem]:
    return [problem for check in checks for problem in check()]


def check_host(cfg: Config) -> None:
    """Everything an install needs of the host; all problems at once, the first one's fix as the hint."""
    checks = [*host_checks(), lambda: check_target(cfg.target, cfg.force)]
    if cfg.iso is not None:
        iso = cfg.iso
        checks.append(lambda: check_iso(iso))
    found = problems(checks)
    if found:
        first, *others = found
        also = "".join(f"\nerror: {p.message}\n  hint: {p.fix}" for p in others)
        raise HostError(first.message + also, first.fix)

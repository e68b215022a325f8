"""Host checks: one list that both the install's preflight and ``provision-arch doctor`` run.

Each check yields problems, each problem with the command that fixes it. A blocking
problem stops an install (exit code 3); a warning is shown and the install goes on (e.g.
KVM that hangs: the install falls back to TCG).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pexpect

from provisioner.errors import HostError, UsageError
from provisioner.qemu import QEMU, Machine, cpu_has_virtualisation
from provisioner.run import PACKAGES, NotFound, run, sbin_program, wrap
from provisioner.tree import IN_ROOT, Tree, TreeError
from provisioner.virtiofs import INSTALL_HINT, Virtiofsd, find_virtiofsd
from provisioner.workspace import Workspace

KVM_PROBE = 20.0  # seconds for a KVM guest's kernel to speak; under working KVM it takes well under one
MIN_FREE = 2 << 30  # an Arch base with a kernel takes about 1.5 GiB
SYSCTL = Path("/proc/sys/kernel")
ETC = Path("/etc")
MOUNTINFO = Path("/proc/self/mountinfo")
# File systems without POSIX ownership and modes: a root file system cannot live there.
NO_OWNERSHIP = frozenset({"vfat", "msdos", "exfat", "ntfs", "ntfs3", "fuseblk", "hfsplus", "iso9660", "udf"})


@dataclass(frozen=True)
class Problem:
    message: str
    fix: str
    blocking: bool = True


@dataclass(frozen=True)
class Host:
    """What the checks look at: the target (when there is one), the user, where /etc is."""

    target: Path | None = None
    force: bool = False
    iso: Path | None = None
    cache: Path | None = None  # provision-arch's cache (cached ISO kernels for the KVM probe)
    user: str = field(default_factory=getpass.getuser)
    etc: Path = field(default_factory=lambda: ETC)
    root: bool = field(default_factory=lambda: os.geteuid() == 0)


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    run: Callable[[Host], Iterator[Problem]]
    applies: Callable[[Host], bool] = lambda host: True
    doctor_only: bool = False  # slow or informative: not part of every install's preflight


# -- the checks ----------------------------------------------------------------------------


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


def check_unshare() -> Iterator[Problem]:
    try:
        help_text = run(["unshare", "--help"]).stdout
    except NotFound:
        yield Problem("unshare is not installed", "sudo apt-get install util-linux")
        return
    if "--map-auto" not in help_text:
        yield Problem("unshare has no --map-auto (util-linux older than 2.38)", "upgrade util-linux to 2.38 or newer")


def check_uidmap() -> Iterator[Problem]:
    for tool in ("newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            yield Problem(f"{tool} is not installed", "sudo apt-get install uidmap  (Arch: pacman -S shadow)")
            return


def check_range(kind: str, user: str, etc: Path) -> Iterator[Problem]:
    if not _has_range(etc / kind, user, str(os.getuid())):
        flag = "--add-subuids" if kind == "subuid" else "--add-subgids"
        yield Problem(f"no {kind} range for user {user} in {etc / kind}", f"sudo usermod {flag} 100000-165535 {user}")


def _has_range(path: Path, user: str, uid: str) -> bool:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.strip().split(":")
        count = fields[2] if len(fields) == 3 else ""
        if fields[0] in (user, uid) and count.isascii() and count.isdigit() and int(count) > 1000:
            return True
    return False


def check_userns_allowed(sysctl: Path | None = None) -> Iterator[Problem]:
    """Create a user namespace for real; when that fails, name the kernel switch that forbids it."""
    sysctl = sysctl or SYSCTL
    try:
        probe = run(wrap(["true"], as_root=False))
    except NotFound:
        return  # check_unshare says so
    if probe.returncode == 0:
        return
    reason = (probe.stderr.strip().splitlines() or ["unknown error"])[-1]
    if _sysctl(sysctl / "apparmor_restrict_unprivileged_userns") == "1":
        fix = "sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0  (Ubuntu 24.04+; or an AppArmor profile for QEMU)"
    elif _sysctl(sysctl / "unprivileged_userns_clone") == "0":
        fix = "sudo sysctl kernel.unprivileged_userns_clone=1"
    else:
        fix = "check newuidmap/newgidmap (setuid root) and your subuid/subgid ranges"
    yield Problem(f"cannot create a user namespace: {reason}", fix)


def _sysctl(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def check_user_namespace(user: str | None = None, etc: Path = Path("/etc")) -> Iterator[Problem]:
    """Not root: QEMU runs under ``unshare --map-auto --map-root-user``; all its parts, first problem only."""
    user = user or getpass.getuser()
    for part in (check_unshare, check_uidmap, lambda: check_range("subuid", user, etc),
                 lambda: check_range("subgid", user, etc), check_userns_allowed):  # fmt: skip
        found = list(part())
        if found:
            yield found[0]
            return


def reachable_by_others(target: Path) -> bool:
    """Whether other users of the host can reach ``target``: every directory above it lets them through (o+x)."""
    path = _existing_parent(target.absolute().parent)
    return all(directory.stat().st_mode & stat.S_IXOTH for directory in [path, *path.parents])


def check_target(target: Path, force: bool, *, root: bool = False) -> Iterator[Problem]:
    workspace = Workspace.of(target)
    if workspace.held_by_another():
        yield Problem(*workspace.busy())
        return
    if target.is_symlink():
        yield Problem(f"{target} is a symbolic link", f"give the directory it points to: {target.resolve()}")
        return
    if target.exists() and not target.is_dir():
        yield Problem(f"{target} exists and is not a directory", "give a directory path as the target")
        return
    if root and reachable_by_others(target):
        # As root, the box's setuid-root files and device nodes are real on the host, and the
        # guest can make more whenever it runs: other users must not reach them.
        yield Problem(
            f"{target} is reachable by other users of this host, and as root the box's setuid files and device "
            "nodes are real there",
            f"put it under a directory closed to others (chmod 700 {_existing_parent(target.absolute().parent)}), "
            "or run provision-arch as your own user",
        )
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


def check_target_filesystem(target: Path, root: bool, mountinfo: Path | None = None) -> Iterator[Problem]:
    """The installed system needs file ownership: refuse vfat and friends, and prove chown works.

    A nosuid or nodev mount does not matter here: the guest kernel honours setuid bits it reads
    over 9p whatever the host's mount flags, and the box's /dev is the guest's devtmpfs.
    """
    where = _existing_dir(target)
    fstype, _ = mount_of(where, mountinfo)
    fix = "choose a target on a Linux file system such as ext4, xfs or btrfs"
    if fstype in NO_OWNERSHIP:
        yield Problem(f"{where} is on {fstype}, which cannot keep file ownership and modes", fix)
        return
    if target.is_dir() and os.access(target, os.W_OK | os.X_OK):
        # Probe inside the target only (nothing outside it is touched): guest root chowns files to
        # other ids, as root directly, else inside the user namespace QEMU runs in.
        with tempfile.NamedTemporaryFile(dir=target, prefix=".provision-arch-probe-") as probe:
            argv = ["chown", "-h", "1:1", probe.name]
            result = run(wrap(argv, as_root=root))
        if result.returncode != 0:
            yield Problem(f"{where} does not keep file ownership: {result.stderr.strip()}", fix)


def mount_of(path: Path, mountinfo: Path | None = None) -> tuple[str, set[str]]:
    """The file system type and mount options of the mount that holds ``path``."""
    mountinfo = mountinfo or MOUNTINFO
    best, found = "", ("", set[str]())
    resolved = str(path.resolve())
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        point = fields[4].replace("\\040", " ")
        sep = fields.index("-")
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, found = point, (fields[sep + 1], set(fields[5].split(",")))
    return found


def check_free_space(target: Path) -> Iterator[Problem]:
    where = _existing_dir(target)
    free = shutil.disk_usage(where).free
    if free < MIN_FREE:
        yield Problem(f"only {free / 2**30:.1f} GiB free at {where}; an install needs about 2 GiB", "free some space", False)


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _existing_dir(path: Path) -> Path:
    """The target if it is a directory, else the nearest existing directory above it."""
    path = path.absolute()
    while not path.is_dir():
        path = path.parent
    return path


def check_iso(iso: Path) -> Iterator[Problem]:
    if not iso.is_file():
        yield Problem(f"ISO {iso} does not exist", "download archlinux-x86_64.iso and pass it with --iso PATH")
    elif not os.access(iso, os.R_OK):
        yield Problem(f"ISO {iso} is not readable", f"chmod a+r {iso}")


def check_gpgv() -> Iterator[Problem]:
    if shutil.which("gpgv") is None:
        yield Problem("gpgv is not installed: ISO signatures cannot be checked", "sudo apt-get install gpgv")


def check_kvm(kernels: tuple[Path, ...] = ()) -> Iterator[Problem]:
    """KVM is only a speed-up: its absence is a warning, the install uses TCG.

    Where KVM looks usable, a guest is really started (bounded): the first kernel of
    ``kernels`` that exists is booted under KVM and must print its banner.
    """
    if not os.path.exists("/dev/kvm"):
        yield Problem("no /dev/kvm: installs run under TCG emulation (several times slower)", "enable KVM in the BIOS", False)
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        yield Problem(f"/dev/kvm is not usable by {getpass.getuser()}", f"sudo usermod -aG kvm {getpass.getuser()}", False)
    elif not cpu_has_virtualisation():
        yield Problem(
            "/dev/kvm exists but the CPU offers no VT-x/AMD-V (a VM without nested virtualisation): KVM guests hang, TCG is used",
            "enable nested virtualisation on the outer host, or accept TCG",
            False,
        )
    elif (kernel := next((k for k in kernels if k.is_file() and os.access(k, os.R_OK)), None)) and not kvm_guest_speaks(kernel):
        yield Problem(
            f"a KVM guest ({kernel}) printed nothing in {KVM_PROBE:.0f} s: KVM hangs here, installs fall back to TCG",
            "check the host's KVM (dmesg | grep -i kvm), or use --accel tcg",
            False,
        )


def kvm_guest_speaks(kernel: Path) -> bool:
    """Boot ``kernel`` under KVM on a serial console; True when it prints its banner in time."""
    argv = [QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256", "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
            "-display", "none", "-vga", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot", "-nodefaults"]  # fmt: skip
    with Machine(argv, shutdown_grace=0) as machine:
        child = machine.launch()
        try:
            child.expect("Linux version", timeout=KVM_PROBE)
        except (pexpect.TIMEOUT, pexpect.EOF):
            return False
        return True


def probe_kernels(cache: Path) -> tuple[Path, ...]:
    """Kernels a KVM probe can boot: the ISO kernels provision-arch cached, then the host's own."""
    return (*sorted(cache.glob("boot/*/vmlinuz-linux")), *sorted(Path("/boot").glob("vmlinuz-*"), reverse=True))


def check_virtiofs(find: Callable[[], Virtiofsd | None] = find_virtiofsd) -> Iterator[Problem]:
    """``boot --fs virtiofs`` needs a virtiofsd and a QEMU with vhost-user-fs; 9p needs neither,
    so a missing part is only a warning."""
    if find() is None:
        yield Problem("no virtiofsd: `provision-arch boot --fs virtiofs` cannot run (9p boots still work)", INSTALL_HINT, False)
        return
    with contextlib.suppress(NotFound, subprocess.TimeoutExpired):
        result = run([QEMU, "-device", "help"])
        if "vhost-user-fs-pci" not in result.stdout + result.stderr:
            yield Problem(f"{QEMU} has no vhost-user-fs-pci device: `boot --fs virtiofs` cannot run",
                          "install a QEMU built with vhost-user, e.g. Debian's qemu-system-x86", False)  # fmt: skip


def check_mkfs() -> Iterator[Problem]:
    """A throwaway boot's scratch disk is made by the host's mkfs.ext4 (in /usr/sbin, which an
    unprivileged user's PATH may leave out: it is looked for there too)."""
    if shutil.which(sbin_program("mkfs.ext4")) is None:
        yield Problem("no mkfs.ext4: `boot --ephemeral` and `run --ephemeral` cannot run (other boots still work)",
                      "install it: sudo apt-get install e2fsprogs", False)  # fmt: skip


def check_export() -> Iterator[Problem]:
    """What each format of `export` runs on the host (found in sbin too)."""
    from provisioner.disk import disk_tools  # noqa: PLC0415 - export checks a box with this module
    from provisioner.export import TOOLS, Format  # noqa: PLC0415

    needs = {**TOOLS, Format.RAW: disk_tools(qcow2=False), Format.QCOW2: disk_tools(qcow2=True)}
    for fmt, programs in needs.items():
        if missing := [name for name in programs if shutil.which(sbin_program(name)) is None]:
            packages = " ".join(sorted({PACKAGES.get(name, name) for name in missing}))
            message = f"no {', '.join(missing)}: `export --format {fmt}` cannot run"
            yield Problem(message, f"install: sudo apt-get install {packages}", False)


BOOT_FILES = ("boot/vmlinuz-linux", "boot/initramfs-linux.img")


def check_installed(target: Path) -> Iterator[Problem]:
    """The boot files are regular files, resolved inside the box as the box resolves them."""
    try:
        with Tree(target) as tree:
            missing = [name for name in BOOT_FILES if tree.regular(name, IN_ROOT) is None]
    except TreeError as exc:
        yield Problem(exc.message, exc.hint)
        return
    for name in missing:
        fix = f"install first: provision-arch {target}"
        yield Problem(f"{target / name} is missing: {target} is not an installed system", fix)


def is_root() -> bool:
    return os.geteuid() == 0


def _unprivileged(host: Host) -> bool:
    return not host.root


def _has_target(host: Host) -> bool:
    return host.target is not None


def _target(host: Host) -> Path:
    assert host.target is not None  # applies() said so
    return host.target


CHECKS: tuple[Check, ...] = (
    Check("qemu", "qemu-system-x86_64 with virtio-9p", lambda host: check_qemu()),
    Check("unshare", "unshare with --map-auto", lambda host: check_unshare(), _unprivileged),
    Check("uidmap", "newuidmap and newgidmap", lambda host: check_uidmap(), _unprivileged),
    Check("subuid", "a subuid range", lambda host: check_range("subuid", host.user, host.etc), _unprivileged),
    Check("subgid", "a subgid range", lambda host: check_range("subgid", host.user, host.etc), _unprivileged),
    Check("userns", "unprivileged user namespaces", lambda host: check_userns_allowed(), _unprivileged),
    Check("target", "the target directory", lambda host: check_target(_target(host), host.force, root=host.root), _has_target),
    Check(
        "target-fs",
        "file ownership on the target's file system",
        lambda host: check_target_filesystem(_target(host), host.root),
        _has_target,
    ),
    Check("free-space", "free space at the target", lambda host: check_free_space(_target(host)), _has_target),
    Check("iso", "the ISO file", lambda host: check_iso(host.iso) if host.iso else iter(()), lambda host: host.iso is not None),
    Check("gpgv", "gpgv for ISO signatures", lambda host: check_gpgv()),
    Check("kvm", "KVM acceleration", lambda host: check_kvm(probe_kernels(host.cache) if host.cache else ()), doctor_only=True),
    Check("virtiofs", "virtiofsd for boot --fs virtiofs", lambda host: check_virtiofs(), doctor_only=True),
    Check("mkfs", "mkfs.ext4 for --ephemeral", lambda host: check_mkfs(), doctor_only=True),
    Check("export", "the programs export runs", lambda host: check_export(), doctor_only=True),
)


def run_checks(host: Host, *, doctor: bool = False) -> Iterator[tuple[Check, list[Problem]]]:
    """Each check that applies to this host, with what it found (an empty list: fine)."""
    for check in CHECKS:
        if check.applies(host) and (doctor or not check.doctor_only):
            yield check, list(check.run(host))


def check_host(host: Host) -> list[Problem]:
    """The install's preflight: every blocking problem at once, the first one's fix as the hint; the warnings."""
    problems = [problem for _, found in run_checks(host) for problem in found]
    found = [problem for problem in problems if problem.blocking]
    if found:
        first, *others = found
        also = "".join(f"\nerror: {p.message}\n  hint: {p.fix}" for p in others)
        raise HostError(first.message + also, first.fix)
    return problems


def host_checks() -> list[Callable[[], Iterator[Problem]]]:
    """The checks every QEMU start needs (``provision-arch boot``)."""
    checks: list[Callable[[], Iterator[Problem]]] = [check_qemu]
    if not is_root():
        checks.append(check_user_namespace)
    return checks


def problems(checks: list[Callable[[], Iterator[Problem]]]) -> list[Problem]:
    return [problem for check in checks for problem in check()]


def check_box(target: Path, *, start: bool = True) -> None:
    """Before booting an installed box (``boot``, ``run``): it is one, a usage error otherwise;
    and, when QEMU is to start, this host can start it."""
    if missing := problems([lambda: check_installed(target)]):
        raise UsageError(missing[0].message, missing[0].fix)
    if start and (host := problems(host_checks())):
        raise HostError(host[0].message, host[0].fix)

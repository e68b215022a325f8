"""QEMU command lines as data, and the Machine that runs one and always ends it.

``install_argv`` and ``boot_argv`` are pure functions, unit-tested against the seed's
two commands. ``Machine`` spawns QEMU on a pseudo-terminal (its serial console), under
``unshare --map-auto --map-root-user`` when we are not root, and on exit waits a bounded
time for the guest to power off, then terminates it, then kills it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pexpect

from provisioner.config import Accel
from provisioner.errors import HostError
from provisioner.iso import BootFiles

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
MOUNT_TAG = "fsRoot"
CACHE_TAG = "pkgcache"  # the package cache, shared during the install
# The virtio transport caps msize at 512000 (the seed's 5000000 is silently that).
MSIZE = 512000
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
ROOT_APPEND = (
    f"root={MOUNT_TAG} rw rootfstype=9p rootflags=trans=virtio,version=9p2000.L,msize={MSIZE},cache=mmap,posixacl console=ttyS0"
)
VIRTIOFS_APPEND = f"root={MOUNT_TAG} rw rootfstype=virtiofs console=ttyS0"


@dataclass(frozen=True)
class Hardware:
    memory: int
    cpus: int
    accel: Accel  # KVM or TCG here: AUTO is resolved before argv is built


def qemu_value(path: Path) -> str:
    """A path inside a QEMU option value: commas are doubled."""
    return str(path).replace(",", ",,")


def _common(hw: Hardware, share: Path | None) -> list[str]:
    cpu = "host" if hw.accel is Accel.KVM else "max"
    return [
        QEMU,
        "-machine", "pc,dump-guest-core=off",
        "-accel", hw.accel.value,
        "-cpu", cpu,
        "-m", str(hw.memory),
        "-smp", str(hw.cpus),
        "-rtc", "base=utc",
        *(share_argv(MOUNT_TAG, share) if share else []),
        "-netdev", "user,id=net0",
        "-device", "virtio-net-pci,netdev=net0",
        "-display", "none",
        "-vga", "none",
        "-parallel", "none",
        "-sandbox", SANDBOX,
    ]  # fmt: skip


def share_argv(tag: str, path: Path) -> list[str]:
    """A host directory shared over virtio-9p; guest ownership passes through (into the subuid range)."""
    return [
        "-fsdev", f"local,security_model=passthrough,multidevs=remap,id=fsdev-{tag},path={qemu_value(path.resolve())}",
        "-device", f"virtio-9p-pci,id={tag},fsdev=fsdev-{tag},mount_tag={tag}",
    ]  # fmt: skip


def install_argv(
    hw: Hardware, iso: Path, boot: BootFiles, target: Path, *, mirror: str | None = None, package_cache: Path | None = None
) -> list[str]:
    """Boot the ISO's kernel directly with a serial console for the driver.

    No ``ip=dhcp`` (it switches archiso to PXE mode). Kernel messages stay on until the
    driver logs in (they explain a failed boot in the transcript); systemd's status lines
    would interleave with command output, so they are off. ``panic=-1`` with
    ``-no-reboot`` turns a guest panic into QEMU exiting, which the driver sees as EOF.
    """
    append = [
        *boot.kernel_args(),
        "console=ttyS0,115200",
        "systemd.show_status=false",
        "systemd.tty.term.console=dumb",
        "panic=-1",
    ]
    if mirror:
        append.append(f"mirror={mirror}")
    cache = [] if package_cache is None else share_argv(CACHE_TAG, package_cache)
    return [
        *_common(hw, target),
        *cache,
        "-kernel", str(boot.kernel),
        "-initrd", str(boot.initrd),
        "-append", " ".join(append),
        "-drive", f"file={qemu_value(iso.resolve())},media=cdrom,readonly=on,if=ide",
        "-chardev", "stdio,id=console,signal=off",
        "-serial", "chardev:console",
        "-monitor", "none",
        "-no-reboot",
    ]  # fmt: skip


def shared_memory_argv(memory: int) -> list[str]:
    """Guest memory that virtiofsd can map: vhost-user hands it over, so all of it must be
    shareable, one memfd backend as large as ``-m``, made the guest's only NUMA node."""
    return ["-object", f"memory-backend-memfd,id=mem,size={memory}M,share=on", "-numa", "node,memdev=mem"]


def virtiofs_argv(tag: str, socket: Path) -> list[str]:
    """A virtiofs device with mount tag ``tag``, served by the virtiofsd listening on ``socket``
    (needs ``shared_memory_argv``)."""
    return [
        "-chardev", f"socket,id=vfs-{tag},path={qemu_value(socket)}",
        "-device", f"vhost-user-fs-pci,chardev=vfs-{tag},tag={tag}",
    ]  # fmt: skip


def boot_argv(hw: Hardware, target: Path, virtiofs_socket: Path | None = None) -> list[str]:
    """The seed's second command: the installed system on its 9p root, or with
    ``virtiofs_socket`` on virtiofs (the virtiofsd listening there shares ``target``).

    The console is the user's terminal, multiplexed with the monitor: Ctrl-C goes to the
    guest, Ctrl-A X quits QEMU.
    """
    root = target.resolve()
    return [
        *_common(hw, None if virtiofs_socket else target),
        *([*shared_memory_argv(hw.memory), *virtiofs_argv(MOUNT_TAG, virtiofs_socket)] if virtiofs_socket else []),
        "-kernel", str(root / "boot/vmlinuz-linux"),
        "-initrd", str(root / "boot/initramfs-linux.img"),
        "-append", VIRTIOFS_APPEND if virtiofs_socket else ROOT_APPEND,
        "-chardev", "stdio,id=console,mux=on,signal=off",
        "-serial", "chardev:console",
        "-mon", "chardev=console,mode=readline",
        "-boot", "strict=on",
    ]  # fmt: skip


def wrap(argv: Sequence[str], *, as_root: bool) -> list[str]:
    """Run QEMU in a user namespace when we are not root.

    Guest root then writes files as the invoking user, other guest ids land in the
    user's subuid range, and passthrough's chown works without privileges.
    """
    if as_root:
        return list(argv)
    return ["unshare", "--map-auto", "--map-root-user", *argv]


def resolve_accel(accel: Accel) -> Accel:
    """AUTO: KVM when /dev/kvm is usable and the CPU offers virtualisation, else TCG."""
    if accel is not Accel.AUTO:
        return accel
    return Accel.KVM if kvm_usable() else Accel.TCG


def kvm_usable() -> bool:
    """/dev/kvm is ours to open and the CPU offers virtualisation (a guest may still hang)."""
    return os.access("/dev/kvm", os.R_OK | os.W_OK) and cpu_has_virtualisation()


def cpu_has_virtualisation(path: Path = Path("/proc/cpuinfo")) -> bool:
    """VT-x (vmx) or AMD-V (svm) among the CPU flags: without them a KVM guest cannot run."""
    try:
        with path.open(encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = line.split()
                    return "vmx" in flags or "svm" in flags
    except OSError:
        pass
    return False


def die_with_parent() -> None:
    """In the child before exec: if provision-arch dies (even by SIGKILL), the child (QEMU, a helper) gets SIGTERM."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class Machine:
    """One QEMU process whose serial console is a pexpect child; in the shape of QEMU's
    ``python/qemu/machine``.

    ``launch()`` starts the process and may be called once; ``shutdown()`` ends it and is
    safe to call any number of times; entering the context starts nothing, and leaving it
    always shuts down. So no code path can start a second QEMU by entering a context twice.
    """

    def __init__(self, argv: Sequence[str], logfile: object | None = None, shutdown_grace: float = 60.0) -> None:
        self.argv = list(argv)
        self.logfile = logfile
        self.shutdown_grace = shutdown_grace
        self._child: pexpect.spawn[str] | None = None
        self._launched = False

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.shutdown(hard=exc_type is not None)

    def launch(self) -> pexpect.spawn[str]:
        """Start QEMU; its console is the returned child. A second call is a bug."""
        if self._launched:
            raise RuntimeError("internal: Machine.launch() called twice")
        self._launched = True
        log.debug("+ %s", shlex.join(self.argv))
        try:
            self._child = pexpect.spawn(
                self.argv[0],
                self.argv[1:],
                encoding="utf-8",
                codec_errors="replace",
                timeout=None,
                dimensions=(50, 200),
                preexec_fn=die_with_parent,
            )
        except pexpect.ExceptionPexpect as exc:
            raise HostError(
                f"cannot start {self.argv[0]}: {exc}", "install it: apt-get install qemu-system-x86 util-linux uidmap"
            ) from exc
        if self.logfile is not None:
            self._child.logfile_read = self.logfile  # type: ignore[assignment]
        return self._child

    @property
    def child(self) -> pexpect.spawn[str]:
        if self._child is None:
            raise RuntimeError("internal: the machine was not launched")
        return self._child

    @property
    def alive(self) -> bool:
        return self._child is not None and self._child.isalive()

    def shutdown(self, *, hard: bool = False) -> None:
        """End QEMU: wait up to the grace for a guest that is powering off (unless ``hard``),
        then terminate, then kill; always reap. Idempotent."""
        child, self._child = self._child, None
        if child is None:
            return
        try:
            if not hard and child.isalive():
                with contextlib.suppress(pexpect.TIMEOUT):
                    child.expect(pexpect.EOF, timeout=self.shutdown_grace)
        finally:
            if child.isalive():
                # SIGHUP, SIGINT, then SIGKILL: QEMU ends cleanly on the first two.
                child.terminate(force=True)
            child.close(force=True)

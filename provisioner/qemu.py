"""QEMU command lines as data, and the Machine that runs one and always ends it.

``install_argv``, ``boot_argv`` and ``run_argv`` are pure functions, unit-tested against
the seed's two commands; ``Forward`` is a host port that QEMU's user network forwards to
the guest (``hostfwd``), on 127.0.0.1 unless an address is given. ``Machine`` spawns QEMU
on a pseudo-terminal (its serial console), under
``unshare --map-auto --map-root-user`` when we are not root, and on exit waits a bounded
time for the guest to power off, then terminates it, then kills it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import pexpect

from provisioner import ephemeral
from provisioner.attach import Forward, Share, mount_extra
from provisioner.config import Accel, MachineType
from provisioner.errors import HostError, UsageError
from provisioner.iso import BootFiles
from provisioner.run import die_with_parent

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
MOUNT_TAG = "fsRoot"
CACHE_TAG = "pkgcache"  # the package cache, shared during the install
STAGE_TAG = "pastage"  # the run's staged files, shared read-only during the install
# The box's kernel and initramfs, relative to its root.
BOX_KERNEL = "boot/vmlinuz-linux"
BOX_INITRD = "boot/initramfs-linux.img"
SCRATCH_SERIAL = "pa-scratch"  # the stream install's disk: /dev/disk/by-id/virtio-pa-scratch in the guest
STREAM_PORT = "org.provision-arch.stream"  # /dev/virtio-ports/<this> in the guest
KEYRING_PORT = "org.provision-arch.keyring"  # the live keyring's way to the host (see keyring.py)
# The virtio transport caps msize at 512000 (the seed's 5000000 is silently that).
MSIZE = 512000
COMMAND_LINE_SIZE = 2048  # x86's limit on the kernel command line, its final NUL included
ISO_DEVICE_WAIT = 60  # seconds the archiso hook polls for the ISO's device (its own default is 10)
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
NINEP_OPTIONS = ("trans=virtio", "version=9p2000.L", f"msize={MSIZE}", "cache=mmap", "posixacl")
ROOT_APPEND = f"root={MOUNT_TAG} rw rootfstype=9p rootflags={','.join(NINEP_OPTIONS)} console=ttyS0"
VIRTIOFS_APPEND = f"root={MOUNT_TAG} rw rootfstype=virtiofs console=ttyS0"


@dataclass(frozen=True)
class Hardware:
    memory: int
    cpus: int
    accel: Accel  # KVM or TCG here: AUTO is resolved before argv is built
    machine: MachineType = MachineType.PC


def netdev(forwards: Sequence[Forward] = ()) -> str:
    """QEMU's user network, with a hostfwd= per forwarded port."""
    return ",".join(["user,id=net0", *(forward.hostfwd() for forward in forwards)])


def qemu_value(path: Path) -> str:
    """A path inside a QEMU option value: commas are doubled."""
    return str(path).replace(",", ",,")


# Under TCG one host thread runs every vCPU: with a thread each (multi-threaded TCG), Linux
# 6.12 patching its own code while another vCPU runs it was seen to end in "Oops: int3" in
# sched_clock_cpu and a panic a few seconds into the boot (three times on 2026-12-02: a CI
# install, a bench boot, an exported disk), more often on a loaded host.
TCG = "tcg,thread=single"


def _common(hw: Hardware, share: Path | None, forwards: Sequence[Forward] = ()) -> list[str]:
    cpu = "host" if hw.accel is Accel.KVM else "max"
    return [
        QEMU,
        "-machine", f"{hw.machine.value},dump-guest-core=off",
        "-accel", TCG if hw.accel is Accel.TCG else hw.accel.value,
        "-cpu", cpu,
        "-m", str(hw.memory),
        "-smp", str(hw.cpus),
        "-rtc", "base=utc",
        *(share_argv(MOUNT_TAG, share) if share else []),
        "-netdev", netdev(forwards),
        "-device", "virtio-net-pci,netdev=net0",
        "-display", "none",
        "-vga", "none",
        "-parallel", "none",
        "-sandbox", SANDBOX,
    ]  # fmt: skip


def share_argv(tag: str, path: Path, *, readonly: bool = False) -> list[str]:
    """A host directory shared over virtio-9p; guest ownership passes through (into the subuid range)."""
    ro = ",readonly=on" if readonly else ""
    return [
        "-fsdev", f"local,security_model=passthrough,multidevs=remap{ro},id=fsdev-{tag},path={qemu_value(path.resolve())}",
        "-device", f"virtio-9p-pci,id={tag},fsdev=fsdev-{tag},mount_tag={tag}",
    ]  # fmt: skip


class KernelFiles(NamedTuple):
    """The box's kernel and initramfs as QEMU loads them: copies taken out of the tree (see boot.py)."""

    kernel: Path
    initrd: Path


@dataclass(frozen=True)
class Stream:
    """The stream install's devices: a scratch disk for the guest, a serial port to the host."""

    scratch: Path  # a sparse raw image the guest formats
    pipe: Path  # QEMU's chardev pipe: it writes what the guest sends to PIPE.out


def stream_argv(stream: Stream) -> list[str]:
    return [
        # cache=unsafe: the scratch disk is thrown away; its flushes would only cost time. The
        # serial names it in the guest (/dev/disk/by-id/virtio-SERIAL), whatever else is attached.
        "-drive", f"file={qemu_value(stream.scratch.resolve())},if=none,id=scratch,format=raw,cache=unsafe,discard=unmap",
        "-device", f"virtio-blk-pci,drive=scratch,serial={SCRATCH_SERIAL}",
    ]  # fmt: skip


def ports_argv(ports: Sequence[tuple[str, Path]]) -> list[str]:
    """Serial ports from the guest to the host, on one virtio-serial device: each ``(name,
    pipe)`` is /dev/virtio-ports/NAME in the guest, and QEMU writes what the guest sends
    there to PIPE.out (a FIFO the host reads)."""
    if not ports:
        return []
    argv = ["-device", "virtio-serial-pci"]
    for number, (name, pipe) in enumerate(ports):
        argv += [
            "-chardev", f"pipe,id=port{number},path={qemu_value(pipe.resolve())}",
            "-device", f"virtserialport,chardev=port{number},name={name}",
        ]  # fmt: skip
    return argv


# Units the live ISO enables (archiso's releng profile) that an install does without: each
# costs the guest's CPU while the keyring is made, and under TCG every second of it is the
# user's. sshdgenkeys makes three host keys (RSA 3072 among them) at every live boot;
# cloud-init runs its stages; the clock comes from -rtc, not NTP; pacman-init's keyring the
# install makes itself, faster, or once per ISO (keyring.py).
LIVE_MASKED = (
    "pacman-init.service",
    "sshd.service",
    "sshdgenkeys.service",
    "cloud-init-main.service",
    "cloud-init-local.service",
    "cloud-init-network.service",
    "cloud-config.service",
    "cloud-final.service",
    "ModemManager.service",
    "iwd.service",
    "systemd-timesyncd.service",
)


def install_argv(
    hw: Hardware,
    iso: Path,
    boot: BootFiles,
    target: Path,
    stage: Path,
    *,
    mirror: str | None = None,
    package_cache: Path | None = None,
    stream: Stream | None = None,
    keyring: Path | None = None,
) -> list[str]:
    """Boot the ISO's kernel directly with a serial console for the driver.

    ``stream`` adds the stream install's scratch disk and port, ``keyring`` the port the
    live keyring is sent to the host on (the pipe of each).

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
        # The real ISO enables systemd-time-wait-sync, which has no timeout: without NTP (an
        # air-gapped runner) time-sync.target, and what is ordered after it, never comes. The
        # clock already comes from -rtc base=utc.
        "systemd.mask=systemd-time-wait-sync.service",
        # Its machine id is "uninitialized": every live boot is a first boot, and systemd
        # 257-258's firstboot may prompt for a keymap on the console.
        "systemd.firstboot=off",
        *(f"systemd.mask={unit}" for unit in LIVE_MASKED),
        # The archiso hook polls 10 s for the ISO's device; a loaded TCG host can miss that.
        f"rootdelay={ISO_DEVICE_WAIT}",
        "panic=-1",
    ]
    if mirror:
        append.append(f"mirror={mirror}")
    cache = [] if package_cache is None else share_argv(CACHE_TAG, package_cache)
    return [
        *_common(hw, target if stream is None else None),
        *share_argv(STAGE_TAG, stage, readonly=True),
        *cache,
        *([] if stream is None else stream_argv(stream)),
        *ports_argv(([(STREAM_PORT, stream.pipe)] if stream else []) + ([(KEYRING_PORT, keyring)] if keyring else [])),
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


@dataclass(frozen=True)
class Served:
    """How a booted box's root and shares reach it: each by the socket of the virtiofsd that
    serves it, or by QEMU's own 9p (None); with ``throwaway``, the root read-only under an
    overlay."""

    root: Path | None = None
    shares: tuple[tuple[Share, Path | None], ...] = ()
    throwaway: ephemeral.Throwaway | None = None

    @property
    def virtiofs(self) -> bool:
        return self.root is not None or any(socket for _, socket in self.shares)


def _installed(
    hw: Hardware,
    target: Path,
    append: str,
    forwards: Sequence[Forward],
    *,
    served: Served,
    kernel: KernelFiles | None = None,
) -> list[str]:
    """The installed system's kernel and initramfs, booted on its root and with its shares, as
    ``served`` says (a virtiofsd shares ``target`` when ``served.root`` is its socket, not QEMU).
    Each share is device ``shareN``, mounted by the box's systemd (``attach.mount_extra``).

    ``kernel``: the copies QEMU loads; without it (``--print``) the paths in the tree."""
    root = target.resolve()
    kernel = kernel or KernelFiles(root / BOX_KERNEL, root / BOX_INITRD)
    devices = shared_memory_argv(hw.memory) if served.virtiofs else []
    if served.root is not None:
        devices += virtiofs_argv(MOUNT_TAG, served.root)
    elif served.throwaway is not None:
        devices += share_argv(MOUNT_TAG, target, readonly=True)
        devices += [
            "-drive", f"file={qemu_value(served.throwaway.disk)},if=none,id=throwaway,format=raw,discard=unmap",
            "-device", f"virtio-blk-pci,drive=throwaway,serial={ephemeral.SERIAL}",
        ]  # fmt: skip
        append = ephemeral.root_append(append, served.throwaway.init)
    mounts = []
    for i, (share, socket) in enumerate(served.shares):
        tag = f"share{i}"
        if socket is None:
            devices += share_argv(tag, share.host, readonly=share.readonly)
            mounts.append(mount_extra(share, tag, "9p", NINEP_OPTIONS))
        else:
            devices += virtiofs_argv(tag, socket)
            mounts.append(mount_extra(share, tag, "virtiofs", ()))
    command_line = " ".join([append, *mounts])
    if (size := len(command_line.encode())) >= COMMAND_LINE_SIZE:
        raise UsageError(
            f"the box's kernel command line would be {size} bytes; the kernel takes {COMMAND_LINE_SIZE - 1}",
            "use fewer shares, or shorter guest paths",
        )
    return [
        *_common(hw, None if served.root or served.throwaway else target, forwards),
        *devices,
        "-kernel", str(kernel.kernel),
        "-initrd", str(kernel.initrd),
        "-append", command_line,
        "-boot", "strict=on",
    ]  # fmt: skip


def boot_argv(
    hw: Hardware,
    target: Path,
    forwards: Sequence[Forward] = (),
    served: Served = Served(),
    kernel: KernelFiles | None = None,
) -> list[str]:
    """The seed's second command: the installed system on its 9p root, or on virtiofs when
    ``served.root`` is a virtiofsd's socket (that virtiofsd shares ``target``), with its shares.

    The console is the user's terminal, multiplexed with the monitor: Ctrl-C goes to the
    guest, Ctrl-A X quits QEMU.
    """
    return [
        *_installed(hw, target, VIRTIOFS_APPEND if served.root else ROOT_APPEND, forwards, served=served, kernel=kernel),
        "-chardev", "stdio,id=console,mux=on,signal=off",
        "-serial", "chardev:console",
        "-mon", "chardev=console,mode=readline",
    ]  # fmt: skip


def run_argv(
    hw: Hardware,
    target: Path,
    kernel_args: Sequence[str],
    forwards: Sequence[Forward] = (),
    *,
    served: Served = Served(),
    kernel: KernelFiles | None = None,
) -> list[str]:
    """The installed system, headless, for a program: its console is ours alone (no monitor),
    and a reboot or a panic ends QEMU instead of booting again."""
    append = " ".join([VIRTIOFS_APPEND if served.root else ROOT_APPEND, *kernel_args])
    return [
        *_installed(hw, target, append, forwards, served=served, kernel=kernel),
        "-chardev", "stdio,id=console,signal=off",
        "-serial", "chardev:console",
        "-monitor", "none",
        "-no-reboot",
    ]  # fmt: skip


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

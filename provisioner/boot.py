"""Boot an installed target: the QEMU command with the helpers it needs, as one context.

``boot_command`` copies the box's kernel and initramfs out of its tree (resolved inside
the tree as the box resolves them, never on the host's root: a planted
``boot/initramfs-linux.img -> ~/.ssh/id_ed25519`` must not load a host file into the
guest), starts the helpers (for virtiofs: a user namespace when we are not root, then
virtiofsd), yields the QEMU command line that uses them, and ends them in reverse order
when the context ends. The caller runs QEMU inside it, so QEMU always ends first,
and no helper outlives the boot (mkosi's way: the helpers are context managers in one
ExitStack with the VM).
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from provisioner.attach import Share
from provisioner.config import BootConfig, RootFs
from provisioner.qemu import BOX_INITRD, BOX_KERNEL, Hardware, KernelFiles, Served, boot_argv, resolve_accel
from provisioner.run import wrap
from provisioner.tree import IN_ROOT, Tree
from provisioner.virtiofs import nofile_limit, require_virtiofsd, start_virtiofsd, user_namespace, virtiofsd_argv
from provisioner.workspace import Workspace, remove

# What --print shows in place of the socket a real boot creates.
SOCKET_PLACEHOLDER = Path("SOCKET")


@contextmanager
def kernel_files(target: Path) -> Iterator[KernelFiles]:
    """The box's kernel and initramfs, copied into its workspace for one boot and removed after it."""
    workspace = Workspace.of(target)
    workspace.create()
    workspace.boot.mkdir(mode=0o700, exist_ok=True)
    where = Path(tempfile.mkdtemp(prefix="boot-", dir=workspace.boot))
    try:
        yield copy_kernel(target, where)
    finally:
        shutil.rmtree(where, ignore_errors=True)


def printed_kernel_files(target: Path) -> KernelFiles:
    """For ``--print``: the box's kernel and initramfs, copied into its workspace where they stay
    (until the next ``--print``), so that the printed command loads nothing from the tree."""
    workspace = Workspace.of(target)
    workspace.create()
    remove(workspace.printed_boot)
    workspace.printed_boot.mkdir(mode=0o700)
    return copy_kernel(target, workspace.printed_boot)


def copy_kernel(target: Path, where: Path) -> KernelFiles:
    """The box's kernel and initramfs copied into ``where``, resolved inside the box as it would."""
    with Tree(target) as tree:
        return KernelFiles(
            tree.copy_out(BOX_KERNEL, where / "vmlinuz-linux", IN_ROOT),
            tree.copy_out(BOX_INITRD, where / "initramfs-linux.img", IN_ROOT),
        )


def over_virtiofs(share: Share, fs: RootFs) -> bool:
    """A share goes over virtiofs with a virtiofs root, unless it is read-only: QEMU's 9p
    enforces that on the host (``readonly=on``), which not every virtiofsd can."""
    return fs is RootFs.VIRTIOFS and not share.readonly


@contextmanager
def served(target: Path, settings: BootConfig, *, as_root: bool, placeholder: bool = False) -> Iterator[tuple[list[str], Served]]:
    """The argv prefix QEMU runs behind and how the root and shares reach the box, with the
    helpers that serve them (for virtiofs: a user namespace when we are not root, then a
    virtiofsd each) running until the context ends. ``placeholder``: start nothing, name
    ``SOCKET`` (for ``--print``)."""
    with ExitStack() as helpers:
        shares = settings.shares
        if settings.fs is RootFs.NINEP:
            yield wrap([], as_root=as_root), Served(shares=tuple((share, None) for share in shares))
            return
        daemon = require_virtiofsd()
        if placeholder:
            sockets = [SOCKET_PLACEHOLDER] * (1 + len(shares))
            yield wrap([], as_root=as_root), _served(settings, iter(sockets))
            return
        # QEMU joins virtiofsd's namespace rather than making its own: one mapping, processes
        # to end, and guest ids land in the same subuid range through all.
        enter = [] if as_root else helpers.enter_context(user_namespace())
        root = helpers.enter_context(start_virtiofsd(daemon, target, enter))
        for_shares = [
            helpers.enter_context(start_virtiofsd(daemon, share.host, enter, cache="auto"))
            for share in shares
            if over_virtiofs(share, settings.fs)
        ]
        yield enter, _served(settings, iter([root, *for_shares]))


def _served(settings: BootConfig, sockets: Iterator[Path]) -> Served:
    root = next(sockets) if settings.fs is RootFs.VIRTIOFS else None
    return Served(root, tuple((share, next(sockets) if over_virtiofs(share, settings.fs) else None) for share in settings.shares))


def hardware(settings: BootConfig) -> Hardware:
    return Hardware(memory=settings.memory, cpus=settings.cpus, accel=resolve_accel(settings.accel), machine=settings.machine)


@contextmanager
def boot_command(target: Path, settings: BootConfig, *, as_root: bool) -> Iterator[list[str]]:
    """The QEMU command that boots ``target`` as ``settings`` say; its helpers run until the context ends."""
    with kernel_files(target) as kernel, served(target, settings, as_root=as_root) as (prefix, how):
        yield [*prefix, *boot_argv(hardware(settings), target, settings.all_forwards, how, kernel=kernel)]


def describe(target: Path, settings: BootConfig, *, as_root: bool) -> str:
    """What ``boot_command`` would run, for ``--print``; starts nothing (the boot files are
    copied, as for a boot)."""
    daemon = require_virtiofsd() if settings.fs is RootFs.VIRTIOFS else None
    kernel = printed_kernel_files(target)
    with served(target, settings, as_root=as_root, placeholder=True) as (prefix, how):
        argv = [*prefix, *boot_argv(hardware(settings), target, settings.all_forwards, how, kernel=kernel)]
    if daemon is None:
        return shlex.join(argv)
    where = "" if as_root else ", in the user namespace QEMU runs in"
    lines = [f"# virtiofsd, given a listening socket {SOCKET_PLACEHOLDER} as descriptor 3{where}, one per virtiofs device:"]
    if how.root is not None:
        lines.append(f"# {shlex.join(virtiofsd_argv(daemon, target, 3, nofile_limit()))}")
    lines += [
        f"# {shlex.join(virtiofsd_argv(daemon, share.host, 3, nofile_limit(), 'auto'))}" for share, socket in how.shares if socket
    ]
    return "\n".join([*lines, shlex.join(argv)])

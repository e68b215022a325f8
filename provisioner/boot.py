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
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from enum import StrEnum
from pathlib import Path

from provisioner.qemu import BOX_INITRD, BOX_KERNEL, Forward, Hardware, KernelFiles, boot_argv
from provisioner.run import wrap
from provisioner.tree import IN_ROOT, Tree
from provisioner.virtiofs import nofile_limit, require_virtiofsd, start_virtiofsd, user_namespace, virtiofsd_argv
from provisioner.workspace import Workspace, remove

# What --print shows in place of the socket a real boot creates.
SOCKET_PLACEHOLDER = Path("SOCKET")


class RootFs(StrEnum):
    NINEP = "9p"  # QEMU's own 9p server: nothing else to run
    VIRTIOFS = "virtiofs"  # virtiofsd: faster, one more process


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


@contextmanager
def boot_command(
    target: Path, hw: Hardware, fs: RootFs, *, as_root: bool, forwards: Sequence[Forward] = ()
) -> Iterator[list[str]]:
    """The QEMU command that boots ``target`` on ``fs``; its helpers run until the context ends."""
    with ExitStack() as helpers:
        kernel = helpers.enter_context(kernel_files(target))
        if fs is RootFs.NINEP:
            yield wrap(boot_argv(hw, target, forwards, kernel=kernel), as_root=as_root)
            return
        daemon = require_virtiofsd()
        # QEMU joins virtiofsd's namespace rather than making its own: one mapping, one
        # process to end, and guest ids land in the same subuid range through both.
        enter = [] if as_root else helpers.enter_context(user_namespace())
        socket = helpers.enter_context(start_virtiofsd(daemon, target, enter))
        yield [*enter, *boot_argv(hw, target, forwards, virtiofs_socket=socket, kernel=kernel)]


def describe(target: Path, hw: Hardware, fs: RootFs, *, as_root: bool, forwards: Sequence[Forward] = ()) -> str:
    """What ``boot_command`` would run, for ``--print``; starts nothing (the boot files are
    copied, as for a boot)."""
    daemon = require_virtiofsd() if fs is RootFs.VIRTIOFS else None
    kernel = printed_kernel_files(target)
    if daemon is None:
        return shlex.join(wrap(boot_argv(hw, target, forwards, kernel=kernel), as_root=as_root))
    argv = virtiofsd_argv(daemon, target, 3, nofile_limit())
    where = "" if as_root else ", in the user namespace QEMU runs in"
    return (
        f"# virtiofsd, given the listening socket {SOCKET_PLACEHOLDER} as descriptor 3{where}:\n"
        f"# {shlex.join(argv)}\n"
        + shlex.join(wrap(boot_argv(hw, target, forwards, virtiofs_socket=SOCKET_PLACEHOLDER, kernel=kernel), as_root=as_root))
    )

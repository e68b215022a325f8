"""Boot an installed target: the QEMU command with the helpers it needs, as one context.

``boot_command`` copies the box's kernel and initramfs out of its tree (resolved inside
the tree as the box resolves them, never on the host's root: a planted
``boot/initramfs-linux.img -> ~/.ssh/id_ed25519`` must not load a host file into the
guest), starts the helpers (for virtiofs: a user namespace when we are not root, then
virtiofsd), yields the QEMU command line that uses them, and ends them in reverse order
when the context ends. The caller runs QEMU inside it, so QEMU always ends first,
and no helper outlives the boot (mkosi's way: the helpers are context managers in one
ExitStack with the VM).

What a boot needs inside the box's tree (``run``'s command, a throwaway boot's init) goes
in a directory of its own, ``RUN_DIR/ID`` (``boot_dir``), made without following links and
removed afterwards; a throwaway boot's scratch disk (``throwaway_layer``) lives in the
workspace. Shares and forwards are ``attach``'s; ``served`` says how each reaches the box.
"""

from __future__ import annotations

import secrets
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from provisioner import ephemeral
from provisioner.attach import Share
from provisioner.config import Accel, BootConfig, RootFs
from provisioner.ephemeral import Throwaway
from provisioner.qemu import BOX_INITRD, BOX_KERNEL, Hardware, KernelFiles, Served, boot_argv, resolve_accel
from provisioner.run import wrap
from provisioner.tree import IN_ROOT, Tree, TreeError
from provisioner.virtiofs import nofile_limit, require_virtiofsd, start_virtiofsd, user_namespace, virtiofsd_argv
from provisioner.workspace import Workspace, remove

RUN_DIR = PurePosixPath(".provision-arch-run")  # in the box's root: a directory per boot that needs one
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


@dataclass(frozen=True)
class BootDir:
    """This boot's own directory in the box's tree (``RUN_DIR/ID``): what the box runs from the
    kernel command line (``run``'s command, a throwaway boot's init)."""

    tree: Tree
    path: PurePosixPath

    def write(self, name: str, text: str) -> PurePosixPath:
        """A new executable file in it; its path in the box."""
        self.tree.write(self.path / name, text.encode(), 0o755)
        return PurePosixPath("/") / self.path / name


@contextmanager
def boot_dir(target: Path, ident: str, *, shared: bool) -> Iterator[BootDir]:
    """Make ``RUN_DIR/ident`` in the tree, without following any link, and remove it (and
    RUN_DIR when no other boot uses it) afterwards. A boot that holds the box alone first
    removes what killed boots left there, or what the box put there; a throwaway boot
    (``shared``) leaves the others' directories alone."""
    with Tree(target) as tree:
        if not shared or not _is_directory(tree, RUN_DIR):
            tree.remove(RUN_DIR)  # a throwaway boot removes only what no other boot can be using
        for attempt in range(5):  # another throwaway boot may remove an empty RUN_DIR meanwhile
            try:
                if not tree.exists(RUN_DIR):
                    tree.mkdir(RUN_DIR, 0o700)
                tree.mkdir(RUN_DIR / ident, 0o700)
                break
            except TreeError:
                if attempt == 4:
                    raise
        try:
            yield BootDir(tree, RUN_DIR / ident)
        finally:
            tree.remove(RUN_DIR / ident)
            tree.rmdir(RUN_DIR)


def _is_directory(tree: Tree, path: PurePosixPath) -> bool:
    """A real directory, reached without links (what another boot's files would be in)."""
    try:
        tree.listdir(path)
    except OSError:
        return False
    return True


@contextmanager
def throwaway_layer(target: Path, settings: BootConfig, files: BootDir, ident: str) -> Iterator[Throwaway | None]:
    """For ``--ephemeral``: the init in ``files`` and the scratch disk in the workspace (removed
    when the context ends); None for a boot that writes the tree."""
    if not settings.ephemeral:
        yield None
        return
    init = files.write("init", ephemeral.init_script())
    where = Workspace.of(target).throwaway(ident)
    where.mkdir(mode=0o700, parents=True)
    disk = where / "disk.img"
    try:
        ephemeral.make_scratch(disk)
        yield Throwaway(disk, init)
    finally:
        disk.unlink(missing_ok=True)


def over_virtiofs(share: Share, fs: RootFs) -> bool:
    """A share goes over virtiofs with a virtiofs root, unless it is read-only: QEMU's 9p
    enforces that on the host (``readonly=on``), which not every virtiofsd can."""
    return fs is RootFs.VIRTIOFS and not share.readonly


@contextmanager
def served(
    target: Path, settings: BootConfig, *, as_root: bool, placeholder: bool = False, throwaway: Throwaway | None = None
) -> Iterator[tuple[list[str], Served]]:
    """The argv prefix QEMU runs behind and how the root and shares reach the box, with the
    helpers that serve them (for virtiofs: a user namespace when we are not root, then a
    virtiofsd each) running until the context ends. ``placeholder``: start nothing, name
    ``SOCKET`` (for ``--print``). ``throwaway``: the root read-only under that layer (9p only)."""
    with ExitStack() as helpers:
        shares = settings.shares
        if settings.fs is RootFs.NINEP:
            yield wrap([], as_root=as_root), Served(shares=tuple((share, None) for share in shares), throwaway=throwaway)
            return
        daemon = require_virtiofsd()
        if placeholder:
            sockets = [SOCKET_PLACEHOLDER] * (1 + len(shares))
            yield wrap([], as_root=as_root), _served(settings, iter(sockets))
            return
        # QEMU joins virtiofsd's namespace rather than making its own: one mapping, processes
        # to end, and guest ids land in the same subuid range through all.
        enter = [] if as_root else helpers.enter_context(user_namespace(target))
        root = helpers.enter_context(start_virtiofsd(daemon, target, enter))
        for_shares = [
            helpers.enter_context(start_virtiofsd(daemon, share.host, enter))
            for share in shares
            if over_virtiofs(share, settings.fs)
        ]
        yield enter, _served(settings, iter([root, *for_shares]))


def _served(settings: BootConfig, sockets: Iterator[Path]) -> Served:
    root = next(sockets) if settings.fs is RootFs.VIRTIOFS else None
    return Served(root, tuple((share, next(sockets) if over_virtiofs(share, settings.fs) else None) for share in settings.shares))


def hardware(settings: BootConfig, accel: Accel | None = None) -> Hardware:
    """The machine ``settings`` ask for, under ``accel`` (default: theirs, resolved)."""
    return Hardware(settings.memory, settings.cpus, accel or resolve_accel(settings.accel), settings.machine)


@contextmanager
def boot_command(target: Path, settings: BootConfig, *, as_root: bool) -> Iterator[list[str]]:
    """The QEMU command that boots ``target`` as ``settings`` say; its helpers (and a throwaway
    boot's layer) last until the context ends."""
    with ExitStack() as stack:
        kernel = stack.enter_context(kernel_files(target))
        layer = None
        if settings.ephemeral:
            ident = secrets.token_hex(8)
            layer = stack.enter_context(
                throwaway_layer(target, settings, stack.enter_context(boot_dir(target, ident, shared=True)), ident)
            )
        prefix, how = stack.enter_context(served(target, settings, as_root=as_root, throwaway=layer))
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

"""Host-side access to a box's tree, which the guest controls.

Everything under the target can be written by the guest's root — package scriptlets,
config commands, a dev box's users — while it runs and between runs, so a path under the
target is never handed to ``open()`` on the host: a planted ``boot/initramfs-linux.img ->
~/.ssh/id_ed25519`` would be followed. Every host-side open, write and delete under the
target goes through this module, relative to a descriptor of the target and without
following links:

- ``BENEATH``: no symbolic link is followed at all and nothing outside the target is
  reached (``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``); what the host
  writes or deletes there.
- ``IN_ROOT``: links are followed as the box itself would follow them, with the target as
  ``/`` (``RESOLVE_IN_ROOT``): the boot files, which a box may well keep as links.

Kernels before 5.6 have no ``openat2``; there both modes walk the path one component at a
time with ``O_NOFOLLOW``, so a link anywhere is refused instead of resolved.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntFlag
from pathlib import Path, PurePosixPath

from provisioner.errors import ExitCode, ProvisionError
from provisioner.run import run, wrap
from provisioner.workspace import create_private

SYS_OPENAT2 = 437  # the same number on every architecture (the syscall table was unified in 5.6)


class Resolve(IntFlag):
    NO_MAGICLINKS = 0x02
    NO_SYMLINKS = 0x04
    BENEATH = 0x08
    IN_ROOT = 0x10


BENEATH = Resolve.BENEATH | Resolve.NO_SYMLINKS | Resolve.NO_MAGICLINKS
IN_ROOT = Resolve.IN_ROOT | Resolve.NO_MAGICLINKS


class TreeError(ProvisionError):
    """A path in the box's tree is not what the host may use: a link, not a regular file, missing."""

    exit_code = ExitCode.USAGE


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_openat2: dict[str, bool] = {}  # "works": whether this kernel has it, once known


def openat(dirfd: int, path: PurePosixPath | str, flags: int, mode: int = 0, resolve: Resolve = BENEATH) -> int:
    """Open ``path`` relative to ``dirfd`` under ``resolve``'s rules; a descriptor or OSError.

    ELOOP or EXDEV mean that a link was in the way (or the path left the tree)."""
    name = str(path).lstrip("/") or "."
    flags |= os.O_CLOEXEC
    works = _openat2.get("works")
    if works is not False:
        how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, int(resolve))
        fd = _libc.syscall(SYS_OPENAT2, dirfd, os.fsencode(name), ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            _openat2["works"] = True
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EPERM) or works:
            raise OSError(err, os.strerror(err), name)
        _openat2["works"] = False  # an old kernel, or a seccomp filter that does not know the call
    return _walk(dirfd, name, flags, mode)


def _walk(dirfd: int, name: str, flags: int, mode: int) -> int:
    """openat2's refusal of every link, by hand: one component at a time, each with O_NOFOLLOW."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.EXDEV, "a '..' component", name)
    current = os.dup(dirfd)
    try:
        for part in parts[:-1]:
            following = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            os.close(current)
            current = following
        return os.open(parts[-1] if parts else ".", flags | os.O_NOFOLLOW, mode, dir_fd=current)
    finally:
        os.close(current)


@contextmanager
def opened(dirfd: int, path: PurePosixPath | str, flags: int, mode: int = 0, resolve: Resolve = BENEATH) -> Iterator[int]:
    fd = openat(dirfd, path, flags, mode, resolve)
    try:
        yield fd
    finally:
        os.close(fd)


class Tree:
    """A box's tree on the host, held by a descriptor taken once; ``target`` must not be a link."""

    def __init__(self, target: Path) -> None:
        self.target = target
        try:
            self.fd = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise TreeError(
                f"cannot use {target} as a box: {exc.strerror}", "give the directory itself, not a link to it"
            ) from exc

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _error(self, path: PurePosixPath | str, exc: OSError, what: str) -> TreeError:
        where = f"{self.target}/{str(path).lstrip('/')}"
        if exc.errno in (errno.ELOOP, errno.EXDEV):
            return TreeError(f"{where} is reached through a link, which the host does not follow", f"{what} must be real")
        return TreeError(f"cannot use {where}: {exc.strerror}", what)

    def _open_regular(self, path: PurePosixPath | str, resolve: Resolve) -> int:
        """A readable descriptor of a regular file. The entry is first opened with ``O_PATH``,
        which opens nothing: a FIFO or a device node the guest put there (as root, a real
        one: the host's watchdog, a tape) is refused before anything is opened for reading."""
        with opened(self.fd, path, os.O_PATH, resolve=resolve) as handle:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                raise TreeError(f"{self.target}/{str(path).lstrip('/')} is not a regular file", "is it an installed box?")
            return os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)

    def regular(self, path: PurePosixPath | str, resolve: Resolve = BENEATH) -> os.stat_result | None:
        """The status of ``path`` if it is a regular file (resolved by ``resolve``), else None."""
        try:
            with opened(self.fd, path, os.O_PATH, resolve=resolve) as handle:
                status = os.fstat(handle)
        except OSError:
            return None
        return status if stat.S_ISREG(status.st_mode) else None

    def exists(self, path: PurePosixPath | str) -> bool:
        """Whether ``path`` exists, as an entry of its own (a link counts; nothing is followed)."""
        try:
            parent, name = self._parent_of(path)
        except OSError:
            return False  # its directory is missing, or reached through a link
        try:
            os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            return False
        finally:
            os.close(parent)
        return True

    def read(self, path: PurePosixPath | str, limit: int, resolve: Resolve = BENEATH) -> bytes:
        """A regular file's bytes, at most ``limit`` of them (TreeError otherwise)."""
        try:
            with os.fdopen(self._open_regular(path, resolve), "rb") as handle:
                if os.fstat(handle.fileno()).st_size > limit:
                    where = f"{self.target}/{str(path).lstrip('/')}"
                    raise TreeError(f"{where} is larger than {limit} bytes", "is it an installed box?")
                return handle.read(limit + 1)[:limit]
        except OSError as exc:
            raise self._error(path, exc, "is it an installed box?") from exc

    def copy_out(self, path: PurePosixPath | str, dest: Path, resolve: Resolve = BENEATH, *, limit: int | None = None) -> Path:
        """Copy a regular file of the box to ``dest`` on the host (created 0600, never through a
        link). A file larger than ``limit`` bytes is refused before anything is written."""
        try:
            with os.fdopen(self._open_regular(path, resolve), "rb") as source:
                size = os.fstat(source.fileno()).st_size
                if limit is not None and size > limit:
                    where = f"{self.target}/{str(path).lstrip('/')}"
                    raise TreeError(f"{where} is larger than {limit} bytes", "is it an installed box?")
                with os.fdopen(create_private(dest), "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
        except OSError as exc:
            raise self._error(path, exc, "is it an installed box?") from exc
        return dest

    def _parent_of(self, path: PurePosixPath | str) -> tuple[int, str]:
        relative = PurePosixPath(str(path).lstrip("/"))
        if not relative.name or relative.name == "..":
            raise TreeError(f"internal: {path!r} names no entry", "this is a bug in provision-arch")
        parent = openat(self.fd, relative.parent, os.O_PATH | os.O_DIRECTORY)
        return parent, relative.name

    def write(self, path: PurePosixPath | str, data: bytes, mode: int) -> None:
        """Create a new file (its parent must exist, reached without links); never overwrites."""
        try:
            parent, name = self._parent_of(path)
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
            finally:
                os.close(parent)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                os.fchmod(handle.fileno(), mode)
        except OSError as exc:
            raise self._error(path, exc, "remove what is in the way in the box") from exc

    def mkdir(self, path: PurePosixPath | str, mode: int = 0o755) -> None:
        try:
            parent, name = self._parent_of(path)
            try:
                os.mkdir(name, mode, dir_fd=parent)
            finally:
                os.close(parent)
        except OSError as exc:
            raise self._error(path, exc, "remove what is in the way in the box") from exc

    def remove(self, path: PurePosixPath | str) -> None:
        """Remove an entry of the tree — a file, a link (not what it points to) or a directory
        tree — without following any link (shutil.rmtree with a directory descriptor is safe
        against links swapped in while it works). Missing is fine."""
        try:
            parent, name = self._parent_of(path)
        except OSError:
            return  # its parent is gone, or is a link: then so is the entry, as far as we are concerned
        try:
            try:
                status = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISDIR(status.st_mode):
                shutil.rmtree(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)
        except OSError as exc:
            raise self._error(path, exc, "remove it by hand") from exc
        finally:
            os.close(parent)

    def rmdir(self, path: PurePosixPath | str) -> None:
        """Remove a directory of the tree if it is empty (another boot may just have put an
        entry in it: then it stays). Missing is fine."""
        try:
            parent, name = self._parent_of(path)
        except OSError:
            return
        try:
            os.rmdir(name, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
                raise self._error(path, exc, "remove it by hand") from exc
        finally:
            os.close(parent)

    def listdir(self, path: PurePosixPath | str) -> list[str]:
        """The names in a directory of the tree (reached without links); OSError if it is none."""
        fd = openat(self.fd, path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def regular_text(self, path: PurePosixPath | str, limit: int) -> str | None:
        """A regular file's text (reached without links, at most ``limit`` bytes), or None."""
        try:
            return self.read(path, limit).decode("utf-8", errors="replace")
        except TreeError:
            return None

    def entries(self) -> list[str]:
        """The names at the top of the tree."""
        fd = openat(self.fd, ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def clear(self) -> None:
        """Remove everything in the tree, keeping the directory itself."""
        for name in self.entries():
            self.remove(name)

    def merge(self, source: str) -> None:
        """Move the tree in the top-level directory ``source`` over the rest of the tree, then
        remove ``source``: what both hold as real directories is merged, anything else of the
        old tree in the way (a file, a link, a directory where the new tree has a file) is
        replaced, and what only the old tree holds stays (a user's files, on --force)."""
        old = openat(self.fd, ".", os.O_RDONLY | os.O_DIRECTORY)
        new = openat(self.fd, source, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _merge(new, old, skip=source)
        finally:
            os.close(new)
            os.close(old)
        self.remove(source)


def _merge(new: int, old: int, skip: str = "") -> None:
    for name in os.listdir(new):
        if name == skip:
            continue
        here = os.stat(name, dir_fd=new, follow_symlinks=False)
        try:
            there = os.stat(name, dir_fd=old, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(name, name, src_dir_fd=new, dst_dir_fd=old)
            continue
        if stat.S_ISDIR(here.st_mode) and stat.S_ISDIR(there.st_mode):
            inner_new = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=new)
            inner_old = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=old)
            try:
                _merge(inner_new, inner_old)
                os.chmod(inner_old, stat.S_IMODE(here.st_mode))
                os.chown(inner_old, here.st_uid, here.st_gid)
            finally:
                os.close(inner_new)
                os.close(inner_old)
            continue
        if stat.S_ISDIR(there.st_mode):
            shutil.rmtree(name, dir_fd=old)
        elif stat.S_ISDIR(here.st_mode):
            os.unlink(name, dir_fd=old)  # a file or a link where the new tree has a directory
        os.rename(name, name, src_dir_fd=new, dst_dir_fd=old)  # replaces a file or a link, never follows it


ACTIONS = ("merge", "remove")


def as_guest_root(action: str, target: Path, name: str, *, as_root: bool) -> None:
    """``Tree(target).merge(name)`` or ``.remove(name)`` with the rights of the box's root.

    A box's files belong to ids of the user's subordinate range (a dev user's 0700 home, say),
    which the user cannot enter or change on the host; in the user namespace QEMU uses, the
    user is their root. So unprivileged, the work runs in such a namespace (this module as a
    program, given the paths again: it opens them as above, without following links)."""
    if as_root:
        with Tree(target) as tree:
            getattr(tree, action)(name)
        return
    # -P: the current directory (perhaps the box's own root, with a planted provisioner/) is
    # not put first on the module path.
    argv = wrap([sys.executable, "-P", "-m", "provisioner.tree", action, str(target), name], as_root=False)
    result = run(argv, timeout=3600)
    if result.returncode != 0:
        said = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise TreeError(f"could not {action} {target / name} as the box's root: {said}", "see the message; --force starts over")


def main(argv: list[str]) -> int:
    """``python -m provisioner.tree merge|remove TARGET NAME`` (see ``as_guest_root``)."""
    action, target, name = argv
    if action not in ACTIONS:
        print(f"unknown action {action!r}", file=sys.stderr)
        return 2
    try:
        with Tree(Path(target)) as tree:
            getattr(tree, action)(name)
    except (OSError, TreeError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Unpack the guest's stream into the target without letting the guest steer the host's writes.

The stream install's archive was written by the guest's root, and the guest is not trusted:
its package scriptlets and the user's config commands ran as root there. So the archive is
read twice on the host before GNU tar writes anything, from one open handle of a file only
the host can write:

1. ``scan`` walks it with Python's tarfile and refuses, naming the member, anything that
   could put a file anywhere but below the target: absolute names, ``..`` components, empty
   names or names with NUL, a name given twice, a member below another member that is not a
   directory (a symlink the archive makes, before or after, included: a symlink itself is
   fine wherever it points, only passing through one is not), hard links whose target is
   absolute, has ``..``, or is not an earlier regular file of the archive, and member types
   other than regular file, directory, symlink, hard link and FIFO (character and block
   devices only when running as root: in a user namespace ``mknod`` fails anyway, and a
   clear refusal beats tar's error). It also bounds the size, and refuses a truncated or
   corrupt archive, or one without its end-of-archive blocks.
2. GNU tar lists the same bytes (``tar -tv``, while tarfile reads), and every line must say
   what tarfile read: the same type, name and link target, in the same order. Two parsers that agree leave no
   room for a header that means one thing to the check and another to the extractor.

Only then does GNU tar extract, reading that same handle (rewound) on its stdin, with its
working directory set to a descriptor of the target opened with ``O_NOFOLLOW`` (checked to
be an empty directory), so no path is resolved twice. The target must be empty: there is no
link in it the archive did not make, and every link the archive makes is already known not
to be passed through. Any output on tar's stderr (a lost xattr, say) fails like a bad status,
except time stamp warnings (``EXTRACT``). The archive itself is opened once, without
following a link, and must be a regular file; tarfile never reads past its end (``Clamped``).
When not root it runs under ``unshare --map-auto --map-root-user``, so the guest's owners
land in the user's subordinate ids as they would on the 9p path. ``checked_ahead`` splits the
two halves in time: the stream install checks the archive (whole, in a file only the host
writes) while the guest powers off, and extracts once QEMU has ended.

With ``consume`` (the stream install's), the extraction gives the archive's blocks back to the
host's disk as tar reads them (``fallocate`` punching holes behind it, every PUNCH_EVERY
bytes): the tree grows while the archive shrinks, so the unpack needs room for the tree and
PUNCH_EVERY more, not for two copies of it. The archive is of no use after an unpack anyway:
an interrupted one means installing again (``state.plan``).

Setuid and setgid files are kept: an Arch tree needs them (``sudo``, ``su``, ``passwd``,
``unix_chkpwd``). They are counted in the ``Summary``. Unprivileged, the box's root is the
invoking user on the host, so a setuid-root file of the box is setuid to that user for anyone
on the host who can reach it (an install says so when the finished box is reachable by
others, and as root refuses such a target: see docs/trust.md). As root they are real
setuid-root binaries on the host, as after debootstrap, and device nodes are real too (they
are extracted only as root).
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import re
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from provisioner.errors import ExitCode, ProvisionError
from provisioner.run import die_with_parent, require, wrap

# GNU tar, told to keep everything an installed system relies on (the same as stream.TAR_KEEP,
# repeated here so this module stands alone): numeric owners, ACLs, and all xattrs (without
# --xattrs-include it restores only user.*, losing file capabilities in security.capability).
TAR_KEEP = ("--numeric-owner", "--acls", "--xattrs", "--xattrs-include=*")
# Directories get their modes and times once their contents are in. Time stamp warnings (a
# file dated in the future, which a guest clock a second ahead of the host's produces) are the
# one kind of warning that does not fail the unpack: nothing is lost or misplaced by them.
EXTRACT = ("--delay-directory-restore", "--warning=no-timestamp")
TAR_TIMEOUT = 3600.0
HINT = "the guest sent an archive the host will not unpack; nothing was written into the target"
# Contiguous files (type 7) are left out: GNU tar never writes them and warns when it reads one.
REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.GNUTYPE_SPARSE)
DEVICES = (tarfile.CHRTYPE, tarfile.BLKTYPE)
ALLOWED = (*REGULAR, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, *DEVICES)
# The type letter GNU tar's verbose listing shows for each member type.
LETTERS: dict[bytes, str] = {
    **dict.fromkeys(REGULAR, "-"),
    tarfile.DIRTYPE: "d",
    tarfile.SYMTYPE: "l",
    tarfile.LNKTYPE: "h",
    tarfile.FIFOTYPE: "p",
    tarfile.CHRTYPE: "c",
    tarfile.BLKTYPE: "b",
}
# mode, uid/gid, size (or major,minor), date, time, then the name as the rest of the line.
LISTED = re.compile(r"(\S)\S* +\S+ +\S+ \S+ \S+ (.*)")
SHOWN_MAX = 160
PUNCH_EVERY = 64 << 20  # a consumed archive's blocks go back to the disk in steps of this many bytes
CHUNK = 1 << 20  # what the extraction's feed reads and writes at a time
# fallocate(2)'s mode: free the range, keep the file's size (linux/falloc.h).
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


class UnpackError(ProvisionError):
    """The stream was refused (before anything was written) or tar failed (the message then says
    the target may hold part of the tree)."""

    exit_code = ExitCode.STEP


@dataclass(frozen=True)
class Summary:
    """What a checked archive holds."""

    entries: int  # members, the target's own entry (``./``) included
    bytes: int  # the regular files' sizes, sparse files at their full length
    setuid: int  # regular files with the setuid or setgid bit (kept; see the module's docstring)
    devices: int = 0  # character and block devices (only ever accepted as root)


def shown(name: str) -> str:
    """A guest-chosen name or text, safe for a terminal: quoted, ASCII, control bytes escaped, cut short."""
    text = ascii(name)
    return text if len(text) <= SHOWN_MAX else text[: SHOWN_MAX - 1] + "…"


def refuse(name: str, problem: str) -> UnpackError:
    return UnpackError(f"the stream is refused: member {shown(name)} {problem}", HINT)


def truncated(detail: str) -> UnpackError:
    return UnpackError(f"the stream is truncated or not a tar ({detail})", HINT)


def parts(name: str) -> tuple[str, ...]:
    """A relative member name's components, without empty and ``.`` ones (``./a//b/`` is ``a``, ``b``)."""
    return tuple(part for part in name.split("/") if part not in ("", "."))


def name_problem(name: str) -> str | None:
    """What is wrong with a name the archive gives (a member's or a hard link's target), as a noun phrase."""
    if not name:
        return "an empty name"
    if "\x00" in name:
        return "a name with a NUL byte"
    if name.startswith("/"):
        return "an absolute name"
    if ".." in parts(name):
        return "a name with a '..' component"
    if name.rstrip("/").endswith("/."):
        return "a name ending in '.'"
    return None


def scan(handle: BinaryIO, *, as_root: bool, limit: int) -> Summary:
    """Read the whole archive from ``handle`` (from its start) and refuse anything unsafe; see the module's docstring."""
    members = read_members(handle, limit=limit)
    return check_members(members, as_root=as_root, limit=limit)


class Clamped(io.RawIOBase):
    """``handle`` for tarfile, whose reads never ask for more than the file holds: a pax header
    claiming to be 64 GiB long would otherwise have tarfile allocate that much before reading."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        super().__init__()
        self.handle, self.size = handle, size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self.size - self.handle.tell())
        return self.handle.read(left if n is None or n < 0 else min(n, left))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()


def read_members(handle: BinaryIO, *, limit: int, stop: threading.Event | None = None) -> list[tarfile.TarInfo]:
    """Every member tarfile reads in ``handle``, which must end with tar's end-of-archive blocks
    (an UnpackError once ``stop`` is set)."""
    size = os.fstat(handle.fileno()).st_size
    if size > limit:
        raise UnpackError(f"the stream is refused: the archive is {size} bytes, over the limit of {limit}", HINT)
    handle.seek(0)
    members: list[tarfile.TarInfo] = []
    try:
        with tarfile.open(fileobj=Clamped(handle, size), mode="r:", encoding="utf-8", errors="surrogateescape") as archive:
            while (member := archive.next()) is not None:
                if stop is not None and stop.is_set():
                    raise UnpackError("the check of the stream was stopped", "the install ended before the unpack")
                members.append(member)
                if archive.pax_headers:
                    raise refuse(member.name, "follows a global pax header (GNU tar -c writes none)")
            end = archive.offset
    except UnpackError:
        raise
    except (tarfile.TarError, EOFError, ValueError, OverflowError, UnicodeError, MemoryError) as exc:
        raise truncated(str(exc) or type(exc).__name__) from exc
    except OSError as exc:  # tarfile seeking to where a corrupt header (a negative size) points
        raise truncated(f"{exc.strerror or exc} while reading it") from exc
    if not members:
        raise truncated("no members")
    handle.seek(end)
    if handle.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
        raise truncated("no end-of-archive blocks")
    return members


def check_member(member: tarfile.TarInfo, kinds: dict[tuple[str, ...], bytes], *, as_root: bool) -> tuple[str, ...]:
    """Refuse ``member`` if unsafe on its own or given the earlier members' ``kinds``; its name's components."""
    name = member.name
    if problem := name_problem(name):
        raise refuse(name, f"has {problem}")
    components = parts(name)
    if components in kinds:
        raise refuse(name, "appears twice in the archive")
    if member.type not in ALLOWED:
        raise refuse(name, f"has a member type that is not allowed ({shown(member.type.decode('latin-1'))})")
    if member.size < 0 or member.uid < 0 or member.gid < 0 or member.mtime < 0:
        raise refuse(name, "has a negative size, owner or time")
    if member.type in DEVICES and not as_root:
        raise refuse(name, "is a device node, which only a root install may create (in a user namespace mknod fails)")
    if not components and member.type != tarfile.DIRTYPE:
        raise refuse(name, "names the target itself but is not a directory")
    if not components and member.mode & 0o022:  # tar would chmod the target so that others could write into it
        raise refuse(name, f"would make the target writable by group or others (mode {member.mode:04o})")
    if member.type == tarfile.LNKTYPE:
        if problem := name_problem(member.linkname):
            raise refuse(name, f"is a hard link to {shown(member.linkname)}, {problem}")
        if kinds.get(parts(member.linkname)) not in REGULAR:
            raise refuse(name, f"is a hard link to {shown(member.linkname)}, not to an earlier regular file of the archive")
    return components


def check_members(members: Sequence[tarfile.TarInfo], *, as_root: bool, limit: int) -> Summary:
    """Refuse the first unsafe member (see the module's docstring); the Summary of a safe list."""
    kinds: dict[tuple[str, ...], bytes] = {}  # components → member type
    total = setuid = devices = 0
    for member in members:
        kinds[check_member(member, kinds, as_root=as_root)] = member.type
        if member.type in REGULAR:
            total += member.size
            setuid += bool(member.mode & (stat.S_ISUID | stat.S_ISGID))
            if total > limit:
                raise refuse(member.name, f"brings the unpacked size to {total} bytes, over the limit of {limit}")
        devices += member.type in DEVICES
    # No member may lie below one that is not a directory: a symlink the archive makes (before
    # or after) would be followed, anything else fails half-way. Hard link targets are members.
    for components in kinds:
        for depth in range(len(components)):
            above = kinds.get(components[:depth])
            if above is not None and above != tarfile.DIRTYPE:
                what = "symlink" if above == tarfile.SYMTYPE else "non-directory"
                raise refuse("/".join(components), f"lies below the archive's {what} {shown('/'.join(components[:depth]))}")
    return Summary(entries=len(members), bytes=total, setuid=setuid, devices=devices)


def escaped(name: str) -> str:
    """``name`` as GNU tar lists it with ``--quoting-style=escape`` in the C locale."""
    out: list[str] = []
    for byte in name.encode("utf-8", "surrogateescape"):
        char = chr(byte)
        if char == "\\":
            out.append("\\\\")
        elif char in ESCAPES:
            out.append(ESCAPES[char])
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def listed(member: tarfile.TarInfo) -> tuple[str, str]:
    """The type letter and the name part of GNU tar's verbose listing line for ``member``."""
    text = escaped(member.name)
    if member.type == tarfile.SYMTYPE:
        text += " -> " + escaped(member.linkname)
    elif member.type == tarfile.LNKTYPE:
        text += " link to " + escaped(member.linkname)
    return LETTERS[member.type], text


def agree(members: Sequence[tarfile.TarInfo], listing: str) -> None:
    """Refuse unless GNU tar's verbose listing names exactly ``members``, in order, with their types and targets."""
    lines = listing.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(members):
        raise UnpackError(
            f"the stream is refused: GNU tar reads {len(lines)} members where Python's tarfile reads {len(members)}", HINT
        )
    for member, line in zip(members, lines, strict=True):
        letter, text = listed(member)
        match = LISTED.fullmatch(line)
        seen = match.group(2) if match else ""
        if member.type == tarfile.DIRTYPE:  # tarfile drops a directory's trailing slashes, but not from a pax path
            seen, text = seen.rstrip("/"), text.rstrip("/")
        if match is None or match.group(1) != letter or seen != text:
            raise refuse(member.name, f"reads differently to GNU tar ({shown(line)})")


def unpack(archive: Path, target: Path, *, as_root: bool, limit: int, consume: bool = False) -> Summary:
    """Check ``archive`` (``scan``, then GNU tar's own listing) and extract it into ``target``, an empty directory.

    ``archive`` is opened once, without following a link, and must be a regular file; see
    ``unpack_from`` for the rest. ``consume``: free its blocks as tar reads them (see the module's docstring).
    """
    with open_archive(archive, consume=consume) as handle:
        return unpack_from(handle, target, as_root=as_root, limit=limit, consume=consume)


@contextmanager
def checked_ahead(archive: Path, *, as_root: bool, limit: int, consume: bool = False) -> Iterator[Callable[[Path], Summary]]:
    """``unpack`` in two halves: ``archive`` is opened and checked in a thread from now on,
    while the caller goes on (a stream install: while the guest powers off), and the function
    yielded waits for that check, then extracts into the target it is given; the Summary.

    A refusal or an error of the check is raised by that function, as ``unpack`` would raise
    it. Leaving the context stops a check still running (at its next member) and closes the
    archive; nothing is extracted but by the function."""
    stop = threading.Event()
    opened: list[BinaryIO] = []

    def check_it() -> Summary:
        opened.append(open_archive(archive, consume=consume))
        return check(opened[0], as_root=as_root, limit=limit, stop=stop)

    def extract_it(target: Path) -> Summary:
        summary = checking.result()
        extract(opened[0], target, as_root=as_root, consume=consume)
        return summary

    try:
        with ThreadPoolExecutor(1, "unpack-check") as pool:
            checking = pool.submit(check_it)
            try:
                yield extract_it
            finally:
                stop.set()
    finally:
        for handle in opened:
            handle.close()


def open_archive(archive: Path, *, consume: bool) -> BinaryIO:
    """``archive`` opened without following a link (read-write if it is to be ``consume``d); it must be a regular file."""
    try:
        fd = os.open(archive, (os.O_RDWR if consume else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnpackError(f"cannot open the stream {archive}: {exc.strerror or exc}", "it must be a regular file") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnpackError(f"the stream {archive} is not a regular file", "it must be a regular file only the host writes")
    return os.fdopen(fd, "rb")


def unpack_from(handle: BinaryIO, target: Path, *, as_root: bool, limit: int, consume: bool = False) -> Summary:
    """``unpack`` from an open handle of the archive (a regular file), e.g. the one its hash was read from.

    ``as_root`` extracts as the calling root; otherwise inside ``unshare --map-auto
    --map-root-user``. Raises UnpackError, having written nothing, when the archive is refused
    or the target is not an empty directory; on a failure of tar itself the target may hold
    part of the tree (the message says so).
    """
    summary = check(handle, as_root=as_root, limit=limit)
    extract(handle, target, as_root=as_root, consume=consume)
    return summary


def check(handle: BinaryIO, *, as_root: bool, limit: int, stop: threading.Event | None = None) -> Summary:
    """The archive's Summary once both readings of it (see the module's docstring) found it safe; UnpackError if not.

    ``stop``: once set, the reading ends at the next member with an UnpackError."""
    # GNU tar lists while tarfile reads: the same file through a second open of it (its own
    # offset; /proc's link is to this inode, no path is resolved again).
    second = os.open(f"/proc/self/fd/{handle.fileno()}", os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(second, "rb") as other, ThreadPoolExecutor(1, "unpack-listing") as pool:
        listed = pool.submit(tar, ["-t", "-v", *TAR_KEEP, "--quoting-style=escape", "-f", "-"], other, None, userns=False)
        members = read_members(handle, limit=limit, stop=stop)
        summary = check_members(members, as_root=as_root, limit=limit)
        agree(members, listed.result())
    return summary


def extract(handle: BinaryIO, target: Path, *, as_root: bool, consume: bool) -> None:
    """GNU tar extracts the archive, which ``check`` found safe, into ``target`` (an empty directory)."""
    directory = open_target(target)
    try:
        tar(["-x", "-p", *TAR_KEEP, *EXTRACT, "-f", "-"], handle, directory, userns=not as_root, consume=consume)
    finally:
        os.close(directory)


def open_target(target: Path) -> int:
    """A descriptor of ``target``, which must be an empty directory reached without following a link at its end."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnpackError(
            f"cannot unpack into {target}: {exc.strerror or exc} (it must be an empty directory, not a symlink)",
            "the host's target must be a plain empty directory when the unpack starts",
        ) from exc
    try:
        entries = os.listdir(fd)
    except OSError as exc:
        os.close(fd)
        raise UnpackError(f"cannot read the directory {target}: {exc.strerror or exc}", "check its permissions") from exc
    if entries:
        os.close(fd)
        raise UnpackError(
            f"cannot unpack into {target}: it is not empty (it holds {shown(sorted(entries)[0])})",
            "the stream is unpacked only into an empty directory, so that no link in it predates the archive",
        )
    return fd


def tar(args: Sequence[str], handle: BinaryIO, cwd: int | None, *, userns: bool, consume: bool = False) -> str:
    """Run GNU tar with ``args``, reading the archive on stdin from ``handle`` (rewound to its
    start), in the directory ``cwd`` (a descriptor) when given, inside a user namespace if
    ``userns``; its stdout. A bad status or anything on stderr is an UnpackError with tar's
    first lines. ``consume``: tar reads a pipe that ``feed`` fills from ``handle``, freeing
    what it passed on.

    The one place that starts a host process here. It goes through ``provisioner.run``'s
    ``wrap`` (the user-namespace prefix), ``require`` (a missing tar or unshare is its
    ``NotFound``, a host error naming the package) and ``die_with_parent``, but not through
    ``run()`` itself: tar needs the archive on stdin, bytes rather than text, and a working
    directory given as a descriptor (``fchdir`` in the child), which ``run()`` does not offer.
    """
    argv = require(wrap(["tar", *args], as_root=not userns))
    handle.seek(0)
    os.lseek(handle.fileno(), 0, os.SEEK_SET)

    def child() -> None:
        die_with_parent()
        if cwd is not None:
            os.fchdir(cwd)

    env = {**os.environ, "LC_ALL": "C"}
    deadline = time.monotonic() + TAR_TIMEOUT
    # Its output goes to files, so that neither pipe can fill while the feed writes.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if consume else handle,
            stdout=out,
            stderr=err,
            env=env,
            preexec_fn=child,  # noqa: PLW1509 (die_with_parent and fchdir only: no Python state)
            pass_fds=() if cwd is None else (cwd,),
        )
        try:
            if proc.stdin is not None:
                feed(handle, proc.stdin, deadline)
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except (subprocess.TimeoutExpired, TimeoutError) as exc:
            raise UnpackError(f"tar took over {TAR_TIMEOUT:.0f} s and was stopped", "see the host's load and disk") from exc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read().decode("utf-8", "replace").strip()
    if proc.returncode != 0 or stderr:
        first = " / ".join(stderr.splitlines()[:3]) or "no message"
        state = "" if "-x" not in args else "; the target may hold part of the tree"
        raise UnpackError(
            f"tar {'listed' if '-t' in args else 'unpacked'} the stream with status {proc.returncode}{state}: {clean(first)}",
            "tar's warnings fail the unpack too; see the message",
        )
    return stdout.decode("ascii", "replace")


def feed(handle: BinaryIO, pipe: IO[bytes], deadline: float) -> None:
    """Copy ``handle`` into ``pipe`` (tar's stdin), then close it; every PUNCH_EVERY bytes, the
    part tar has been given is freed on the disk. Stops early if tar stopped reading (its
    status then says why); TimeoutError past ``deadline``."""
    fd, done, freed = handle.fileno(), 0, 0
    try:
        while block := os.read(fd, CHUNK):
            pipe.write(block)
            done += len(block)
            if done - freed >= PUNCH_EVERY:
                punch_hole(fd, freed, done - freed)
                freed = done
            if time.monotonic() > deadline:
                raise TimeoutError
        pipe.close()
    except BrokenPipeError:
        return
    punch_hole(fd, freed, done - freed)


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``length`` bytes of the file ``fd`` from ``offset``, its size kept. A file system
    that cannot (EOPNOTSUPP) keeps them until the archive is removed: nothing is lost but room."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    if length and libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        if code != errno.EOPNOTSUPP:
            raise UnpackError(f"cannot free the unpacked stream's blocks: {os.strerror(code)}", "see the host's disk")


def clean(text: str, limit: int = 400) -> str:
    """Tar's words, which can quote guest names: printable, one line, cut short."""
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""virtiofsd: the daemon that shares the box's root over virtiofs instead of QEMU's own 9p.

Two daemons exist, with different options: QEMU's C virtiofsd (Debian 12 ships it at
``/usr/lib/qemu/virtiofsd``; it left QEMU in 8.0) and the Rust one that replaced it
(``/usr/libexec/virtiofsd`` or on PATH). ``find_virtiofsd`` tells them apart by their
``--help``; ``virtiofsd_argv`` speaks each one's dialect.

The daemon must touch the target's files as QEMU does for 9p: as root when we are root,
else as root of a user namespace made like QEMU's (``unshare --map-auto --map-root-user``),
so that guest ids land in the same subuid range. Both processes share that one namespace:
``user_namespace`` holds it open with a tiny process and yields the ``nsenter`` prefix that
runs a command inside it. ``start_virtiofsd`` creates the listening socket itself and hands
it over with ``--fd``: QEMU may connect before the daemon runs (no race), and the C daemon
then skips the lock it otherwise takes under the compiled-in ``/var/run/virtiofsd``, which a
namespace's root cannot create on the host.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from provisioner.errors import HostError
from provisioner.run import USERNS, NotFound, run, spawn, wrap

log = logging.getLogger(__name__)

# Where distributions put it, in the order we look (then PATH): Debian 12's C daemon, the
# Rust one's usual place (Debian 13, Fedora, Arch).
CANDIDATES = (Path("/usr/lib/qemu/virtiofsd"), Path("/usr/libexec/virtiofsd"))
INSTALL_HINT = "install virtiofsd (Debian 12: apt-get install qemu-system-common; newer: apt-get install virtiofsd)"
SOCKET_NAME = "virtiofsd.sock"
# The kernel's default fs.nr_open: what "unlimited" means for open files.
NR_OPEN = 1 << 20
GRACE = 5.0  # seconds for a helper to end by itself before it is terminated


class Flavour(StrEnum):
    C = "c"  # QEMU's tools/virtiofsd: -o source=DIR, -o sandbox=…
    RUST = "rust"  # gitlab.com/virtio-fs/virtiofsd: --shared-dir DIR, --sandbox …


@dataclass(frozen=True)
class Virtiofsd:
    path: Path
    flavour: Flavour


def flavour_of(help_text: str) -> Flavour | None:
    """Which daemon printed this ``--help`` (None: not a virtiofsd we know)."""
    if "--shared-dir" in help_text:
        return Flavour.RUST
    if "source=" in help_text and "sandbox=" in help_text:
        return Flavour.C
    return None


def probe(path: Path, *, as_root: bool, reasons: list[str] | None = None) -> Virtiofsd | None:
    """The daemon at ``path``, if its ``--help`` is one we know; else None, with the reason
    appended to ``reasons``.

    Asked where it will run: QEMU's C daemon drops supplementary groups before it even
    parses its options, which fails outside a user namespace when we are not root.
    """
    reasons = [] if reasons is None else reasons
    try:
        result = run(wrap([str(path), "--help"], as_root=as_root), timeout=10)
    except (NotFound, OSError, subprocess.TimeoutExpired) as exc:
        reasons.append(f"{path}: {exc}")
        return None
    said = result.stdout + result.stderr
    if flavour := flavour_of(said):
        return Virtiofsd(path, flavour)
    last = said.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
    reasons.append(f"{path} --help: {last[0]}")
    return None


def find_virtiofsd(candidates: Sequence[Path] | None = None, *, as_root: bool | None = None,
                   reasons: list[str] | None = None) -> Virtiofsd | None:  # fmt: skip
    """The first usable virtiofsd: the distributions' places (``CANDIDATES``), then PATH."""
    as_root = os.geteuid() == 0 if as_root is None else as_root
    on_path = shutil.which("virtiofsd")
    for path in [*(CANDIDATES if candidates is None else candidates), *([Path(on_path)] if on_path else [])]:
        if os.access(path, os.X_OK) and path.is_file() and (found := probe(path, as_root=as_root, reasons=reasons)):
            return found
    return None


def require_virtiofsd() -> Virtiofsd:
    reasons: list[str] = []
    daemon = find_virtiofsd(reasons=reasons)
    if daemon is None:
        why = f": {'; '.join(reasons)}" if reasons else ""
        raise HostError(f"no usable virtiofsd (looked in /usr/lib/qemu, /usr/libexec and PATH){why}", INSTALL_HINT)
    return daemon


def fuse_opt_value(path: Path) -> str:
    """A path inside the C daemon's ``-o a=b,c`` list: commas and backslashes are escaped."""
    return str(path).replace("\\", "\\\\").replace(",", "\\,")


def nofile_limit() -> int:
    """The hard limit on open files. virtiofsd keeps a descriptor per inode the guest caches
    and, unprivileged, its own attempt to raise the limit fails silently, leaving 1024: the
    guest then sees EMFILE. So it is told the hard limit, which it may always raise to."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return NR_OPEN if hard == resource.RLIM_INFINITY else hard


# The cache mode of every virtiofs mount, root and shares: coherent with the host (a file the
# host rewrote was read new at the box's next open, 15-19 ms under TCG, as 9p's cache=mmap),
# and as fast as ``always``, which kept the box's old copy for good (``make bench``,
# docs/performance.md). The point of a host directory is that both sides edit it.
CACHE = "auto"


def virtiofsd_argv(daemon: Virtiofsd, source: Path, fd: int, nofile: int, cache: str = CACHE) -> list[str]:
    """Share ``source`` on the listening socket ``fd`` in cache mode ``cache`` (``never`` is
    the C daemon's ``none``) with xattrs (ACLs, file capabilities). ``chroot`` is the sandbox a namespace's root can set up;
    ``namespace`` would need more than a user namespace."""
    if daemon.flavour is Flavour.C:
        cache = "none" if cache == "never" else cache  # the C daemon's name for it
        return [
            str(daemon.path),
            f"--fd={fd}",
            "-o", f"source={fuse_opt_value(source.resolve())},cache={cache},xattr",
            "-o", "sandbox=chroot",
            f"--rlimit-nofile={nofile}",
        ]  # fmt: skip
    return [
        str(daemon.path),
        f"--fd={fd}",
        "--shared-dir", str(source.resolve()),
        "--cache", cache,
        "--xattr",
        "--sandbox", "chroot",
        f"--rlimit-nofile={nofile}",
    ]  # fmt: skip


def nsenter_argv(holder_pid: int) -> list[str]:
    """Run a command in the user namespace of ``holder_pid``, as its root (nsenter's default)."""
    return ["nsenter", f"--user=/proc/{holder_pid}/ns/user"]


def _end(process: subprocess.Popen[bytes], grace: float) -> int:
    """Wait up to ``grace`` for the process to end by itself, then terminate, then kill; reap."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        return process.wait(grace)
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        return process.wait(5)
    process.kill()
    return process.wait()


def _spawn(argv: list[str], *, hint: str, **popen: Any) -> subprocess.Popen[bytes]:
    """Start a helper that dies with us (PR_SET_PDEATHSIG, which only the child can set; no
    threads run at this point), in a session of its own, so that a Ctrl-C at the terminal
    stays the guest's. A missing program is a host problem, not a crash."""
    try:
        return spawn(argv, **popen)
    except NotFound as exc:
        raise HostError(f"cannot start {argv[0]}: No such file (not on PATH)", hint) from exc
    except OSError as exc:
        raise HostError(f"cannot start {argv[0]}: {exc.strerror or exc}", hint) from exc


@contextlib.contextmanager
def user_namespace(serving: Path) -> Iterator[list[str]]:
    """A user namespace mapped as QEMU's (``unshare --map-auto --map-root-user``), open until
    the context ends; yields the argv prefix that runs a command inside it.

    The holder is a shell that prints a line once the mapping is in place (unshare writes it
    before it execs the shell) and then waits on its stdin: it ends when we close that pipe,
    and by PR_SET_PDEATHSIG if we die first. Its arguments name the box it serves (``ps``
    shows which boot a holder belongs to).
    """
    argv = [*USERNS, "sh", "-c", "echo ready && read _", "provision-arch-userns", str(serving)]
    log.debug("+ %s", shlex.join(argv))
    holder = _spawn(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        hint="install util-linux (unshare) and uidmap; provision-arch doctor names what is missing",
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdin is not None
        if holder.stdout.readline().strip() != b"ready":
            error = holder.stderr.read().decode(errors="replace").strip() if holder.stderr else ""
            raise HostError(
                f"cannot create a user namespace for virtiofsd: {error or 'unshare ended'}",
                "run provision-arch doctor: it names what is missing",
            )
        yield nsenter_argv(holder.pid)
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        _end(holder, GRACE)
        for stream in (holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def start_virtiofsd(daemon: Virtiofsd, source: Path, enter: Sequence[str] = (), cache: str = CACHE) -> Iterator[Path]:
    """Run ``daemon`` sharing ``source`` (inside ``enter``, e.g. a user namespace); yield the
    socket QEMU connects to. On the way out the daemon is ended and reaped, always.

    The daemon ends by itself when QEMU disconnects; the grace covers that, then it is
    terminated. Its messages go to a log beside the socket: they would garble the console
    of an interactive boot. When it failed on its own, the error says what it printed.
    """
    runtime = Path(tempfile.mkdtemp(prefix="provision-arch-", dir=os.environ.get("XDG_RUNTIME_DIR") or None))
    try:
        path = runtime / SOCKET_NAME
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            listener.listen(1)
            argv = [*enter, *virtiofsd_argv(daemon, source, listener.fileno(), nofile_limit(), cache)]
            log.debug("+ %s", shlex.join(argv))
            with (runtime / "virtiofsd.log").open("wb") as errors:
                process = _spawn(argv, stdin=subprocess.DEVNULL, stdout=errors, stderr=errors,
                                 pass_fds=[listener.fileno()], hint=INSTALL_HINT)  # fmt: skip
        finally:
            # Only the daemon may hold the listener: were ours left open after the daemon
            # died, QEMU's connection would wait in the backlog forever instead of failing.
            listener.close()
        try:
            yield path
        finally:
            status = _end(process, GRACE)
        if status not in (0, -signal.SIGTERM):
            said = (runtime / "virtiofsd.log").read_text(errors="replace").strip().splitlines()
            raise HostError(
                f"virtiofsd exited with status {status}: {said[-1] if said else 'no message'}",
                f"run it by hand to see more: {shlex.join(argv)}",
            )
    finally:
        shutil.rmtree(runtime, ignore_errors=True)

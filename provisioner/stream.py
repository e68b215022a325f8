"""The stream install's host side: take one tar from the guest's serial port, check it, extract it.

Under emulation every file the guest creates over 9p costs milliseconds; building the tree
on the guest's own scratch disk and sending it as one tar is several times faster
(README "Measured"). The stream is only as good as its checks: a guest that powers off
right after writing can race QEMU's flushing of the port (entries were lost that way
while measuring, and tar exited 0), so the guest's tar reports on the console how many
bytes it wrote, the host waits until it received exactly that many, and only then does the
driver let the guest go on to power off. The port loses nothing in the middle (QEMU holds the
guest back when the host reads slower), so the count is the transport's check; what the
bytes say is checked by ``unpack``. (The guest hashed the archive before: under TCG its
sha256sum ran at 4-9 MB/s and, with tee's small writes to the port, made the send five times
slower than tar writing to the port itself; docs/performance.md.)
The archive is kept in the workspace (0600, out of the guest's reach), bounded in size, and
unpacked (``unpack``) only once it checked out and QEMU has ended: a short stream is an
error, never a half-filled target.
"""

from __future__ import annotations

import os
import select
import threading
import time
from pathlib import Path
from types import TracebackType

from provisioner.errors import ExitCode, ProvisionError
from provisioner.workspace import create_private

CHUNK = 1 << 20
# Once the guest has written the whole archive, QEMU delivers the rest within milliseconds;
# this bounds the wait for a stream that stopped short.
SETTLE = 60.0
# GNU tar, told to keep everything an installed system relies on: numeric owners, modes,
# ACLs, and all xattrs (without --xattrs-include it restores only user.*, which would lose
# file capabilities in security.capability).
TAR_KEEP = ("--numeric-owner", "--acls", "--xattrs", "--xattrs-include=*")
# How the guest packs beyond that: no access and change times (tar -x sets neither from them),
# so a member whose mtime is whole seconds, as a package's files are, needs no pax header,
# which halves what the host's check parses (docs/stream.md) and sends 1 KiB less a member.
TAR_PACK = (*TAR_KEEP, "--pax-option=delete=atime,delete=ctime", "--sparse")


class StreamError(ProvisionError):
    """The tree did not arrive whole."""

    exit_code = ExitCode.STEP


class Receiver:
    """Reads the port's host end (QEMU's PIPE.out) into a file on a thread, counting as it goes."""

    def __init__(self, source: Path, into: Path, *, limit: int) -> None:
        self.source, self.into, self.limit = source, into, limit
        self.received = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: OSError | None = None
        self._over = False
        self._thread = threading.Thread(target=self._pump, name="stream-receiver", daemon=True)
        self._fd = -1

    def __enter__(self) -> Receiver:
        # QEMU holds the FIFO open for writing, so this open returns at once.
        self._fd = os.open(self.source, os.O_RDONLY | os.O_NONBLOCK)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        os.close(self._fd)

    def _pump(self) -> None:
        try:
            with os.fdopen(create_private(self.into), "wb") as out:
                while not self._stop.is_set():
                    ready, _, _ = select.select([self._fd], [], [], 0.2)
                    if not ready:
                        continue
                    block = os.read(self._fd, CHUNK)
                    if self._over or self.received + len(block) > self.limit:
                        # More than its scratch disk holds: drained, never written, so that
                        # the guest's end of the port does not block; the step fails on it.
                        self._over = True
                        continue
                    if block:
                        out.write(block)
                        with self._lock:
                            self.received += len(block)
        except OSError as exc:
            self._error = exc

    def arrived(self) -> int:
        with self._lock:
            return self.received

    def wait_for(self, size: int, timeout: float) -> int:
        """Block until ``size`` bytes arrived; that count. StreamError after ``timeout``, or on more."""
        deadline = time.monotonic() + timeout
        while (arrived := self.arrived()) != size:
            if arrived > size:
                raise StreamError(
                    f"the stream from the guest brought {arrived} bytes, more than the {size} its tar wrote",
                    "see the transcript",
                )
            if self._over:
                raise StreamError(
                    f"the stream from the guest outgrew {self.limit} bytes, more than its scratch disk holds",
                    "a package set that large is not supported; see the transcript",
                )
            if self._error is not None:
                raise StreamError(f"reading the stream failed: {self._error}", "see the transcript")
            if time.monotonic() > deadline:
                raise StreamError(
                    f"the stream from the guest stopped short: {arrived} of the {size} bytes its tar wrote arrived",
                    "run again; with --install-via 9p the tree is written over the share instead",
                )
            time.sleep(0.05)
        self._stop.set()
        return self.received

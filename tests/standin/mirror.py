"""A package mirror on the host's loopback, for the stand-in repository and its archive.

``Mirror(root)`` serves the files below ``root`` over HTTP/1.1 on 127.0.0.1 and a free
port, from a background thread, and records every request (method, path, status, body
bytes sent) in an access log the tests read::

    with Mirror(ensure_archive()) as m:
        m.url           # http://127.0.0.1:PORT, for the host
        m.guest_url     # http://10.0.2.2:PORT, for a QEMU guest with user networking
        m.requests()    # [Request(method='GET', path='/core/os/x86_64/core.db', status=200, ...)]

What pacman (libcurl) needs of a mirror: GET and HEAD, 404 for what is missing (it asks
for ``.sig`` files when signatures are wanted), ``Last-Modified`` and
``If-Modified-Since`` (``pacman -Sy`` skips an unchanged database on a 304), and
single byte ranges (``Range: bytes=N-`` resumes a ``.part`` download). Symbolic links
are followed as long as they stay below the root, as a web server serving a mirror
tree does (``core.db`` is a link to ``core.db.tar.gz``).

By hand: ``python3 -m tests.standin.mirror DIR [--port N] [--bind ADDR] [--log FILE]``;
requests are printed to stderr, and with ``--log`` appended to FILE as JSON lines.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import email.utils
import html
import json
import os
import pathlib
import re
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import IO, Any

# QEMU's user-mode network (slirp) forwards the guest's connections to 10.0.2.2 to the
# host's loopback.
GUEST_HOST = "10.0.2.2"
CHUNK = 1 << 16
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
CONTENT_TYPES = {
    ".zst": "application/zstd",
    ".gz": "application/gzip",
    ".db": "application/gzip",
    ".files": "application/gzip",
    ".sig": "application/pgp-signature",
    ".iso": "application/octet-stream",
    ".txt": "text/plain; charset=utf-8",
}


@dataclasses.dataclass(frozen=True)
class Request:
    """One line of the access log."""

    method: str
    path: str  # as requested, percent-encoded, query included
    status: int
    bytes: int  # body bytes sent
    range: str | None = None  # the Range header, if any
    client: str = ""
    time: float = 0.0  # seconds since the epoch, when the response was finished

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Request:
        return cls(**json.loads(line))


def load_log(path: pathlib.Path) -> list[Request]:
    """The requests in a ``--log`` file."""
    return [Request.from_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class _Unsatisfiable(Exception):
    """A Range that starts past the end of the file (416)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A fixed port given by hand should be reusable right after a restart.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], root: pathlib.Path, log: _AccessLog) -> None:
        self.root = root
        self.log = log
        super().__init__(address, _Handler)


class _AccessLog:
    """The records, in the order the requests arrived, and how many are being answered now.

    A client has the whole body before the handler thread gets to write the record, so a
    reader waits (briefly) for the requests in flight: a test that just got its answer
    then always finds it in the log. Each request takes a ticket when it arrives; a record
    is kept (and written to the sink) only once every earlier ticket's is, so that two
    requests one after the other are logged in that order even when the first one's thread
    writes its record last (a loaded machine)."""

    def __init__(self, sink: Callable[[Request], None]) -> None:
        self._sink = sink
        self._done = threading.Condition()
        self._records: list[Request] = []
        self._in_flight = 0
        self._tickets = 0
        self._pending: dict[int, Request] = {}
        self._next = 0

    def begin(self) -> int:
        with self._done:
            self._in_flight += 1
            self._tickets += 1
            return self._tickets - 1

    def end(self, ticket: int, request: Request) -> None:
        with self._done:
            self._in_flight -= 1
            self._pending[ticket] = request
            while self._next in self._pending:
                ready = self._pending.pop(self._next)
                self._records.append(ready)
                self._sink(ready)
                self._next += 1
            self._done.notify_all()

    def snapshot(self, wait: float) -> list[Request]:
        with self._done:
            self._done.wait_for(lambda: self._in_flight == 0, timeout=wait)
            return list(self._records)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: curl reuses its connections
    server_version = "provision-arch-standin-mirror"
    timeout = 60  # an idle keep-alive connection ends, and its thread with it

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self._status = 0
        self._sent = 0
        self._begun = False

    def handle_one_request(self) -> None:
        # One record per request line read, however the answer ended (sent, refused, the
        # client gone mid-body): begun in parse_request, written here.
        self._begun = False
        try:
            super().handle_one_request()
        finally:
            if self._begun:
                self._finish()

    def parse_request(self) -> bool:
        self._begun = True
        self._status = 0
        self._sent = 0
        # A keep-alive connection's previous request must not show in this one's record
        # when this request line turns out malformed.
        self.path = ""
        if hasattr(self, "headers"):
            del self.headers
        self._ticket = self.server.log.begin()
        return super().parse_request()

    # -- logging: one record per response, built from what was really sent ------------

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = int(code)
        self._sent = 0
        super().send_response(code, message)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # recorded in _finish with the body size, once the answer is out

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the access log is the record; http.server's stderr lines would only be noise

    def _finish(self) -> None:
        self._begun = False
        # After a malformed request line there is no command, path or headers.
        headers = getattr(self, "headers", None)
        self.server.log.end(
            self._ticket,
            Request(
                method=self.command or "-",
                path=getattr(self, "path", "") or "-",
                status=self._status,
                bytes=self._sent,
                range=headers.get("Range") if headers is not None else None,
                client=self.client_address[0],
                time=time.time(),
            )
        )

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self._sent += len(data)

    # -- methods --------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._handle(body=True)

    def do_HEAD(self) -> None:
        self._handle(body=False)

    def _handle(self, *, body: bool) -> None:
        try:
            self._serve(body=body)
        except (BrokenPipeError, ConnectionResetError):
            # The client hung up mid-body (curl gave up, or resumes later): the log keeps
            # the bytes that did go out.
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # A short plain-text page; http.server calls this too, for a bad request line (400)
        # or a method without a do_ handler (501).
        status = HTTPStatus(code)
        page = f"{status.value} {message or status.phrase}\n".encode()
        self.send_response(code, message)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        if code != HTTPStatus.NOT_FOUND:
            # After a broken request the stream may be out of step: hang up. A 404 is an
            # ordinary answer (pacman asks for .sig files that may not exist): keep alive.
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self._write(page)

    # -- the file system ------------------------------------------------------------------

    def _resolve(self) -> pathlib.Path | None:
        """The file or directory the URL names, or None when it is missing or outside the root."""
        raw = urllib.parse.urlsplit(self.path).path
        parts = [p for p in urllib.parse.unquote(raw).split("/") if p not in ("", ".")]
        if ".." in parts or any("\0" in p for p in parts):
            return None
        root = self.server.root
        try:
            path = root.joinpath(*parts).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            return None
        if path != root and not path.is_relative_to(root):
            return None
        return path

    def _serve(self, *, body: bool) -> None:
        path = self._resolve()
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        if path.is_dir():
            self._serve_directory(path, body=body)
            return
        try:
            handle = path.open("rb")
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        with handle:
            stat = os.fstat(handle.fileno())
            size = stat.st_size
            if self._not_modified(stat.st_mtime):
                self.send_response(HTTPStatus.NOT_MODIFIED)
                self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
                self.end_headers()
                return
            start, end = 0, size - 1
            try:
                wanted = self._range(size)
            except _Unsatisfiable:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if wanted is not None:
                start, end = wanted
                self.send_response(HTTPStatus.PARTIAL_CONTENT)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", _content_type(path))
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if not body:
                return
            handle.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    break  # the file shrank under us; the client sees a short body
                self._write(chunk)
                left -= len(chunk)

    def _not_modified(self, mtime: float) -> bool:
        since = self.headers.get("If-Modified-Since")
        if not since or self.headers.get("Range"):
            return False
        try:
            parsed = email.utils.parsedate_to_datetime(since)
        except (TypeError, ValueError, IndexError):
            return False
        return int(mtime) <= parsed.timestamp()

    def _range(self, size: int) -> tuple[int, int] | None:
        """The one byte range asked for, as (first, last), or None to send the whole file.

        Several ranges or a malformed header are ignored (a server may always answer 200);
        raises _Unsatisfiable for a range that starts past the end."""
        match = RANGE_RE.match((self.headers.get("Range") or "").strip())
        if match is None or match[1] + match[2] == "":
            return None
        if match[1] == "":  # bytes=-N: the last N bytes
            if int(match[2]) == 0:
                raise _Unsatisfiable
            return max(0, size - int(match[2])), size - 1
        first = int(match[1])
        if match[2] and int(match[2]) < first:
            return None  # invalid, so ignored
        if first >= size:
            raise _Unsatisfiable
        return first, min(int(match[2]) if match[2] else size - 1, size - 1)

    def _serve_directory(self, path: pathlib.Path, *, body: bool) -> None:
        raw = urllib.parse.urlsplit(self.path).path
        if not raw.endswith("/"):
            self.send_response(HTTPStatus.MOVED_PERMANENTLY)
            self.send_header("Location", raw + "/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        title = html.escape(urllib.parse.unquote(raw))
        items = "".join(f'<a href="{urllib.parse.quote(n)}">{html.escape(n)}</a>\n' for n in names)
        page = f"<!DOCTYPE html>\n<title>Index of {title}</title>\n<h1>Index of {title}</h1>\n<pre>\n{items}</pre>\n".encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        if body:
            self._write(page)


def _content_type(path: pathlib.Path) -> str:
    return CONTENT_TYPES.get(path.suffix, "application/octet-stream")


class Mirror:
    """Serve ``root`` on ``bind``:``port`` (0: a free port) from a background thread.

    ``log``: also append each request to this file as a JSON line. ``echo``: a stream
    that gets one human-readable line per request (the command line uses stderr).
    """

    def __init__(
        self,
        root: pathlib.Path | str,
        *,
        port: int = 0,
        bind: str = "127.0.0.1",
        log: pathlib.Path | None = None,
        echo: IO[str] | None = None,
    ) -> None:
        self.root = pathlib.Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"not a directory: {self.root}")
        self.bind = bind
        self.log = log
        self.echo = echo
        self._log = _AccessLog(self._write_out)
        self._server = _Server((bind, port), self.root, self._log)
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The root URL as the host reaches it."""
        return f"http://{self.bind}:{self.port}"

    @property
    def guest_url(self) -> str:
        """The root URL as a QEMU guest on user-mode networking reaches it (loopback only)."""
        return f"http://{GUEST_HOST}:{self.port}"

    def requests(self, wait: float = 5.0) -> list[Request]:
        """A copy of the access log, in the order the requests arrived. Requests being
        answered at the moment are waited for, up to ``wait`` seconds."""
        return self._log.snapshot(wait)

    def _write_out(self, request: Request) -> None:
        # Called with the access log's lock held: lines never interleave.
        if self.log is not None:
            with self.log.open("a", encoding="utf-8") as f:
                f.write(request.to_json() + "\n")
        if self.echo is not None:
            moment = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(request.time))
            print(
                f'{request.client} - - [{moment}] "{request.method} {request.path}" {request.status} {request.bytes}',
                file=self.echo,
                flush=True,
            )

    def start(self) -> Mirror:
        if self._thread is None:
            # A short poll interval: stop() (shutdown) waits for at most one of them.
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"mirror:{self.port}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Mirror:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.standin.mirror", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("root", type=pathlib.Path, help="directory to serve (e.g. the path ensure_archive() returns)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--bind", default="127.0.0.1", help="address (default 127.0.0.1; a guest reaches it as 10.0.2.2)")
    parser.add_argument("--log", type=pathlib.Path, help="append the access log to FILE as JSON lines")
    args = parser.parse_args(argv)
    try:
        mirror = Mirror(args.root, port=args.port, bind=args.bind, log=args.log, echo=sys.stderr)
    except OSError as exc:
        print(f"mirror: error: {exc}", file=sys.stderr)
        return 1
    # SIGTERM stops it as Ctrl-C does: the server closes and the log is complete.
    signal.signal(signal.SIGTERM, _interrupt)
    with mirror:
        print(f"serving {mirror.root} at {mirror.url} (from a QEMU guest: {mirror.guest_url}); Ctrl-C stops", file=sys.stderr)
        print(mirror.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A loopback HTTP mirror for the acquisition tests, and a throwaway OpenPGP signer.

The server is real (http.server on 127.0.0.1, port 0) so the code under test goes through
urllib, Range handling and dropped connections exactly as it would against a mirror.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RANGE_RE = re.compile(r"^bytes=(\d+)-$")


@dataclass
class Request:
    path: str
    range: str | None


@dataclass
class FakeMirror:
    """Serves ``files`` (URL path → bytes); ``drop`` maps a path to how many of its GETs are
    cut off halfway (-1: every one), to imitate a connection lost mid-download."""

    files: dict[str, bytes] = field(default_factory=dict)
    drop: dict[str, int] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeMirror:
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet test output
                pass

            def do_GET(self) -> None:
                mirror.requests.append(Request(self.path, self.headers.get("Range")))
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if (match := RANGE_RE.match(self.headers.get("Range") or "")) is not None:
                    start = int(match[1])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                rest = body[start:]
                self.send_header("Content-Length", str(len(rest)))
                self.end_headers()
                left = mirror.drop.get(self.path, 0)
                if left:
                    mirror.drop[self.path] = left - 1 if left > 0 else left
                    # Promise the whole body, send half, hang up: what a dying mirror does.
                    self.wfile.write(rest[: len(rest) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(rest)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval: shutdown() waits for the loop to notice, 0.5 s by default.
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class Signer:
    """A fresh ed25519 key in a private GNUPGHOME: signs files, exports its public key.

    With ``subkey`` it signs with a signing subkey, as release keys often do; ``fingerprint``
    is always the primary key's, ``signing_key`` the one that makes the signatures.
    """

    def __init__(self, name: str, *, subkey: bool = False) -> None:
        # A short path under /tmp: gpg-agent's socket path must stay under ~100 characters.
        self.home = Path(tempfile.mkdtemp(prefix="pa-gpg-", dir="/tmp"))
        self.env = {**os.environ, "GNUPGHOME": str(self.home)}
        self._gpg("--quick-gen-key", f"{name} <{name}@example.invalid>", "ed25519", "sign", "never")
        self.fingerprint = self._fingerprints()[0]
        if subkey:
            self._gpg("--quick-add-key", self.fingerprint, "ed25519", "sign", "never")
        self.signing_key = self._fingerprints()[-1]

    def _fingerprints(self) -> list[str]:
        """The primary key's fingerprint, then its subkeys'."""
        listing = self._gpg("--list-keys", "--with-colons").stdout
        return [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")]

    def _gpg(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", *args]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=True, timeout=60)

    def export(self, dest: Path) -> Path:
        dest.write_text(self._gpg("--armor", "--export", self.fingerprint).stdout)
        return dest

    def sign(self, data: bytes) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "data"
            src.write_bytes(data)
            # The trailing '!' makes gpg use exactly that (sub)key, not one it picks itself.
            self._gpg("--local-user", f"{self.signing_key}!", "--detach-sign", "--output", f"{src}.sig", str(src))
            return Path(f"{src}.sig").read_bytes()

    def close(self) -> None:
        # Stops the gpg-agent this signer started (only the one for this GNUPGHOME).
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=self.env, capture_output=True, check=False, timeout=30)
        shutil.rmtree(self.home, ignore_errors=True)

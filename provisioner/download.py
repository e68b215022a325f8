"""HTTP for the ISO: small files into memory, the big one into a resumable ``.part``.

Every request has a timeout, so a stalled mirror becomes an error, not a hang. A failed
request is a ``FetchError``; what it means for the run (which hint, which exit code) is
the caller's to say. Progress is reported as ``Download`` events, never drawn here.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from provisioner import __version__
from provisioner.errors import HostError
from provisioner.events import Bus, Download

TIMEOUT = 30.0
# Pauses before the 2nd, 3rd, … download attempt; each attempt resumes where the last stopped.
RETRY_DELAYS: tuple[float, ...] = (1.0, 3.0, 10.0)
CHUNK = 1 << 20
SMALL_LIMIT = 1 << 20  # checksum lists and signatures are a few KiB; anything bigger is not them
# ASCII digits only: str.isdigit() also takes '²' (a latin-1 header byte), which int() then refuses.
CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,18}")


class FetchError(Exception):
    """One request failed: the URL, why, and the HTTP status when there was one."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.status = url, reason, status


def size_text(n: float) -> str:
    """A byte count for people: 512 B, 1.5 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _lost(url: str, exc: Exception) -> FetchError:
    return FetchError(url, str(exc) or type(exc).__name__)


def open_url(url: str, start: int = 0) -> http.client.HTTPResponse:
    """GET ``url`` (from byte ``start`` when non-zero); the open response, or FetchError."""
    headers = {"User-Agent": f"provision-arch/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - callers admit http(s) URLs only
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=TIMEOUT)  # noqa: S310
    except urllib.error.HTTPError as exc:
        exc.close()
        raise FetchError(url, f"HTTP {exc.code} {exc.reason}", exc.code) from exc
    except urllib.error.URLError as exc:
        raise FetchError(url, str(exc.reason)) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _lost(url, exc) from exc
    return response


def get_small(url: str, limit: int = SMALL_LIMIT) -> bytes:
    """A small file (checksums, signature) into memory; more than ``limit`` bytes is an error."""
    with open_url(url) as response:
        try:
            data = response.read(limit + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise _lost(url, exc) from exc
    if len(data) > limit:
        raise FetchError(url, f"larger than {limit} bytes; not a checksum or signature file")
    return data


def download(url: str, part: Path, events: Bus) -> str:
    """Fetch ``url`` into ``part``, resuming what is there and retrying dropped connections.

    Returns the sha256 of the whole file, hashed as it arrives so the ISO is not read twice.
    Raises the last FetchError when every attempt failed; ``part`` keeps what arrived.
    """
    name = url.rsplit("/", 1)[-1]
    for attempt in range(len(RETRY_DELAYS) + 1):
        try:
            return _download_once(url, part, name, events)
        except FetchError as exc:
            # A 4xx will not get better by asking again; a dropped connection or 5xx may.
            if (exc.status is not None and exc.status < 500) or attempt == len(RETRY_DELAYS):
                raise
            events.note(f"download of {name} interrupted ({exc.reason}); resuming in {RETRY_DELAYS[attempt]:.0f} s")
            time.sleep(RETRY_DELAYS[attempt])
    raise AssertionError("unreachable")


def content_length(header: str | None) -> int | None:
    """A Content-Length header's value, or None when it is missing or not a plain ASCII number."""
    return int(header) if header and CONTENT_LENGTH_RE.fullmatch(header) else None


def _request_rest(url: str, part: Path, events: Bus) -> tuple[http.client.HTTPResponse | None, int, int | None]:
    """Ask for what ``part`` lacks: (response or None when nothing is missing, bytes kept, total size)."""
    have = part.stat().st_size if part.exists() else 0
    try:
        response = open_url(url, start=have)
    except FetchError as exc:
        if exc.status != 416:
            raise
        # 416: we already hold at least the whole file (a run died before renaming). Let the
        # checksum decide whether it is good.
        return None, have, have
    length = response.headers.get("Content-Length")
    if have and response.status != 206:
        events.note(f"{url} ignored the resume request; downloading {part.name.removesuffix('.part')} from the start")
        have = 0
    size = content_length(length)
    total = have + size if size is not None else None
    if have == 0 and total:
        free = shutil.disk_usage(part.parent).free
        if free < total:
            response.close()
            raise HostError(
                f"{size_text(total)} needed for {part.name} in {part.parent}, {size_text(free)} free", "free some space"
            )
    return response, have, total


def _download_once(url: str, part: Path, name: str, events: Bus) -> str:
    response, have, total = _request_rest(url, part, events)
    with contextlib.ExitStack() as stack:
        if response is not None:
            stack.enter_context(response)
        # Hash what an earlier attempt wrote (all of it: ``have`` is its size), then keep
        # hashing as the rest arrives.
        if have:
            with part.open("rb") as kept:
                hasher = hashlib.file_digest(kept, "sha256")
        else:
            hasher = hashlib.sha256()
        with part.open("r+b" if have else "wb") as out:
            out.seek(have)
            out.truncate()
            events.emit(Download(name, have, total))
            while response is not None:
                try:
                    block = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    # IncompleteRead is the server closing early: keep what arrived (unhashed: the
                    # next attempt hashes the whole .part from disk before it resumes).
                    if isinstance(exc, http.client.IncompleteRead) and exc.partial:
                        out.write(exc.partial)
                    raise FetchError(url, f"connection lost ({type(exc).__name__})") from exc
                if not block:
                    break
                out.write(block)
                hasher.update(block)
                have += len(block)
                events.emit(Download(name, have, total))
            out.flush()
            os.fsync(out.fileno())
    if total is not None and have < total:
        raise FetchError(url, f"connection closed after {size_text(have)} of {size_text(total)}")
    return hasher.hexdigest()

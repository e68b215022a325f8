"""Get the Arch ISO when the user gave none, and decide whether an ISO can be trusted.

Trust comes from the OpenPGP signature alone: ``sha256sums.txt`` comes from the same mirror
as the ISO, so it only catches corruption, never a hostile mirror. The signature is checked
by ``gpgv`` against a keyring that holds nothing but the release keys shipped in
``provisioner/data/release-keys/`` plus any ``--trusted-key`` files, so "valid signature"
can only mean "signed by a key we chose to trust" (no web of trust, no user keyring).

Downloads go to ``<name>.part``, are checked, and only then renamed into the cache: a file
without the ``.verified`` sidecar beside it was never accepted. A ``.part`` left by an
interrupted run is resumed with an HTTP Range request.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich import progress as rich_progress
from rich.markup import escape

from provisioner import __version__
from provisioner.errors import HostError, IsoError, UsageError, VerifyError
from provisioner.report import Progress, Timing
from provisioner.run import NotFound, run

DEFAULT_MIRROR = "https://geo.mirror.pkgbuild.com"
ARCHIVE = "https://archive.archlinux.org"
# Every request gets this; a stalled mirror becomes an error, not a hang.
TIMEOUT = 30.0
# Pauses before the 2nd, 3rd, … download attempt; each attempt resumes where the last stopped.
RETRY_DELAYS: tuple[float, ...] = (1.0, 3.0, 10.0)
# gpgv hashes the whole ISO (~1.2 GB); slow disks need the room.
GPGV_TIMEOUT = 600.0
CHUNK = 1 << 20
SMALL_LIMIT = 1 << 20  # sha256sums.txt and .sig are a few KiB; anything bigger is not them
EXPORT_HINT = "export the key with: gpg --export --armor KEYID > key.asc"
HINT = "check --iso-mirror and the network, or download the ISO yourself and pass --iso PATH"

VERSION_RE = re.compile(r"^\d{4}\.\d{2}\.\d{2}$")
# The name comes from the mirror's sha256sums.txt and becomes a path in the cache: only this
# exact shape is accepted, so a hostile listing cannot name '../../x'.
ISO_NAME_RE = re.compile(r"^archlinux-(\d{4}\.\d{2}\.\d{2})-x86_64\.iso$")
SUMS_LINE_RE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)$")
ARMOR_RE = re.compile(rb"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----", re.DOTALL)


@dataclass(frozen=True)
class IsoSource:
    mirror: str = DEFAULT_MIRROR  # --iso-mirror
    version: str | None = None  # --iso-version YYYY.MM.DD; None = latest
    trusted_keys: tuple[Path, ...] = ()  # --trusted-key, added to the shipped keys
    archive: str = ARCHIVE  # where releases the mirror no longer keeps are found

    def __post_init__(self) -> None:
        for what, url in (("--iso-mirror", self.mirror), ("archive", self.archive)):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise UsageError(f"invalid {what} URL {url!r}", "give an http(s) mirror, e.g. " + DEFAULT_MIRROR)
        if self.version is not None and not VERSION_RE.match(self.version):
            raise UsageError(f"invalid --iso-version {self.version!r}", "give a release date, e.g. 2024.06.01")


# --- OpenPGP keys -----------------------------------------------------------------------


@dataclass(frozen=True)
class Keyring:
    """Binary OpenPGP public keys (what gpgv reads) and their primary fingerprints."""

    data: bytes
    fingerprints: frozenset[str]


def dearmor(data: bytes) -> bytes:
    """ASCII armor to binary packets; binary input passes through. gpgv reads binary only."""
    blocks = ARMOR_RE.findall(data)
    if not blocks:
        return data
    out = b""
    for block in blocks:
        lines = block.replace(b"\r", b"").split(b"\n")
        # Armor headers ("Comment: …") end at the first blank line; the CRC line starts with '='.
        if b"" in lines and any(b":" in line for line in lines[: lines.index(b"")]):
            lines = lines[lines.index(b"") + 1 :]
        body = b"".join(line.strip() for line in lines if line.strip() and not line.startswith(b"="))
        out += base64.b64decode(body, validate=True)
    return out


def _packets(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(tag, body) of each OpenPGP packet (RFC 4880 §4.2); raises ValueError when malformed."""
    pos = 0
    while pos < len(data):
        head = data[pos]
        if not head & 0x80:
            raise ValueError(f"not an OpenPGP packet at byte {pos}")
        if head & 0x40:  # new format
            tag, first = head & 0x3F, data[pos + 1]
            if first < 192:
                length, pos = first, pos + 2
            elif first < 224:
                length, pos = ((first - 192) << 8) + data[pos + 2] + 192, pos + 3
            elif first == 255:
                length, pos = int.from_bytes(data[pos + 2 : pos + 6], "big"), pos + 6
            else:
                raise ValueError("partial body lengths do not occur in keys")
        else:  # old format: the low two bits say how many length octets follow
            tag, size = (head >> 2) & 0x0F, (1, 2, 4, 0)[head & 0x03]
            length = int.from_bytes(data[pos + 1 : pos + 1 + size], "big") if size else len(data) - pos - 1
            pos += 1 + size
        if pos + length > len(data):
            raise ValueError("truncated packet")
        yield tag, data[pos : pos + length]
        pos += length


def fingerprints(data: bytes) -> frozenset[str]:
    """Primary-key fingerprints of binary key data (v4 keys: SHA-1 over 0x99, length, body)."""
    found = set()
    for tag, body in _packets(data):
        if tag == 6 and body[:1] == b"\x04":
            found.add(hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body, usedforsecurity=False).hexdigest().upper())
        elif tag == 6 and body[:1] == b"\x06":
            # v6 (RFC 9580): SHA-256 over 0x9B, four-octet length, body.
            found.add(hashlib.sha256(b"\x9b" + len(body).to_bytes(4, "big") + body).hexdigest().upper())
    return frozenset(found)


def shipped_keys() -> list[tuple[str, bytes]]:
    """The release keys in the package: every ``*.asc`` in provisioner/data/release-keys/."""
    folder = resources.files("provisioner") / "data" / "release-keys"
    return sorted((entry.name, entry.read_bytes()) for entry in folder.iterdir() if entry.name.endswith(".asc"))


def load_keyring(extra: tuple[Path, ...] = ()) -> Keyring:
    """The shipped release keys plus the user's ``--trusted-key`` files, checked to be keys."""
    sources = shipped_keys()
    for path in extra:
        try:
            sources.append((str(path), path.read_bytes()))
        except OSError as exc:
            raise UsageError(f"cannot read --trusted-key {path}: {exc.strerror}", "give an OpenPGP public key file") from exc
    data, fprs = b"", set[str]()
    for name, raw in sources:
        try:
            binary = dearmor(raw)
            found = fingerprints(binary)
        except (ValueError, IndexError, binascii.Error) as exc:
            raise UsageError(f"{name} is not an OpenPGP public key: {exc}", EXPORT_HINT) from exc
        if not found:
            raise UsageError(f"{name} holds no OpenPGP public key", EXPORT_HINT)
        data += binary
        fprs |= found
    return Keyring(data, frozenset(fprs))


# --- Signature check ---------------------------------------------------------------------


def verify_signature(data: Path, sig: Path, keyring: Keyring, label: str) -> str:
    """Check ``sig`` over ``data`` with gpgv; the signer's primary fingerprint, or VerifyError."""
    with tempfile.TemporaryDirectory(prefix="provision-arch-gpgv-") as home:
        ring = Path(home) / "trusted.gpg"
        ring.write_bytes(keyring.data)
        # An own --homedir: gpgv must not pick up ~/.gnupg/trustedkeys.kbx, only our keys.
        argv = ["gpgv", "--homedir", home, "--status-fd", "1", "--keyring", str(ring), str(sig), str(data)]
        try:
            result = run(argv, timeout=GPGV_TIMEOUT)
        except NotFound as exc:
            raise HostError(
                "gpgv not found; it is needed to check the ISO's signature",
                "install it (Debian/Ubuntu: apt install gpgv; Fedora: dnf install gnupg2; Arch: pacman -S gnupg)",
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise VerifyError(f"{label}: gpgv did not finish within {GPGV_TIMEOUT:.0f} s", "is the disk very slow?") from exc
    status: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, *args = line[9:].split()
            status.setdefault(keyword, args)
    trust_hint = "the ISO may have been tampered with; download it again from another mirror"
    if "BADSIG" in status:
        raise VerifyError(f"{label}: BAD signature from key {status['BADSIG'][0]}: the file is not what was signed", trust_hint)
    if "REVKEYSIG" in status:
        raise VerifyError(f"{label}: signed by revoked key {status['REVKEYSIG'][0]}", trust_hint)
    if "NO_PUBKEY" in status or "ERRSIG" in status:
        errsig = status.get("ERRSIG", [])
        # ERRSIG's 7th field is the issuer fingerprint when the signature carries one.
        who = errsig[6] if len(errsig) > 6 and errsig[6] != "-" else (status.get("NO_PUBKEY") or errsig or ["?"])[0]
        raise VerifyError(
            f"{label}: signed by key {who}, which is not a trusted release key",
            "if you trust that key, pass its public key with --trusted-key FILE",
        )
    validsig = status.get("VALIDSIG")
    if result.returncode != 0 or not validsig:
        reason = result.stderr.strip().splitlines()[-1:] or ["no valid signature found"]
        raise VerifyError(f"{label}: signature check failed: {reason[0]}", trust_hint)
    primary = validsig[9] if len(validsig) > 9 else validsig[0]
    # Belt and braces: gpgv only knew our keys, but say so in code rather than trust that alone.
    if primary not in keyring.fingerprints:
        raise VerifyError(f"{label}: signed by key {primary}, which is not a trusted release key")
    return primary


# --- HTTP --------------------------------------------------------------------------------


class _Fetch(Exception):
    """One request failed: why, and the HTTP status when there was one."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.status = url, reason, status


def _open(url: str, start: int = 0) -> http.client.HTTPResponse:
    headers = {"User-Agent": f"provision-arch/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - IsoSource admits http(s) only
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=TIMEOUT)  # noqa: S310
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _Fetch(url, f"HTTP {exc.code} {exc.reason}", exc.code) from exc
    except urllib.error.URLError as exc:
        raise _Fetch(url, str(exc.reason)) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _Fetch(url, str(exc) or type(exc).__name__) from exc
    return response


def _get(url: str) -> bytes:
    """A small file (checksums, signature) into memory."""
    with _open(url) as response:
        try:
            data = response.read(SMALL_LIMIT + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise _Fetch(url, str(exc) or type(exc).__name__) from exc
    if len(data) > SMALL_LIMIT:
        raise _Fetch(url, f"larger than {SMALL_LIMIT} bytes; not a checksum or signature file")
    return data


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class _Meter:
    """A rich progress bar on a terminal; elsewhere a plain line every 10 %."""

    def __init__(self, progress: Progress, name: str) -> None:
        self.console, self.name = progress.console, name
        self.bar: rich_progress.Progress | None = None
        self.task: rich_progress.TaskID | None = None
        self.total: int | None = None
        self.done = 0
        self.shown = -1

    def __enter__(self) -> _Meter:
        if self.console.is_terminal:
            self.bar = rich_progress.Progress(
                rich_progress.TextColumn("{task.description}"),
                rich_progress.BarColumn(),
                rich_progress.DownloadColumn(binary_units=True),
                rich_progress.TransferSpeedColumn(),
                rich_progress.TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(f"Downloading {escape(self.name)}", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def at(self, done: int, total: int | None) -> None:
        self.done, self.total = done, total
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=done, total=total)
        elif total:
            tenth = done * 10 // total
            if tenth != self.shown:
                self.shown = tenth
                self.console.print(f"    {tenth * 10}% ({_size(done)} of {_size(total)})", highlight=False)


def _download(url: str, part: Path, progress: Progress) -> str:
    """Fetch ``url`` into ``part``, resuming what is there; the sha256 of the whole file."""
    name = url.rsplit("/", 1)[-1]
    progress.console.print(f"==> Downloading {escape(name)} from {escape(url.rsplit('/', 1)[0])}/")
    started, status = time.monotonic(), "failed"
    try:
        with _Meter(progress, name) as meter:
            for attempt in range(len(RETRY_DELAYS) + 1):
                try:
                    digest = _download_once(url, part, progress, meter)
                    status = "ok"
                    return digest
                except _Fetch as exc:
                    # A 4xx will not get better by asking again; a dropped connection or 5xx may.
                    if (exc.status is not None and exc.status < 500) or attempt == len(RETRY_DELAYS):
                        kept = f"; {_size(part.stat().st_size)} kept in {part.name}, resumed next time" if part.exists() else ""
                        raise IsoError(f"could not download {name} from {exc.url}: {exc.reason}{kept}", HINT) from exc
                    progress.note(f"download of {name} interrupted ({exc.reason}); resuming in {RETRY_DELAYS[attempt]:.0f} s")
                    time.sleep(RETRY_DELAYS[attempt])
            raise AssertionError("unreachable")
    finally:
        seconds = time.monotonic() - started
        progress.timings.append(Timing("download-iso", seconds, status))
        mark = "[green]✓[/]" if status == "ok" else "[red]✗[/]"
        progress.console.print(f"{mark} Downloading {escape(name)} [dim]({seconds:.1f} s)[/]")


def _request_rest(url: str, part: Path, progress: Progress) -> tuple[http.client.HTTPResponse | None, int, int | None]:
    """Ask for what ``part`` lacks: (response or None when nothing is missing, bytes kept, total size)."""
    have = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, start=have)
    except _Fetch as exc:
        if exc.status != 416:
            raise
        # 416: we already hold at least the whole file (a run died before renaming). Let the
        # checksum decide whether it is good.
        return None, have, have
    length = response.headers.get("Content-Length")
    if have and response.status != 206:
        progress.note(f"{url} ignored the resume request; downloading {part.name.removesuffix('.part')} from the start")
        have = 0
    total = have + int(length) if length and length.isdigit() else None
    if have == 0 and total:
        free = shutil.disk_usage(part.parent).free
        if free < total:
            response.close()
            raise HostError(f"{_size(total)} needed for the ISO in {part.parent}, {_size(free)} free", "free some space")
    return response, have, total


def _download_once(url: str, part: Path, progress: Progress, meter: _Meter) -> str:
    hasher = hashlib.sha256()
    response, have, total = _request_rest(url, part, progress)
    with contextlib.ExitStack() as stack:
        if response is not None:
            stack.enter_context(response)
        with part.open("r+b" if have else "wb") as out:
            # Hash what an earlier attempt wrote, then keep hashing as the rest arrives.
            while have and (block := out.read(CHUNK)):
                hasher.update(block)
            out.seek(have)
            out.truncate()
            meter.at(have, total)
            while response is not None:
                try:
                    block = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    # IncompleteRead is the server closing early: keep what arrived (unhashed: the
                    # next attempt hashes the whole .part from disk before it resumes).
                    if isinstance(exc, http.client.IncompleteRead) and exc.partial:
                        out.write(exc.partial)
                    raise _Fetch(url, f"connection lost ({type(exc).__name__})") from exc
                if not block:
                    break
                out.write(block)
                hasher.update(block)
                have += len(block)
                meter.at(have, total)
            out.flush()
            os.fsync(out.fileno())
    if total is not None and have < total:
        raise _Fetch(url, f"connection closed after {_size(have)} of {_size(total)}")
    return hasher.hexdigest()


# --- The cache ---------------------------------------------------------------------------


def iso_name(version: str) -> str:
    return f"archlinux-{version}-x86_64.iso"


def _sidecars(iso: Path) -> tuple[Path, Path]:
    return iso.with_name(iso.name + ".sig"), iso.with_name(iso.name + ".verified")


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            hasher.update(block)
    return hasher.hexdigest()


def _mark_verified(iso: Path, sha256: str, signer: str) -> None:
    stat = iso.stat()
    record = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "signer": signer}
    marker = _sidecars(iso)[1]
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(marker)


def _forget(iso: Path) -> None:
    for path in (iso, *_sidecars(iso)):
        path.unlink(missing_ok=True)


def _cached(iso: Path, keyring: Keyring, progress: Progress, expect: str | None = None) -> bool:
    """Whether ``iso`` is in the cache and known good; a cached file that fails is removed.

    The sidecar records size and mtime, so an unchanged verified ISO is reused without reading
    its 1.2 GB again; anything else is checked afresh against the cached signature.
    """
    if not iso.is_file():
        return False
    sig, marker = _sidecars(iso)
    try:
        record = json.loads(marker.read_text())
        stat = iso.stat()
        if (
            record["size"] == stat.st_size
            and record["mtime_ns"] == stat.st_mtime_ns
            and record["signer"] in keyring.fingerprints  # still trusted with today's key list
            and (expect is None or record["sha256"] == expect.lower())
        ):
            progress.console.print(f"[green]✓[/] Using cached {escape(iso.name)} (verified, signed by {record['signer']})")
            return True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not sig.is_file():
        _forget(iso)
        return False
    try:
        with progress.step("verify-iso", f"Re-checking cached {iso.name}"):
            digest = _sha256(iso)
            if expect is not None and digest != expect.lower():
                raise VerifyError(f"{iso.name}: sha256 does not match sha256sums.txt")
            signer = verify_signature(iso, sig, keyring, iso.name)
    except VerifyError as exc:
        progress.note(f"cached {iso.name} removed: {exc.message}")
        _forget(iso)
        return False
    _mark_verified(iso, digest, signer)
    return True


def _newest_cached(cache_dir: Path, keyring: Keyring, progress: Progress) -> Path | None:
    candidates = sorted((p for p in cache_dir.glob("archlinux-*-x86_64.iso") if ISO_NAME_RE.match(p.name)), reverse=True)
    for iso in candidates:  # names sort by date: YYYY.MM.DD
        if _cached(iso, keyring, progress):
            return iso
    return None


@contextlib.contextmanager
def _locked(cache_dir: Path, progress: Progress) -> Iterator[None]:
    """One download per cache at a time: two runs appending to one .part would corrupt it."""
    with (cache_dir / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.note(f"another provision-arch is using {cache_dir}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # the lock goes with the file descriptor


# --- Entry points ------------------------------------------------------------------------


def parse_sums(text: str, version: str | None) -> tuple[str, str]:
    """(ISO file name, sha256) from sha256sums.txt: the given release, or the newest listed."""
    listed: dict[str, str] = {}
    for line in text.splitlines():
        match = SUMS_LINE_RE.match(line.strip())
        if match and ISO_NAME_RE.match(match[2]):
            listed[match[2]] = match[1].lower()
    if version is not None:
        name = iso_name(version)
        if name not in listed:
            raise IsoError(f"sha256sums.txt does not list {name}", HINT)
        return name, listed[name]
    if not listed:
        raise IsoError("sha256sums.txt lists no archlinux-YYYY.MM.DD-x86_64.iso", HINT)
    name = max(listed)
    return name, listed[name]


def _release(source: IsoSource, progress: Progress) -> tuple[str, bytes]:
    """The release directory URL and its sha256sums.txt: mirror first, then the archive."""
    bases = [f"{source.mirror.rstrip('/')}/iso/{source.version or 'latest'}/"]
    if source.version is not None:
        # Mirrors keep about three months of ISOs; the Archive keeps all of them.
        bases.append(f"{source.archive.rstrip('/')}/iso/{source.version}/")
    for base in bases:
        try:
            return base, _get(base + "sha256sums.txt")
        except _Fetch as exc:
            if exc.status == 404 and base != bases[-1]:
                progress.note(f"{source.version} is not on {source.mirror}; trying the Arch Linux Archive")
                continue
            what = f"release {source.version}" if source.version else "the latest release"
            raise IsoError(f"could not fetch the checksums of {what} from {exc.url}: {exc.reason}", HINT) from exc
    raise AssertionError("unreachable")


def obtain_iso(source: IsoSource, cache_dir: Path, progress: Progress) -> Path:
    """A verified Arch ISO in ``cache_dir``: from the cache, or downloaded and checked."""
    keyring = load_keyring(source.trusted_keys)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir, progress):
        if source.version is not None:
            wanted = cache_dir / iso_name(source.version)
            if _cached(wanted, keyring, progress):
                return wanted
        try:
            base, sums = _release(source, progress)
        except IsoError:
            if source.version is None and (fallback := _newest_cached(cache_dir, keyring, progress)):
                progress.note(f"cannot reach {source.mirror} to look for a newer release; using the cached {fallback.name}")
                return fallback
            raise
        name, expected = parse_sums(sums.decode("utf-8", "replace"), source.version)
        iso = cache_dir / name
        if _cached(iso, keyring, progress, expect=expected):
            return iso
        # The signature first: a mirror without one fails before a 1 GB download, not after.
        try:
            signature = _get(base + name + ".sig")
        except _Fetch as exc:
            if exc.status == 404:
                raise VerifyError(
                    f"{name}: no signature at {exc.url}; refusing an unverifiable ISO", "try another --iso-mirror"
                ) from exc
            raise IsoError(f"could not fetch {name}.sig from {exc.url}: {exc.reason}", HINT) from exc
        part = cache_dir / (name + ".part")
        digest = _download(base + name, part, progress)
        with progress.step("verify-iso", f"Verifying {name}"):
            if digest != expected:
                # A bad .part cannot be resumed into a good file: drop it so the next run starts clean.
                part.unlink(missing_ok=True)
                raise VerifyError(
                    f"{name}: sha256 does not match sha256sums.txt (expected {expected[:16]}…, got {digest[:16]}…)",
                    "the download is corrupt or the mirror is bad; run again, or try another --iso-mirror",
                )
            sig = cache_dir / (name + ".sig.part")
            sig.write_bytes(signature)
            try:
                signer = verify_signature(part, sig, keyring, name)
            except VerifyError:
                part.unlink(missing_ok=True)
                sig.unlink(missing_ok=True)
                raise
            sig.replace(_sidecars(iso)[0])
            part.replace(iso)
            _mark_verified(iso, digest, signer)
        return iso


def check_given_iso(iso: Path, trusted_keys: tuple[Path, ...], progress: Progress) -> None:
    """The user's own ISO: verified when ``<iso>.sig`` lies beside it, else used with a warning."""
    sig = iso.with_name(iso.name + ".sig")
    if not sig.is_file():
        progress.note(f"{iso.name} is not verified (no {sig.name} beside it); use it only if you trust where it came from")
        return
    keyring = load_keyring(trusted_keys)
    with progress.step("verify-iso", f"Verifying {iso.name} against {sig.name}"):
        signer = verify_signature(iso, sig, keyring, str(iso))
    progress.console.print(f"    signed by {signer}", style="dim")

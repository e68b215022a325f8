"""Get the Arch ISO when the user gave none, and check an ISO the user gave.

Trust comes from the OpenPGP signature alone (see ``trust``): ``sha256sums.txt`` comes from
the same mirror as the ISO, so it only catches corruption, never a hostile mirror.

A name is bound to the signed bytes, not to what the mirror calls them: the release is the
one the ISO's own label and UUID carry (``iso.Release``), a pinned ``--iso-version`` that
gets another release is refused (exit 8), and the cache files an ISO under its real release,
so an old signed ISO served as ``latest`` or listed as ``archlinux-2099.01.01`` is neither
taken for that release nor later preferred as the newest.

Downloads go to ``<name>.part``, are checked, and only then renamed into the cache: a file
without the ``.verified`` sidecar beside it was never accepted. A ``.part`` left by an
interrupted run is resumed (see ``download``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from provisioner.download import FetchError, download, get_small, size_text
from provisioner.errors import IsoError, UsageError, VerifyError
from provisioner.events import Bus
from provisioner.iso import read_release
from provisioner.trust import Keyring, load_keyring, verify_signature

DEFAULT_MIRROR = "https://geo.mirror.pkgbuild.com"
ARCHIVE = "https://archive.archlinux.org"
HINT = "check --iso-mirror and the network, or download the ISO yourself and pass --iso PATH"

# Every pattern here is ASCII-only ([0-9], re.ASCII): \d would also take other scripts' digits.
VERSION_RE = re.compile(r"^[0-9]{4}\.[0-9]{2}\.[0-9]{2}$")
# The name comes from the mirror's sha256sums.txt and becomes a path in the cache: only this
# exact shape is accepted, so a hostile listing cannot name '../../x'.
ISO_NAME_RE = re.compile(r"^archlinux-([0-9]{4}\.[0-9]{2}\.[0-9]{2})-x86_64\.iso$")
SUMS_LINE_RE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)$", re.ASCII)


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
        if self.version is not None and not VERSION_RE.fullmatch(self.version):
            raise UsageError(f"invalid --iso-version {self.version!r}", "give a release date, e.g. 2024.06.01")


# --- The release -------------------------------------------------------------------------


def iso_name(version: str) -> str:
    return f"archlinux-{version}-x86_64.iso"


def parse_sums(text: str, version: str | None) -> tuple[str, str]:
    """(ISO file name, sha256) from sha256sums.txt: the given release, or the newest listed."""
    listed: dict[str, str] = {}
    for line in text.splitlines():
        match = SUMS_LINE_RE.match(line.strip())
        if match and ISO_NAME_RE.fullmatch(match[2]):
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


def named_version(name: str) -> str | None:
    """The release an ISO's file name claims (archlinux-YYYY.MM.DD-x86_64.iso), or None."""
    match = ISO_NAME_RE.fullmatch(name)
    return match[1] if match else None


def bind(iso: Path, wanted: str | None, shown: str) -> str:
    """The release the ISO's own label and UUID carry; a VerifyError when it is not ``wanted``."""
    release = read_release(iso)
    if release.version is None:
        raise VerifyError(
            f"{shown}: label {release.label!r} and UUID {release.uuid} name no release day; cannot tell which release it is",
            "give an Arch ISO from 2020 or later (its /boot/*.uuid dates it), with --iso if you trust it",
        )
    if wanted is not None and release.version != wanted:
        raise VerifyError(
            f"{shown} is release {release.version} (UUID {release.uuid}), not {wanted}",
            "the mirror or the file name offers another release under that name; try another --iso-mirror, "
            "or rename the file to the release it is",
        )
    return release.version


def _release(source: IsoSource, events: Bus) -> tuple[str, bytes]:
    """The release directory URL and its sha256sums.txt: mirror first, then the archive."""
    bases = [f"{source.mirror.rstrip('/')}/iso/{source.version or 'latest'}/"]
    if source.version is not None:
        # Mirrors keep about three months of ISOs; the Archive keeps all of them.
        bases.append(f"{source.archive.rstrip('/')}/iso/{source.version}/")
    for base in bases:
        try:
            return base, get_small(base + "sha256sums.txt")
        except FetchError as exc:
            if exc.status == 404 and base != bases[-1]:
                events.note(f"{source.version} is not on {source.mirror}; trying the Arch Linux Archive")
                continue
            what = f"release {source.version}" if source.version else "the latest release"
            raise IsoError(f"could not fetch the checksums of {what} from {exc.url}: {exc.reason}", HINT) from exc
    raise AssertionError("unreachable")


def _signature(base: str, name: str) -> bytes:
    """The ISO's detached signature; a release without one is refused, not used unchecked."""
    try:
        return get_small(base + name + ".sig")
    except FetchError as exc:
        if exc.status == 404:
            raise VerifyError(
                f"{name}: no signature at {exc.url}; refusing an unverifiable ISO", "try another --iso-mirror"
            ) from exc
        raise IsoError(f"could not fetch {name}.sig from {exc.url}: {exc.reason}", HINT) from exc


def _download_iso(url: str, part: Path, events: Bus) -> str:
    """The ISO into ``part`` as the ``download-iso`` step; its sha256."""
    name = part.name.removesuffix(".part")
    try:
        with events.step("download-iso", f"Downloading {name} from {url.rsplit('/', 1)[0]}/"):
            return download(url, part, events)
    except FetchError as exc:
        kept = f"; {size_text(part.stat().st_size)} kept in {part.name}, resumed next time" if part.exists() else ""
        raise IsoError(f"could not download {name} from {exc.url}: {exc.reason}{kept}", HINT) from exc


# --- The cache ---------------------------------------------------------------------------


def _sidecars(iso: Path) -> tuple[Path, Path]:
    return iso.with_name(iso.name + ".sig"), iso.with_name(iso.name + ".verified")


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _mark_verified(iso: Path, sha256: str, keyring: Keyring) -> None:
    stat = iso.stat()
    record = {
        "sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "keyring": keyring.digest,
        "version": named_version(iso.name),  # bound to the bytes before the ISO got that name
    }  # fmt: skip
    marker = _sidecars(iso)[1]
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(marker)


def _forget(iso: Path) -> None:
    for path in (iso, *_sidecars(iso)):
        path.unlink(missing_ok=True)


def _still_verified(iso: Path, keyring: Keyring, expect: str | None) -> bool:
    """Whether the sidecar vouches for ``iso`` as it is now, under today's keys and its name.

    Size and mtime stand in for the content, so an unchanged ISO is not read again. The
    keyring digest makes any change to the trusted keys (a key dropped or added) send the
    ISO back to gpgv rather than trust a verdict reached with other keys; the version, a
    file renamed (or a sidecar from before names were bound) back to the label and UUID.
    """
    try:
        record = json.loads(_sidecars(iso)[1].read_text())
        stat = iso.stat()
        return bool(
            record["size"] == stat.st_size
            and record["mtime_ns"] == stat.st_mtime_ns
            and record["keyring"] == keyring.digest
            and record.get("version") == named_version(iso.name)
            and (expect is None or record["sha256"] == expect.lower())
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _cached(iso: Path, keyring: Keyring, events: Bus, expect: str | None = None) -> bool:
    """Whether ``iso`` is in the cache and known good; a cached file that fails is removed."""
    if not iso.is_file():
        return False
    if _still_verified(iso, keyring, expect):
        events.note(f"using cached {iso.name} (verified)")
        return True
    sig = _sidecars(iso)[0]
    if not sig.is_file():
        _forget(iso)
        return False
    try:
        with events.step("verify-iso", f"Re-checking cached {iso.name}"):
            digest = _sha256(iso)
            if expect is not None and digest != expect.lower():
                raise VerifyError(f"{iso.name}: sha256 does not match sha256sums.txt")
            verify_signature(iso, sig, keyring, iso.name)
            bind(iso, named_version(iso.name), iso.name)
    except (VerifyError, IsoError) as exc:
        events.note(f"cached {iso.name} removed: {exc.message}")
        _forget(iso)
        return False
    _mark_verified(iso, digest, keyring)
    return True


def _newest_cached(cache_dir: Path, keyring: Keyring, events: Bus) -> Path | None:
    candidates = sorted((p for p in cache_dir.glob("archlinux-*-x86_64.iso") if ISO_NAME_RE.fullmatch(p.name)), reverse=True)
    for iso in candidates:  # names sort by date: YYYY.MM.DD
        if _cached(iso, keyring, events):
            return iso
    return None


@contextlib.contextmanager
def _locked(cache_dir: Path, events: Bus) -> Iterator[None]:
    """One download per cache at a time: two runs appending to one .part would corrupt it."""
    with (cache_dir / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            events.note(f"another provision-arch is using {cache_dir}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # the lock goes with the file descriptor


# --- Entry points ------------------------------------------------------------------------


def obtain_iso(source: IsoSource, cache_dir: Path, events: Bus) -> Path:
    """A verified Arch ISO in ``cache_dir``: from the cache, or downloaded and checked."""
    keyring = load_keyring(source.trusted_keys)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir, events):
        if source.version is not None:
            wanted = cache_dir / iso_name(source.version)
            if _cached(wanted, keyring, events):
                return wanted
        try:
            base, sums = _release(source, events)
        except IsoError:
            if source.version is None and (fallback := _newest_cached(cache_dir, keyring, events)):
                events.note(f"cannot reach {source.mirror} to look for a newer release; using the cached {fallback.name}")
                return fallback
            raise
        name, expected = parse_sums(sums.decode("utf-8", "replace"), source.version)
        iso = cache_dir / name
        if _cached(iso, keyring, events, expect=expected):
            return iso
        # The signature first: a mirror without one fails before a 1 GB download, not after.
        signature = _signature(base, name)
        part = cache_dir / (name + ".part")
        digest = _download_iso(base + name, part, events)
        with events.step("verify-iso", f"Verifying {name}"):
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
                verify_signature(part, sig, keyring, name)
            except VerifyError:
                part.unlink(missing_ok=True)
                sig.unlink(missing_ok=True)
                raise
            try:
                version = bind(part, source.version, name)
            except (VerifyError, IsoError):
                part.unlink(missing_ok=True)  # signed, but not what was asked for: not kept
                sig.unlink(missing_ok=True)
                raise
            if version != named_version(name):
                events.note(f"{name} from {base} is release {version}; cached as {iso_name(version)}")
            iso = cache_dir / iso_name(version)
            sig.replace(_sidecars(iso)[0])
            part.replace(iso)
            _mark_verified(iso, digest, keyring)
        return iso


def check_given_iso(iso: Path, trusted_keys: tuple[Path, ...], events: Bus) -> None:
    """The user's own ISO: verified when ``<iso>.sig`` lies beside it, else used with a warning.

    A file named for a release (archlinux-YYYY.MM.DD-x86_64.iso) must be that release.
    """
    if (claimed := named_version(iso.name)) is not None and iso.is_file():
        bind(iso, claimed, str(iso))
    sig = iso.with_name(iso.name + ".sig")
    if not sig.is_file():
        events.note(f"{iso.name} is not verified (no {sig.name} beside it); use it only if you trust where it came from")
        return
    keyring = load_keyring(trusted_keys)
    with events.step("verify-iso", f"Verifying {iso.name} against {sig.name}"):
        signer = verify_signature(iso, sig, keyring, str(iso))
    events.note(f"{iso.name} is signed by {signer}")

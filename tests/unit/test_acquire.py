"""ISO download, resume, cache and OpenPGP verification against a real loopback mirror."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from provisioner import acquire
from provisioner.acquire import IsoSource, check_given_iso, obtain_iso
from provisioner.errors import ExitCode, HostError, IsoError, ProvisionError, UsageError, VerifyError
from provisioner.report import Progress
from tests.unit.fake_mirror import FakeMirror, Signer

RELEASE_FPR = "3E80CA1A8B89F69CBA57D98A76A5EF9054449A5C"
VERSION = "2024.06.01"
NAME = f"archlinux-{VERSION}-x86_64.iso"
ISO = os.urandom(300 * 1024)


def sums_for(data: bytes, name: str = NAME) -> bytes:
    # The shape of a real sha256sums.txt: the dated ISO, the undated alias and the bootstrap.
    digest = hashlib.sha256(data).hexdigest()
    return (
        f"{'1' * 64}  archlinux-bootstrap-{VERSION}-x86_64.tar.zst\n"
        f"{'2' * 64}  archlinux-bootstrap-x86_64.tar.zst\n"
        f"{digest}  {name}\n"
        f"{digest}  archlinux-x86_64.iso\n"
    ).encode()


@pytest.fixture(scope="session")
def signer() -> Iterator[Signer]:
    key = Signer("release")
    yield key
    key.close()


@pytest.fixture(scope="session")
def stranger() -> Iterator[Signer]:
    key = Signer("stranger")
    yield key
    key.close()


@pytest.fixture(scope="session")
def good_sig(signer: Signer) -> bytes:
    return signer.sign(ISO)


@pytest.fixture
def key_file(signer: Signer, tmp_path: Path) -> Path:
    return signer.export(tmp_path / "test-release-key.asc")


@pytest.fixture
def mirror(good_sig: bytes) -> Iterator[FakeMirror]:
    files = {}
    for folder in ("latest", VERSION):
        files[f"/iso/{folder}/sha256sums.txt"] = sums_for(ISO)
        files[f"/iso/{folder}/{NAME}"] = ISO
        files[f"/iso/{folder}/{NAME}.sig"] = good_sig
    server = FakeMirror(files=files).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_retry_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acquire, "RETRY_DELAYS", (0.0, 0.0, 0.0))


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def progress(out: io.StringIO) -> Progress:
    # Not a terminal: plain lines, which the tests read back.
    return Progress(console=Console(file=out, width=300, highlight=False))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "iso"


def source(mirror: FakeMirror, key: Path, version: str | None = None) -> IsoSource:
    return IsoSource(mirror=mirror.url, version=version, trusted_keys=(key,))


def iso_requests(mirror: FakeMirror, folder: str = "latest") -> list[str | None]:
    """The Range header of each request for the ISO itself."""
    return [r.range for r in mirror.requests if r.path == f"/iso/{folder}/{NAME}"]


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name != ".lock") if cache.exists() else []


def test_latest_is_downloaded_verified_and_cached(mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress) -> None:
    iso = obtain_iso(source(mirror, key_file), cache, progress)
    assert iso == cache / NAME
    assert iso.read_bytes() == ISO
    assert leftovers(cache) == [NAME, f"{NAME}.sig", f"{NAME}.verified"]
    assert [t.name for t in progress.timings] == ["download-iso", "verify-iso"]
    assert all(t.status == "ok" for t in progress.timings)


def test_wrong_checksum_keeps_file_out_of_cache(mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress) -> None:
    mirror.files["/iso/latest/sha256sums.txt"] = sums_for(b"something else")
    with pytest.raises(VerifyError) as caught:
        obtain_iso(source(mirror, key_file), cache, progress)
    assert caught.value.exit_code == ExitCode.VERIFY
    assert caught.value.message.startswith(f"{NAME}: sha256 does not match sha256sums.txt")
    assert leftovers(cache) == []


def test_bad_signature_keeps_file_out_of_cache(
    mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress, signer: Signer
) -> None:
    mirror.files[f"/iso/latest/{NAME}.sig"] = signer.sign(ISO + b"x")
    with pytest.raises(VerifyError) as caught:
        obtain_iso(source(mirror, key_file), cache, progress)
    assert caught.value.exit_code == ExitCode.VERIFY
    assert f"{NAME}: BAD signature" in caught.value.message
    assert leftovers(cache) == []


def test_missing_signature_fails_before_downloading(mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress) -> None:
    del mirror.files[f"/iso/latest/{NAME}.sig"]
    with pytest.raises(VerifyError) as caught:
        obtain_iso(source(mirror, key_file), cache, progress)
    assert f"{NAME}: no signature at {mirror.url}/iso/latest/{NAME}.sig" in caught.value.message
    assert iso_requests(mirror) == []
    assert leftovers(cache) == []


def test_unknown_signer_is_named(mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress, stranger: Signer) -> None:
    mirror.files[f"/iso/latest/{NAME}.sig"] = stranger.sign(ISO)
    with pytest.raises(VerifyError) as caught:
        obtain_iso(source(mirror, key_file), cache, progress)
    assert caught.value.message == f"{NAME}: signed by key {stranger.fingerprint}, which is not a trusted release key"
    assert "--trusted-key" in caught.value.hint
    assert leftovers(cache) == []


def test_shipped_key_alone_rejects_the_test_signature(mirror: FakeMirror, cache: Path, progress: Progress) -> None:
    # Without --trusted-key only the real release key is trusted.
    with pytest.raises(VerifyError, match="not a trusted release key"):
        obtain_iso(IsoSource(mirror=mirror.url), cache, progress)
    assert leftovers(cache) == []


def test_dropped_connection_is_resumed_with_range(
    mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress, out: io.StringIO
) -> None:
    mirror.drop[f"/iso/latest/{NAME}"] = 1
    iso = obtain_iso(source(mirror, key_file), cache, progress)
    first, second = iso_requests(mirror)
    assert first is None
    assert second == f"bytes={len(ISO) // 2}-"
    assert iso.read_bytes() == ISO
    assert "interrupted" in out.getvalue()
    assert leftovers(cache) == [NAME, f"{NAME}.sig", f"{NAME}.verified"]


def test_part_left_by_an_earlier_run_is_resumed(mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress) -> None:
    cache.mkdir(parents=True)
    (cache / f"{NAME}.part").write_bytes(ISO[:1000])
    iso = obtain_iso(source(mirror, key_file), cache, progress)
    assert iso_requests(mirror) == ["bytes=1000-"]
    assert iso.read_bytes() == ISO


def test_corrupt_part_is_dropped(mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress) -> None:
    cache.mkdir(parents=True)
    (cache / f"{NAME}.part").write_bytes(b"\0" * 1000)
    with pytest.raises(VerifyError, match="sha256 does not match"):
        obtain_iso(source(mirror, key_file), cache, progress)
    assert leftovers(cache) == []
    # … so the next run starts from byte 0 and succeeds.
    assert obtain_iso(source(mirror, key_file), cache, progress).read_bytes() == ISO
    assert iso_requests(mirror) == ["bytes=1000-", None]


def test_404_is_an_iso_error_with_hint(mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress) -> None:
    mirror.files.clear()
    with pytest.raises(IsoError) as caught:
        obtain_iso(source(mirror, key_file), cache, progress)
    assert caught.value.exit_code == ExitCode.ISO
    assert caught.value.message == (
        f"could not fetch the checksums of the latest release from {mirror.url}/iso/latest/sha256sums.txt: HTTP 404 Not Found"
    )
    assert "--iso PATH" in caught.value.hint


def test_iso_404_after_checksums(mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress) -> None:
    del mirror.files[f"/iso/latest/{NAME}"]
    with pytest.raises(IsoError, match=f"could not download {NAME} from .*: HTTP 404"):
        obtain_iso(source(mirror, key_file), cache, progress)
    assert len(iso_requests(mirror)) == 1  # a 404 is not retried
    assert [t.status for t in progress.timings] == ["failed"]


def test_server_gone_mid_download_keeps_part(mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress) -> None:
    mirror.drop[f"/iso/latest/{NAME}"] = -1
    with pytest.raises(IsoError) as caught:
        obtain_iso(source(mirror, key_file), cache, progress)
    assert caught.value.message.startswith(f"could not download {NAME} from {mirror.url}/iso/latest/{NAME}: connection")
    assert f"kept in {NAME}.part" in caught.value.message
    assert len(iso_requests(mirror)) == 1 + len(acquire.RETRY_DELAYS)
    # Only the partial file, never an ISO the cache would trust.
    assert leftovers(cache) == [f"{NAME}.part"]
    assert 0 < (cache / f"{NAME}.part").stat().st_size < len(ISO)


def test_unreachable_mirror(key_file: Path, cache: Path, progress: Progress) -> None:
    gone = FakeMirror().start()
    gone.stop()  # the port is closed now: connection refused
    with pytest.raises(IsoError, match=r"could not fetch the checksums of release 2024\.06\.01"):
        obtain_iso(source(gone, key_file, VERSION), cache, progress)


def test_cache_hit_needs_no_network(
    mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress, out: io.StringIO
) -> None:
    first = obtain_iso(source(mirror, key_file, VERSION), cache, progress)
    mirror.stop()
    again = obtain_iso(source(mirror, key_file, VERSION), cache, progress)
    assert again == first
    # Latest with the mirror down falls back to the newest verified ISO in the cache.
    assert obtain_iso(source(mirror, key_file), cache, progress) == first
    text = out.getvalue()
    assert f"Using cached {NAME} (verified, signed by" in text
    assert "using the cached" in text
    assert "Re-checking" not in text  # the sidecar spared re-reading the ISO


def test_latest_cache_hit_fetches_only_checksums(mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress) -> None:
    obtain_iso(source(mirror, key_file), cache, progress)
    mirror.requests.clear()
    obtain_iso(source(mirror, key_file), cache, progress)
    assert [r.path for r in mirror.requests] == ["/iso/latest/sha256sums.txt"]


def test_tampered_cached_iso_is_replaced(mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress) -> None:
    iso = obtain_iso(source(mirror, key_file), cache, progress)
    iso.write_bytes(b"evil" + ISO[4:])  # size the same, mtime changes
    mirror.requests.clear()
    assert obtain_iso(source(mirror, key_file), cache, progress).read_bytes() == ISO
    assert iso_requests(mirror) == [None]


def test_cached_iso_from_a_key_no_longer_trusted_is_not_used(
    mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress
) -> None:
    obtain_iso(source(mirror, key_file, VERSION), cache, progress)
    mirror.stop()
    with pytest.raises(IsoError):  # not reused: the test key was dropped, so it needs the network
        obtain_iso(IsoSource(mirror=mirror.url, version=VERSION), cache, progress)
    assert NAME not in leftovers(cache)


def test_old_release_comes_from_the_archive(
    mirror: FakeMirror, key_file: Path, cache: Path, progress: Progress, *, good_sig: bytes, out: io.StringIO
) -> None:
    for suffix, body in (("sha256sums.txt", sums_for(ISO)), (NAME, ISO), (f"{NAME}.sig", good_sig)):
        mirror.files[f"/archive/iso/{VERSION}/{suffix}"] = body
        del mirror.files[f"/iso/{VERSION}/{suffix}"]
    src = IsoSource(mirror=mirror.url, version=VERSION, trusted_keys=(key_file,), archive=f"{mirror.url}/archive")
    assert obtain_iso(src, cache, progress).read_bytes() == ISO
    assert "trying the Arch Linux Archive" in out.getvalue()
    assert iso_requests(mirror, f"{VERSION}") == []


def test_given_iso_with_good_signature(
    key_file: Path, tmp_path: Path, progress: Progress, *, good_sig: bytes, out: io.StringIO, signer: Signer
) -> None:
    iso = tmp_path / "my.iso"
    iso.write_bytes(ISO)
    (tmp_path / "my.iso.sig").write_bytes(good_sig)
    check_given_iso(iso, (key_file,), progress)
    assert f"signed by {signer.fingerprint}" in out.getvalue()


def test_given_iso_with_bad_signature(key_file: Path, tmp_path: Path, progress: Progress, good_sig: bytes) -> None:
    iso = tmp_path / "my.iso"
    iso.write_bytes(ISO[:-1] + b"?")
    (tmp_path / "my.iso.sig").write_bytes(good_sig)
    with pytest.raises(VerifyError) as caught:
        check_given_iso(iso, (key_file,), progress)
    assert caught.value.message.startswith(f"{iso}: BAD signature")
    assert caught.value.exit_code == ExitCode.VERIFY


def test_given_iso_with_garbage_signature(key_file: Path, tmp_path: Path, progress: Progress) -> None:
    iso = tmp_path / "my.iso"
    iso.write_bytes(ISO)
    (tmp_path / "my.iso.sig").write_bytes(b"not a signature")
    with pytest.raises(VerifyError, match=f"{iso}: signature check failed"):
        check_given_iso(iso, (key_file,), progress)


def test_given_iso_without_signature_warns(tmp_path: Path, progress: Progress, out: io.StringIO) -> None:
    iso = tmp_path / "my.iso"
    iso.write_bytes(ISO)
    check_given_iso(iso, (), progress)
    assert "my.iso is not verified (no my.iso.sig beside it)" in out.getvalue()


def test_missing_gpgv_is_a_host_error(
    key_file: Path, tmp_path: Path, progress: Progress, good_sig: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    iso = tmp_path / "my.iso"
    iso.write_bytes(ISO)
    (tmp_path / "my.iso.sig").write_bytes(good_sig)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(HostError, match="gpgv not found"):
        check_given_iso(iso, (key_file,), progress)


def test_shipped_release_key() -> None:
    shipped = acquire.shipped_keys()
    assert [name for name, _ in shipped] == [f"pierre-schmitz-{RELEASE_FPR}.asc"]
    assert acquire.fingerprints(acquire.dearmor(shipped[0][1])) == {RELEASE_FPR}
    assert acquire.load_keyring().fingerprints == {RELEASE_FPR}
    # Cross-check the hand-written packet parser with gpg itself.
    listing = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--show-keys"], input=shipped[0][1], capture_output=True, check=True, timeout=30
    ).stdout.decode()
    assert f"fpr:::::::::{RELEASE_FPR}:" in listing.splitlines()
    assert "pierre@archlinux.de" in listing


def test_trusted_key_must_be_a_key(tmp_path: Path) -> None:
    junk = tmp_path / "junk.asc"
    junk.write_text("hello\n")
    with pytest.raises(UsageError, match=r"junk\.asc is not an OpenPGP public key"):
        acquire.load_keyring((junk,))
    with pytest.raises(UsageError, match="cannot read --trusted-key"):
        acquire.load_keyring((tmp_path / "absent.asc",))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": "2024-06-01"}, "invalid --iso-version"),
        ({"version": "../../etc"}, "invalid --iso-version"),
        ({"mirror": "ftp://example.org"}, "invalid --iso-mirror URL"),
        ({"mirror": "geo.mirror.pkgbuild.com"}, "invalid --iso-mirror URL"),
    ],
)
def test_bad_source_is_a_usage_error(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        IsoSource(**kwargs)  # type: ignore[arg-type]
    assert isinstance(caught.value, ProvisionError)


def test_parse_sums_picks_the_dated_iso() -> None:
    text = sums_for(ISO).decode() + f"{'3' * 64}  archlinux-2023.01.01-x86_64.iso\n{'4' * 64}  ../evil-x86_64.iso\n"
    assert acquire.parse_sums(text, None) == (NAME, hashlib.sha256(ISO).hexdigest())
    assert acquire.parse_sums(text, "2023.01.01") == ("archlinux-2023.01.01-x86_64.iso", "3" * 64)
    with pytest.raises(IsoError, match=r"does not list archlinux-2022\.01\.01"):
        acquire.parse_sums(text, "2022.01.01")

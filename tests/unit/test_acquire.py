"""ISO download, resume, cache and OpenPGP verification against a real loopback mirror."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import acquire, download, trust
from provisioner.acquire import IsoSource, check_given_iso, obtain_iso
from provisioner.errors import ExitCode, HostError, IsoError, UsageError, VerifyError
from provisioner.events import Bus, Download, Event, Note, StepFinished, StepStarted
from tests.helpers import make_iso
from tests.unit.fake_mirror import FakeMirror, Signer

RELEASE_FPR = "3E80CA1A8B89F69CBA57D98A76A5EF9054449A5C"
VERSION = "2024.06.01"
NAME = f"archlinux-{VERSION}-x86_64.iso"


def arch_iso(version: str) -> bytes:
    """A small ISO that is release ``version`` by its own label and UUID, as archiso makes them."""
    year, month, day = version.split(".")
    with tempfile.TemporaryDirectory() as tmp:
        return make_iso(Path(tmp) / "a.iso", label=f"ARCH_{year}{month}", uuid=f"{year}-{month}-{day}-10-20-30-00").read_bytes()


ISO = arch_iso(VERSION)


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
    monkeypatch.setattr(download, "RETRY_DELAYS", (0.0, 0.0, 0.0))


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


def steps(log: list[Event]) -> list[tuple[str, str]]:
    """(step, status) of every finished step, in order."""
    return [(e.step, e.status) for e in log if isinstance(e, StepFinished)]


def notes(log: list[Event]) -> str:
    return "\n".join(e.message for e in log if isinstance(e, Note))


def test_latest_is_downloaded_verified_and_cached(
    mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, log: list[Event]
) -> None:
    iso = obtain_iso(source(mirror, key_file), cache, events)
    assert iso == cache / NAME
    assert iso.read_bytes() == ISO
    assert leftovers(cache) == [NAME, f"{NAME}.sig", f"{NAME}.verified"]
    assert [e.step for e in log if isinstance(e, StepStarted)] == ["download-iso", "verify-iso"]
    assert steps(log) == [("download-iso", "ok"), ("verify-iso", "ok")]
    # Progress arrives as Download events between the download step's start and finish.
    start = next(i for i, e in enumerate(log) if isinstance(e, StepStarted))
    finish = next(i for i, e in enumerate(log) if isinstance(e, StepFinished))
    progress = [e for e in log if isinstance(e, Download)]
    assert all(start < log.index(e) < finish for e in progress)
    assert {e.name for e in progress} == {NAME}
    assert {e.total for e in progress} == {len(ISO)}
    assert progress[0].done == 0
    assert progress[-1].done == len(ISO)
    assert [e.done for e in progress] == sorted(e.done for e in progress)


def test_wrong_checksum_keeps_file_out_of_cache(mirror: FakeMirror, key_file: Path, cache: Path, events: Bus) -> None:
    mirror.files["/iso/latest/sha256sums.txt"] = sums_for(b"something else")
    with pytest.raises(VerifyError) as caught:
        obtain_iso(source(mirror, key_file), cache, events)
    assert caught.value.exit_code == ExitCode.VERIFY
    assert caught.value.message.startswith(f"{NAME}: sha256 does not match sha256sums.txt")
    assert leftovers(cache) == []


def test_bad_signature_keeps_file_out_of_cache(
    mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, signer: Signer
) -> None:
    mirror.files[f"/iso/latest/{NAME}.sig"] = signer.sign(ISO + b"x")
    with pytest.raises(VerifyError) as caught:
        obtain_iso(source(mirror, key_file), cache, events)
    assert caught.value.exit_code == ExitCode.VERIFY
    assert f"{NAME}: BAD signature" in caught.value.message
    assert leftovers(cache) == []


def test_missing_signature_fails_before_downloading(mirror: FakeMirror, key_file: Path, cache: Path, events: Bus) -> None:
    del mirror.files[f"/iso/latest/{NAME}.sig"]
    with pytest.raises(VerifyError) as caught:
        obtain_iso(source(mirror, key_file), cache, events)
    assert f"{NAME}: no signature at {mirror.url}/iso/latest/{NAME}.sig" in caught.value.message
    assert iso_requests(mirror) == []
    assert leftovers(cache) == []


def test_unknown_signer_is_named(mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, stranger: Signer) -> None:
    mirror.files[f"/iso/latest/{NAME}.sig"] = stranger.sign(ISO)
    with pytest.raises(VerifyError) as caught:
        obtain_iso(source(mirror, key_file), cache, events)
    assert caught.value.message == f"{NAME}: signed by key {stranger.fingerprint}, which is not a trusted release key"
    assert "--trusted-key" in caught.value.hint
    assert leftovers(cache) == []


def test_shipped_key_alone_rejects_the_test_signature(mirror: FakeMirror, cache: Path, events: Bus) -> None:
    # Without --trusted-key only the real release key is trusted.
    with pytest.raises(VerifyError, match="not a trusted release key"):
        obtain_iso(IsoSource(mirror=mirror.url), cache, events)
    assert leftovers(cache) == []


def test_dropped_connection_is_resumed_with_range(
    mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, log: list[Event]
) -> None:
    mirror.drop[f"/iso/latest/{NAME}"] = 1
    iso = obtain_iso(source(mirror, key_file), cache, events)
    first, second = iso_requests(mirror)
    assert first is None
    assert second == f"bytes={len(ISO) // 2}-"
    assert iso.read_bytes() == ISO
    assert f"download of {NAME} interrupted" in notes(log)
    # The second attempt's progress picks up where the first stopped.
    done = [e.done for e in log if isinstance(e, Download)]
    assert done[0] == 0
    assert len(ISO) // 2 in done
    assert done[-1] == len(ISO)
    assert steps(log) == [("download-iso", "ok"), ("verify-iso", "ok")]
    assert leftovers(cache) == [NAME, f"{NAME}.sig", f"{NAME}.verified"]


def test_part_left_by_an_earlier_run_is_resumed(mirror: FakeMirror, key_file: Path, cache: Path, events: Bus) -> None:
    cache.mkdir(parents=True)
    (cache / f"{NAME}.part").write_bytes(ISO[:1000])
    iso = obtain_iso(source(mirror, key_file), cache, events)
    assert iso_requests(mirror) == ["bytes=1000-"]
    assert iso.read_bytes() == ISO


def test_corrupt_part_is_dropped(mirror: FakeMirror, key_file: Path, cache: Path, events: Bus) -> None:
    cache.mkdir(parents=True)
    (cache / f"{NAME}.part").write_bytes(b"\xff" * 1000)  # not zeros: an ISO starts with 32 KiB of them
    with pytest.raises(VerifyError, match="sha256 does not match"):
        obtain_iso(source(mirror, key_file), cache, events)
    assert leftovers(cache) == []
    # … so the next run starts from byte 0 and succeeds.
    assert obtain_iso(source(mirror, key_file), cache, events).read_bytes() == ISO
    assert iso_requests(mirror) == ["bytes=1000-", None]


def test_404_is_an_iso_error_with_hint(mirror: FakeMirror, key_file: Path, cache: Path, events: Bus) -> None:
    mirror.files.clear()
    with pytest.raises(IsoError) as caught:
        obtain_iso(source(mirror, key_file), cache, events)
    assert caught.value.exit_code == ExitCode.ISO
    assert caught.value.message == (
        f"could not fetch the checksums of the latest release from {mirror.url}/iso/latest/sha256sums.txt: HTTP 404 Not Found"
    )
    assert "--iso PATH" in caught.value.hint


def test_iso_404_after_checksums(mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, log: list[Event]) -> None:
    del mirror.files[f"/iso/latest/{NAME}"]
    with pytest.raises(IsoError, match=f"could not download {NAME} from .*: HTTP 404"):
        obtain_iso(source(mirror, key_file), cache, events)
    assert len(iso_requests(mirror)) == 1  # a 404 is not retried
    assert steps(log) == [("download-iso", "failed")]


def test_server_gone_mid_download_keeps_part(
    mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, log: list[Event]
) -> None:
    mirror.drop[f"/iso/latest/{NAME}"] = -1
    with pytest.raises(IsoError) as caught:
        obtain_iso(source(mirror, key_file), cache, events)
    assert caught.value.message.startswith(f"could not download {NAME} from {mirror.url}/iso/latest/{NAME}: connection")
    assert f"kept in {NAME}.part" in caught.value.message
    assert len(iso_requests(mirror)) == 1 + len(download.RETRY_DELAYS)
    assert notes(log).count("interrupted") == len(download.RETRY_DELAYS)
    assert steps(log) == [("download-iso", "failed")]
    # Only the partial file, never an ISO the cache would trust.
    assert leftovers(cache) == [f"{NAME}.part"]
    assert 0 < (cache / f"{NAME}.part").stat().st_size < len(ISO)


def test_unreachable_mirror(key_file: Path, cache: Path, events: Bus) -> None:
    gone = FakeMirror().start()
    gone.stop()  # the port is closed now: connection refused
    with pytest.raises(IsoError, match=r"could not fetch the checksums of release 2024\.06\.01"):
        obtain_iso(source(gone, key_file, VERSION), cache, events)


def test_cache_hit_needs_no_network(mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, log: list[Event]) -> None:
    first = obtain_iso(source(mirror, key_file, VERSION), cache, events)
    mirror.stop()
    log.clear()
    again = obtain_iso(source(mirror, key_file, VERSION), cache, events)
    assert again == first
    # Latest with the mirror down falls back to the newest verified ISO in the cache.
    assert obtain_iso(source(mirror, key_file), cache, events) == first
    text = notes(log)
    assert f"using cached {NAME} (verified)" in text
    assert f"using the cached {NAME}" in text
    assert steps(log) == []  # the sidecar spared re-reading the ISO: no verify-iso step


def test_changed_keyring_forces_reverification(
    mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, log: list[Event], *, stranger: Signer, tmp_path: Path
) -> None:
    iso = obtain_iso(source(mirror, key_file, VERSION), cache, events)
    before = json.loads((cache / f"{NAME}.verified").read_text())
    mirror.stop()  # everything below comes from the cache
    more = IsoSource(mirror=mirror.url, version=VERSION, trusted_keys=(key_file, stranger.export(tmp_path / "more.asc")))
    log.clear()
    assert obtain_iso(more, cache, events) == iso
    # The keys changed, so the cached verdict is not taken on trust: gpgv checks the ISO again …
    assert steps(log) == [("verify-iso", "ok")]
    after = json.loads((cache / f"{NAME}.verified").read_text())
    assert after["keyring"] != before["keyring"]
    assert after["keyring"] == trust.load_keyring(more.trusted_keys).digest
    # … and the sidecar now vouches for it under the new keys.
    log.clear()
    assert obtain_iso(more, cache, events) == iso
    assert steps(log) == []
    assert f"using cached {NAME} (verified)" in notes(log)


def test_latest_cache_hit_fetches_only_checksums(mirror: FakeMirror, key_file: Path, cache: Path, events: Bus) -> None:
    obtain_iso(source(mirror, key_file), cache, events)
    mirror.requests.clear()
    obtain_iso(source(mirror, key_file), cache, events)
    assert [r.path for r in mirror.requests] == ["/iso/latest/sha256sums.txt"]


def test_tampered_cached_iso_is_replaced(mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, log: list[Event]) -> None:
    iso = obtain_iso(source(mirror, key_file), cache, events)
    iso.write_bytes(b"evil" + ISO[4:])  # size the same, mtime changes
    mirror.requests.clear()
    log.clear()
    assert obtain_iso(source(mirror, key_file), cache, events).read_bytes() == ISO
    assert iso_requests(mirror) == [None]
    assert f"cached {NAME} removed: {NAME}: sha256 does not match" in notes(log)
    assert steps(log) == [("verify-iso", "failed"), ("download-iso", "ok"), ("verify-iso", "ok")]


def test_cached_iso_from_a_key_no_longer_trusted_is_not_used(
    mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, log: list[Event]
) -> None:
    obtain_iso(source(mirror, key_file, VERSION), cache, events)
    mirror.stop()
    log.clear()
    with pytest.raises(IsoError):  # not reused: the test key was dropped, so it needs the network
        obtain_iso(IsoSource(mirror=mirror.url, version=VERSION), cache, events)
    assert steps(log) == [("verify-iso", "failed")]
    assert "which is not a trusted release key" in notes(log)
    assert NAME not in leftovers(cache)


def test_old_release_comes_from_the_archive(
    mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, *, good_sig: bytes, log: list[Event]
) -> None:
    for suffix, body in (("sha256sums.txt", sums_for(ISO)), (NAME, ISO), (f"{NAME}.sig", good_sig)):
        mirror.files[f"/archive/iso/{VERSION}/{suffix}"] = body
        del mirror.files[f"/iso/{VERSION}/{suffix}"]
    src = IsoSource(mirror=mirror.url, version=VERSION, trusted_keys=(key_file,), archive=f"{mirror.url}/archive")
    assert obtain_iso(src, cache, events).read_bytes() == ISO
    assert f"{VERSION} is not on {mirror.url}; trying the Arch Linux Archive" in notes(log)
    assert iso_requests(mirror, f"{VERSION}") == []


def test_given_iso_with_good_signature(
    key_file: Path, tmp_path: Path, events: Bus, *, good_sig: bytes, log: list[Event], signer: Signer
) -> None:
    iso = tmp_path / "my.iso"
    iso.write_bytes(ISO)
    (tmp_path / "my.iso.sig").write_bytes(good_sig)
    check_given_iso(iso, (key_file,), events)
    assert f"my.iso is signed by {signer.fingerprint}" in notes(log)
    assert steps(log) == [("verify-iso", "ok")]


def test_signer_is_the_primary_key_when_a_subkey_signs(tmp_path: Path, events: Bus, log: list[Event]) -> None:
    # gpgv's VALIDSIG names both keys; the primary one is what a user knows and trusts.
    with_subkey = Signer("subkeyed", subkey=True)
    try:
        assert with_subkey.signing_key != with_subkey.fingerprint
        iso = tmp_path / "my.iso"
        iso.write_bytes(ISO)
        (tmp_path / "my.iso.sig").write_bytes(with_subkey.sign(ISO))
        check_given_iso(iso, (with_subkey.export(tmp_path / "key.asc"),), events)
    finally:
        with_subkey.close()
    assert f"my.iso is signed by {with_subkey.fingerprint}" in notes(log)
    assert with_subkey.signing_key not in notes(log)


def test_given_iso_with_bad_signature(key_file: Path, tmp_path: Path, events: Bus, good_sig: bytes) -> None:
    iso = tmp_path / "my.iso"
    iso.write_bytes(ISO[:-1] + b"?")
    (tmp_path / "my.iso.sig").write_bytes(good_sig)
    with pytest.raises(VerifyError) as caught:
        check_given_iso(iso, (key_file,), events)
    assert caught.value.message.startswith(f"{iso}: BAD signature")
    assert caught.value.exit_code == ExitCode.VERIFY


def test_given_iso_with_garbage_signature(key_file: Path, tmp_path: Path, events: Bus) -> None:
    iso = tmp_path / "my.iso"
    iso.write_bytes(ISO)
    (tmp_path / "my.iso.sig").write_bytes(b"not a signature")
    with pytest.raises(VerifyError, match=f"{iso}: signature check failed"):
        check_given_iso(iso, (key_file,), events)


def test_given_iso_without_signature_warns(tmp_path: Path, events: Bus, log: list[Event]) -> None:
    iso = tmp_path / "my.iso"
    iso.write_bytes(ISO)
    check_given_iso(iso, (), events)
    assert "my.iso is not verified (no my.iso.sig beside it)" in notes(log)
    assert steps(log) == []


def test_missing_gpgv_is_a_host_error(
    key_file: Path, tmp_path: Path, events: Bus, good_sig: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    iso = tmp_path / "my.iso"
    iso.write_bytes(ISO)
    (tmp_path / "my.iso.sig").write_bytes(good_sig)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(HostError, match="gpgv not found"):
        check_given_iso(iso, (key_file,), events)


def gpg(tmp_path: Path, *args: str, data: bytes) -> bytes:
    """gpg itself, in a throwaway home, as the reference the tests compare against."""
    argv = ["gpg", "--batch", "--homedir", str(tmp_path), *args]
    return subprocess.run(argv, input=data, capture_output=True, check=True, timeout=30).stdout


def test_shipped_release_key(tmp_path: Path) -> None:
    shipped = trust.shipped_keys()
    assert [name for name, _ in shipped] == [f"pierre-schmitz-{RELEASE_FPR}.asc"]
    # The file holds the key its name promises (the README tells maintainers to rely on that).
    listing = gpg(tmp_path, "--with-colons", "--show-keys", data=shipped[0][1]).decode()
    assert f"fpr:::::::::{RELEASE_FPR}:" in listing.splitlines()
    assert "pierre@archlinux.de" in listing
    # What gpgv is given is exactly gpg's own binary form of the shipped key.
    assert trust.load_keyring().data == gpg(tmp_path, "--dearmor", data=shipped[0][1])


def test_dearmor_handles_several_blocks(tmp_path: Path, key_file: Path, stranger: Signer) -> None:
    both = key_file.read_bytes() + stranger.export(tmp_path / "stranger.asc").read_bytes()
    binary = trust.dearmor(both)
    assert binary == gpg(tmp_path, "--dearmor", data=key_file.read_bytes()) + gpg(
        tmp_path, "--dearmor", data=(tmp_path / "stranger.asc").read_bytes()
    )
    assert trust.dearmor(binary) == binary  # binary input passes through


@pytest.mark.parametrize(
    ("head", "is_key"),
    [
        (b"\x99\x00\x33", True),  # old format, tag 6, two length octets: what gpg --export writes
        (b"\x98\x33", True),  # old format, tag 6, one length octet
        (b"\xc6\x33", True),  # new format, tag 6
        (b"\x89\x01\x33", False),  # old format, tag 2: a signature
        (b"\xc2\x33", False),  # new format, tag 2
        (b"\x95\x01\x33", False),  # old format, tag 5: a secret key
        (b"\xc5\x33", False),  # new format, tag 5
        (b"hello", False),  # bit 7 clear: not a packet at all
        (b"", False),
    ],
)
def test_public_key_packet_header(head: bytes, is_key: bool) -> None:
    assert trust.is_public_key(head) is is_key


BROKEN_ARMOR = b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64!\n-----END PGP PUBLIC KEY BLOCK-----\n"


@pytest.mark.parametrize("kind", ["text", "signature", "empty", "broken armor"])
def test_trusted_key_that_is_not_a_key_is_refused(
    kind: str, mirror: FakeMirror, cache: Path, events: Bus, *, tmp_path: Path, good_sig: bytes
) -> None:
    content = {"text": b"hello\n", "signature": good_sig, "empty": b"", "broken armor": BROKEN_ARMOR}[kind]
    bad = tmp_path / "bad.asc"
    bad.write_bytes(content)
    with pytest.raises(UsageError, match=r"^.*/bad\.asc is not an OpenPGP public key") as caught:
        obtain_iso(source(mirror, bad), cache, events)
    assert caught.value.exit_code == ExitCode.USAGE
    assert "gpg --export" in caught.value.hint
    assert mirror.requests == []  # refused before anything is fetched


def test_unreadable_trusted_key(tmp_path: Path, events: Bus) -> None:
    iso = tmp_path / "my.iso"
    iso.write_bytes(ISO)
    (tmp_path / "my.iso.sig").write_bytes(b"unused")
    with pytest.raises(UsageError, match=r"cannot read --trusted-key .*absent\.asc"):
        check_given_iso(iso, (tmp_path / "absent.asc",), events)


@pytest.mark.parametrize(
    ("kwargs", "message", "hint"),
    [
        ({"version": "2024-06-01"}, "invalid --iso-version", "e.g. 2024.06.01"),
        ({"version": "../../etc"}, "invalid --iso-version", "e.g. 2024.06.01"),
        ({"version": "2024.0\u0666.01"}, "invalid --iso-version", "e.g. 2024.06.01"),  # an Arabic-Indic 6
        ({"mirror": "ftp://example.org"}, "invalid --iso-mirror URL", "http(s) mirror"),
        ({"mirror": "geo.mirror.pkgbuild.com"}, "invalid --iso-mirror URL", "http(s) mirror"),
        ({"archive": "file:///srv/archive"}, "invalid archive URL", "http(s) mirror"),
    ],
)
def test_bad_source_is_a_usage_error(kwargs: dict[str, str], message: str, hint: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        IsoSource(**kwargs)  # type: ignore[arg-type]
    assert hint in caught.value.hint


def test_parse_sums_picks_the_dated_iso() -> None:
    text = sums_for(ISO).decode() + f"{'3' * 64}  archlinux-2023.01.01-x86_64.iso\n{'4' * 64}  ../evil-x86_64.iso\n"
    assert acquire.parse_sums(text, None) == (NAME, hashlib.sha256(ISO).hexdigest())
    assert acquire.parse_sums(text, "2023.01.01") == ("archlinux-2023.01.01-x86_64.iso", "3" * 64)
    with pytest.raises(IsoError, match=r"does not list archlinux-2022\.01\.01"):
        acquire.parse_sums(text, "2022.01.01")


def test_parse_sums_takes_ascii_digits_only() -> None:
    name = "archlinux-\u0662\u0660\u0662\u0664.06.01-x86_64.iso"
    with pytest.raises(IsoError, match=r"lists no archlinux-YYYY\.MM\.DD-x86_64\.iso"):
        acquire.parse_sums(f"{'3' * 64}  {name}\n", None)


@pytest.mark.parametrize(("header", "total"), [("1000", 1000), ("\u00b2", None), ("\u0663", None), ("", None), ("-1", None)])
def test_content_length_takes_ascii_digits_only(header: str, total: int | None) -> None:
    # A latin-1 '²' passed str.isdigit() and then broke int(): a traceback from a bad mirror.
    assert download.content_length(header) == total


# -- names bound to signed bytes -------------------------------------------------------------

OLD = "2023.01.01"
OLD_ISO = arch_iso(OLD)


def serve(mirror: FakeMirror, folder: str, name: str, data: bytes, signer: Signer) -> None:
    """``data``, signed by the release key, as ``name`` in ``folder``: a replay of an old signed ISO."""
    mirror.files[f"/iso/{folder}/sha256sums.txt"] = sums_for(data, name)
    mirror.files[f"/iso/{folder}/{name}"] = data
    mirror.files[f"/iso/{folder}/{name}.sig"] = signer.sign(data)


@pytest.mark.parametrize("listed", [NAME, "archlinux-2099.01.01-x86_64.iso"])
def test_an_old_iso_served_as_latest_is_cached_under_its_own_release(
    mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, *, signer: Signer, log: list[Event], listed: str
) -> None:
    serve(mirror, "latest", listed, OLD_ISO, signer)
    iso = obtain_iso(source(mirror, key_file), cache, events)
    real = f"archlinux-{OLD}-x86_64.iso"
    assert iso == cache / real and iso.read_bytes() == OLD_ISO
    assert leftovers(cache) == [real, f"{real}.sig", f"{real}.verified"]
    assert f"{listed} from {mirror.url}/iso/latest/ is release {OLD}; cached as {real}" in notes(log)


def test_a_pinned_release_served_another_is_exit_8_and_nothing_is_kept(
    mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, signer: Signer
) -> None:
    serve(mirror, VERSION, NAME, OLD_ISO, signer)
    with pytest.raises(VerifyError) as caught:
        obtain_iso(source(mirror, key_file, VERSION), cache, events)
    assert caught.value.exit_code == ExitCode.VERIFY and int(caught.value.exit_code) == 8
    assert caught.value.message == f"{NAME} is release {OLD} (UUID 2023-01-01-10-20-30-00), not {VERSION}"
    assert "\n" not in caught.value.message and "--iso-mirror" in caught.value.hint
    assert leftovers(cache) == []


def test_a_cached_iso_whose_name_lies_is_never_preferred(
    mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, log: list[Event]
) -> None:
    good = obtain_iso(source(mirror, key_file), cache, events)
    liar = cache / "archlinux-2099.01.01-x86_64.iso"
    for suffix in ("", ".sig", ".verified"):  # the file and its sidecars, renamed as an older version cached them
        shutil.copy2(f"{good}{suffix}", f"{liar}{suffix}")
    mirror.stop()
    assert obtain_iso(source(mirror, key_file), cache, events) == good  # the newest by its bytes, not its name
    assert f"cached {liar.name} removed: {liar.name} is release {VERSION}" in notes(log)
    assert not liar.exists()


def test_a_given_iso_named_for_another_release_is_exit_8(tmp_path: Path, key_file: Path, events: Bus, good_sig: bytes) -> None:
    liar = tmp_path / "archlinux-2099.01.01-x86_64.iso"
    liar.write_bytes(ISO)
    (tmp_path / f"{liar.name}.sig").write_bytes(good_sig)
    with pytest.raises(VerifyError, match=rf"^{liar} is release {VERSION} \(UUID .*\), not 2099\.01\.01$") as caught:
        check_given_iso(liar, (key_file,), events)
    assert caught.value.exit_code == ExitCode.VERIFY
    honest = tmp_path / NAME
    honest.write_bytes(ISO)
    (tmp_path / f"{NAME}.sig").write_bytes(good_sig)
    check_given_iso(honest, (key_file,), events)


def test_an_iso_without_a_release_day_is_not_cached(
    mirror: FakeMirror, key_file: Path, cache: Path, events: Bus, *, signer: Signer, tmp_path: Path
) -> None:
    undated = make_iso(tmp_path / "u.iso", label="ARCH_202406", uuid=None).read_bytes()
    serve(mirror, "latest", NAME, undated, signer)
    with pytest.raises(VerifyError, match="name no release day"):
        obtain_iso(source(mirror, key_file), cache, events)
    assert leftovers(cache) == []

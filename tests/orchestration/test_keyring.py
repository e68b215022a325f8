"""The live keyring, made once per ISO: kept by the first install, unpacked by the next."""

from __future__ import annotations

import io
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from provisioner.errors import ExitCode
from provisioner.keyring import MEMBERS, VERSION
from provisioner.manifest import file_sha256
from provisioner.qemu import KEYRING_PORT
from provisioner.workspace import Workspace
from tests.orchestration.conftest import Fake

LIVE_INIT = "pacman-key --init "  # the live keyring's (the box's names its --gpgdir)


def kept(tmp_path: Path, iso: Path) -> Path:
    return tmp_path / "cache/provision-arch/keyrings" / f"{file_sha256(iso)}-v{VERSION}.tar"


def notes(run: Any) -> list[str]:
    return [e["message"] for e in run.events if e["type"] == "note"]


@pytest.mark.parametrize("via", ["stream", "9p"])
def test_the_first_install_keeps_the_keyring_and_the_next_starts_from_it(
    install: Any, fake: Fake, tmp_path: Path, iso: Path, via: str
) -> None:
    first = install("--install-via", via, target=tmp_path / "one")
    assert first.exit_code == 0, first.stderr
    path = kept(tmp_path, iso)
    assert any(f"kept the live keyring for the next install from this ISO: {path}" in n for n in notes(first))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == sorted(MEMBERS)
        assert tar.extractfile("pubring.gpg").read() == b"master key (rsa4096)\nthe Arch keys\n"  # type: ignore[union-attr]
    assert KEYRING_PORT in " ".join(fake.launches()[0]["argv"])
    assert fake.commands().count(LIVE_INIT) == 1
    # The made master key's secret is gone before the keyring is packed; a new one comes after.
    commands = fake.commands().splitlines()
    forget = commands.index(f"gpgconf --homedir {fake.dir}/gnupg/ --kill gpg-agent ")
    packed = next(i for i, line in enumerate(commands) if line.startswith("dd if=/run/provision-arch/keyring-"))
    renew = next(i for i, line in enumerate(commands) if "--quick-generate-key" in line)
    refresh = next(i for i, line in enumerate(commands) if line.startswith("pacman -Sy"))
    assert commands.index(LIVE_INIT) < forget < packed < renew < refresh

    second = install("--install-via", via, target=tmp_path / "two")
    assert second.exit_code == 0, second.stderr
    assert fake.commands().count(LIVE_INIT) == 1, "the second install made the live keyring again"
    assert KEYRING_PORT not in " ".join(fake.launches()[1]["argv"]), "a port for a keyring already kept"
    assert any(f"the live keyring is the one kept for this ISO ({path})" in n for n in notes(second))
    # Unpacked from the stage, with a new master key of its own and the trust database checked.
    live = fake.dir / "gnupg"
    assert (live / "pubring.gpg").read_text() == "master key (rsa4096)\nthe Arch keys\nmaster key (ed25519)\n"
    log = (fake.dir / "keyring.log").read_text().splitlines()
    assert log[-3:] == [f"new master key: {live}/", f"check-trustdb: {live}/", "box populate: 1 skip line(s)"]
    assert not [p.name for p in Workspace.of(tmp_path / "two").root.iterdir() if p.name.startswith("keyring")]


def test_no_keep_keyring_makes_it_every_time_and_keeps_nothing(install: Any, fake: Fake, tmp_path: Path, iso: Path) -> None:
    for name in ("one", "two"):
        assert install("--no-keep-keyring", target=tmp_path / name).exit_code == 0
    assert fake.commands().count(LIVE_INIT) == 2
    assert not kept(tmp_path, iso).exists() and not (tmp_path / "cache/provision-arch/keyrings").exists()
    assert all(KEYRING_PORT not in " ".join(launch["argv"]) for launch in fake.launches())


def tar_of(members: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
            tar.addfile(info)
    return out.getvalue()


@pytest.mark.parametrize(
    "planted",
    [
        tar_of({name: b"x" for name in MEMBERS[:-1]}, links=(MEMBERS[-1],)),  # a link where a file should be
        tar_of({**{name: b"x" for name in MEMBERS}, "../escape": b"x"}),  # one member more, out of the directory
        b"not a tar at all" * 100,
    ],
    ids=["link", "extra-member", "garbage"],
)
def test_a_kept_keyring_that_does_not_check_out_is_made_again(
    install: Any, fake: Fake, tmp_path: Path, iso: Path, planted: bytes
) -> None:
    path = kept(tmp_path, iso)
    path.parent.mkdir(parents=True)
    path.write_bytes(planted)
    run = install()
    assert run.exit_code == 0, run.stderr
    assert any("the live keyring is made again, and kept anew" in n for n in notes(run))
    assert fake.commands().count(LIVE_INIT) == 1
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == sorted(MEMBERS) and all(m.isreg() for m in tar.getmembers())


def test_a_kept_keyring_that_is_a_link_is_not_followed(install: Any, fake: Fake, tmp_path: Path, iso: Path) -> None:
    path, elsewhere = kept(tmp_path, iso), tmp_path / "elsewhere.tar"
    elsewhere.write_bytes(tar_of({name: b"planted" for name in MEMBERS}))
    path.parent.mkdir(parents=True)
    path.symlink_to(elsewhere)
    run = install()
    assert run.exit_code == 0, run.stderr
    assert fake.commands().count(LIVE_INIT) == 1, "a linked keyring was used"
    assert not path.is_symlink() and elsewhere.read_bytes() == tar_of({name: b"planted" for name in MEMBERS})


def test_a_keyring_that_stops_short_is_not_kept_and_the_install_goes_on(
    install: Any, fake: Fake, tmp_path: Path, iso: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "keyring-short")
    monkeypatch.setattr("provisioner.keyring.SETTLE", 2.0)
    run = install()
    assert run.exit_code == 0, run.stderr
    assert any("the live keyring was not kept for the next install from this ISO: the stream" in n for n in notes(run))
    assert not kept(tmp_path, iso).exists()


def test_a_kept_keyring_the_live_system_cannot_use_is_a_one_line_error(
    install: Any, fake: Fake, tmp_path: Path, iso: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert install(target=tmp_path / "one").exit_code == 0
    monkeypatch.setenv("FAKE_FAIL", "gpg-keygen")
    run = install(target=tmp_path / "two")
    assert run.exit_code == ExitCode.STEP, run.stderr
    error = run.events[-1]
    assert error["type"] == "error" and "--no-keep-keyring" in error["hint"] and str(kept(tmp_path, iso)) in error["hint"]


def test_a_package_cache_that_holds_the_kept_keyrings_is_refused(install: Any, fake: Fake, tmp_path: Path) -> None:
    """The guest writes the package cache: it must not reach what the next run trusts."""
    for shared in (tmp_path / "cache/provision-arch", tmp_path / "cache", tmp_path / "cache/provision-arch/keyrings"):
        run = install("--package-cache", str(shared))
        assert run.exit_code == ExitCode.USAGE, run.stderr
        assert "which the guest must not write" in run.events[-1]["message"]
    assert fake.launches() == []

"""The kept live keyring: what the host accepts, how it keeps it, and a real round trip
through pacman-key and gpg (made, packed, checked, restored) on this host."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from provisioner import keyring
from provisioner.keyring import MEMBERS, KeyringError, canonical, keep, load


def tar_of(members: dict[str, bytes], kind: bytes = tarfile.REGTYPE) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.type = kind if name == MEMBERS[0] else tarfile.REGTYPE
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "/etc/shadow"
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return out.getvalue()


GOOD = {name: f"{name}\n".encode() for name in MEMBERS}


def test_a_tar_of_exactly_the_members_is_packed_again_canonically() -> None:
    with tarfile.open(fileobj=io.BytesIO(canonical(tar_of(GOOD)))) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == list(MEMBERS)
        assert {(m.mode, m.uid, m.gid, m.mtime, m.type) for m in members} == {(0o644, 0, 0, 0, tarfile.REGTYPE)}
        assert {m.name: tar.extractfile(m).read() for m in members} == GOOD  # type: ignore[union-attr]
    assert canonical(canonical(tar_of(GOOD))) == canonical(tar_of(GOOD))


def test_what_gnu_tar_would_find_beyond_a_bad_header_is_not_kept(tmp_path: Path) -> None:
    """tarfile stops at a bad header where GNU tar skips it and reads on: only what tarfile
    read is packed again, so the guest's tar finds nothing more."""
    hidden = io.BytesIO()
    with tarfile.open(fileobj=hidden, mode="w") as tar:
        info = tarfile.TarInfo("evil")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    good = tar_of(GOOD)
    with tarfile.open(fileobj=io.BytesIO(good)) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512  # the four members, without the end-of-archive blocks
    data = good[:end] + b"\x01" * 512 + hidden.getvalue()
    (tmp_path / "given.tar").write_bytes(data)
    listed = subprocess.run(["tar", "-tf", tmp_path / "given.tar"], capture_output=True, text=True, check=False)
    assert "evil" in listed.stdout, "the planted tar no longer shows the difference"
    (tmp_path / "kept.tar").write_bytes(canonical(data))
    kept = subprocess.run(["tar", "-tf", tmp_path / "kept.tar"], capture_output=True, text=True, check=True)
    assert kept.stdout.split() == list(MEMBERS)


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (tar_of({name: b"x" for name in MEMBERS[1:]}), "not gpg.conf"),
        (tar_of({**GOOD, "private-keys-v1.d/key": b"secret"}), "not gpg.conf"),
        (tar_of({**GOOD, "../gpg.conf": b"x"}), "not gpg.conf"),
        (tar_of({f"./{name}": b"x" for name in MEMBERS}), "not gpg.conf"),
        (tar_of(GOOD, kind=tarfile.SYMTYPE), "not a regular file"),
        (tar_of(GOOD, kind=tarfile.LNKTYPE), "not a regular file"),
        (tar_of(GOOD, kind=tarfile.DIRTYPE), "not a regular file"),
        (tar_of(GOOD, kind=tarfile.FIFOTYPE), "not a regular file"),
        (b"\0" * 100, "not a tar"),
        (tar_of(GOOD)[:700], "not a tar"),
    ],
    ids=["missing", "a-secret-more", "escape", "dot-slash", "symlink", "hardlink", "directory", "fifo", "zeros", "cut"],
)
def test_anything_else_is_refused(data: bytes, said: str) -> None:
    with pytest.raises(KeyringError, match=said):
        canonical(data)


def test_more_than_the_limit_is_refused_unread(monkeypatch: pytest.MonkeyPatch) -> None:
    data = tar_of(GOOD)
    monkeypatch.setattr(keyring, "LIMIT", len(data) - 1)
    with pytest.raises(KeyringError, match="more than"):
        canonical(data)


def test_kept_0600_in_a_0700_directory_and_read_back(tmp_path: Path) -> None:
    path = keyring.kept_path(tmp_path / "cache", "ab" * 32)
    keep(path, tar_of(GOOD))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load(path) == canonical(tar_of(GOOD)) == path.read_bytes()
    assert load(path.with_name("other.tar")) is None
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_keep_refuses_what_does_not_check_out_and_keeps_the_old(tmp_path: Path) -> None:
    path = keyring.kept_path(tmp_path, "cd" * 32)
    keep(path, tar_of(GOOD))
    with pytest.raises(KeyringError):
        keep(path, tar_of({**GOOD, "extra": b""}))
    assert load(path) == canonical(tar_of(GOOD))


def test_a_kept_keyring_behind_a_link_is_not_read(tmp_path: Path) -> None:
    path = keyring.kept_path(tmp_path, "ef" * 32)
    path.parent.mkdir(parents=True)
    (tmp_path / "planted.tar").write_bytes(tar_of(GOOD))
    path.symlink_to(tmp_path / "planted.tar")
    with pytest.raises(KeyringError, match="cannot read"):
        load(path)


def test_a_kept_keyring_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    path = keyring.kept_path(tmp_path, "ab" * 32)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    with pytest.raises(KeyringError, match="not a regular file of yours"):
        load(path)


def test_guest_paths_are_quoted() -> None:
    assert "'/run/a b;rm -rf x.tar'" in keyring.pack("/run/a b;rm -rf x.tar")
    assert "'/run/a b;x'" in keyring.restore("/run/a b;x")
    assert "of='/dev/virtio-ports/a;b'" in keyring.send("/run/k.tar", "/dev/virtio-ports/a;b")


# -- a real round trip -------------------------------------------------------------------------

REAL = shutil.which("pacman-key") and shutil.which("gpg") and Path("/usr/share/keyrings/archlinux.gpg").exists()


def live_shell(tmp_path: Path, gpgdir: Path, command: str) -> str:
    """Run a guest command of this module here, with pacman-conf naming ``gpgdir`` and the ISO's
    tmpfs mount left out; its output. pacman-key needs root."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "pacman-conf").write_text(f"#!/bin/sh\necho {gpgdir}\n")
    (bin_dir / "systemctl").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GNUPGHOME": str(tmp_path / "no-home")}
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def validity(tmp_path: Path, gpgdir: Path) -> dict[str, str]:
    """Each primary key's fingerprint -> the validity gpg gives it."""
    out = live_shell(tmp_path, gpgdir, f"gpg --homedir {gpgdir} --no-permission-warning --with-colons --list-keys")
    keys, last = {}, ""
    for line in out.splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            last = fields[1]
        elif fields[0] == "fpr" and last:
            keys[fields[9]], last = last, ""
    return keys


NEEDS = "needs pacman-key, gpg and Arch's keyring (make test installs them), as root"


@pytest.mark.skipif(not REAL or os.geteuid() != 0, reason=NEEDS)
def test_a_restored_keyring_trusts_what_the_made_one_does_and_signs_anew(tmp_path: Path) -> None:
    made, restored = tmp_path / "made", tmp_path / "restored"
    try:
        live_shell(tmp_path, made, keyring.MAKE)
        assert list((made / "private-keys-v1.d").glob("*.key")), "pacman-key --init made no secret key"
        live_shell(tmp_path, made, keyring.FORGET)
        assert not list((made / "private-keys-v1.d").glob("*")), "a secret key left"
        size = int(live_shell(tmp_path, made, keyring.pack(str(tmp_path / "sent.tar"))).split()[-1])
        data = (tmp_path / "sent.tar").read_bytes()
        assert len(data) == size
        (tmp_path / "kept.tar").write_bytes(canonical(data))
        live_shell(tmp_path, restored, keyring.restore(str(tmp_path / "kept.tar")))
        before, after = validity(tmp_path, made), validity(tmp_path, restored)
        new = set(after) - set(before)
        assert len(new) == 1 and after[new.pop()] == "u", "one new master key, ultimately trusted"
        assert {k: v for k, v in after.items() if k in before} == before
        assert sum(v == "f" for v in before.values()) >= 6, "Arch's master keys fully valid"
        assert list((restored / "private-keys-v1.d").glob("*.key")), "the new master key's secret is there"
        # What archlinux-keyring's scriptlet does when the keyring is refreshed: local signatures
        # with the new master key.
        live_shell(tmp_path, restored, f"echo {keyring.TRUSTDB_LINE} >> {restored}/gpg.conf && pacman-key --populate archlinux")
    finally:
        for home in (made, restored):
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)

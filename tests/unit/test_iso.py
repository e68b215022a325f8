"""The ISO reader on small ISOs built here with pycdlib, laid out like archiso's."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.errors import IsoError
from provisioner.iso import LABEL_RE, UUID_RE, read_boot_files
from tests.helpers import UUID, make_iso


def test_reads_label_uuid_and_extracts_boot_files(tmp_path: Path) -> None:
    boot = read_boot_files(make_iso(tmp_path / "arch.iso"), tmp_path / "cache")
    assert boot.label == "ARCH_202611"
    assert boot.uuid == UUID
    assert boot.kernel.read_bytes() == b"KERNEL"
    assert boot.initrd.read_bytes() == b"INITRAMFS"
    assert boot.kernel_args() == ["archisobasedir=arch", f"archisosearchuuid={UUID}"]


def test_old_isos_get_microcode_prepended_and_label_search(tmp_path: Path) -> None:
    boot = read_boot_files(make_iso(tmp_path / "old.iso", label="ARCH_202401", uuid=None, microcode=True), tmp_path / "c")
    assert boot.initrd.read_bytes() == b"INTELAMDINITRAMFS"
    assert boot.kernel_args() == ["archisobasedir=arch", "archisolabel=ARCH_202401"]


def test_second_read_uses_the_cache(tmp_path: Path) -> None:
    iso = make_iso(tmp_path / "arch.iso")
    first = read_boot_files(iso, tmp_path / "cache")
    first.kernel.write_bytes(b"CACHED")  # prove the second call does not extract again
    assert read_boot_files(iso, tmp_path / "cache").kernel.read_bytes() == b"CACHED"


def test_not_an_iso(tmp_path: Path) -> None:
    junk = tmp_path / "junk.iso"
    junk.write_bytes(b"\0" * 70000)
    with pytest.raises(IsoError, match="cannot read"):
        read_boot_files(junk, tmp_path / "cache")


def test_not_an_arch_iso(tmp_path: Path) -> None:
    with pytest.raises(IsoError, match="not an Arch ISO"):
        read_boot_files(make_iso(tmp_path / "deb.iso", label="DEBIAN_12", uuid=None), tmp_path / "cache")


def test_missing_kernel_leaves_no_cache(tmp_path: Path) -> None:
    with pytest.raises(IsoError, match="vmlinuz-linux"):
        read_boot_files(make_iso(tmp_path / "broken.iso", kernel=False), tmp_path / "cache")
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_label_and_uuid_are_ascii_digits_only() -> None:
    assert LABEL_RE.fullmatch("ARCH_202611")
    assert not LABEL_RE.fullmatch("ARCH_20\u0662611")
    assert UUID_RE.fullmatch(f"{UUID}.uuid")
    assert not UUID_RE.fullmatch("\u0662" + UUID[1:] + ".uuid")

"""The throwaway layer's pieces that run on the host: the scratch disk and the kernel command line."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

import pytest

from provisioner import ephemeral
from provisioner.qemu import ROOT_APPEND


def test_the_scratch_disk_is_a_private_sparse_ext4_with_roots_root(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    ephemeral.make_scratch(disk)
    status = disk.stat()
    assert status.st_mode & 0o777 == 0o600
    assert status.st_size == ephemeral.SIZE and status.st_blocks * 512 < 64 << 20, "sparse: only metadata is written"
    with disk.open("rb") as image:
        image.seek(1024 + 0x38)
        assert image.read(2) == b"\x53\xef", "no ext4 superblock"
    listing = subprocess.run(["debugfs", "-R", "stat /", str(disk)], capture_output=True, text=True, check=True).stdout
    assert "User:     0   Group:     0" in listing
    with pytest.raises(FileExistsError):
        ephemeral.make_scratch(disk)  # never an existing file (nor one a link names)


def test_the_root_goes_read_only_and_the_init_is_named() -> None:
    append = ephemeral.root_append(f"{ROOT_APPEND} systemd.run=/x", PurePosixPath("/.provision-arch-run/abc/init"))
    words = append.split()
    assert "ro" in words and "rw" not in words
    assert words[-1] == "init=/.provision-arch-run/abc/init" and "systemd.run=/x" in words


def test_the_init_fails_loudly_and_execs_systemd() -> None:
    script = ephemeral.init_script()
    assert script.startswith("#!/bin/sh\n") and script.rstrip().endswith(f'fail "cannot start {ephemeral.SYSTEMD}"')
    assert f"exec {ephemeral.SYSTEMD}\n" in script and ephemeral.FAILED in script
    assert subprocess.run(["sh", "-n"], input=script, text=True, check=False).returncode == 0, "not valid sh"

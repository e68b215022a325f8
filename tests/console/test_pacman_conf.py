"""The pacman.conf edit (provisioner/pacman.py) run by a real sh on real files: idempotent, under
[options], and an error for a file without [options]."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from provisioner.pacman import enable_option

ARCH_71 = """#
# /etc/pacman.conf
#
[options]
HoldPkg     = pacman glibc
Architecture = auto
#DisableDownloadTimeout
#DisableSandboxFilesystem
#DisableSandboxSyscalls
DownloadUser = alpm

[core]
Include = /etc/pacman.d/mirrorlist
"""


def edit(conf: Path, option: str) -> int:
    return subprocess.run(["sh", "-c", enable_option(str(conf), option)], check=False).returncode


@pytest.mark.parametrize("option", ["DisableSandboxFilesystem", "DisableSandbox"])
def test_the_option_goes_under_options_once(tmp_path: Path, option: str) -> None:
    conf = tmp_path / "pacman.conf"
    conf.write_text(ARCH_71)
    assert edit(conf, option) == 0
    lines = conf.read_text().splitlines()
    assert lines[lines.index("[options]") + 1] == option
    assert edit(conf, option) == 0 and conf.read_text().splitlines() == lines, "a second edit changes nothing"
    assert f"#{option}" not in lines or lines.count(f"#{option}") == 1, "pacman's commented line stays as it was"


def test_an_option_already_set_by_hand_is_left_alone(tmp_path: Path) -> None:
    conf = tmp_path / "pacman.conf"
    conf.write_text(ARCH_71.replace("#DisableSandboxFilesystem", "  DisableSandboxFilesystem  "))
    before = conf.read_text()
    assert edit(conf, "DisableSandboxFilesystem") == 0 and conf.read_text() == before


def test_a_file_without_options_is_an_error(tmp_path: Path) -> None:
    conf = tmp_path / "pacman.conf"
    conf.write_text("[core]\nInclude = /etc/pacman.d/mirrorlist\n")
    assert edit(conf, "DisableSandbox") != 0
    assert edit(tmp_path / "missing.conf", "DisableSandbox") != 0

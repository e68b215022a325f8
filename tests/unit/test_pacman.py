"""pacman 7's sandbox on a 9p root: the version from `pacman --version`, the switch per version,
and the command that sets it (its behaviour on real files: tests/console/test_pacman_conf.py)."""

from __future__ import annotations

import shlex

import pytest

from provisioner.pacman import enable_option, parse_version, sandbox_switch

BANNER = """
 .--.                  Pacman v{} - libalpm v15.0.0
/ _.-' .-.  .-.  .-.   Copyright (C) 2006-2025 Pacman Development Team
\\  '-. '-'  '-'  '-'   Copyright (C) 2002-2006 Judd Vinet
 '--'
                       This program may be freely redistributed under
                       the terms of the GNU General Public License.
"""


@pytest.mark.parametrize(
    ("version", "parsed", "switch"),
    [("7.1.0", (7, 1, 0), "DisableSandboxFilesystem"), ("7.2.3", (7, 2, 3), "DisableSandboxFilesystem"),
     ("8.0.0", (8, 0, 0), "DisableSandboxFilesystem"), ("7.0.0", (7, 0, 0), "DisableSandbox"),
     ("7.0.0.r6.gc685ae6", (7, 0, 0), "DisableSandbox"), ("6.0.2", (6, 0, 2), None), ("6.1", (6, 1, 0), None)],
)  # fmt: skip
def test_version_and_switch(version: str, parsed: tuple[int, int, int], switch: str | None) -> None:
    assert parse_version(BANNER.format(version)) == parsed
    assert sandbox_switch(parsed) == switch


def test_non_ascii_digits_are_no_version() -> None:
    assert parse_version(BANNER.format("\u0667.1.0")) is None  # an Arabic-Indic 7


@pytest.mark.parametrize("output", ["", "bash: pacman: command not found", "chroot: failed to run command 'pacman'", "v7.1.0"])
def test_no_version_without_pacmans_banner(output: str) -> None:
    assert parse_version(output) is None


def test_the_edit_is_one_guarded_command_on_a_quoted_path() -> None:
    command = enable_option("/mnt/etc/pacman.conf", "DisableSandbox")
    grep = "grep -qx '[[:space:]]*DisableSandbox[[:space:]]*' /mnt/etc/pacman.conf"
    sed = "sed -i '/^[[:space:]]*\\[options\\][[:space:]]*$/a DisableSandbox' /mnt/etc/pacman.conf"
    assert command == f"{{ {grep} || {sed}; }} && {grep}"
    assert shlex.split(enable_option("/a b/pacman.conf", "DisableSandbox"))[-1] == "/a b/pacman.conf"
    with pytest.raises(ValueError):
        enable_option("/etc/pacman.conf", "Disable; reboot")

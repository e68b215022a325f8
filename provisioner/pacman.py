"""pacman 7's download sandbox on a 9p root: which switch turns it off, and the edit that sets it.

pacman 7 downloads as an unprivileged user inside a sandbox whose filesystem part is
Landlock. Landlock ties its rules to inodes, and 9p without an inode cache (the booted
box's root uses ``cache=mmap``) makes a new inode at every lookup, so the rule on the
download directory no longer matches and downloads fail (landlock-lsm/linux issue 45).
The installed system therefore gets the switch for its pacman version in
``/etc/pacman.conf``: 7.1 and later split it, so only the filesystem part goes
(``DisableSandboxFilesystem``; the system-call filter stays); 7.0 has one switch
(``DisableSandbox``); pacman 6 has no sandbox and nothing changes.
"""

from __future__ import annotations

import re
from shlex import quote as q

VERSION_RE = re.compile(r"Pacman v([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")


def parse_version(output: str) -> tuple[int, int, int] | None:
    """pacman's version from what ``pacman --version`` printed (its banner), or None."""
    match = VERSION_RE.search(output)
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def sandbox_switch(version: tuple[int, int, int]) -> str | None:
    """The pacman.conf option that turns off the sandbox's filesystem part, or None if there is none."""
    if version >= (7, 1, 0):
        return "DisableSandboxFilesystem"
    if version >= (7, 0, 0):
        return "DisableSandbox"
    return None


def enable_option(path: str, option: str) -> str:
    """A shell command that sets a boolean ``option`` under ``[options]`` in ``path``, once.

    Idempotent: a file that already has the option (uncommented, on a line of its own) is
    left alone; otherwise the option goes right after the ``[options]`` header (pacman's
    commented ``#Option`` lines stay as they are). The command ends by checking that the
    option is there, so a file without an ``[options]`` section is an error, not a no-op.
    """
    if not re.fullmatch(r"[A-Za-z]+", option):
        raise ValueError(f"not a pacman.conf option: {option!r}")
    present = f"grep -qx '[[:space:]]*{option}[[:space:]]*' {q(path)}"
    insert = f"sed -i '/^[[:space:]]*\\[options\\][[:space:]]*$/a {option}' {q(path)}"
    return f"{{ {present} || {insert}; }} && {present}"

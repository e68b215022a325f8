"""Checks for the structured values that reach the guest: account names, guest paths, modes,
owners, unit names and chroot commands.

Each check takes the value as the config file gave it and the key it came from (e.g.
``users[0].groups[1]``), and returns the value in its checked form or raises a UsageError
that names both. The guest commands still quote every value with ``shlex.quote``; these
checks keep out what no quoting makes sensible (a path into /proc, a user named root, a
newline in a command) and make the error early and clear.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from provisioner.errors import UsageError

# The Linux user-name rule (shadow's default NAME_REGEX without its trailing '$' for Samba
# machine accounts): also the rule for group names.
ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# Accounts that Arch's base set creates (filesystem, systemd, pacman and their dependencies):
# a configured user of that name would clash with them. `root` is configured by the root
# password instead. Any other existing system account is caught in the guest (uid < 1000).
RESERVED_USERS = frozenset({"root", "bin", "daemon", "mail", "ftp", "http", "nobody", "dbus", "alpm", "uuidd", "tss"})
RESERVED_PREFIXES = ("systemd-",)
OWNER_PART_RE = re.compile(r"^([a-z_][a-z0-9_-]{0,31}|[0-9]{1,10})$")
# systemd unit names: letters, digits and ':-_.@' (no '\' escapes), without a leading '-'.
UNIT_RE = re.compile(r"^[A-Za-z0-9_:][A-Za-z0-9:_.@-]{0,250}$")
# Where a file from the config must not go: kernel and runtime file systems mounted over the
# root at boot (a file there would be hidden or meaningless), and our own state directory.
# The kernel's and systemd's, and the names provision-arch itself uses in a box's root.
FORBIDDEN_DIRS = ("/proc", "/sys", "/dev", "/run", "/.provision-arch", "/.provision-arch-run", "/.provision-arch-unpack")
# C0, DEL and C1: no terminal or shell line should carry them.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A command travels quoted on one console line of at most 3500 characters.
MAX_QUOTED_COMMAND = 3000


def refuse(key: str, problem: str, hint: str) -> UsageError:
    return UsageError(f"config key {key}: {problem}", hint)


T = TypeVar("T")


def tables(value: Any, base: Path, key: str, kind: str, parse: Callable[[Any, Path, str], T]) -> tuple[T, ...]:
    """A config key holding a list of tables (``[[kind]]`` in TOML), each read by ``parse``."""
    if not isinstance(value, list):
        raise refuse(key, f"must be a list of tables ([[{kind}]]), not {value!r}", "see README 'A dev box'")
    return tuple(parse(item, base, f"{key}[{i}]") for i, item in enumerate(value))


def table(value: Any, key: str, fields: tuple[str, ...], holding: str) -> dict[str, Any]:
    """One of those tables, with no field it does not know."""
    if not isinstance(value, dict):
        raise refuse(key, f"must be a table with {holding}, not {value!r}", "see README 'A dev box'")
    if unknown := sorted(set(value) - set(fields)):
        raise refuse(key, f"unknown field(s) {', '.join(unknown)}", f"known fields: {', '.join(fields)}")
    return value


def string(value: Any, key: str, what: str) -> str:
    if not isinstance(value, str):
        raise refuse(key, f"must be {what} as a string, not {value!r}", "see README 'A dev box'")
    return value


def account(value: Any, key: str, what: str = "user name") -> str:
    """A user or group name by the Linux rule: a-z, 0-9, '_' and '-', at most 32, no leading digit or '-'."""
    name = string(value, key, f"a {what}")
    if not ACCOUNT_RE.fullmatch(name):
        raise refuse(key, f"invalid {what} {name!r}", "lower-case letters, digits, '_' and '-', starting with a letter or '_'")
    return name


def user_name(value: Any, key: str) -> str:
    name = account(value, key)
    if name in RESERVED_USERS or name.startswith(RESERVED_PREFIXES):
        raise refuse(
            key,
            f"user name {name!r} is reserved for the system",
            "pick another name (root's password is set with --password-file)",
        )
    return name


def host_path(value: Any, base: Path, key: str, elsewhere: str = "") -> Path:
    """A host file named in a config file: relative to the file's directory ``base`` and, with
    every link resolved, still inside it. The resolved path is returned, so what is read later
    is what was checked.

    This is what a config file may name on the host: its own directory, nothing above it — no
    absolute path, no ``~``, no ``..`` or link that leads out (``/proc/self/environ``,
    ``~/.ssh/id_ed25519``). Running a colleague's config then reads no more of the host than
    the files they shipped with it. ``elsewhere`` says in the hint how to name another file
    (e.g. the option's flag).
    """
    text = string(value, key, "a path relative to the config file")
    hint = f"a config file names host files only inside its own directory: put the file below {base}{elsewhere}"
    return beneath(base, text, key, hint)


def beneath(root: Path, text: str, key: str, hint: str) -> Path:
    """``root / text`` resolved, or a refusal when ``text`` is absolute, starts with ``~`` or leads out of ``root``."""
    if CONTROL_RE.search(text) or not text:
        raise refuse(key, f"path {text!r} is empty or holds a control character", hint)
    if text.startswith(("/", "~")):
        raise refuse(key, f"{text!r} is not a path relative to {root}", hint)
    top = root.resolve()
    try:
        resolved = (top / text).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise refuse(key, f"cannot resolve {text!r}: {exc}", hint) from exc
    if not resolved.is_relative_to(top):
        raise refuse(key, f"{text!r} leads outside {top} (to {resolved})", hint)
    return resolved


def guest_path(value: Any, key: str) -> PurePosixPath:
    """An absolute, normalized path in the installed system, outside /proc, /sys, /dev, /run."""
    text = string(value, key, "an absolute path")
    if CONTROL_RE.search(text):
        raise refuse(key, f"path {text!r} holds a control character (a newline?)", "write the path on one line")
    if not text.startswith("/") or text.startswith("//"):
        raise refuse(key, f"path {text!r} is not absolute", "guest paths start with '/', e.g. '/etc/motd'")
    if ".." in text.split("/") or posixpath.normpath(text) != text or text == "/":
        raise refuse(key, f"path {text!r} is not a normalized file path", "no '..', '.', '//' or trailing '/'")
    if len(text) > 4000 or any(len(part) > 255 for part in text.split("/")):
        raise refuse(key, f"path {text[:60]!r}… is too long", "paths up to 4000 characters, names up to 255")
    for forbidden in FORBIDDEN_DIRS:
        if text == forbidden or text.startswith(forbidden + "/"):
            raise refuse(key, f"path {text!r} is under {forbidden}", f"{forbidden} is not part of the installed root file system")
    return PurePosixPath(text)


def mode(value: Any, key: str) -> int:
    """A file mode: an octal string ("0640", "640", "0o640") or a number (TOML's 0o640), at most 07777.

    The sticky bit means nothing on a regular file; a number that has it is nearly always a
    mode written in decimal (``mode = 644`` is 0o1204), so it is refused with that hint.
    """
    if isinstance(value, str):
        digits = value.removeprefix("0o")
        if not re.fullmatch(r"[0-7]{1,5}", digits) or int(digits, 8) > 0o7777:
            raise refuse(key, f"invalid mode {value!r}", 'an octal mode up to 07777, e.g. "0640"')
        number = int(digits, 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 0o7777:
            raise refuse(key, f"invalid mode {value!r}", 'an octal mode up to 07777: write mode = 0o640 or mode = "0640"')
        number = value
    else:
        raise refuse(key, f"invalid mode {value!r}", 'an octal mode as a string, e.g. "0640"')
    if number & 0o1000:
        raise refuse(
            key,
            f"mode {value!r} is {number:#o}, with the sticky bit, which means nothing on a file",
            'a number in TOML is decimal unless written 0o…: write mode = 0o644 or mode = "0644"',
        )
    return number


def owner(value: Any, key: str) -> str:
    """``user`` or ``user:group``, by name or number."""
    text = string(value, key, "an owner (user or user:group)")
    parts = text.split(":")
    if len(parts) > 2 or not all(OWNER_PART_RE.fullmatch(part) for part in parts):
        raise refuse(key, f"invalid owner {text!r}", "a user name, or user:group, e.g. 'dev' or 'root:wheel'")
    return text


def unit(value: Any, key: str) -> str:
    """A systemd unit name; without a suffix systemctl takes it as a .service."""
    name = string(value, key, "a unit name")
    if not UNIT_RE.fullmatch(name) or ".." in name:
        raise refuse(key, f"invalid unit name {name!r}", "a systemd unit such as 'sshd' or 'sshd.service' (no '\\' escapes)")
    return name


def command(value: Any, key: str) -> str:
    """A shell command line for the chroot: one line that fits the console once quoted."""
    text = string(value, key, "a shell command")
    if not text.strip():
        raise refuse(key, "the command is empty", "give a shell command line, e.g. 'pacman -S --noconfirm git'")
    if CONTROL_RE.search(text.replace("\t", " ")):
        raise refuse(key, f"command {text[:60]!r} holds a newline or control character", "one line per command; use ';' or '&&'")
    if len(shlex.quote(text)) > MAX_QUOTED_COMMAND:
        raise refuse(key, f"command {text[:60]!r}… is too long", "put long scripts in a file (config key files) and run that")
    return text

"""Fault 23: hostile values never reach a guest shell as shell syntax (property-tested).

Any value for hostname, locale, timezone, keymap, packages or mirror — and for the dev box's
user and group names, shells, file paths, owners, units and commands — is either refused
when the Config is built, or it changes no command's structure: every command the steps type
is split like a shell would (words and operators), and its operators are exactly those of
the same command for a reference config. Accepted names are also inert on their own: they
hold only characters that ``shlex.quote`` leaves alone (paths may hold any printable
character: they travel quoted; commands are shell by design and travel as one quoted word).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from provisioner.config import Config, build
from provisioner.console import Result
from provisioner.errors import UsageError
from provisioner.files import CopiedFile
from provisioner.install import plan
from provisioner.iso import BootFiles
from provisioner.qemu import Hardware, install_argv
from provisioner.session import Session
from provisioner.users import User
from tests.helpers import ssh_public_key

INERT = re.compile(r"[\w@%+=:,./-]*", re.ASCII)  # what shlex.quote returns unquoted
HOSTILE = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["a;reboot", "$(id)", "`id`", "a b", "x'y", 'x"y', "a|b", "a&&b", "a\nb", "a\n", "-rf", "../../etc", "a>b", "*", "~root", "#"]
)


class Recorder:
    """Stands where the Console does: records every command, answers success."""

    scale = 1.0

    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, command: str, timeout: float = 120.0) -> Result:
        self.commands.append(command)
        output = "9p.ko\n9pnet.ko\n9pnet_virtio.ko\nvirtio_pci.ko" if "lsinitcpio" in command else ""
        new_user = command.startswith("grep -m1 ")  # no such user yet: useradd
        return Result(command, 1 if new_user else 0, output)

    def check(self, command: str, timeout: float = 120.0, hint: str = "") -> str:
        return self.run(command, timeout).output


def typed(cfg: Config) -> list[str]:
    recorder = Recorder()
    session = Session.create(cfg)
    for step in plan(cfg):
        # The stream step reads QEMU's pipe on the host; what it types holds no config value.
        if step.enabled(cfg) and step.name != "stream":
            step.action(recorder, session, step.timeout)  # type: ignore[arg-type]
    return recorder.commands


OPERATOR_CHARS = frozenset("();<>|&")


def operators(command: str) -> list[str]:
    """The shell's control and redirection operators in ``command``, as a POSIX shell reads it.

    Only unquoted characters count: what stands inside '…' or "…", or after a backslash, is
    part of a word, never an operator (shlex with punctuation_chars loses that: it strips the
    quotes and hands back a quoted ';' as a bare ';'). An unquoted '#' at the start of a word
    starts a comment. An unterminated quote is a failure: no typed command may hold one.
    """
    found: list[str] = []
    run = ""  # the operator characters read since the last word character
    at_word_start = True
    i = 0
    while i < len(command):
        char = command[i]
        if char in OPERATOR_CHARS:
            run += char
            at_word_start = True
            i += 1
            continue
        if run:
            found.append(run)
            run = ""
        if char in " \t\n":
            at_word_start = True
            i += 1
        elif char == "#" and at_word_start:
            newline = command.find("\n", i)
            i = len(command) if newline == -1 else newline
        elif char == "\\":
            at_word_start = False
            i += 2
        elif char == "'":
            end = command.find("'", i + 1)
            assert end != -1, f"unterminated ' in {command!r}"
            at_word_start = False
            i = end + 1
        elif char == '"':
            i += 1
            while i < len(command) and command[i] != '"':
                i += 2 if command[i] == "\\" else 1
            assert i < len(command), f'unterminated " in {command!r}'
            at_word_start = False
            i += 1
        else:
            at_word_start = False
            i += 1
    if run:
        found.append(run)
    return found


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("arch-chroot /mnt sh -c ';'", []),  # the value hypothesis drew: quoted, so a word
        ("sh -c 'a;b' && echo \"x|y\" > f", ["&&", ">"]),
        ("echo a\\;b; echo 'it'\"'\"'s' | cat", [";", "|"]),
        ('echo "a\\"; b" ;', [";"]),
        ("echo a#b # ; not an operator", []),
        ("a # ; comment\nb | c", ["|"]),
        ("(cd /x && make) 2>&1 >>log", ["(", "&&", ")", ">&", ">>"]),
    ],
)
def test_operators_reads_quoting_as_a_shell_does(command: str, expected: list[str]) -> None:
    assert operators(command) == expected


BASE = {"target": Path("/t"), "password_hash": "$6$salt$" + "h" * 86}
REFERENCE = typed(build(BASE))


def accepted(**values: object) -> Config | None:
    try:
        return build({**BASE, **values})
    except UsageError:
        return None


def assert_no_new_syntax(cfg: Config, values: dict[str, object]) -> None:
    for value in values.values():
        for item in value if isinstance(value, tuple) else (value,):
            assert INERT.fullmatch(str(item)), f"accepted a value with shell syntax: {item!r}"
    commands = typed(cfg)
    for mine, reference in zip(commands, REFERENCE, strict=True):
        assert operators(mine) == operators(reference), mine


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["hostname", "locale", "timezone", "keymap"]), value=HOSTILE)
def test_identity_values(field: str, value: str) -> None:
    if cfg := accepted(**{field: value}):
        assert_no_new_syntax(cfg, {field: value})


@settings(max_examples=200, deadline=None)
@given(packages=st.lists(HOSTILE, min_size=1, max_size=4))
def test_package_names(packages: list[str]) -> None:
    if cfg := accepted(packages=tuple(packages)):
        assert_no_new_syntax(cfg, {"packages": tuple(packages)})


@settings(max_examples=200, deadline=None)
@given(mirror=HOSTILE.map(lambda tail: "https://m.example/" + tail))
def test_mirror_on_the_kernel_command_line(mirror: str) -> None:
    """The mirror is no shell value but a kernel parameter: it must stay one parameter."""
    if cfg := accepted(mirror=mirror):
        boot = BootFiles("ARCH_202611", None, Path("/k"), Path("/i"))
        argv = install_argv(Hardware(2048, 2, cfg.accel), Path("/a.iso"), boot, Path("/t"), Path("/s"), mirror=cfg.mirror)
        append = argv[argv.index("-append") + 1].split()
        assert [word for word in append if word.startswith("mirror=")] == [f"mirror={mirror}"]
        assert not set(mirror) & set("\"' \t\n\\")


# -- the dev box -------------------------------------------------------------------------------

DEVBOX = {
    "users": (User("dev", ("wheel",), sudo=True, shell=PurePosixPath("/usr/bin/zsh"), authorized_keys=(ssh_public_key(),)),),
    "files": (CopiedFile(Path(__file__), PurePosixPath("/etc/motd"), 0o644, "root:root"),),
    "services": ("sshd",),
    "commands": ("true",),
}
DEVBOX_REFERENCE = typed(build({**BASE, **DEVBOX}))


def devbox_variant(field: str, value: str) -> dict[str, object]:
    user, copied = DEVBOX["users"][0], DEVBOX["files"][0]
    assert isinstance(user, User) and isinstance(copied, CopiedFile)
    changes: dict[str, Callable[[], dict[str, object]]] = {
        "name": lambda: {"users": (dataclasses.replace(user, name=value),)},
        "group": lambda: {"users": (dataclasses.replace(user, groups=(value,)),)},
        "shell": lambda: {"users": (dataclasses.replace(user, shell=PurePosixPath("/usr/bin/" + value)),)},
        "path": lambda: {"files": (dataclasses.replace(copied, path=PurePosixPath("/etc/" + value)),)},
        "owner": lambda: {"files": (dataclasses.replace(copied, owner=value),)},
        "service": lambda: {"services": (value,)},
        "command": lambda: {"commands": (value,)},
    }
    return {**DEVBOX, **changes[field]()}


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(["name", "group", "shell", "path", "owner", "service", "command"]), value=HOSTILE)
# What hypothesis found, kept: a quoted ';' is a word (the old oracle called it an operator).
@example(field="command", value=";")
@example(field="command", value="a;b")
@example(field="command", value="'")
@example(field="path", value=";")
@example(field="shell", value="a&&b")
def test_devbox_values(field: str, value: str) -> None:
    try:
        cfg = build({**BASE, **devbox_variant(field, value)})
    except (UsageError, ValueError):
        return
    if field in ("name", "group", "owner", "service"):
        assert INERT.fullmatch(value), f"accepted a {field} with shell syntax: {value!r}"
    commands = typed(cfg)
    for mine, reference in zip(commands, DEVBOX_REFERENCE, strict=True):
        assert operators(mine) == operators(reference), mine
    if field == "command":
        (typed_command,) = [c for c in commands if c.startswith("arch-chroot /mnt sh -c ")]
        assert shlex.split(typed_command)[-1] == value, "the command reaches sh -c as one word, unchanged"

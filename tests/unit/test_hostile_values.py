"""Fault 23: hostile values never reach a guest shell as shell syntax (property-tested).

Any value for hostname, locale, timezone, keymap, packages or mirror is either refused when
the Config is built, or it changes no command's structure: every command the steps type is
split like a shell would (words and operators), and its operators are exactly those of the
same command for the default config. Accepted values are also inert on their own: they hold
only characters that ``shlex.quote`` leaves alone.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.config import Config, build
from provisioner.console import Result
from provisioner.errors import UsageError
from provisioner.install import STEPS
from provisioner.iso import BootFiles
from provisioner.qemu import Hardware, install_argv
from provisioner.session import Session

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
        return Result(command, 0, output)

    def check(self, command: str, timeout: float = 120.0, hint: str = "") -> str:
        return self.run(command, timeout).output


def typed(cfg: Config) -> list[str]:
    recorder = Recorder()
    session = Session.create(cfg)
    for step in STEPS:
        if step.enabled(cfg):
            step.action(recorder, session, step.timeout)  # type: ignore[arg-type]
    return recorder.commands


def operators(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return [token for token in lexer if token and set(token) <= set("();<>|&")]


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
        argv = install_argv(Hardware(2048, 2, cfg.accel), Path("/a.iso"), boot, Path("/t"), mirror=cfg.mirror)
        append = argv[argv.index("-append") + 1].split()
        assert [word for word in append if word.startswith("mirror=")] == [f"mirror={mirror}"]
        assert not set(mirror) & set("\"' \t\n\\")

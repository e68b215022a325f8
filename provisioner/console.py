"""Drive the live system's serial console: log in, get a clean shell, run commands.

The archiso console is hostile to a program: zsh with grml's prompt (rebuilt before every
command, colours, NUL padding, bracketed paste), a motd with escapes, kernel messages.
So the driver logs in, proves the shell executes commands with a probe whose answer its
echo cannot contain, leaves zsh for a bash without rc files and without line editing,
turns echo off, and sets a prompt that carries the exit status and a per-run nonce
between quotes that the rendered prompt does not contain. Every wait also watches for a
kernel panic, archiso's rescue shell, QEMU's end (EOF) and the timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pexpect

from provisioner.errors import BootFailed, CommandFailed, ConsoleTimeout, ProvisionError
from provisioner.events import redact

LOGIN_PROMPT = "archiso login: "
PANIC = r"Kernel panic - not syncing[^\r\n]*"
# archiso's initramfs shell when it cannot find the ISO (wrong UUID/label, ip=dhcp).
RESCUE = r"\[rootfs ~?\]# "
# systemd as PID 1 gave up (e.g. "Failed to allocate manager object" when systemd-executor
# is missing): it hangs for ever, so any wait ends here, with the lines before it.
FROZEN = r"Freezing execution"
# A line longer than the tty's canonical buffer (4095 bytes, not characters) would be cut silently.
MAX_COMMAND = 3500


class Redactor:
    """Secrets out of a stream of text that arrives in pieces: a secret split across two reads
    is caught, because the end of each piece that could begin a secret is held back until the
    next piece (or the end) says what it is."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = tuple(sorted({secret for secret in secrets if secret}, key=len, reverse=True))
        self._held = ""

    def feed(self, data: str) -> str:
        """The text that is certainly safe to pass on now."""
        text = redact(self._held + data, self.secrets)
        keep = max((_overlap(text, secret) for secret in self.secrets), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What is held back, at the end of the stream (it cannot be a whole secret)."""
        held, self._held = self._held, ""
        return held


def _overlap(text: str, secret: str) -> int:
    """The length of the longest end of ``text`` that is a proper beginning of ``secret``."""
    for size in range(min(len(secret) - 1, len(text)), 0, -1):
        if text.endswith(secret[:size]):
            return size
    return 0


class Transcript:
    """The console transcript file: everything the guest printed, secrets redacted.

    Used as pexpect's ``logfile_read``. ``on_line`` sees each complete line, for the
    progress display. The file is the workspace's (out of the guest's reach) or the user's
    ``--log``; it is opened without following a link and made 0600: it is the guest's
    output, which may show what the user would not share.
    """

    def __init__(self, path: Path, redact: tuple[str, ...] = (), on_line: Callable[[str], None] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._file: IO[str] = os.fdopen(fd, "a", encoding="utf-8", errors="replace")
        self._redactor = Redactor(redact)
        self.on_line = on_line
        self._partial = ""

    def write(self, data: str) -> None:
        # NULs out first (archiso pads its prompt with them): a hash with one inside is still the hash.
        self._emit(self._redactor.feed(data.replace("\x00", "")))

    def _emit(self, data: str) -> None:
        self._file.write(data)
        if self.on_line is not None:
            self._partial += data
            *lines, self._partial = self._partial.replace("\r", "\n").split("\n")
            for line in lines:
                if line.strip():
                    self.on_line(line)

    def flush(self) -> None:
        self._file.flush()

    def note(self, text: str) -> None:
        """A line of our own in the transcript, marked as such."""
        self._file.write(f"\n[provision-arch] {text}\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._emit(self._redactor.flush())
            self._file.close()


@dataclass(frozen=True)
class Result:
    command: str
    status: int
    output: str


class Console:
    def __init__(self, child: pexpect.spawn[str], scale: float = 1.0) -> None:
        self.child = child
        # pexpect sleeps 50 ms before every send by default (for password prompts that
        # toggle echo); we never type secrets, and the delay would tax every command.
        child.delaybeforesend = None
        self.scale = scale
        self.nonce = secrets.token_hex(4)
        self.prompt_re = re.compile(rf"PA_{self.nonce}_([0-9]+)_PROMPT> ")
        self.ps2 = f"PA_{self.nonce}_CONTINUATION> "

    # -- waiting -----------------------------------------------------------------------

    def expect(self, patterns: dict[str, str], timeout: float, waiting_for: str) -> str:
        """Wait for one of ``patterns`` (name -> regex); return the name that matched.

        A kernel panic, the rescue shell, QEMU's end and the timeout are always watched
        and raise, with the last output as evidence.
        """
        names = [*patterns, "panic", "rescue", "frozen"]
        regexes: list[Any] = [*patterns.values(), PANIC, RESCUE, FROZEN, pexpect.EOF, pexpect.TIMEOUT]
        index = self.child.expect(regexes, timeout=timeout * self.scale)
        seen = self.output_so_far()
        if index < len(patterns):
            return names[index]
        name = names[index] if index < len(names) else ("eof" if index == len(names) else "timeout")
        if name == "panic":
            raise BootFailed(
                "the guest kernel panicked", "see the transcript for the panic message", output=seen + str(self.child.after)
            )
        if name == "rescue":
            raise BootFailed(
                "the ISO dropped to its rescue shell [rootfs ~]# (it did not find its own boot medium)",
                "the ISO's label or UUID did not match (a damaged or non-Arch ISO?); do not pass ip= options",
                output=seen,
            )
        if name == "frozen":
            raise BootFailed(
                "the guest's init (systemd, PID 1) froze: it printed 'Freezing execution.'",
                "its last lines say why (a broken systemd package in the box?); see the transcript",
                output=seen + str(self.child.after),
            )
        if name == "eof":
            raise BootFailed(
                f"QEMU ended while waiting for {waiting_for}", "see the transcript for the guest's last words", output=seen
            )
        raise ConsoleTimeout(waiting_for, timeout * self.scale, seen)

    def output_so_far(self) -> str:
        """What the guest printed since the last match (for evidence in errors)."""
        before = self.child.before
        return before if isinstance(before, str) else ""

    # -- getting a shell ---------------------------------------------------------------

    def login(self, boot_timeout: float = 900.0, prompt_seen: bool = False) -> None:
        """Log in as root (empty password on the ISO) and reach the clean shell; ``prompt_seen``:
        the caller has already waited for the login prompt."""
        if not prompt_seen:
            self.await_login_prompt(boot_timeout)
        self.child.send("root\r")
        # Wait for something prompt-like first, so that probes are not queued up while
        # login and zsh start (they would all run later). An odd prompt only costs time.
        with contextlib.suppress(ConsoleTimeout):
            self.expect({"prompt": r"[#$%] "}, 60, "a prompt after logging in as root")
        self.clean_shell()

    def await_login_prompt(self, timeout: float) -> None:
        self.expect({"login": re.escape(LOGIN_PROMPT)}, timeout, f"'{LOGIN_PROMPT.strip()}' prompt")

    def clean_shell(self) -> None:
        """From a logged-in shell of any kind, reach the clean one ``run`` talks to."""
        self._await_shell("PA_READY", "a shell after logging in as root")
        # bash without rc files and readline: no colours, no bracketed paste, no right prompt.
        # zsh may have read ahead past `exec`: whatever it read is lost, so nothing more is
        # typed until bash itself has answered a probe.
        self.child.send("exec bash --norc --noprofile --noediting\r")
        self._await_shell("PA_BASH", "bash after leaving zsh")
        self.child.send(
            "stty -echo; export TERM=dumb NO_COLOR=1 PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C; "
            f"unset PROMPT_COMMAND; PS2='PA_{self.nonce}''_CONTINUATION> '; PS1='PA_{self.nonce}''_$?_PROMPT> '\r"
        )
        self.expect({"prompt": self.prompt_re.pattern}, 60, "shell prompt after login")

    def _await_shell(self, tag: str, waiting_for: str, budget: float = 300.0) -> None:
        """Send a probe until a shell runs it.

        The answer (TAG_42) differs from what the echo shows (TAG_$((6*7))), so only an
        executing shell can produce it, whatever its prompt looks like. A probe sent too
        early (login still running, or eaten by a shell that exec'd) is simply sent again.
        """
        interval, waited = 1.0, 0.0
        while waited < budget:
            self.child.send(f"echo {tag}_$((6*7))\r")
            try:
                self.expect({"ready": f"{tag}_42"}, interval, waiting_for)
                return
            except ConsoleTimeout:
                waited += interval
                interval = min(interval * 2, 15.0)  # quick at first, patient on a slow guest
        raise ConsoleTimeout(waiting_for, budget * self.scale, self.output_so_far())

    # -- commands ----------------------------------------------------------------------

    def run(self, command: str, timeout: float = 120.0) -> Result:
        """Run one shell command line; return its status and output."""
        size = len(command.encode("utf-8"))
        if "\n" in command or size > MAX_COMMAND:
            raise ProvisionError(f"internal: command unfit for the console ({size} bytes or a newline)")
        self.child.send(command + "\r")
        matched = self.expect(
            {"prompt": self.prompt_re.pattern, "continuation": re.escape(self.ps2)},
            timeout,
            f"the end of: {command}",
        )
        output = self.output_so_far().replace("\r", "").replace("\x00", "").strip("\n")
        if matched == "continuation":
            # An unbalanced quote: never wait on it, cancel and report.
            self.child.sendintr()
            self.expect({"prompt": self.prompt_re.pattern}, 30, "the prompt after cancelling")
            raise ProvisionError(f"internal: the guest shell wanted more input after: {command}")
        match = self.prompt_re.search(str(self.child.after))
        status = int(match[1]) if match else -1
        return Result(command, status, output)

    def check(self, command: str, timeout: float = 120.0, hint: str = "") -> str:
        """Run a command; raise CommandFailed with its output when the status is not 0."""
        result = self.run(command, timeout)
        if result.status != 0:
            raise CommandFailed(command, result.status, result.output, hint or "see the output above and the transcript")
        return result.output

    def poweroff(self, timeout: float = 120.0) -> None:
        """Power off and wait for QEMU to end."""
        self.child.send("poweroff\r")
        index = self.child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=timeout * self.scale)
        if index == 1:
            raise ConsoleTimeout("QEMU exit after poweroff", timeout * self.scale, self.output_so_far())

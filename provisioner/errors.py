"""The one exception root and the evidence-carrying failures.

Every failure a user can cause is a ``ProvisionError``: the CLI prints its message on one
line, its hint on the next, and exits with its ``exit_code``. The README's exit-code table
is checked against ``EXIT_CODES`` by a unit test.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    HOST = 3
    ISO = 4
    BOOT = 5
    STEP = 6
    TIMEOUT = 7
    VERIFY = 8
    MISMATCH = 9
    INTERRUPTED = 130


EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "success: every step finished with status 0",
    ExitCode.INTERNAL: "a bug in provision-arch (please report it with the transcript)",
    ExitCode.USAGE: "bad command line, configuration file or option value",
    ExitCode.HOST: "the host is not ready (QEMU, unshare, subuid ranges, target directory)",
    ExitCode.ISO: "the ISO is missing, unreadable or not an Arch ISO, or could not be fetched",
    ExitCode.BOOT: "the ISO or the installed system did not boot to a usable console",
    ExitCode.STEP: "a command in the guest failed (its status and last output are shown)",
    ExitCode.TIMEOUT: "the guest did not answer in time",
    ExitCode.VERIFY: "the ISO failed checksum or signature verification",
    ExitCode.MISMATCH: "a rebuild from a manifest installed other package versions (they are named)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C or SIGTERM); QEMU was stopped",
}


def tail(text: str, lines: int = 15) -> str:
    """The last lines of some console output, for an error message."""
    return "\n".join(text.replace("\r", "").rstrip().splitlines()[-lines:])


class ProvisionError(Exception):
    """A failure with a one-line message, a hint and an exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str = "", *, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def details(self) -> str:
        """Evidence shown below the hint (empty when there is none)."""
        return ""


class UsageError(ProvisionError):
    exit_code = ExitCode.USAGE


class HostError(ProvisionError):
    exit_code = ExitCode.HOST


class IsoError(ProvisionError):
    exit_code = ExitCode.ISO


class VerifyError(ProvisionError):
    exit_code = ExitCode.VERIFY


class BootFailed(ProvisionError):
    """The guest never reached a usable console (panic, rescue shell, QEMU gone)."""

    exit_code = ExitCode.BOOT

    def __init__(self, message: str, hint: str = "", *, output: str = "", transcript: Path | None = None) -> None:
        super().__init__(message, hint)
        self.output = output
        self.transcript = transcript

    def details(self) -> str:
        return tail(self.output)


class ConsoleTimeout(ProvisionError):
    """A wait on the console ran out; carries what was awaited and the last output."""

    exit_code = ExitCode.TIMEOUT

    def __init__(self, waiting_for: str, timeout: float, output: str, hint: str = "") -> None:
        super().__init__(
            f"no {waiting_for} after {timeout:.0f} s",
            hint or "the guest may be stuck or slow; see the transcript, or raise --timeout-scale",
        )
        self.waiting_for = waiting_for
        self.output = output

    def details(self) -> str:
        return tail(self.output)


class CommandFailed(ProvisionError):
    """A guest command exited with a non-zero status."""

    exit_code = ExitCode.STEP

    def __init__(self, cmd: str | Sequence[str], status: int, output: str, hint: str = "") -> None:
        shown = cmd if isinstance(cmd, str) else " ".join(cmd)
        super().__init__(f"guest command failed with status {status}: {shown}", hint)
        self.cmd = shown
        self.status = status
        self.output = output

    def details(self) -> str:
        return tail(self.output)

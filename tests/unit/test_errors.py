"""Errors carry their evidence (the exit-code table in docs/exit-codes.md: test_readme)."""

from __future__ import annotations

from provisioner.errors import BootFailed, CommandFailed, ConsoleTimeout, ExitCode
from provisioner.events import Bus, Error, Event, Note


def test_errors_carry_their_evidence() -> None:
    failed = CommandFailed("pacstrap -K /mnt base", 1, "line\n" * 40 + "error: target not found: bsae")
    assert failed.exit_code == ExitCode.STEP
    assert "status 1: pacstrap -K /mnt base" in failed.message
    assert failed.details().endswith("error: target not found: bsae")
    assert len(failed.details().splitlines()) == 15
    timeout = ConsoleTimeout("login prompt", 300, "booting...")
    assert timeout.exit_code == ExitCode.TIMEOUT and "no login prompt after 300 s" in timeout.message
    assert BootFailed("x", output="Kernel panic").details() == "Kernel panic"


def test_the_bus_redacts_every_text_of_every_event() -> None:
    seen: list[Event] = []
    bus = Bus(seen.append)
    bus.hide("$6$s$hash", "")
    bus.emit(Error("failed: $6$s$hash", "hint $6$s$hash", 6, "details root:$6$s$hash:1"))
    bus.note("no secret here")
    error = seen[0]
    assert isinstance(error, Error)
    assert "$6$s$hash" not in f"{error.message}{error.hint}{error.details}" and "<redacted>" in error.details
    assert isinstance(seen[1], Note) and seen[1].message == "no secret here"

"""Errors carry their evidence (the exit-code table in docs/exit-codes.md: test_readme)."""

from __future__ import annotations

from provisioner.errors import BootFailed, CommandFailed, ConsoleTimeout, ExitCode


def test_errors_carry_their_evidence() -> None:
    failed = CommandFailed("pacstrap -K /mnt base", 1, "line\n" * 40 + "error: target not found: bsae")
    assert failed.exit_code == ExitCode.STEP
    assert "status 1: pacstrap -K /mnt base" in failed.message
    assert failed.details().endswith("error: target not found: bsae")
    assert len(failed.details().splitlines()) == 15
    timeout = ConsoleTimeout("login prompt", 300, "booting...")
    assert timeout.exit_code == ExitCode.TIMEOUT and "no login prompt after 300 s" in timeout.message
    assert BootFailed("x", output="Kernel panic").details() == "Kernel panic"

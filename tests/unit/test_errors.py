"""The README's exit-code table is the errors module's, code for code."""

from __future__ import annotations

import re
from pathlib import Path

from provisioner.errors import EXIT_CODES, BootFailed, CommandFailed, ConsoleTimeout, ExitCode

README = Path(__file__).parents[2] / "README.md"


def test_readme_documents_every_exit_code() -> None:
    rows = dict(re.findall(r"^\| (\d+) \| ([^|]+?) \|$", README.read_text(), re.M))
    assert {int(code) for code in rows} == {int(code) for code in ExitCode}
    for code, text in EXIT_CODES.items():
        assert rows[str(int(code))] == text


def test_errors_carry_their_evidence() -> None:
    failed = CommandFailed("pacstrap -K /mnt base", 1, "line\n" * 40 + "error: target not found: bsae")
    assert failed.exit_code == ExitCode.STEP
    assert "status 1: pacstrap -K /mnt base" in failed.message
    assert failed.details().endswith("error: target not found: bsae")
    assert len(failed.details().splitlines()) == 15
    timeout = ConsoleTimeout("login prompt", 300, "booting...")
    assert timeout.exit_code == ExitCode.TIMEOUT and "no login prompt after 300 s" in timeout.message
    assert BootFailed("x", output="Kernel panic").details() == "Kernel panic"

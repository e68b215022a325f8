"""Fixtures every test layer may use: an event log, a password file; hypothesis's profiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from provisioner.events import Bus, Event
from provisioner.workspace import ENV
from tests.helpers import password_file

# CI must not fail at random: there hypothesis draws the same examples every run (seeded by
# each test's name) and keeps no example database, so a run repeats exactly; what it once
# found stays in the tests as @example. `make test` (what CI runs) selects it with
# --hypothesis-profile=ci, and so does a CI environment variable. Elsewhere (make test-fast,
# a plain pytest) the draws stay random, to go on finding new cases.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


# The slowest modules, slowest first (the dev box's alone is a third of the run): `make test`
# runs whole modules in TEST_JOBS processes (xdist --dist loadfile), each taking the next in
# collection order, so the longest must not start last.
SLOWEST_FIRST = (
    "tests/vm/test_devbox.py",
    "tests/vm/test_reproducible.py",
    "tests/vm/test_e2e.py",
    "tests/vm/test_virtiofs.py",
    "tests/vm/test_export_disk.py",
    "tests/vm/test_standin.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {module: place for place, module in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test keeps the boxes' workspaces (locks, state, transcripts) in its own directory."""
    home = tmp_path / "state-home"
    monkeypatch.setenv(ENV, str(home))
    return home


@pytest.fixture
def log() -> list[Event]:
    return []


@pytest.fixture
def events(log: list[Event]) -> Bus:
    """A bus whose only sink is ``log``: tests read back what a display or --json would have received."""
    return Bus(log.append)


@pytest.fixture
def pw_file(tmp_path: Path) -> Path:
    """A user's password file (mode 0600) holding 'secret'."""
    return password_file(tmp_path)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures tests reported (tests.helpers.report), after the run: phase times, sizes."""
    tables = [
        value
        for outcome in ("passed", "failed")
        for test in terminalreporter.stats.get(outcome, [])
        if test.when == "call"
        for name, value in test.user_properties
        if name == "report"
    ]
    if tables:
        terminalreporter.section("figures")
        for table in tables:
            terminalreporter.write_line(table)

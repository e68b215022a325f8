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

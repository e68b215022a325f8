"""Fixtures every test layer may use: an event log, a password file."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.events import Bus, Event
from tests.helpers import password_file


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

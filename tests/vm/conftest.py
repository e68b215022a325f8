"""Fixtures shared by the VM tests: the offline stand-in of the Arch ISO."""

from __future__ import annotations

import pathlib

import pytest

from tests.standin.build import ensure_standin


@pytest.fixture(scope="session")
def standin_iso() -> pathlib.Path:
    """The stand-in ISO, from the cache or built on first use (needs root
    then; `python3 -m tests.standin.build` builds it ahead of time)."""
    return ensure_standin()

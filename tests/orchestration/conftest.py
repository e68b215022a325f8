"""The fake QEMU on PATH, and a way to run the real CLI against it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from provisioner.cli import app
from tests.helpers import make_iso, password_file

FAKE_BIN = Path(__file__).parents[1] / "fakeqemu" / "bin"
PASSWORD = "orchestration-Pw-1"


@dataclass
class Fake:
    """What the fake QEMU recorded: launches, bytes typed, shim calls."""

    dir: Path

    def launches(self) -> list[dict[str, Any]]:
        path = self.dir / "launches.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        records = [json.loads(line) for line in lines]
        starts = [r for r in records if r["event"] == "start"]
        ends = {r["pid"]: r["time"] for r in records if r["event"] == "end"}
        return [{**s, "end": ends.get(s["pid"])} for s in starts]

    def typed(self) -> str:
        path = self.dir / "typed.log"
        return path.read_bytes().decode(errors="replace") if path.exists() else ""

    def commands(self) -> str:
        path = self.dir / "commands.log"
        return path.read_text() if path.exists() else ""


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def steps(self, kind: str = "step-started") -> list[str]:
        return [e["step"] for e in self.events if e["type"] == kind]

    def finished(self) -> dict[str, str]:
        return {e["step"]: e["status"] for e in self.events if e["type"] == "step-finished"}


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    record = tmp_path / "fake-qemu"
    record.mkdir()
    monkeypatch.setenv("PATH", f"{FAKE_BIN}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_QEMU_DIR", str(record))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield Fake(record)
    for launch in Fake(record).launches():
        assert _gone(launch["pid"]), f"fake QEMU {launch['pid']} outlived the run"
    left = leftovers(record)
    assert not left, f"processes of the fake guest outlived the run: {left}"


def leftovers(record: Path, within: float = 10.0) -> dict[int, str]:
    """Processes started for this test's fake QEMU (they carry its FAKE_QEMU_DIR) still alive
    ``within`` seconds from now, with their command lines: a process sent SIGKILL a moment ago
    may not have exited yet, more so on a loaded machine."""
    deadline = time.monotonic() + within
    while (found := _marked(record)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def _marked(record: Path) -> dict[int, str]:
    mark = f"FAKE_QEMU_DIR={record}".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            pid = int(proc.name) if proc.name.isdigit() else os.getpid()
            if pid != os.getpid() and mark in (proc / "environ").read_bytes().split(b"\0") and _alive(pid):
                found[pid] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return found


def _gone(pid: int, within: float = 20.0) -> bool:
    """True once ``pid`` has exited (a process that recorded its end may still be exiting)."""
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture(scope="session")
def iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_iso(tmp_path_factory.mktemp("iso") / "archlinux-2026.11.01-x86_64.iso")


@pytest.fixture
def install(tmp_path: Path, iso: Path, fake: Fake) -> Any:
    """Run `provision-arch TARGET --iso … --json` in-process; the Run with its parsed events."""
    pw = password_file(tmp_path, PASSWORD)

    def run(*args: str, target: Path | None = None) -> Run:
        target = target or tmp_path / "base"
        argv = [str(target), "--iso", str(iso), "--password-file", str(pw), "--json", "--accel", "tcg", *args]
        result = CliRunner().invoke(app, argv, catch_exceptions=False)
        events = [json.loads(line) for line in result.stdout.splitlines()]  # every line must parse
        return Run(result.exit_code, result.stdout, result.stderr, events)

    return run

"""Pinned, reproducible, cached, resumable builds on the stand-in, over HTTP.

The stand-in archive (tests/standin/archive.py: two days in which vim differs) is served on
127.0.0.1 by tests/standin/mirror.py, which the guest reaches as 10.0.2.2 through QEMU's
user network; its access log shows what was downloaded. Installs, as root (the
unprivileged path is test_e2e's), each with a small package set:

- A: --snapshot DAY1 with a cold package cache; B: --snapshot DAY2 with another cold cache;
- C: --from-manifest of A with A's (now warm) cache: A's versions, nothing downloaded;
- D: DAY1 again, killed during pacstrap, then the same command resumes it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from provisioner.errors import ExitCode
from provisioner.workspace import ENV, Workspace
from tests.helpers import report
from tests.standin import repo
from tests.standin.archive import CHANGED, DAY1, DAY2, Day, installed_versions
from tests.standin.mirror import Mirror, Request

pytestmark = pytest.mark.vm

ROOT = pathlib.Path(__file__).parents[2]
PACKAGES = ("base", "linux", "mkinitcpio", CHANGED)
PASSWORD = "repro-Test-pw0"  # the throwaway test box's root password
TIMES: dict[str, float] = {}


@dataclass(frozen=True)
class Install:
    target: pathlib.Path
    returncode: int
    events: list[dict[str, Any]]
    requests: list[Request]  # the access log while it ran
    stderr: str

    @property
    def downloads(self) -> list[str]:
        return [r.path for r in self.requests if r.method == "GET" and ".pkg.tar" in r.path and r.status in (200, 206)]

    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(workspace(self.target).manifest.read_text())
        return data


@pytest.fixture(scope="module")
def workdir() -> Iterator[pathlib.Path]:
    if os.geteuid() != 0:
        pytest.skip("runs the CLI as root")
    path = pathlib.Path(tempfile.mkdtemp(prefix="provision-arch-repro-", dir="/var/tmp"))
    (path / "pw").write_text(PASSWORD + "\n")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def state_home(target: pathlib.Path) -> pathlib.Path:
    """Where the CLI, run as root by these tests, keeps its workspaces: beside the boxes (the
    module's directory), whatever the test process's own environment says."""
    return target.parent / "state"


def workspace(target: pathlib.Path) -> Workspace:
    return Workspace.of(target, home=state_home(target))


def argv(target: pathlib.Path, workdir: pathlib.Path, iso: pathlib.Path, mirror: Mirror, *extra: str) -> list[str]:
    return [sys.executable, "-m", "provisioner", str(target), "--iso", str(iso), "--password-file", str(workdir / "pw"),
            "--accel", "tcg", "--archive-url", mirror.guest_url, "--json", *extra]  # fmt: skip


def run(name: str, command: list[str], mirror: Mirror, target: pathlib.Path, kill_at: str | None = None) -> Install:
    """Run the CLI; with ``kill_at``, SIGKILL it as soon as that step has started."""
    before = len(mirror.requests())
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(ROOT), ENV: str(state_home(target))}
    with subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as child:  # fmt: skip
        assert child.stdout is not None
        lines = []
        for line in child.stdout:
            lines.append(line)
            event = json.loads(line)
            if kill_at and event["type"] == "step-started" and event["step"] == kill_at:
                time.sleep(3)  # into it: pacman is downloading and extracting
                child.kill()
                break
        _, stderr = child.communicate(timeout=2400)
    TIMES[name] = time.monotonic() - started
    return Install(target, child.returncode, [json.loads(line) for line in lines], mirror.requests()[before:], stderr)


def pinned(day: Day) -> tuple[str, ...]:
    return ("--snapshot", day.date.isoformat(), "--packages", " ".join(PACKAGES))


def pinned_install(name: str, day: Day, mirror: Mirror, iso: pathlib.Path, workdir: pathlib.Path) -> Install:
    """A successful install pinned to ``day`` into workdir/NAME, with a cache of its own (cold)."""
    target = workdir / name
    command = argv(target, workdir, iso, mirror, *pinned(day), "--package-cache", str(workdir / f"cache-{name}"))
    done = run(f"{name.upper()}: {day.date}, cold cache", command, mirror, target)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def a(mirror: Mirror, standin_iso: pathlib.Path, workdir: pathlib.Path) -> Install:
    return pinned_install("a", DAY1, mirror, standin_iso, workdir)


@pytest.fixture(scope="module")
def b(mirror: Mirror, standin_iso: pathlib.Path, workdir: pathlib.Path) -> Install:
    return pinned_install("b", DAY2, mirror, standin_iso, workdir)


def test_each_snapshot_installs_its_days_versions_over_http(a: Install, b: Install) -> None:
    assert installed_versions(a.target)[CHANGED] == DAY1.version
    assert installed_versions(b.target)[CHANGED] == DAY2.version
    for done, day in ((a, DAY1), (b, DAY2)):
        assert done.downloads and all(path.startswith(f"/{day.path}/") for path in done.downloads)
        assert f"{CHANGED}-{day.version}-{repo.ARCH}.pkg.tar.zst" in " ".join(done.downloads)
        mirrorlist = (done.target / "etc/pacman.d/mirrorlist").read_text()
        assert f"/{day.path}/$repo/os/$arch" in mirrorlist and "To unpin" in mirrorlist
        assert done.manifest()["snapshot"] == day.date.isoformat()
        assert done.manifest()["packages"] == installed_versions(done.target)


def test_a_rebuild_from_the_manifest_with_a_warm_cache(
    a: Install, b: Install, mirror: Mirror, standin_iso: pathlib.Path, workdir: pathlib.Path
) -> None:
    """Run after B (a DAY2-era build): the manifest still brings back DAY1's exact versions."""
    target = workdir / "c"
    manifest = workspace(a.target).manifest
    done = run("C: --from-manifest A, warm cache", argv(target, workdir, standin_iso, mirror, "--from-manifest",
                                                          str(manifest), "--package-cache", str(workdir / "cache-a")),
               mirror, target)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.manifest()["packages"] == a.manifest()["packages"]
    assert installed_versions(target)[CHANGED] == DAY1.version
    assert len(a.downloads) > 0 and done.downloads == [], "a warm cache must make no package downloads"
    TIMES["downloads, cold cache"], TIMES["downloads, warm cache"] = len(a.downloads), len(done.downloads)


def test_an_install_killed_during_pacstrap_resumes_to_the_same_manifest(
    a: Install, mirror: Mirror, standin_iso: pathlib.Path, workdir: pathlib.Path
) -> None:
    target = workdir / "d"
    # The 9p path is the resumable one: its target steps write the tree where it stays.
    command = argv(target, workdir, standin_iso, mirror, *pinned(DAY1), "--package-cache", str(workdir / "cache-d"),
                   "--install-via", "9p")  # fmt: skip
    killed = run("D: killed during pacstrap", command, mirror, target, kill_at="pacstrap")
    assert killed.returncode == -signal.SIGKILL
    state = json.loads(workspace(target).state_file.read_text())
    assert state["finished"] is False and "pacstrap" not in state["done"]
    resumed = run("D: resumed", command, mirror, target)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert any(e["type"] == "note" and e["message"].startswith("resuming") for e in resumed.events)
    for same in ("packages", "config", "config_digest", "iso", "snapshot"):
        assert resumed.manifest()[same] == a.manifest()[same], same


def test_a_changed_config_on_a_finished_target_is_refused(
    a: Install, mirror: Mirror, standin_iso: pathlib.Path, workdir: pathlib.Path
) -> None:
    command = argv(a.target, workdir, standin_iso, mirror, *pinned(DAY1), "--hostname", "other")
    again = run("E: A again", command, mirror, a.target)
    assert again.returncode == ExitCode.USAGE
    assert "hostname: 'archlinux' → 'other'" in again.events[-1]["message"] and "--force" in again.events[-1]["hint"]


def test_zz_report_times(request: pytest.FixtureRequest) -> None:
    report(request, "reproducible builds on the stand-in (TCG; s, downloads)", TIMES)
    assert TIMES, "no phase ran"

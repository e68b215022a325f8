"""Installing from an HTTP mirror: the guest reaches the host's loopback through QEMU's user
network (10.0.2.2), and a pinned Archive day decides what gets installed.

The stand-in archive (tests/standin/archive.py) is served on 127.0.0.1 by
tests/standin/mirror.py. The CLI installs twice with ``--mirror
http://10.0.2.2:PORT/repos/2026/11/01`` and ``…/02``: the ISO's choose-mirror writes that
into the live mirrorlist in place of its baked-in ``file://`` repository, and pacman
downloads over HTTP. The access log proves where the packages came from; the targets'
pacman databases and /usr/bin/vim show which day each install used.

Runs the CLI as root (the unprivileged path is test_e2e's); two installs under TCG take
about eight minutes.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.standin import repo
from tests.standin.archive import CHANGED, DAY1, DAY2, DAYS, ArchiveUnavailable, Day, ensure_archive, installed_versions
from tests.standin.mirror import Mirror, Request

pytestmark = pytest.mark.vm

ROOT = pathlib.Path(__file__).parents[2]
PACKAGES = ("base", "linux", "mkinitcpio", CHANGED)
PASSWORD = "mirror-Test-pw0"  # the throwaway test box's root password
TIMES: dict[str, float] = {}


@dataclass(frozen=True)
class Install:
    day: Day
    target: pathlib.Path
    mirror_url: str  # what --mirror said
    requests: list[Request]  # the access log while it ran
    stderr: str


@pytest.fixture(scope="module")
def archive() -> pathlib.Path:
    if os.geteuid() != 0:
        pytest.skip("the mirror test runs the CLI as root")
    try:
        return ensure_archive()
    except ArchiveUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def mirror(archive: pathlib.Path) -> Iterator[Mirror]:
    with Mirror(archive) as m:
        yield m


@pytest.fixture(scope="module")
def workdir() -> Iterator[pathlib.Path]:
    path = pathlib.Path(tempfile.mkdtemp(prefix="provision-arch-mirror-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def install(day: Day, mirror: Mirror, iso: pathlib.Path, workdir: pathlib.Path) -> Install:
    password_file = workdir / "root-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    target = workdir / f"base-{day.date.isoformat()}"
    url = f"{mirror.guest_url}/{day.path}"
    argv = [
        sys.executable, "-m", "provisioner", str(target),
        "--iso", str(iso),
        "--password-file", str(password_file),
        "--packages", " ".join(PACKAGES),
        "--accel", "tcg",
        "--mirror", url,
    ]  # fmt: skip
    before = len(mirror.requests())
    started = time.monotonic()
    result = subprocess.run(
        argv,
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(workdir / "cache")},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=2400,
        check=False,
    )
    TIMES[f"install from {day.path} over HTTP"] = time.monotonic() - started
    print(result.stderr)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    return Install(day, target, url, mirror.requests()[before:], result.stderr)


@pytest.fixture(scope="module")
def installs(mirror: Mirror, standin_iso: pathlib.Path, workdir: pathlib.Path) -> dict[Day, Install]:
    return {day: install(day, mirror, standin_iso, workdir) for day in DAYS}


def test_each_day_installs_its_own_vim(installs: dict[Day, Install]) -> None:
    versions = {day: installed_versions(done.target) for day, done in installs.items()}
    assert versions[DAY1][CHANGED] == "9.1.0001-1"
    assert versions[DAY2][CHANGED] == "9.1.0002-1"
    # The rest of the set is the same on both days.
    assert {k: v for k, v in versions[DAY1].items() if k != CHANGED} == {k: v for k, v in versions[DAY2].items() if k != CHANGED}
    assert set(PACKAGES) <= set(versions[DAY1])
    for day, done in installs.items():
        assert f"# {CHANGED} {day.version} " in (done.target / "usr/bin/vim").read_text()


def test_packages_were_downloaded_over_http(installs: dict[Day, Install], archive: pathlib.Path) -> None:
    for day, done in installs.items():
        prefix = f"/{day.path}/"
        # Only this day's tree was asked for, and only from the host's side of QEMU's NAT.
        assert done.requests, f"no HTTP requests during the {day.path} install"
        assert all(r.path.startswith(prefix) for r in done.requests), [r.path for r in done.requests]
        assert {r.client for r in done.requests} == {"127.0.0.1"}
        downloads = {r.path.rsplit("/", 1)[1]: r for r in done.requests if r.method == "GET" and ".pkg.tar" in r.path}
        # Every installed package came whole from the mirror (200, or 206 after a resume).
        for name, version in installed_versions(done.target).items():
            candidates = [f for f in downloads if f.startswith(f"{name}-{version}-")]
            assert candidates, f"{name} {version} was installed but never downloaded over HTTP"
            request = downloads[candidates[0]]
            assert request.status in (200, 206)
            served = next((archive / day.path).glob(f"*/os/{repo.ARCH}/{candidates[0]}"))
            if request.status == 200:
                assert request.bytes == served.stat().st_size
        assert f"{CHANGED}-{day.version}-{repo.ARCH}.pkg.tar.zst" in downloads
        # pacstrap synchronised the target's databases from the mirror.
        for name in repo.REPOS:
            assert any(r.path == f"{prefix}{name}/os/{repo.ARCH}/{name}.db" and r.status == 200 for r in done.requests)


def test_the_live_mirrorlist_named_the_mirror(installs: dict[Day, Install]) -> None:
    """pacstrap copies the live system's mirrorlist into the target: choose-mirror's, not the ISO's file:// one."""
    for done in installs.values():
        servers = [
            line for line in (done.target / "etc/pacman.d/mirrorlist").read_text().splitlines() if line.startswith("Server")
        ]
        assert servers == [f"Server = {done.mirror_url}/$repo/os/$arch"]


def test_zz_print_install_times(installs: dict[Day, Install], capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print("\ninstalls over HTTP, wall times:")
        for what, seconds in TIMES.items():
            print(f"  {what:<45} {seconds:7.1f} s")

"""Pinned, reproducible, cached, resumable builds, against the fake QEMU.

The stand-in proves the same with real pacman over HTTP (tests/vm/test_mirror.py); here the
orchestration: what reaches the guest, what is written, what a second run does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from provisioner.errors import ExitCode
from provisioner.workspace import Workspace
from tests.helpers import password_file
from tests.orchestration.conftest import PASSWORD, Fake


def manifest(target: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Workspace.of(target).manifest.read_text())
    return data


def test_snapshot_pins_the_live_mirror_and_the_boxs_mirrorlist(install: Any, fake: Fake, tmp_path: Path) -> None:
    run = install("--snapshot", "2026-11-01", "--archive-url", "http://archive.example")
    assert run.exit_code == 0, run.stderr
    argv = fake.launches()[0]["argv"]
    assert "mirror=http://archive.example/repos/2026/11/01" in argv[argv.index("-append") + 1].split()
    mirrorlist = (tmp_path / "base/etc/pacman.d/mirrorlist").read_text()
    assert "Server = http://archive.example/repos/2026/11/01/$repo/os/$arch" in mirrorlist.splitlines()
    assert "To unpin" in mirrorlist
    assert manifest(tmp_path / "base")["snapshot"] == "2026-11-01"


def test_snapshot_and_mirror_together_are_refused(install: Any, fake: Fake) -> None:
    run = install("--snapshot", "2026-11-01", "--mirror", "https://m.example")
    assert run.exit_code == ExitCode.USAGE and "--snapshot and --mirror" in run.events[-1]["message"]


def test_the_manifest_records_iso_config_and_package_versions(install: Any, fake: Fake, iso: Path, tmp_path: Path) -> None:
    run = install("--package", "base linux vim", "--hostname", "box1")
    assert run.exit_code == 0, run.stderr
    data = manifest(tmp_path / "base")
    assert run.events[-1]["paths"]["manifest"] == str(Workspace.of(tmp_path / "base").manifest)
    assert data["iso"]["name"] == iso.name and len(data["iso"]["sha256"]) == 64
    assert data["config"]["packages"] == ["base", "linux", "vim"] and data["config"]["hostname"] == "box1"
    assert data["packages"] == {"base": "1-1", "linux": "1-1", "vim": "1-1"}
    assert "password" not in json.dumps(data) and str(tmp_path) not in json.dumps(data["config"])


def test_a_second_build_with_the_same_cache_downloads_nothing(install: Any, fake: Fake, tmp_path: Path) -> None:
    cache = tmp_path / "pkg-cache"
    assert install("--package-cache", str(cache), target=tmp_path / "one").exit_code == 0
    first = (fake.dir / "downloads.log").read_text().split()
    assert sorted(first) == sorted(["base", "base-devel", "linux", "vim", "man-db", "man-pages"])
    assert install("--package-cache", str(cache), target=tmp_path / "two").exit_code == 0
    assert (fake.dir / "downloads.log").read_text().split() == first, "the second build downloaded again"
    assert not list((tmp_path / "two/var/cache/pacman/pkg").glob("*")), "packages belong in the shared cache"
    argv = fake.launches()[1]["argv"]
    assert any(f"path={cache}" in arg and "pkgcache" in arg for arg in argv)


def test_without_the_cache_packages_go_to_the_target(install: Any, fake: Fake, tmp_path: Path) -> None:
    assert install("--no-cache-packages").exit_code == 0
    assert list((tmp_path / "base/var/cache/pacman/pkg").glob("*.pkg.tar.zst"))
    assert not any("pkgcache" in arg for arg in fake.launches()[0]["argv"])


def test_a_finished_target_is_not_reinstalled_by_accident(install: Any, fake: Fake, tmp_path: Path) -> None:
    assert install().exit_code == 0
    again = install()
    assert again.exit_code == ExitCode.USAGE and "already installed" in again.events[-1]["message"]
    assert "--force" in again.events[-1]["hint"] and len(fake.launches()) == 1


def interrupted_during(tool: str, fake: Fake, iso: Path, tmp_path: Path, *extra: str) -> Path:
    """The CLI as its own process, stopped with SIGTERM while the guest runs ``tool``; the target."""
    target = tmp_path / "base"
    argv = [sys.executable, "-c", "from provisioner.cli import main; main()", str(target), "--iso", str(iso),
            "--password-file", str(password_file(tmp_path, PASSWORD)), "--accel", "tcg", *extra]  # fmt: skip
    with subprocess.Popen(argv, env={**os.environ, "FAKE_HANG": tool}, stderr=subprocess.PIPE, text=True) as run:
        deadline = time.monotonic() + 60
        while tool not in fake.commands():
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
    assert run.returncode == ExitCode.INTERRUPTED
    return target


def test_a_changed_config_on_an_unfinished_target_is_refused(fake: Fake, iso: Path, tmp_path: Path, install: Any) -> None:
    # Over 9p: an interrupted stream install leaves no tree to resume (it starts afresh).
    target = interrupted_during("pacstrap", fake, iso, tmp_path, "--hostname", "one", "--install-via", "9p")
    run = install("--hostname", "two", "--install-via", "9p", target=target)
    error = run.events[-1]
    assert run.exit_code == ExitCode.USAGE and "hostname: 'one' → 'two'" in error["message"]
    assert "--force starts over" in error["hint"] or "--force to start over" in error["hint"]


def test_an_interrupted_install_resumes_and_ends_as_an_uninterrupted_one(
    fake: Fake, iso: Path, tmp_path: Path, install: Any
) -> None:
    target = interrupted_during("pacstrap", fake, iso, tmp_path, "--install-via", "9p")
    resumed = install("--install-via", "9p", target=target)
    assert resumed.exit_code == 0, resumed.stderr
    assert any(e["type"] == "note" and e["message"].startswith("resuming") for e in resumed.events)
    pacstraps = [line for line in fake.commands().splitlines() if line.startswith("pacstrap")]
    assert "--overwrite" not in pacstraps[0] and "--overwrite" in pacstraps[1], "a resumed pacstrap may overwrite"
    clean = install("--install-via", "9p", target=tmp_path / "clean")
    assert clean.exit_code == 0
    mine, theirs = manifest(target), manifest(tmp_path / "clean")
    for same in ("packages", "config", "config_digest", "iso"):
        assert mine[same] == theirs[same], same


def test_a_resumed_run_skips_the_target_steps_done_before(fake: Fake, iso: Path, tmp_path: Path, install: Any) -> None:
    target = interrupted_during("mkinitcpio", fake, iso, tmp_path, "--install-via", "9p")
    resumed = install("--install-via", "9p", target=target)
    assert resumed.exit_code == 0, resumed.stderr
    skipped = [e["step"] for e in resumed.events if e["type"] == "step-skipped" and e["step"] != "stream"]
    assert skipped == ["pacstrap", "configure"]
    assert resumed.steps()[-6:] == ["refresh-keyring", "initramfs", "password", "unmount", "poweroff", "manifest"]


def test_a_stream_install_does_not_take_over_a_partial_9p_tree(fake: Fake, iso: Path, tmp_path: Path, install: Any) -> None:
    target = interrupted_during("mkinitcpio", fake, iso, tmp_path, "--install-via", "9p")  # pacstrap done
    launches = len(fake.launches())
    refused = install(target=target)  # the default: stream
    assert refused.exit_code == ExitCode.USAGE, refused.stderr
    assert refused.events[-1]["message"] == f"{target} holds a partial install written over 9p"
    assert "--install-via 9p" in refused.events[-1]["hint"] and len(fake.launches()) == launches
    assert install("--install-via", "9p", target=target).exit_code == 0


def test_from_manifest_rebuilds_the_same_box(fake: Fake, iso: Path, tmp_path: Path, install: Any) -> None:
    assert install("--package", "base linux", "--hostname", "origin", "--snapshot", "2026-11-01").exit_code == 0
    recorded = Workspace.of(tmp_path / "base").manifest
    again = install("--from-manifest", str(recorded), target=tmp_path / "copy")
    assert again.exit_code == 0, again.stderr
    assert manifest(tmp_path / "copy")["config"] == manifest(tmp_path / "base")["config"]
    clash = install("--from-manifest", str(recorded), "--hostname", "other", target=tmp_path / "clash")
    assert clash.exit_code == ExitCode.USAGE and "fixes hostname" in clash.events[-1]["message"]


def test_from_manifest_names_the_packages_whose_versions_differ(fake: Fake, iso: Path, tmp_path: Path, install: Any) -> None:
    assert install("--package", "base linux").exit_code == 0
    recorded = Workspace.of(tmp_path / "base").manifest
    data = json.loads(recorded.read_text())
    data["packages"]["linux"] = "6.0-1"  # as if the archive day had served another kernel
    recorded.write_text(json.dumps(data))
    run = install("--from-manifest", str(recorded), target=tmp_path / "copy")
    assert run.exit_code == ExitCode.MISMATCH, run.stderr
    assert "linux: 6.0-1 → 1-1" in run.events[-1]["message"]


def test_from_manifest_refuses_another_iso(fake: Fake, iso: Path, tmp_path: Path, install: Any) -> None:
    assert install().exit_code == 0
    recorded = Workspace.of(tmp_path / "base").manifest
    data = json.loads(recorded.read_text())
    data["iso"]["sha256"] = "0" * 64
    recorded.write_text(json.dumps(data))
    run = install("--from-manifest", str(recorded), target=tmp_path / "copy")
    assert run.exit_code == ExitCode.VERIFY and "is not the ISO of" in run.events[-1]["message"]
    assert fake.launches()[-1:] == fake.launches()[:1], "no QEMU for a rebuild with the wrong ISO"

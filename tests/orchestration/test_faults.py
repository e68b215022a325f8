"""The fault matrix (README "What can go wrong"): each case a user can cause ends with its
documented exit code, a one-line error with a hint, no QEMU left, nothing outside the target
touched and nothing inside it lost. Against the fake QEMU; the cases that need the real ISO
stand-in are in tests/vm/test_failures.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from provisioner import install as install_module
from provisioner import live, preflight
from provisioner.errors import ExitCode
from provisioner.workspace import Workspace
from tests.helpers import make_iso, password_file, staged_secrets
from tests.orchestration.conftest import PASSWORD, Fake, Run


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every entry below ``directory`` with its size and mtime: to prove nothing was touched."""
    return {str(p.relative_to(directory)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in directory.rglob("*")}


def one_line_error(run: Run, code: ExitCode) -> dict[str, Any]:
    assert run.exit_code == code, run.stderr
    error = run.events[-1]
    assert error["type"] == "error" and error["exit_code"] == code
    assert "\n" not in error["message"].split("\nerror:")[0] and error["hint"]
    assert run.stderr.count("error:") >= 1 and "hint:" in run.stderr
    return error


@pytest.fixture
def outside(tmp_path: Path) -> Any:
    """A file beside the target that no run may touch."""
    path = tmp_path / "neighbour.txt"
    path.write_text("do not touch\n")
    before = path.stat().st_mtime_ns
    yield path
    assert path.read_text() == "do not touch\n" and path.stat().st_mtime_ns == before


# -- 1-5: the host --------------------------------------------------------------------------


def test_01_qemu_missing(install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outside: Path) -> None:
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    for tool in ("gpgv", "unshare", "chown"):
        if found := shutil.which(tool):
            (bare / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bare))
    error = one_line_error(install(), ExitCode.HOST)
    assert "qemu-system-x86_64 is not installed" in error["message"] and "apt-get install qemu-system-x86" in error["hint"]
    assert not (tmp_path / "base").exists() and fake.launches() == []


def fake_tool(directory: Path, name: str, script: str) -> None:
    (directory / name).write_text(f"#!/bin/sh\n{script}\n")
    (directory / name).chmod(0o755)


@pytest.fixture
def unprivileged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """As a user who is not root: fake unshare/newuidmap and an /etc of our own, with ranges."""
    tools = tmp_path / "userns-bin"
    tools.mkdir()
    fake_tool(tools, "unshare", '[ "$1" = --help ] && echo "--map-auto --map-root-user"; exit 0')
    for name in ("newuidmap", "newgidmap"):
        fake_tool(tools, name, "exit 0")
    etc = tmp_path / "etc"
    etc.mkdir()
    for kind in ("subuid", "subgid"):
        (etc / kind).write_text("alice:100000:65536\n")
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    monkeypatch.setattr(preflight, "ETC", etc)
    monkeypatch.setattr(preflight.Host, "__init__", _as_alice(preflight.Host.__init__))
    return tools


def _as_alice(init: Any) -> Any:
    def host_init(self: preflight.Host, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **{**kwargs, "user": "alice", "root": False})

    return host_init


@pytest.mark.parametrize(
    ("case", "message", "fix"),
    [("unshare-old", "unshare has no --map-auto", "util-linux"),
     ("no-newuidmap", "newuidmap is not installed", "uidmap"),
     ("no-subuid", "no subuid range for user alice", "--add-subuids"),
     ("no-subgid", "no subgid range for user alice", "--add-subgids")],
)  # fmt: skip
def test_02_05_user_namespace_parts(
    case: str, message: str, fix: str, unprivileged: Path, install: Any, fake: Fake, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if case == "unshare-old":
        fake_tool(unprivileged, "unshare", '[ "$1" = --help ] && echo "--map-root-user"; exit 0')
    elif case == "no-newuidmap":
        which = shutil.which  # the host has one in /usr/bin: hide it
        monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "newuidmap" else which(name, *a, **k))
    else:
        (tmp_path / "etc" / case.removeprefix("no-")).write_text("bob:100000:65536\n")
    error = one_line_error(install(), ExitCode.HOST)
    assert message in error["message"] and fix in error["hint"]
    assert fake.launches() == [] and not (tmp_path / "base").exists()


# -- 6-8: the target ------------------------------------------------------------------------


def test_06_target_is_a_file(install: Any, fake: Fake, tmp_path: Path) -> None:
    target = tmp_path / "base"
    target.write_text("mine\n")
    error = one_line_error(install(target=target), ExitCode.HOST)
    assert "is not a directory" in error["message"]
    assert target.read_text() == "mine\n" and fake.launches() == []


def test_07_target_not_empty_without_force(install: Any, fake: Fake, tmp_path: Path) -> None:
    target = tmp_path / "base"
    target.mkdir()
    (target / "notes.txt").write_text("mine\n")
    before = snapshot(target)
    error = one_line_error(install(target=target), ExitCode.HOST)
    assert "is not empty" in error["message"] and "--force" in error["hint"]
    assert snapshot(target) == before and fake.launches() == []


def test_08_target_on_a_file_system_without_ownership(
    install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outside: Path
) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(f"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n40 22 8:17 / {tmp_path} rw,relatime - vfat /dev/sdb1 rw\n")
    monkeypatch.setattr(preflight, "MOUNTINFO", info)
    error = one_line_error(install(), ExitCode.HOST)
    assert "is on vfat" in error["message"] and "ext4" in error["hint"]
    assert fake.launches() == [] and not (tmp_path / "base").exists()


# -- 9-14: the ISO and the boot -------------------------------------------------------------


def test_09_not_an_iso(install: Any, fake: Fake, tmp_path: Path) -> None:
    bogus = tmp_path / "archlinux.iso"
    bogus.write_bytes(b"\0" * 65536)
    error = one_line_error(install("--iso", str(bogus)), ExitCode.ISO)
    assert "cannot read" in error["message"] and "--iso" in error["hint"]
    assert fake.launches() == []


def test_10_an_iso_without_the_archiso_layout(install: Any, fake: Fake, tmp_path: Path) -> None:
    other = make_iso(tmp_path / "debian.iso", label="DEBIAN_12", uuid=None)
    error = one_line_error(install("--iso", str(other)), ExitCode.ISO)
    assert "is not an Arch ISO" in error["message"]
    assert fake.launches() == []


def test_13_the_guest_never_reaches_the_login_prompt(
    install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "silent")
    monkeypatch.setattr(live, "BOOT_TIMEOUT", 2.0)
    error = one_line_error(install(), ExitCode.TIMEOUT)
    assert "archiso login" in error["message"] and "transcript:" in error["hint"]
    assert len(fake.launches()) == 1


# (11 rescue shell, 12 KVM that hangs, 14 kernel panic: test_install.py.)


# -- 15-20: the guest steps -----------------------------------------------------------------


def test_15_the_keyring_is_never_ready(install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_HANG", "pacman-key")
    steps = [dataclasses.replace(step, timeout=2) if step.name == "keyring" else step for step in install_module.STEPS]
    monkeypatch.setattr(install_module, "STEPS", steps)
    run = install()
    error = one_line_error(run, ExitCode.TIMEOUT)
    assert "pacman keyring" in error["message"] and "--timeout-scale" in error["hint"]


def test_15_the_keyring_is_made_with_the_trustdb_checks_off_and_left_on(install: Any, fake: Fake) -> None:
    """The install makes the live keyring itself (pacman-init is masked): populate runs with
    gpg's per-signature trustdb check off, and the line is gone from gpg.conf afterwards."""
    assert install().exit_code == 0
    live = fake.dir / "gnupg"
    assert (fake.dir / "keyring.log").read_text().splitlines() == [
        "populate: 1 skip line(s)",
        f"new master key: {live}/",  # the made one's secret forgotten, the keyring kept (test_keyring.py)
        f"check-trustdb: {live}/",
        "box populate: 1 skip line(s)",
    ]
    assert "no-auto-check-trustdb" not in (fake.dir / "gnupg/gpg.conf").read_text()


@pytest.mark.parametrize("via", ["stream", "9p"])
def test_15_the_boxs_keyring_is_made_so_too_and_left_clean_when_pacstrap_fails(
    install: Any, fake: Fake, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    """archlinux-keyring's post_install populates the box's keyring, which the install made
    before pacstrap (as pacstrap -K would) with the same line; it is gone again even when
    pacstrap fails, and the gpg-agent the populate started is told to end."""
    gpgdir = "/mnt/etc/pacman.d/gnupg"
    monkeypatch.setenv("FAKE_FAIL", "pacstrap-enospc")
    run = install("--install-via", via)
    one_line_error(run, ExitCode.STEP)
    assert run.finished()["pacstrap"] == "failed"
    assert (fake.dir / "keyring.log").read_text().splitlines()[-1] == "box populate: 1 skip line(s)"
    commands = (fake.dir / "commands.log").read_text().splitlines()
    init = commands.index(f"pacman-key --gpgdir {gpgdir} --init ")
    made = next(i for i, line in enumerate(commands) if line.startswith("pacstrap "))
    assert init < made < commands.index(f"gpgconf --homedir {gpgdir} --kill gpg-agent ")
    if via == "9p":  # the box's keyring is on the host: the line is gone from it
        conf = Path(run.events[0]["target"]) / "etc/pacman.d/gnupg/gpg.conf"
        assert "no-greeting" in conf.read_text() and "no-auto-check-trustdb" not in conf.read_text()


@pytest.mark.parametrize(
    ("fault", "args", "hint"),
    [("pacstrap-mirror", (), "could not reach the package mirror"),
     ("", ("--package", "base", "--package", "nosuchpkg"), "no package named nosuchpkg"),
     ("pacstrap-enospc", (), "file system is full"),
     ("pacstrap-corrupt", (), "a cached package did not match its checksum (base-3-1-any.pkg.tar.zst; pacman removed it)")],
    ids=["16-mirror-unreachable", "17-no-such-package", "19-disk-full", "corrupt-cached-package"],
)  # fmt: skip
def test_16_17_19_pacstrap_failures_say_why(
    fault: str, args: tuple[str, ...], hint: str, install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", fault)
    error = one_line_error(install(*args), ExitCode.STEP)
    assert hint in error["hint"]
    assert len(fake.launches()) == 1


def test_18_mkinitcpio_errors_with_a_good_image_are_a_warning(
    install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "mkinitcpio-hwdb")
    run = install()
    assert run.exit_code == 0, run.stderr
    (warning,) = [e["message"] for e in run.events if e["type"] == "note" and e["message"].startswith("mkinitcpio")]
    assert "exited 1" in warning and "file not found: '/etc/udev/hwdb.bin'" in warning


def test_18_mkinitcpio_errors_with_an_image_that_cannot_mount_9p_fail(
    install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "mkinitcpio-no9p")
    error = one_line_error(install(), ExitCode.STEP)
    assert "the image lacks 9p, 9pnet, 9pnet_virtio" in error["hint"]


def test_20_qemu_killed_from_outside(install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_HANG", "pacstrap")

    def kill_qemu_during_pacstrap() -> None:
        deadline = time.monotonic() + 30
        while "pacstrap" not in fake.commands() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(fake.launches()[0]["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_qemu_during_pacstrap)
    killer.start()
    run = install()
    killer.join()
    error = one_line_error(run, ExitCode.BOOT)
    assert "QEMU ended while waiting for the end of: pacstrap" in error["message"]
    assert not staged_secrets(tmp_path / "base")


# -- 21-22: interruption and a second run ---------------------------------------------------


def cli(target: Path, iso: Path, pw: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from provisioner.cli import main; main()", str(target), "--iso", str(iso),
            "--password-file", str(pw), "--accel", "tcg", "--json", *extra]  # fmt: skip


def wait_for(predicate: Any, what: str, process: subprocess.Popen[str], within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert process.poll() is None and time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("phase", ["boot", "pacstrap", "configure"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_21_interrupted_during_a_phase(sig: int, phase: str, fake: Fake, iso: Path, tmp_path: Path, outside: Path) -> None:
    target = tmp_path / "base"
    env = {**os.environ, "FAKE_HANG": {"pacstrap": "pacstrap", "configure": "locale-gen"}.get(phase, "")}
    if phase == "boot":
        env["FAKE_QEMU_MODE"] = "silent"
    marker = {"boot": fake.launches, "pacstrap": lambda: "pacstrap" in fake.commands(),
              "configure": lambda: "locale-gen" in fake.commands()}[phase]  # fmt: skip
    with subprocess.Popen(cli(target, iso, password_file(tmp_path, PASSWORD)), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as run:  # fmt: skip
        wait_for(marker, phase, run)
        run.send_signal(sig)
        stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == ExitCode.INTERRUPTED, stderr
    assert '"exit_code": 130' in stdout.splitlines()[-1] and "hint:" in stderr
    assert all(launch["end"] for launch in fake.launches()), "QEMU outlived the interrupted run"
    assert not staged_secrets(target) and not Workspace.of(target).stage.exists()


def test_22_a_second_run_on_the_same_target_is_refused_while_the_first_runs(
    install: Any, fake: Fake, iso: Path, tmp_path: Path
) -> None:
    target = tmp_path / "base"
    pw = password_file(tmp_path, PASSWORD)
    env = {**os.environ, "FAKE_HANG": "pacstrap"}
    with subprocess.Popen(cli(target, iso, pw), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as first:
        wait_for(lambda: "pacstrap" in fake.commands(), "pacstrap", first)
        second = install("--force", target=target)
        error = one_line_error(second, ExitCode.HOST)
        assert f"another provision-arch (pid {first.pid}) is working on {target}" in error["message"]
        assert len(fake.launches()) == 1, "the second run started a QEMU"
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    # The lock went with the first run: the next one gets the target.
    assert install("--force", target=target).exit_code == 0


# -- 23-25: values, secrets, old state ------------------------------------------------------
# (23, hostile values, is property-tested in tests/unit/test_hostile_values.py.)


def test_24_the_password_is_never_in_argv_logs_events_or_errors(
    install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also on failure: the run fails right after the password step (9p: the tree is in the target)."""
    monkeypatch.setenv("FAKE_FAIL", "umount")
    run = install("--install-via", "9p")
    assert run.exit_code == ExitCode.STEP
    hashed = (tmp_path / "base/etc/shadow").read_text().split(":")[1]
    argv = " ".join(" ".join(launch["argv"]) for launch in fake.launches())
    transcript = Workspace.of(tmp_path / "base").transcript.read_text()
    for text in (argv, fake.commands(), fake.typed(), transcript, run.stdout, run.stderr):
        assert PASSWORD not in text and hashed not in text


def test_24_the_password_is_never_in_a_process_command_line(fake: Fake, iso: Path, tmp_path: Path) -> None:
    """Sample every process's command line while a run goes through all its steps."""
    pw = password_file(tmp_path, PASSWORD)
    seen: set[str] = set()
    with subprocess.Popen(cli(tmp_path / "base", iso, pw), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        while run.poll() is None:
            for proc in Path("/proc").glob("[0-9]*"):
                with contextlib.suppress(OSError):
                    seen.add((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            time.sleep(0.01)
        run.communicate()
    assert run.returncode == 0
    hashed = (tmp_path / "base/etc/shadow").read_text().split(":")[1]
    assert any("chpasswd" in line for line in seen) or any("qemu-system" in line for line in seen)
    assert not [line for line in seen if PASSWORD in line or hashed in line]


def test_25_a_state_dir_an_older_version_left_in_the_target_goes(install: Any, fake: Fake, tmp_path: Path) -> None:
    """Older versions kept their state (and staged hashes) in TARGET/.provision-arch."""
    target = tmp_path / "base"
    state = target / ".provision-arch"
    (state / "run-id").mkdir(parents=True)  # a directory where a file belongs
    (state / "stage").write_text("a file where a directory belongs\n")
    (state / "root.chpasswd").write_text("root:$6$old$left-by-0.1\n")  # where 0.1 staged the hash
    (target / "home").mkdir()
    (target / "home/notes.txt").write_text("mine\n")
    run = install("--force", target=target)
    assert run.exit_code == 0, run.stderr
    assert (target / "home/notes.txt").read_text() == "mine\n", "user data inside the target was lost"
    assert not state.exists() and not staged_secrets(target)
    assert any(e["type"] == "note" and "an older provision-arch" in e["message"] for e in run.events)

"""The whole install against a fake QEMU that plays the archiso console: seconds, not minutes.

These tests look at what a run does to the machine — QEMU processes started and ended,
bytes typed on the console, commands run in the guest, files left in the target — not
only at what it prints.
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

import pytest

from provisioner.errors import ExitCode
from provisioner.install import STEPS
from provisioner.workspace import Workspace
from tests.helpers import password_file, staged_secrets
from tests.orchestration.conftest import PASSWORD, Fake, Run

HOST_STEPS = ["preflight", "read-iso", "stage", "boot"]
# The default install (--install-via stream) runs every step; the 9p path all but "stream".
ALL_STEPS = [*HOST_STEPS, *(step.name for step in STEPS), "poweroff", "unpack", "manifest"]
GUEST_STEPS_9P = [step.name for step in STEPS if step.name != "stream"]
ALL_STEPS_9P = [*HOST_STEPS, *GUEST_STEPS_9P, "poweroff", "manifest"]
NINEP = ("--install-via", "9p")


def shadow_hash(target: Path) -> str:
    line = (target / "etc/shadow").read_text().splitlines()[0]
    return line.split(":")[1]


def assert_clean_end(run: Run, fake: Fake, target: Path) -> None:
    """Whatever happened: QEMU ended, every started step finished, no secret left staged."""
    launches = fake.launches()
    assert launches and all(launch["end"] is not None for launch in launches), launches
    assert sorted(run.steps()) == sorted(run.steps("step-finished")), run.events
    assert run.events[0]["type"] == "start"
    assert not staged_secrets(target), "the staged password hash was left behind"
    assert not Workspace.of(target).stage.exists()
    transcript = Workspace.of(target).transcript
    held = [os.readlink(fd) for fd in Path("/proc/self/fd").iterdir() if fd.is_symlink()]
    assert str(transcript.resolve()) not in held, "the transcript was left open"


@pytest.mark.parametrize(("via", "steps"), [((), ALL_STEPS), (NINEP, ALL_STEPS_9P)], ids=["stream", "9p"])
def test_one_qemu_runs_every_step_in_order(
    via: tuple[str, ...], steps: list[str], install: Any, fake: Fake, tmp_path: Path
) -> None:
    run = install(*via)
    target = tmp_path / "base"
    assert run.exit_code == 0, run.stderr
    assert len(fake.launches()) == 1, fake.launches()
    assert run.steps() == steps
    assert set(run.finished().values()) == {"ok"}
    assert run.events[-1]["type"] == "result"
    assert run.events[-1]["paths"]["target"] == str(target)
    assert_clean_end(run, fake, target)
    # What the guest was asked to do landed in the target.
    assert (target / "boot/vmlinuz-linux").is_file() and (target / "boot/initramfs-linux.img").is_file()
    assert (target / "etc/hostname").read_text() == "archlinux\n"
    assert (target / "etc/locale.gen").read_text().count("en_US.UTF-8 UTF-8") == 2  # commented + ours
    assert (target / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service").is_symlink()


def test_the_password_is_never_typed_passed_or_logged(install: Any, fake: Fake, tmp_path: Path) -> None:
    run = install()
    assert run.exit_code == 0, run.stderr
    target = tmp_path / "base"
    hashed = shadow_hash(target)
    assert hashed.startswith("$6$")
    transcript = Workspace.of(target).transcript.read_text()
    for where, text in {
        "typed on the console": fake.typed(),
        "in a guest command's argv": fake.commands(),
        "in the transcript": transcript,
        "on stdout": run.stdout,
        "on stderr": run.stderr,
    }.items():
        assert PASSWORD not in text, f"the password was {where}"
        assert hashed not in text, f"the password hash was {where}"
    assert "chpasswd -e <" in fake.typed()  # the hash went as a file


def test_a_second_run_with_force_does_not_duplicate_the_locale(install: Any, fake: Fake, tmp_path: Path) -> None:
    assert install().exit_code == 0
    assert install("--force").exit_code == 0
    assert (tmp_path / "base/etc/locale.gen").read_text().count("\nen_US.UTF-8 UTF-8") == 1


# Each guest step, and the injected fault that makes it fail.
FAULTS = {
    "mount": "mount",
    "keyring": "pacman-key",
    "refresh-keyring": "pacman",
    "pacstrap": "pacstrap",
    "configure": "locale-gen",
    "initramfs": "mkinitcpio",
    "password": "chpasswd",
    "unmount": "umount",
}


def test_every_guest_step_has_a_fault() -> None:
    """The 9p path, where each guest step is its own; the stream step's faults are in test_stream.py."""
    assert list(FAULTS) == GUEST_STEPS_9P


@pytest.mark.parametrize(("step", "fault"), FAULTS.items())
def test_a_failing_step_ends_cleanly(
    step: str, fault: str, install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", fault)
    run = install(*NINEP)
    target = tmp_path / "base"
    assert run.exit_code == ExitCode.STEP, run.stderr
    assert run.finished()[step] == "failed"
    assert run.steps() == ALL_STEPS_9P[: ALL_STEPS_9P.index(step) + 1], "a step ran after the failure"
    error = run.events[-1]
    assert error["type"] == "error" and error["exit_code"] == ExitCode.STEP
    assert error["hint"] and "transcript:" in error["hint"]
    assert len(fake.launches()) == 1
    assert_clean_end(run, fake, target)
    assert "error:" in run.stderr and "hint:" in run.stderr


@pytest.mark.parametrize(
    ("mode", "message"), [("panic", "panicked"), ("rescue", "rescue shell"), ("frozen", "Freezing execution")]
)
def test_a_guest_that_does_not_boot(
    mode: str, message: str, install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", mode)
    run = install()
    assert run.exit_code == ExitCode.BOOT, run.stderr
    assert message in run.events[-1]["message"]
    assert run.finished()["boot"] == "failed"
    assert_clean_end(run, fake, tmp_path / "base")


def test_kvm_that_hangs_falls_back_to_tcg_after_ending_the_kvm_qemu(
    install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("provisioner.qemu.kvm_usable", lambda: True)
    monkeypatch.setenv("FAKE_QEMU_MODE", "kvm-hang")
    run = install("--accel", "auto", "--timeout-scale", "0.1")
    assert run.exit_code == 0, run.stderr
    kvm, tcg = fake.launches()
    assert kvm["argv"][kvm["argv"].index("-accel") + 1] == "kvm"
    assert tcg["argv"][tcg["argv"].index("-accel") + 1] == "tcg,thread=single"
    assert kvm["end"] <= tcg["time"], "the TCG QEMU started before the KVM one had ended"
    assert any(e["type"] == "note" and "retrying with TCG" in e["message"] for e in run.events)


def test_kvm_that_hangs_without_fallback_is_a_clear_error(
    install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "kvm-hang")
    run = install("--accel", "kvm", "--timeout-scale", "0.1")
    assert run.exit_code == ExitCode.BOOT, run.stderr
    assert "--accel tcg" in run.events[-1]["hint"]
    assert len(fake.launches()) == 1
    assert_clean_end(run, fake, tmp_path / "base")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_install_leaves_no_qemu_and_no_secret(sig: int, fake: Fake, iso: Path, tmp_path: Path) -> None:
    """The CLI as its own process, interrupted while pacstrap runs."""
    target = tmp_path / "base"
    pw = password_file(tmp_path, PASSWORD)
    env = {**os.environ, "FAKE_HANG": "pacstrap"}
    argv = [sys.executable, "-c", "from provisioner.cli import main; main()", str(target), "--iso", str(iso),
            "--password-file", str(pw), "--accel", "tcg", "--json"]  # fmt: skip
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as cli:
        deadline = time.monotonic() + 60
        while "pacstrap" not in fake.commands():
            assert time.monotonic() < deadline and cli.poll() is None, "the install never reached pacstrap"
            time.sleep(0.1)
        cli.send_signal(sig)
        stdout, stderr = cli.communicate(timeout=60)
    deadline = time.monotonic() + 10  # after SIGKILL, QEMU's end comes by PR_SET_PDEATHSIG
    while any(launch["end"] is None for launch in fake.launches()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(launch["end"] is not None for launch in fake.launches()), "QEMU outlived the interrupted run"
    if sig == signal.SIGKILL:
        assert cli.returncode == -signal.SIGKILL
        return  # nothing in the CLI runs after SIGKILL: what matters is that QEMU ended
    assert cli.returncode == ExitCode.INTERRUPTED, stderr
    last = json.loads(stdout.splitlines()[-1])
    assert last == {**last, "type": "error", "exit_code": ExitCode.INTERRUPTED}
    before = json.loads(stdout.splitlines()[-2])
    assert before == {**before, "type": "step-finished", "step": "pacstrap", "status": "interrupted"}
    assert not staged_secrets(target), "the staged password hash was left behind"

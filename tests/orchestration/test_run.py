"""`provision-arch run` against the fake QEMU, which honours systemd.run= as systemd does
(see tests/fakeqemu/bin/qemu-system-x86_64): one QEMU, the command's output streamed and its
exit status returned, the box's failures as documented exit codes, nothing left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from provisioner.boot import RUN_DIR
from provisioner.cli import app
from provisioner.errors import ExitCode
from provisioner.runbox import RUN_GENERATOR
from tests.orchestration.conftest import Fake, Run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fake binds its console over /dev/console: run as root")


@pytest.fixture
def box(install: Any, tmp_path: Path) -> Path:
    """An installed box (on the fake) with a user dev."""
    config = tmp_path / "box.toml"
    config.write_text('[[users]]\nname = "dev"\n')
    assert install("--config", str(config)).exit_code == 0
    return tmp_path / "base"


@pytest.fixture
def run(box: Path, fake: Fake) -> Any:
    def invoke(*args: str, json_lines: bool = True) -> Run:
        argv = ["run", str(box), "--accel", "tcg", *(["--json"] if json_lines else []), *args]
        result = CliRunner().invoke(app, argv, catch_exceptions=False)
        events = [json.loads(line) for line in result.stdout.splitlines()] if json_lines else []
        return Run(result.exit_code, result.stdout, result.stderr, events)

    return invoke


def output(run: Run) -> str:
    return "".join(e["text"] for e in run.events if e["type"] == "output")


def run_launches(fake: Fake) -> list[dict[str, Any]]:
    return [launch for launch in fake.launches() if "systemd.run=" in " ".join(launch["argv"])]


def assert_clean(fake: Fake, box: Path) -> None:
    assert all(launch["end"] for launch in fake.launches()), "QEMU outlived the run"
    assert not (box / ".provision-arch-run").exists(), "the run's script was left in the box"


def test_output_is_streamed_and_status_zero(run: Any, fake: Fake, box: Path) -> None:
    result = run("--", "sh", "-c", "echo out; echo err >&2; printf partial")
    assert result.exit_code == 0, result.stderr
    assert output(result) == "out\nerr\npartial"
    assert result.steps() == ["boot", "command", "poweroff"] and set(result.finished().values()) == {"ok"}
    last = result.events[-1]
    assert last["type"] == "result" and last["exit_status"] == 0 and last["paths"]["target"] == str(box)
    (launch,) = run_launches(fake)
    append = launch["argv"][launch["argv"].index("-append") + 1].split()
    (command,) = [word.removeprefix("systemd.run=") for word in append if word.startswith("systemd.run=")]
    assert re.fullmatch(rf"/{RUN_DIR}/[0-9a-f]{{16}}/command", command), command
    assert {"systemd.run_success_action=poweroff", "systemd.run_failure_action=poweroff"} <= set(append)
    assert "-no-reboot" in launch["argv"] and "-mon" not in launch["argv"]
    assert not any(arg.startswith("hostfwd") for arg in launch["argv"]), "no port is opened for a run"
    assert_clean(fake, box)


@pytest.mark.parametrize(("argv", "status"), [(["true"], 0), (["false"], 1), (["sh", "-c", "exit 3"], 3),
                                              (["sh", "-c", "exit 255"], 255)])  # fmt: skip
def test_the_exit_status_is_the_commands(argv: list[str], status: int, run: Any, fake: Fake, box: Path) -> None:
    result = run("--", *argv)
    assert result.exit_code == status, result.stderr
    assert result.events[-1]["type"] == "result" and result.events[-1]["exit_status"] == status
    assert_clean(fake, box)


def test_arguments_arrive_as_given(run: Any) -> None:
    result = run("--", "printf", "%s|", "a b", "it's", "$HOME", "*", "", "-n")
    assert output(result) == "a b|it's|$HOME|*||-n|"


def test_as_a_user_from_their_home(run: Any, fake: Fake, box: Path) -> None:
    result = run("--user", "dev", "--", "sh", "-c", "pwd")
    assert result.exit_code == 0, result.stderr
    assert output(result) == f"{box}/home/dev\n"  # the fake's view of the box's /home/dev
    assert "runuser -u dev -- sh -c" in fake.commands()


def test_the_machine_type_reaches_qemu(run: Any, fake: Fake) -> None:
    assert run("--machine", "q35", "--", "true").exit_code == 0
    (launch,) = run_launches(fake)
    assert launch["argv"][launch["argv"].index("-machine") + 1].startswith("q35,")


def test_without_json_stdout_is_the_commands_output(run: Any) -> None:
    result = run("--", "sh", "-c", "echo hello; echo world", json_lines=False)
    assert result.exit_code == 0 and result.stdout == "hello\nworld\n"
    assert "exited with status 0" in result.stderr


@pytest.mark.parametrize(
    ("args", "prepare", "message"),
    [(["--user", "nobody-here"], None, "there is no user 'nobody-here'"),
     (["--user", "Bad;user"], None, "invalid user name 'Bad;user'"),
     ([], RUN_GENERATOR, "systemd-run-generator: run needs systemd"),
     ([], "boot/vmlinuz-linux", "is not an installed system")],
    ids=["no-such-user", "hostile-user", "no-systemd", "not-installed"],
)  # fmt: skip
def test_a_box_that_cannot_run_it_is_a_usage_error_before_any_qemu(
    args: list[str], prepare: str | None, message: str, run: Any, fake: Fake, box: Path
) -> None:
    if prepare:
        (box / prepare).unlink()
    launched = len(fake.launches())
    result = run(*args, "--", "true")
    assert result.exit_code == ExitCode.USAGE, result.stderr
    assert message in result.events[-1]["message"]
    assert len(fake.launches()) == launched, "a QEMU was started"


def test_a_panic_is_a_boot_failure(run: Any, fake: Fake, box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "panic")
    result = run("--", "true")
    assert result.exit_code == ExitCode.BOOT and "panicked" in result.events[-1]["message"]
    assert result.finished()["boot"] == "failed"
    assert_clean(fake, box)


def test_a_frozen_init_ends_the_run_at_once(run: Any, fake: Fake, box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd 255+ without systemd-executor freezes as PID 1: no waiting out the boot timeout."""
    monkeypatch.setenv("FAKE_QEMU_MODE", "frozen")
    started = time.monotonic()
    result = run("--", "true")
    assert result.exit_code == ExitCode.BOOT and "Freezing execution" in result.events[-1]["message"]
    assert "Failed to allocate manager object" in result.events[-1]["details"], "the lines before it are the evidence"
    assert time.monotonic() - started < 60
    assert_clean(fake, box)


def test_a_box_that_ends_before_the_command_is_a_boot_failure(run: Any, fake: Fake, box: Path) -> None:
    result = run("--", "sh", "-c", 'echo going; kill "$FAKE_QEMU_PID"; sleep 30')
    assert result.exit_code == ExitCode.BOOT, result.stderr
    assert "ended before the command did" in result.events[-1]["message"]
    assert output(result) == "going\n"
    assert_clean(fake, box)


def test_a_command_that_outlives_its_timeout_stops_the_box(run: Any, fake: Fake, box: Path) -> None:
    result = run("--timeout", "1", "--", "sh", "-c", "echo started; sleep 60")
    assert result.exit_code == ExitCode.TIMEOUT, result.stderr
    assert result.finished()["command"] == "failed" and "--timeout" in result.events[-1]["hint"]
    assert_clean(fake, box)


def test_kvm_that_hangs_falls_back_to_tcg(run: Any, fake: Fake, box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("provisioner.qemu.kvm_usable", lambda: True)
    monkeypatch.setattr("provisioner.live.KVM_FIRST_WORDS", 1.0)
    monkeypatch.setenv("FAKE_QEMU_MODE", "kvm-hang")
    result = run("--accel", "auto", "--", "true")
    assert result.exit_code == 0, result.stderr
    kvm, tcg = run_launches(fake)
    assert "kvm" in kvm["argv"] and "tcg,thread=single" in tcg["argv"] and kvm["end"] <= tcg["time"]
    assert_clean(fake, box)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_run_stops_the_box_and_leaves_nothing(sig: int, box: Path, fake: Fake) -> None:
    """The CLI as its own process, interrupted while the command runs."""
    argv = [sys.executable, "-c", "from provisioner.cli import main; main()", "run", str(box), "--accel", "tcg", "--json",
            "--", "sh", "-c", "echo started; sleep 60"]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as cli:
        assert cli.stdout is not None
        for line in cli.stdout:
            if json.loads(line) == {"type": "output", "text": "started\n"}:
                break
        cli.send_signal(sig)
        rest, stderr = cli.communicate(timeout=60)
    assert cli.returncode == ExitCode.INTERRUPTED, stderr
    last = json.loads(rest.splitlines()[-1])
    assert last["type"] == "error" and last["exit_code"] == ExitCode.INTERRUPTED
    assert_clean(fake, box)


def cli_process(box: Path, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", "from provisioner.cli import main; main()", "run", str(box), "--accel", "tcg", "--json",
            *args]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_throwaway_runs_share_the_box_and_leave_its_tree_alone(box: Path, fake: Fake) -> None:
    """Two --ephemeral runs at once hold the lock together; a run that writes the tree is
    refused meanwhile; each had its own scratch disk and init, gone afterwards."""
    workspace = box.parent / "state-home"
    before = sorted(str(path.relative_to(box)) for path in box.rglob("*"))
    runs = [cli_process(box, "--ephemeral", "--", "sh", "-c", f"echo {name}; sleep 4") for name in ("one", "two")]
    deadline = time.monotonic() + 60
    while len(run_launches(fake)) < 2:
        assert time.monotonic() < deadline, "the two throwaway runs did not boot together"
        time.sleep(0.1)
    blocked = CliRunner().invoke(app, ["run", str(box), "--accel", "tcg", "--", "true"], catch_exceptions=False)
    assert blocked.exit_code == ExitCode.HOST and "throwaway boots (--ephemeral) or exports are reading" in blocked.output
    disks = list(workspace.rglob("throwaway/*/disk.img"))
    assert len(disks) == 2 and all(disk.stat().st_mode & 0o777 == 0o600 for disk in disks)
    finished = [(process, *process.communicate(timeout=60)) for process in runs]
    for process, stdout, stderr in finished:
        assert process.returncode == 0, stderr
        last = json.loads(stdout.splitlines()[-1])
        assert last["type"] == "result" and last["paths"]["transcript"].endswith("/console.log")
        assert Path(last["paths"]["transcript"]).is_file()
    for launch in run_launches(fake):
        argv = launch["argv"]
        append = argv[argv.index("-append") + 1].split()
        (init,) = [word.removeprefix("init=") for word in append if word.startswith("init=")]
        assert re.fullmatch(rf"/{RUN_DIR}/[0-9a-f]{{16}}/init", init) and "ro" in append and "rw" not in append
        fsdevs = [argv[i + 1] for i, word in enumerate(argv) if word == "-fsdev"]
        assert any("readonly=on,id=fsdev-fsRoot," in fsdev for fsdev in fsdevs), fsdevs
        assert any(word.endswith("serial=pa-ephemeral") for word in argv)
    assert not list(workspace.rglob("disk.img")), "a scratch disk outlived its run"
    assert sorted(str(path.relative_to(box)) for path in box.rglob("*")) == before, "the tree changed"
    assert_clean(fake, box)


def test_an_ephemeral_boot_on_virtiofs_or_printed_is_refused(box: Path) -> None:
    refused = (["run", str(box), "--ephemeral", "--fs", "virtiofs", "--", "true"], ["boot", str(box), "--ephemeral", "--print"])
    for argv in refused:
        result = CliRunner().invoke(app, argv, catch_exceptions=False)
        assert result.exit_code == ExitCode.USAGE and "--ephemeral" in result.output, result.output

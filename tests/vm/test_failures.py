"""Failures on the real stand-in under QEMU end in clear errors, not silent timeouts."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner.config import InstallVia, build
from provisioner.console import Transcript
from provisioner.errors import BootFailed, ExitCode
from provisioner.events import Bus
from provisioner.iso import read_boot_files
from provisioner.live import live_console
from provisioner.qemu import cpu_has_virtualisation
from provisioner.session import Session
from tests.helpers import staged_secrets

pytestmark = pytest.mark.vm


def test_wrong_uuid_ends_at_the_rescue_shell_with_a_clear_error(standin_iso: Path, tmp_path: Path) -> None:
    """The archiso hook cannot find its medium: the driver names the rescue shell."""
    # 9p: no stream devices, which only a staged session has (this test starts no install).
    cfg = build({"target": tmp_path / "base", "iso": standin_iso, "accel": "tcg", "install_via": InstallVia.NINEP})
    cfg.target.mkdir()
    boot = read_boot_files(standin_iso, tmp_path / "cache")
    wrong = dataclasses.replace(boot, uuid="1999-01-01-00-00-00-00")
    transcript = Transcript(tmp_path / "console.log")
    session = Session.create(dataclasses.replace(cfg, password_hash="$6$x$unused"))
    session.stage()  # QEMU shares the stage read-only: it must exist
    started = time.monotonic()
    with (
        pytest.raises(BootFailed, match=r"rescue shell \[rootfs ~\]#") as caught,
        live_console(session, standin_iso, wrong, transcript, Bus()),
    ):
        pass
    transcript.close()
    session.unstage()
    elapsed = time.monotonic() - started
    print(f"wrong UUID reported after {elapsed:.1f} s")
    assert "archisosearchuuid=1999-01-01-00-00-00-00" not in caught.value.message
    assert "did not find its own boot medium" in caught.value.message
    assert "[rootfs ~]#" in (tmp_path / "console.log").read_text(errors="replace")


def qemu_processes_for(target: Path) -> list[int]:
    """PIDs of QEMU processes whose command line names ``target`` (a directory above the box: a
    stream install shares only the box's workspace with QEMU, not the box)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"qemu-system-x86_64") and any(str(target).encode() in arg for arg in cmdline):
            pids.append(int(proc.name))
    return pids


# SIGINT and the staged files are covered against the fake QEMU (tests/orchestration); here
# the point is that a real QEMU ends, by our shutdown and by PR_SET_PDEATHSIG.
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_run_leaves_no_qemu_behind(standin_iso: Path, tmp_path: Path, signum: signal.Signals) -> None:
    target = tmp_path / "base"
    password = tmp_path / "pw"
    password.write_text("pw\n")
    argv = [sys.executable, "-m", "provisioner", str(target), "--iso", str(standin_iso), "--password-file", str(password)]
    child = subprocess.Popen([*argv, "--accel", "tcg"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not qemu_processes_for(tmp_path):
        assert child.poll() is None and time.monotonic() < deadline, "QEMU never started"
        time.sleep(0.2)
    time.sleep(3)  # let the guest get going
    child.send_signal(signum)
    output, _ = child.communicate(timeout=60)
    if signum != signal.SIGKILL:
        assert child.returncode == 130, output
        assert "interrupted; QEMU was stopped" in output
        assert not staged_secrets(target), "the staged hash must not outlive the run"
    deadline = time.monotonic() + 30  # after SIGKILL, QEMU learns of it through PR_SET_PDEATHSIG
    while qemu_processes_for(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert qemu_processes_for(tmp_path) == []


@pytest.mark.skipif(not Path("/dev/kvm").exists() or cpu_has_virtualisation(), reason="needs a host where KVM guests hang")
def test_kvm_that_hangs_is_a_clear_error_naming_tcg(standin_iso: Path, tmp_path: Path) -> None:
    """/dev/kvm exists but the CPU offers no VT-x/AMD-V to this VM: the guest hangs after firmware."""
    password = tmp_path / "pw"
    password.write_text("pw\n")
    argv = [
        sys.executable,
        "-m",
        "provisioner",
        str(tmp_path / "base"),
        "--iso",
        str(standin_iso),
        "--password-file",
        str(password),
    ]
    result = subprocess.run([*argv, "--accel", "kvm"], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == ExitCode.BOOT, result.stderr
    assert "did not start under KVM" in result.stderr
    assert "--accel tcg" in result.stderr
    assert qemu_processes_for(tmp_path / "base") == []

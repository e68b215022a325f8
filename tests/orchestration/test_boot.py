"""`provision-arch boot --fs virtiofs` against a fake virtiofsd and a fake QEMU: whatever
happens, virtiofsd ends with QEMU and is reaped, and its failures are reported.

The fake virtiofsd answers ``--help`` like QEMU's C daemon, records its pid, accepts one
connection on the socket it was handed (``--fd``) and exits when the peer hangs up, as the
real one does when QEMU ends. The fake QEMU connects to the socket named by ``-chardev`` and
exits. Both run as real processes; the unprivileged path (a user namespace) is covered by
tests/vm/test_virtiofs.py.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provisioner import virtiofs
from provisioner.boot import boot_command
from provisioner.cli import app
from provisioner.config import Accel, BootConfig, RootFs
from provisioner.errors import ExitCode, HostError
from provisioner.workspace import Workspace
from tests.helpers import installed_box
from tests.orchestration.conftest import _alive, _gone

VIRTIOFS = BootConfig(memory=512, cpus=1, accel=Accel.TCG, fs=RootFs.VIRTIOFS)
FAKE_VIRTIOFSD = f"""#!{sys.executable}
import os, socket, sys, time
if "--help" in sys.argv:
    print("    -o sandbox=namespace|chroot\\n    -o source=PATH             shared directory tree")
    sys.exit(0)
record = os.environ["FAKE_VIRTIOFSD_DIR"]
with open(os.path.join(record, "pids"), "a") as out:
    out.write(f"{{os.getpid()}}\\n")
with open(os.path.join(record, "argv"), "w") as out:
    out.write("\\0".join(sys.argv))
mode = os.environ.get("FAKE_VIRTIOFSD_MODE", "")
if mode == "fail":
    sys.exit("fuse: unknown option(s): `-o bogus'")
fd = int(next(arg for arg in sys.argv if arg.startswith("--fd=")).removeprefix("--fd="))
listener = socket.socket(fileno=fd)
if mode == "deaf":  # never serves: only a signal ends it
    while True:
        time.sleep(3600)
connection, _ = listener.accept()
while connection.recv(4096):
    pass
"""
FAKE_QEMU = f"""#!{sys.executable}
import socket, sys
if "-device" in sys.argv and sys.argv[sys.argv.index("-device") + 1] == "help":
    print('name "virtio-9p-pci"\\nname "vhost-user-fs-pci"')
    sys.exit(0)
chardev = next(value for value in sys.argv if value.startswith("socket,id=vfs-fsRoot,path="))
connection = socket.socket(socket.AF_UNIX)
connection.connect(chardev.removeprefix("socket,id=vfs-fsRoot,path="))
connection.sendall(b"hello")
sys.exit(3)
"""


def script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def daemon_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fakes on PATH; the directory where the fake virtiofsd records itself."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    script(bin_dir / "virtiofsd", FAKE_VIRTIOFSD)
    script(bin_dir / "qemu-system-x86_64", FAKE_QEMU)
    monkeypatch.setattr(virtiofs, "CANDIDATES", ())
    monkeypatch.setattr(virtiofs, "GRACE", 1.0)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VIRTIOFSD_DIR", str(record))
    yield record
    for pid in daemon_pids(record):
        assert _gone(pid), f"fake virtiofsd {pid} outlived the boot"


def daemon_pids(record: Path) -> list[int]:
    path = record / "pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def wait_for_daemon(record: Path) -> int:
    deadline = time.monotonic() + 10
    while not daemon_pids(record):
        assert time.monotonic() < deadline, "the fake virtiofsd never started"
        time.sleep(0.02)
    return daemon_pids(record)[0]


def socket_of(argv: list[str]) -> str:
    return next(v for v in argv if v.startswith("socket,id=vfs-fsRoot,path=")).removeprefix("socket,id=vfs-fsRoot,path=")


def test_virtiofsd_ends_by_itself_when_qemu_hangs_up(daemon_dir: Path, tmp_path: Path) -> None:
    with boot_command(installed_box(tmp_path), VIRTIOFS, as_root=True) as argv:
        path = socket_of(argv)
        with socket.socket(socket.AF_UNIX) as qemu:  # QEMU may connect before the daemon runs
            qemu.connect(path)
            pid = wait_for_daemon(daemon_dir)
            assert _alive(pid)
        started = time.monotonic()
    assert time.monotonic() - started < virtiofs.GRACE, "the daemon was terminated, not left to end by itself"
    assert not _alive(pid)
    assert not Path(path).parent.exists(), "the socket's directory outlived the boot"
    argv_seen = (daemon_dir / "argv").read_text().split("\0")
    assert f"source={tmp_path / 'base'},cache=auto,xattr" in argv_seen and "sandbox=chroot" in argv_seen


def test_virtiofsd_is_terminated_when_the_boot_fails(daemon_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VIRTIOFSD_MODE", "deaf")
    with pytest.raises(KeyboardInterrupt), boot_command(installed_box(tmp_path), VIRTIOFS, as_root=True):
        pid = wait_for_daemon(daemon_dir)
        raise KeyboardInterrupt  # e.g. Ctrl-C while QEMU runs
    assert not _alive(pid)


def test_a_failing_daemon_is_reported_and_qemu_refused(daemon_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VIRTIOFSD_MODE", "fail")
    with pytest.raises(HostError) as error, boot_command(installed_box(tmp_path), VIRTIOFS, as_root=True) as argv:
        pid = wait_for_daemon(daemon_dir)
        assert _gone(pid)
        # Our copy of the listener is closed: QEMU fails at once instead of waiting forever.
        with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as qemu:
            qemu.connect(socket_of(argv))
    assert "virtiofsd exited with status 1: fuse: unknown option(s)" in error.value.message


def test_the_cli_does_not_boot_a_target_another_run_holds(tmp_path: Path) -> None:
    base = installed_box(tmp_path)
    with Workspace.of(base).locked():  # as an install or a run holds it
        result = CliRunner().invoke(app, ["boot", str(base), "--accel", "tcg"], catch_exceptions=False)
    assert result.exit_code == ExitCode.HOST, result.output
    assert f"another provision-arch (pid {os.getpid()}) is working on {base}" in result.output


def test_the_cli_boots_on_virtiofs_and_leaves_nothing(daemon_dir: Path, tmp_path: Path) -> None:
    base = installed_box(tmp_path)
    if os.geteuid() != 0:
        pytest.skip("unprivileged, the CLI would run the fakes in a user namespace (tests/vm covers that)")
    result = CliRunner().invoke(app, ["boot", str(base), "--fs", "virtiofs", "--accel", "tcg"], catch_exceptions=False)
    assert result.exit_code == 3, result.output  # the fake QEMU's status
    (pid,) = daemon_pids(daemon_dir)
    assert not _alive(pid)


def test_a_throwaway_boot_has_its_layer_only_while_it_runs(tmp_path: Path) -> None:
    """boot --ephemeral: the root read-only, the init in the tree and the disk in the
    workspace while the boot runs, and neither after it (nor after a failed one)."""
    base = installed_box(tmp_path)
    before = sorted(path.name for path in base.iterdir())
    settings = BootConfig(memory=512, cpus=1, accel=Accel.TCG, ephemeral=True)
    for failing in (False, True):
        with pytest.raises(KeyboardInterrupt) if failing else nullcontext(), boot_command(base, settings, as_root=True) as argv:
            append = argv[argv.index("-append") + 1].split()
            (init,) = [word.removeprefix("init=") for word in append if word.startswith("init=")]
            assert (base / init.lstrip("/")).read_text().startswith("#!/bin/sh\n") and "ro" in append
            (disk,) = Workspace.of(base).root.glob("throwaway/*/disk.img")
            assert f"file={disk},if=none,id=throwaway,format=raw,discard=unmap" in argv
            assert any(word.startswith("local,") and "readonly=on,id=fsdev-fsRoot," in word for word in argv)
            if failing:
                raise KeyboardInterrupt  # Ctrl-C while QEMU runs
        assert sorted(path.name for path in base.iterdir()) == before, "the boot's init stayed in the tree"
        assert not list(Workspace.of(base).root.glob("throwaway/*/disk.img")), "the scratch disk stayed"

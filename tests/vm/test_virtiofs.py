"""`provision-arch boot --fs virtiofs`, as an unprivileged user, on a box the stand-in installed.

One install per module (the small package set, as that user, pinned to a day of the test
mirror); each test boots it. The boot
must run virtiofsd in QEMU's user namespace (so guest ids land in the user's subuid range,
as over 9p), and virtiofsd must end with QEMU however the boot ends: the guest powers off,
QEMU is killed from outside, or provision-arch itself is killed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from tests.standin.archive import DAY2
from tests.standin.mirror import Mirror
from tests.vm.unprivileged import E2EUser, as_user, box_processes, named

pytestmark = pytest.mark.vm

PASSWORD = "vfs-Pass-w0rd"  # the throwaway test box's root password
HOSTNAME = "vfs-box"
EXTRA = "vim"  # installed with pacman in the box booted over virtiofs


@pytest.fixture(scope="module")
def base(user: E2EUser, cli: Path, workdir: Path, standin_iso: Path, mirror: Mirror) -> Path:
    password_file = workdir / "root-password"
    password_file.write_text(PASSWORD + "\n")
    os.chown(password_file, user.uid, user.gid)
    password_file.chmod(0o600)
    target = workdir / "base"
    argv = [str(cli), str(target), "--iso", str(standin_iso), "--password-file", str(password_file),
            "--hostname", HOSTNAME, "--packages", "base linux mkinitcpio", "--accel", "tcg",
            "--archive-url", mirror.guest_url, "--snapshot", DAY2.date.isoformat()]  # fmt: skip
    result = subprocess.run(as_user(user, workdir, argv), capture_output=True, text=True, timeout=2400, check=False)
    assert result.returncode == 0, f"install: exit {result.returncode}\n{result.stderr[-4000:]}"
    return target


def wait_for(condition: str, probe: Callable[[], object], timeout: float) -> None:
    """Poll ``probe`` until it is true; fail naming ``condition``."""
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {condition}"
        time.sleep(0.2)


@pytest.fixture
def booting(user: E2EUser, cli: Path, workdir: Path, base: Path) -> Iterator[pexpect.spawn[str]]:
    """`provision-arch boot --fs virtiofs` as the user, its console a pexpect child; afterwards
    nothing of that boot may be left running."""
    argv = as_user(user, workdir, [str(cli), "boot", str(base), "--fs", "virtiofs", "--accel", "tcg"])
    child = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", codec_errors="replace", timeout=300)
    try:
        yield child
    finally:
        child.close(force=True)
        # The CLI ended (or was killed): QEMU, virtiofsd and the holder go with it.
        wait_for(f"no process of the boot left: {box_processes(user, base)}", lambda: not box_processes(user, base), 30)


def running(user: E2EUser, base: Path) -> dict[int, str]:
    """Wait until QEMU and virtiofsd both run; the boot's processes."""
    def both() -> bool:
        processes = box_processes(user, base)
        return bool(named(processes, "virtiofsd") and named(processes, "qemu-system-x86_64"))

    wait_for("QEMU and virtiofsd running", both, 60)
    return box_processes(user, base)


def test_boot_on_virtiofs_and_log_in(booting: pexpect.spawn[str], user: E2EUser, base: Path) -> None:
    processes = running(user, base)
    (daemon,), (qemu,) = named(processes, "virtiofsd"), named(processes, "qemu-system-x86_64")
    # One user namespace for both, not ours: the same mapping reaches the files either way.
    namespaces = {os.readlink(f"/proc/{pid}/ns/user") for pid in (daemon, qemu)}
    assert len(namespaces) == 1 and os.readlink("/proc/self/ns/user") not in namespaces

    child = booting
    # A loaded machine (a bench beside the tests) has taken 300 s to reach graphical.target.
    child.expect(f"{HOSTNAME} login: ", timeout=600)
    child.send("root\r")
    child.expect("Password: ")
    child.send(PASSWORD + "\r")
    child.expect("# ")
    # Read now, not as soon as virtiofsd runs: it raises its limit after parsing its options.
    limits = Path(f"/proc/{daemon}/limits").read_text()
    hard = int(re.search(r"Max open files\s+\d+\s+(\d+)", limits)[1])  # type: ignore[index]
    assert re.search(rf"Max open files\s+{hard}\s+{hard}", limits), "virtiofsd was not given the hard limit"
    child.send("echo ROOT=$(grep -c '^fsRoot / virtiofs ' /proc/mounts)\r")
    child.expect(r"ROOT=(\d+)\r*\n")
    assert isinstance(child.match, re.Match) and child.match[1] == "1"
    # A file the guest gives uid 1000 must land at subuid base + 999 on the host, as over 9p.
    child.send("touch /root/vfs-uid1000 && chown 1000:1000 /root/vfs-uid1000 && echo CHOWN-$((40+2))\r")
    child.expect("CHOWN-42")
    # pacman 7 downloads as alpm in its Landlock sandbox, which the box keeps on (docs/pacman7.md).
    child.send(f"pacman -Sy --noconfirm {EXTRA} >/tmp/pacman.log 2>&1; echo PACMAN-$?-$(pacman -Qq {EXTRA})\r")
    child.expect(r"PACMAN-(\d+)-(\S*)\r*\n", timeout=600)  # to the line's end: output comes in pieces
    assert isinstance(child.match, re.Match) and child.match[1] == "0" and child.match[2] == EXTRA, child.before
    child.send("poweroff\r")
    child.expect(pexpect.EOF, timeout=120)
    child.close()
    assert child.exitstatus == 0
    stat = (base / "root/vfs-uid1000").stat()
    assert (stat.st_uid, stat.st_gid) == (user.subuid + 999, user.subgid + 999)


def test_qemu_killed_from_outside_ends_virtiofsd(booting: pexpect.spawn[str], user: E2EUser, base: Path) -> None:
    (qemu,) = named(running(user, base), "qemu-system-x86_64")
    os.kill(qemu, signal.SIGKILL)
    booting.expect(pexpect.EOF, timeout=60)
    wait_for("virtiofsd and the holder gone", lambda: not box_processes(user, base), 30)


def test_provision_arch_killed_takes_qemu_and_virtiofsd_along(booting: pexpect.spawn[str], user: E2EUser, base: Path) -> None:
    (daemon,) = named(running(user, base), "virtiofsd")
    cli = int(Path(f"/proc/{daemon}/stat").read_text().rsplit(")", 1)[1].split()[1])  # virtiofsd's parent
    assert "provision-arch" in Path(f"/proc/{cli}/cmdline").read_text()
    os.kill(cli, signal.SIGKILL)
    # No `finally` runs in a killed process: PR_SET_PDEATHSIG ends QEMU, virtiofsd and the holder.
    wait_for("QEMU, virtiofsd and the holder gone", lambda: not box_processes(user, base), 30)

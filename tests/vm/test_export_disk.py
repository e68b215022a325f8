"""`provision-arch export --format raw|qcow2`: the image boots under UEFI firmware on its own.

One small box per module (base linux mkinitcpio from the stand-in ISO's repository), installed
and exported as the unprivileged e2e user. The raw image then boots under OVMF on QEMU's q35
machine with TCG: no -kernel, no 9p share, no provision-arch, only the firmware, the disk
(virtio) and a NIC. The firmware starts systemd-boot from the ESP's removable-media path, which
starts the box's kernel with its initramfs, which finds the root by its PARTUUID; the test
logs in on the serial console with the box's password and checks the root (ext4 from the
disk), /boot (the ESP, vfat), a new machine id and the NIC's DHCP address. The qcow2 image is
checked by `qemu-img check` and booted from a SATA disk (q35's AHCI), the other kind of disk
the initramfs must find its root on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

from tests.helpers import report
from tests.vm.unprivileged import TIMES, E2EUser, as_user

pytestmark = pytest.mark.vm

PASSWORD = "disk-Pass-w0rd"  # the throwaway test box's root password
HOSTNAME = "disk-box"
OVMF = Path("/usr/share/OVMF")
# Debian 13 ships only the 4 MiB builds; Debian 12 both.
FIRMWARE = (("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"), ("OVMF_CODE.fd", "OVMF_VARS.fd"))
# Console lines that mean the boot went wrong: the firmware found nothing to boot (its shell),
# the initramfs could not find or mount the root, systemd gave up, the kernel died.
FAILURES = [
    r"Kernel panic",
    r"Shell> ",
    r"ERROR: Unable to find root device",
    r"ERROR: Failed to mount",
    r"You are now being dropped into an emergency shell",
    r"You are in emergency mode",
    r"Give root password for maintenance",
    r"\[rootfs [^\]]*\]#",
]
BOOT_TIMEOUT = 900  # seconds to the login prompt: OVMF, systemd-boot and a kernel under TCG
LOGS = Path(tempfile.gettempdir()) / "provision-arch-export-disk"  # the boots' console transcripts


@dataclass(frozen=True)
class Box:
    user: E2EUser
    cli: Path
    workdir: Path
    base: Path


def firmware() -> tuple[Path, Path]:
    for code, variables in FIRMWARE:
        if (OVMF / code).is_file() and (OVMF / variables).is_file():
            return OVMF / code, OVMF / variables
    pytest.skip("no OVMF firmware: sudo apt-get install ovmf")


@pytest.fixture(scope="module")
def box(user: E2EUser, cli: Path, workdir: Path, standin_iso: Path) -> Box:
    password_file = workdir / "root-password"
    password_file.write_text(PASSWORD + "\n")
    os.chown(password_file, user.uid, user.gid)
    password_file.chmod(0o600)
    base = workdir / "base"
    argv = [str(cli), str(base), "--iso", str(standin_iso), "--password-file", str(password_file),
            "--hostname", HOSTNAME, "--packages", "base linux mkinitcpio", "--accel", "tcg"]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(as_user(user, workdir, argv), capture_output=True, text=True, timeout=2400, check=False)
    TIMES["disk: install base linux mkinitcpio"] = time.monotonic() - started
    assert result.returncode == 0, f"install: exit {result.returncode}\n{result.stderr[-4000:]}"
    return Box(user, cli, workdir, base)


def export(box: Box, fmt: str) -> tuple[Path, dict[str, object]]:
    """`provision-arch export` as the user; the image and the result event."""
    output = box.workdir / f"disk.{fmt}"
    argv = [str(box.cli), "export", str(box.base), "--format", fmt, "--output", str(output), "--json"]
    started = time.monotonic()
    result = subprocess.run(as_user(box.user, box.workdir, argv), capture_output=True, text=True, timeout=3600, check=False)
    TIMES[f"disk: export --format {fmt}"] = time.monotonic() - started
    print(result.stderr[-3000:])
    assert result.returncode == 0, f"export {fmt}: exit {result.returncode}\n{result.stderr[-4000:]}"
    event = json.loads(result.stdout.splitlines()[-1])
    assert event["type"] == "result" and event["status"] == "ok", event
    stat = output.stat()
    assert (stat.st_uid, stat.st_gid) == (box.user.uid, box.user.gid)
    TIMES[f"disk: {fmt} image, MiB apparent"] = stat.st_size / 2**20
    TIMES[f"disk: {fmt} image, MiB on the host's disk"] = stat.st_blocks * 512 / 2**20
    return output, event


@pytest.fixture(scope="module")
def raw(box: Box) -> Path:
    return export(box, "raw")[0]


@pytest.fixture(scope="module")
def qcow2(box: Box) -> Path:
    return export(box, "qcow2")[0]


def box_machine_id(box: Box) -> str:
    return (box.base / "etc/machine-id").read_text().strip()


class Console:
    """QEMU booting a disk under OVMF, its serial console driven through pexpect."""

    def __init__(self, box: Box, image: Path, disk: list[str], name: str) -> None:
        code, variables = firmware()
        own_vars = box.workdir / f"{name}.vars.fd"
        shutil.copyfile(variables, own_vars)
        os.chown(own_vars, box.user.uid, box.user.gid)
        # Outside the work directory, which the fixture removes: the transcript outlives a failure.
        self.log = LOGS / f"{name}-console.log"
        LOGS.mkdir(parents=True, exist_ok=True)
        # One vCPU: with two, multi-threaded TCG once ran a CPU into a breakpoint the other was
        # patching out (a kernel "Oops: int3" in sched_clock_cpu, 2.7 s into the boot, before
        # any of the image's own code), a TCG race, not something of the image's.
        qemu = [
            "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={own_vars}",
            *disk,
            "-nic", "user,model=virtio-net-pci",
            "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        ]  # fmt: skip
        argv = as_user(box.user, box.workdir, qemu)
        self.child = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", codec_errors="replace", timeout=BOOT_TIMEOUT)
        self.child.logfile_read = self.log.open("w")

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        index = self.child.expect([pattern, *FAILURES, pexpect.EOF, pexpect.TIMEOUT], timeout=timeout)
        if index != 0:
            ended = "QEMU ended" if index == len(FAILURES) + 1 else "timeout"
            seen = self.child.after if isinstance(self.child.after, str) else ended
            raise AssertionError(f"waiting for {pattern!r}: {seen}; console in {self.log}")
        match = self.child.match
        assert isinstance(match, re.Match)
        return match

    def login(self) -> None:
        self.expect(f"{HOSTNAME} login: ", BOOT_TIMEOUT)
        self.child.send("root\r")
        self.expect("Password: ", 60)
        self.child.send(PASSWORD + "\r")
        self.expect(r"# ", 120)

    def run(self, command: str, timeout: float = 120) -> str:
        """``command``'s output, between markers the echoed command line cannot contain."""
        self.child.send(f"echo BEGIN-$((20+1)); {command}; echo END-$((40+2))\r")
        self.expect(r"BEGIN-21\r*\n", timeout)
        self.expect(r"END-42\r*\n", timeout)
        return str(self.child.before).replace("\r", "")

    def poweroff(self) -> None:
        self.child.send("poweroff\r")
        self.child.expect(pexpect.EOF, timeout=180)

    def close(self) -> None:
        self.child.close(force=True)


def boot_and_check(box: Box, image: Path, disk: list[str], name: str, device: str) -> None:
    started = time.monotonic()
    console = Console(box, image, disk, name)
    try:
        console.login()
        TIMES[f"disk: {name}: OVMF to login (TCG)"] = time.monotonic() - started
        mounts = console.run("findmnt -n -o SOURCE,FSTYPE /; findmnt -n -o SOURCE,FSTYPE /boot")
        assert mounts.split() == [f"/dev/{device}2", "ext4", f"/dev/{device}1", "vfat"], mounts
        assert "vmlinuz-linux" in console.run("ls /boot").split()
        machine_id = console.run("cat /etc/machine-id").strip()
        assert re.fullmatch(r"[0-9a-f]{32}", machine_id), machine_id
        assert machine_id != box_machine_id(box), "the image made its own machine id"
        address = console.run(
            "for i in $(seq 60); do ip -4 -o addr show | grep -q 'inet 10.0.2.15/' && break; sleep 1; done; "
            "ip -color=never -4 -o addr show"  # iproute2 6 colours addresses on a terminal
        )
        assert re.search(r"\d+: en\w+\s+inet 10\.0\.2\.15/24", address), address
        state = console.run("systemctl is-system-running --wait; systemctl --failed --no-legend --plain", timeout=300)
        print(f"{name}: systemctl is-system-running: {state}")
        assert state.split()[0] == "running", state
        console.poweroff()
        TIMES[f"disk: {name}: boot, checks, poweroff"] = time.monotonic() - started
    finally:
        console.close()


def test_the_raw_image_boots_under_uefi_from_a_virtio_disk(box: Box, raw: Path) -> None:
    disk = ["-drive", f"file={raw},format=raw,if=virtio"]
    boot_and_check(box, raw, disk, "raw-virtio", "vda")


def test_the_qcow2_image_is_sound_and_boots_from_a_sata_disk(box: Box, qcow2: Path) -> None:
    checked = subprocess.run(as_user(box.user, box.workdir, ["qemu-img", "check", str(qcow2)]),
                             capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert checked.returncode == 0 and "No errors were found" in checked.stdout, checked.stdout + checked.stderr
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(qcow2)], capture_output=True, text=True,
                                     check=True).stdout)  # fmt: skip
    assert info["format"] == "qcow2"
    disk = ["-drive", f"file={qcow2},format=qcow2,if=none,id=sata", "-device", "ide-hd,drive=sata,bus=ide.0"]
    boot_and_check(box, qcow2, disk, "qcow2-sata", "sda")


def test_zz_report_phase_times(request: pytest.FixtureRequest) -> None:
    phases = {phase: value for phase, value in TIMES.items() if phase.startswith("disk:")}
    report(request, "export disk phase wall times (s) and sizes (MiB)", phases)
    assert phases, "no phase ran"

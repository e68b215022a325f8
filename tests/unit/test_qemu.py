"""QEMU command lines, checked against the seed's two commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.attach import Forward, parse_forward, parse_ssh_port
from provisioner.config import Accel
from provisioner.errors import UsageError
from provisioner.iso import BootFiles
from provisioner.qemu import (
    Hardware,
    Stream,
    boot_argv,
    cpu_has_virtualisation,
    install_argv,
    qemu_value,
    resolve_accel,
    run_argv,
)
from provisioner.run import wrap

HW = Hardware(memory=2048, cpus=2, accel=Accel.TCG)
BOOT = BootFiles(
    label="ARCH_202611", uuid="2026-11-01-10-00-00-00", kernel=Path("/c/vmlinuz-linux"), initrd=Path("/c/initramfs-linux.img")
)


def option(argv: list[str], flag: str) -> list[str]:
    """Every value given to a flag, in order."""
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_boot_argv_is_the_seeds_second_command(tmp_path: Path) -> None:
    base = tmp_path / "base"
    argv = boot_argv(HW, base)
    assert argv[0] == "qemu-system-x86_64"
    assert option(argv, "-kernel") == [f"{base}/boot/vmlinuz-linux"]
    assert option(argv, "-initrd") == [f"{base}/boot/initramfs-linux.img"]
    assert option(argv, "-append") == [
        "root=fsRoot rw rootfstype=9p rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=mmap,posixacl console=ttyS0"
    ]
    assert option(argv, "-fsdev") == [f"local,security_model=passthrough,multidevs=remap,id=fsdev-fsRoot,path={base}"]
    assert option(argv, "-device")[0] == "virtio-9p-pci,id=fsRoot,fsdev=fsdev-fsRoot,mount_tag=fsRoot"
    assert option(argv, "-sandbox") == ["on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    assert option(argv, "-rtc") == ["base=utc"]
    assert option(argv, "-boot") == ["strict=on"]
    assert option(argv, "-netdev") == ["user,id=net0"]
    assert option(argv, "-m") == ["2048"] and option(argv, "-smp") == ["2"]
    assert option(argv, "-accel") == ["tcg,thread=single"], "one thread: no vCPU runs code another patches"


def test_install_argv_boots_the_iso_kernel_with_a_serial_console(tmp_path: Path) -> None:
    iso = tmp_path / "arch.iso"
    argv = install_argv(HW, iso, BOOT, tmp_path / "base", tmp_path / "stage")
    assert option(argv, "-kernel") == ["/c/vmlinuz-linux"]
    assert option(argv, "-initrd") == ["/c/initramfs-linux.img"]
    append = option(argv, "-append")[0].split()
    assert append[:3] == ["archisobasedir=arch", "archisosearchuuid=2026-11-01-10-00-00-00", "console=ttyS0,115200"]
    assert "panic=-1" in append
    assert not any(arg.startswith("ip=") for arg in append), "ip= switches archiso to PXE mode"
    assert option(argv, "-drive") == [f"file={iso},media=cdrom,readonly=on,if=ide"]
    assert option(argv, "-chardev") == ["stdio,id=console,signal=off"]
    assert option(argv, "-serial") == ["chardev:console"]
    assert option(argv, "-monitor") == ["none"]
    assert "-no-reboot" in argv
    assert option(argv, "-fsdev") == [
        f"local,security_model=passthrough,multidevs=remap,id=fsdev-fsRoot,path={tmp_path}/base",
        f"local,security_model=passthrough,multidevs=remap,readonly=on,id=fsdev-pastage,path={tmp_path}/stage",
    ], "the target read-write, the stage read-only"


def test_the_live_units_an_install_does_without_are_masked(tmp_path: Path) -> None:
    """sshd and its key generation, cloud-init's stages, ModemManager, iwd, NTP and pacman-init
    (the install makes the keyring itself) stay off the live system's CPU; networkd, resolved
    and choose-mirror, which it needs, run."""
    append = option(install_argv(HW, tmp_path / "arch.iso", BOOT, tmp_path / "base", tmp_path / "stage"), "-append")[0]
    masked = {arg.removeprefix("systemd.mask=") for arg in append.split() if arg.startswith("systemd.mask=")}
    assert {"pacman-init.service", "sshd.service", "sshdgenkeys.service", "cloud-init-main.service", "cloud-final.service",
            "ModemManager.service", "iwd.service", "systemd-timesyncd.service"} <= masked  # fmt: skip
    assert not masked & {"systemd-networkd.service", "systemd-resolved.service", "choose-mirror.service"}


def test_a_stream_install_does_not_share_the_target_with_the_guest(tmp_path: Path) -> None:
    stream = Stream(scratch=tmp_path / "w/scratch.img", pipe=tmp_path / "w/stream")
    argv = install_argv(HW, tmp_path / "arch.iso", BOOT, tmp_path / "base", tmp_path / "w/stage", stream=stream)
    assert not any(f"path={tmp_path}/base" in value for value in option(argv, "-fsdev")), "the guest could plant links there"
    assert option(argv, "-fsdev") == [
        f"local,security_model=passthrough,multidevs=remap,readonly=on,id=fsdev-pastage,path={tmp_path}/w/stage"
    ]


def test_install_argv_passes_the_mirror_and_falls_back_to_the_label(tmp_path: Path) -> None:
    no_uuid = BootFiles(label="ARCH_202405", uuid=None, kernel=BOOT.kernel, initrd=BOOT.initrd)
    argv = install_argv(HW, tmp_path / "a.iso", no_uuid, tmp_path, tmp_path / "stage", mirror="https://m.example/arch")
    append = option(argv, "-append")[0].split()
    assert "archisolabel=ARCH_202405" in append
    assert "mirror=https://m.example/arch" in append


def test_commas_in_paths_are_doubled(tmp_path: Path) -> None:
    odd = tmp_path / "a,b"
    assert qemu_value(odd) == f"{tmp_path}/a,,b"
    argv = boot_argv(HW, odd)
    assert option(argv, "-fsdev")[0].endswith(f"path={tmp_path}/a,,b")


def test_kvm_uses_the_host_cpu() -> None:
    argv = boot_argv(Hardware(memory=4096, cpus=4, accel=Accel.KVM), Path("/b"))
    assert option(argv, "-accel") == ["kvm"] and option(argv, "-cpu") == ["host"]


def test_wrap_uses_a_user_namespace_only_when_not_root() -> None:
    assert wrap(["qemu-system-x86_64", "-m", "1"], as_root=False) == [
        "unshare", "--map-auto", "--map-root-user", "qemu-system-x86_64", "-m", "1",
    ]  # fmt: skip
    assert wrap(["qemu-system-x86_64"], as_root=True) == ["qemu-system-x86_64"]


@pytest.mark.parametrize(
    ("flags", "expected"), [("fpu vme vmx sse", True), ("fpu svm sse2", True), ("fpu sse2 hypervisor", False)]
)
def test_cpu_virtualisation_flags(tmp_path: Path, flags: str, expected: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: Test\nflags\t\t: {flags}\n")
    assert cpu_has_virtualisation(cpuinfo) is expected
    assert cpu_has_virtualisation(tmp_path / "missing") is False


def test_explicit_accel_is_kept() -> None:
    assert resolve_accel(Accel.TCG) is Accel.TCG
    assert resolve_accel(Accel.KVM) is Accel.KVM


@pytest.mark.parametrize(
    ("spec", "forward"),
    [("2222", Forward(2222)), ("127.0.0.1:2222", Forward(2222)), ("0.0.0.0:2222", Forward(2222, 22, "0.0.0.0")),  # noqa: S104
     ("192.168.1.5:65535", Forward(65535, 22, "192.168.1.5")), ("1", Forward(1))],
)  # fmt: skip
def test_ssh_port_listens_on_loopback_unless_an_address_is_given(spec: str, forward: Forward) -> None:
    assert parse_ssh_port(spec) == forward


@pytest.mark.parametrize(
    "spec",
    ["", "0", "65536", "22x", "-1", "localhost:2222", ":2222", "0.0.0.0:", "::1:2222", "1.2.3:22", "2222,hostfwd=tcp::1-:1"],
)
def test_bad_ssh_ports_are_refused(spec: str) -> None:
    with pytest.raises(UsageError, match="--ssh-port"):
        parse_ssh_port(spec)


def test_boot_argv_forwards_ssh_and_keeps_the_sandbox(tmp_path: Path) -> None:
    argv = boot_argv(HW, tmp_path / "base", [parse_ssh_port("2222")])
    assert option(argv, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"]
    assert option(argv, "-sandbox") == ["on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    everywhere = boot_argv(HW, tmp_path / "base", [parse_ssh_port("0.0.0.0:2200"), parse_forward("8080:80")])
    assert option(everywhere, "-netdev") == ["user,id=net0,hostfwd=tcp:0.0.0.0:2200-:22,hostfwd=tcp:127.0.0.1:8080-:80"]


def test_run_argv_is_headless_and_ends_on_reboot(tmp_path: Path) -> None:
    base = tmp_path / "base"
    argv = run_argv(HW, base, ["systemd.run=/x", "panic=-1"])
    assert option(argv, "-append") == [boot_argv(HW, base)[boot_argv(HW, base).index("-append") + 1] + " systemd.run=/x panic=-1"]
    assert option(argv, "-chardev") == ["stdio,id=console,signal=off"] and option(argv, "-monitor") == ["none"]
    assert "-no-reboot" in argv and "-mon" not in argv
    assert option(argv, "-kernel") == [f"{base}/boot/vmlinuz-linux"]
    assert option(argv, "-sandbox") == option(boot_argv(HW, base), "-sandbox")

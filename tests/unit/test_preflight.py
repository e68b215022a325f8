"""Host checks against faked environments: fake binaries on PATH, fake /etc files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provisioner import preflight
from provisioner.virtiofs import Flavour, Virtiofsd


def fake_bin(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


@pytest.fixture
def bindir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    return directory


def messages(problems: list[preflight.Problem]) -> str:
    return "\n".join(f"{p.message} -> {p.fix}" for p in problems)


def test_missing_qemu(bindir: Path) -> None:
    found = list(preflight.check_qemu())
    assert "qemu-system-x86_64 is not installed" in messages(found)
    assert "apt-get install qemu-system-x86" in found[0].fix


def test_qemu_without_9p(bindir: Path) -> None:
    fake_bin(bindir, "qemu-system-x86_64", 'echo "name \\"virtio-net-pci\\""')
    assert "no virtio-9p support" in messages(list(preflight.check_qemu()))


def test_qemu_with_9p(bindir: Path) -> None:
    fake_bin(bindir, "qemu-system-x86_64", 'echo "name \\"virtio-9p-pci\\", bus PCI"')
    assert list(preflight.check_qemu()) == []


def user_ns_env(bindir: Path, etc: Path, *, map_auto: bool = True, probe_ok: bool = True) -> None:
    help_text = "--map-auto" if map_auto else "--map-root-user"
    fake_bin(
        bindir,
        "unshare",
        f'[ "$1" = --help ] && {{ echo "{help_text}"; exit 0; }}; '
        + ("exit 0" if probe_ok else "echo 'unshare: write failed /proc/self/uid_map: Operation not permitted' >&2; exit 1"),
    )
    fake_bin(bindir, "newuidmap", "exit 1")
    fake_bin(bindir, "newgidmap", "exit 1")
    etc.mkdir(exist_ok=True)


def test_user_namespace_ready(bindir: Path, tmp_path: Path) -> None:
    user_ns_env(bindir, tmp_path / "etc")
    for kind in ("subuid", "subgid"):
        (tmp_path / "etc" / kind).write_text("other:100000:65536\nalice:165536:65536\n")
    assert list(preflight.check_user_namespace("alice", tmp_path / "etc")) == []


def test_missing_subuid_range_names_the_fix(bindir: Path, tmp_path: Path) -> None:
    user_ns_env(bindir, tmp_path / "etc")
    (tmp_path / "etc" / "subuid").write_text("other:100000:65536\n")
    found = list(preflight.check_user_namespace("alice", tmp_path / "etc"))
    assert "no subuid range for user alice" in messages(found)
    assert "usermod --add-subuids" in found[0].fix


def test_a_range_by_uid_counts(bindir: Path, tmp_path: Path) -> None:
    user_ns_env(bindir, tmp_path / "etc")
    for kind in ("subuid", "subgid"):
        (tmp_path / "etc" / kind).write_text(f"{os.getuid()}:100000:65536\n")
    assert list(preflight.check_user_namespace("nobody-by-name", tmp_path / "etc")) == []


def test_old_unshare_and_missing_uidmap(bindir: Path, tmp_path: Path) -> None:
    user_ns_env(bindir, tmp_path / "etc", map_auto=False)
    assert "no --map-auto" in messages(list(preflight.check_user_namespace("alice", tmp_path / "etc")))
    user_ns_env(bindir, tmp_path / "etc")
    (bindir / "newgidmap").unlink()
    found = list(preflight.check_user_namespace("alice", tmp_path / "etc"))
    assert "newgidmap is not installed" in messages(found) and "uidmap" in found[0].fix


@pytest.mark.parametrize(
    ("switch", "value", "fix"),
    [("unprivileged_userns_clone", "0", "sysctl kernel.unprivileged_userns_clone=1"),
     ("apparmor_restrict_unprivileged_userns", "1", "sysctl kernel.apparmor_restrict_unprivileged_userns=0"),
     ("unprivileged_userns_clone", "1", "check newuidmap/newgidmap")],
)  # fmt: skip
def test_user_namespaces_disabled_by_the_kernel(
    switch: str, value: str, fix: str, bindir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_ns_env(bindir, tmp_path / "etc", probe_ok=False)
    for kind in ("subuid", "subgid"):
        (tmp_path / "etc" / kind).write_text("alice:100000:65536\n")
    sysctl = tmp_path / "sysctl"
    sysctl.mkdir()
    (sysctl / switch).write_text(value + "\n")
    monkeypatch.setattr(preflight, "SYSCTL", sysctl)
    found = list(preflight.check_user_namespace("alice", tmp_path / "etc"))
    assert "cannot create a user namespace: unshare: write failed" in messages(found)
    assert fix in found[0].fix


def test_target_checks(tmp_path: Path) -> None:
    assert list(preflight.check_target(tmp_path / "new" / "base", force=False)) == []
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    assert "is not empty" in messages(list(preflight.check_target(full, force=False)))
    assert list(preflight.check_target(full, force=True)) == []
    afile = tmp_path / "file"
    afile.write_text("")
    assert "not a directory" in messages(list(preflight.check_target(afile, force=False)))


def test_iso_and_installed_checks(tmp_path: Path) -> None:
    assert "does not exist" in messages(list(preflight.check_iso(tmp_path / "none.iso")))
    assert "not an installed system" in messages(list(preflight.check_installed(tmp_path)))


def mountinfo(tmp_path: Path, fstype: str, options: str = "rw,relatime") -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"40 22 8:17 / {tmp_path} {options} shared:2 - {fstype} /dev/sdb1 rw\n"
    )
    return path


@pytest.mark.parametrize("fstype", ["vfat", "exfat", "ntfs3"])
def test_a_target_on_a_file_system_without_ownership_is_refused(fstype: str, tmp_path: Path) -> None:
    found = list(preflight.check_target_filesystem(tmp_path / "base", True, mountinfo(tmp_path, fstype)))
    assert f"is on {fstype}, which cannot keep file ownership" in messages(found)
    assert "ext4" in found[0].fix
    assert list(tmp_path.iterdir()) == [tmp_path / "mountinfo"], "the check wrote outside the target"


def test_a_target_on_ext4_passes_and_its_chown_probe_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "base"
    target.mkdir()
    assert list(preflight.check_target_filesystem(target, os.geteuid() == 0, mountinfo(tmp_path, "ext4"))) == []
    assert list(target.iterdir()) == []


def test_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert list(preflight.check_free_space(tmp_path / "base")) == []
    monkeypatch.setattr(preflight, "MIN_FREE", 1 << 60)
    assert "an install needs about 2 GiB" in messages(list(preflight.check_free_space(tmp_path / "base")))


def test_kvm_probe_boots_a_kernel_and_reads_its_banner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against the fake QEMU: a KVM guest that speaks passes, one that hangs is a warning (never blocking)."""
    fake = Path(__file__).parents[1] / "fakeqemu/bin"
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_QEMU_DIR", str(tmp_path))
    monkeypatch.setattr(preflight, "cpu_has_virtualisation", lambda: True)
    monkeypatch.setattr(os, "access", lambda path, mode: True)  # /dev/kvm: ours, whatever the host says
    monkeypatch.setattr(os.path, "exists", lambda path: True)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    assert list(preflight.check_kvm((kernel,))) == []
    monkeypatch.setenv("FAKE_QEMU_MODE", "kvm-hang")
    monkeypatch.setattr(preflight, "KVM_PROBE", 1.0)
    (found,) = preflight.check_kvm((kernel,))
    assert not found.blocking and "KVM hangs here" in found.message


def test_virtiofs_missing_is_a_warning_with_the_package(bindir: Path) -> None:
    (found,) = preflight.check_virtiofs(lambda: None)
    assert not found.blocking and "boot --fs virtiofs" in found.message
    assert "qemu-system-common" in found.fix


def test_virtiofs_needs_qemus_vhost_user_fs(bindir: Path) -> None:
    daemon = Virtiofsd(Path("/usr/lib/qemu/virtiofsd"), Flavour.C)
    fake_bin(bindir, "qemu-system-x86_64", 'echo "name \\"virtio-9p-pci\\", bus PCI"')
    (found,) = preflight.check_virtiofs(lambda: daemon)
    assert not found.blocking and "vhost-user-fs-pci" in found.message
    fake_bin(bindir, "qemu-system-x86_64", 'echo "name \\"virtio-9p-pci\\"\nname \\"vhost-user-fs-pci\\""')
    assert list(preflight.check_virtiofs(lambda: daemon)) == []


def test_doctor_reports_virtiofs_and_the_install_does_not_wait_for_it() -> None:
    (check,) = [check for check in preflight.CHECKS if check.name == "virtiofs"]
    assert check.doctor_only


def test_doctor_finds_mkfs_in_sbin_or_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (check,) = [check for check in preflight.CHECKS if check.name == "mkfs"]
    assert check.doctor_only, "only --ephemeral needs it"
    monkeypatch.setenv("PATH", str(tmp_path))  # as an unprivileged user's PATH on Debian: no sbin
    monkeypatch.setattr("provisioner.run.SBIN", (str(tmp_path / "sbin"),))
    (missing,) = preflight.check_mkfs()
    assert not missing.blocking and "e2fsprogs" in missing.fix
    (tmp_path / "sbin").mkdir()
    fake_bin(tmp_path / "sbin", "mkfs.ext4", "true")
    assert list(preflight.check_mkfs()) == []


def test_doctor_names_what_each_export_format_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (check,) = [check for check in preflight.CHECKS if check.name == "export"]
    assert check.doctor_only, "an install needs none of it"
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("provisioner.run.SBIN", (str(tmp_path / "sbin"),))
    for program in ("tar", "unshare", "mkfs.ext4", "debugfs", "e2fsck", "sfdisk", "mformat"):
        fake_bin(tmp_path, program, "true")
    raw, qcow2 = preflight.check_export()
    assert raw.message == "no mcopy: `export --format raw` cannot run" and raw.fix.endswith("apt-get install mtools")
    assert qcow2.message == "no mcopy, qemu-img: `export --format qcow2` cannot run" and "mtools qemu-utils" in qcow2.fix
    assert not raw.blocking
    fake_bin(tmp_path, "mcopy", "true")
    fake_bin(tmp_path, "qemu-img", "true")
    assert list(preflight.check_export()) == []

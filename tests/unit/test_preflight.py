"""Host checks against faked environments: fake binaries on PATH, fake /etc files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provisioner import preflight


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


def test_user_namespaces_disabled_by_the_kernel(bindir: Path, tmp_path: Path) -> None:
    user_ns_env(bindir, tmp_path / "etc", probe_ok=False)
    for kind in ("subuid", "subgid"):
        (tmp_path / "etc" / kind).write_text("alice:100000:65536\n")
    found = list(preflight.check_user_namespace("alice", tmp_path / "etc"))
    assert "cannot create a user namespace: unshare: write failed" in messages(found)
    assert "sysctl" in found[0].fix


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

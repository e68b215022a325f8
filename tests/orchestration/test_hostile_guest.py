"""A hostile guest, against the fake QEMU: whatever the box's root does to the tree — links
planted where the host used to keep its state, where it writes the run's script, where it
unpacks the stream, or in place of the boot files — nothing outside the target is written,
truncated, read into the guest or deleted.

Each attack is a config command (it runs as root in the install's chroot, as a package
scriptlet or a dev box's sudo user could) or a change made to the tree between runs (what a
booted box can do to its own root). The victims are files and directories of the host's,
outside the target, whose content, mode and mtime are compared before and after.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from provisioner.boot import RUN_DIR, kernel_files
from provisioner.cli import app
from provisioner.errors import ExitCode, UsageError
from provisioner.preflight import check_box
from provisioner.tree import TreeError
from provisioner.unpack import UnpackError
from provisioner.workspace import Workspace
from tests.helpers import installed_box
from tests.orchestration.conftest import Fake

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fake's chroot commands chown: run as root")

# Every name under the target the host ever wrote or read, now or in older versions.
PLANTED_FILES = ["stream.tar", "stream.out", "scratch.img", "state.json", "state.json.tmp", "manifest.json",
                 "manifest.json.tmp", "console.log", "run-console.log", "lock", "run-id"]  # fmt: skip
PLANTED_DIRS = [".provision-arch/stage", ".provision-arch/run", ".provision-arch-run", ".provision-arch-unpack"]


def victims(tmp_path: Path) -> Path:
    """A host directory the box must never touch: a file, a directory with a file, a key."""
    home = tmp_path / "victim"
    (home / ".ssh").mkdir(parents=True)
    (home / ".bashrc").write_text("# mine\n")
    (home / ".ssh/id_ed25519").write_text("PRIVATE KEY\n")
    (home / ".ssh/id_ed25519").chmod(0o600)
    return home


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | str]]:
    found: dict[str, tuple[int, int, bytes | str]] = {}
    for path in [root, *root.rglob("*")]:
        status = path.lstat()
        content: bytes | str = os.readlink(path) if path.is_symlink() else (path.read_bytes() if path.is_file() else b"")
        found[str(path.relative_to(root))] = (status.st_mode, status.st_mtime_ns, content)
    return found


def planting(home: Path) -> str:
    """A config command that plants, at every name the host used, a link to a victim. (The
    fake's chroot is the tree as the working directory, so the names are relative.)"""
    commands = ["rm -rf .provision-arch", "mkdir .provision-arch"]
    commands += [f"ln -s {home}/.bashrc .provision-arch/{name}" for name in PLANTED_FILES]
    commands += [f"ln -s {home} {name}" for name in PLANTED_DIRS]
    return " && ".join(commands)


@pytest.mark.parametrize("via", ["stream", "9p"])
def test_links_planted_where_the_host_kept_its_state_reach_nothing(
    via: str, install: Any, fake: Fake, tmp_path: Path
) -> None:
    home = victims(tmp_path)
    before = snapshot(home)
    config = tmp_path / "box.toml"
    config.write_text(f"commands = [{json.dumps(planting(home))}]\n")
    run = install("--config", str(config), "--install-via", via)
    assert run.exit_code == 0, run.stderr
    assert snapshot(home) == before, "the host wrote, truncated or deleted through a planted link"
    workspace = Workspace.of(tmp_path / "base")
    for path in (workspace.state_file, workspace.manifest, workspace.transcript, workspace.lock):
        assert path.is_file() and not path.is_symlink(), path
    assert os.path.lexists(tmp_path / "base/.provision-arch/lock"), "the box keeps what its root made"


def test_a_run_makes_its_script_anew_whatever_the_box_planted(install: Any, fake: Fake, tmp_path: Path) -> None:
    home = victims(tmp_path)
    assert install().exit_code == 0
    box = tmp_path / "base"
    (box / RUN_DIR).symlink_to(home / ".ssh")  # what the booted box can do to its own root
    before = snapshot(home)
    result = CliRunner().invoke(app, ["run", str(box), "--accel", "tcg", "--", "true"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert snapshot(home) == before
    assert not os.path.lexists(box / RUN_DIR), "the run's directory (and the planted link) is gone"


def test_boot_files_resolve_inside_the_box_never_on_the_host(tmp_path: Path) -> None:
    home = victims(tmp_path)
    box = installed_box(tmp_path)
    initrd = box / "boot/initramfs-linux.img"
    initrd.unlink()
    initrd.symlink_to(home / ".ssh/id_ed25519")  # absolute: in the box, that is BOX/…/id_ed25519
    with pytest.raises(UsageError, match=r"initramfs-linux\.img is missing"):
        check_box(box, start=False)
    with pytest.raises(TreeError, match=r"not a regular file|No such file"), kernel_files(box):
        pass
    # A link the box itself resolves is followed as the box would: inside it.
    real = box / "boot/initramfs-real.img"
    real.write_bytes(b"the box's own")
    initrd.unlink()
    initrd.symlink_to("/boot/initramfs-real.img")
    check_box(box, start=False)
    with kernel_files(box) as files:
        assert files.initrd.read_bytes() == b"the box's own"
        assert Workspace.of(box).root in files.initrd.parents, "QEMU loads a copy the box cannot change"
    assert not list(Workspace.of(box).boot.iterdir()), "the copies go with the boot"


def test_a_boot_file_that_climbs_out_stays_in(tmp_path: Path) -> None:
    """'..' above the box's root is the root, as in the box."""
    home = victims(tmp_path)
    box = installed_box(tmp_path)
    kernel = box / "boot/vmlinuz-linux"
    kernel.unlink()
    kernel.symlink_to(os.path.relpath(home / ".ssh/id_ed25519", kernel.parent))
    with pytest.raises(UsageError, match=r"vmlinuz-linux is missing"):
        check_box(box, start=False)


def test_a_force_install_replaces_links_the_old_tree_held(install: Any, fake: Fake, tmp_path: Path) -> None:
    """The old box planted `etc -> ~` and `usr/bin -> ~/.ssh`; the new tree goes in beside, not through."""
    home = victims(tmp_path)
    before = snapshot(home)
    box = tmp_path / "base"
    (box / "usr").mkdir(parents=True)
    (box / "etc").symlink_to(home)
    (box / "usr/bin").symlink_to(home / ".ssh")
    (box / "keep.txt").write_text("mine\n")
    run = install("--force")
    assert run.exit_code == 0, run.stderr
    assert snapshot(home) == before
    assert (box / "etc").is_dir() and not (box / "etc").is_symlink() and (box / "etc/hostname").is_file()
    assert (box / "usr/bin").is_dir() and not (box / "usr/bin").is_symlink()
    assert (box / "keep.txt").read_text() == "mine\n", "what only the old tree held stays"


def test_the_workspace_is_the_users_alone(install: Any, fake: Fake, tmp_path: Path) -> None:
    assert install().exit_code == 0
    workspace = Workspace.of(tmp_path / "base")
    assert workspace.root.stat().st_mode & 0o777 == 0o700
    for path in workspace.root.rglob("*"):
        assert path.lstat().st_mode & 0o077 == 0, f"{path} is open to others"


def test_a_killed_runs_secrets_go_before_the_next_run_starts(install: Any, fake: Fake, tmp_path: Path) -> None:
    workspace = Workspace.of(tmp_path / "base")
    workspace.create()
    workspace.stage.mkdir()
    (workspace.stage / "root.chpasswd").write_text("root:$6$left$by-a-killed-run\n")
    workspace.scratch.write_bytes(b"a killed run's tree")
    run = install("--force")
    assert run.exit_code == 0, run.stderr
    assert not workspace.stage.exists() and not workspace.scratch.exists()


def test_a_stream_larger_than_the_scratch_disk_is_refused_before_it_fills_the_host(
    install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("provisioner.install.STREAM_LIMIT", 4096)
    run = install("--install-via", "stream")
    assert run.exit_code == ExitCode.STEP, run.stderr
    assert "outgrew 4096 bytes" in run.events[-1]["message"]
    workspace = Workspace.of(tmp_path / "base")
    assert not workspace.archive.exists() and list((tmp_path / "base").iterdir()) == []


def test_an_interrupted_unpack_is_recognised_as_such(
    install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(*args: object, **kwargs: object) -> None:
        (tmp_path / "base/.provision-arch-unpack/half").write_text("written before the failure\n")
        raise UnpackError("tar could not unpack the stream: No space left on device", "free some space")

    with monkeypatch.context() as patched:
        patched.setattr("provisioner.unpack.extract", fails)
        assert install().exit_code == ExitCode.STEP
    again = install()
    assert again.exit_code == ExitCode.USAGE, again.stderr
    assert "unpack was interrupted" in again.events[-1]["message"] and "--force" in again.events[-1]["hint"]
    assert install("--force").exit_code == 0

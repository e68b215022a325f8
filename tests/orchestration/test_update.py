"""``provision-arch update`` against the fake QEMU: a finished dev box brought to a changed config in place."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from provisioner import users
from provisioner.cli import app
from provisioner.errors import ExitCode
from provisioner.manifest import installed_packages
from provisioner.workspace import Workspace
from tests.helpers import password_file, ssh_public_key
from tests.orchestration.conftest import Fake, Run
from tests.orchestration.test_devbox import CONFIG, accounts, write_config
from tests.orchestration.test_install import assert_clean_end, shadow_hash

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fake chowns to the users' ids: run as root")

NEW_KEY = ssh_public_key("new@laptop")
# The dev box's config, changed: zsh and sshd dropped, git added; ci gone, dev without sudo
# or keys, a new user with a key; another file.
CHANGED = f"""
packages = ["base", "linux", "sudo", "openssh", "git"]
commands = ["echo again >> ran"]

[[users]]
name = "dev"
groups = ["wheel"]

[[users]]
name = "new"
sudo = true
authorized_keys = ["{NEW_KEY}"]

[[files]]
source = "issue.txt"
path = "/etc/issue"
"""
UPDATE_STEPS = ["mount", "cache", "upgrade", "disable", "remove", "configure", "initramfs", "users", "accounts",
                "files", "command-1", "unmount"]  # fmt: skip

Update = Callable[..., Run]


@pytest.fixture
def update(tmp_path: Path, iso: Path, fake: Fake) -> Update:
    """Run `provision-arch update TARGET --iso … --json` in-process."""

    def run(*args: str, target: Path | None = None) -> Run:
        argv = ["update", str(target or tmp_path / "base"), "--iso", str(iso), "--json", "--accel", "tcg", *args]
        result = CliRunner().invoke(app, argv, catch_exceptions=False)
        return Run(result.exit_code, result.stdout, result.stderr, [json.loads(line) for line in result.stdout.splitlines()])

    return run


@pytest.fixture
def devbox(install: Any, tmp_path: Path) -> Path:
    run: Run = install("--config", str(write_config(tmp_path)))
    assert run.exit_code == 0, run.stderr
    return tmp_path / "base"


def changed_config(directory: Path) -> Path:
    (directory / "issue.txt").write_text("an updated box\n")
    path = directory / "changed.toml"
    path.write_text(CHANGED)
    return path


def notes(run: Run) -> str:
    return "\n".join(e["message"] for e in run.events if e["type"] == "note")


def test_update_brings_the_box_to_the_changed_config(devbox: Path, update: Update, fake: Fake, tmp_path: Path) -> None:
    launched = len(fake.launches())
    run = update("--config", str(changed_config(tmp_path)))
    assert run.exit_code == 0, run.stderr
    assert run.steps() == ["preflight", "read-iso", "stage", "boot", *UPDATE_STEPS, "poweroff", "manifest"]
    assert set(run.finished().values()) == {"ok"}
    assert len(fake.launches()) == launched + 1, "one QEMU for the update"
    assert_clean_end(run, fake, devbox)
    packages = installed_packages(devbox)
    assert "git" in packages and (devbox / "usr/bin/git").exists()
    assert "zsh" not in packages, "the config no longer names zsh and nothing needs it"
    assert not (devbox / "etc/systemd/system/multi-user.target.wants/sshd.service").exists(), "sshd is no longer a service"
    # ci: removed, its home kept, its sudo rule gone; dev: no rule and no keys any more.
    assert accounts(devbox, "ci") == {} and (devbox / "home/ci").is_dir()
    assert not (devbox / "etc/sudoers.d/ci").exists() and not (devbox / "etc/sudoers.d/dev").exists()
    assert not (devbox / "home/dev/.ssh/authorized_keys").exists()
    assert accounts(devbox, "dev")["group"][3] == "", "dev's groups are the config's: only wheel (set by -G)"
    keys = (devbox / "home/new/.ssh/authorized_keys").read_text().splitlines()
    assert keys == [keys[0], NEW_KEY] and keys[0].startswith(users.MARK)
    assert (devbox / "etc/sudoers.d/new").read_text().startswith(users.MARK)
    assert (devbox / "etc/issue").read_text() == "an updated box\n"
    assert (devbox / "ran").read_text() == "again\n", "the new config's command ran"
    workspace = Workspace.of(devbox)
    manifest = json.loads(workspace.manifest.read_text())
    assert manifest["packages"] == packages, "the manifest is the box's pacman database"
    assert manifest["config"]["packages"] == ["base", "linux", "sudo", "openssh", "git"]
    state = json.loads(workspace.state_file.read_text())
    assert (state["finished"], state["updating"], state["users"]) == (True, False, ["dev", "new"])
    said = notes(run)
    assert "zsh" in said and "removed ci" in said and "sshd" in said


def test_without_a_config_file_the_accounts_stay_and_the_box_is_upgraded(
    devbox: Path, update: Update, fake: Fake, tmp_path: Path
) -> None:
    before = {name: accounts(devbox, name) for name in ("dev", "ci")}
    run = update()
    assert run.exit_code == 0, run.stderr
    steps = run.steps()
    assert "upgrade" in steps and "services" in steps and "command-3" in steps, "the recorded options apply again"
    assert not {"users", "accounts", "files", "remove", "disable", "password"} & set(steps)
    assert {name: accounts(devbox, name) for name in ("dev", "ci")} == before
    assert "no --config: users and copied files are left as they are" in notes(run)
    assert "-Su --needed base linux sudo openssh zsh" in fake.commands()


def test_the_root_password_changes_only_when_given(devbox: Path, update: Update, tmp_path: Path) -> None:
    kept = shadow_hash(devbox)
    assert update().exit_code == 0
    assert shadow_hash(devbox) == kept
    (tmp_path / "new").mkdir()
    run = update("--password-file", str(password_file(tmp_path / "new", "a-New-pw-2")))
    assert run.exit_code == 0, run.stderr
    assert "password" in run.steps() and shadow_hash(devbox) not in (kept, "")
    assert shadow_hash(devbox) not in run.stdout + run.stderr


def test_a_package_another_needs_is_kept_as_a_dependency(
    devbox: Path, update: Update, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NEEDED", "zsh")
    run = update("--config", str(changed_config(tmp_path)))
    assert run.exit_code == 0, run.stderr
    assert "zsh" in installed_packages(devbox)
    assert "kept zsh: another package needs it" in notes(run)


def test_a_new_snapshot_rewrites_the_mirrorlist_and_may_downgrade(devbox: Path, update: Update, fake: Fake) -> None:
    run = update("--snapshot", "2026-11-01")
    assert run.exit_code == 0, run.stderr
    assert run.steps()[run.steps().index("mount") :][:4] == ["mount", "cache", "mirrorlist", "upgrade"]
    assert "/repos/2026/11/01/$repo/os/$arch" in (devbox / "etc/pacman.d/mirrorlist").read_text()
    assert "pacman --noconfirm -Suu --needed" in fake.commands()


def test_an_interrupted_update_is_marked_and_the_next_one_finishes_it(
    devbox: Path, update: Update, install: Any, fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "pacman")  # the box's pacman, in the chroot
    failed = update()
    assert failed.exit_code == ExitCode.STEP, failed.stderr
    assert_clean_end(failed, fake, devbox)
    state = json.loads(Workspace.of(devbox).state_file.read_text())
    assert (state["finished"], state["updating"]) == (False, True)
    refused = install()
    assert refused.exit_code == ExitCode.USAGE and "update" in refused.events[-1]["hint"]
    monkeypatch.delenv("FAKE_FAIL")
    again = update()
    assert again.exit_code == 0, again.stderr
    assert "an earlier update" in notes(again)
    assert json.loads(Workspace.of(devbox).state_file.read_text())["finished"] is True


def test_an_interrupted_update_still_makes_the_changes_of_the_first(
    devbox: Path, update: Update, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state keeps the config before the update: the second run still removes and disables."""
    changed = str(changed_config(tmp_path))
    monkeypatch.setenv("FAKE_FAIL", "pacman")
    assert update("--config", changed).exit_code == ExitCode.STEP
    monkeypatch.delenv("FAKE_FAIL")
    again = update("--config", changed)
    assert again.exit_code == 0, again.stderr
    assert {"disable", "remove", "accounts"} <= set(again.steps())
    assert "zsh" not in installed_packages(devbox) and accounts(devbox, "ci") == {}


def test_a_changed_config_on_a_finished_box_points_to_update(devbox: Path, install: Any, tmp_path: Path) -> None:
    run = install("--config", str(write_config(tmp_path, CONFIG.replace('"zsh"]', '"zsh", "git"]'))))
    assert run.exit_code == ExitCode.USAGE
    assert f"provision-arch update {devbox}" in run.events[-1]["hint"]


@pytest.mark.parametrize("made", ["nothing", "empty", "interrupted install"])
def test_update_needs_a_finished_box(
    made: str, update: Update, install: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "base"
    if made == "empty":
        target.mkdir()
    elif made == "interrupted install":
        monkeypatch.setenv("FAKE_FAIL", "mkinitcpio")
        assert install("--install-via", "9p").exit_code != 0
        monkeypatch.delenv("FAKE_FAIL")
    run = update()
    assert run.exit_code == ExitCode.USAGE, run.stderr
    assert run.events[-1]["hint"]
    assert not any(e["type"] == "step-started" and e["step"] == "boot" for e in run.events)

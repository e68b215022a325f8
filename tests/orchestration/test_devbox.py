"""A dev box from a config file, against the fake QEMU: users, keys, sudo, files, services,
commands, pacman.conf — checked in the target the run leaves, not in what it prints.

The fake runs its shims as root here, so `install -o` and useradd's home really get the
users' ids (a run as another user could not chown to them).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from provisioner import users
from provisioner.errors import ExitCode
from provisioner.password import hash_password
from provisioner.workspace import Workspace
from tests.helpers import ssh_public_key, staged_secrets
from tests.orchestration.conftest import Fake, Run
from tests.orchestration.test_install import ALL_STEPS, assert_clean_end

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fake chowns to the users' ids: run as root")

DEV_KEY = ssh_public_key("dev@laptop")
OPS_KEY = ssh_public_key("ops@ci")
CI_HASH = hash_password("ci-Pass-w0rd")
BASE_STEPS = ALL_STEPS[: ALL_STEPS.index("stream")]

CONFIG = f"""
packages = ["base", "linux", "sudo", "openssh", "zsh"]
services = ["sshd"]
commands = ["touch built-1", "test -e built-1 && echo made > built-2", "echo last > built-3"]

[[users]]
name = "dev"
groups = ["wheel", "docker"]
sudo = true
shell = "/usr/bin/zsh"
authorized_keys = ["{DEV_KEY}"]
authorized_keys_files = ["keys/ops.pub"]

[[users]]
name = "ci"
password_hash = "{CI_HASH}"
sudo = true
groups = ["dev"]

[[files]]
source = "motd.txt"
path = "/etc/motd"
mode = "0640"
owner = "root:wheel"

[[files]]
source = "bin/hello"
path = "/home/dev/bin/hello"
mode = 0o750
owner = "dev"
"""


def write_config(directory: Path, text: str = CONFIG) -> Path:
    (directory / "keys").mkdir(exist_ok=True)
    (directory / "keys/ops.pub").write_text(f"# the CI's key\n{OPS_KEY}\n")
    (directory / "motd.txt").write_text("Welcome to the dev box\n")
    (directory / "bin").mkdir(exist_ok=True)
    (directory / "bin/hello").write_bytes(b"#!/bin/sh\necho hello\n\x00binary tail\xff")
    path = directory / "box.toml"
    path.write_text(text)
    return path


def accounts(target: Path, name: str) -> dict[str, list[str]]:
    """The user's passwd, shadow and group entries: file -> fields."""
    found = {}
    for file in ("passwd", "shadow", "group"):
        for line in (target / "etc" / file).read_text().splitlines():
            if line.split(":")[0] == name:
                found[file] = line.split(":")
    return found


def members(target: Path, group: str) -> list[str]:
    for line in (target / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return [m for m in fields[3].split(",") if m]
    raise AssertionError(f"no group {group}")


def owner_mode(path: Path) -> tuple[int, int, int]:
    info = path.lstat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


@pytest.fixture
def devbox(install: Any, fake: Fake, tmp_path: Path) -> Run:
    run: Run = install("--config", str(write_config(tmp_path)))
    assert run.exit_code == 0, run.stderr
    return run


def test_the_devbox_steps_run_after_the_system_and_before_the_unmount(devbox: Run, fake: Fake, tmp_path: Path) -> None:
    assert devbox.steps() == [*BASE_STEPS, "users", "files", "services", "command-1", "command-2", "command-3",
                              "stream", "unmount", "poweroff", "unpack", "manifest"]  # fmt: skip
    assert set(devbox.finished().values()) == {"ok"}
    titles = {e["step"]: e["title"] for e in devbox.events if e["type"] == "step-started"}
    assert titles["command-2"] == "Running command 2: test -e built-1 && echo made > built-2"
    assert len(fake.launches()) == 1
    assert_clean_end(devbox, fake, tmp_path / "base")


def test_users_with_groups_shell_and_locked_or_hashed_passwords(devbox: Run, tmp_path: Path) -> None:
    target = tmp_path / "base"
    dev, ci = accounts(target, "dev"), accounts(target, "ci")
    assert dev["passwd"][2] == "1000" and dev["passwd"][5:] == ["/home/dev", "/usr/bin/zsh"]
    assert ci["passwd"][2] == "1001" and ci["passwd"][6] == "/bin/bash"  # useradd's default shell
    assert dev["group"][2] == dev["passwd"][3], "useradd -U: the user's own group is its primary group"
    assert "dev" in members(target, "wheel") and "dev" in members(target, "docker")  # docker made by groupadd -f
    assert members(target, "dev") == ["ci"], "ci joined dev's own group, created before it"
    assert dev["shadow"][1] == "!", "no password_hash: the account stays locked"
    assert ci["shadow"][1] == CI_HASH
    assert owner_mode(target / "home/dev") == (1000, 1000, 0o700)


def test_authorized_keys_are_the_users_own_in_a_private_ssh_directory(devbox: Run, tmp_path: Path) -> None:
    target = tmp_path / "base"
    assert owner_mode(target / "home/dev/.ssh") == (1000, 1000, 0o700)
    keys = target / "home/dev/.ssh/authorized_keys"
    assert owner_mode(keys) == (1000, 1000, 0o600)
    # provision-arch's mark (a comment), the strings, then the files' keys without comments
    assert keys.read_text().splitlines()[1:] == [DEV_KEY, OPS_KEY]
    assert keys.read_text().startswith(users.MARK)
    assert not (target / "home/ci/.ssh").exists(), "no keys, no .ssh"


def test_sudo_rules_are_nopasswd_only_for_a_locked_account(devbox: Run, tmp_path: Path) -> None:
    target = tmp_path / "base"
    dev, ci = target / "etc/sudoers.d/dev", target / "etc/sudoers.d/ci"
    assert owner_mode(dev) == (0, 0, 0o440) and owner_mode(ci) == (0, 0, 0o440)
    assert dev.read_text().splitlines()[-1] == "dev ALL=(ALL:ALL) NOPASSWD: ALL"
    assert ci.read_text().splitlines()[-1] == "ci ALL=(ALL:ALL) ALL"
    assert not any("add sudo to packages" in e.get("message", "") for e in devbox.events), "sudo is installed"


def test_files_are_copied_byte_for_byte_with_mode_and_owner(devbox: Run, tmp_path: Path) -> None:
    target = tmp_path / "base"
    motd, hello = target / "etc/motd", target / "home/dev/bin/hello"
    assert motd.read_text() == "Welcome to the dev box\n" and owner_mode(motd) == (0, 998, 0o640)  # wheel is 998
    assert hello.read_bytes() == (tmp_path / "bin/hello").read_bytes() and owner_mode(hello) == (1000, 1000, 0o750)


def test_services_enabled_and_commands_run_in_order_in_the_chroot(devbox: Run, fake: Fake, tmp_path: Path) -> None:
    target = tmp_path / "base"
    link = target / "etc/systemd/system/multi-user.target.wants/sshd.service"
    assert os.readlink(link) == "/usr/lib/systemd/system/sshd.service"
    assert (target / "built-1").exists() and (target / "built-2").read_text() == "made\n"
    assert (target / "built-3").read_text() == "last\n"
    chroot = [line for line in fake.commands().splitlines() if line.startswith("arch-chroot") and " sh -c " in line]
    assert [line.split(" sh -c ", 1)[1] for line in chroot] == [
        "touch\\ built-1 ", "test\\ -e\\ built-1\\ \\&\\&\\ echo\\ made\\ \\>\\ built-2 ", "echo\\ last\\ \\>\\ built-3 ",
    ]  # fmt: skip


def test_no_password_hash_is_ever_typed_passed_or_logged(devbox: Run, fake: Fake, tmp_path: Path) -> None:
    target = tmp_path / "base"
    transcript = Workspace.of(target).transcript.read_text()
    root_hash = (target / "etc/shadow").read_text().splitlines()[0].split(":")[1]
    for secret in (CI_HASH, root_hash):
        for where, text in {"typed": fake.typed(), "argv": fake.commands(), "transcript": transcript,
                            "stdout": devbox.stdout, "stderr": devbox.stderr}.items():  # fmt: skip
            assert secret not in text, f"a password hash was {where}"
    assert "chpasswd -e < /run/provision-arch/stage/users.chpasswd" in fake.typed()
    assert not staged_secrets(target)


def test_pacman_conf_gets_the_sandbox_switch_once(devbox: Run, install: Any, tmp_path: Path) -> None:
    conf = tmp_path / "base/etc/pacman.conf"
    assert "DisableSandboxFilesystem" not in conf.read_text().splitlines(), "the sandbox stays on unless asked"
    # A second run over the same target, now without the sandbox: accounts are brought up to
    # date, not added twice, and the switch is set once.
    again = install("--config", str(tmp_path / "box.toml"), "--force", "--no-pacman-sandbox")
    assert again.exit_code == 0, again.stderr
    lines = conf.read_text().splitlines()
    assert lines[lines.index("[options]") + 1] == "DisableSandboxFilesystem"
    assert any(e["type"] == "note" and "DisableSandboxFilesystem" in e["message"] for e in again.events)
    again = install("--config", str(tmp_path / "box.toml"), "--force", "--no-pacman-sandbox")
    assert again.exit_code == 0, again.stderr
    assert conf.read_text().splitlines().count("DisableSandboxFilesystem") == 1
    passwd = (tmp_path / "base/etc/passwd").read_text()
    assert passwd.count("\ndev:") == 1 and passwd.count("\nci:") == 1


@pytest.mark.parametrize(
    ("version", "args", "expected"),
    [("7.0.0", ("--no-pacman-sandbox",), "DisableSandbox"), ("6.0.2", ("--no-pacman-sandbox",), None),
     ("7.1.0", ("--no-pacman-sandbox",), "DisableSandboxFilesystem"), ("7.1.0", (), None)],
)
def test_pacman_conf_by_version(
    version: str, args: tuple[str, ...], expected: str | None, install: Any, fake: Fake, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("FAKE_PACMAN_VERSION", version)
    assert install(*args).exit_code == 0
    options = [line for line in (tmp_path / "base/etc/pacman.conf").read_text().splitlines() if line.startswith("Disable")]
    assert options == ([expected] if expected else [])


def one_line_error(run: Run, step: str) -> dict[str, Any]:
    assert run.exit_code == ExitCode.STEP, run.stderr
    assert run.finished()[step] == "failed"
    assert run.steps()[-1] == step, "a step ran after the failure"
    error = run.events[-1]
    assert error["type"] == "error" and error["exit_code"] == ExitCode.STEP
    return error


def test_a_failing_command_stops_the_run_and_is_named(install: Any, fake: Fake, tmp_path: Path) -> None:
    config = write_config(tmp_path, 'commands = ["touch first", "echo about to fail; exit 3", "touch never"]\n')
    run = install("--config", str(config), "--install-via", "9p")  # the path that leaves the tree so far
    error = one_line_error(run, "command-2")
    assert error["message"] == "guest command failed with status 3: echo about to fail; exit 3"
    assert "command-2 (config key commands[1])" in error["hint"] and "about to fail" in error["details"]
    assert (tmp_path / "base/first").exists() and not (tmp_path / "base/never").exists()
    assert_clean_end(run, fake, tmp_path / "base")


@pytest.mark.parametrize(
    ("config", "step", "hint"),
    [
        ('services = ["nosuchd"]\n', "services", "Add the package that ships it"),
        ('[[users]]\nname = "dev"\nshell = "/usr/bin/fish"\n', "users", "users[0].shell: /usr/bin/fish is not installed"),
        ('packages = ["base", "linux", "git"]\n[[users]]\nname = "git"\n', "users", "'git' is a system account"),
        ('[[files]]\nsource = "motd.txt"\npath = "/etc/motd"\nowner = "nobody-here"\n', "files", "owner nobody-here must exist"),
    ],
    ids=["unknown-unit", "shell-not-installed", "system-account", "unknown-owner"],
)
def test_guest_side_refusals_name_what_to_fix(
    config: str, step: str, hint: str, install: Any, fake: Fake, tmp_path: Path
) -> None:
    run = install("--config", str(write_config(tmp_path, config)))
    assert hint in one_line_error(run, step)["hint"]
    assert_clean_end(run, fake, tmp_path / "base")


def test_sudo_without_the_sudo_package_is_a_warning(install: Any, fake: Fake, tmp_path: Path) -> None:
    run = install("--config", str(write_config(tmp_path, '[[users]]\nname = "dev"\nsudo = true\n')))
    assert run.exit_code == 0, run.stderr
    assert any(e["type"] == "note" and "add sudo to packages" in e["message"] for e in run.events)


def test_enable_service_on_the_command_line(install: Any, fake: Fake, tmp_path: Path) -> None:
    run = install("--package", "base linux openssh", "--enable-service", "sshd", "--enable-service", "systemd-resolved.service")
    assert run.exit_code == 0, run.stderr
    steps = run.steps()
    assert run.finished()["services"] == "ok" and steps.index("password") < steps.index("services") < steps.index("unmount")
    assert "arch-chroot /mnt systemctl enable sshd systemd-resolved.service" in fake.typed()
    assert (tmp_path / "base/etc/systemd/system/multi-user.target.wants/sshd.service").is_symlink()


def test_keys_without_an_ssh_server_get_a_note_naming_the_fix(install: Any, tmp_path: Path) -> None:
    """As a new user tried it: a sudo user with a key, no openssh, no sshd — SSH would never answer."""
    config = tmp_path / "nossh.toml"
    config.write_text(f'[[users]]\nname = "dev"\nsudo = true\nauthorized_keys = ["{DEV_KEY}"]\n')
    run = install("--config", str(config))
    assert run.exit_code == 0, run.stderr
    notes = [e["message"] for e in run.events if e["type"] == "note"]
    assert any("dev get SSH keys, but the box will run no SSH server" in note and "openssh" in note for note in notes)
    dev = users.User("dev", authorized_keys=(DEV_KEY,))
    assert users.ssh_gap((dev,), ("base", "openssh"), ("sshd",)) is None
    assert users.ssh_gap((dev,), ("base", "openssh"), ()) is not None, "the server must also be enabled"
    assert users.ssh_gap((users.User("ci"),), ("base",), ()) is None, "no keys, nothing to say"

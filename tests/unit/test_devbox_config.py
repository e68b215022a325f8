"""The dev box's config keys: users, files, services, commands — what passes, what is refused,
and that every refusal names the key and the value; the shipped example loads."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from typer.testing import CliRunner

from provisioner.cli import app
from provisioner.config import Config, build, load_file
from provisioner.errors import UsageError
from provisioner.password import hash_password
from provisioner.session import Session
from provisioner.users import User, sudoers
from tests.helpers import ssh_public_key

EXAMPLE = Path(__file__).parents[2] / "examples/devbox.toml"
KEY = ssh_public_key("dev@laptop")


def toml_value(value: Any) -> str:
    """A Python value as TOML (enough for these tests)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\x00", "\\u0000") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    raise TypeError(value)


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "box.toml"
    path.write_text(text)
    return build({**load_file(path), "target": tmp_path / "t"})


def user_toml(**fields: Any) -> str:
    return "[[users]]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in {"name": "dev", **fields}.items())


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(UsageError) as caught:
        load(tmp_path, text)
    return caught.value.message


# -- users -----------------------------------------------------------------------------------

HOSTILE_NAMES = ["root", "Dev", "1dev", "-dev", "dev;reboot", "$(id)", "a b", "dev\nroot", "x" * 33, "", "systemd-x", "nobody",
                 "dev:0", "../etc", "dév"]  # fmt: skip


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_user_names_are_refused_naming_key_and_value(tmp_path: Path, name: str) -> None:
    message = refused(tmp_path, user_toml(name=name))
    assert message.startswith("config key users[0].name: ")
    assert repr(name) in message


@pytest.mark.parametrize("group", ["Wheel", "wheel,root", "a b", "$(id)", "-x", "x" * 33, "g\n"])
def test_hostile_group_names_are_refused(tmp_path: Path, group: str) -> None:
    message = refused(tmp_path, user_toml(groups=["wheel", group]))
    assert message.startswith("config key users[0].groups[1]: ") and repr(group) in message


@pytest.mark.parametrize("shell", ["zsh", "/bin/../bin/sh", "/usr/bin//zsh", "/bin/zsh\n", "/proc/self/exe", "/bin/sh/"])
def test_bad_shells_are_refused(tmp_path: Path, shell: str) -> None:
    message = refused(tmp_path, user_toml(shell=shell))
    assert message.startswith("config key users[0].shell: ") and repr(shell) in message


@pytest.mark.parametrize(
    "line",
    ["ssh-ed25519", "ssh-ed25519 not-base64!", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", KEY + "\nssh-rsa AAAA evil",
     KEY.replace("ssh-ed25519", "ssh-rsa"), "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "hello world",
     KEY.replace(" ", "\u00a0", 1), KEY.replace(" ", "\u2003", 1)],  # no-break and em spaces: sshd splits on ASCII ones
)  # fmt: skip
def test_bad_authorized_keys_are_refused(tmp_path: Path, line: str) -> None:
    message = refused(tmp_path, user_toml(authorized_keys=[KEY, line]))
    assert message.startswith("config key users[0].authorized_keys[1]: ")


def test_a_key_file_with_a_bad_line_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "keys.pub").write_text(f"# mine\n{KEY}\n\nssh-ed25519 garbage\n")
    message = refused(tmp_path, user_toml(authorized_keys_files=["keys.pub"]))
    assert message.startswith(f"config key users[0].authorized_keys_files[0] ({tmp_path / 'keys.pub'}, line 4): ")
    assert "cannot read" in refused(tmp_path, user_toml(authorized_keys_files=["missing.pub"]))


def test_a_password_hash_that_is_not_one_is_refused_without_echoing_it(tmp_path: Path) -> None:
    message = refused(tmp_path, user_toml(password_hash="hunter2"))
    assert message == "config key users[0].password_hash: is not a crypt hash" and "hunter2" not in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (user_toml() + user_toml(), "users[1].name"),
        (user_toml(groups=["ci"]) + user_toml(name="ci"), "users[0].groups"),
        (user_toml(groups=["dev"]), "users[0].groups"),
        (user_toml(groups=["wheel", "wheel"]), "users[0].groups"),
        (user_toml(sudo="yes"), "users[0].sudo"),
        (user_toml(colour="blue"), "users[0]"),
        ("users = [1]\n", "users[0]"),
        ('users = "dev"\n', "users"),
        ("[[users]]\ngroups = []\n", "users[0]"),
        (user_toml(groups="wheel"), "users[0].groups"),
    ],
    ids=["twice", "later-users-group", "own-group", "group-twice", "sudo-not-bool", "unknown-field", "not-a-table",
         "not-a-list", "no-name", "groups-not-a-list"],
)  # fmt: skip
def test_malformed_users_are_refused_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    assert refused(tmp_path, text).startswith(f"config key {key}: ")


def test_a_good_user(tmp_path: Path) -> None:
    hashed = hash_password("pw")
    (tmp_path / "k.pub").write_text(ssh_public_key("ops") + "\n")
    fields = {"groups": ["wheel", "ops"], "sudo": True, "shell": "/usr/bin/zsh", "password_hash": hashed,
              "authorized_keys": [f'from="10.0.0.0/8" {KEY}'], "authorized_keys_files": ["k.pub"]}  # fmt: skip
    text = user_toml(name="ops") + user_toml(**fields)
    dev = load(tmp_path, text).users[1]
    assert (dev.name, dev.groups, dev.sudo, dev.shell) == ("dev", ("wheel", "ops"), True, PurePosixPath("/usr/bin/zsh"))
    assert dev.authorized_keys == (f'from="10.0.0.0/8" {KEY}', ssh_public_key("ops"))
    assert hashed not in repr(dev)


def test_sudoers_rule_follows_the_password() -> None:
    assert sudoers(User("dev", sudo=True)).endswith("\ndev ALL=(ALL:ALL) NOPASSWD: ALL\n")
    assert sudoers(User("dev", sudo=True, password_hash=hash_password("pw"))).endswith("\ndev ALL=(ALL:ALL) ALL\n")


# -- files -----------------------------------------------------------------------------------


def file_toml(**fields: Any) -> str:
    values = {"source": "motd", "path": "/etc/motd", **fields}
    return "[[files]]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in values.items())


@pytest.fixture
def motd(tmp_path: Path) -> Path:
    path = tmp_path / "motd"
    path.write_text("hi\n")
    return path


@pytest.mark.parametrize(
    "path",
    ["etc/motd", "/etc/../shadow", "/etc/./motd", "//etc/motd", "/etc/motd/", "/", "/proc/sys/kernel/x", "/sys/x", "/dev/sda",
     "/run/x", "/dev", "/.provision-arch/run/command", "/etc/mo\ntd", "/etc/\x00x", "/" + "x" * 300],
)  # fmt: skip
def test_hostile_guest_paths_are_refused(tmp_path: Path, motd: Path, path: str) -> None:
    message = refused(tmp_path, file_toml(path=path))
    assert message.startswith("config key files[0].path: ") and (repr(path) in message or "too long" in message)


@pytest.mark.parametrize(
    ("mode", "expected"), [("0640", 0o640), ("640", 0o640), ("0o4755", 0o4755), (0o600, 0o600), ("0", 0), (0o2755, 0o2755)]
)
def test_modes_as_octal_strings_or_numbers(tmp_path: Path, motd: Path, mode: Any, expected: int) -> None:
    assert load(tmp_path, file_toml(mode=mode)).files[0].mode == expected


@pytest.mark.parametrize("mode", ["0999", "8", "rw-r--r--", "010000", 4096, -1, True, "", "0x1ff", 644, 755, "1777"])
def test_bad_modes_are_refused(tmp_path: Path, motd: Path, mode: Any) -> None:
    message = refused(tmp_path, file_toml(mode=mode))
    assert message.startswith("config key files[0].mode: ")


def test_a_decimal_mode_is_explained(tmp_path: Path, motd: Path) -> None:
    with pytest.raises(UsageError) as caught:
        load(tmp_path, file_toml(mode=644))
    assert "0o1204" in caught.value.message and "mode = 0o644" in caught.value.hint


@pytest.mark.parametrize("owner", ["Dev", "dev:", ":dev", "dev:wheel:x", "a b", "$(id)", "dev;id", "root:-g"])
def test_bad_owners_are_refused(tmp_path: Path, motd: Path, owner: str) -> None:
    message = refused(tmp_path, file_toml(owner=owner))
    assert message.startswith("config key files[0].owner: ") and repr(owner) in message


def test_sources_and_collisions(tmp_path: Path, motd: Path) -> None:
    assert "does not exist" in refused(tmp_path, file_toml(source="nope"))
    assert "is a directory" in refused(tmp_path, file_toml(source="."))
    assert refused(tmp_path, file_toml() + file_toml(source="motd")).startswith("config key files[1].path: ")
    keys = user_toml(authorized_keys=[KEY]) + file_toml(path="/home/dev/.ssh/authorized_keys")
    assert "also written for users[0]" in refused(tmp_path, keys)
    cfg = load(tmp_path, file_toml(owner="dev:wheel", mode="0600"))
    (copied,) = Session.create(build({**vars_of(cfg), "password_hash": hash_password("x")})).copied
    assert (copied.guest_path, copied.data) == (PurePosixPath("/etc/motd"), b"hi\n")
    assert (copied.mode, copied.owner) == (0o600, "dev:wheel")


# -- what a config file may name on the host ------------------------------------------------


@pytest.mark.parametrize("source", ["/proc/self/environ", "~/.bashrc", "../outside.txt", "sub/../../outside.txt", "up/x"])
def test_a_source_outside_the_config_directory_is_refused(tmp_path: Path, source: str) -> None:
    (tmp_path / "outside.txt").write_text("host secret\n")
    box = tmp_path / "box"
    (box / "sub").mkdir(parents=True)
    (box / "up").symlink_to(tmp_path)  # a link inside that leads out: resolved, then checked
    with pytest.raises(UsageError) as caught:
        load(box, file_toml(source=source))
    assert caught.value.message.startswith("config key files[0].source: ")
    assert "host secret" not in caught.value.message
    assert "only inside its own directory" in caught.value.hint


def test_a_source_inside_the_config_directory_may_take_any_road_that_stays_inside(tmp_path: Path, motd: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/link").symlink_to(motd)
    for source in ("sub/../motd", "sub/link", "./motd"):
        (copied,) = load(tmp_path, file_toml(source=source)).files
        assert copied.source == motd.resolve()


def test_a_source_swapped_for_a_link_after_the_check_is_not_followed(tmp_path: Path, motd: Path) -> None:
    cfg = load(tmp_path, file_toml())
    (tmp_path / "secret").write_text("host secret\n")
    motd.unlink()
    motd.symlink_to(tmp_path / "secret")
    with pytest.raises(UsageError, match=r"^config key files\[0\]\.source: cannot read .*motd"):
        Session.create(build({**vars_of(cfg), "password_hash": hash_password("x")}))


@pytest.mark.parametrize("name", ["/etc/ssh/ssh_host_ed25519_key.pub", "../id.pub", "~/.ssh/id_ed25519", "~/.ssh/sub/id.pub",
                                  "~/.ssh/../.ssh/id.pub", "~/.ssh/link.pub", "~/other.pub"])  # fmt: skip
def test_key_files_are_the_configs_own_or_the_users_public_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ssh = tmp_path / "home/.ssh"
    ssh.mkdir(parents=True)
    (ssh / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (ssh / "id.pub").write_text(KEY + "\n")
    (tmp_path / "home/other.pub").write_text(KEY + "\n")
    (ssh / "link.pub").symlink_to(tmp_path / "home/other.pub")
    box = tmp_path / "box"
    box.mkdir()
    with pytest.raises(UsageError) as caught:
        load(box, user_toml(authorized_keys_files=[name]))
    assert caught.value.message.startswith("config key users[0].authorized_keys_files[0]: ")
    # The user's own public keys, and the config's, are what a config may name.
    assert load(box, user_toml(authorized_keys_files=["~/.ssh/id.pub"])).users[0].authorized_keys == (KEY,)


def test_a_key_file_line_that_is_no_key_is_not_shown(tmp_path: Path) -> None:
    (tmp_path / "keys.pub").write_text("TOKEN=s3cret-value\n")
    message = refused(tmp_path, user_toml(authorized_keys_files=["keys.pub"]))
    assert "not an SSH public key line" in message and "s3cret" not in message


def vars_of(cfg: Config) -> dict[str, Any]:
    return {key: getattr(cfg, key) for key in ("target", "files", "users")}


# -- services and commands -------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["-sshd", "ssh d", "sshd;reboot", "a/b", "foo\\x2d.mount", "$(id)", "", "a..service"])
def test_hostile_unit_names_are_refused(tmp_path: Path, unit: str) -> None:
    message = refused(tmp_path, f"services = [\"sshd\", {toml_value(unit)}]\n")
    assert message.startswith("config key services[1]: ") and repr(unit) in message


def test_good_unit_names(tmp_path: Path) -> None:
    units = ["sshd", "sshd.service", "getty@ttyS1.service", "docker.socket", "fstrim.timer", "dbus-org.freedesktop.resolve1"]
    assert load(tmp_path, f"services = {toml_value(units)}\n").services == tuple(units)


@pytest.mark.parametrize("command", ["", "   ", "echo a\necho b", "echo \r", "x" * 3100, "'" * 700, "echo \x9b31m", "echo \x85"])
def test_unfit_commands_are_refused(tmp_path: Path, command: str) -> None:
    message = refused(tmp_path, f"commands = [\"true\", {toml_value(command)}]\n")
    assert message.startswith("config key commands[1]: ")


def test_commands_are_shell_lines_kept_as_written(tmp_path: Path) -> None:
    commands = ["pacman -S --noconfirm git", "echo 'it''s' | tee /tmp/x && exit 0", "su -l dev -c 'mkdir -p ~/src'"]
    assert load(tmp_path, f"commands = {toml_value(commands)}\n").commands == tuple(commands)


def test_enable_service_flag_and_file_only_keys_on_the_command_line() -> None:
    output = " ".join(CliRunner().invoke(app, ["install", "--help"]).output.split())
    assert "--enable-service NAME" in output
    assert not re.search(r"--users\b|--files\b|--commands\b", output), "tables are config-file only"


# -- the shipped example ---------------------------------------------------------------------


def test_the_example_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # its key is ~/.ssh/id_ed25519.pub
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh/id_ed25519.pub").write_text(KEY + "\n")
    cfg = build({**load_file(EXAMPLE), "target": tmp_path / "devbox", "password_hash": hash_password("x")})
    (dev,) = cfg.users
    assert dev.name == "dev" and dev.sudo and dev.locked and dev.authorized_keys == (KEY,)
    assert cfg.services == ("sshd",) and "openssh" in cfg.packages and "sudo" in cfg.packages
    assert cfg.files[0].path == PurePosixPath("/etc/motd") and cfg.files[0].source.is_file()
    session = Session.create(cfg)
    assert {str(f.guest_path) for f in session.user_files} == {"/home/dev/.ssh/authorized_keys", "/etc/sudoers.d/dev"}

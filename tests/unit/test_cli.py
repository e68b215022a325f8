"""The CLI: help, errors as one line + hint + documented exit code, `boot --print`."""

from __future__ import annotations

import shlex
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provisioner.cli import app
from provisioner.config import Accel, Config, defaults_shown
from provisioner.errors import EXIT_CODES, ExitCode
from provisioner.session import Session
from provisioner.workspace import Workspace
from tests.helpers import installed_box, password_file

runner = CliRunner()


@pytest.mark.parametrize("args", [["--help"], ["boot", "--help"], ["install", "--help"]])
def test_help_ends_with_the_exit_codes(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for code, meaning in EXIT_CODES.items():
        assert f"{int(code)} {meaning}" in " ".join(result.output.split())


def test_short_help_is_long_help() -> None:
    assert runner.invoke(app, ["install", "-h"]).output == runner.invoke(app, ["install", "--help"]).output
    assert runner.invoke(app, ["-h"]).output == runner.invoke(app, ["--help"]).output
    assert runner.invoke(app, ["./base", "-h"]).output == runner.invoke(app, ["install", "--help"]).output


def test_shell_completion_is_offered() -> None:
    assert "--install-completion" in runner.invoke(app, ["--help"]).output


def test_install_help_shows_every_option_of_the_table() -> None:
    output = " ".join(runner.invoke(app, ["install", "--help"]).output.split())
    for row, default in defaults_shown():
        if not row.option.in_cli:
            assert row.name in output, f"--config's help names the file-only key {row.name}"
            continue
        for flag in row.flags:
            assert flag in output, flag
        assert " ".join(row.option.help.split()) in output, row.name
        if default:
            assert f"[default: {default}]" in output, row.name


def test_boot_print_is_one_shell_command(tmp_path: Path) -> None:
    base = installed_box(tmp_path)
    result = runner.invoke(app, ["boot", str(base), "--print", "--accel", "tcg"])
    assert result.exit_code == 0, result.output
    argv = shlex.split(result.output.strip())
    assert "qemu-system-x86_64" in argv
    kernel = Path(argv[argv.index("-kernel") + 1])
    assert kernel == Workspace.of(base).printed_boot / "vmlinuz-linux", "a copy: the printed command loads nothing from the tree"
    assert kernel.read_bytes() == (base / "boot/vmlinuz-linux").read_bytes()
    assert argv[argv.index("-append") + 1].startswith("root=fsRoot rw rootfstype=9p")


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_boot_print_takes_the_machine_type(tmp_path: Path, machine: str) -> None:
    result = runner.invoke(app, ["boot", str(installed_box(tmp_path)), "--print", "--accel", "tcg", "--machine", machine])
    assert result.exit_code == 0, result.output
    argv = shlex.split(result.output.strip())
    assert argv[argv.index("-machine") + 1] == f"{machine},dump-guest-core=off"


def test_boot_refuses_an_unknown_machine_type(tmp_path: Path) -> None:
    result = runner.invoke(app, ["boot", str(installed_box(tmp_path)), "--print", "--machine", "virt"])
    assert result.exit_code == ExitCode.USAGE and "--machine" in result.output


def test_boot_of_a_directory_that_is_not_installed(tmp_path: Path) -> None:
    result = runner.invoke(app, ["boot", str(tmp_path), "--print"])
    assert result.exit_code == ExitCode.USAGE
    assert "not an installed system" in result.output
    assert "hint:" in result.output


def test_bad_hostname_is_a_usage_error(tmp_path: Path, pw_file: Path) -> None:
    result = runner.invoke(
        app, [str(tmp_path / "b"), "--iso", "x.iso", "--password-file", str(pw_file), "--hostname", "a b"]
    )
    assert result.exit_code == ExitCode.USAGE
    assert "invalid hostname 'a b'" in result.output


def test_missing_password_without_a_terminal(tmp_path: Path) -> None:
    iso = tmp_path / "a.iso"
    iso.write_bytes(b"")
    result = runner.invoke(app, [str(tmp_path / "b"), "--iso", str(iso)])
    assert result.exit_code == ExitCode.USAGE
    assert "no root password given" in result.output
    assert "--password-file" in result.output


def test_host_problems_come_before_asking_for_a_password(tmp_path: Path) -> None:
    result = runner.invoke(app, [str(tmp_path / "b"), "--iso", str(tmp_path / "none.iso")])
    assert result.exit_code == ExitCode.HOST, result.output
    assert "no root password" not in result.output


def test_missing_iso_is_a_host_problem_and_the_password_never_shows(tmp_path: Path) -> None:
    pw = str(password_file(tmp_path, "s3cret-Value"))
    result = runner.invoke(app, [str(tmp_path / "b"), "--iso", str(tmp_path / "none.iso"), "--password-file", pw])
    assert result.exit_code == ExitCode.HOST, result.output
    assert "none.iso does not exist" in result.output
    assert "s3cret-Value" not in result.output
    assert not (tmp_path / "b").exists(), "a failed preflight must not create the target"


def test_non_empty_target_needs_force(tmp_path: Path) -> None:
    target = tmp_path / "full"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    iso = tmp_path / "a.iso"
    iso.write_bytes(b"")
    result = runner.invoke(app, [str(target), "--iso", str(iso), "--password-hash", "$6$abc$" + "A" * 86])
    assert result.exit_code == ExitCode.HOST, result.output
    assert "is not empty" in result.output and "--force" in result.output
    assert (target / "keep.txt").read_text() == "user data"


HASH = "$6$abc$" + "A" * 86


def test_a_hash_on_the_command_line_is_warned_about_with_the_safe_ways(tmp_path: Path) -> None:
    result = runner.invoke(app, [str(tmp_path / "b"), "--iso", str(tmp_path / "none.iso"), "--password-hash", HASH])
    assert result.exit_code == ExitCode.HOST, result.output  # it still works: scripts that pass it are not broken
    warning = " ".join(result.output.split())
    assert "--password-hash puts its value in provision-arch's command line" in warning
    assert "set PROVISION_ARCH_PASSWORD_HASH or use --password-file FILE instead" in warning
    assert HASH not in result.output


def test_a_hash_from_the_environment_is_not_warned_about(tmp_path: Path) -> None:
    env = {"PROVISION_ARCH_PASSWORD_HASH": HASH}
    result = runner.invoke(app, [str(tmp_path / "b"), "--iso", str(tmp_path / "none.iso")], env=env)
    assert result.exit_code == ExitCode.HOST, result.output
    assert "command line" not in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("provision-arch ")


def test_no_iso_and_no_network_says_where_from_and_how_to_pass_one(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [str(tmp_path / "b"), "--password-hash", "$6$abc$" + "A" * 86, "--iso-mirror", "http://127.0.0.1:9"],
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert result.exit_code == ExitCode.ISO, result.output
    assert "could not fetch" in result.output and "127.0.0.1:9" in result.output
    assert "--iso PATH" in result.output


def test_config_file_keys_reach_the_install(tmp_path: Path, pw_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kind of key is taken from the file, the command line wins, and provision() gets the result."""
    seen: list[Config] = []
    monkeypatch.setattr("provisioner.cli.check_host", lambda host: [])

    def provision(session: Session, *rest: object) -> Path:
        seen.append(session.cfg)
        return tmp_path / "manifest.json"

    monkeypatch.setattr("provisioner.cli.provision", provision)
    key = tmp_path / "extra.asc"
    box = tmp_path / "box.toml"
    box.write_text(
        'hostname = "fromfile"\npackages = ["base", "linux vim"]\nmemory = 4096\naccel = "tcg"\n'
        f'trusted_keys = ["{key.name}"]\nrefresh_keyring = false\ntimeout_scale = 2\npassword_file = "{pw_file.name}"\n'
    )
    result = runner.invoke(app, [str(tmp_path / "b"), "--config", str(box), "--iso", "x.iso", "--hostname", "fromcli"])
    assert result.exit_code == 0, result.output
    (cfg,) = seen
    assert (cfg.hostname, cfg.packages, cfg.memory, cfg.accel) == ("fromcli", ("base", "linux", "vim"), 4096, Accel.TCG)
    assert (cfg.trusted_keys, cfg.refresh_keyring, cfg.timeout_scale) == ((key,), False, 2.0)
    assert cfg.password_hash.startswith("$6$")


@pytest.mark.parametrize(
    ("line", "message"),
    [('memory = "lots"', "'memory' must be a whole number"), ("hostname = 3", "'hostname' must be a string"),
     ("refresh_keyring = 1", "'refresh_keyring' must be true or false"),
     ("force = true", "'force' is taken only from the command line"),
     ('accel = "hvf"', "'accel' must be one of auto, kvm, tcg")],
)  # fmt: skip
def test_config_file_type_errors_name_the_key(line: str, message: str, tmp_path: Path) -> None:
    box = tmp_path / "box.toml"
    box.write_text(line + "\n")
    result = runner.invoke(app, [str(tmp_path / "b"), "--config", str(box)])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert message in result.output


@pytest.mark.parametrize(
    ("spec", "hostfwd"), [("2222", "hostfwd=tcp:127.0.0.1:2222-:22"), ("0.0.0.0:2200", "hostfwd=tcp:0.0.0.0:2200-:22")]
)
def test_boot_forwards_ssh_on_loopback_unless_told(tmp_path: Path, spec: str, hostfwd: str) -> None:
    result = runner.invoke(app, ["boot", str(installed_box(tmp_path)), "--print", "--accel", "tcg", "--ssh-port", spec])
    assert result.exit_code == 0, result.output
    argv = shlex.split(result.stdout.strip())
    assert argv[argv.index("-netdev") + 1] == f"user,id=net0,{hostfwd}"
    assert "-sandbox" in argv


def test_boot_refuses_a_bad_ssh_port(tmp_path: Path) -> None:
    result = runner.invoke(app, ["boot", str(installed_box(tmp_path)), "--print", "--ssh-port", "all:22"])
    assert result.exit_code == ExitCode.USAGE and "--ssh-port" in result.output


def test_run_needs_a_command(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(installed_box(tmp_path))])
    assert result.exit_code == ExitCode.USAGE
    assert "COMMAND" in result.output


@pytest.mark.parametrize("command", ["install", "doctor"])
def test_a_host_without_the_programs_gets_one_line_not_a_traceback(
    command: str, tmp_path: Path, pw_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a new user tried it: PATH with only the venv (no unshare, no QEMU, no coreutils)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    iso = tmp_path / "x.iso"
    iso.write_bytes(b"not really")
    args = [str(tmp_path / "empty"), "--iso", str(iso), "--password-file", str(pw_file)] if command == "install" else ["doctor"]
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == ExitCode.HOST, result.output
    assert "Traceback" not in result.output and "not" in result.output


def test_boot_with_an_ssh_port_warns_when_the_box_has_no_sshd(tmp_path: Path) -> None:
    base = installed_box(tmp_path)
    result = runner.invoke(app, ["boot", str(base), "--print", "--ssh-port", "2222"])
    assert result.exit_code == 0, result.output
    assert "has no sshd enabled" in result.output and "openssh" in result.output
    wants = base / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "sshd.service").symlink_to("/usr/lib/systemd/system/sshd.service")
    assert "has no sshd enabled" not in runner.invoke(app, ["boot", str(base), "--print", "--ssh-port", "2222"]).output


BOOT_TABLE = """
hostname = "not-read-by-boot"

[boot]
memory = 1024
shares = ["src:/src:ro", "data:/srv/data:ro"]
forwards = ["8080:80", "127.0.0.1:5353:53/udp"]
"""


def test_boot_reads_the_config_files_boot_table_and_the_command_line_wins(tmp_path: Path) -> None:
    for name in ("src", "data"):
        (tmp_path / name).mkdir()
    config = tmp_path / "box.toml"
    config.write_text(BOOT_TABLE)
    base = str(installed_box(tmp_path))
    result = runner.invoke(app, ["boot", base, "--print", "--accel", "tcg", "--config", str(config)])
    assert result.exit_code == 0, result.output
    argv = shlex.split(result.stdout)
    assert argv[argv.index("-m") + 1] == "1024"
    assert argv[argv.index("-netdev") + 1] == "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53"
    append = argv[argv.index("-append") + 1]
    assert "systemd.mount-extra=share0:/src:9p:" in append and append.endswith(",ro")
    fsdevs = [argv[i + 1] for i, word in enumerate(argv) if word == "-fsdev"]
    assert fsdevs[1].endswith(f"readonly=on,id=fsdev-share0,path={tmp_path}/src")
    assert fsdevs[2].endswith(f"readonly=on,id=fsdev-share1,path={tmp_path}/data")
    ours = runner.invoke(app, ["boot", base, "--print", "--accel", "tcg", "--config", str(config), "--memory", "768",
                               "--forward", "9090:90"])  # fmt: skip
    argv = shlex.split(ours.stdout)
    assert argv[argv.index("-m") + 1] == "768"
    forwards = "hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53,hostfwd=tcp:127.0.0.1:9090-:90"
    assert argv[argv.index("-netdev") + 1] == f"user,id=net0,{forwards}", "the command line's forwards add to the file's"


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ('[boot]\nshares = ["/etc:/x"]', "is not a path relative to"),
        ('[boot]\nmemory = "lots"', "must be a whole number"),
        ("[boot]\ncolour = 1", "unknown key(s) in [boot]"),
        ("boot = 1", "must be a table ([boot])"),
        ('[boot]\nforwards = ["80"]', "forwards[0]"),
        ('[boot]\nshares = ["src:/src"]', "a config file may share host directories only read-only"),
        ('[boot]\nforwards = ["0.0.0.0:8080:80"]', "a config file forwards ports on 127.0.0.1 only"),
        ("[boot]\nssh_port = '0.0.0.0:2222'", "a config file forwards ports on 127.0.0.1 only"),
    ],
)
def test_a_bad_boot_table_is_refused_by_boot_and_by_the_install(tmp_path: Path, table: str, said: str) -> None:
    config = tmp_path / "box.toml"
    config.write_text(table + "\n")
    base = str(installed_box(tmp_path))
    booted = runner.invoke(app, ["boot", base, "--print", "--config", str(config)])
    assert booted.exit_code == ExitCode.USAGE and said in booted.output, booted.output
    installed = runner.invoke(app, [str(tmp_path / "new"), "--config", str(config)])
    assert installed.exit_code == ExitCode.USAGE and said in installed.output, installed.output


def test_a_share_that_does_not_exist_or_overlaps_the_box_stops_boot_and_run(tmp_path: Path) -> None:
    base = installed_box(tmp_path)
    for runnable in ("usr/lib/systemd/system-generators/systemd-run-generator", "usr/bin/runuser"):
        (base / runnable).parent.mkdir(parents=True, exist_ok=True)
        (base / runnable).write_text("")
    (base / "etc").mkdir()
    (base / "etc/passwd").write_text("root:x:0:0::/root:/bin/bash\n")
    (base / "home").mkdir()
    for spec, said in ((f"{tmp_path}/nowhere:/x", "does not exist"), (f"{base}/home:/x", "overlaps the box's root")):
        for command in (["boot", str(base), "--print"], ["run", str(base), "--accel", "tcg"]):
            tail = ["--", "true"] if command[0] == "run" else []
            result = runner.invoke(app, [*command, "--share", spec, *tail])
            assert result.exit_code == ExitCode.USAGE and said in result.output, result.output


def test_boot_names_a_busy_host_port_before_qemu_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("provisioner.cli.call", lambda argv: pytest.fail(f"QEMU was started: {argv}"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = runner.invoke(app, ["boot", str(installed_box(tmp_path)), "--accel", "tcg", "--ssh-port", str(port)])
    assert result.exit_code == ExitCode.HOST, result.output
    assert f"cannot listen on host port 127.0.0.1:{port}/tcp: another program is using it" in result.output

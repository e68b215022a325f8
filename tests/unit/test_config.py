"""Config validation: every value that reaches the guest is checked once, here."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.config import Accel, Config, build, load_file, merge, split_packages
from provisioner.errors import UsageError


def make(**kwargs: object) -> Config:
    return build({"target": Path("/t"), **kwargs})


def test_defaults_are_the_seeds() -> None:
    cfg = make()
    assert cfg.packages == ("base", "base-devel", "linux", "vim", "man-db", "man-pages")
    assert cfg.locale_gen_line == "en_US.UTF-8 UTF-8"
    assert cfg.accel is Accel.AUTO


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hostname", "bad host"), ("hostname", "-lead"), ("hostname", "a;reboot"), ("hostname", "x" * 64),
        ("locale", "en_US"), ("locale", "en_US.UTF-8'; rm -rf /"), ("timezone", "../../etc/passwd"),
        ("timezone", "Europe/Berlin;id"), ("keymap", "us$(id)"), ("mirror", "https://m.example/$(id)"),
        ("mirror", "https://m.example/a b"), ("mirror", "javascript:alert(1)"), ("memory", 100), ("cpus", 0),
        ("packages", ("vim;reboot",)), ("packages", ("$(id)",)), ("packages", ("-Syu",)), ("packages", ("a|b",)),
        ("packages", ()), ("accel", "hvf"), ("memory", "lots"),
    ],
)  # fmt: skip
def test_bad_values_are_refused(key: str, value: object) -> None:
    with pytest.raises(UsageError):
        make(**{key: value})


def test_good_values_pass() -> None:
    cfg = make(hostname="dev-box.lan", locale="de_DE.UTF-8", timezone="America/Argentina/Buenos_Aires",
               keymap="de-latin1", mirror="https://geo.mirror.pkgbuild.com",
               packages=("base", "linux", "python-pip", "gtk3", "libc++"))  # fmt: skip
    assert cfg.locale_gen_line == "de_DE.UTF-8 UTF-8"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("snapshot", "20\u0662\u0664-01-01"),  # Arabic-Indic digits: \\d took them
        ("snapshot", "2024-\uff10\uff11-01"),  # fullwidth digits
        ("hostname", "\u212aelvin"),  # the Kelvin sign: [a-z] under re.I took it for 'k'
        ("hostname", "p\u0131ng"),  # the dotless i: [a-z] under re.I took it for 'i'
        ("hostname", "box\u017f"),  # the long s
    ],
)
def test_non_ascii_digits_and_letters_are_refused(key: str, value: str) -> None:
    with pytest.raises(UsageError, match=f"invalid .*{value}"):
        make(**{key: value})


def test_the_password_hash_never_shows_in_repr() -> None:
    cfg = make(password_hash="$6$salt$" + "x" * 86)
    assert "xxxx" not in repr(cfg)


def test_split_packages_accepts_both_forms() -> None:
    assert split_packages(["base", "vim git", "a,b"]) == ("base", "vim", "git", "a", "b")


def test_config_file_and_command_line_merge(tmp_path: Path) -> None:
    file = tmp_path / "box.toml"
    file.write_text('hostname = "fromfile"\npackages = ["base", "linux"]\nmemory = 4096\niso = "arch.iso"\n')
    values = merge({"hostname": "fromcli", "memory": None}, load_file(file))
    cfg = build({**values, "target": tmp_path / "t"})
    assert cfg.hostname == "fromcli"
    assert cfg.memory == 4096
    assert cfg.packages == ("base", "linux")
    assert cfg.iso == tmp_path / "arch.iso"  # relative to the config file


def test_config_file_errors(tmp_path: Path) -> None:
    typo = tmp_path / "typo.toml"
    typo.write_text('hostnme = "x"\n')
    with pytest.raises(UsageError, match="unknown key"):
        load_file(typo)
    broken = tmp_path / "broken.toml"
    broken.write_text("hostname = \n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_file(broken)
    with pytest.raises(UsageError, match="cannot read"):
        load_file(tmp_path / "missing.toml")


def refused(tmp_path: Path, line: str) -> UsageError:
    """The error loading a config file of one ``line`` raises."""
    box = tmp_path / "box.toml"
    box.write_text(line + "\n")
    with pytest.raises(UsageError) as caught:
        load_file(box)
    return caught.value


@pytest.mark.parametrize(
    ("line", "flag"),
    [('log = "~/.bashrc"', "--log FILE"), ('package_cache = "~"', "--package-cache DIR"), ("force = true", "--force"),
     ('password_hash = "$6$x$y"', "")],
)  # fmt: skip
def test_keys_a_config_file_may_not_set_are_refused_naming_the_flag(tmp_path: Path, line: str, flag: str) -> None:
    error = refused(tmp_path, line)
    key = line.split(" ", maxsplit=1)[0]
    assert error.message.startswith(f"config key {key!r} is taken only from the command line: a config file may not")
    safe = "set PROVISION_ARCH_PASSWORD_HASH or use --password-file FILE"
    assert error.hint == (f"pass {flag} on the command line" if flag else safe)


@pytest.mark.parametrize(
    ("line", "flag"),
    [('iso = "/etc/passwd"', "--iso PATH"), ('password_file = "/proc/self/environ"', "--password-file FILE"),
     ('trusted_keys = ["../attacker.asc"]', "--trusted-key FILE"), ('iso = "~/Downloads/arch.iso"', "--iso PATH")],
)  # fmt: skip
def test_host_paths_in_a_config_file_stay_in_its_directory(tmp_path: Path, line: str, flag: str) -> None:
    error = refused(tmp_path, line)
    assert error.message.startswith(f"config key {line.split(' ', maxsplit=1)[0]}: ")
    assert error.hint.endswith(f"put the file below {tmp_path}, or pass {flag} on the command line")

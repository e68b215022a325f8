"""The resolved, validated configuration of one run, and the one table of install options.

``Config``'s fields are the option table: each install option is a field declared with
``option(default, help, …)``, and the command line (``cli.py``), the config-file keys
(``load_file``), their defaults and help, and the README's option table are all derived
from, or checked against, these fields. An option is written once.

Every user value that later reaches a guest shell (hostname, locale, timezone, keymap,
package names, mirror URL) is checked here, once, against a strict pattern; the dev box's
structured keys (users, files, services, commands) are checked by ``users``, ``files`` and
``validate``, called from here. The guest commands still quote everything with
``shlex.quote``: validation keeps nonsense out and makes errors early and clear, quoting
keeps the shell safe.

Some keys are tables only a config file can hold (``[[users]]``, ``[[files]]``): their
``Option`` says ``in_cli=False`` and names the ``parse`` function that reads them.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

from provisioner import attach, validate
from provisioner.attach import Forward, Share
from provisioner.errors import UsageError
from provisioner.files import CopiedFile, parse_files
from provisioner.users import User, check_users, parse_users

BOOT_TABLE = "boot"  # the config file's table of BootConfig's keys
DEFAULT_PACKAGES = ("base", "base-devel", "linux", "vim", "man-db", "man-pages")

# ASCII only, every pattern: \d takes any script's digits (20٢٤-01-01), and re.I lets [a-z]
# match the Kelvin sign and the dotless i; [0-9] and re.ASCII do not.
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", re.IGNORECASE | re.ASCII
)
# ll_CC.CHARSET with an optional @modifier, as the names in Arch's /etc/locale.gen.
LOCALE_RE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?\.(?P<charset>[A-Za-z0-9-]+)(@[a-z]+)?$")
TIMEZONE_RE = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+){0,2}$")
KEYMAP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# pacman's rule for package names: no leading hyphen or dot.
PACKAGE_RE = re.compile(r"^[a-z0-9@_+][a-z0-9@._+-]{0,126}$")
# The mirror goes on the kernel command line (mirror=…): no spaces, quotes or shell syntax.
MIRROR_RE = re.compile(r"^(https?|ftp|file)://[A-Za-z0-9._~:/%@+-]+$")
SNAPSHOT_RE = re.compile(r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")


class Accel(StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class MachineType(StrEnum):
    """QEMU's machine type for a booted box (the install always uses pc)."""

    PC = "pc"  # i440FX: the NIC is ens3
    Q35 = "q35"  # PCIe: the NIC is enp0s2


class RootFs(StrEnum):
    """How a booted box's root (and its shares) reach it."""

    NINEP = "9p"  # QEMU's own 9p server: nothing else to run
    VIRTIOFS = "virtiofs"  # virtiofsd: faster, one more process


class InstallVia(StrEnum):
    NINEP = "9p"  # the guest writes the tree over the share
    STREAM = "stream"  # the guest builds it on a scratch disk and sends one tar to the host


@dataclass(frozen=True)
class Option:
    """How a Config field is offered: its help, flags, and where it may be set."""

    help: str
    flags: tuple[str, ...] = ()  # default: --field-name
    metavar: str | None = None
    envvar: str | None = None
    in_file: bool = True  # a config-file key (the field name)
    not_in_file: str = ""  # why a config file may not set it: said when one tries
    in_cli: bool = True  # a command-line flag; False for tables only a config file can hold
    split: bool = False  # list values may also be given as "a b,c"
    in_manifest: bool = False  # defines the box: recorded in the manifest, compared on resume
    default_text: str = ""  # what the default means, where the value alone would not say
    # Reads a structured config-file value: (TOML value, config file's directory, key) -> field value.
    parse: Callable[[Any, Path, str], Any] | None = None
    # Reads a command-line value given as text: (text, flag) -> field value (one item of a repeatable one).
    from_text: Callable[[str, str], Any] | None = None
    # A secret: as a flag it sits in provision-arch's own argv. The run warns and names the safe
    # ways: the envvar, and these other options (by field name).
    secret: bool = False
    instead: tuple[str, ...] = ()


def option(default: Any, help: str, **how: Any) -> Any:
    """A Config field that is an install option; ``how`` as in ``Option``."""
    return field(default=default, metadata={"option": Option(help, **how)})


@dataclass(frozen=True)
class Config:
    target: Path
    iso: Path | None = option(
        None, "The Arch ISO; verified when ISO.sig lies beside it.", metavar="PATH", default_text="download and verify the latest"
    )
    iso_mirror: str | None = option(
        None, "Mirror to download the ISO from, without --iso.", metavar="URL", default_text="https://geo.mirror.pkgbuild.com"
    )
    iso_version: str | None = option(
        None, "Release to download, YYYY.MM.DD; old ones come from the Arch Linux Archive.", metavar="DATE", default_text="latest"
    )
    trusted_keys: tuple[Path, ...] = option(
        (), "Extra OpenPGP key file trusted to sign the ISO (repeatable).", flags=("--trusted-key",), metavar="FILE"
    )
    packages: tuple[str, ...] = option(
        DEFAULT_PACKAGES,
        "Packages to install (repeatable; 'a b,c' lists several).",
        flags=("--package", "--packages", "-p"),
        metavar="NAME",
        split=True,
        in_manifest=True,
    )
    hostname: str = option("archlinux", "Host name of the new system.", metavar="NAME", in_manifest=True)
    timezone: str = option("UTC", "Zoneinfo name, e.g. Europe/Berlin.", metavar="ZONE", in_manifest=True)
    locale: str = option("en_US.UTF-8", "Locale with charset, e.g. de_DE.UTF-8.", metavar="LOCALE", in_manifest=True)
    keymap: str = option("us", "Console keymap for vconsole.conf.", metavar="KEYMAP", in_manifest=True)
    services: tuple[str, ...] = option(
        (),
        "systemd unit to enable in the installed system (repeatable), e.g. sshd.",
        flags=("--enable-service",),
        metavar="NAME",
        in_manifest=True,
    )
    users: tuple[User, ...] = option(
        (),
        "Users to create: [[users]] tables with name, groups, sudo, shell, password_hash, authorized_keys, "
        "authorized_keys_files (README 'A dev box').",
        in_cli=False,
        parse=parse_users,
    )
    files: tuple[CopiedFile, ...] = option(
        (), "Host files to copy in: [[files]] tables with source, path, mode, owner.", in_cli=False, parse=parse_files
    )
    commands: tuple[str, ...] = option(
        (),
        "Shell commands run in the chroot after everything else, in order, each its own step.",
        in_cli=False,
        in_manifest=True,
    )
    pacman_sandbox: bool = option(
        True,
        "pacman 7's download sandbox in the installed system, on as Arch ships it; off if pacman reports a Landlock "
        "error (docs/pacman7.md).",
    )
    mirror: str | None = option(
        None, "Arch mirror for the guest, e.g. https://geo.mirror.pkgbuild.com (mirror= on the ISO's kernel command line).",
        metavar="URL", in_manifest=True,
    )  # fmt: skip
    snapshot: str | None = option(
        None,
        "Pin the packages to the Arch Linux Archive's repositories of that day, for the install and in the box's mirrorlist.",
        metavar="YYYY-MM-DD",
        in_manifest=True,
    )
    archive_url: str = option(
        "https://archive.archlinux.org", "The Arch Linux Archive (or a copy of it) that --snapshot reads.", metavar="URL"
    )
    cache_packages: bool = option(
        True, "Share a package cache with the guest, so that a second build downloads nothing it already has."
    )
    package_cache: Path | None = option(
        None, "The package cache directory.", metavar="DIR", default_text="$XDG_CACHE_HOME/provision-arch/pkg",
        in_file=False, not_in_file="a config file may not choose a host directory that the guest can write",
    )  # fmt: skip
    memory: int = option(2048, "Guest memory in MiB.", metavar="MIB")
    cpus: int = option(2, "Guest CPUs.", metavar="N")
    accel: Accel = option(
        Accel.AUTO, "auto: KVM when usable, falling back to TCG if the guest stays silent.", metavar="auto|kvm|tcg"
    )
    install_via: InstallVia = option(
        InstallVia.STREAM,
        "stream: the guest builds the tree on a scratch disk and sends one checked tar that the host unpacks "
        "(pacstrap's files stay off 9p: faster, the more files the more); 9p: the guest writes the tree over the share "
        "(resumable).",
        metavar="9p|stream",
    )
    refresh_keyring: bool = option(True, "Update archlinux-keyring in the live system before pacstrap (old ISOs need it).")
    keep_keyring: bool = option(
        True,
        "Keep the live system's pacman keyring (public keys and trust, no secret) in the user's cache, made once per "
        "ISO: the next install from the same ISO starts from it instead of making it again (docs/trust.md).",
    )
    timeout_scale: float = option(1.0, "Multiply every timeout (slow machines, big package sets).", metavar="X")
    log: Path | None = option(
        None, "Console transcript file.", metavar="FILE", default_text="console.log in the box's workspace",
        in_file=False, not_in_file="a config file may not choose a host file that the guest's output is written to",
    )  # fmt: skip
    force: bool = option(
        False, "Install into a non-empty target directory.",
        in_file=False, not_in_file="a config file may not make provision-arch write over a directory's contents",
    )  # fmt: skip
    password_file: Path | None = option(
        None,
        "File whose first line is the root password (hashed on the host, never sent).",
        metavar="FILE",
        envvar="PROVISION_ARCH_PASSWORD_FILE",
    )
    # Never printed: the dataclass repr leaves it out, and nothing logs it.
    password_hash: str = field(
        default="",
        repr=False,
        metadata={
            "option": Option(
                "Root password as a crypt hash ($6$… from `openssl passwd -6`).",
                metavar="HASH",
                envvar="PROVISION_ARCH_PASSWORD_HASH",
                in_file=False,
                not_in_file="a config file may not hold the root password's hash (it is shared and kept)",
                secret=True,
                instead=("password_file",),
            )
        },
    )

    @property
    def password_hashes(self) -> tuple[str, ...]:
        """Every password hash of the run (root's and the users'): never shown anywhere."""
        return tuple(h for h in (self.password_hash, *(user.password_hash for user in self.users)) if h)

    @property
    def locale_gen_line(self) -> str:
        """The /etc/locale.gen line for the locale, e.g. ``en_US.UTF-8 UTF-8``."""
        match = LOCALE_RE.match(self.locale)
        assert match is not None  # validated in __post_init__
        return f"{self.locale} {match['charset']}"

    @property
    def guest_mirror(self) -> str | None:
        """The mirror the live system uses: the snapshot's day in the archive, or --mirror."""
        if self.snapshot is None:
            return self.mirror
        return f"{self.archive_url.rstrip('/')}/repos/{self.snapshot.replace('-', '/')}"

    def __post_init__(self) -> None:
        _check(HOSTNAME_RE, self.hostname, "hostname", "letters, digits and '-', e.g. 'devbox'")
        _check(LOCALE_RE, self.locale, "locale", "a name from /etc/locale.gen with its charset, e.g. 'en_US.UTF-8'")
        _check(TIMEZONE_RE, self.timezone, "timezone", "a zoneinfo name, e.g. 'Europe/Berlin' or 'UTC'")
        if ".." in self.timezone:
            raise UsageError(f"invalid timezone {self.timezone!r}", "a zoneinfo name, e.g. 'Europe/Berlin'")
        _check(KEYMAP_RE, self.keymap, "keymap", "a console keymap name, e.g. 'us' or 'de-latin1'")
        if not self.packages:
            raise UsageError("no packages to install", "give --package NAME, or leave the default set")
        for name in self.packages:
            _check(PACKAGE_RE, name, "package name", "pacman package names use a-z 0-9 @ . _ + -")
        if self.mirror is not None:
            _check(MIRROR_RE, self.mirror, "mirror URL", "e.g. https://geo.mirror.pkgbuild.com (no $repo/os/$arch)")
        _check(MIRROR_RE, self.archive_url, "archive URL", "e.g. https://archive.archlinux.org")
        if self.snapshot is not None:
            _check(SNAPSHOT_RE, self.snapshot, "snapshot day", "a day as YYYY-MM-DD, e.g. 2026-11-01")
            if self.mirror is not None:
                raise UsageError("--snapshot and --mirror both choose the guest's mirror", "give one of them")
        check_hardware(self.memory, self.cpus)
        if not 0.1 <= self.timeout_scale <= 100:
            raise UsageError(f"timeout scale {self.timeout_scale} is out of range", "give --timeout-scale between 0.1 and 100")
        self._check_devbox()

    def _check_devbox(self) -> None:
        """The dev box's keys: each value on its own (users, files check themselves), then across them."""
        for i, name in enumerate(self.services):
            validate.unit(name, f"services[{i}]")
        for i, command in enumerate(self.commands):
            validate.command(command, f"commands[{i}]")
        for key, items, kind in (("users", self.users, User), ("files", self.files, CopiedFile)):
            for item in items:
                if not isinstance(item, kind):
                    raise UsageError(f"config key {key}: {item!r} is not a table", "see README 'A dev box'")
        check_users(self.users)
        # Two writers of one guest path: a copied file and another, or a user's own file.
        written = {file.guest_path: f"{user.key} ({file.guest_path})" for user in self.users for file in user.staged_files()}
        for copied in self.files:
            if copied.path in written:
                raise validate.refuse(
                    f"{copied.key}.path", f"{str(copied.path)!r} is also written for {written[copied.path]}", "drop one of them"
                )
            written[copied.path] = copied.key


def check_hardware(memory: int, cpus: int) -> None:
    if not 512 <= memory <= 1024 * 1024:
        raise UsageError(f"memory {memory} MiB is out of range", "give --memory in MiB, at least 512")
    if not 1 <= cpus <= 256:
        raise UsageError(f"cpus {cpus} is out of range", "give --cpus between 1 and 256")


def _share(value: Any, base: Path, key: str) -> tuple[Share, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(attach.parse_share(item, f"{key}[{i}]", base) for i, item in enumerate(items))


def _forward(value: Any, base: Path, key: str) -> tuple[Forward, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(attach.from_file(attach.parse_forward(item, f"{key}[{i}]"), f"{key}[{i}]") for i, item in enumerate(items))


def _ssh_port(value: Any, base: Path, key: str) -> Forward:
    return attach.from_file(attach.parse_ssh_port(value, key), key)


@dataclass(frozen=True)
class BootConfig:
    """How an installed box boots: the options ``boot`` and ``run`` share, and the config
    file's ``[boot]`` table (the second option table; ``Config`` is the install's)."""

    memory: int = option(2048, "Guest memory in MiB.", metavar="MIB")
    cpus: int = option(2, "Guest CPUs.", metavar="N")
    accel: Accel = option(Accel.AUTO, "auto: KVM when /dev/kvm is usable and the CPU has VT-x/AMD-V.", metavar="auto|kvm|tcg")
    machine: MachineType = option(
        MachineType.PC, "QEMU machine type: pc (i440FX, as the install uses; NIC ens3) or q35 (PCIe; NIC enp0s2).",
        metavar="pc|q35",
    )  # fmt: skip
    fs: RootFs = option(
        RootFs.NINEP, "How the root and the shares reach the box: QEMU's 9p, or virtiofs (faster; needs virtiofsd, see "
        "doctor).", metavar="9p|virtiofs",
    )  # fmt: skip
    shares: tuple[Share, ...] = option(
        (), "Mount a host directory at GUEST in the box, read-only with :ro (repeatable; in a config file read-only "
        "and inside its directory).", flags=("--share",), metavar="HOST:GUEST[:ro]", parse=_share, from_text=attach.parse_share,
    )  # fmt: skip
    forwards: tuple[Forward, ...] = option(
        (), "Forward a host port to the box, on 127.0.0.1 unless an address is given (repeatable; a config file "
        "forwards on 127.0.0.1 only).",
        flags=("--forward",), metavar="[ADDRESS:]HOSTPORT:GUESTPORT[/udp]", parse=_forward,
        from_text=attach.parse_forward,
    )  # fmt: skip
    ssh_port: Forward | None = option(
        None, "Forward this host port to the box's SSH port 22, on 127.0.0.1 unless an address is given "
        "(0.0.0.0:2222 listens on every interface).", metavar="[ADDRESS:]PORT", parse=_ssh_port,
        from_text=attach.parse_ssh_port,
    )  # fmt: skip

    ephemeral: bool = option(
        False, "Throwaway boot: the box's writes go to a scratch disk that is deleted after it, and its tree stays as it "
        "was; several may run on one box at once (root over 9p, read-only on the host).",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_hardware(self.memory, self.cpus)
        if self.ephemeral and self.fs is RootFs.VIRTIOFS:
            raise UsageError(
                "--ephemeral takes the root over 9p: QEMU holds it read-only on the host, which a virtiofsd cannot everywhere",
                "drop --fs virtiofs, or boot without --ephemeral",
            )

    @property
    def all_forwards(self) -> tuple[Forward, ...]:
        return (*self.forwards, *((self.ssh_port,) if self.ssh_port else ()))


def _check(pattern: re.Pattern[str], value: str, what: str, hint: str) -> None:
    # fullmatch: `$` alone also matches before a trailing newline, which would slip through.
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise UsageError(f"invalid {what} {value!r}", hint)


@dataclass(frozen=True)
class OptionField:
    """One row of the option table: a Config field with its resolved type and default."""

    name: str
    type: Any  # the resolved annotation, e.g. tuple[str, ...] or Path | None
    default: Any
    option: Option

    @property
    def flags(self) -> tuple[str, ...]:
        """Its command-line flags (none for a config-file-only key); a switch that is on by
        default also has its --no- form."""
        if not self.option.in_cli:
            return ()
        flags = self.option.flags or ("--" + self.name.replace("_", "-"),)
        if self.base_type is bool and self.default is True:
            flags = (*flags, "--no-" + flags[0].removeprefix("--"))
        return flags

    @property
    def base_type(self) -> Any:
        """The type without ``| None`` and without the tuple around repeatable values."""
        args = [arg for arg in typing.get_args(self.type) if arg is not type(None)]
        if typing.get_origin(self.type) is tuple:
            return args[0]
        return args[0] if args and typing.get_origin(self.type) is not None else self.type

    @property
    def repeatable(self) -> bool:
        return typing.get_origin(self.type) is tuple


@cache
def option_table(of: type = Config) -> tuple[OptionField, ...]:
    """The options of ``Config`` (the install's), or of ``BootConfig`` (boot's and run's)."""
    hints = typing.get_type_hints(of)
    return tuple(
        OptionField(f.name, hints[f.name], f.default, f.metadata["option"])
        for f in dataclasses.fields(of)
        if "option" in f.metadata
    )


def box_record(cfg: Config) -> dict[str, Any]:
    """What defines the box (the options marked in_manifest), as JSON values: no secrets, no host paths."""
    return {
        row.name: list(value) if isinstance(value, tuple) else value
        for row in option_table()
        if row.option.in_manifest and (value := getattr(cfg, row.name)) is not None
    }


def safe_ways(row: OptionField) -> str:
    """How to give a secret option safely: its environment variable, or the options it names instead."""
    rows = {other.name: other for other in option_table()}
    ways = [f"set {row.option.envvar}"] if row.option.envvar else []
    ways += [f"use {rows[name].flags[0]} {rows[name].option.metavar}" for name in row.option.instead]
    return " or ".join(ways)


def secret_in_argv(row: OptionField) -> str:
    """The warning for a secret option given as a flag: where it shows, and the safe ways to give it."""
    return (
        f"{row.flags[0]} puts its value in provision-arch's command line, which other users of this host can read "
        f"(/proc/PID/cmdline) and your shell may keep in its history; {safe_ways(row)} instead"
    )


def config_keys(of: type = Config) -> frozenset[str]:
    return frozenset(row.name for row in option_table(of) if row.option.in_file)


def split_packages(values: list[str]) -> tuple[str, ...]:
    """Accept ``--package a --package b``, ``--package "a b"`` and ``"a,b"`` alike."""
    return tuple(name for value in values for name in value.replace(",", " ").split())


def _from_file(row: OptionField, value: Any, base: Path) -> Any:
    """A TOML value for one option, as the Config field wants it, or a UsageError naming the key."""
    if row.option.parse is not None:
        return row.option.parse(value, base, row.name)
    kind = row.base_type

    def wrong(expected: str) -> UsageError:
        hint = f"see README 'Config file': {row.option.help}"
        return UsageError(f"config key {row.name!r} must be {expected}, not {value!r}", hint)

    def one(item: Any) -> Any:
        if kind is Path:
            if not isinstance(item, str):
                raise wrong("a path string")
            # Inside the config file's directory, as every host path of a config (validate.host_path).
            flag = f"{row.flags[0]} {row.option.metavar}"
            return validate.host_path(item, base, row.name, f", or pass {flag} on the command line")
        if kind is bool:
            if not isinstance(item, bool):
                raise wrong("true or false")
            return item
        if kind is int:
            if isinstance(item, bool) or not isinstance(item, int):
                raise wrong("a whole number")
            return item
        if kind is float:
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise wrong("a number")
            return float(item)
        if isinstance(kind, type) and issubclass(kind, StrEnum):
            if item not in list(kind):
                raise wrong("one of " + ", ".join(kind))
            return kind(item)
        if not isinstance(item, str):
            raise wrong("a string")
        return item

    if not row.repeatable:
        return one(value)
    items = value if isinstance(value, list) else [value]
    converted = [one(item) for item in items]
    return split_packages(converted) if row.option.split else tuple(converted)


def load_file(path: Path, of: type = Config) -> dict[str, Any]:
    """Read a TOML config file: the install's keys (``of=Config``) or its ``[boot]`` table's
    (``of=BootConfig``). Unknown keys are an error, so typos do not pass silently; the install
    checks the ``[boot]`` table too, so that its errors come before a long install."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}", "check the --config path") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}", "see README 'Config file'") from exc
    boot = data.pop(BOOT_TABLE, {})
    if not isinstance(boot, dict):
        raise UsageError(f"config key {BOOT_TABLE!r} in {path} must be a table ([{BOOT_TABLE}])", "see docs/options.md")
    booting = _values(boot, BootConfig, path, f"[{BOOT_TABLE}] ")
    return booting if of is BootConfig else _values(data, Config, path, "")


def _values(data: dict[str, Any], of: type, path: Path, where: str) -> dict[str, Any]:
    keys = config_keys(of)
    rows = {row.name: row for row in option_table(of)}
    for key in sorted(set(data) & set(rows) - keys):
        row = rows[key]
        flag = " ".join(filter(None, (row.flags[0], row.option.metavar)))
        hint = safe_ways(row) if row.option.secret else f"pass {flag} on the command line"
        raise UsageError(f"config key {key!r} is taken only from the command line: {row.option.not_in_file}", hint)
    unknown = sorted(set(data) - keys)
    if unknown:
        raise UsageError(f"unknown key(s) in {where}{path}: {', '.join(unknown)}", f"known keys: {', '.join(sorted(keys))}")
    return {key: _from_file(rows[key], value, path.parent) for key, value in data.items()}


def merge(cli: Mapping[str, Any], file: Mapping[str, Any]) -> dict[str, Any]:
    """Command-line values win over the config file; ``None`` means 'not given'."""
    merged = dict(file)
    merged.update({key: value for key, value in cli.items() if value is not None})
    return merged


def build(values: Mapping[str, Any]) -> Config:
    """Make a Config from merged values, turning type errors into usage errors."""
    try:
        return Config(**_typed(values, Config))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"invalid configuration: {exc}", "see provision-arch --help") from exc


def build_boot(values: Mapping[str, Any]) -> BootConfig:
    """Make a BootConfig from merged values, as ``build``."""
    try:
        return BootConfig(**_typed(values, BootConfig))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"invalid configuration: {exc}", "see provision-arch boot --help") from exc


def _typed(values: Mapping[str, Any], of: type) -> dict[str, Any]:
    """Numbers and choices given as text (a manifest, a test) in their field's type."""
    rows = {row.name: row for row in option_table(of)}
    typed = dict(values)
    for key, value in values.items():
        row = rows.get(key)
        if value is None or row is None or row.repeatable or row.option.parse is not None:
            continue
        if row.base_type in (int, float) or (isinstance(row.base_type, type) and issubclass(row.base_type, StrEnum)):
            typed[key] = row.base_type(value)
    return typed


def defaults_shown(of: type = Config) -> Iterator[tuple[OptionField, str]]:
    """Each option with its default as the README and --help show it ('' when none)."""
    for row in option_table(of):
        default = row.default
        if row.option.default_text:
            yield row, row.option.default_text
        elif default in (None, (), "") or (row.base_type is bool and default is False):
            yield row, ""
        elif isinstance(default, tuple):
            yield row, " ".join(map(str, default))
        elif isinstance(default, bool):
            yield row, "on"
        else:
            yield row, str(default)

"""The resolved, validated configuration of one run.

Every user value that later reaches a guest shell (hostname, locale, timezone, keymap,
package names, mirror URL) is checked here, once, against a strict pattern. The guest
commands still quote everything with ``shlex.quote``: validation keeps nonsense out and
makes errors early and clear, quoting keeps the shell safe.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from provisioner.errors import UsageError

DEFAULT_PACKAGES = ("base", "base-devel", "linux", "vim", "man-db", "man-pages")

HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", re.I)
# ll_CC.CHARSET with an optional @modifier, as the names in Arch's /etc/locale.gen.
LOCALE_RE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?\.(?P<charset>[A-Za-z0-9-]+)(@[a-z]+)?$")
TIMEZONE_RE = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+){0,2}$")
KEYMAP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# pacman's rule for package names: no leading hyphen or dot.
PACKAGE_RE = re.compile(r"^[a-z0-9@_+][a-z0-9@._+-]{0,126}$")
# The mirror goes on the kernel command line (mirror=…): no spaces, quotes or shell syntax.
MIRROR_RE = re.compile(r"^(https?|ftp|file)://[A-Za-z0-9._~:/%@+-]+$")


class Accel(StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class Config:
    target: Path
    iso: Path | None = None
    iso_mirror: str | None = None
    iso_version: str | None = None
    trusted_keys: tuple[Path, ...] = ()
    packages: tuple[str, ...] = DEFAULT_PACKAGES
    hostname: str = "archlinux"
    timezone: str = "UTC"
    locale: str = "en_US.UTF-8"
    keymap: str = "us"
    mirror: str | None = None
    memory: int = 2048
    cpus: int = 2
    accel: Accel = Accel.AUTO
    log: Path | None = None
    force: bool = False
    refresh_keyring: bool = True
    timeout_scale: float = 1.0
    # Never printed: the dataclass repr leaves it out, and nothing logs it.
    password_hash: str = field(default="", repr=False)

    @property
    def locale_gen_line(self) -> str:
        """The /etc/locale.gen line for the locale, e.g. ``en_US.UTF-8 UTF-8``."""
        match = LOCALE_RE.match(self.locale)
        assert match is not None  # validated in __post_init__
        return f"{self.locale} {match['charset']}"

    @property
    def state_dir(self) -> Path:
        """Where the run keeps its files inside the target (transcript, staged files)."""
        return self.target / ".provision-arch"

    @property
    def transcript(self) -> Path:
        return self.log or self.state_dir / "console.log"

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
        if not 512 <= self.memory <= 1024 * 1024:
            raise UsageError(f"memory {self.memory} MiB is out of range", "give --memory in MiB, at least 512")
        if not 1 <= self.cpus <= 256:
            raise UsageError(f"cpus {self.cpus} is out of range", "give --cpus between 1 and 256")
        if not 0.1 <= self.timeout_scale <= 100:
            raise UsageError(f"timeout scale {self.timeout_scale} is out of range", "give --timeout-scale between 0.1 and 100")


def _check(pattern: re.Pattern[str], value: str, what: str, hint: str) -> None:
    if not pattern.match(value):
        raise UsageError(f"invalid {what} {value!r}", hint)


def split_packages(values: list[str]) -> tuple[str, ...]:
    """Accept both ``--package a --package b`` and ``--packages "a b"`` forms."""
    return tuple(name for value in values for name in value.replace(",", " ").split())


CONFIG_KEYS = {f.name for f in fields(Config)} - {"target", "password_hash", "force", "log"} | {"password_file"}


def load_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file; unknown keys are an error, so typos do not pass silently."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}", "check the --config path") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}", "see README 'Config file'") from exc
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise UsageError(f"unknown key(s) in {path}: {', '.join(unknown)}", f"known keys: {', '.join(sorted(CONFIG_KEYS))}")
    base = path.parent
    for key in ("iso", "password_file"):
        if key in data:
            data[key] = base / os.path.expanduser(str(data[key]))
    if "trusted_keys" in data:
        keys = data["trusted_keys"]
        data["trusted_keys"] = tuple(base / os.path.expanduser(str(k)) for k in (keys if isinstance(keys, list) else [keys]))
    if "packages" in data:
        value = data["packages"]
        data["packages"] = split_packages(value if isinstance(value, list) else [str(value)])
    return data


def merge(cli: Mapping[str, Any], file: Mapping[str, Any]) -> dict[str, Any]:
    """Command-line values win over the config file; ``None`` means 'not given'."""
    merged = dict(file)
    merged.update({key: value for key, value in cli.items() if value is not None})
    return merged


def build(values: Mapping[str, Any]) -> Config:
    """Make a Config from merged values, turning type errors into usage errors."""
    kwargs = dict(values)
    kwargs.pop("password_file", None)
    try:
        if "accel" in kwargs:
            kwargs["accel"] = Accel(kwargs["accel"])
        for key in ("memory", "cpus"):
            if key in kwargs:
                kwargs[key] = int(kwargs[key])
        if "timeout_scale" in kwargs:
            kwargs["timeout_scale"] = float(kwargs["timeout_scale"])
        return Config(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"invalid configuration: {exc}", "see provision-arch --help") from exc

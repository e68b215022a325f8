"""Host files copied into the dev box: the ``[[files]]`` tables of a config file.

Each names a host ``source`` (inside the config file's directory: ``validate.host_path``),
a guest ``path``, a ``mode`` and an ``owner``. The source is checked when the config is read
and read once, without following a link, when the run is built; it reaches the guest as a
``StagedFile`` that the guest installs with its mode and owner (in the chroot, so that the
owner may be a configured user).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from provisioner import validate
from provisioner.staged import StagedFile

FIELDS = ("source", "path", "mode", "owner")
MAX_SIZE = 64 << 20  # bytes: files are held in memory once, and this is no way to copy big trees


@dataclass(frozen=True)
class CopiedFile:
    source: Path  # on the host
    path: PurePosixPath  # in the installed system
    mode: int = 0o644
    owner: str = "root:root"
    key: str = field(default="files", compare=False, repr=False)

    def __post_init__(self) -> None:
        validate.guest_path(str(self.path), f"{self.key}.path")
        validate.mode(self.mode, f"{self.key}.mode")
        validate.owner(self.owner, f"{self.key}.owner")
        check_source(self.source, f"{self.key}.source")

    def staged(self) -> StagedFile:
        key = f"{self.key}.source"
        try:
            # No link followed and a regular file only: the path was checked resolved, and a
            # link or FIFO put there since must not make it read something else (or block).
            fd = os.open(self.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise validate.refuse(key, f"cannot read {self.source}: {exc.strerror}", "check the file") from exc
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SIZE:
                problem = f"{self.source} is no longer a regular file of at most {MAX_SIZE >> 20} MiB"
                raise validate.refuse(key, problem, "check the file")
            data = handle.read(MAX_SIZE + 1)
        return StagedFile(self.path, data, self.mode, self.owner, area="files")


def check_source(source: Path, key: str) -> None:
    if not source.is_file():
        what = "is a directory" if source.is_dir() else "does not exist"
        raise validate.refuse(key, f"{source} {what}", "give a regular file, inside the config file's directory")
    if source.stat().st_size > MAX_SIZE:
        raise validate.refuse(key, f"{source} is larger than {MAX_SIZE >> 20} MiB", "copy big trees with a command instead")


def parse_files(value: Any, base: Path, key: str) -> tuple[CopiedFile, ...]:
    """The ``files`` key of a config file: a list of tables, ``[[files]]`` in TOML."""
    return validate.tables(value, base, key, "files", parse_file)


def parse_file(table: Any, base: Path, key: str) -> CopiedFile:
    table = validate.table(table, key, FIELDS, "source and path")
    for required in ("source", "path"):
        if required not in table:
            raise validate.refuse(key, f"has no {required}", 'source = "motd.txt" and path = "/etc/motd"')
    return CopiedFile(
        source=validate.host_path(table["source"], base, f"{key}.source"),
        path=validate.guest_path(table["path"], f"{key}.path"),
        mode=validate.mode(table.get("mode", 0o644), f"{key}.mode"),
        owner=validate.owner(table.get("owner", "root:root"), f"{key}.owner"),
        key=key,
    )

"""Host files copied into the dev box: the ``[[files]]`` tables of a config file.

Each names a host ``source`` (relative to the config file), a guest ``path``, a ``mode``
and an ``owner``. The source is checked when the config is read and read once when the run
is built; it reaches the guest as a ``StagedFile`` that the guest installs with its mode and
owner (in the chroot, so that the owner may be a configured user).
"""

from __future__ import annotations

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
        try:
            data = self.source.read_bytes()
        except OSError as exc:
            raise validate.refuse(f"{self.key}.source", f"cannot read {self.source}: {exc.strerror}", "check the file") from exc
        return StagedFile(self.path, data, self.mode, self.owner, area="files")


def check_source(source: Path, key: str) -> None:
    if not source.is_file():
        what = "is a directory" if source.is_dir() else "does not exist"
        raise validate.refuse(key, f"{source} {what}", "give a regular file; paths are relative to the config file")
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
    source = validate.string(table["source"], f"{key}.source", "a host path")
    return CopiedFile(
        source=base / Path(source).expanduser(),
        path=validate.guest_path(table["path"], f"{key}.path"),
        mode=validate.mode(table.get("mode", 0o644), f"{key}.mode"),
        owner=validate.owner(table.get("owner", "root:root"), f"{key}.owner"),
        key=key,
    )

"""A sandbox for hostile-archive tests of provisioner.unpack: an empty target among canaries.

Layout under ``root``::

    canaries/canary           a file the archives aim at
    canaries/sub/deep         another, one level down
    canaries/to_canary        -> canaries/canary (absolute)
    canaries/to_outside       -> .. (relative, out of canaries/)
    box/target/               the empty target
    box/to_canaries           -> ../canaries: a symlink beside the target, pointing out of it
    stream.tar                the archive under test (excluded from the comparison)

``snapshot()`` records everything outside ``box/target`` (types, modes, owners, sizes,
mtimes, contents, link targets, directory listings); two snapshots differ if anything
outside the target was created, deleted, written, truncated, re-linked or chmod'ed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from functools import cache
from pathlib import Path

Record = tuple[object, ...]


@cache
def userns_works() -> bool:
    """Whether ``unshare --map-auto --map-root-user`` works for the current user (it needs /etc/subuid)."""
    try:
        argv = ["unshare", "--map-auto", "--map-root-user", "true"]
        result = subprocess.run(argv, capture_output=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def extract_as_root() -> bool:
    """The ``as_root`` an extraction test uses: a user namespace when it works, else real root (then we are root)."""
    return not userns_works()


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.canaries = root / "canaries"
        self.box = root / "box"
        self.target = self.box / "target"
        self.archive = root / "stream.tar"
        (self.canaries / "sub").mkdir(parents=True)
        (self.canaries / "canary").write_text("canary\n")
        (self.canaries / "sub/deep").write_text("deep\n")
        (self.canaries / "to_canary").symlink_to(self.canaries / "canary")
        (self.canaries / "to_outside").symlink_to("..")
        self.target.mkdir(parents=True)
        (self.box / "to_canaries").symlink_to("../canaries")
        self.archive.write_bytes(b"")
        self.target_mode = stat.S_IMODE(self.target.stat().st_mode)
        self.owner = (self.target.stat().st_uid, self.target.stat().st_gid)
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, Record]:
        """Everything under the root but the target's contents and the archive, as comparable records."""
        records: dict[str, Record] = {}
        for directory, dirs, files in os.walk(self.root):
            for name in sorted([*dirs, *files]):
                path = os.path.join(directory, name)
                if path == str(self.archive) or path.startswith(str(self.target) + os.sep):
                    continue
                info = os.lstat(path)
                if path == str(self.target):  # the unpack may change it (its "./" member); it must stay a directory
                    records[os.path.relpath(path, self.root)] = (stat.S_IFMT(info.st_mode),)
                    continue
                record: Record = (info.st_mode, info.st_uid, info.st_gid, info.st_size, info.st_nlink, info.st_mtime_ns)
                if stat.S_ISREG(info.st_mode):
                    record += (Path(path).read_bytes(),)
                elif stat.S_ISLNK(info.st_mode):
                    record += (os.readlink(path),)
                elif stat.S_ISDIR(info.st_mode):
                    record += (tuple(sorted(os.listdir(path))),)
                records[os.path.relpath(path, self.root)] = record
            dirs[:] = [name for name in dirs if os.path.join(directory, name) != str(self.target)]
        info = os.lstat(self.root)
        records["."] = (info.st_mode, info.st_mtime_ns, tuple(sorted(os.listdir(self.root))))
        return records

    def changes(self) -> list[str]:
        """What differs outside the target since the sandbox was made (empty when nothing)."""
        after = self.snapshot()
        return sorted(
            f"{path}: {self.before.get(path)} -> {after.get(path)}"
            for path in set(self.before) | set(after)
            if self.before.get(path) != after.get(path)
        )

    def target_is_pristine(self) -> bool:
        """The target is still an empty directory with its first mode (what a refusal must leave)."""
        info = os.lstat(self.target)
        pristine = stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == self.target_mode
        return pristine and (info.st_uid, info.st_gid) == self.owner and not os.listdir(self.target)

    def empty_target(self) -> None:
        """Remove what an accepted archive wrote, without following any link it made."""
        for directory, dirs, _ in os.walk(self.target):  # modes like 0000 would stop rmtree as non-root
            for name in dirs:
                path = os.path.join(directory, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o700)
        os.chmod(self.target, 0o700)
        for entry in os.scandir(self.target):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        os.chmod(self.target, self.target_mode)
        if os.geteuid() == 0:
            os.chown(self.target, self.owner[0], self.owner[1])

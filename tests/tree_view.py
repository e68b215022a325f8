"""Every entry of a tree as one JSON object per line: path, type, mode, owner, link target,
extended attributes and a digest of the content; a path and its names left out by pattern.

Standard library only, so that it runs as any user with the system's python3, inside the
user namespace a box's ids are mapped back in: ``unshare --map-auto --map-root-user python3
tree_view.py TREE [PATTERN]...``. There it sees the tree as the box does (and as an export
packs it): the box's own ids, and ACLs and file capabilities translated by the kernel.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat
import sys
import tarfile
from pathlib import Path


def entries(base: Path, left_out: tuple[str, ...] = ()) -> dict[str, list[object]]:
    """./path -> [type, mode, uid, gid, link target, {attribute: hex value}, sha256 of the content]."""
    found: dict[str, list[object]] = {}
    for directory, names, files in os.walk(base):
        for name in sorted(names + files):
            path = Path(directory, name)
            rel = "./" + str(path.relative_to(base))
            if any(fnmatch.fnmatchcase(rel, f"./{pattern}") for pattern in left_out):
                if name in names:
                    names.remove(name)
                continue
            found[rel] = describe(path)
    found["."] = describe(base)
    return found


def describe(path: Path) -> list[object]:
    info = path.lstat()
    link = os.readlink(path) if stat.S_ISLNK(info.st_mode) else ""
    attributes = {} if link else {n: os.getxattr(path, n, follow_symlinks=False).hex() for n in os.listxattr(path)}
    content = ""
    if stat.S_ISREG(info.st_mode):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        content = digest.hexdigest()
    return [stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, link, attributes, content]


KINDS = {tarfile.REGTYPE: stat.S_IFREG, tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK,
         tarfile.FIFOTYPE: stat.S_IFIFO, tarfile.LNKTYPE: stat.S_IFREG, tarfile.CHRTYPE: stat.S_IFCHR,
         tarfile.BLKTYPE: stat.S_IFBLK}  # fmt: skip
XATTR = "SCHILY.xattr."


def archived(tar: tarfile.TarFile) -> dict[str, list[object]]:
    """The same for the members of a tarball (pax attributes; a hard link has its target's content)."""
    found: dict[str, list[object]] = {}
    links = {}
    for member in tar.getmembers():
        attributes = {
            key.removeprefix(XATTR): value.encode("utf-8", "surrogateescape").hex()
            for key, value in member.pax_headers.items()
            if key.startswith(XATTR)
        }
        content = ""
        if member.isreg() and (handle := tar.extractfile(member)) is not None:
            digest = hashlib.sha256()
            while block := handle.read(1 << 20):
                digest.update(block)
            content = digest.hexdigest()
        if member.islnk():
            links[member.name] = member.linkname
        link = member.linkname if member.issym() else ""
        found[member.name] = [KINDS[member.type], member.mode, member.uid, member.gid, link, attributes, content]
    for name, target in links.items():
        found[name][6] = found[target][6]
    return found


if __name__ == "__main__":
    for key, value in sorted(entries(Path(sys.argv[1]), tuple(sys.argv[2:])).items()):
        print(json.dumps([key, value]))

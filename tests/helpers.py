"""Small builders shared by the test layers: archiso-like ISOs, password files, SSH public keys;
the tables of figures a test reports."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import pycdlib
import pytest

from provisioner.workspace import Workspace

UUID = "2026-11-01-10-20-30-00"


def installed_box(tmp_path: Path) -> Path:
    """TMP/base with what makes a directory bootable to provision-arch: a kernel and an initramfs."""
    base = tmp_path / "base"
    (base / "boot").mkdir(parents=True)
    (base / "boot/vmlinuz-linux").write_bytes(b"k")
    (base / "boot/initramfs-linux.img").write_bytes(b"i")
    return base


def make_iso(
    path: Path, label: str = "ARCH_202611", uuid: str | None = UUID, microcode: bool = False, kernel: bool = True
) -> Path:
    """A tiny ISO 9660 image laid out like archiso's (Rock Ridge names, /boot/UUID.uuid)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", vol_ident=label)
    for directory in ("/BOOT", "/ARCH", "/ARCH/BOOT", "/ARCH/BOOT/X86_64"):
        iso.add_directory(directory, rr_name=directory.rsplit("/", 1)[1].lower())
    files = {"/ARCH/BOOT/X86_64/INITRAMF.IMG;1": ("initramfs-linux.img", b"INITRAMFS")}
    if kernel:
        files["/ARCH/BOOT/X86_64/VMLINUZ.;1"] = ("vmlinuz-linux", b"KERNEL")
    if uuid:
        files["/BOOT/UUID.;1"] = (f"{uuid}.uuid", b"")
    if microcode:
        files["/ARCH/BOOT/INTELUC.IMG;1"] = ("intel-ucode.img", b"INTEL")
        files["/ARCH/BOOT/AMDUC.IMG;1"] = ("amd-ucode.img", b"AMD")
    for iso_path, (rr_name, data) in files.items():
        iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=rr_name)
    iso.write(str(path))
    iso.close()
    return path


def password_file(directory: Path, password: str = "secret", mode: int = 0o600) -> Path:
    """A password file as a user writes it: the password, a newline."""
    path = directory / "root-password.txt"
    path.write_text(password + "\n")
    path.chmod(mode)
    return path


Entry = tuple[object, ...]


def tree(root: Path, skip: tuple[str, ...] = (".provision-arch",), content_skip: tuple[str, ...] = ()) -> dict[str, Entry]:
    """Every entry below ``root`` as (type, mode, uid, gid, size, sha256, link target, xattrs): what
    an install must reproduce exactly. ``content_skip`` names files compared without their content
    (nor its size): those whose bytes differ between any two installs."""
    entries: dict[str, Entry] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if name.split("/", maxsplit=1)[0] in skip:
            continue
        st = path.lstat()
        kind = stat.S_IFMT(st.st_mode)
        digest = ""
        if stat.S_ISREG(st.st_mode) and name not in content_skip:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        size = st.st_size if stat.S_ISREG(st.st_mode) and name not in content_skip else 0
        link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
        try:
            xattrs = {key: os.getxattr(path, key, follow_symlinks=False) for key in os.listxattr(path, follow_symlinks=False)}
        except OSError:
            xattrs = {}
        entries[name] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, digest, link, sorted(xattrs.items()))
    return entries


def differences(one: dict[str, Entry], two: dict[str, Entry]) -> list[str]:
    names = sorted(set(one) | set(two))
    return [f"{name}: {one.get(name)} != {two.get(name)}" for name in names if one.get(name) != two.get(name)]


def ssh_public_key(comment: str = "dev@laptop") -> str:
    """An authorized_keys line of the ed25519 form (type, 32 key bytes derived from the comment)."""
    kind = b"ssh-ed25519"
    key = hashlib.sha256(comment.encode()).digest()
    blob = len(kind).to_bytes(4, "big") + kind + len(key).to_bytes(4, "big") + key
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def staged_secrets(target: Path) -> list[Path]:
    """chpasswd files left in the target or its workspace (the stage lives in the workspace)."""
    return [*target.rglob("*.chpasswd"), *Workspace.of(target).root.rglob("*.chpasswd")]


def report(request: pytest.FixtureRequest, title: str, rows: Mapping[str, float]) -> None:
    """Attach a table of figures to the test's report. tests/conftest.py prints every such table
    at the end of the run: an xdist worker's own output is never shown."""
    width = max(map(len, rows), default=0)
    lines = [f"{title}:", *(f"  {name:<{width}} {value:9.1f}" for name, value in rows.items())]
    request.node.user_properties.append(("report", "\n".join(lines)))

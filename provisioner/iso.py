"""Read an Arch ISO with pycdlib: label, UUID, kernel and initramfs, no loop mount.

The boot files are extracted once into a cache directory keyed by the ISO's path, size
and modification time, so a second run with the same ISO reads nothing but the header.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from provisioner.errors import IsoError

BOOT_DIR = "/arch/boot/x86_64"
KERNEL = f"{BOOT_DIR}/vmlinuz-linux"
INITRAMFS = f"{BOOT_DIR}/initramfs-linux.img"
# ISOs before archiso v77 (2024.05) ship the microcode as separate images to prepend.
MICROCODE = ("/arch/boot/intel-ucode.img", "/arch/boot/amd-ucode.img")
UUID_RE = re.compile(r"^([0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9]{2}-[0-9]{2}-[0-9]{2}-[0-9]{2})\.uuid$")
LABEL_RE = re.compile(r"^ARCH_[0-9]{6}$")


@dataclass(frozen=True)
class BootFiles:
    label: str
    uuid: str | None
    kernel: Path
    initrd: Path
    """The initramfs to pass to QEMU; microcode images already prepended when the ISO had them."""

    def kernel_args(self) -> list[str]:
        """How the archiso hook finds this ISO: by UUID when it has one, else by label."""
        search = f"archisosearchuuid={self.uuid}" if self.uuid else f"archisolabel={self.label}"
        return ["archisobasedir=arch", search]


@dataclass(frozen=True)
class Release:
    """What an ISO says of itself: its volume label and the UUID archiso gave it (its build time)."""

    label: str
    uuid: str | None

    @property
    def version(self) -> str | None:
        """The release, YYYY.MM.DD, as the UUID dates it; None unless the label names the same month."""
        if self.uuid is None or self.label != f"ARCH_{self.uuid[:4]}{self.uuid[5:7]}":
            return None
        return self.uuid[:10].replace("-", ".")


def _release(cd: pycdlib.PyCdlib) -> Release:
    uuids = [m[1] for name in _names(cd, "/boot") if (m := UUID_RE.match(name))]
    return Release(cd.pvd.volume_identifier.decode(errors="replace").strip(), uuids[0] if uuids else None)


def _open(iso: Path) -> pycdlib.PyCdlib:
    cd = pycdlib.PyCdlib()
    try:
        cd.open(str(iso))
    except (OSError, PyCdlibException) as exc:
        raise IsoError(f"cannot read {iso} as an ISO 9660 image: {exc}", "give the Arch ISO with --iso") from exc
    return cd


def read_release(iso: Path) -> Release:
    """The label and UUID of ``iso`` (its header only)."""
    cd = _open(iso)
    try:
        return _release(cd)
    finally:
        cd.close()


def cache_key(iso: Path) -> str:
    stat = iso.stat()
    ident = f"{iso.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _names(cd: pycdlib.PyCdlib, path: str) -> list[str]:
    try:
        children = cd.list_children(rr_path=path)
    except PyCdlibException:
        return []
    names = []
    for child in children:
        if child is None or child.is_dot() or child.is_dotdot():
            continue
        if child.rock_ridge is not None:
            names.append(child.rock_ridge.name().decode())
        else:
            names.append(child.file_identifier().decode().split(";")[0].lower())
    return names


def _extract(cd: pycdlib.PyCdlib, rr_path: str, dest: Path) -> bool:
    try:
        cd.get_record(rr_path=rr_path)
    except PyCdlibException:
        return False
    with dest.open("wb") as out:
        cd.get_file_from_iso_fp(out, rr_path=rr_path)
    return True


def read_boot_files(iso: Path, cache_dir: Path) -> BootFiles:
    """Open the ISO, check it looks like Arch's, and return its cached boot files."""
    cd = _open(iso)
    try:
        if not cd.has_rock_ridge():
            raise IsoError(f"{iso} has no Rock Ridge names; it is not an archiso image", "give the official Arch ISO with --iso")
        release = _release(cd)
        label = release.label
        if not LABEL_RE.match(label) and release.uuid is None:
            raise IsoError(
                f"{iso} is not an Arch ISO (volume label {label!r}, no /boot/*.uuid)", "give the official Arch ISO with --iso"
            )
        dest = cache_dir / cache_key(iso)
        kernel, initrd = dest / "vmlinuz-linux", dest / "initramfs-linux.img"
        if not (kernel.is_file() and initrd.is_file()):
            _fill_cache(cd, iso, dest)
        return BootFiles(label=label, uuid=release.uuid, kernel=kernel, initrd=initrd)
    finally:
        cd.close()


def _fill_cache(cd: pycdlib.PyCdlib, iso: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Extract into a temporary directory and rename: an interrupted run leaves no half file.
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        if not _extract(cd, KERNEL, tmp / "vmlinuz-linux"):
            raise IsoError(f"{iso} has no {KERNEL}", "give an x86_64 Arch ISO with --iso")
        if not _extract(cd, INITRAMFS, tmp / "initramfs.img"):
            raise IsoError(f"{iso} has no {INITRAMFS}", "give an x86_64 Arch ISO with --iso")
        # Old ISOs: the kernel accepts concatenated initramfs images, microcode first.
        with (tmp / "initramfs-linux.img").open("wb") as out:
            for index, ucode in enumerate(MICROCODE):
                part = tmp / f"ucode{index}.img"
                if _extract(cd, ucode, part):
                    out.write(part.read_bytes())
                    part.unlink()
            with (tmp / "initramfs.img").open("rb") as main:
                shutil.copyfileobj(main, out)
        (tmp / "initramfs.img").unlink()
        if dest.exists():  # a partial cache from an older, interrupted version
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

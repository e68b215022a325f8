"""A box as a bootable disk image (``export --format raw|qcow2``), built without root.

The disk is GPT with two partitions, aligned to 1 MiB, typed for the Discoverable Partitions
Specification so that systemd's tools recognise them:

1. the EFI system partition (``esp``, FAT32): systemd-boot from the box's own systemd
   (``/usr/lib/systemd/boot/efi/systemd-bootx64.efi``) as ``EFI/BOOT/BOOTX64.EFI``, the
   removable-media path that firmware without boot entries (a fresh OVMF, a cloud) starts,
   and as ``EFI/systemd/systemd-bootx64.efi``, where ``bootctl update`` looks for it; a
   ``loader/loader.conf`` and an entry ``loader/entries/arch.conf`` (``root=PARTUUID=… rw``,
   consoles on tty0 and ttyS0) with the box's microcode images, if any, before its
   initramfs; a fallback entry when the box has a fallback initramfs. The box's ``/boot``
   is copied to the ESP's root, kernel and initramfs resolved inside the box as the box
   resolves them (``Tree``, ``IN_ROOT``): the image mounts the ESP at ``/boot``, Arch's usual
   systemd-boot layout, so that a kernel update inside the image (mkinitcpio, the linux
   package) writes where the boot loader reads. Secure Boot is not handled (the binary is
   unsigned).
2. the root file system (``root``, ext4, type 4f68bce3-e8cd-4db1-96e7-fbcaf984b709 for
   x86-64), made by ``mkfs.ext4 -d`` straight from the tree, with an fstab naming both
   partitions by PARTUUID (no fsck pass: the box's initramfs has no fsck hook and mounts the
   root read-write).

How it is built, without root and without a loop mount. The tree is the guest's and the host
reads it only as ``tree`` allows or inside the user namespace QEMU uses (``run.USERNS``),
where the box's owners are the namespace's ids: guest root stays uid 0 in the image and
uid 1000 stays 1000. In that namespace, with a mount namespace of its own, this module runs
as a program (``python -m provisioner.disk``): it makes a *stage*, a directory that holds a
bind mount of each top-level entry of the tree except those left out (below) and an empty
``/boot``; each entry is opened without following links and bound through its descriptor,
so a link swapped in meanwhile is never followed; a top-level link is made again as a link.
A bind mount is not recursive: as with ``tar --one-file-system``, what another file system
mounts below the tree stays out (a top-level mount point is kept as an empty directory);
unprivileged, the kernel refuses to uncover what such a mount hides, and the export says to
unmount it first. In
the stage it measures the tree (bytes and inodes, for the sizes) and runs ``mkfs.ext4 -d``,
which reads the tree itself, never follows a symbolic link (it copies links as links) and
keeps owners, modes, times, hard links, sparse files and extended attributes (ACLs, file
capabilities). Everything else works on the image file only: ``sfdisk`` writes the partition
table, ``mkfs.ext4 -E offset=`` and mtools' ``@@offset`` write into the partitions in place
(the image stays sparse), ``debugfs`` makes the few changes below inside the new file system
and ``e2fsck -fn`` then checks it. qcow2 is ``qemu-img convert -O qcow2`` of that raw image.
The work happens in a directory beside the output, which is renamed into place at the end;
on any failure nothing is left behind.

What belongs to the provisioned box and not to an image is left out or reset, on purpose
(as the tar and OCI exports do):

- ``/.provision-arch``, ``/.provision-arch-run``, ``/.provision-arch-unpack``: names
  provision-arch used or uses in the tree (and the guest may have planted);
- ``/etc/machine-id`` becomes an empty file: every copy of the image makes its own id at its
  first boot, and, unlike ``uninitialized``, that boot is not systemd's "first boot" (no
  ``systemctl preset-all``, no systemd-firstboot prompts): the image boots as the box did;
- ``/etc/ssh/ssh_host_*``: the box's SSH host keys (copies would share them); Arch's sshd
  makes new ones at its first start (sshdgenkeys.service);
- ``/var/lib/pacman/db.lck``: a stale pacman lock;
- ``/etc/fstab`` gets the disk's two lines; the box's own lines stay, except any for ``/``
  or ``/boot``, which are commented out.

Everything else is the box as it is: its users and passwords, their keys, its network file
(DHCP on any wired interface), its hostname. The box's initramfs was built in the install's
VM from the box's mkinitcpio.conf; provision-arch's has no autodetect hook, so its ``block``
and ``filesystems`` hooks put every storage driver and file system in it (virtio, SATA,
NVMe, ext4): it finds the root on the disks a VM or a machine gives it.

Sizes: the root file system is the tree's blocks and inodes plus ext4's own (inode tables,
journal, group metadata) plus headroom, ``max(1 GiB, half the tree)``; the ESP is at least
512 MiB and twice the box's ``/boot`` plus 64 MiB (a kernel update writes a new initramfs
beside the old). ``size`` gives the whole image instead (rounded up to a MiB); too small
for the tree is a usage error that names the least that fits. A raw image is sparse: the
host's disk holds only what was written.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from provisioner.errors import HostError, UsageError
from provisioner.export import OWN_NAMES, check_output
from provisioner.qemu import BOX_INITRD, BOX_KERNEL
from provisioner.run import PACKAGES, USERNS, run, sbin_program
from provisioner.tree import IN_ROOT, Tree, TreeError

MIB = 1 << 20
GIB = 1 << 30
SECTOR = 512
BLOCK = 4096  # the root file system's block size
INODE_SIZE = 256
ALIGN = MIB  # partitions start and end on MiB boundaries; the first MiB holds the GPT
ESP_MIN = 512 * MIB
ESP_SLACK = 64 * MIB
HEADROOM_MIN = GIB
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"  # the Discoverable Partitions' root, x86-64
ESP_LABEL = "ESP"
ROOT_LABEL = "root"
SYSTEMD_BOOT = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
# Where the firmware looks on a disk without boot entries, and where bootctl keeps its copy.
ESP_LOADERS = ("EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi")
KERNEL_ARGS = "rw console=tty0 console=ttyS0,115200"
MICROCODE = ("intel-ucode.img", "amd-ucode.img")  # as Arch's entries list them, before the initramfs
FALLBACK = "initramfs-linux-fallback.img"

# Top-level names of the tree that stay out of the image (the tar and OCI exports' too).
LEFT_OUT = OWN_NAMES
MACHINE_ID = PurePosixPath("/etc/machine-id")
FSTAB = PurePosixPath("/etc/fstab")
MKINITCPIO_CONF = "etc/mkinitcpio.conf"
PACMAN_LOCK = PurePosixPath("/var/lib/pacman/db.lck")
SSH_DIR = PurePosixPath("/etc/ssh")
HOST_KEY = re.compile(r"ssh_host_[A-Za-z0-9._-]+")
# Names of the box's /boot that the ESP takes (FAT holds fewer; the rest is skipped, and said).
ESP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
ESP_OURS = ("efi", "loader")  # the box's own /boot/EFI and /boot/loader give way to ours
ESP_DEPTH = 8
# What the box's /boot may put on the host's disk at most (links resolved inside the box count
# at their target's size): a real one is a few hundred MiB.
BOOT_LIMIT = 4 * GIB

DISK_TOOLS: tuple[str, ...] = ("unshare", "mkfs.ext4", "debugfs", "e2fsck", "sfdisk", "mformat", "mcopy", "qemu-img")


def disk_tools(*, qcow2: bool) -> tuple[str, ...]:
    """The host programs a raw image needs; qcow2 adds qemu-img."""
    return DISK_TOOLS if qcow2 else tuple(tool for tool in DISK_TOOLS if tool != "qemu-img")


TREE_TIMEOUT = 6 * 3600.0  # seconds for what reads the whole tree (many GB on a slow disk)
TOOL_TIMEOUT = 600.0


@dataclass(frozen=True)
class DiskImage:
    path: Path
    size: int  # bytes of the image file
    root_partuuid: str
    esp_bytes: int


@dataclass(frozen=True)
class Content:
    """What the root file system must hold: the tree's blocks (in bytes) and its inodes."""

    bytes: int
    inodes: int


@dataclass(frozen=True)
class Layout:
    """Where everything lies on the disk, in bytes."""

    total: int
    esp_start: int
    esp_size: int
    root_start: int
    root_size: int
    inodes: int  # of the root file system

    @property
    def root_blocks(self) -> int:
        return self.root_size // BLOCK


@dataclass(frozen=True)
class Ids:
    """The disk's identifiers, new for every image."""

    disk: str
    esp: str  # PARTUUIDs
    root: str
    filesystem: str  # the root file system's UUID
    esp_serial: str  # the FAT volume id, 8 hex digits

    @classmethod
    def new(cls) -> Ids:
        disk, esp, root, filesystem = (str(uuid.uuid4()) for _ in range(4))
        return cls(disk, esp, root, filesystem, uuid.uuid4().hex[:8].upper())


# -- sizes ----------------------------------------------------------------------------------


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def journal_bytes(size: int) -> int:
    """The journal mke2fs gives an ext4 of ``size`` bytes (ext2fs_default_journal_size)."""
    blocks = size // BLOCK
    for limit, journal in ((32768, 1024), (256 * 1024, 4096), (512 * 1024, 8192), (4096 * 1024, 16384),
                           (8192 * 1024, 32768), (16384 * 1024, 65536), (32768 * 1024, 131072)):  # fmt: skip
        if blocks < limit:
            return journal * BLOCK
    return 262144 * BLOCK


def inode_count(content: Content, size: int) -> int:
    """mke2fs's default (one inode per 16 KiB), or more when the tree has many small files."""
    return max(size // 16384, content.inodes + content.inodes // 2 + 4096)


def ext4_needs(content: Content, size: int) -> int:
    """Bytes an ext4 of ``size`` bytes needs to hold ``content``: the tree's blocks with a
    sixteenth more (extent and xattr blocks, large directories), the inode tables, the journal,
    a sixty-fourth for group descriptors, bitmaps and the room reserved to grow, and 32 MiB."""
    return (content.bytes + content.bytes // 16 + inode_count(content, size) * INODE_SIZE + journal_bytes(size)
            + size // 64 + 32 * MIB)  # fmt: skip


def minimum_root(content: Content) -> int:
    """The smallest root file system (MiB-aligned) that holds the tree."""
    size = round_up(content.bytes + 64 * MIB, ALIGN)
    for _ in range(64):
        needed = round_up(ext4_needs(content, size), ALIGN)
        if needed <= size:
            return size
        size = needed
    return size


def default_root(content: Content) -> int:
    return round_up(minimum_root(content) + max(HEADROOM_MIN, content.bytes // 2), ALIGN)


def esp_size(boot_bytes: int) -> int:
    return max(ESP_MIN, round_up(2 * boot_bytes + ESP_SLACK, ALIGN))


def human(size: int) -> str:
    if size >= GIB:
        return f"{size / GIB:.1f} GiB"
    return f"{-(-size // MIB)} MiB"


def plan(content: Content, boot_bytes: int, size: int | None) -> Layout:
    """The disk's layout: ESP first, then the root file system, each on a MiB boundary, and a
    last MiB for the backup GPT. ``size`` is the whole image (rounded up to a MiB)."""
    esp = esp_size(boot_bytes)
    least = minimum_root(content)
    if size is None:
        root = default_root(content)
        total = ALIGN + esp + root + ALIGN
    else:
        if size <= 0:
            raise UsageError(f"invalid disk size {size}", "give the image's size in bytes, e.g. 8G")
        total = round_up(size, ALIGN)
        root = total - 2 * ALIGN - esp
        if root < least:
            fits = 2 * ALIGN + esp + least
            raise UsageError(
                f"a disk of {human(total)} is too small for this box: it needs at least {human(fits)}",
                f"give --size {-(-fits // MIB)}M or more, or leave --size out for the tree plus headroom",
            )
    return Layout(total, ALIGN, esp, ALIGN + esp, root, inode_count(content, root))


# -- the pieces' command lines and files ------------------------------------------------------


def sfdisk_script(layout: Layout, ids: Ids) -> str:
    """The partition table, in sfdisk's script format (sectors)."""
    return "".join([
        "label: gpt\n",
        f"label-id: {ids.disk}\n",
        "unit: sectors\n",
        f"first-lba: {ALIGN // SECTOR}\n",
        f"start={layout.esp_start // SECTOR}, size={layout.esp_size // SECTOR}, type={ESP_TYPE}, uuid={ids.esp}, name=esp\n",
        f"start={layout.root_start // SECTOR}, size={layout.root_size // SECTOR}, type={ROOT_TYPE}, uuid={ids.root}, name=root\n",
    ])  # fmt: skip


def sfdisk_argv(image: Path) -> list[str]:
    return [sbin_program("sfdisk"), "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never", str(image)]


def mkfs_argv(image: Path, layout: Layout, ids: Ids, stage: Path) -> list[str]:
    """mkfs.ext4 filling the root partition from the stage. 4 KiB blocks and 256-byte inodes
    whatever the size (mke2fs.conf's "small" type would give 1 KiB blocks and 128-byte
    inodes, whose times end in 2038); the file is new and sparse, so nothing needs zeroing."""
    extended = f"offset={layout.root_start},root_owner=0:0,nodiscard,assume_storage_prezeroed=1"
    return [sbin_program("mkfs.ext4"), "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-I", str(INODE_SIZE),
            "-N", str(layout.inodes), "-L", ROOT_LABEL, "-U", ids.filesystem, "-E", extended,
            "-d", str(stage), str(image), str(layout.root_blocks)]  # fmt: skip


def in_root(image: Path, layout: Layout) -> str:
    """The root file system, as e2fsprogs' tools name a file system inside a file."""
    return f"{image}?offset={layout.root_start}"


def in_esp(image: Path, layout: Layout) -> str:
    """The ESP, as mtools names a file system inside a file."""
    return f"{image}@@{layout.esp_start}"


def mformat_argv(image: Path, layout: Layout, ids: Ids) -> list[str]:
    """FAT32 on the ESP; hidden sectors = where the partition starts, as on a real disk."""
    return ["mformat", "-i", in_esp(image, layout), "-F", "-T", str(layout.esp_size // SECTOR),
            "-H", str(layout.esp_start // SECTOR), "-v", ESP_LABEL, "-N", ids.esp_serial, "::"]  # fmt: skip


def mcopy_argv(image: Path, layout: Layout, esp: Path) -> list[str]:
    """Copy the staged ESP's contents to its root, recursively, keeping times."""
    return ["mcopy", "-i", in_esp(image, layout), "-s", "-m", "-Q", *(str(path) for path in sorted(esp.iterdir())), "::/"]


def loader_conf() -> str:
    return "# Written by provision-arch export.\ndefault arch.conf\ntimeout 0\nconsole-mode keep\n"


def loader_entry(title: str, initrds: Sequence[str], ids: Ids) -> str:
    lines = [f"title   {title}", "linux   /vmlinuz-linux", *(f"initrd  /{name}" for name in initrds),
             f"options root=PARTUUID={ids.root} {KERNEL_ARGS}"]  # fmt: skip
    return "".join(f"{line}\n" for line in lines)


def fstab(box: str | None, ids: Ids) -> str:
    """The image's fstab: the box's lines, any for / or /boot commented out, then the disk's."""
    kept = []
    for line in (box or "").splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and len(fields) >= 2 and fields[1].rstrip("/") in ("", "/boot"):
            kept.append(f"# (replaced by provision-arch export) {line}")
        else:
            kept.append(line)
    ours = [
        "# The disk made by provision-arch export: the root, and the EFI system partition on /boot,",
        "# where mkinitcpio and the linux package write, so that updates reach the boot loader.",
        f"PARTUUID={ids.root}  /      ext4  rw,relatime  0 0",
        f"PARTUUID={ids.esp}  /boot  vfat  rw,relatime,fmask=0077,dmask=0077,shortname=mixed,errors=remount-ro  0 0",
    ]  # fmt: skip
    return "".join(f"{line}\n" for line in [*kept, *([""] if kept else []), *ours])


def debugfs_script(empty: Path, fstab_file: Path, host_keys: Sequence[str]) -> str:
    """The changes to the new root file system (see the module's doc). debugfs' ``write``
    takes a name in the current directory, hence the ``cd``; ``rm`` of a missing file only
    complains. The names are ours, or host keys matched by ``HOST_KEY`` (no spaces, no quotes)."""
    lines = [
        f"cd {MACHINE_ID.parent}",
        f"rm {MACHINE_ID.name}",
        f"write {empty} {MACHINE_ID.name}",
        *_root_file(MACHINE_ID.name, 0o444),
        f"rm {FSTAB.name}",
        f"write {fstab_file} {FSTAB.name}",
        *_root_file(FSTAB.name, 0o644),
        f"rm {PACMAN_LOCK}",
        *(f"rm {SSH_DIR / name}" for name in host_keys if HOST_KEY.fullmatch(name)),
    ]
    return "".join(f"{line}\n" for line in lines)


def _root_file(name: str, mode: int) -> list[str]:
    return [f"sif {name} mode 0{stat.S_IFREG | mode:o}", f"sif {name} uid 0", f"sif {name} gid 0"]


@dataclass(frozen=True)
class Listed:
    """One entry of ``debugfs ls -p``."""

    name: str
    mode: int
    uid: int
    gid: int
    size: int


def parse_listing(text: str) -> dict[str, Listed]:
    """``debugfs -R "ls -p DIR"``: ``/inode/mode/uid/gid/name/size/`` per entry (mode in octal)."""
    found = {}
    for line in text.splitlines():
        parts = line.strip().split("/")
        if len(parts) != 8 or parts[0] or parts[7]:
            continue
        _, _ino, mode, uid, gid, name, size, _ = parts
        if name in (".", "..") or not mode:
            continue
        found[name] = Listed(name, int(mode, 8), int(uid or 0), int(gid or 0), int(size or 0))
    return found


# -- the tree's side: in the user namespace ---------------------------------------------------

MS_BIND = 0x1000
_libc = ctypes.CDLL(None, use_errno=True)


class StageError(Exception):
    """The stage cannot be made (said in one line by the helper)."""


def _bind(source_fd: int, target: Path) -> None:
    """Bind-mount what ``source_fd`` holds (opened without following links) onto ``target``;
    not recursive, so nothing mounted below it comes along. In a user namespace the kernel
    refuses that (EINVAL) when something is mounted below it: it will not uncover what the
    mount hides."""
    if _libc.mount(f"/proc/self/fd/{source_fd}".encode(), os.fsencode(target), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        if err == errno.EINVAL:
            raise StageError(f"a file system is mounted below /{target.name} of the box: unmount it, then export again")
        raise StageError(f"cannot bind /{target.name} of the box: {os.strerror(err)}")


def _like(path: Path, status: os.stat_result) -> None:
    """Give a stage entry we made the owner, mode and times of the tree's."""
    os.chown(path, status.st_uid, status.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(status.st_mode):
        os.chmod(path, stat.S_IMODE(status.st_mode))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns), follow_symlinks=False)


def make_stage(target: Path, stage: Path) -> list[str]:
    """Fill the empty directory ``stage`` with the tree's top level as the image holds it (see
    the module's doc); in a mount namespace of our own. Returns what was left out, said."""
    said = []
    with Tree(target) as tree:
        top = os.fstat(tree.fd)
        for name in sorted(tree.entries()):
            if name in LEFT_OUT:
                continue
            status = os.stat(name, dir_fd=tree.fd, follow_symlinks=False)
            where = stage / name
            if stat.S_ISLNK(status.st_mode):
                os.symlink(os.readlink(name, dir_fd=tree.fd), where)
                _like(where, status)
                continue
            if name == "boot" or (stat.S_ISDIR(status.st_mode) and status.st_dev != top.st_dev):
                where.mkdir()  # the ESP's mount point, or another file system's: empty
                _like(where, status if stat.S_ISDIR(status.st_mode) else top)
                if name != "boot":
                    said.append(f"/{name} is another file system: only its mount point is in the image")
                continue
            if stat.S_ISDIR(status.st_mode):
                where.mkdir()
            elif stat.S_ISREG(status.st_mode):
                os.close(os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            else:
                said.append(f"/{name} is neither a file, a directory nor a link: left out")
                continue
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tree.fd)
            try:
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) != (status.st_dev, status.st_ino):
                    raise StageError(f"/{name} of the box changed while the image was made: is the box running?")
                _bind(fd, where)
            finally:
                os.close(fd)
        _like(stage, top)  # last: making its entries changed its times
    return said


def measure(stage: Path) -> Content:
    """The stage's blocks and inodes as mkfs.ext4 will need them (hard links counted once,
    sparse files by what they hold, links longer than the inode's 60 bytes a block)."""
    total, inodes = BLOCK, 1
    seen: set[tuple[int, int]] = set()
    for directory, dirs, files in os.walk(stage):
        for name in [*dirs, *files]:
            status = os.lstat(os.path.join(directory, name))
            if status.st_nlink > 1 and not stat.S_ISDIR(status.st_mode):
                if (status.st_dev, status.st_ino) in seen:
                    continue
                seen.add((status.st_dev, status.st_ino))
            inodes += 1
            allocated = status.st_blocks * 512
            if stat.S_ISREG(status.st_mode):
                sparse = allocated < status.st_size // 2
                total += round_up(allocated if sparse else status.st_size, BLOCK)
            elif stat.S_ISDIR(status.st_mode) or (stat.S_ISLNK(status.st_mode) and status.st_size >= 60):
                total += BLOCK
        # A large directory takes a block per ~100 entries, beyond the one counted above.
        total += BLOCK * ((len(dirs) + len(files)) // 100)
    return Content(total, inodes)


def helper(command: str, request: dict[str, Any]) -> int:
    """``python -m provisioner.disk measure|mkfs JSON``, run in the user and mount namespace:
    make the stage, then print what it holds as JSON, or exec mkfs.ext4 on it."""
    stage = Path(request["stage"])
    notes = make_stage(Path(request["target"]), stage)
    if command == "measure":
        content = measure(stage)
        print(json.dumps({"bytes": content.bytes, "inodes": content.inodes, "notes": notes}))
        return 0
    os.execvp(request["argv"][0], request["argv"])  # noqa: S606 - mkfs.ext4, in this namespace, on the stage


def namespace_argv(command: str, request: dict[str, Any], *, as_root: bool) -> list[str]:
    """``helper`` in a mount namespace of its own (whose mounts end with it) and, unless we
    are root, in the user namespace QEMU uses."""
    prefix = ["unshare", "--mount"] if as_root else [*USERNS, "--mount"]
    return [*prefix, sys.executable, "-P", "-m", "provisioner.disk", command, json.dumps(request)]  # -P: see tree.as_guest_root


def measure_tree(target: Path, stage: Path, *, as_root: bool) -> tuple[Content, list[str]]:
    """The tree's content as the image will hold it, and what was left out, said."""
    result = run(namespace_argv("measure", {"target": str(target), "stage": str(stage)}, as_root=as_root),
                 timeout=TREE_TIMEOUT)  # fmt: skip
    if result.returncode != 0:
        said = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise HostError(f"could not read the tree {target} as the box's root: {said}", "see the message; then export again")
    measured = json.loads(result.stdout)
    return Content(int(measured["bytes"]), int(measured["inodes"])), [str(note) for note in measured["notes"]]


def fill_root(target: Path, stage: Path, argv: list[str], *, as_root: bool, sized: bool) -> None:
    """mkfs.ext4 -d from the stage, in the namespaces. Running out of room is the size's fault
    when the user chose it, else ours."""
    result = run(namespace_argv("mkfs", {"target": str(target), "stage": str(stage), "argv": argv}, as_root=as_root),
                 timeout=TREE_TIMEOUT)  # fmt: skip
    if result.returncode == 0:
        return
    said = (result.stderr.strip().splitlines() or ["no message"])[-1]
    if "allocate" in said or "No space left" in said or "inodes" in said:
        if sized:
            raise UsageError(f"the tree does not fit in a disk of that size: {said}", "give a larger --size")
        raise HostError(f"the root file system came out too small for the tree: {said}",
                        "give --size with more room; and please report this estimate as a bug")  # fmt: skip
    raise HostError(f"mkfs.ext4 could not make the root file system from {target}: {said}",
                    "check the space where the output goes (df -h), and that the box is not being written")  # fmt: skip


# -- the host's side --------------------------------------------------------------------------


def require_tools(*, qcow2: bool) -> None:
    """Every program the image needs, before anything is written."""
    for tool in disk_tools(qcow2=qcow2):
        if shutil.which(sbin_program(tool)) is None:
            fix = f"install it: sudo apt-get install {PACKAGES[tool]}"
            raise HostError(f"{tool} not found on PATH (a disk image needs it)", f"{fix}; provision-arch doctor names the rest")


def checked(argv: Sequence[str], what: str, timeout: float = TOOL_TIMEOUT, **options: Any) -> str:
    """Run a host tool on the image; its stdout, or a HostError with its last words."""
    result = run(argv, timeout=timeout, **options)
    if result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip() or "no message").splitlines()[-1]
        raise HostError(f"{what} failed ({argv[0].rsplit('/', 1)[-1]} exited {result.returncode}): {said}",
                        "check the space where the output goes (df -h)")  # fmt: skip
    return result.stdout


@dataclass(frozen=True)
class BootFiles:
    """The box's /boot copied out for the ESP: its size, and which images the entries list."""

    bytes: int
    initrds: tuple[str, ...]
    fallback: bool
    skipped: tuple[str, ...]


def copy_boot(target: Path, esp: Path) -> BootFiles:
    """The ESP's files into ``esp``: the box's /boot (kernel and initramfs required, links
    resolved inside the box), systemd-boot and the loader's configuration come later."""
    skipped: list[str] = []
    with Tree(target) as tree:
        for path in (BOX_KERNEL, BOX_INITRD):
            if tree.regular(path, IN_ROOT) is None:
                raise TreeError(f"{target / path} is missing or no regular file", f"is {target} an installed box?")
        budget = [BOOT_LIMIT]  # bytes the guest's /boot may still put on the host's disk
        if _is_dir(tree, PurePosixPath("boot")):
            _copy_dir(tree, PurePosixPath("boot"), esp, 0, skipped=skipped, budget=budget)
        else:  # a link: the kernel and initramfs, resolved in the box, are all the ESP takes
            skipped.append("/boot (not a directory: only the kernel and initramfs are taken)")
            for path in (BOX_KERNEL, BOX_INITRD):
                tree.copy_out(path, esp / PurePosixPath(path).name, IN_ROOT, limit=BOOT_LIMIT)
        if missing := [path for path in (BOX_KERNEL, BOX_INITRD) if not (esp / PurePosixPath(path).name).is_file()]:
            raise TreeError(
                f"{target / missing[0]} did not fit: the box's /boot holds more than {BOOT_LIMIT >> 30} GiB",
                "remove what /boot does not need in the box, then export again",
            )
        if tree.regular(SYSTEMD_BOOT, IN_ROOT) is None:
            raise TreeError(f"the box has no systemd-boot ({target / SYSTEMD_BOOT})", "install systemd in the box")
        for copy in ESP_LOADERS:
            (esp / copy).parent.mkdir(parents=True, exist_ok=True)
            tree.copy_out(SYSTEMD_BOOT, esp / copy, IN_ROOT)
    (esp / "loader/entries").mkdir(parents=True)
    present = {path.name for path in esp.iterdir()}
    initrds = (*(name for name in MICROCODE if name in present), "initramfs-linux.img")
    total = sum(path.stat().st_size for path in esp.rglob("*") if path.is_file())
    return BootFiles(total, initrds, FALLBACK in present, tuple(skipped))


def _copy_dir(tree: Tree, path: PurePosixPath, dest: Path, depth: int, *, skipped: list[str], budget: list[int]) -> None:
    taken: set[str] = set()
    for name in sorted(tree.listdir(path)):
        inner = path / name
        folded = name.lower()
        if not ESP_NAME.fullmatch(name) or folded in taken or (depth == 0 and folded in ESP_OURS):
            skipped.append(f"/{inner}")
            continue
        if tree.regular(inner, IN_ROOT) is not None:
            try:
                tree.copy_out(inner, dest / name, IN_ROOT, limit=budget[0])
            except TreeError:
                skipped.append(f"/{inner}")
                continue
            budget[0] -= (dest / name).stat().st_size
        elif depth < ESP_DEPTH and _is_dir(tree, inner):
            (dest / name).mkdir(mode=0o700)
            _copy_dir(tree, inner, dest / name, depth + 1, skipped=skipped, budget=budget)
        else:
            skipped.append(f"/{inner}")
            continue
        taken.add(folded)


def _is_dir(tree: Tree, path: PurePosixPath) -> bool:
    try:
        tree.listdir(path)
    except OSError:
        return False
    return True


HOOKS = re.compile(r"^\s*HOOKS=\(([^)]*)\)", re.MULTILINE)


def initramfs_warnings(conf: str | None) -> list[str]:
    """What in the box's mkinitcpio.conf may keep its initramfs from finding the disk's root:
    the box's initramfs was built in the install's VM (a 9p root, a virtio NIC, no disk), so
    autodetect would have kept only that VM's modules, and without block or filesystems no
    disk driver or ext4 is in it at all."""
    found = HOOKS.findall(conf or "")
    if not found:
        return ["the box has no readable HOOKS line in /etc/mkinitcpio.conf: its initramfs may not find the disk's root"]
    hooks = found[-1].replace('"', " ").replace("'", " ").split()
    said = []
    if "autodetect" in hooks:
        said.append("the box's mkinitcpio.conf has the autodetect hook: its initramfs holds only the modules of the "
                    "VM it was built in (no ext4, no disk driver) and may not find the disk's root")  # fmt: skip
    said += [f"the box's mkinitcpio.conf has no {hook} hook: its initramfs may not find the disk's root"
             for hook in ("block", "filesystems") if hook not in hooks]  # fmt: skip
    return said


def write_loader(esp: Path, boot: BootFiles, ids: Ids) -> None:
    (esp / "loader/loader.conf").write_text(loader_conf())
    (esp / "loader/entries/arch.conf").write_text(loader_entry("Arch Linux", boot.initrds, ids))
    if boot.fallback:
        fallback = (*boot.initrds[:-1], FALLBACK)
        (esp / "loader/entries/arch-fallback.conf").write_text(loader_entry("Arch Linux (fallback initramfs)", fallback, ids))


def listing(image: Path, layout: Layout, directory: PurePosixPath) -> dict[str, Listed]:
    out = checked([sbin_program("debugfs"), "-R", f"ls -p {directory}", in_root(image, layout)], "reading the root file system")
    return parse_listing(out)


def adjust_root(image: Path, layout: Layout, ids: Ids, work: Path, box_fstab: str | None) -> None:
    """Make the changes of the module's doc in the new root file system, then check them."""
    empty, table, script = work / "machine-id", work / "fstab", work / "debugfs.script"
    empty.write_bytes(b"")
    text = fstab(box_fstab, ids)
    table.write_text(text)
    keys = sorted(listing(image, layout, SSH_DIR))
    script.write_text(debugfs_script(Path(empty.name), Path(table.name), keys))
    argv = [sbin_program("debugfs"), "-w", "-f", script.name, in_root(image, layout)]
    checked(argv, "changing the root file system", cwd=work)  # relative names: a work path may hold spaces
    etc = listing(image, layout, MACHINE_ID.parent)
    expected = {MACHINE_ID.name: (0o100444, 0), FSTAB.name: (0o100644, len(text.encode()))}
    for name, (mode, size) in expected.items():
        entry = etc.get(name)
        if entry is None or (entry.mode, entry.size, entry.uid, entry.gid) != (mode, size, 0, 0):
            raise TreeError(f"the image's /etc/{name} could not be written (is it a directory in the box?)",
                            f"make /etc/{name} a plain file in the box, or remove it")  # fmt: skip
    left = [f"{SSH_DIR / name}" for name in listing(image, layout, SSH_DIR) if name.startswith("ssh_host_")]
    if PACMAN_LOCK.name in listing(image, layout, PACMAN_LOCK.parent):
        left.append(str(PACMAN_LOCK))
    if left:
        raise TreeError(f"could not leave {', '.join(left)} out of the image", "remove them in the box, then export again")


def check_root(image: Path, layout: Layout) -> None:
    """e2fsck, read-only: the file system mkfs.ext4 and debugfs made is consistent."""
    result = run([sbin_program("e2fsck"), "-f", "-n", in_root(image, layout)], timeout=TREE_TIMEOUT)
    if result.returncode != 0:
        said = (result.stdout.strip() or result.stderr.strip() or "no message").splitlines()[-1]
        raise HostError(f"the new root file system is inconsistent (e2fsck exited {result.returncode}): {said}",
                        "this is a bug in provision-arch: please report it")  # fmt: skip


def build_disk(
    target: Path, output: Path, *, size: int | None, qcow2: bool, as_root: bool, progress: Callable[[str], None]
) -> DiskImage:
    """The box at ``target`` as a bootable GPT disk image at ``output`` (raw, or qcow2)."""
    output = check_output(target, output)
    if size is not None and size <= 0:
        raise UsageError(f"invalid disk size {size}", "give the image's size in bytes, e.g. 8G")
    require_tools(qcow2=qcow2)
    ids = Ids.new()
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    except OSError as exc:
        raise HostError(f"cannot write in {output.parent}: {exc.strerror}", "give an --output where you can write") from exc
    try:
        return _build(target, output, work, ids, size=size, qcow2=qcow2, as_root=as_root, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(
    target: Path, output: Path, work: Path, ids: Ids, *, size: int | None, qcow2: bool, as_root: bool,
    progress: Callable[[str], None],
) -> DiskImage:  # fmt: skip
    esp, image = work / "esp", work / "disk.raw"
    esp.mkdir(mode=0o700)
    progress("Copying the box's /boot and systemd-boot for the EFI system partition")
    boot = copy_boot(target, esp)
    for name in boot.skipped:
        progress(f"left out of the EFI system partition: {name} (a name or type FAT cannot hold, or unreadable)")
    with Tree(target) as tree:
        box_fstab = tree.regular_text(FSTAB.relative_to("/"), MIB)
        for warning in initramfs_warnings(tree.regular_text(MKINITCPIO_CONF, MIB)):
            progress(f"warning: {warning}")
    progress("Measuring the tree (in the user namespace)")
    (work / "measure").mkdir()
    content, notes = measure_tree(target, work / "measure", as_root=as_root)
    for note in notes:
        progress(note)
    layout = plan(content, boot.bytes, size)
    progress(f"Disk of {human(layout.total)}: EFI system partition {human(layout.esp_size)}, "
             f"root {human(layout.root_size)} for a tree of {human(content.bytes)} in {content.inodes} inodes")  # fmt: skip
    with os.fdopen(os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as handle:
        handle.truncate(layout.total)
    script = work / "sfdisk.script"
    script.write_text(sfdisk_script(layout, ids))
    with script.open("rb") as table:
        checked(sfdisk_argv(image), "writing the partition table", stdin=table)
    progress("Making the root file system from the tree (mkfs.ext4 -d, in the user namespace)")
    stage = work / "stage"
    stage.mkdir()
    fill_root(target, stage, mkfs_argv(image, layout, ids, stage), as_root=as_root, sized=size is not None)
    progress("Resetting /etc/machine-id, writing /etc/fstab, leaving out host keys and pacman's lock (debugfs)")
    adjust_root(image, layout, ids, work, box_fstab)
    progress("Checking the root file system (e2fsck -fn)")
    check_root(image, layout)
    progress("Making the EFI system partition (FAT32, systemd-boot)")
    write_loader(esp, boot, ids)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    checked(mformat_argv(image, layout, ids), "formatting the EFI system partition", env=env)
    checked(mcopy_argv(image, layout, esp), "filling the EFI system partition", env=env)
    final = image
    if qcow2:
        progress("Converting to qcow2 (qemu-img convert)")
        final = work / "disk.qcow2"
        checked(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(image), str(final)], "converting to qcow2",
                timeout=TREE_TIMEOUT)  # fmt: skip
    os.chmod(final, 0o600)  # it holds /etc/shadow and the users' homes: yours alone, as export.py says
    try:
        os.link(final, output)  # never over something that appeared meanwhile; the work directory goes
    except FileExistsError:
        raise UsageError(f"{output} appeared while the image was built", "give a new path") from None
    return DiskImage(output, output.stat().st_size, ids.root, layout.esp_size)


def main(argv: list[str]) -> int:
    """``python -m provisioner.disk measure|mkfs JSON`` (see ``in_namespace``)."""
    if len(argv) != 2 or argv[0] not in ("measure", "mkfs"):
        print("usage: python -m provisioner.disk measure|mkfs JSON", file=sys.stderr)
        return 2
    try:
        return helper(argv[0], json.loads(argv[1]))
    except (OSError, TreeError, StageError) as exc:
        print(str(exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

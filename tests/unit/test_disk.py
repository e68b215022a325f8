"""disk.py: a box as a bootable GPT disk image (export --format raw|qcow2).

The pure parts (layout, sizes, command lines, the files written into the image) are checked
as values; then a whole image is built from a small fake tree by the real host tools (a few
seconds, no VM): what is left out, what is reset, what stays, that no link of the tree is
followed on the host, and that a failure leaves nothing behind. Booting such an image is
tests/vm/test_export_disk.py's.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from provisioner import disk
from provisioner.disk import (
    ALIGN,
    ESP_MIN,
    GIB,
    MIB,
    Content,
    Ids,
    Layout,
    build_disk,
    debugfs_script,
    fstab,
    loader_entry,
    minimum_root,
    mkfs_argv,
    parse_listing,
    plan,
    sfdisk_script,
)
from provisioner.errors import HostError, UsageError
from provisioner.run import PACKAGES, sbin_program
from provisioner.tree import TreeError

IDS = Ids(
    disk="0b7c6a52-1c55-4d3e-9a10-6f2a1f0c0001",
    esp="0b7c6a52-1c55-4d3e-9a10-6f2a1f0c0002",
    root="0b7c6a52-1c55-4d3e-9a10-6f2a1f0c0003",
    filesystem="0b7c6a52-1c55-4d3e-9a10-6f2a1f0c0004",
    esp_serial="1234ABCD",
)
SMALL = Content(bytes=300 * MIB, inodes=12_000)  # about a stand-in base box
LARGE = Content(bytes=20 * GIB, inodes=900_000)


# -- sizes and layout ---------------------------------------------------------------------------


@pytest.mark.parametrize("content", [SMALL, LARGE, Content(bytes=10 * MIB, inodes=3_000_000)])
def test_the_layout_is_aligned_and_leaves_room_for_both_gpt_copies(content: Content) -> None:
    layout = plan(content, boot_bytes=40 * MIB, size=None)
    for value in (layout.total, layout.esp_start, layout.esp_size, layout.root_start, layout.root_size):
        assert value % ALIGN == 0, value
    assert layout.esp_start == ALIGN, "the first MiB holds the protective MBR and the GPT"
    assert layout.root_start == layout.esp_start + layout.esp_size
    assert layout.total == layout.root_start + layout.root_size + ALIGN, "the last MiB holds the backup GPT"
    assert layout.inodes >= content.inodes


def test_the_default_root_is_the_tree_plus_its_metadata_plus_headroom() -> None:
    for content in (SMALL, LARGE):
        least = minimum_root(content)
        assert least > content.bytes
        assert disk.ext4_needs(content, least) <= least, "the minimum holds what mkfs.ext4 needs"
        layout = plan(content, boot_bytes=40 * MIB, size=None)
        assert layout.root_size >= least + max(GIB, content.bytes // 2)
    assert plan(LARGE, 40 * MIB, None).root_size < 2 * LARGE.bytes, "headroom, not a doubling"


def test_the_esp_is_at_least_512_mib_and_twice_the_boot_files() -> None:
    assert plan(SMALL, boot_bytes=30 * MIB, size=None).esp_size == ESP_MIN
    assert plan(SMALL, boot_bytes=400 * MIB, size=None).esp_size == 2 * 400 * MIB + 64 * MIB


def test_a_given_size_is_the_whole_image_rounded_up_to_a_mib() -> None:
    layout = plan(SMALL, boot_bytes=30 * MIB, size=8 * GIB + 5)
    assert layout.total == 8 * GIB + MIB
    assert layout.root_size == layout.total - 2 * ALIGN - layout.esp_size
    exact = plan(SMALL, boot_bytes=30 * MIB, size=4 * GIB)
    assert exact.total == 4 * GIB


def test_a_size_too_small_for_the_tree_names_the_least_that_fits() -> None:
    fits = 2 * ALIGN + ESP_MIN + minimum_root(SMALL)
    with pytest.raises(UsageError, match="too small") as caught:
        plan(SMALL, boot_bytes=30 * MIB, size=fits - MIB)
    assert f"{fits // MIB}M" in caught.value.hint
    assert plan(SMALL, boot_bytes=30 * MIB, size=fits).root_size == minimum_root(SMALL)
    for bad in (0, -1):
        with pytest.raises(UsageError):
            plan(SMALL, boot_bytes=30 * MIB, size=bad)


# -- what the tools are told --------------------------------------------------------------------


def layout_of(content: Content = SMALL) -> Layout:
    return plan(content, boot_bytes=30 * MIB, size=None)


def test_the_partition_table_is_gpt_with_discoverable_types_and_our_ids() -> None:
    layout = layout_of()
    script = sfdisk_script(layout, IDS)
    lines = script.splitlines()
    assert lines[:4] == ["label: gpt", f"label-id: {IDS.disk}", "unit: sectors", "first-lba: 2048"]
    esp, root = lines[4], lines[5]
    assert esp == (f"start=2048, size={layout.esp_size // 512}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, "
                   f"uuid={IDS.esp}, name=esp")  # fmt: skip
    assert f"start={layout.root_start // 512}, size={layout.root_size // 512}," in root
    assert "type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709," in root and f"uuid={IDS.root}, name=root" in root


def test_mkfs_fills_the_root_partition_in_place_from_the_stage() -> None:
    layout = layout_of()
    argv = mkfs_argv(Path("/out/disk.raw"), layout, IDS, Path("/out/stage"))
    assert Path(argv[0]).name == "mkfs.ext4"
    assert argv[-2:] == ["/out/disk.raw", str(layout.root_size // 4096)]
    options = dict(itertools.pairwise(argv[1:-2]))
    assert options["-d"] == "/out/stage" and options["-t"] == "ext4"
    assert options["-b"] == "4096" and options["-I"] == "256", "no 1 KiB blocks or 128-byte inodes on a small disk"
    assert options["-U"] == IDS.filesystem and options["-N"] == str(layout.inodes)
    extended = options["-E"].split(",")
    assert f"offset={layout.root_start}" in extended and "root_owner=0:0" in extended


def test_the_esp_is_formatted_and_filled_inside_the_image_file(tmp_path: Path) -> None:
    layout = layout_of()
    image = tmp_path / "disk.raw"
    argv = disk.mformat_argv(image, layout, IDS)
    assert argv[:3] == ["mformat", "-i", f"{image}@@{MIB}"]
    assert argv[argv.index("-T") + 1] == str(layout.esp_size // 512) and argv[argv.index("-H") + 1] == "2048"
    (tmp_path / "esp/EFI").mkdir(parents=True)
    (tmp_path / "esp/vmlinuz-linux").write_bytes(b"k")
    copied = disk.mcopy_argv(image, layout, tmp_path / "esp")
    assert copied[-3:] == [f"{tmp_path}/esp/EFI", f"{tmp_path}/esp/vmlinuz-linux", "::/"]


def test_the_loader_entry_mounts_the_disks_root_with_microcode_first() -> None:
    entry = loader_entry("Arch Linux", ("intel-ucode.img", "initramfs-linux.img"), IDS)
    assert entry.splitlines() == [
        "title   Arch Linux",
        "linux   /vmlinuz-linux",
        "initrd  /intel-ucode.img",
        "initrd  /initramfs-linux.img",
        f"options root=PARTUUID={IDS.root} rw console=tty0 console=ttyS0,115200",
    ]


def test_fstab_keeps_the_boxs_lines_but_its_root_and_boot() -> None:
    box = "# comment\nfsRoot / 9p rw 0 0\ntmpfs /tmp tmpfs defaults 0 0\nLABEL=x /boot/ vfat rw 0 2\n"
    lines = fstab(box, IDS).splitlines()
    assert lines[0] == "# comment"
    assert lines[1] == "# (replaced by provision-arch export) fsRoot / 9p rw 0 0"
    assert lines[2] == "tmpfs /tmp tmpfs defaults 0 0"
    assert lines[3].startswith("# (replaced by provision-arch export) LABEL=x /boot/")
    mounts = [line.split() for line in lines if line and not line.startswith("#")]
    assert [m[:3] for m in mounts] == [["tmpfs", "/tmp", "tmpfs"], [f"PARTUUID={IDS.root}", "/", "ext4"],
                                       [f"PARTUUID={IDS.esp}", "/boot", "vfat"]]  # fmt: skip
    assert all(m[5] == "0" for m in mounts[1:]), "no fsck pass: the initramfs has no fsck hook"
    assert fstab(None, IDS).startswith("# The disk made by provision-arch export")


def test_the_root_is_adjusted_by_debugfs_with_names_it_can_parse(tmp_path: Path) -> None:
    script = debugfs_script(tmp_path / "empty", tmp_path / "fstab",
                            ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_config", "ssh_host_x key"])  # fmt: skip
    lines = script.splitlines()
    assert lines[:3] == ["cd /etc", "rm machine-id", f"write {tmp_path}/empty machine-id"]
    assert "sif machine-id mode 0100444" in lines and "sif machine-id uid 0" in lines
    assert f"write {tmp_path}/fstab fstab" in lines and "sif fstab mode 0100644" in lines
    assert "rm /var/lib/pacman/db.lck" in lines
    removed = [line for line in lines if line.startswith("rm /etc/ssh/")]
    # A name with a space would be two arguments: it is no command.
    assert removed == ["rm /etc/ssh/ssh_host_ed25519_key", "rm /etc/ssh/ssh_host_ed25519_key.pub"]


def test_an_initramfs_that_may_not_find_the_disk_is_warned_about() -> None:
    ours = (Path(__file__).parents[2] / "templates/rootfs/etc/mkinitcpio.conf.j2").read_text()
    assert disk.initramfs_warnings(ours) == [], "provision-arch's own configuration builds one that does"
    assert disk.initramfs_warnings("HOOKS=(base systemd autodetect microcode modconf kms keyboard sd-vconsole block filesystems)")
    lacking = disk.initramfs_warnings("HOOKS=(base udev)\n#HOOKS=(base udev block filesystems)\n")
    assert len(lacking) == 2 and "no block hook" in lacking[0] and "no filesystems hook" in lacking[1]
    assert disk.initramfs_warnings("HOOKS=(base udev block)\nHOOKS=(base udev block filesystems)") == [], "the last one counts"
    assert disk.initramfs_warnings(None)


def test_debugfs_listings_are_parsed() -> None:
    text = "/2/040755/0/0/./4096/\n/2/040755/0/0/../4096/\n/33/100444/0/0/machine-id/0/\n/40/120777/1000/1000/odd name/7/\n\n"
    found = parse_listing(text)
    assert set(found) == {"machine-id", "odd name"}
    assert (found["machine-id"].mode, found["machine-id"].size) == (0o100444, 0)
    assert (found["odd name"].uid, found["odd name"].mode) == (1000, 0o120777)


def test_a_missing_tool_is_a_host_error_naming_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "mformat" else real(name, *a, **k))
    with pytest.raises(HostError, match="mformat not found") as caught:
        disk.require_tools(qcow2=False)
    assert "apt-get install mtools" in caught.value.hint
    assert set(disk.DISK_TOOLS) <= set(PACKAGES)


# -- a whole image from a fake tree, by the real tools --------------------------------------------

MISSING = [tool for tool in disk.DISK_TOOLS if shutil.which(sbin_program(tool)) is None]


def userns_works() -> bool:
    if os.geteuid() == 0:
        return shutil.which("unshare") is not None
    probe = ["unshare", "--map-auto", "--map-root-user", "--mount", "true"]
    return shutil.which("unshare") is not None and subprocess.run(probe, check=False).returncode == 0


needs_tools = pytest.mark.skipif(bool(MISSING) or not userns_works(), reason=f"missing {MISSING} or no user namespace")
HOST_HOSTNAME = Path("/etc/hostname")


def fake_box(tmp_path: Path) -> tuple[Path, Path]:
    """A small installed-looking tree with what an image leaves out, and links that point out."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_text("the host's\n")
    box = tmp_path / "box"
    for directory in ("boot", "etc/ssh", "var/lib/pacman", "usr/bin", "usr/lib/systemd/boot/efi", "home/dev", ".provision-arch"):
        (box / directory).mkdir(parents=True)
    (box / "bin").symlink_to("usr/bin")
    (box / "usr/bin/hello").write_text("#!/bin/sh\necho hello\n")
    (box / "usr/bin/hello").chmod(0o4755)
    (box / "usr/lib/systemd/boot/efi/systemd-bootx64.efi").write_bytes(b"MZ systemd-boot")
    (box / "boot/vmlinuz-linux").write_bytes(b"MZ kernel" * 1000)
    (box / "etc/initrd").write_bytes(b"the box's initramfs")
    (box / "boot/initramfs-linux.img").symlink_to("/etc/initrd")  # the box's /etc/initrd, not the host's
    (box / "boot/intel-ucode.img").write_bytes(b"microcode")
    (box / "boot/host-file").symlink_to(victim / "secret")  # resolved in the box: nothing there
    (box / "etc/hostname").write_text("the-box\n")
    (box / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (box / "etc/fstab").write_text("fsRoot / 9p rw 0 0\n")
    (box / "etc/ssh/ssh_host_ed25519_key").write_text("private\n")
    (box / "etc/ssh/sshd_config").write_text("PermitRootLogin no\n")
    (box / "etc/evil").symlink_to(victim / "secret")
    (box / "var/lib/pacman/db.lck").write_text("")
    (box / ".provision-arch/state").write_text("x")
    (box / ".provision-arch-run").symlink_to(victim)
    (box / "home/dev/notes").write_text("mine\n")
    if os.geteuid() == 0:
        os.chown(box / "home/dev", 1000, 1000)
        os.chown(box / "home/dev/notes", 1000, 1000)
    return box, victim


def root_listing(image: Path, directory: str) -> dict[str, disk.Listed]:
    start = partitions(image)[1]["start"] * 512
    out = subprocess.run([sbin_program("debugfs"), "-R", f"ls -p {directory}", f"{image}?offset={start}"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return parse_listing(out)


def root_cat(image: Path, path: str) -> bytes:
    start = partitions(image)[1]["start"] * 512
    return subprocess.run([sbin_program("debugfs"), "-R", f"cat {path}", f"{image}?offset={start}"],
                          capture_output=True, check=True).stdout  # fmt: skip


def esp_cat(image: Path, path: str) -> bytes:
    start = partitions(image)[0]["start"] * 512
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run(["mtype", "-i", f"{image}@@{start}", f"::{path}"], capture_output=True, check=True, env=env).stdout


def partitions(image: Path) -> list[dict[str, Any]]:
    out = subprocess.run([sbin_program("sfdisk"), "--json", str(image)], capture_output=True, text=True, check=True).stdout
    found: list[dict[str, Any]] = json.loads(out)["partitiontable"]["partitions"]
    return found


@needs_tools
def test_an_image_of_a_fake_box_holds_the_box_as_it_is_minus_what_belongs_to_the_box(tmp_path: Path) -> None:
    box, victim = fake_box(tmp_path)
    said: list[str] = []
    image = build_disk(box, tmp_path / "box.raw", size=None, qcow2=False, as_root=os.geteuid() == 0, progress=said.append)
    assert image.path == tmp_path / "box.raw" and image.size == (tmp_path / "box.raw").stat().st_size
    assert sorted(os.listdir(tmp_path)) == ["box", "box.raw", "victim"], "the work directory is gone"
    assert any("/boot/host-file" in line for line in said), said
    esp, root = partitions(image.path)
    assert root["uuid"].lower() == image.root_partuuid and esp["size"] * 512 == image.esp_bytes

    top = root_listing(image.path, "/")
    assert not {".provision-arch", ".provision-arch-run", ".provision-arch-unpack"} & set(top)
    assert top["bin"].mode == 0o120777, "a top-level link stays a link"
    assert set(root_listing(image.path, "/boot")) == set(), "/boot is the ESP's mount point"
    etc = root_listing(image.path, "/etc")
    assert (etc["machine-id"].mode, etc["machine-id"].size) == (0o100444, 0)
    assert etc["evil"].mode == 0o120777, "mkfs.ext4 copied the link, not the host file it points to"
    assert b"the host's" not in root_cat(image.path, "/etc/evil")
    assert root_cat(image.path, "/etc/hostname") == b"the-box\n"
    table = root_cat(image.path, "/etc/fstab").decode()
    assert f"PARTUUID={image.root_partuuid}  /      ext4" in table and "# (replaced by provision-arch export) fsRoot" in table
    assert set(root_listing(image.path, "/etc/ssh")) == {"sshd_config"}
    assert "db.lck" not in root_listing(image.path, "/var/lib/pacman")
    assert root_listing(image.path, "/usr/bin")["hello"].mode == 0o104755, "setuid bits are kept"
    if os.geteuid() == 0:
        assert root_listing(image.path, "/home")["dev"].uid == 1000
    assert all(entry.uid == 0 for entry in etc.values()), "the box's root is root in the image"

    assert esp_cat(image.path, "/EFI/BOOT/BOOTX64.EFI") == b"MZ systemd-boot"
    assert esp_cat(image.path, "/initramfs-linux.img") == b"the box's initramfs"
    assert esp_cat(image.path, "/vmlinuz-linux") == b"MZ kernel" * 1000
    entry = esp_cat(image.path, "/loader/entries/arch.conf").decode()
    assert entry.index("intel-ucode.img") < entry.index("initramfs-linux.img")
    assert f"root=PARTUUID={image.root_partuuid} rw" in entry
    assert (victim / "secret").read_text() == "the host's\n" and sorted(os.listdir(victim)) == ["secret"]


@needs_tools
def test_qcow2_is_converted_from_the_raw_image(tmp_path: Path) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("no qemu-img")
    box, _ = fake_box(tmp_path)
    image = build_disk(box, tmp_path / "box.qcow2", size=2 * GIB, qcow2=True, as_root=os.geteuid() == 0, progress=lambda _: None)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image.path)],
                                     capture_output=True, text=True, check=True).stdout)  # fmt: skip
    assert info["format"] == "qcow2" and info["virtual-size"] == 2 * GIB
    assert sorted(os.listdir(tmp_path)) == ["box", "box.qcow2", "victim"]


@needs_tools
def test_a_failure_leaves_nothing_beside_the_output(tmp_path: Path) -> None:
    box, _ = fake_box(tmp_path)
    with pytest.raises(UsageError, match="too small"):
        build_disk(box, tmp_path / "small.raw", size=300 * MIB, qcow2=False, as_root=os.geteuid() == 0, progress=lambda _: None)
    (box / "usr/lib/systemd/boot/efi/systemd-bootx64.efi").unlink()
    with pytest.raises(TreeError, match="no systemd-boot"):
        build_disk(box, tmp_path / "nosdboot.raw", size=None, qcow2=False, as_root=os.geteuid() == 0, progress=lambda _: None)
    assert sorted(os.listdir(tmp_path)) == ["box", "victim"]


def test_an_existing_output_or_one_inside_the_box_is_refused(tmp_path: Path) -> None:
    box, _ = fake_box(tmp_path)
    (tmp_path / "taken.raw").write_bytes(b"")
    with pytest.raises(UsageError, match="exists"):
        build_disk(box, tmp_path / "taken.raw", size=None, qcow2=False, as_root=True, progress=lambda _: None)
    with pytest.raises(UsageError, match="inside the box"):
        build_disk(box, box / "root/disk.raw", size=None, qcow2=False, as_root=True, progress=lambda _: None)

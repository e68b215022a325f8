"""provisioner.unpack against crafted hostile streams (issue 14, build item 3).

Every refusal test checks three things: the named error, that nothing outside the target
changed (tests.unpack_sandbox), and that the target is still the empty directory it was.
A member through a link that predates the archive cannot happen: the target must be empty,
so the tests for that are a non-empty and a symlinked target.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import random
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import provisioner.unpack
from provisioner.errors import ExitCode, ProvisionError
from provisioner.run import NotFound
from provisioner.unpack import Summary, UnpackError, agree, checked_ahead, escaped, scan, unpack, unpack_from
from tests.unpack_sandbox import Sandbox, extract_as_root

AS_ROOT = extract_as_root()
LIMIT = 1 << 30
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, owners, security.capability)")


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path / "sandbox")


def reg(name: str, data: bytes = b"data\n", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    return info, data


def special(name: str, kind: bytes, linkname: str = "", mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, mode, 1_700_000_000
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, b""


def directory(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return special(name, tarfile.DIRTYPE)


def symlink(name: str, to: str) -> tuple[tarfile.TarInfo, bytes]:
    return special(name, tarfile.SYMTYPE, to, 0o777)


def hardlink(name: str, to: str) -> tuple[tarfile.TarInfo, bytes]:
    return special(name, tarfile.LNKTYPE, to, 0o644)


def archive(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def refused(box: Sandbox, stream: bytes, *, as_root: bool = AS_ROOT, limit: int = LIMIT) -> str:
    """Unpack ``stream`` in the sandbox, expecting a refusal that leaves everything as it was; the message."""
    box.archive.write_bytes(stream)
    with pytest.raises(UnpackError) as caught:
        unpack(box.archive, box.target, as_root=as_root, limit=limit)
    assert box.changes() == []
    assert box.target_is_pristine()
    message = caught.value.message
    assert "\n" not in message
    return message


def accepted(box: Sandbox, stream: bytes, *, as_root: bool = AS_ROOT) -> Summary:
    box.archive.write_bytes(stream)
    summary = unpack(box.archive, box.target, as_root=as_root, limit=LIMIT)
    assert box.changes() == []
    return summary


def test_the_error_is_a_step_failure() -> None:
    assert issubclass(UnpackError, ProvisionError)
    assert UnpackError("x").exit_code == ExitCode.STEP


# The target: empty, a directory, not a link. This is what rules out links older than the archive.


def test_a_target_that_is_not_empty_is_refused(box: Sandbox) -> None:
    (box.target / "esc").symlink_to(box.canaries)
    box.before = box.snapshot()
    box.archive.write_bytes(archive(directory("."), reg("esc/canary", b"owned\n")))
    with pytest.raises(UnpackError, match=r"it is not empty \(it holds 'esc'\)"):
        unpack(box.archive, box.target, as_root=AS_ROOT, limit=LIMIT)
    assert box.changes() == []
    assert os.listdir(box.target) == ["esc"]
    assert (box.canaries / "canary").read_text() == "canary\n"


def test_a_symlinked_target_is_refused(box: Sandbox) -> None:
    link = box.box / "link"
    link.symlink_to("../canaries")
    box.before = box.snapshot()
    box.archive.write_bytes(archive(reg("canary", b"owned\n")))
    with pytest.raises(UnpackError, match=r"must be an empty directory, not a symlink"):
        unpack(box.archive, link, as_root=AS_ROOT, limit=LIMIT)
    assert box.changes() == []


def test_a_missing_target_is_refused(box: Sandbox) -> None:
    box.archive.write_bytes(archive(reg("a")))
    with pytest.raises(UnpackError, match="No such file or directory"):
        unpack(box.archive, box.box / "missing", as_root=AS_ROOT, limit=LIMIT)
    assert box.changes() == []


# Names.


@pytest.mark.parametrize("name", [str(Path("/nonexistent-provision-arch-test/x")), "/etc/../tmp/x"])
def test_an_absolute_name_is_refused(box: Sandbox, name: str) -> None:
    message = refused(box, archive(directory("."), reg(name)))
    assert message == f"the stream is refused: member {name!r} has an absolute name"


def test_an_absolute_name_aimed_at_a_canary_is_refused(box: Sandbox) -> None:
    name = str(box.canaries / "canary")
    assert "has an absolute name" in refused(box, archive(reg(name, b"owned\n"), fmt=tarfile.PAX_FORMAT))


@pytest.mark.parametrize("name", ["../canaries/canary", "./../../sandbox/canaries/canary", "a/../../canaries/canary", "a/.."])
def test_a_dotdot_component_is_refused(box: Sandbox, name: str) -> None:
    message = refused(box, archive(directory("a"), reg(name, b"owned\n")))
    assert message == f"the stream is refused: member {name!r} has a name with a '..' component"


def test_a_nul_in_a_name_is_refused(box: Sandbox) -> None:
    info, data = reg("placeholder")
    info.pax_headers = {"path": "a\x00../../canaries/canary"}
    assert "has a name with a NUL byte" in refused(box, archive((info, data), fmt=tarfile.PAX_FORMAT))


def test_an_empty_name_is_refused(box: Sandbox) -> None:
    assert refused(box, archive(reg(""))) == "the stream is refused: member '' has an empty name"


def test_a_name_ending_in_dot_is_refused(box: Sandbox) -> None:
    message = refused(box, archive(directory("etc"), reg("etc/.")))
    assert message == "the stream is refused: member 'etc/.' has a name ending in '.'"


def test_a_name_given_twice_is_refused(box: Sandbox) -> None:
    assert "member './a' appears twice" in refused(box, archive(reg("a"), reg("./a")))


# Symlinks the archive makes: fine themselves, never passed through.


def test_a_member_through_an_archive_symlink_is_refused(box: Sandbox) -> None:
    stream = archive(directory("."), symlink("esc", "../canaries"), reg("esc/canary", b"owned\n"))
    message = refused(box, stream)
    assert message == "the stream is refused: member 'esc/canary' lies below the archive's symlink 'esc'"


def test_a_member_through_a_later_archive_symlink_is_refused(box: Sandbox) -> None:
    stream = archive(reg("e/canary", b"owned\n"), symlink("e", str(box.canaries)))
    assert refused(box, stream) == "the stream is refused: member 'e/canary' lies below the archive's symlink 'e'"


def test_a_member_below_an_absolute_symlink_deep_in_the_tree_is_refused(box: Sandbox) -> None:
    stream = archive(directory("etc"), symlink("etc/esc", str(box.canaries)), reg("etc/esc/sub/deep", b"owned\n"))
    assert "member 'etc/esc/sub/deep' lies below the archive's symlink 'etc/esc'" in refused(box, stream)


def test_a_member_below_a_regular_file_is_refused(box: Sandbox) -> None:
    assert "lies below the archive's non-directory 'f'" in refused(box, archive(reg("f"), reg("f/g")))


def test_the_target_itself_must_be_a_directory(box: Sandbox) -> None:
    message = refused(box, archive(symlink("./", str(box.canaries)), reg("canary")))
    assert "member './' names the target itself but is not a directory" in message


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_the_target_must_not_become_writable_by_others(box: Sandbox, mode: int) -> None:
    top, _ = directory("./")
    top.mode = mode
    assert f"member '.' would make the target writable by group or others (mode {mode:04o})" in refused(box, archive((top, b"")))


# Hard links.


@pytest.mark.parametrize(
    ("to", "problem"),
    [
        ("../canaries/canary", "a name with a '..' component"),
        ("/etc/passwd", "an absolute name"),
        ("etc/passwd", "not to an earlier regular file of the archive"),
        ("d", "not to an earlier regular file of the archive"),
        ("later", "not to an earlier regular file of the archive"),
    ],
)
def test_a_hard_link_out_of_the_tree_is_refused(box: Sandbox, to: str, problem: str) -> None:
    message = refused(box, archive(directory("d"), hardlink("h", to), reg("later")))
    assert message == f"the stream is refused: member 'h' is a hard link to {to!r}, {problem}"


def test_a_hard_link_through_a_symlink_is_refused(box: Sandbox) -> None:
    stream = archive(symlink("s", str(box.canaries)), hardlink("h", "s/canary"))
    assert "is a hard link to 's/canary', not to an earlier regular file" in refused(box, stream)
    stream = archive(directory("s"), reg("s/f"), symlink("s", "/etc"), hardlink("h", "s/f"))
    assert "appears twice" in refused(box, stream)


def test_a_hard_link_to_a_symlink_is_refused(box: Sandbox) -> None:
    stream = archive(symlink("s", str(box.canaries / "canary")), hardlink("h", "s"))
    assert "is a hard link to 's', not to an earlier regular file" in refused(box, stream)


# Types.


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_a_device_node_is_refused_when_unprivileged(box: Sandbox, kind: bytes) -> None:
    message = refused(box, archive(directory("dev"), special("dev/null", kind)), as_root=False)
    assert message.startswith("the stream is refused: member 'dev/null' is a device node, which only a root install may create")


@needs_root
def test_a_device_node_is_created_as_root(box: Sandbox) -> None:
    summary = accepted(box, archive(directory("dev"), special("dev/null", tarfile.CHRTYPE, mode=0o666)), as_root=True)
    info = os.lstat(box.target / "dev/null")
    assert stat.S_ISCHR(info.st_mode)
    assert (os.major(info.st_rdev), os.minor(info.st_rdev)) == (1, 3)
    assert summary.devices == 1


@pytest.mark.parametrize("kind", [tarfile.CONTTYPE, b"V", b"D", b"M", b"N", b"Z"])
def test_other_member_types_are_refused(box: Sandbox, kind: bytes) -> None:
    info, _ = reg("odd")
    info.type = kind
    assert "member 'odd' has a member type that is not allowed" in refused(box, archive((info, b"data\n")))


def test_a_global_pax_header_is_refused(box: Sandbox) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"path": "../canaries/canary"}) as tar:
        info, data = reg("a")
        tar.addfile(info, io.BytesIO(data))
    assert "global pax header" in refused(box, out.getvalue())


def test_a_setuid_file_is_kept_and_counted(box: Sandbox) -> None:
    stream = archive(directory("."), directory("usr"), reg("usr/sudo", b"ELF", 0o4755), reg("usr/wall", b"ELF", 0o2755))
    summary = accepted(box, stream)
    assert summary == Summary(entries=4, bytes=6, setuid=2)
    assert stat.S_IMODE(os.lstat(box.target / "usr/sudo").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(box.target / "usr/wall").st_mode) == 0o2755


# Size, truncation, garbage.


def test_an_oversized_stream_is_refused(box: Sandbox) -> None:
    stream = archive(reg("a", bytes(3000)), reg("b", bytes(3000)))
    assert len(stream) == 10240
    message = refused(box, stream, limit=10_000)
    assert message == "the stream is refused: the archive is 10240 bytes, over the limit of 10000"


def test_a_huge_sparse_size_counts_at_full_length(box: Sandbox) -> None:
    info, _ = reg("big", b"")
    info.pax_headers = {"GNU.sparse.size": str(1 << 40), "GNU.sparse.map": "0,0"}
    info.pax_headers |= {"GNU.sparse.major": "0", "GNU.sparse.minor": "1"}
    message = refused(box, archive(reg("a", bytes(3000)), (info, b""), fmt=tarfile.PAX_FORMAT))
    total = 3000 + (1 << 40)
    assert message == f"the stream is refused: member 'big' brings the unpacked size to {total} bytes, over the limit of {LIMIT}"


@pytest.mark.parametrize("keep", [700, 1024, 1536, 2048, 2560])
def test_a_truncated_stream_is_refused(box: Sandbox, keep: int) -> None:
    stream = archive(directory("."), reg("a", bytes(1000)), reg("b", b"b"))
    assert stream[:keep] != stream
    message = refused(box, stream[:keep])
    assert message.startswith("the stream is truncated or not a tar")


@pytest.mark.parametrize("stream", [b"", b"not a tar\n" * 200, bytes(10240), random.Random(14).randbytes(4096)])
def test_not_a_tar_is_refused(box: Sandbox, stream: bytes) -> None:
    assert refused(box, stream).startswith("the stream is truncated or not a tar")


def test_a_corrupt_header_is_refused(box: Sandbox) -> None:
    stream = bytearray(archive(reg("a"), reg("b")))
    stream[1024 + 150] ^= 0x01  # the second header's checksum
    assert refused(box, bytes(stream)).startswith("the stream is truncated or not a tar")


def with_checksum(header: bytearray) -> bytearray:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return header


@pytest.mark.parametrize(("field", "at"), [("size", 124), ("uid", 108), ("mtime", 136)])
def test_a_negative_number_is_refused(box: Sandbox, field: str, at: int) -> None:
    stream = bytearray(archive(reg("a", b""), reg("b", b"")))
    width = 12 if field != "uid" else 8
    stream[at : at + width] = b"\xff" * width  # base-256 minus one
    assert refused(box, bytes(with_checksum(stream[:512]) + stream[512:])) in (
        "the stream is refused: member 'a' has a negative size, owner or time",
        "the stream is truncated or not a tar (Invalid argument while reading it)",
    )


def test_a_huge_pax_header_is_not_read_into_memory(box: Sandbox) -> None:
    info, data = reg("a")
    info.pax_headers = {"path": "a" * 200}
    stream = bytearray(archive((info, data), fmt=tarfile.PAX_FORMAT))
    assert stream[156:157] == tarfile.XHDTYPE
    stream[124:136] = b"77777777777\0"  # 8 GiB of pax records, says the header
    assert refused(box, bytes(with_checksum(stream[:512]) + stream[512:])).startswith("the stream is truncated or not a tar")


def test_a_name_from_the_guest_is_shown_escaped(box: Sandbox) -> None:
    message = refused(box, archive(reg("/\x1b]52;c;aGk=\x07\n")))
    assert "\x1b" not in message
    assert "\\x1b]52" in message


def test_scan_reads_from_the_handle_it_is_given(box: Sandbox) -> None:
    stream = archive(directory("."), reg("a"), hardlink("b", "a"), symlink("c", "/etc/passwd"))
    box.archive.write_bytes(stream)
    with box.archive.open("rb") as handle:
        handle.seek(700)
        assert scan(handle, as_root=False, limit=LIMIT) == Summary(entries=4, bytes=5, setuid=0)


# GNU tar must read what tarfile read.


@pytest.mark.parametrize(
    "name", ["plain", "a b -> c", "tab\there", "new\nline", "back\\slash", "caf\u00e9", "\x01\x7f\xff", "q\"u'o?te??/"]
)
def test_gnu_tar_lists_names_as_escaped_predicts(tmp_path: Path, name: str) -> None:
    path = tmp_path / "a.tar"
    path.write_bytes(archive(reg(name.rstrip("/")), fmt=tarfile.PAX_FORMAT))
    env = {**os.environ, "LC_ALL": "C"}
    listing = subprocess.run(["tar", "-t", "--quoting-style=escape", "-f", str(path)], capture_output=True, env=env, check=True)
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
    assert listing.stdout.decode("ascii") == escaped(name.rstrip("/")) + "\n"


def test_a_listing_that_disagrees_with_tarfile_is_refused() -> None:
    members = [directory(".")[0], symlink("s", "/etc")[0], reg("a")[0]]
    good = "drwxr-xr-x 0/0 0 2023-11-14 22:13 ./\n"
    good += "lrwxrwxrwx 0/0 0 2023-11-14 22:13 s -> /etc\n-rw-r--r-- 0/0 5 2023-11-14 22:13 a\n"
    agree(members, good)
    for bad in (
        good.replace(" a\n", " s/a\n"),  # another name
        good.replace("-rw-r--r--", "lrw-r--r--"),  # another type
        good.replace("-> /etc", "-> /"),  # another link target
        good + "-rw-r--r-- 0/0 5 2023-11-14 22:13 b\n",  # a member tarfile did not see
        good.replace("2023-11-14 22:13 ", ""),  # a line that does not parse
    ):
        with pytest.raises(UnpackError, match="GNU tar"):
            agree(members, bad)


def test_a_pax_directory_name_with_a_slash_is_accepted(box: Sandbox) -> None:
    info, _ = directory("placeholder")
    info.pax_headers = {"path": "dir/"}
    assert accepted(box, archive((info, b""), reg("dir/f"), fmt=tarfile.PAX_FORMAT)).entries == 2
    assert (box.target / "dir/f").read_bytes() == b"data\n"


# A whole tree round-trips.


def build_tree(root: Path, *, as_root: bool) -> None:
    """A small system-like tree: dirs, files, modes, symlinks anywhere, hard links, xattrs, owners."""
    (root / "etc/ssl").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "var/empty").mkdir(parents=True)
    (root / "etc/hostname").write_text("box\n")
    (root / "etc/shadow").write_text("root:!:1::::::\n")
    os.chmod(root / "etc/shadow", 0o600)
    (root / "usr/bin/sudo").write_bytes(b"\x7fELF sudo")
    os.chmod(root / "usr/bin/sudo", 0o4755)  # noqa: S103 — a test tree under tmp_path
    (root / "usr/bin/ping").write_bytes(b"\x7fELF ping")
    (root / "usr/bin/vi").write_bytes(b"\x7fELF vi")
    os.link(root / "usr/bin/vi", root / "usr/bin/ex")
    (root / "bin").symlink_to("usr/bin")
    (root / "etc/localtime").symlink_to("/usr/share/zoneinfo/UTC")
    (root / "etc/ssl/cert.pem").symlink_to("../../../../../../etc/ssl/certs/ca.pem")
    (root / "etc/mtab").symlink_to("/proc/self/mounts")
    os.mkfifo(root / "var/fifo")
    os.chmod(root / "var/empty", 0o1777)  # noqa: S103 — a test tree under tmp_path
    (root / "big").write_bytes(random.Random(3).randbytes(300_000))
    os.setxattr(root / "etc/hostname", "user.x", b"value")
    if as_root:
        os.chown(root / "etc/shadow", 0, 0)
        os.chown(root / "usr/bin/vi", 1234, 5678)
        os.chown(root / "etc/localtime", 42, 43, follow_symlinks=False)
        # CAP_NET_RAW, permitted and effective (struct vfs_cap_data, revision 2).
        capability = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)
        os.setxattr(root / "usr/bin/ping", "security.capability", capability)
    for path in [*root.rglob("*"), root]:
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_123_456_789), follow_symlinks=False)


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    """Each entry's type, mode, owner, size, mtime, content hash, link target, xattrs and hard-link group."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for path in sorted([root, *root.rglob("*")]):
        info = os.lstat(path)
        name = str(path.relative_to(root))
        extra: object = None
        if stat.S_ISREG(info.st_mode):
            extra = hashlib.sha256(path.read_bytes()).hexdigest(), inodes.setdefault(info.st_ino, name)
        elif stat.S_ISLNK(info.st_mode):
            extra = os.readlink(path)
        attrs = {} if stat.S_ISLNK(info.st_mode) else {key: os.getxattr(path, key) for key in sorted(os.listxattr(path))}
        mtime = None if stat.S_ISLNK(info.st_mode) else info.st_mtime_ns
        size = info.st_size if not stat.S_ISDIR(info.st_mode) else None
        out[name] = (info.st_mode, info.st_uid, info.st_gid, size, mtime, extra, attrs)
    return out


@pytest.fixture
def gnu_tree(tmp_path: Path) -> Iterator[Path]:
    source = tmp_path / "source"
    source.mkdir()
    build_tree(source, as_root=os.geteuid() == 0)
    yield source
    shutil.rmtree(source)


def test_a_tree_round_trips(box: Sandbox, gnu_tree: Path) -> None:
    """What the guest sends (GNU tar -c with the stream's flags) comes back exactly, symlinks anywhere included."""
    packed = subprocess.run(
        ["tar", "-c", "--numeric-owner", "--acls", "--xattrs", "--xattrs-include=*", "--sparse", "-f", "-", "."],
        cwd=gnu_tree,
        capture_output=True,
        check=True,
    )
    assert packed.stderr == b""
    summary = accepted(box, packed.stdout)
    assert summary.setuid == 1
    assert summary.entries == len(list(gnu_tree.rglob("*"))) + 1
    regular = [os.lstat(path) for path in gnu_tree.rglob("*") if path.is_file() and not path.is_symlink()]
    files = {info.st_ino: info.st_size for info in regular}
    assert summary.bytes == sum(files.values())
    expected, got = describe(gnu_tree), describe(box.target)
    if not AS_ROOT:  # in the user namespace, guest root is the user: compare everything but the owners
        expected = {k: (v[0], *v[3:]) for k, v in expected.items()}
        got = {k: (v[0], *v[3:]) for k, v in got.items()}
    assert got == expected
    if os.geteuid() == 0:
        assert os.getxattr(box.target / "usr/bin/ping", "security.capability")[4:8] == (1 << 13).to_bytes(4, "little")
        assert os.lstat(box.target / "usr/bin/vi").st_uid == 1234


def test_a_tarfile_tree_with_long_names_round_trips(box: Sandbox) -> None:
    long_dir = "d" * 120
    long_name = f"{long_dir}/{'f' * 200}"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        stream = archive(
            directory("."), directory(long_dir), reg(long_name, b"long"), hardlink("h" * 150, long_name),
            symlink("l" * 130, "/" + "t" * 300), special("fifo", tarfile.FIFOTYPE), fmt=fmt,
        )  # fmt: skip
        assert accepted(box, stream) == Summary(entries=6, bytes=4, setuid=0)
        assert (box.target / long_name).read_bytes() == b"long"
        assert os.readlink(box.target / ("l" * 130)) == "/" + "t" * 300
        assert os.lstat(box.target / ("h" * 150)).st_ino == os.lstat(box.target / long_name).st_ino
        box.empty_target()


def test_a_tar_warning_fails_the_unpack(box: Sandbox) -> None:
    info, data = reg("a")
    info.pax_headers = {"SCHILY.xattr.bogus.x": "1"}  # a lost xattr: tar says so on stderr and exits 0
    box.archive.write_bytes(archive((info, data), fmt=tarfile.PAX_FORMAT))
    with pytest.raises(UnpackError, match=r"Cannot set 'bogus.x' extended attribute") as caught:
        unpack(box.archive, box.target, as_root=AS_ROOT, limit=LIMIT)
    assert caught.value.message.startswith("tar unpacked the stream with status 0; the target may hold part of the tree: tar: ")
    assert box.changes() == []


def test_a_future_time_stamp_is_kept_without_failing(box: Sandbox) -> None:
    """A guest clock slightly ahead of the host's dates files in the future: not a reason to fail."""
    info, data = reg("future")
    info.mtime = 2**33  # the year 2242
    accepted(box, archive((info, data), fmt=tarfile.PAX_FORMAT))
    assert os.lstat(box.target / "future").st_mtime == 2**33


def test_the_stream_must_be_a_regular_file_reached_without_a_link(box: Sandbox) -> None:
    box.archive.write_bytes(archive(reg("a")))
    link = box.root / "link.tar"
    link.symlink_to(box.archive)
    box.before = box.snapshot()
    with pytest.raises(UnpackError, match=r"cannot open the stream .*link.tar: Too many levels of symbolic links"):
        unpack(link, box.target, as_root=AS_ROOT, limit=LIMIT)
    with pytest.raises(UnpackError, match=r"is not a regular file"):
        unpack(box.canaries, box.target, as_root=AS_ROOT, limit=LIMIT)
    assert box.changes() == []
    assert box.target_is_pristine()


@pytest.mark.parametrize(("path", "as_root", "program"), [([], True, "tar"), (["tar"], False, "unshare")])
def test_a_missing_program_is_a_host_error(
    box: Sandbox, monkeypatch: pytest.MonkeyPatch, path: list[str], as_root: bool, program: str
) -> None:
    bin_dir = box.root.parent / "bin"
    bin_dir.mkdir()
    for name in path:
        (bin_dir / name).symlink_to(shutil.which(name) or name)
    box.archive.write_bytes(archive(directory("."), reg("a")))
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(NotFound) as caught:
        unpack(box.archive, box.target, as_root=as_root, limit=LIMIT)
    assert caught.value.program == program
    assert caught.value.exit_code == ExitCode.HOST
    assert box.target_is_pristine()


def test_unpack_from_reads_the_handle_it_is_given(box: Sandbox) -> None:
    box.archive.write_bytes(archive(directory("."), reg("a")))
    with box.archive.open("rb") as handle:
        handle.read(100)  # where the caller's hashing left it
        assert unpack_from(handle, box.target, as_root=AS_ROOT, limit=LIMIT) == Summary(entries=2, bytes=5, setuid=0)
    assert (box.target / "a").read_bytes() == b"data\n"


def test_a_consumed_stream_gives_its_blocks_back_as_tar_reads_it(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream install's unpack: the tree arrives whole, the archive keeps its size and
    holds no data any more, so the unpack never needed room for two copies of the tree."""
    monkeypatch.setattr("provisioner.unpack.PUNCH_EVERY", 1 << 20)
    rng = random.Random(7)
    files = [reg(f"d/f{i}", rng.randbytes(rng.randint(1, 600_000))) for i in range(20)]
    box.archive.write_bytes(archive(directory("."), directory("d"), *files))
    size = box.archive.stat().st_size
    assert box.archive.stat().st_blocks * 512 >= size - 4096
    punched: list[tuple[int, int]] = []
    real_punch = provisioner.unpack.punch_hole

    def punch(fd: int, at: int, n: int) -> None:
        punched.append((at, n))
        real_punch(fd, at, n)

    monkeypatch.setattr("provisioner.unpack.punch_hole", punch)
    assert unpack(box.archive, box.target, as_root=AS_ROOT, limit=LIMIT, consume=True).entries == 22
    for info, data in files:
        assert (box.target / info.name).read_bytes() == data
    # Freed in steps, each after the last, the whole file in the end.
    assert len(punched) > 2 and punched[0][0] == 0
    assert all(at == prev + n for (prev, n), (at, _) in itertools.pairwise(punched))
    assert punched[-1][0] + punched[-1][1] == size
    assert box.archive.stat().st_size == size
    assert box.archive.stat().st_blocks * 512 <= 64 << 10  # a file system may keep a block or so


def test_only_a_consumed_stream_is_freed(box: Sandbox) -> None:
    data = archive(directory("."), reg("a", b"x" * 300_000))
    box.archive.write_bytes(data)
    unpack(box.archive, box.target, as_root=AS_ROOT, limit=LIMIT)
    assert box.archive.read_bytes() == data


def test_a_refused_stream_is_not_consumed(box: Sandbox) -> None:
    """A refusal comes before the extraction: the archive is whole for whoever looks into it."""
    stream = archive(directory("."), reg("../escape"), reg("b", b"y" * 300_000))
    box.archive.write_bytes(stream)
    with pytest.raises(UnpackError, match="refused"):
        unpack(box.archive, box.target, as_root=AS_ROOT, limit=LIMIT, consume=True)
    assert box.archive.read_bytes() == stream
    assert box.target_is_pristine()


# checked_ahead: the stream install's two halves, the check while the guest powers off, then the extraction.


def test_a_stream_checked_ahead_unpacks_when_asked_and_not_before(box: Sandbox) -> None:
    box.archive.write_bytes(archive(directory("."), directory("d"), reg("d/a")))
    with checked_ahead(box.archive, as_root=AS_ROOT, limit=LIMIT, consume=True) as extract:
        time.sleep(0.5)  # the check is done by now, the extraction waits for the call
        assert box.target_is_pristine()
        assert extract(box.target) == Summary(entries=3, bytes=5, setuid=0)
    assert (box.target / "d/a").read_bytes() == b"data\n"
    assert box.changes() == []


def test_a_stream_checked_ahead_and_refused_is_refused_when_extracted(box: Sandbox) -> None:
    stream = archive(directory("."), symlink("esc", str(box.canaries)), reg("esc/canary", b"owned\n"))
    box.archive.write_bytes(stream)
    with (
        checked_ahead(box.archive, as_root=AS_ROOT, limit=LIMIT, consume=True) as extract,
        pytest.raises(UnpackError, match="lies below the archive's symlink"),
    ):
        extract(box.target)
    assert box.changes() == [] and box.target_is_pristine()
    assert box.archive.read_bytes() == stream  # not consumed


def test_a_check_ahead_left_unused_stops_and_unpacks_nothing(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """An install that fails or is interrupted while the guest powers off: leaving the context
    ends the check at its next member, closes the archive, and nothing reaches the target."""
    box.archive.write_bytes(archive(directory("."), *(reg(f"f{i}") for i in range(2000))))
    read: list[int] = []
    real_next = tarfile.TarFile.next

    def slow_next(self: tarfile.TarFile) -> tarfile.TarInfo | None:
        read.append(1)
        time.sleep(0.005)
        return real_next(self)

    monkeypatch.setattr(tarfile.TarFile, "next", slow_next)
    started = time.monotonic()
    with checked_ahead(box.archive, as_root=AS_ROOT, limit=LIMIT, consume=True):
        time.sleep(0.2)
    assert time.monotonic() - started < 3  # 2000 members at 5 ms would take 10 s
    assert 0 < len(read) < 2000
    assert box.target_is_pristine() and box.changes() == []
    assert not [fd for fd in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{fd}") == str(box.archive)]

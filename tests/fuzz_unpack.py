"""Fuzz provisioner.unpack with generated and mutated tar streams: nothing outside the target may change.

    python -m tests.fuzz_unpack [N]      (make fuzz: N = 100000)

Inputs come from hypothesis, half of them built member by member with tarfile (every member
type, long names, names and link targets aimed out of the target, pax records that rename
members or claim sparse maps), half taken from seed archives GNU tar made the way the guest
does (sparse files in every sparse format, hard links, long names, symlinks, FIFOs, devices
as root, xattrs, setuid) and then mutated: truncated, bytes flipped, header fields rewritten
with their checksum fixed so tar reads on, blocks duplicated or dropped. Each input is
unpacked into the empty target of a sandbox (tests.unpack_sandbox) whose canaries and
symlinks pointing out of the target are compared after every input; a change, or an
exception other than UnpackError, stops the run (hypothesis then shrinks the input).
Prints inputs tried, refused (by reason), accepted, and the wall time.
"""

from __future__ import annotations

import collections
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from provisioner import unpack as unpack_module
from provisioner.unpack import UnpackError, unpack
from tests.unpack_sandbox import Sandbox, extract_as_root

AS_ROOT = extract_as_root()
LIMIT = 1 << 24
BLOCK = tarfile.BLOCKSIZE

# Header fields of a ustar block: (offset, length).
FIELDS = {
    "name": (0, 100), "mode": (100, 8), "uid": (108, 8), "size": (124, 12), "mtime": (136, 12), "type": (156, 1),
    "linkname": (157, 100), "magic": (257, 8), "devmajor": (329, 8), "prefix": (345, 155),
}  # fmt: skip

COMPONENTS = ["a", "b", "etc", "..", ".", "", "esc", "canaries", "canary", "x" * 99, "y" * 160, "caf\u00e9", "n\nl", "sp ace"]
TYPES = [b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"L", b"K", b"x", b"g", b"S", b"V", b"D", b"M", b"N", b"X"]
PAX_KEYS = [
    "path", "linkpath", "size", "uid", "mtime", "GNU.sparse.name", "GNU.sparse.size", "GNU.sparse.realsize",
    "GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.map", "GNU.sparse.numblocks", "GNU.sparse.offset",
    "GNU.sparse.numbytes", "GNU.dumpdir", "SCHILY.xattr.user.x", "SCHILY.xattr.security.capability",
    "SCHILY.devmajor", "SCHILY.filetype", "LIBARCHIVE.xattr.user.y", "hdrcharset", "comment",
]  # fmt: skip

# pax values: escapes (the canary's absolute name is added once the sandbox exists), numbers, sparse maps.
VALUES = ["../canaries/canary", "esc/canary", "0", "1", "100", "4096", "-1", "99999999999", "0,10,20,5", "0,600", "a", ""]


class Run:
    """The sandbox, the seeds and the tallies of one fuzzing run."""

    def __init__(self, root: Path) -> None:
        self.sandbox = Sandbox(root / "sandbox")
        self.seeds = make_seeds(root / "seeds", self.sandbox)
        VALUES.append(str(self.sandbox.canaries / "canary"))
        COMPONENTS.append(str(self.sandbox.canaries).lstrip("/"))
        self.tried = 0
        self.accepted = 0
        self.refused: collections.Counter[str] = collections.Counter()
        self.failing: bytes | None = None

    def feed(self, stream: bytes) -> None:
        box = self.sandbox
        box.archive.write_bytes(stream)
        self.tried += 1
        try:
            unpack(box.archive, box.target, as_root=AS_ROOT, limit=LIMIT)
        except UnpackError as exc:
            self.refused[reason(exc.message)] += 1
            wrote = exc.message.startswith("tar unpacked")
            if not wrote and not box.target_is_pristine():
                raise AssertionError(f"a refusal before tar ran left the target changed: {exc.message}") from exc
        else:
            self.accepted += 1
        changes = box.changes()
        if changes:
            raise AssertionError("written outside the target:\n" + "\n".join(changes[:20]))
        box.empty_target()

    def report(self, started: float) -> str:
        wall = time.monotonic() - started
        lines = [
            f"inputs tried: {self.tried}, refused: {sum(self.refused.values())}, accepted: {self.accepted}",
            f"wall time: {wall:.1f} s ({self.tried / wall if wall else 0:.1f} inputs/s), load average {os.getloadavg()[0]:.2f}",
            "refusals by reason:",
            *(f"  {count:7d}  {why}" for why, count in self.refused.most_common()),
        ]
        return "\n".join(lines)


SHOWN = re.compile(r"""member ('(?:[^'\\]|\\.)*['…]|"(?:[^"\\]|\\.)*["…]) (.*)""")  # unpack.shown() may cut a name short


def reason(message: str) -> str:
    """A refusal's kind, without the guest's names or numbers: for the tally."""
    if message.startswith("the stream is truncated"):
        return "truncated or not a tar"
    if message.startswith("tar "):
        return "tar failed or warned (" + message.split(": ", 1)[0] + ")"
    if message.startswith("the stream is refused: GNU tar reads"):
        return "GNU tar reads another number of members than tarfile"
    match = SHOWN.search(message)
    text = match.group(2) if match else message
    text = re.split(r"""['"(]""", text)[0]
    return "member " + re.sub(r"\d+", "N", text).strip(" ,")


def make_seeds(where: Path, sandbox: Sandbox) -> list[bytes]:
    """Archives GNU tar writes the way the guest does, over a tree with every kind of entry."""
    src = where / "src"
    (src / "etc").mkdir(parents=True)
    (src / ("d" * 120)).mkdir()
    (src / "etc/passwd").write_text("root:x:0:0::/root:/bin/bash\n")
    (src / ("d" * 120) / ("f" * 140)).write_bytes(b"long name\n")
    os.link(src / "etc/passwd", src / "etc/passwd-")
    os.link(src / ("d" * 120) / ("f" * 140), src / ("h" * 110))
    (src / "bin").symlink_to("usr/bin")
    (src / "esc").symlink_to(sandbox.canaries)
    (src / "up").symlink_to("../../canaries")
    (src / ("l" * 120)).symlink_to("/" + "t" * 200)
    os.mkfifo(src / "fifo")
    (src / "sudo").write_bytes(b"\x7fELF")
    os.chmod(src / "sudo", 0o4755)  # noqa: S103 — a seed tree under a temporary directory
    os.setxattr(src / "etc/passwd", "user.x", b"1")
    with (src / "sparse").open("wb") as sparse:
        for offset in (0, 70_000, 300_000):
            sparse.seek(offset)
            sparse.write(b"s" * 5000)
    if os.geteuid() == 0:
        os.mknod(src / "null", 0o666 | 0o020000, os.makedev(1, 3))
        os.chown(src / "etc/passwd", 1234, 5678)
    seeds = []
    flags = ["--numeric-owner", "--acls", "--xattrs", "--xattrs-include=*", "--sparse"]
    for fmt in (["--format=gnu"], ["--format=posix", "--sparse-version=0.0"], ["--format=posix", "--sparse-version=0.1"],
                ["--format=posix", "--sparse-version=1.0"], ["--format=posix"], ["--format=ustar"]):  # fmt: skip
        argv = ["tar", "-c", *flags, *fmt, "-f", "-", "."]
        if fmt == ["--format=gnu"]:  # the GNU format holds no xattrs or ACLs
            argv = ["tar", "-c", "--numeric-owner", "--sparse", *fmt, "-f", "-", "."]
        if fmt == ["--format=ustar"]:  # ustar holds no long names, xattrs or sparse maps
            argv = ["tar", "-c", "--numeric-owner", "--format=ustar", "-f", "-", "./etc", "./bin", "./fifo", "./sudo"]
        result = subprocess.run(argv, cwd=src, capture_output=True, check=True)
        seeds.append(result.stdout)
    return seeds


def names(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4))
    prefix = draw(st.sampled_from(["", "", "", "./", "/", "../", "//"]))
    return prefix + "/".join(parts) + draw(st.sampled_from(["", "", "/"]))


@st.composite
def built(draw: st.DrawFn) -> bytes:
    """An archive written member by member with tarfile."""
    fmt = draw(st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]))
    out = io.BytesIO()
    count = draw(st.integers(1, 8))
    with tarfile.open(fileobj=out, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        if draw(st.booleans()):
            top = tarfile.TarInfo("./")
            top.type, top.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(top)
        for _ in range(count):
            info = tarfile.TarInfo(names(draw))
            info.type = draw(st.sampled_from([tarfile.REGTYPE] * 3 + [tarfile.DIRTYPE] * 2 + TYPES))
            info.linkname = names(draw) if draw(st.booleans()) else ""
            info.mode = draw(st.sampled_from([0o644, 0o755, 0o4755, 0o2755, 0o1777, 0o000, 0o7777]))
            info.uid = draw(st.sampled_from([0, 1000, 65534, 2**21, 2**31]))
            info.mtime = draw(st.sampled_from([1_700_000_000, 0, 2**33]))
            info.devmajor, info.devminor = draw(st.sampled_from([(1, 3), (0, 0), (8, 0)]))
            data = draw(st.binary(max_size=600)) if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, b"7") else b""
            info.size = len(data)
            if fmt == tarfile.PAX_FORMAT and draw(st.integers(0, 3)) == 0:
                keys = draw(st.lists(st.sampled_from(PAX_KEYS), max_size=3))
                values = [*VALUES, names(draw)]
                info.pax_headers = {key: draw(st.sampled_from(values)) for key in keys}
            try:
                tar.addfile(info, io.BytesIO(data) if data or info.isreg() else None)
            except (ValueError, OverflowError, UnicodeError):
                continue  # tarfile will not write it in this format
    return out.getvalue()


def fix_checksum(stream: bytearray, start: int) -> None:
    block = stream[start : start + BLOCK]
    block[148:156] = b" " * 8
    stream[start + 148 : start + 156] = b"%06o\0 " % (sum(block) & 0o777777)


def headers(stream: bytes) -> list[int]:
    """Offsets of the blocks whose checksum says they are headers."""
    found = []
    for start in range(0, len(stream) - BLOCK + 1, BLOCK):
        block = stream[start : start + BLOCK]
        if block == bytes(BLOCK):
            continue
        stored = block[148:156].split(b"\0")[0].strip()
        if stored and all(48 <= c <= 55 for c in stored) and int(stored, 8) == sum(block[:148]) + 256 + sum(block[156:]):
            found.append(start)
    return found


NUMBERS = [b"0", b"7777777", b"\x80" + bytes(6) + b"\x01", b"\xff" * 8, b"777777777777", b"", b"1 2"]


def rewrite_field(draw: st.DrawFn, stream: bytearray, start: int) -> None:
    """Rewrite one field of the header at ``start`` and fix its checksum, so that tar reads on."""
    field = draw(st.sampled_from(sorted(FIELDS)))
    offset, length = FIELDS[field]
    if field in ("name", "linkname", "prefix"):
        value = names(draw).encode("utf-8", "surrogateescape")
    elif field == "type":
        value = draw(st.sampled_from(TYPES))
    elif field == "magic":
        value = draw(st.sampled_from([b"ustar\x0000", b"ustar  \0", b"\0" * 8]))
    else:
        value = draw(st.sampled_from(NUMBERS))
    stream[start + offset : start + offset + length] = value[:length].ljust(length, b"\0")
    fix_checksum(stream, start)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed (or a built archive) with a few mutations."""
    base = draw(st.one_of(st.sampled_from(seeds), built()))
    stream = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["field", "field", "field", "flip", "truncate", "dup", "drop", "splice"]))
        starts = headers(bytes(stream))
        if kind == "field" and starts:
            rewrite_field(draw, stream, draw(st.sampled_from(starts)))
        elif kind == "flip" and stream:
            for _ in range(draw(st.integers(1, 8))):
                at = draw(st.integers(0, len(stream) - 1))
                stream[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate" and stream:
            del stream[draw(st.integers(0, len(stream) - 1)) :]
        elif kind in ("dup", "drop") and len(stream) >= BLOCK:
            blocks = len(stream) // BLOCK
            first = draw(st.integers(0, blocks - 1))
            last = draw(st.integers(first + 1, min(blocks, first + 4)))
            piece = stream[first * BLOCK : last * BLOCK]
            if kind == "dup":
                stream[first * BLOCK : first * BLOCK] = piece
            else:
                del stream[first * BLOCK : last * BLOCK]
        elif kind == "splice" and starts:
            other = draw(st.sampled_from(seeds))
            at = draw(st.sampled_from(starts))
            cut = draw(st.integers(0, len(other) // BLOCK)) * BLOCK
            stream[at:] = other[cut:]
    return bytes(stream)


def main(argv: list[str]) -> int:
    count = int(argv[1]) if len(argv) > 1 else 1000
    warnings.simplefilter("ignore")  # hypothesis's notes on large reprs of the failing input
    unpack_module.TAR_TIMEOUT = 60.0  # a hang shows as a refusal within a minute, not an hour
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz-unpack-") as tmp:
        run = Run(Path(tmp))
        mode = "as root" if AS_ROOT else "in a user namespace"
        print(f"fuzzing provisioner.unpack with {count} inputs ({mode}; sandbox {run.sandbox.root})", flush=True)

        @settings(
            max_examples=count, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(st.one_of(built(), mutated(run.seeds)))
        def fuzz(stream: bytes) -> None:
            try:
                run.feed(stream)
            except BaseException:
                run.failing = stream  # the last one is the input hypothesis shrank to
                raise
            if run.tried % 1000 == 0:
                print(f"  {run.tried} inputs, {sum(run.refused.values())} refused, {run.accepted} accepted, "
                      f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip

        try:
            fuzz()
        except Exception as exc:
            print(run.report(started))
            if run.failing is not None:
                saved = Path(tempfile.gettempdir()) / "fuzz-unpack-failure.tar"
                saved.write_bytes(run.failing)
                print(f"the failing input ({len(run.failing)} bytes) is in {saved}")
            failures = list(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else [exc]
            for failure in failures:
                where = traceback.extract_tb(failure.__traceback__)[-1]
                print(f"FAILED: {type(failure).__name__} at {where.filename}:{where.lineno}: {str(failure)[:2000]}")
                for note in getattr(failure, "__notes__", [])[:3]:
                    print(f"  {note[:3000]}")
            return 1
        print(run.report(started))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""`make bench`: the figures whose speed users feel, measured side by side in one run.

On the offline stand-in (built as root the first time), in this order:

1. console: a command's round trip through the driver (``Console.run``) vs raw pexpect on
   the same shell, on a local bash and in the booted box;
2. install: the same package sets installed both ways (``--install-via stream`` and ``9p``),
   from the stand-in's archive served over HTTP with filler packages added: the base set
   per step from the ``--json`` events, with the orchestration overhead (wall time minus the
   sum of the steps); then the base set, 2x and 4x its files (growth), wall time per way;
   all as root, then 1x and 4x as the unprivileged test user, as users run it (QEMU in a
   user namespace, where 9p costs most);
3. boot: QEMU's start to the first command's answer vs the kernel's own boot time (dmesg
   timestamps), for the box on a 9p root and on a virtiofs root;
4. shares: one guest session with host directories mounted side by side (9p
   ``cache=mmap``, 9p ``cache=loose``, virtiofs with virtiofsd's ``cache=always``, ``auto``
   and ``never``; the guest's tmpfs as the floor): extract
   one tar of BENCH_FILES (1000) small files, stat every one of them (what ``git status``
   does) with the guest's caches dropped and warm, create and remove as many empty files;
   the walk stands in for a real ``git status`` and no C build is timed: the stand-in has no
   git, make or compiler to install (its base-devel is an empty marker package);
   each workload runs on every mount in turn, so that a comparison is never split
   by minutes of other people's load; the host's own tar, walk and creation for scale;
   then coherence on each share: how long until the box reads what the host wrote, and the
   other way round;
5. root: the stat walks (over the same tree, made on the host) and the creation on the
   booted box's own root, on 9p (``cache=mmap``) and on virtiofs;
6. fixed: the live ISO booted as an install boots it, to the login prompt, to a shell and
   to a ready pacman keyring, four ways in turn, FIXED_ROUNDS rounds: as before (every unit
   of the ISO, pacman-init's keyring), with the units the install does without masked but
   pacman-init's keyring, as a first install from an ISO does today (``qemu.LIVE_MASKED``,
   the install's own keyring, ``keyring.MAKE``, its master key's secret forgotten, sent to
   the host and kept, a new master key made), and as
   every later install from that ISO does (the keyring the first way kept in that round,
   unpacked from the stage: ``keyring.restore``); with the keys gpg holds valid each way;
7. export: ``provision-arch export`` to each format (tar, oci, raw, qcow2), as root, of the
   base-set box and of the bench's largest tree (the 4x set): wall time and the output's size
   on the host's disk (and apparent, for the sparse disk images) beside the tree's own;
8. real: the base set with filler packages shaped like a real default set's (a kernel's
   thousands of compressed modules, tens of thousands of small documents and their symlinks,
   libraries with their ``.so`` links, a toolchain's large binaries and hard links), at each
   of BENCH_REAL_SCALES (default 0.25 and 1.1; 1 is about 60,000 entries, a 1.1 GiB tree and
   a 0.6 GiB package cache, 15x the 4x set's entries, and 1.1 16x), installed both ways as
   root, one after the other: wall
   time per step, the peak disk use over the whole install (the used bytes, sampled, of a
   file system of the install's own: target, package cache and workspace) against the
   tree's own size, the stream's send rate, and the unpack against the host's own ``tar -x``
   of the same tar (the tree packed again on the host with the install's flags) into the
   same file system, with provision-arch's unpack (checks and all) timed on that tar too.

BENCH_SECTIONS (a comma list of ``install``, ``box``, ``fixed``, ``export`` and ``real``;
default all) chooses the long sections: ``install`` is section 2 (about half an hour), ``box``
sections 3-5, ``fixed`` section 6, ``export`` section 7, ``real`` section 8. The console
round trip on a local bash and the ISO read take seconds and always run; a section whose
boxes ``install`` did not leave installs them via stream from the same mirror.

Prints a table (the README's "Measured" section is a copy) and writes it as JSON to
``bench-results.json`` (``BENCH_OUT`` to change). Every figure carries the machine (nproc,
CPU model), the accelerator and the date; the load average before and after and the other
QEMUs running say how noisy the machine was. No fixed sleeps: every wait is on the console.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pexpect

from provisioner import keyring
from provisioner.config import Accel, RootFs
from provisioner.console import Console, Transcript
from provisioner.export import Format
from provisioner.install import GUEST_STAGE, STAGE_MOUNT_OPTIONS, STREAM_LIMIT
from provisioner.iso import read_boot_files
from provisioner.qemu import (
    LIVE_MASKED,
    QEMU,
    STAGE_TAG,
    Hardware,
    Machine,
    Served,
    boot_argv,
    install_argv,
    resolve_accel,
    share_argv,
    shared_memory_argv,
    virtiofs_argv,
)
from provisioner.session import KEPT_KEYRING
from provisioner.stream import TAR_KEEP, TAR_PACK
from provisioner.unpack import unpack
from provisioner.virtiofs import require_virtiofsd, start_virtiofsd, user_namespace
from provisioner.workspace import make_pipe
from tests.standin import repo
from tests.standin.archive import ensure_archive, pkgname
from tests.standin.mirror import Mirror
from tests.vm.unprivileged import E2EUser, as_user, ensure_user, install_cli

ROOT = Path(__file__).parents[1]
FAKE = Path(__file__).parent / "console/fake_archiso.sh"
OUT = Path(os.environ.get("BENCH_OUT", ROOT / "bench-results.json"))
PASSWORD = "bench-Pw-0"  # the throwaway bench box's root password
PACKAGES = "base linux mkinitcpio"
# Small files in the workload's tar, and empty files created and removed. Under TCG on a
# shared 2-core machine a file costs 50-150 ms over 9p: 1000 keeps the run under 15 minutes.
FILES = int(os.environ.get("BENCH_FILES", "1000"))
CREATES = FILES
TAR = "/root/bench.tar"  # where the box finds it
# The tmpfs the bench mounts in the box, and the tar's copy there that every extraction reads:
# the stand-in has no tmp.mount (Arch's systemd has), so the box's /tmp is on its root.
TMPFS = "/tmp/bench"
SOURCE = f"{TMPFS}/bench.tar"
# The mounts of the shares section: name -> (how it is shared, 9p's guest mount options or
# virtiofsd's cache mode).
NINEP = "trans=virtio,version=9p2000.L,msize=512000,posixacl"
SHARES = {"9p cache=mmap": (RootFs.NINEP, f"{NINEP},cache=mmap"), "9p cache=loose": (RootFs.NINEP, f"{NINEP},cache=loose"),
          "virtiofs cache=always": (RootFs.VIRTIOFS, "always"), "virtiofs cache=auto": (RootFs.VIRTIOFS, "auto"),
          "virtiofs cache=never": (RootFs.VIRTIOFS, "never")}  # fmt: skip
STALE = 5.0  # seconds a side waits for the other's write before calling it stale
SECTIONS = ("install", "box", "fixed", "export", "real")  # what BENCH_SECTIONS may name
FIXED_ROUNDS = int(os.environ.get("BENCH_FIXED_ROUNDS", "2"))
FORMATS = tuple(Format)  # what `provision-arch export --format` takes


@dataclass
class Figure:
    section: str
    what: str
    value: float
    unit: str
    note: str = ""
    column: str = ""  # the file system, for the sections shown as a workload x file system table


@dataclass
class Results:
    machine: dict[str, object]
    figures: list[Figure] = field(default_factory=list)

    def add(self, section: str, what: str, value: float, unit: str = "s", note: str = "", column: str = "") -> None:
        figure = Figure(section, what, round(value, 4), unit, note, column)
        self.figures.append(figure)
        print(f"  {section:<12} {what:<44} {column:<16} {shown(figure):>10}  {note}", flush=True)


def shown(figure: Figure) -> str:
    if figure.unit == "ms":
        return f"{figure.value:.2f} ms"
    if figure.unit == "s":
        return f"{figure.value:.1f} s" if figure.value >= 10 else f"{figure.value:.2f} s"
    if figure.unit in ("MiB", "MB/s", "%"):
        return f"{figure.value:.1f} {figure.unit}"
    if figure.unit == "x":
        return f"{figure.value:.2f}x"
    if figure.unit == "entries/s":
        return f"{figure.value:.0f} {figure.unit}"
    return f"{figure.value:g} {figure.unit}"


def machine(accel: Accel) -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")  # fmt: skip
    qemu = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "accel": accel.value,
        "host_kernel": platform.release(),
        "qemu": qemu,
        "load_before": [round(load, 2) for load in os.getloadavg()],
        "other_qemus_before": len(qemus()),
    }


def qemus() -> list[int]:
    """Every QEMU on this machine (other people's VMs make the figures noisy)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().startswith("qemu-system"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


# -- 1. console round trip ------------------------------------------------------------------


def raw_round_trip(con: Console) -> None:
    """What pexpect alone costs: send, wait for the same prompt; no failure patterns, no parsing."""
    con.child.send("true\r")
    con.child.expect(con.prompt_re)


def bench_round_trips(results: Results, con: Console, where: str, commands: int) -> None:
    """Alternating, so that a burst of other people's load falls on both alike."""
    driver: list[float] = []
    raw: list[float] = []
    for _ in range(commands):
        driver.append(timed(lambda: con.run("true")))
        raw.append(timed(lambda: raw_round_trip(con)))
    for name, samples in (("driver", driver), ("raw pexpect", raw)):
        p95 = sorted(samples)[int(len(samples) * 0.95)]
        results.add("console", f"round trip, {where}: {name}", statistics.median(samples) * 1000, "ms",
                    f"median of {commands}; p95 {p95 * 1000:.2f} ms")  # fmt: skip


def bench_local_console(results: Results) -> None:
    child = pexpect.spawn("bash", [str(FAKE), "bash"], encoding="utf-8", timeout=None)
    try:
        con = Console(child)
        con.login(boot_timeout=10)
        bench_round_trips(results, con, "local bash", 200)
    finally:
        child.close(force=True)


# -- 2. install -------------------------------------------------------------------------------


def standin() -> Path:
    out = subprocess.run([sys.executable, "-m", "tests.standin.build"], check=True, capture_output=True, text=True, cwd=ROOT)
    return Path(out.stdout.strip().splitlines()[-1])


def bench_iso(results: Results, iso: Path, work: Path) -> None:
    for label in ("cold", "cached"):
        seconds = timed(lambda: read_boot_files(iso, work / "iso-cache"))
        size = f"{iso.stat().st_size >> 20} MiB ISO"
        results.add("iso", f"read kernel and initramfs from the ISO ({label})", seconds, note=size)


# The package sets of the growth section: the base set, then it with a filler package of
# about as many files again (2x), and of three times as many (4x).
FILLERS = {"1x": 0, "2x": 1000, "4x": 3000}
VIAS = ("stream", "9p")


def filler_package(files: int, out: Path) -> Path:
    """A package of ``files`` small files (as many directories as a real package tree has)."""
    source = out / f"filler-{files}-src"
    source.mkdir(parents=True)
    (source / "PKGBUILD").write_text(
        f"pkgname=bench-filler-{files}\npkgver=1\npkgrel=1\narch=(any)\nlicense=(GPL-3.0-or-later)\n"
        "pkgdesc='provision-arch bench: small files'\noptions=(!strip !debug)\n"
        "package() {\n"
        f"  for i in $(seq 1 {files}); do\n"
        f'    d="$pkgdir/usr/share/bench-filler-{files}/d$((i % 40))"\n'
        '    mkdir -p "$d" && printf \'file %s of the bench filler\\n\' "$i" > "$d/f$i"\n'
        "  done\n}\n"
    )
    (built,) = repo.build_package(source, out)
    return built


def bench_mirror(work: Path, packages: list[Path] | None = None) -> Path:
    """The stand-in's newest day as a plain mirror, with the filler packages (by default the
    growth section's) in extra."""
    archive = ensure_archive()
    root = work / "mirror"
    for name in repo.REPOS:
        shutil.copytree(archive / name, root / name)  # copies: repo-add changes extra
    if packages is None:
        packages = [filler_package(files, work / "fillers") for files in FILLERS.values() if files]
    extra = root / "extra" / "os" / repo.ARCH
    for package in packages:
        shutil.copyfile(package, extra / package.name)
    # repo-add also points extra.db at the new database.
    repo.run(["repo-add", "--quiet", str(extra / "extra.db.tar.gz"), *(str(extra / p.name) for p in packages)])
    return root


CACHED: dict[str, int] = {}  # install name -> bytes its package cache held on the host's disk at its end


def install(
    iso: Path, work: Path, name: str, accel: Accel, *options: str, user: tuple[E2EUser, Path] | None = None
) -> tuple[Path, list[dict[str, object]]]:
    """One install on the stand-in with a cold package cache of its own, as root or (``user``)
    as the unprivileged test user with the CLI installed for it; its target and --json events."""
    home = work / f"home-{name}"  # HOME, XDG_CACHE_HOME (home/cache) and XDG_STATE_HOME (home/state) of this install
    home.mkdir()
    base, password = home / "base", home / "root-password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    args = (str(base), "--iso", str(iso), "--password-file", str(password), "--accel", accel.value, "--json", *options)
    if user is None:
        argv = [sys.executable, "-m", "provisioner", *args]
        env = {**os.environ, "XDG_CACHE_HOME": str(home / "cache"), "XDG_STATE_HOME": str(home / "state")}
    else:
        account, cli = user
        for path in (home, password):
            os.chown(path, account.uid, account.gid)
        argv, env = as_user(account, home, [str(cli), *args]), dict(os.environ)
    with (work / f"{name}.stderr").open("w") as stderr:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        tail = (work / f"{name}.stderr").read_text(errors="replace").splitlines()[-15:]
        sys.exit(f"bench: the install {name} failed (exit {done.returncode}):\n" + "\n".join(tail))
    if (home / "cache").exists():
        CACHED[name] = disk_use(home / "cache")[0]
    shutil.rmtree(home / "cache", ignore_errors=True)
    return base, [json.loads(line) for line in done.stdout.splitlines()]


def install_set(
    iso: Path,
    work: Path,
    name: str,
    accel: Accel,
    mirror: Mirror,
    size: str,
    via: str,
    user: tuple[E2EUser, Path] | None = None,
    packages: str = "",
) -> tuple[Path, dict[str, float], float]:
    """The base set with the filler of ``size`` (or ``packages``), installed ``via`` from the
    bench's mirror: the target, each step's seconds (in order) and the wall time."""
    files = FILLERS.get(size, 0)
    packages = packages or PACKAGES + (f" bench-filler-{files}" if files else "")
    base, events = install(iso, work, name, accel, "--install-via", via, "--packages", packages,
                           "--mirror", mirror.guest_url, user=user)  # fmt: skip
    steps = {str(e["step"]): float(str(e["seconds"])) for e in events if e["type"] == "step-finished"}
    return base, steps, float(str(events[-1]["seconds"]))


def entries(base: Path) -> int:
    return sum(1 for path in base.rglob("*") if ".provision-arch" not in path.parts)


def bench_install(results: Results, iso: Path, work: Path, accel: Accel, keep: set[str]) -> dict[str, Path]:
    """Each package set installed both ways, one after the other (so load falls on both alike):
    per step for the base set, wall time against tree size for all; the orchestration overhead
    is the wall time minus the sum of the steps. Returns the stream install of each size in
    ``keep`` (size -> target), for the later sections."""
    kept: dict[str, Path] = {}
    with Mirror(bench_mirror(work)) as mirror:
        for size, files in FILLERS.items():
            for via in VIAS:
                base, steps, wall = install_set(iso, work, f"{size}-{via}", accel, mirror, size, via)
                total = sum(steps.values())
                if size == "1x":
                    for step, seconds in steps.items():
                        results.add("install", f"step {step}", seconds, column=via)
                    results.add("install", "sum of the steps", total, column=via)
                    results.add("install", "wall time (result event)", wall, column=via)
                    results.add("install", "outside any step", wall - total, column=via)
                count = entries(base)
                results.add("growth", f"{size}: {PACKAGES}{' + ' + str(files) + ' files' if files else ''}", wall,
                            note=f"{count} entries", column=via)  # fmt: skip
                results.add("growth", f"{size}: entries in the tree", count, unit="entries", column=via)
                if size in keep and via == "stream":
                    kept[size] = base
                else:
                    shutil.rmtree(base)
        bench_unprivileged(results, iso, work, accel, mirror)
    return kept


def boxes_of(iso: Path, work: Path, accel: Accel, sizes: set[str]) -> dict[str, Path]:
    """The sets of ``sizes`` installed via stream as root, as bench_install does: the later
    sections' boxes when the install section did not leave them."""
    boxes = {}
    with Mirror(bench_mirror(work)) as mirror:
        for size in sorted(sizes):
            boxes[size], _, wall = install_set(iso, work, f"{size}-stream", accel, mirror, size, "stream")
            print(f"  (the {size} box installed via stream in {wall:.1f} s)", flush=True)
    return boxes


def bench_unprivileged(results: Results, iso: Path, work: Path, accel: Accel, mirror: Mirror) -> None:
    """What a user sees: the CLI as an unprivileged user (QEMU in a user namespace), both ways."""
    user = (ensure_user(), install_cli())
    work.chmod(0o711)  # the user's homes below it, nothing else, are theirs to reach
    for size in ("1x", "4x"):
        for via in VIAS:
            base, steps, wall = install_set(iso, work, f"user-{size}-{via}", accel, mirror, size, via, user)
            count = entries(base)
            results.add("unprivileged", f"{size}: wall time ({count} entries)", wall, column=via)
            results.add("unprivileged", f"{size}: step pacstrap", steps["pacstrap"], column=via)
            if "stream" in steps:
                results.add("unprivileged", f"{size}: step stream (send and unpack)", steps["stream"], column=via)
            shutil.rmtree(base)


# -- 3.-5. the booted box ---------------------------------------------------------------------


def workload_tar(path: Path) -> Path:
    """~FILES small files (64 B-4 KiB) in 40 directories, always the same bytes."""
    rng = random.Random(11)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(FILES):
            data = rng.randbytes(rng.randint(64, 4096))
            info = tarfile.TarInfo(f"tree/d{i % 40:02d}/f{i:04d}.txt")
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


@dataclass
class Box:
    con: Console
    machine: Machine

    def run(self, command: str, timeout: float = 1800) -> str:
        return self.con.check(command, timeout)

    def timed(self, command: str, timeout: float = 1800) -> tuple[float, str]:
        started = time.perf_counter()
        out = self.run(command, timeout)
        return time.perf_counter() - started, out


@contextmanager
def booted(
    base: Path, hw: Hardware, root: RootFs, shares: dict[str, tuple[RootFs, str, Path]], results: Results
) -> Iterator[Box]:
    """Boot the box on ``root`` with extra host directories (tag -> how, virtiofsd's cache
    mode, path), log in, record the boot figures; QEMU, then the virtiofsd processes and the
    namespace end on the way out."""
    as_root = os.geteuid() == 0
    with ExitStack() as stack:
        # Unprivileged, every virtiofsd and QEMU share one user namespace, as `provision-arch boot` does.
        enter = [] if as_root else stack.enter_context(user_namespace(base))
        daemon = require_virtiofsd()

        def served(path: Path, cache: str = "always") -> Path:
            return stack.enter_context(start_virtiofsd(daemon, path, enter, cache=cache))

        argv = boot_argv(hw, base, served=Served(served(base) if root is RootFs.VIRTIOFS else None))
        if root is RootFs.NINEP and any(how is RootFs.VIRTIOFS for how, _, _ in shares.values()):
            argv += shared_memory_argv(hw.memory)
        for tag, (how, cache, path) in shares.items():
            argv += share_argv(tag, path) if how is RootFs.NINEP else virtiofs_argv(tag, served(path, cache))
        transcript = stack.enter_context(transcript_of(base.parent / f"boot-{root.value}.log"))
        machine = stack.enter_context(Machine(enter + argv if enter else argv, logfile=transcript, shutdown_grace=120))
        started = time.perf_counter()
        con = Console(machine.launch())
        con.expect({"banner": r"Linux version"}, 600, "the kernel's first message")
        at_banner = time.perf_counter() - started
        con.expect({"login": r"login: "}, 600, "the box's login prompt")
        at_login = time.perf_counter() - started
        con.child.send("root\r")
        con.expect({"password": "Password: "}, 60, "the password prompt")
        con.child.send(PASSWORD + "\r")
        if con.expect({"shell": r"[#$] ", "refused": "Login incorrect"}, 120, "a shell after the password") == "refused":
            sys.exit(f"bench: the box refused the password; see {transcript.path}")
        con.clean_shell()
        uptime = float(con.check("cat /proc/uptime").split()[0])
        first = time.perf_counter() - started
        dmesg = con.check("dmesg")
        stamps = [float(s) for s in re.findall(r"^\[\s*(\d+\.\d+)\]", dmesg, re.M)]
        init = re.search(r"^\[\s*(\d+\.\d+)\] Run /init as init process", dmesg, re.M)
        column = f"{root.value} root"
        results.add("boot", "QEMU start to the kernel's first message", at_banner, column=column)
        results.add("boot", "QEMU start to the login prompt", at_login, column=column)
        results.add("boot", "QEMU start to the first command's answer", first, column=column)
        results.add("boot", "guest uptime at that command (kernel clock)", uptime, column=column)
        if init:
            results.add("boot", "kernel boot (dmesg: Run /init)", float(init[1]), column=column)
        results.add("boot", "last kernel message (dmesg)", max(stamps), column=column)
        yield Box(con, machine)
        con.child.send("poweroff\r")
        machine.shutdown()


@contextmanager
def transcript_of(path: Path) -> Iterator[Transcript]:
    transcript = Transcript(path, redact=(PASSWORD,))
    try:
        yield transcript
    finally:
        transcript.close()


@dataclass(frozen=True)
class Place:
    """Where a workload runs: a name (the table's column), an empty guest directory on the
    file system measured, and that directory on the host when it is shared."""

    name: str
    guest: str
    host: Path | None = None


def extraction(results: Results, section: str, box: Box, places: list[Place]) -> None:
    """Extract the tar into each place in turn; check that the files reached the host.

    A time is what a user waits for: until the command returns. What a cache defers is not
    in it: the ``sync`` after it is timed apart (it also means different things: over
    virtiofs it makes the host flush its own disk).
    """
    for place in places:
        seconds, _ = box.timed(f"mkdir -p {place.guest}/x && tar -xf {SOURCE} -C {place.guest}/x")
        flush, _ = box.timed("sync")
        if place.host is not None:
            landed = sum(1 for p in (place.host / "x").rglob("*") if p.is_file())
            assert landed == FILES, f"{place.name}: {landed} of {FILES} files on the host"
        results.add(section, f"extract {FILES} files (tar -x)", seconds, column=place.name)
        results.add(section, "then sync (what a cache deferred)", flush, column=place.name)


def walks(results: Results, section: str, box: Box, places: list[Place]) -> None:
    """What `git status` does: a stat of every file, with the guest's caches dropped, then
    warm (the median of three: the warm walks are short and the machine is shared)."""
    for place in places:
        box.run("sync && echo 3 > /proc/sys/vm/drop_caches")
        seconds, out = box.timed(f"find {place.guest}/x -type f -size +0c | wc -l")
        assert out.split()[-1] == str(FILES), f"{place.name}: {out}"
        results.add(section, f"stat walk over {FILES} files, guest caches dropped", seconds, column=place.name)
    for place in places:
        warm = [box.timed(f"find {place.guest}/x -type f -size +0c | wc -l")[0] for _ in range(3)]
        results.add(section, f"stat walk over {FILES} files, warm", statistics.median(warm), column=place.name)


def creation(results: Results, section: str, box: Box, places: list[Place]) -> None:
    """Create and remove CREATES empty files: a metadata operation each, no data."""
    for place in places:
        loop = f"i=0 && while [ $i -lt {CREATES} ]; do : > {place.guest}/c/f$i; i=$((i+1)); done"
        seconds, _ = box.timed(f"mkdir {place.guest}/c && {loop} && rm -r {place.guest}/c")
        results.add(section, f"create and remove {CREATES} empty files", seconds, column=place.name)


def coherence(results: Results, box: Box, places: list[Place]) -> None:
    """How long until one side reads what the other wrote, on each share: the seed's second
    reason for a host directory (edit on the host, build in the box, and back). The new
    content has the old one's size, so only a read of the data can tell. Host to box: the
    box has read the file, the host rewrites it, the box reads until it sees the new text
    (its own clock). Box to host: the host has read the file, the box rewrites it, the host
    reads until it sees it (from the command's return). In ms; STALE (5000 ms) means never seen."""
    now = "${EPOCHREALTIME/./}"  # bash's clock in microseconds: the box's date (busybox) has no %N
    for place in places:
        if place.host is None:
            continue
        shared = place.host / "coherence"
        shared.write_text("host-0\n")
        box.run(f"cat {place.guest}/coherence >/dev/null")  # now in the box's caches
        shared.write_text("host-1\n")
        # read: a fresh open and read each time, without a process of its own.
        poll = (f"start={now}; until read -r seen < {place.guest}/coherence; [ \"$seen\" = host-1 ] || "
                f"[ $(({now} - start)) -ge {int(STALE * 1e6)} ]; do :; done; echo $(({now} - start))")  # fmt: skip
        seen = min(int(box.run(poll).split()[-1]) / 1e6, STALE)
        results.add("coherence", "host writes, the box reads it after", seen * 1000, "ms", column=place.name)
        shared.read_text()
        box.run(f"echo box-1 > {place.guest}/coherence")
        started = time.perf_counter()
        while shared.read_text() != "box-1\n" and time.perf_counter() - started < STALE:
            time.sleep(0.001)
        seen = min(time.perf_counter() - started, STALE)
        results.add("coherence", "the box writes, the host reads it after", seen * 1000, "ms", column=place.name)


def bench_host(results: Results, tar: Path, work: Path) -> None:
    """The host's own tar, walk and creation on the same tree: the floor under any sharing."""
    tree = work / "host"
    (tree / "x").mkdir(parents=True)
    extract = timed(lambda: subprocess.run(["tar", "-xf", str(tar), "-C", str(tree / "x")], check=True))
    results.add("shares", f"extract {FILES} files (tar -x)", extract, column="host")
    walk = ["find", str(tree / "x"), "-type", "f", "-size", "+0c"]
    warm = [timed(lambda: subprocess.run(walk, check=True, capture_output=True)) for _ in range(3)]
    results.add("shares", f"stat walk over {FILES} files, warm", statistics.median(warm), column="host")

    def create() -> None:
        (tree / "c").mkdir()
        for i in range(CREATES):
            (tree / "c" / f"f{i}").touch()
        shutil.rmtree(tree / "c")

    results.add("shares", f"create and remove {CREATES} empty files", timed(create), column="host")


def bench_box(results: Results, base: Path, work: Path, accel: Accel) -> None:
    hw = Hardware(memory=2048, cpus=2, accel=accel)
    tar = workload_tar(base / TAR.lstrip("/"))
    # The tree the root section walks, made on the host as a checkout would be (not timed).
    (base / "root/bench/x").mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(tar), "-C", str(base / "root/bench/x")], check=True)
    places = [Place("guest tmpfs", TMPFS)]
    shares = {}
    for i, (name, (how, options)) in enumerate(SHARES.items()):
        (work / f"share{i}").mkdir()
        shares[f"share{i}"] = (how, options, work / f"share{i}")
        places.append(Place(name, f"/mnt/share{i}", work / f"share{i}"))
    with booted(base, hw, RootFs.NINEP, shares, results) as box:
        bench_round_trips(results, box.con, "booted box", 100)
        box.run(f"mkdir -p {TMPFS} && mount -t tmpfs bench {TMPFS} && cp {TAR} {SOURCE}")
        for i, (how, options) in enumerate(SHARES.values()):
            mount = f"mount -t 9p -o {options}" if how is RootFs.NINEP else "mount -t virtiofs"
            box.run(f"mkdir -p /mnt/share{i} && {mount} share{i} /mnt/share{i}")
        extraction(results, "shares", box, places)
        walks(results, "shares", box, places)
        creation(results, "shares", box, places)
        coherence(results, box, places)
        root = [Place("9p root", "/root/bench")]
        walks(results, "root", box, root)
        creation(results, "root", box, root)
    with booted(base, hw, RootFs.VIRTIOFS, {}, results) as box:
        root = [Place("virtiofs root", "/root/bench")]
        walks(results, "root", box, root)
        creation(results, "root", box, root)
    bench_host(results, tar, work)


# -- 6. fixed costs ------------------------------------------------------------------------------


# The ways the fixed-cost section boots the live ISO: which units stay unmasked, and who makes
# the keyring (pacman-init; the install, which then sends it to the host to keep; or the install
# from the keyring the "make" way kept in the same round).
LIVE_WAYS = {
    "before (every ISO unit, pacman-init)": (set(LIVE_MASKED), "pacman-init"),
    "units masked, pacman-init": ({"pacman-init.service"}, "pacman-init"),
    "today, first install from an ISO (made, kept)": (set(), "make"),
    "today, every later install (kept keyring)": (set(), "kept"),
}
VALID = "gpg --homedir \"$(pacman-conf GPGDir)\" --with-colons --list-keys | grep -c '^pub:[fu]:'"


def live_boot(iso: Path, work: Path, hw: Hardware, way: str, name: str) -> dict[str, float]:
    """Boot the live ISO with the install's command line less the masks ``way`` leaves out,
    then have the keyring made as ``way`` says; seconds from QEMU's start to each milestone.
    The "make" way leaves the keyring it kept in work/kept-keyring.tar for the "kept" way."""
    unmasked, how = LIVE_WAYS[way]
    boot = read_boot_files(iso, work / "iso-cache")
    stage, target, port = work / f"{name}-stage", work / f"{name}-target", work / f"{name}-keyring"
    stage.mkdir()
    target.mkdir()
    kept = work / "kept-keyring.tar"
    if how == "kept":
        (stage / KEPT_KEYRING).write_bytes(kept.read_bytes())
    if how == "make":
        make_pipe(port)
    argv = install_argv(hw, iso, boot, target, stage, keyring=port if how == "make" else None)
    at = argv.index("-append") + 1
    argv[at] = " ".join(a for a in argv[at].split() if a.removeprefix("systemd.mask=") not in unmasked)
    with transcript_of(work / f"{name}.log") as transcript, Machine(argv, logfile=transcript) as machine:
        started = time.perf_counter()
        con = Console(machine.launch())
        con.await_login_prompt(900)
        figures = {"QEMU start to the login prompt": time.perf_counter() - started}
        con.login(prompt_seen=True)
        figures["QEMU start to a shell"] = time.perf_counter() - started
        if how == "pacman-init":
            con.check("until systemctl is-active -q pacman-init.service; do sleep 0.2; done", 1800)
        else:  # the stage, as the install's mount step has it before the keyring
            con.check(f"mkdir -p {GUEST_STAGE} && mount -t 9p -o {STAGE_MOUNT_OPTIONS} {STAGE_TAG} {GUEST_STAGE}", 60)
            if how == "kept":
                con.check(keyring.restore(f"{GUEST_STAGE}/{KEPT_KEYRING}"), 1800)
            else:  # as install.make_keyring: made, its master key's secret forgotten, sent and kept, a new master key
                con.check(keyring.MAKE, 1800)
                con.check(keyring.FORGET, 60)
                kept.write_bytes(keyring.receive(con, port, work / f"{name}-received.tar", "/run/kept-keyring.tar"))
                con.check(keyring.RENEW, 600)
        figures["QEMU start to a ready keyring"] = time.perf_counter() - started
        figures["keys the keyring lists"] = float(con.check("pacman-key --list-keys | grep -c '^pub'").split()[-1])
        figures["keys gpg holds valid (full or ultimate)"] = float(con.check(VALID).split()[-1])
        stopping = time.perf_counter()
        con.poweroff(300)
        figures["poweroff to QEMU's end"] = time.perf_counter() - stopping
        machine.shutdown()
    return figures


def bench_fixed(results: Results, iso: Path, work: Path, accel: Accel) -> None:
    """What every install pays before pacstrap starts, each way once per round so that load
    falls on all alike; the mean of the rounds, each round's figure in the note."""
    hw = Hardware(memory=2048, cpus=2, accel=accel)
    runs: dict[str, list[dict[str, float]]] = {way: [] for way in LIVE_WAYS}
    for round_ in range(FIXED_ROUNDS):
        for number, way in enumerate(LIVE_WAYS):
            runs[way].append(live_boot(iso, work, hw, way, f"live-{round_}-{number}"))
    for way, figures in runs.items():
        for what in figures[0]:
            values = [f[what] for f in figures]
            unit = "keys" if what.startswith("keys") else "s"
            results.add("fixed", what, statistics.mean(values), unit=unit, column=way,
                        note=f"{len(values)} boots: " + ", ".join(f"{v:.1f}" for v in values))  # fmt: skip
    before, today = "before (every ISO unit, pacman-init)", "today, every later install (kept keyring)"
    ready = "QEMU start to a ready keyring"
    cut = 1 - statistics.mean(f[ready] for f in runs[today]) / statistics.mean(f[ready] for f in runs[before])
    results.add("fixed", "a ready keyring: cut against before", 100 * cut, unit="%", column=today)


# -- 7. export ---------------------------------------------------------------------------------


def disk_use(path: Path) -> tuple[int, int]:
    """Bytes on the host's disk and apparent bytes of a file or a tree (links not followed, a
    hard-linked file once)."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    stats = list({(s.st_dev, s.st_ino): s for s in (p.lstat() for p in paths)}.values())
    return sum(s.st_blocks * 512 for s in stats), sum(s.st_size for s in stats)


def bench_export(results: Results, boxes: dict[str, Path], work: Path) -> None:
    """Every format of each box, one after the other, as root (the install's own ids; an
    unprivileged user's export runs the same programs in a user namespace): wall time and
    size, beside the tree's size on the host's disk."""
    for size, base in boxes.items():
        on_disk, apparent = disk_use(base)
        results.add("export", f"{size}: MiB on the host's disk", on_disk / 2**20, unit="MiB", column="the tree",
                    note=f"{entries(base)} entries")  # fmt: skip
        results.add("export", f"{size}: MiB apparent", apparent / 2**20, unit="MiB", column="the tree")
        for fmt in FORMATS:
            out = work / f"export-{size}.{fmt}"
            argv = [sys.executable, "-m", "provisioner", "export", str(base), "--format", fmt, "--output", str(out)]
            started = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                failed = f"bench: export --format {fmt} of the {size} box failed (exit {done.returncode})"
                sys.exit(f"{failed}:\n{done.stderr[-3000:]}")
            on_disk, apparent = disk_use(out)
            results.add("export", f"{size}: wall time", wall, column=fmt)
            results.add("export", f"{size}: MiB on the host's disk", on_disk / 2**20, unit="MiB", column=fmt)
            results.add("export", f"{size}: MiB apparent", apparent / 2**20, unit="MiB", column=fmt)
            subprocess.run(["rm", "-rf", str(out), f"{out}.manifest.json"], check=True)


# -- 8. real size ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One filler package of the real-size set: ``files`` regular files of ``low``-``high``
    bytes (log-uniform) in ``dirs`` directories two levels deep, their content ``kind``
    (``random``: compressed already, as .ko.zst and .gz are; ``binary``: half random, half
    repeats, as an executable compresses; ``text``), and ``symlinks`` and ``hardlinks`` to
    some of them (at scale 1)."""

    name: str
    files: int
    dirs: int
    low: int
    high: int
    kind: str
    symlinks: int = 0
    hardlinks: int = 0


# About what `base base-devel linux vim man-db man-pages` brings on top of the stand-in's base:
# the kernel's modules, man pages and other documents (their aliases are symlinks), shared
# libraries with their .so links, a compiler's few large binaries (gcc's are hard links to each other).
REAL_SHAPES = (
    Shape("modules", 6000, 150, 2 << 10, 200 << 10, "random"),
    Shape("docs", 42000, 2500, 100, 16 << 10, "text", symlinks=6000),
    Shape("libs", 700, 40, 16 << 10, 3 << 20, "binary", symlinks=700),
    Shape("toolchain", 14, 4, 6 << 20, 48 << 20, "binary", hardlinks=8),
)
REAL_SCALES = tuple(float(x) for x in os.environ.get("BENCH_REAL_SCALES", "0.25,1.1").split(","))
WORDS = b"the of and to in is that for it as with was on be by this are or from at which an have not a ".split()


def filler_bytes(rng: random.Random, kind: str, size: int) -> bytes:
    if kind == "random":
        return rng.randbytes(size)
    if kind == "binary":  # 1 KiB blocks, every other one random and the rest a repeat of the one before
        blocks = [rng.randbytes(1024) for _ in range(size // 2048 + 1)]
        return b"".join(b + b for b in blocks)[:size]
    text = b" ".join(rng.choices(WORDS, k=size // 3 + 1))
    return text[:size]


def shaped_package(shape: Shape, scale: float, out: Path) -> Path:
    """The package of ``shape`` at ``scale``: its tree written here (always the same bytes for
    the same scale), then packed by makepkg as the stand-in's own packages are."""
    tag = f"{round(scale * 100)}"
    name = f"bench-real-{shape.name}-{tag}"
    source = out / f"{name}-src"
    tree = source / "tree" / "usr" / "share" / name
    rng = random.Random(f"{shape.name}-{tag}")
    files = max(1, round(shape.files * scale))
    dirs = max(1, round(shape.dirs * scale))
    made: list[Path] = []
    for i in range(files):
        path = tree / f"g{(i % dirs) // 20}" / f"d{i % dirs}" / f"{shape.name}{i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = round(math.exp(rng.uniform(math.log(shape.low), math.log(shape.high))))
        path.write_bytes(filler_bytes(rng, shape.kind, size))
        made.append(path)
    # Made by package() from a list: the stand-in's package build copies the source tree, links resolved.
    links = []
    for i in range(round(shape.symlinks * scale)):
        chosen = made[rng.randrange(len(made))]
        links.append(f"-s {chosen.name} {chosen.relative_to(source / 'tree')}.link{i}")
    for i in range(round(shape.hardlinks * scale) or (shape.hardlinks and 1)):
        chosen = made[i % len(made)].relative_to(source / "tree")
        links.append(f"$pkgdir/{chosen} {chosen}.hard{i}")
    (source / "links").write_text("".join(f"{line}\n" for line in links))
    (source / "PKGBUILD").write_text(
        f"pkgname={name}\npkgver=1\npkgrel=1\narch=(any)\nlicense=(GPL-3.0-or-later)\n"
        f"pkgdesc='provision-arch bench: {shape.name}, real-size shape'\noptions=(!strip !debug !zipman !purge)\n"
        'package() {\n  cp -a "$startdir/tree/." "$pkgdir/"\n  cd "$pkgdir"\n'
        '  while read -r a b; do eval "ln $a $b"; done < "$startdir/links"\n}\n'
    )
    (built,) = repo.build_package(source, out)
    shutil.rmtree(source)
    return built


@contextmanager
def own_file_system(path: Path) -> Iterator[Path]:
    """An ext4 file system of its own at ``path`` (a sparse image beside it, loop-mounted), so
    that its used bytes are one install's alone, whatever else the machine writes meanwhile."""
    image = path.with_name(path.name + ".img")
    with image.open("wb") as handle:
        handle.truncate(128 << 30)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    path.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)
        image.unlink()


class DiskPeak:
    """The peak of the used bytes of the file system holding ``path``, sampled every 0.2 s on a
    thread from ``with`` to its end; what is measured is how far it rose above the start."""

    def __init__(self, path: Path) -> None:
        self.path, self.start, self.peak = path, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def used(self) -> int:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.used())

    def __enter__(self) -> DiskPeak:
        self.start = self.peak = self.used()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def rise(self) -> int:
        return self.peak - self.start


def host_extract(tar: Path, into: Path) -> float:
    """The host's own GNU tar extracting ``tar`` with the install's flags: the floor."""
    into.mkdir()
    argv = ["tar", "-x", *TAR_KEEP, "--delay-directory-restore", "-f", str(tar), "-C", str(into)]
    return timed(lambda: subprocess.run(argv, check=True))


def bench_real(results: Results, iso: Path, work: Path, accel: Accel) -> None:
    """The real-size sets both ways; see section 8 of the module's docstring."""
    packages = {scale: [shaped_package(shape, scale, work / "real") for shape in REAL_SHAPES] for scale in REAL_SCALES}
    with Mirror(bench_mirror(work, [p for built in packages.values() for p in built])) as mirror:
        for scale, built in packages.items():
            names = " ".join(pkgname(p.name) for p in built)
            label = f"x{scale:g}"
            for via in VIAS:
                # The install's home (target, package cache, workspace) on a file system of its own.
                with own_file_system(work / f"fs-{label}-{via}") as fs, DiskPeak(fs) as disk:
                    base, steps, wall = install_set(iso, fs, f"real-{label}-{via}", accel, mirror, label, via,
                                                    packages=f"{PACKAGES} {names}")  # fmt: skip
                    disk.stop()  # what follows writes outside the install's file system only
                    count = entries(base)
                    on_disk, apparent = disk_use(base)
                    column = f"{label} {via}"
                    for step, seconds in steps.items():
                        results.add("real", f"step {step}", seconds, column=column)
                    results.add("real", "wall time (result event)", wall, column=column)
                    results.add("real", "entries in the tree", count, unit="entries", column=column)
                    results.add("real", "the tree on the host's disk", on_disk / 2**20, unit="MiB", column=column)
                    cache = CACHED.get(f"real-{label}-{via}", 0)
                    results.add("real", "the package cache (kept for the next install)", cache / 2**20, unit="MiB", column=column)
                    results.add("real", "peak disk use during the install", disk.rise / 2**20, unit="MiB", column=column)
                    above = disk.rise - cache - on_disk
                    results.add("real", "peak above the tree and the cache", above / 2**20, unit="MiB", column=column)
                    results.add("real", "peak above them / the tree", above / on_disk, unit="x", column=column)
                    if via == "stream":
                        real_unpack(results, base, work, column, steps, wall, apparent, count)


def real_unpack(
    results: Results, base: Path, work: Path, column: str, steps: dict[str, float], wall: float, apparent: int, count: int
) -> None:
    """The stream's own rates, and the unpack against the host's tar -x of the same tar."""
    tar = work / "real.tar"
    subprocess.run(["tar", "-c", *TAR_PACK, "-f", str(tar), "-C", str(base), "--exclude=./.provision-arch*", "."],
                   check=True)  # fmt: skip
    size = tar.stat().st_size
    results.add("real", "the tree as one tar", size / 2**20, unit="MiB", column=column)
    results.add("real", "send: MB/s (step stream)", size / 1e6 / steps["stream"], unit="MB/s", column=column)
    results.add("real", "send: entries/s", count / steps["stream"], unit="entries/s", column=column)
    results.add("real", "unpack: MB/s (step unpack)", size / 1e6 / steps["unpack"], unit="MB/s", column=column)
    host = host_extract(tar, work / "real-host")
    results.add("real", "host's own tar -x: MB/s", size / 1e6 / host, unit="MB/s", column=column)
    ours = work / "real-ours"
    ours.mkdir()
    own = timed(lambda: unpack(tar, ours, as_root=True, limit=STREAM_LIMIT))
    results.add("real", "provision-arch's unpack of that tar: MB/s", size / 1e6 / own, unit="MB/s", column=column)
    results.add("real", "unpack / host's tar -x (throughput)", host / steps["unpack"], unit="x", column=column)
    # What the issue sets the install against: every step as it is, but the tree reaching the
    # host at the host's own speed (no send, the unpack as fast as tar -x).
    ideal = wall - steps["stream"] - steps["unpack"] + host
    results.add("real", "wall time / (wall - send - unpack + host tar -x)", wall / ideal, unit="x", column=column)
    subprocess.run(["rm", "-rf", str(tar), str(work / "real-host"), str(ours)], check=True)


# -- the run ----------------------------------------------------------------------------------


def table(results: Results) -> str:
    """Markdown: the machine line, then each section; the file-system sections as a matrix."""
    m = results.machine
    lines = [
        f"{m['date']} on {m['nproc']} x {m['cpu']}, {m['accel']}, {m['qemu']}; load average {m['load_before']} "
        f"before, {m['load_after']} after; {m['other_qemus_before']} other QEMU(s) running at the start; "
        f"sections {m['sections']}.",
    ]
    sections = list(dict.fromkeys(f.section for f in results.figures))
    for section in sections:
        figures = [f for f in results.figures if f.section == section]
        columns = list(dict.fromkeys(f.column for f in figures if f.column))
        lines += ["", f"**{section}**", ""]
        if columns:
            cells = {(f.what, f.column): shown(f) for f in figures}
            rows = list(dict.fromkeys(f.what for f in figures))
            lines += [f"| | {' | '.join(columns)} |", "| --- |" + " ---: |" * len(columns)]
            lines += [f"| {row} | {' | '.join(cells.get((row, c), '') for c in columns)} |" for row in rows]
        else:
            lines += ["| | time | note |", "| --- | ---: | --- |"]
            lines += [f"| {f.what} | {shown(f)} | {f.note} |" for f in figures]
    return "\n".join(lines)


def main() -> None:
    sections = [s.strip() for s in os.environ.get("BENCH_SECTIONS", ",".join(SECTIONS)).split(",") if s.strip()]
    if unknown := set(sections) - set(SECTIONS):
        sys.exit(f"bench: BENCH_SECTIONS names {', '.join(sorted(unknown))}; it takes {', '.join(SECTIONS)}")
    accel = resolve_accel(Accel(os.environ.get("BENCH_ACCEL", "auto")))
    results = Results(machine(accel))
    results.machine["sections"] = ",".join(sections)
    print(f"bench on {results.machine['nproc']} x {results.machine['cpu']}, {accel.value}:", flush=True)
    started = time.perf_counter()
    bench_local_console(results)
    iso = standin()
    work = Path(tempfile.mkdtemp(prefix="provision-arch-bench-", dir="/var/tmp"))
    try:
        bench_iso(results, iso, work)
        wanted = {"1x"} if "box" in sections else set()
        wanted |= {"1x", "4x"} if "export" in sections else set()
        boxes = bench_install(results, iso, work, accel, wanted) if "install" in sections else {}
        if wanted - set(boxes):
            boxes |= boxes_of(iso, work, accel, wanted - set(boxes))
        if "fixed" in sections:
            bench_fixed(results, iso, work, accel)
        if "export" in sections:  # before the box sections write into the base set's tree
            bench_export(results, {size: boxes[size] for size in ("1x", "4x")}, work)
        if "box" in sections:
            bench_box(results, boxes["1x"], work, accel)
        if "real" in sections:
            bench_real(results, iso, work, accel)
    except BaseException:
        for log in sorted(work.glob("*/boot-*.log")):  # they go with the work directory
            tail = log.read_text(errors="replace").splitlines()[-40:]
            print(f"\nbench: the end of {log.name}:\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        # Guest ids live in subuid ranges when unprivileged: unshare removes what we cannot.
        removal = ["rm", "-rf", str(work)]
        subprocess.run(removal if os.geteuid() == 0 else ["unshare", "--map-auto", "--map-root-user", *removal], check=False)
        shutil.rmtree(work, ignore_errors=True)
    results.machine["load_after"] = [round(load, 2) for load in os.getloadavg()]
    results.machine["bench_seconds"] = round(time.perf_counter() - started, 1)
    OUT.write_text(json.dumps({"machine": results.machine, "figures": [asdict(f) for f in results.figures]}, indent=2) + "\n")
    print("\n" + table(results) + f"\n\n({results.machine['bench_seconds']} s; written to {OUT})")


if __name__ == "__main__":
    main()

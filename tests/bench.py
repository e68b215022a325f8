"""`make bench`: figures for the parts whose speed users feel. Prints, asserts nothing.

- console round trip: commands per second through the driver on a local bash (the floor
  under every guest step);
- ISO reading: pycdlib open + extraction of kernel and initramfs, cold and cached;
- with BENCH_VM=1 (as root): one full install on the offline stand-in, per step.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pexpect

from provisioner.console import Console
from provisioner.iso import read_boot_files

FAKE = Path(__file__).parent / "console/fake_archiso.sh"


def bench_console(commands: int = 200) -> None:
    child = pexpect.spawn("bash", [str(FAKE), "bash"], encoding="utf-8", timeout=None)
    con = Console(child)
    con.login(boot_timeout=10)
    samples = []
    for _ in range(commands):
        started = time.perf_counter()
        con.run("true")
        samples.append(time.perf_counter() - started)
    child.close(force=True)
    print(f"console round trip (local bash): median {statistics.median(samples) * 1000:.2f} ms, "
          f"p95 {sorted(samples)[int(len(samples) * 0.95)] * 1000:.2f} ms over {commands} commands")  # fmt: skip


def bench_iso(iso: Path) -> None:
    with tempfile.TemporaryDirectory() as cache:
        for label in ("cold", "cached"):
            started = time.perf_counter()
            read_boot_files(iso, Path(cache))
            print(
                f"ISO read ({label}): {(time.perf_counter() - started) * 1000:.0f} ms  [{iso.stat().st_size / 2**20:.0f} MiB ISO]"
            )


def standin() -> Path:
    out = subprocess.run([sys.executable, "-m", "tests.standin.build"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def bench_install(iso: Path) -> None:
    """One install on the stand-in, read from its --json events: each step, their sum, the wall time."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        pw = Path(work) / "pw"
        pw.write_text("bench\n")
        argv = [sys.executable, "-m", "provisioner", f"{work}/base", "--iso", str(iso), "--password-file", str(pw),
                "--packages", "base linux mkinitcpio", "--accel", "tcg", "--json"]  # fmt: skip
        started = time.perf_counter()
        out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
        outside = time.perf_counter() - started
    events = [json.loads(line) for line in out.splitlines()]
    steps = [(e["step"], e["seconds"]) for e in events if e["type"] == "step-finished"]
    for step, seconds in steps:
        print(f"  {step:<18} {seconds:7.1f} s")
    total, wall = sum(seconds for _, seconds in steps), events[-1]["seconds"]
    print(f"install on the stand-in: steps {total:.1f} s, wall {wall:.1f} s ({100 * (wall - total) / wall:+.1f} % unaccounted), "
          f"process {outside:.1f} s (with interpreter start and the host checks' probes)")  # fmt: skip


def main() -> None:
    bench_console()
    iso = standin()
    bench_iso(iso)
    if os.environ.get("BENCH_VM") == "1":
        bench_install(iso)
    else:
        print("full install: skipped (set BENCH_VM=1 to boot the stand-in)")


if __name__ == "__main__":
    main()

"""`make test-trixie-host`: install, boot over 9p and boot over virtiofs on a Debian 13 host.

As root on a Debian 12 or 13 machine: a trixie root made with debootstrap, with QEMU 10 and
the Rust virtiofsd (cached under /var/cache/provision-arch-hosts/, keyed by its inputs); a
user of that root's own with its own subuid range (not provision-e2e, whose runs on this
machine stay undisturbed); this checkout's CLI and the test tools in a venv inside the root;
then tests/vm/test_trixie_host.py, run in that root made the root of a mount and PID namespace
of its own (whatever it leaves running ends with the namespace). The stand-in ISO and archive are the
host's (`make standin`), bound in read-only; the checkout is bound in read-only as /src.

    python -m tests.hosts.trixie [PYTEST ARGS]
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.standin.archive import ensure_archive
from tests.standin.build import debian_mirror, ensure_standin

CHECKOUT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PROVISION_ARCH_HOSTS_CACHE", "/var/cache/provision-arch-hosts"))
SUITE = "trixie"
PACKAGES = ("qemu-system-x86", "qemu-utils", "virtiofsd", "python3", "python3-venv", "uidmap", "util-linux", "gpgv")
RECIPE = "1"  # bump when the way the root is made changes
# The root's own test user: a uid and subordinate ranges no account of the host has.
USER, UID, SUBIDS = "provision-trixie", 2613, (400000, 65536)
OPT = Path("/opt/provision-arch-trixie")  # inside the root: the wheels and the venv
SRC = Path("/src")  # inside the root: this checkout, read-only
TEST = "tests/vm/test_trixie_host.py"
OLD_ROOT = ".old-root"  # where the host's root is detached from, in the root
PHASES: dict[str, float] = {}
Arg = str | Path | int


@contextmanager
def phase(name: str) -> Iterator[None]:
    print(f"== {name}", flush=True)
    started = time.monotonic()
    try:
        yield
    finally:
        PHASES[name] = time.monotonic() - started
        print(f"== {name}: {PHASES[name]:.1f} s", flush=True)


def run(argv: Sequence[Arg], *, capture: bool = False) -> str:
    """Run ``argv`` (printed first); its stdout when captured. A failure ends the run."""
    print("+", " ".join(map(str, argv)), flush=True)
    return subprocess.run(list(map(str, argv)), check=True, text=True, stdout=subprocess.PIPE if capture else None).stdout or ""


def root_key(mirror: str) -> str:
    digest = hashlib.sha256(f"{RECIPE} {SUITE} {mirror} {' '.join(sorted(PACKAGES))}".encode())
    return digest.hexdigest()[:16]


def enter(root: Path, argv: Sequence[Arg], binds: Sequence[tuple[Path, Path]] = ()) -> list[str]:
    """The argv that runs ``argv`` in ``root``, in a new mount and PID namespace with /proc,
    /dev, /sys, a fresh /tmp and ``binds`` (host path, path in the root; read-only)."""
    bound = [f"--bind={host}:{inside}" for host, inside in binds]
    return ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "--",
            sys.executable, "-m", "tests.hosts.trixie", "--enter", str(root), *bound, "--", *map(str, argv)]  # fmt: skip


def inside(root: Path, binds: list[str], argv: list[str]) -> int:
    """PID 1 of the namespace: mount, make ``root`` the namespace's root, run ``argv`` there and
    reap every orphan until it ends.

    pivot_root, not chroot: the kernel refuses a chrooted process a user namespace, and the
    CLI makes one (``unshare --map-auto``) for QEMU and virtiofsd."""
    run(["mount", "--bind", root, root])
    run(["mount", "-t", "proc", "proc", root / "proc"])
    run(["mount", "--rbind", "/dev", root / "dev"])
    run(["mount", "--rbind", "/sys", root / "sys"])
    run(["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", root / "tmp"])
    for bind in binds:
        host, path = bind.split(":", 1)
        (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        run(["mount", "-o", "bind,ro", host, root / path.lstrip("/")])
    (root / OLD_ROOT).mkdir(exist_ok=True)
    os.chdir(root)
    run(["pivot_root", ".", OLD_ROOT])
    run(["umount", "--lazy", f"/{OLD_ROOT}"])
    child = subprocess.Popen(argv, cwd="/")
    while True:
        pid, status = os.wait()
        if pid == child.pid:
            return os.waitstatus_to_exitcode(status)


def ensure_root(mirror: str) -> Path:
    """The trixie root for these inputs, from the cache or made now."""
    final = CACHE / f"{SUITE}-{root_key(mirror)}"
    if (final / "root/usr/libexec/virtiofsd").exists():
        print(f"cached: {final}")
        return final / "root"
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=CACHE))
    try:
        run(["debootstrap", "--variant=minbase", SUITE, work / "root", mirror])
        shutil.copyfile("/etc/resolv.conf", work / "root/etc/resolv.conf")
        apt = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q"]
        run(enter(work / "root", [*apt, "update"]))
        run(enter(work / "root", [*apt, "install", "-y", "--no-install-recommends", *PACKAGES]))
        run(enter(work / "root", [*apt, "clean"]))
        work.rename(final)
    finally:
        if work.exists():
            run(["rm", "-rf", "--one-file-system", work])
    return final / "root"


def overlaps(path: Path, start: int, count: int) -> list[str]:
    """Lines of a host subuid/subgid file whose range meets [start, start + count)."""
    found = []
    for line in path.read_text().splitlines() if path.exists() else []:
        _, first, length = line.split(":")
        if int(first) < start + count and start < int(first) + int(length):
            found.append(line)
    return found


def ensure_user(root: Path) -> None:
    """The root's test user: its uid and ranges must be no host account's (processes and
    files are the kernel's, whichever passwd names them)."""
    clash = [line for line in Path("/etc/passwd").read_text().splitlines() if line.split(":")[2] == str(UID)]
    clash += [line for kind in ("subuid", "subgid") for line in overlaps(Path("/etc") / kind, *SUBIDS)]
    if clash:
        raise SystemExit(f"the trixie root's test user would share ids with this host: {clash}")
    if f"\n{USER}:" not in "\n" + (root / "etc/passwd").read_text():
        run(["chroot", root, "useradd", "--create-home", "--uid", UID, "--shell", "/bin/bash",
             "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", USER])  # fmt: skip
    # Its ranges alone: useradd would pick the first free ones, the host's provision-e2e's.
    for kind in ("subuid", "subgid"):
        (root / "etc" / kind).write_text(f"{USER}:{SUBIDS[0]}:{SUBIDS[1]}\n")


def install_venv(root: Path) -> Path:
    """This checkout's CLI and the test tools in a venv in the root, from wheels the host's
    pip fetches for the root's Python (the host's index, whatever it is; none is needed inside)."""
    wheels = root / OPT.relative_to("/") / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "-q"]
    run([*pip, "wheel", "--no-deps", "-w", wheels, CHECKOUT])
    (project,) = wheels.glob("provision_arch-*.whl")
    version = run(["chroot", root, "python3", "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                  capture=True).strip()  # fmt: skip
    run([*pip, "download", "--only-binary=:all:", "--python-version", version, "--implementation", "cp",
         "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "--platform", "any",
         "-d", wheels, project, "pytest", "pexpect", "hypothesis"])  # fmt: skip
    venv = OPT / "venv"
    run(["rm", "-rf", root / venv.relative_to("/")])
    run(["chroot", root, "python3", "-m", "venv", venv])
    inside_wheels = OPT / "wheels"
    run(["chroot", root, "env", "-i", "PATH=/usr/bin:/bin", venv / "bin/pip", "install", "-q", "--no-index",
         "--find-links", inside_wheels, inside_wheels / project.name, "pytest", "pexpect", "hypothesis"])  # fmt: skip
    (root / "opt").chmod(0o755)
    return venv


def versions(root: Path) -> list[str]:
    return [run(["chroot", root, *argv], capture=True).splitlines()[0]
            for argv in (["qemu-system-x86_64", "--version"], ["/usr/libexec/virtiofsd", "--version"])]  # fmt: skip


def main(argv: list[str]) -> int:
    if argv[:1] == ["--enter"]:
        split = argv.index("--")
        return inside(Path(argv[1]), [a.removeprefix("--bind=") for a in argv[2:split]], argv[split + 1 :])
    if os.geteuid() != 0:
        raise SystemExit("run as root: it makes a root with debootstrap and runs the tests in it")
    os.chdir(CHECKOUT)  # `-m tests.hosts.trixie` inside the namespace
    started, load = time.monotonic(), os.getloadavg()
    with phase("stand-in ISO and archive (host, cached)"):
        iso, archive = ensure_standin().resolve(), ensure_archive().resolve()
    mirror = debian_mirror()
    with phase("trixie root (debootstrap + apt, cached)"):
        root = ensure_root(mirror)
    with phase("test user in the root"):
        ensure_user(root)
    with phase("venv: this checkout's CLI and the test tools"):
        venv = install_venv(root)
    ran = versions(root)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1", "HYPOTHESIS_STORAGE_DIRECTORY": "/tmp/hypothesis", "PROVISION_ARCH_STANDIN_ISO": str(iso),
        "PROVISION_ARCH_TRIXIE_ARCHIVE": str(archive), "PROVISION_ARCH_HOST_USER": USER,
        "PROVISION_ARCH_HOST_CLI": str(venv / "bin/provision-arch"),
    }  # fmt: skip
    pytest: list[Arg] = ["env", "-i", "-C", SRC, *(f"{k}={v}" for k, v in env.items()), venv / "bin/python", "-m", "pytest",
                         "-p", "no:cacheprovider", "--hypothesis-profile=ci", "-v", "--durations=0", TEST, *argv]  # fmt: skip
    binds = [(CHECKOUT, SRC), (iso.parent, iso.parent), (archive, archive)]
    with phase("VM tests in the root (install, boot over 9p, boot over virtiofs)"):
        status = subprocess.run(enter(root, pytest, binds), check=False).returncode
    loads = [" ".join(f"{x:.2f}" for x in avg) for avg in (load, os.getloadavg())]
    print(f"\ntest-trixie-host: exit {status}; {'; '.join(ran)}; {os.cpu_count()} CPUs, load average {loads[0]} at the start,"
          f" {loads[1]} at the end")
    for name, seconds in PHASES.items():
        print(f"  {name:<66} {seconds:7.1f} s")
    print(f"  {'total':<66} {time.monotonic() - started:7.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

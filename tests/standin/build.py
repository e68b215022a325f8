"""Build the offline stand-in of the Arch Linux ISO from Debian packages.

The real ISO cannot be downloaded on this project's machines, so the VM tests
boot this image instead. It copies the real ISO's layout and the behaviours
listed in /work/shared/ARCHISO.md: volume label and UUID file, kernel and
initramfs paths, archiso kernel parameters, serial getty, empty root password,
a grml-like zsh prompt, pacman-init.service, choose-mirror and a pacman
repository baked into the ISO at /repo/.

Run as root from the project root: ``python3 -m tests.standin.build``. The
ISO's absolute path is the last line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import importlib
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from types import ModuleType

from tests.standin.repo import kernel_release

HERE = pathlib.Path(__file__).resolve().parent
# The project root: inputs are hashed by their path relative to it, so every
# clone and worktree of the project shares one cached stand-in.
PROJECT = HERE.parent.parent
DATA = HERE / "iso"

# Debian 13: pacman 7.0, systemd 257, Linux 6.12, OpenSSH 10, arch-install-scripts 28.
# The kernel, busybox and every other file of the ISO and its repository come from
# this suite's debootstrap root, never from the host (whose Debian may be 12 or 13).
SUITE = "trixie"
ISO_NAME = "archlinux-standin-x86_64.iso"

# A fixed build date keeps the label, the UUID and therefore the content hash
# independent of the day the stand-in happens to be built.
BUILD_YEAR, BUILD_MONTH, BUILD_DAY = 2026, 11, 1
LABEL = f"ARCH_{BUILD_YEAR:04d}{BUILD_MONTH:02d}"
UUID = f"{BUILD_YEAR:04d}-{BUILD_MONTH:02d}-{BUILD_DAY:02d}-00-00-00-00"
# xorriso's --modification-date is what blkid reports as the UUID of an
# ISO 9660 volume; the real ISO sets both from the same build time.
ISO_MODIFICATION_DATE = f"{BUILD_YEAR:04d}{BUILD_MONTH:02d}{BUILD_DAY:02d}00000000"
SOURCE_DATE_EPOCH = "1793491200"  # 2026-11-01T00:00:00Z

# Packages of the live root on top of debootstrap's minbase: what pacstrap,
# arch-chroot, pacman-key, systemd-networkd/resolved and `mount -t 9p` need.
ROOTFS_INCLUDE = (
    "systemd-sysv",
    "udev",
    "kmod",
    "dbus",
    "libpam-systemd",
    "systemd-resolved",
    "zsh",
    "pacman-package-manager",
    # pacman-key sources makepkg's shell libraries (message.sh, parseopts.sh),
    # which Debian ships in the makepkg package.
    "makepkg",
    "arch-install-scripts",
    "archlinux-keyring",
    "gnupg",
    "util-linux",
    "iproute2",
    "procps",
    "less",
    # The real ISO runs sshd and carries sudo; the test repository's openssh,
    # sudo and systemd packages are also cut from this root (tests/standin/debian.py).
    "openssh-server",
    "sudo",
    "libnss-systemd",
    # trixie's minbase has no mkfs.ext4 and no time zones.
    "e2fsprogs",
    "tzdata",
    # systemd-timesyncd and systemd-time-wait-sync, enabled on the real ISO.
    "systemd-timesyncd",
    # The kernel of the live system and of the repository's linux package, and the
    # static busybox of the initramfs and of the repository's busybox package.
    "linux-image-amd64",
    "busybox-static",
    # systemd-boot's EFI binary, which Arch's systemd package ships
    # (/usr/lib/systemd/boot/efi/systemd-bootx64.efi): a disk export's boot loader.
    "systemd-boot-efi",
)
# Bump when the way the debootstrap root is made changes.
ROOTFS_RECIPE = "2"

# Host tools that shape the image: their versions are part of the cache key.
# (The kernel and busybox come from the debootstrap root, which rootfs_key covers.)
HOST_PACKAGES = (
    "debootstrap",
    "squashfs-tools",
    "xorriso",
    "cpio",
    "kmod",
    "pacman-package-manager",
    "makepkg",
    "gpg",
)

# Modules the initramfs loads before it looks for the ISO: the CD drive on
# the pc and q35 machines, virtio disks, loop + squashfs + overlay for the
# live root.
INITRAMFS_MODULES = (
    "ata_piix",
    "ahci",
    "sr_mod",
    "sd_mod",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "cdrom",
    "isofs",
    "loop",
    "squashfs",
    "overlay",
)

# Module directories of no use in a QEMU guest; dropping them keeps the
# squashfs (and its compression time) smaller.
MODULE_DIRS_DROPPED = (
    "kernel/drivers/gpu",
    "kernel/drivers/media",
    "kernel/drivers/infiniband",
    "kernel/drivers/iio",
    "kernel/drivers/staging",
    "kernel/drivers/net/wireless",
    "kernel/drivers/bluetooth",
    "kernel/sound",
    "kernel/net/wireless",
    "kernel/net/mac80211",
    "kernel/net/bluetooth",
)

# Units of a Debian minbase root that only cost boot time in a live system.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-pstore.service",
    "systemd-journal-flush.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "getty@tty1.service",
    # Debian's sshd (its socket, service and first-boot key generation, which a live boot's
    # preset-all would enable): the ISO's is Arch's sshd.service with sshdgenkeys.
    "ssh.service",
    "ssh.socket",
    "sshd-keygen.service",
)
# As archiso's releng profile enables them (the real ISO's gates included: time-wait-sync
# has no timeout and pacman-init is ordered after time-sync.target).
ENABLED_UNITS = {
    "systemd-timesyncd.service": "sysinit.target",
    "systemd-time-wait-sync.service": "sysinit.target",
    "sshd.service": "multi-user.target",
    "pacman-init.service": "multi-user.target",
    "choose-mirror.service": "multi-user.target",
    "systemd-networkd.service": "multi-user.target",
    "systemd-resolved.service": "multi-user.target",
}


class BuildError(Exception):
    """The stand-in could not be built; the message says which step failed."""


def log(message: str) -> None:
    print(f"standin: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    log(f"{title}…")
    start = time.monotonic()
    yield
    log(f"{title} done in {time.monotonic() - start:.1f}s")


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    stdin_data: bytes | None = None,
    capture: bool = False,
    env: dict[str, str] | None = None,
    cwd: pathlib.Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    argv = [os.fspath(c) for c in cmd]
    if os.environ.get("PROVISION_ARCH_STANDIN_DEBUG"):
        log(f"+ {shlex.join(argv)}")
    try:
        return subprocess.run(
            argv,
            input=stdin_data,
            stdin=None if stdin_data is not None else subprocess.DEVNULL,
            # Child output goes to stderr: stdout carries only the ISO path.
            stdout=subprocess.PIPE if capture else sys.stderr,
            stderr=sys.stderr,
            check=True,
            env=None if env is None else {**os.environ, **env},
            cwd=cwd,
        )
    except FileNotFoundError as exc:
        raise BuildError(f"{argv[0]} not found (install the Debian package providing it)") from exc
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"command failed with exit code {exc.returncode}: {shlex.join(argv)}") from exc


def cache_dir() -> pathlib.Path:
    return pathlib.Path(
        os.environ.get("PROVISION_ARCH_STANDIN_CACHE", "/var/cache/provision-arch-standin")
    )


def package_versions(names: Sequence[str]) -> list[str]:
    out = run(
        ["dpkg-query", "-W", "-f", "${Package}=${Version}\\n", *names], capture=True
    ).stdout.decode()
    return sorted(out.split())


def debian_mirror() -> str:
    """The Debian mirror apt uses, so debootstrap works wherever apt does."""
    override = os.environ.get("PROVISION_ARCH_STANDIN_MIRROR")
    if override:
        return override
    sources = [pathlib.Path("/etc/apt/sources.list")]
    sources_d = pathlib.Path("/etc/apt/sources.list.d")
    if sources_d.is_dir():
        sources += sorted(sources_d.iterdir())
    for path in sources:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split()
            # deb822 ("URIs: …") and one-line ("deb [opts] URI suite …") formats.
            for word in words:
                if word.startswith("http") and word.rstrip("/").endswith("/debian"):
                    return word.rstrip("/")
    return "http://deb.debian.org/debian"


def load_repo_module() -> ModuleType | None:
    try:
        return importlib.import_module("tests.standin.repo")
    except ModuleNotFoundError as exc:
        if exc.name not in ("tests.standin.repo",):
            raise
        return None


def rootfs_key() -> str:
    digest = hashlib.sha256()
    for part in (ROOTFS_RECIPE, SUITE, debian_mirror(), *ROOTFS_INCLUDE):
        digest.update(part.encode() + b"\n")
    for version in package_versions(["debootstrap"]):
        digest.update(version.encode() + b"\n")
    return digest.hexdigest()[:16]


def project_name(path: pathlib.Path) -> str:
    """How an input is named in the cache key: relative to the project, so that a clone
    or worktree elsewhere hashes to the same key (its content decides, not its place)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(PROJECT):
        raise BuildError(f"stand-in input {resolved} is outside the project {PROJECT}")
    return resolved.relative_to(PROJECT).as_posix()


def iso_key(repo: ModuleType | None) -> str:
    """The stand-in's content key: the debootstrap root's recipe, the files of the
    project it is made from (by relative path and content) and the host tools' versions."""
    digest = hashlib.sha256()
    digest.update(rootfs_key().encode() + b"\n")
    inputs = [pathlib.Path(__file__), *(p for p in DATA.rglob("*") if p.is_file())]
    if repo is not None:
        inputs += list(repo.INPUTS)
    else:
        digest.update(b"fallback-repo\n")
    for name, path in sorted({project_name(p): p for p in inputs}.items()):
        mode = path.stat().st_mode & 0o777
        digest.update(f"F {name} {mode:o}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for version in package_versions(HOST_PACKAGES):
        digest.update(version.encode() + b"\n")
    return digest.hexdigest()[:16]


def make_world_readable(path: pathlib.Path) -> None:
    for parent in (path, *path.parents):
        if parent == pathlib.Path("/"):
            break
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


def ensure_rootfs(cache: pathlib.Path) -> pathlib.Path:
    """The debootstrap root, cached by its own inputs: editing the init script
    or the overlay must not cost another debootstrap run."""
    final = cache / f"rootfs-{rootfs_key()}"
    if (final / "root" / "usr").is_dir():
        log(f"debootstrap root cached at {final}")
        return final / "root"
    cache.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix=".rootfs-", dir=cache))
    try:
        with step(f"debootstrap {SUITE} (minbase)"):
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(ROOTFS_INCLUDE)}",
                    SUITE,
                    work / "root",
                    debian_mirror(),
                ]
            )
        # The downloaded .debs are 70 MB of no use in the live system, nor is the
        # initramfs Debian's kernel package had initramfs-tools make.
        for deb in (work / "root/var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        for initrd in (work / "root/boot").glob("initrd.img-*"):
            initrd.unlink()
        # makepkg reads the kernel, busybox, zones and keyrings from here as `nobody`.
        work.chmod(0o755)
        # Another build may have finished first; its copy is as good as ours
        # and may already be in use, so keep it.
        if not final.exists():
            work.rename(final)
    finally:
        # Left over only when debootstrap failed or another build won. A
        # failed debootstrap can leave /proc, /sys or a /dev bind mount in its
        # root: unmount first, or rmtree would walk into the host's /dev.
        unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)
    return final / "root"


def unmount_below(path: pathlib.Path) -> None:
    prefix = str(path.resolve()) + "/"
    targets = []
    for line in pathlib.Path("/proc/self/mounts").read_text().splitlines():
        # Mount points with spaces are octal-escaped; ours have none.
        target = line.split()[1]
        if target.startswith(prefix):
            targets.append(target)
    # Deepest first, lazily: nothing of ours should still be using them.
    for target in sorted(targets, key=len, reverse=True):
        run(["umount", "--lazy", target])


def install_modules(live: pathlib.Path, kver: str) -> None:
    """The debootstrap root's kernel modules, without the directories a QEMU guest has
    no use for, with a modules.dep that matches what is left."""
    modules = live / "usr/lib/modules" / kver
    for directory in MODULE_DIRS_DROPPED:
        shutil.rmtree(modules / directory, ignore_errors=True)
    run(["depmod", "-b", live, kver])
    # The kernel and Debian's initramfs-tools image are not part of the live root.
    for path in (live / "boot").iterdir():
        if path.is_file() or path.is_symlink():
            path.unlink()
    for link in ("vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"):
        (live / link).unlink(missing_ok=True)


def set_root_account(live: pathlib.Path) -> None:
    """Empty root password (pam_unix nullok: no password prompt) and zsh."""
    shadow = live / "etc/shadow"
    lines = shadow.read_text().splitlines()
    shadow.write_text(
        "".join(
            (":".join([f[0], "", *f[2:]]) if f[0] == "root" else line) + "\n"
            for line in lines
            for f in [line.split(":")]
        )
    )
    passwd = live / "etc/passwd"
    lines = passwd.read_text().splitlines()
    passwd.write_text(
        "".join(
            (":".join([*f[:6], "/usr/bin/zsh"]) if f[0] == "root" else line) + "\n"
            for line in lines
            for f in [line.split(":")]
        )
    )


def configure_units(live: pathlib.Path) -> None:
    system = live / "etc/systemd/system"
    for unit in MASKED_UNITS:
        link = system / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
        for wants in system.glob(f"*.wants/{unit}"):
            wants.unlink()
    for unit, target in ENABLED_UNITS.items():
        wants = system / f"{target}.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / unit
        if link.is_symlink():
            link.unlink()
        local = system / unit
        link.symlink_to(f"/etc/systemd/system/{unit}" if local.exists() else f"/usr/lib/systemd/system/{unit}")


def arch_sshd(live: pathlib.Path) -> None:
    """sshd as the real ISO has it: no host keys in the image, so that each live boot makes
    them (the overlay's sshdgenkeys.service), and room for the overlay's sshd.service, where
    Debian has an alias of its ssh.service (configure_units masks Debian's units)."""
    (live / "etc/systemd/system/sshd.service").unlink(missing_ok=True)
    for key in (live / "etc/ssh").glob("ssh_host_*"):
        key.unlink()


def trim_arch_keyring(live: pathlib.Path) -> None:
    """Keep only the Arch master keys in the live root's keyring.

    `pacman-key --populate` over Debian's full archlinux-keyring (160+ keys)
    takes 19 s natively and nearly ten minutes under TCG, which no test can
    afford. The master keys alone keep the behaviour (import, local
    signatures, a populated keyring) at a fraction of the cost."""
    keyrings = live / "usr/share/keyrings"
    trusted = [
        line.split(":")[0]
        for line in (keyrings / "archlinux-trusted").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    with tempfile.TemporaryDirectory(prefix="standin-gpg-") as home:
        run(["gpg", "--homedir", home, "--batch", "--quiet", "--import", keyrings / "archlinux.gpg"])
        exported = run(
            ["gpg", "--homedir", home, "--batch", "--export", "--export-options", "export-minimal",
             *trusted],
            capture=True,
        ).stdout
        run(["gpgconf", "--homedir", home, "--kill", "all"])
    if not exported:
        raise BuildError("the Arch master keys are missing from archlinux-keyring")
    (keyrings / "archlinux.gpg").write_bytes(exported)
    # The revoked list names keys no longer in the trimmed keyring.
    (keyrings / "archlinux-revoked").write_text("")


def build_live_root(rootfs: pathlib.Path, live: pathlib.Path) -> None:
    with step("copying the debootstrap root"):
        run(["cp", "-a", "--reflink=auto", rootfs, live])
    with step("trimming kernel modules"):
        install_modules(live, kernel_release(rootfs))
    arch_sshd(live)  # before the overlay: Debian's alias is a link to its own unit
    # The overlay holds complete files (units, zshrc, motd, pacman.conf,
    # mirrorlist…); copying it over the Debian root replaces Debian's versions.
    shutil.copytree(DATA / "airootfs", live, symlinks=True, dirs_exist_ok=True)
    set_root_account(live)
    configure_units(live)
    with step("trimming the Arch keyring to its master keys"):
        trim_arch_keyring(live)
    # systemd-resolved owns name resolution, as on the real ISO.
    resolv = live / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.symlink_to("/run/systemd/resolve/stub-resolv.conf")
    # As mkarchiso writes it: every live boot is a first boot (systemd makes a new id,
    # runs preset-all in enable-only mode and starts systemd-firstboot).
    (live / "etc/machine-id").write_text("uninitialized\n")
    first_boot_setup(live)
    # The `alpm` user pacman 7 downloads as (DownloadUser = alpm), made as the real
    # ISO's pacstrap made it: by systemd-sysusers from the sysusers.d entry.
    run(["chroot", live, "systemd-sysusers"])
    for stale in (live / "var/lib/apt/lists").glob("*_*"):
        stale.unlink()


def first_boot_setup(live: pathlib.Path) -> None:
    """What systemd-firstboot finds on the real ISO: a locale (locale.conf), a time zone
    (the UTC link), root in passwd and shadow, no vconsole.conf, and keymaps (kbd's), so
    systemd 257's firstboot asks for a keymap on the console unless
    `systemd.firstboot=off` is on the kernel command line (systemd#34490)."""
    (live / "etc/locale.conf").write_text("LANG=C.UTF-8\n")
    # Debian links vconsole.conf to /etc/default/keyboard, which minbase lacks, and its
    # tmpfiles (debian.conf, `L+ /etc/vconsole.conf`) makes that link again at every boot
    # before firstboot runs, which then finds a "configured" console; Arch has no such
    # line. A same-named file in /etc/tmpfiles.d replaces Debian's, without that line.
    (live / "etc/vconsole.conf").unlink(missing_ok=True)
    debian_conf = live / "usr/lib/tmpfiles.d/debian.conf"
    if debian_conf.is_file():
        kept = [line for line in debian_conf.read_text().splitlines() if "/etc/vconsole.conf" not in line]
        override = live / "etc/tmpfiles.d/debian.conf"
        override.parent.mkdir(parents=True, exist_ok=True)
        override.write_text(
            "# The stand-in's copy of Debian's debian.conf without /etc/vconsole.conf (build.py).\n"
            + "".join(f"{line}\n" for line in kept)
        )
    localtime = live / "etc/localtime"
    localtime.unlink(missing_ok=True)
    localtime.symlink_to("/usr/share/zoneinfo/UTC")
    # One keymap where kbd keeps them: systemd-firstboot offers what it finds there.
    keymap = live / "usr/share/kbd/keymaps/i386/qwerty/us.map.gz"
    keymap.parent.mkdir(parents=True, exist_ok=True)
    keymap.write_bytes(gzip.compress(b"keymaps 0-2,4-6,8-9,12\ninclude \"qwerty-layout\"\n", mtime=0))


def build_initramfs(live: pathlib.Path, kver: str, out: pathlib.Path, work: pathlib.Path) -> None:
    tree = work / "initramfs"
    (tree / "bin").mkdir(parents=True)
    # trixie's busybox-static, from the live root (which is the debootstrap root's copy).
    shutil.copy2(live / "usr/bin/busybox", tree / "bin/busybox")
    init = tree / "init"
    shutil.copy2(DATA / "initramfs/init", init)
    init.chmod(0o755)

    # modprobe on the live root's (freshly depmod'ed) tree lists each module
    # after its dependencies; the init insmods them in that order because the
    # initramfs carries no modules.dep of its own.
    order: list[str] = []
    for module in INITRAMFS_MODULES:
        out_text = run(
            ["modprobe", "-d", live, "-S", kver, "--show-depends", module],
            capture=True,
        ).stdout.decode()
        for line in out_text.splitlines():
            words = line.split()
            if words and words[0] == "insmod":
                path = words[1]
                inside = path[len(str(live)) :] if path.startswith(str(live)) else path
                if inside not in order:
                    order.append(inside)
    loaded = []
    for inside in order:
        dest = tree / inside.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(live / inside.lstrip("/"), dest)
        # Debian 13 compresses its modules with xz; the initramfs holds them plain,
        # so busybox's insmod needs no decompressor.
        if dest.suffix == ".xz":
            run(["xz", "-d", dest])
            dest = dest.with_suffix("")
        loaded.append("/" + dest.relative_to(tree).as_posix())
    (tree / "modules.list").write_text("".join(f"{p}\n" for p in loaded))

    names = sorted(
        str(p.relative_to(tree)) for p in tree.rglob("*")
    )
    cpio = run(
        ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible", "-D", tree],
        stdin_data="".join(f"{n}\n" for n in [".", *names]).encode(),
        capture=True,
    ).stdout
    # mtime=0 keeps the gzip header, and so the image, reproducible.
    out.write_bytes(gzip.compress(cpio, compresslevel=6, mtime=0))


def build_squashfs(live: pathlib.Path, out: pathlib.Path) -> None:
    run(
        [
            "mksquashfs", live, out,
            "-noappend", "-quiet", "-no-progress", "-no-xattrs",
            # zstd at a low level: a few percent larger than xz, several
            # times faster to build on two cores.
            "-comp", "zstd", "-Xcompression-level", "6",
            "-b", "1M",
            "-wildcards", "-e", "proc/*", "sys/*", "dev/*", "run/*", "tmp/*",
        ],
        env={"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH},
    )


def build_fallback_repo(out: pathlib.Path, work: pathlib.Path) -> None:
    """Until tests/standin/repo.py exists: one trivial package in [core] and
    an empty [extra], built by makepkg as `nobody` (makepkg refuses root)."""
    build = work / "fallback-pkg"
    build.mkdir()
    (build / "PKGBUILD").write_text(
        "pkgname=standin-hello\npkgver=1\npkgrel=1\narch=(any)\n"
        "pkgdesc='stand-in placeholder package'\nlicense=(MIT)\n"
        "package() { install -Dm644 /dev/null \"$pkgdir/usr/share/standin-hello\"; }\n"
    )
    shutil.chown(build, "nobody")
    # makepkg refuses to run as root and works in the current directory.
    run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "makepkg", "--nodeps", "--nocheck", "--noprogressbar"],
        cwd=build,
        env={"HOME": str(build), "PKGDEST": str(build)},
    )
    for repo in ("core", "extra"):
        (out / repo / "os/x86_64").mkdir(parents=True)
    pkg = next(build.glob("standin-hello-*.pkg.tar.*"))
    core = out / "core/os/x86_64"
    shutil.copy2(pkg, core / pkg.name)
    run(["repo-add", "-q", core / "core.db.tar.gz", core / pkg.name])
    extra = out / "extra/os/x86_64"
    run(["repo-add", "-q", extra / "extra.db.tar.gz", core / pkg.name])
    # An [extra] that exists but lists nothing.
    run(["repo-remove", "-q", extra / "extra.db.tar.gz", "standin-hello"])


def build_iso(cache: pathlib.Path, key: str, repo: ModuleType | None) -> pathlib.Path:
    rootfs = ensure_rootfs(cache)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=cache))
    # makepkg runs as `nobody` below this directory; mkdtemp made it 0700.
    work.chmod(0o755)
    try:
        live = work / "airootfs"
        build_live_root(rootfs, live)

        tree = work / "iso"
        (tree / "boot").mkdir(parents=True)
        (tree / "boot" / f"{UUID}.uuid").touch()
        boot = tree / "arch/boot/x86_64"
        boot.mkdir(parents=True)
        kver = kernel_release(rootfs)
        shutil.copyfile(rootfs / f"boot/vmlinuz-{kver}", boot / "vmlinuz-linux")
        with step("building the initramfs"):
            build_initramfs(live, kver, boot / "initramfs-linux.img", work)
        (tree / "arch/x86_64").mkdir(parents=True)
        with step("building the repository"):
            if repo is not None:
                repo.build_repo(tree / "repo", rootfs)
            else:
                log("tests/standin/repo.py missing: using a one-package fallback repository")
                build_fallback_repo(tree / "repo", work)
        with step("building airootfs.sfs"):
            build_squashfs(live, tree / "arch/x86_64/airootfs.sfs")
        shutil.rmtree(live)

        result = work / "result"
        result.mkdir()
        with step("writing the ISO"):
            run(
                [
                    "xorriso", "-as", "mkisofs",
                    "-iso-level", "3",
                    "-full-iso9660-filenames",
                    "-rational-rock",
                    "-joliet", "-joliet-long",
                    "-volid", LABEL,
                    "-appid", "Arch Linux offline stand-in (provision-arch tests)",
                    "-publisher", "provision-arch",
                    f"--modification-date={ISO_MODIFICATION_DATE}",
                    "-output", result / ISO_NAME,
                    tree,
                ],
                env={"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH},
            )
        result.chmod(0o755)
        (result / ISO_NAME).chmod(0o644)
        final = cache / key
        # The rename is the commit point: a reader sees a whole ISO or none.
        # A concurrent build that got there first wins; its ISO may be open.
        if not final.exists():
            result.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / ISO_NAME


def ensure_standin() -> pathlib.Path:
    """Path of the stand-in ISO, built first when the cache has no copy for
    the current inputs. Building needs root."""
    cache = cache_dir()
    repo = load_repo_module()
    key = iso_key(repo)
    iso = cache / key / ISO_NAME
    if iso.is_file():
        return iso
    if os.geteuid() != 0:
        raise BuildError(
            f"no cached stand-in ISO at {iso} and building one needs root: "
            "run `python3 -m tests.standin.build` as root"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with step(f"building the stand-in ISO {key}"):
        iso = build_iso(cache, key, repo)
    make_world_readable(iso.parent)
    return iso


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.standin.build", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.parse_args(argv)
    try:
        iso = ensure_standin()
    except BuildError as exc:
        print(f"standin: error: {exc}", file=sys.stderr)
        return 1
    print(iso.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())

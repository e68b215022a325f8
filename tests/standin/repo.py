"""Build the offline stand-in of the Arch package repositories (core, extra).

The PKGBUILDs under ``packages/`` repackage files of the Debian 13 debootstrap
root of the live system (busybox, the kernel, tzdata, the Arch keyring; the
PKGBUILDs find it as ``$STANDIN_ROOT``) as small Arch packages, and Debian 13's
systemd, util-linux, shadow, PAM, pacman, openssh, sudo, … and their libraries,
cut from the same root by ``debian.py``. Nothing comes from the host's own
files, so the repository is the same on a Debian 12 and a Debian 13 host.  makepkg refuses
to run as root, so each package is built as ``nobody`` in a scratch copy of
its directory, then collected into ``<out>/<repo>/os/x86_64`` with repo-add.

Usage: python3 -m tests.standin.repo OUTDIR
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

from tests.standin import debian

PACKAGES_DIR = pathlib.Path(__file__).resolve().parent / "packages"
ARCH = "x86_64"
# Which repository each package lives in, as on Arch. The packages cut from
# Debian (debian.PARTS and the libraries they need) are added to core.
REPOS: dict[str, list[str]] = {
    "core": ["filesystem", "tzdata", "busybox", "base", "linux", "mkinitcpio", "base-devel", "archlinux-keyring", "pambase"],
    "extra": ["vim", "man-db", "man-pages"],
}
# The PKGBUILD of a package cut from Debian that has no directory of its own.
DEBIAN_GENERIC = PACKAGES_DIR / "_debian"
BUILD_USER = "nobody"
# Fixed timestamps make the packages depend on the inputs only.
SOURCE_DATE_EPOCH = "1704067200"

# Zones (tzdata) and kernel modules (linux) the packages ship; passed to makepkg.
ZONES = ["Etc/UTC", "Europe/Berlin", "Europe/London", "America/New_York", "Asia/Shanghai", "Asia/Tokyo"]
# Debian 13's 6.12 builds virtio*, virtiofs and fuse in (the linux PKGBUILD skips what
# modules.builtin lists); fscache is part of netfs since Linux 6.8.
STANDIN_MODULES = [
    "9p", "9pnet", "9pnet_virtio", "netfs", "virtio", "virtio_ring", "virtio_pci",
    "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_net", "net_failover", "failover",
    "virtiofs", "fuse",  # the rendered MODULES name virtiofs; fuse is its dependency
    # A throwaway boot's layer (--ephemeral): its scratch disk, file system and overlay, loaded
    # from the box's modules after the root is mounted, as Arch's linux ships them.
    "virtio_blk", "ext4", "jbd2", "mbcache", "crc16", "crc32c_generic", "crc32c-intel", "overlay",
    # A disk export (raw, qcow2) boots from a virtio or SATA disk: the block hook's drivers
    # (virtio_scsi, ahci, sd_mod and what they need), and its ESP, mounted at /boot, is FAT
    # (vfat with the code page and character sets Debian's kernel defaults to).
    "virtio_scsi", "scsi_mod", "scsi_common", "sd_mod", "ahci", "libahci", "libata",
    "vfat", "fat", "nls_cp437", "nls_ascii", "nls_utf8",
]  # fmt: skip


class RepoBuildError(Exception):
    """The stand-in repository could not be built."""


def kernel_release(rootfs: pathlib.Path) -> str:
    """The newest kernel release of the debootstrap root (its /boot/vmlinuz-* with modules)."""
    releases = sorted(
        p.name.removeprefix("vmlinuz-")
        for p in (rootfs / "boot").glob("vmlinuz-*")
        if (rootfs / "usr/lib/modules" / p.name.removeprefix("vmlinuz-")).is_dir()
    )
    if not releases:
        raise RepoBuildError(f"no boot/vmlinuz-* with a matching usr/lib/modules/<release> in {rootfs}")
    # Version order, not text order: 6.1.0-10 is newer than 6.1.0-9.
    return max(releases, key=_release_key)


def _release_key(release: str) -> list[tuple[int, str]]:
    parts = release.replace("-", ".").replace("+", ".").split(".")
    return [(int(p), "") if p.isdigit() else (-1, p) for p in parts]


def _package_inputs() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGES_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


# The files of the project the repository is made from; the debootstrap root (the other
# input) is keyed by its recipe (build.rootfs_key).
INPUTS: list[pathlib.Path] = [
    pathlib.Path(__file__).resolve(), pathlib.Path(debian.__file__).resolve(), *_package_inputs()
]


def run(cmd: list[str], *, cwd: pathlib.Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run a host command; its output goes into the error on failure."""
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise RepoBuildError(f"{cmd[0]} not found (install it on the host)") from exc
    if proc.returncode != 0:
        raise RepoBuildError(f"{shlex.join(cmd)} failed with status {proc.returncode}:\n{proc.stdout}")


def _build_package(
    name: str,
    scratch: pathlib.Path,
    pkgdest: pathlib.Path,
    env_extra: dict[str, str],
    cut: debian.Package | None = None,
    source: pathlib.Path | None = None,
) -> None:
    workdir = scratch / name
    if cut is None:
        shutil.copytree(source or PACKAGES_DIR / name, workdir)
    else:
        own = PACKAGES_DIR / name
        shutil.copytree(own if own.is_dir() else DEBIAN_GENERIC, workdir)
        shutil.copy2(DEBIAN_GENERIC / "manifest.sh", workdir / "manifest.sh")
        cut.write(workdir)
        env_extra = {
            **env_extra,
            "STANDIN_PKGNAME": cut.name,
            "STANDIN_PKGVER": cut.version,
            "STANDIN_PKGDESC": cut.desc,
            "STANDIN_DEPENDS": " ".join(sorted(cut.depends)),
        }
    # makepkg writes src/ and pkg/ beside the PKGBUILD, as the build user.
    for path in [workdir, *workdir.rglob("*")]:
        shutil.chown(path, BUILD_USER)
    env = {
        "PATH": "/usr/bin:/usr/sbin:/bin:/sbin",
        "HOME": str(scratch),
        "LANG": "C.UTF-8",
        "PKGDEST": str(pkgdest),
        "SRCDEST": str(workdir),
        "BUILDDIR": str(scratch / "build"),
        "PKGEXT": ".pkg.tar.zst",
        "PACKAGER": "provision-arch offline stand-in <standin@localhost>",
        "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH,
        **env_extra,
    }
    env_args = [f"{k}={v}" for k, v in env.items()]
    # runuser drops root for makepkg; env -i keeps the host's environment
    # (MAKEFLAGS, a user's makepkg overrides) out of the build.
    run(
        ["runuser", "-u", BUILD_USER, "--", "env", "-i", *env_args,
         "makepkg", "--nodeps", "--noconfirm", "--force", "--skipinteg"],
        cwd=workdir,
    )  # fmt: skip


def package_env(rootfs: pathlib.Path) -> dict[str, str]:
    """What the PKGBUILDs read besides makepkg's own variables: the root their files
    come from, its kernel release, the modules and zones to ship."""
    return {
        "STANDIN_ROOT": str(rootfs),
        "STANDIN_KVER": kernel_release(rootfs),
        "STANDIN_MODULES": " ".join(STANDIN_MODULES),
        "STANDIN_ZONES": " ".join(ZONES),
    }


def build_repo(out: pathlib.Path, rootfs: pathlib.Path) -> None:
    """Fill out/core/os/x86_64 and out/extra/os/x86_64 with packages and databases.

    rootfs is the Debian root (build.ensure_rootfs) the Debian-built packages are cut from."""
    if os.geteuid() != 0:
        raise RepoBuildError("building the stand-in repository needs root (to run makepkg as nobody)")
    try:
        cut = debian.harvest(rootfs)
    except debian.DebianError as exc:
        raise RepoBuildError(f"cutting packages from {rootfs}: {exc}") from exc
    repos = {repo: list(names) for repo, names in REPOS.items()}
    repos["core"] += [name for name in cut if name not in repos["core"]]
    env_extra = {**package_env(rootfs), "STANDIN_BUSYBOX_SKIP": " ".join(debian.busybox_shadowed(cut))}
    with tempfile.TemporaryDirectory(prefix="standin-repo-") as tmp:
        scratch = pathlib.Path(tmp)
        pkgdest = scratch / "pkgs"
        (scratch / "build").mkdir()
        pkgdest.mkdir()
        for path in (scratch, scratch / "build", pkgdest):
            shutil.chown(path, BUILD_USER)
        for repo, names in repos.items():
            repodir = out / repo / "os" / ARCH
            if repodir.exists():
                shutil.rmtree(repodir)
            repodir.mkdir(parents=True)
            built: list[pathlib.Path] = []
            for name in names:
                before = set(pkgdest.iterdir())
                _build_package(name, scratch, pkgdest, env_extra, cut.get(name))
                new = sorted(set(pkgdest.iterdir()) - before)
                if not new:
                    raise RepoBuildError(f"makepkg made no package for {name}")
                for pkg in new:
                    target = repodir / pkg.name
                    shutil.copyfile(pkg, target)
                    built.append(target)
            db = repodir / f"{repo}.db.tar.gz"
            run(["repo-add", "--quiet", str(db), *map(str, built)])
            # repo-add links <repo>.db -> <repo>.db.tar.gz; a plain copy
            # survives any way the ISO builder stores the tree.
            for short, full in ((f"{repo}.db", db), (f"{repo}.files", repodir / f"{repo}.files.tar.gz")):
                link = repodir / short
                link.unlink(missing_ok=True)
                shutil.copyfile(full, link)
            for old in repodir.glob("*.old"):
                old.unlink()


PKGVER_RE = re.compile(r"^[A-Za-z0-9._+]+$")


def build_package(
    source: pathlib.Path, out: pathlib.Path, *, pkgver: str | None = None, rootfs: pathlib.Path | None = None
) -> list[pathlib.Path]:
    """Build the package whose PKGBUILD is in ``source`` (e.g. ``PACKAGES_DIR / "vim"``) into
    the directory ``out``, as build_repo builds each package; with ``pkgver``, the
    PKGBUILD's ``pkgver=`` line is replaced in the build's copy. ``rootfs`` is the
    debootstrap root (the cached one when not given). Returns the new files
    (no repo-add: the caller owns the database)."""
    if os.geteuid() != 0:
        raise RepoBuildError("building a stand-in package needs root (to run makepkg as nobody)")
    if pkgver is not None and not PKGVER_RE.fullmatch(pkgver):
        raise RepoBuildError(f"invalid pkgver {pkgver!r}")
    if rootfs is None:
        # Not at the top: build imports this module.
        from tests.standin.build import cache_dir, ensure_rootfs  # noqa: PLC0415

        rootfs = ensure_rootfs(cache_dir())
    with tempfile.TemporaryDirectory(prefix="standin-pkg-") as tmp:
        scratch = pathlib.Path(tmp)
        copy = scratch / "source"
        shutil.copytree(source, copy)
        if pkgver is not None:
            pkgbuild = copy / "PKGBUILD"
            text, count = re.subn(r"^pkgver=.*$", f"pkgver={pkgver}", pkgbuild.read_text(), flags=re.MULTILINE)
            if count != 1:
                raise RepoBuildError(f"{source / 'PKGBUILD'} has {count} pkgver= lines, not one")
            pkgbuild.write_text(text)
        pkgdest = scratch / "pkgs"
        for path in (scratch / "build", pkgdest):
            path.mkdir()
        for path in (scratch, scratch / "build", pkgdest):
            shutil.chown(path, BUILD_USER)
        _build_package("package", scratch, pkgdest, package_env(rootfs), source=copy)
        made = sorted(pkgdest.iterdir())
        if not made:
            raise RepoBuildError(f"makepkg made no package from {source}")
        out.mkdir(parents=True, exist_ok=True)
        for pkg in made:
            shutil.copyfile(pkg, out / pkg.name)
        return [out / pkg.name for pkg in made]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 -m tests.standin.repo OUTDIR", file=sys.stderr)
        return 2
    # Not at the top: build imports this module.
    from tests.standin.build import cache_dir, ensure_rootfs  # noqa: PLC0415

    try:
        build_repo(pathlib.Path(argv[0]).resolve(), ensure_rootfs(cache_dir()))
    except RepoBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

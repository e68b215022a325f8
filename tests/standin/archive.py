"""An offline stand-in of the Arch Linux Archive and of a plain mirror, for HTTP tests.

The Arch Linux Archive keeps one snapshot of the repositories per day at
``repos/YYYY/MM/DD/$repo/os/$arch`` (ARCHISO.md, "Release files and the archive"), and
every version of every package under ``packages/<first letter>/<name>/``. This builds the
same layout from the stand-in repository (tests/standin/repo.py) for two days that differ
in one package, ``vim``::

    ROOT/packages/v/vim/vim-9.1.0001-1-x86_64.pkg.tar.zst     every package file, once
    ROOT/repos/2026/11/01/{core,extra}/os/x86_64/              day 1: vim 9.1.0001-1
    ROOT/repos/2026/11/02/{core,extra}/os/x86_64/              day 2: vim 9.1.0002-1
    ROOT/repos/last -> 2026/11/02                              the newest day, as on the Archive
    ROOT/{core,extra} -> repos/2026/11/02/{core,extra}         a plain mirror ($repo/os/$arch)

Package files in the days are hard links to the ``packages/`` copies; the databases are
repo-add's (``core.db`` a link to ``core.db.tar.gz``, as on a real mirror). All other
packages are the stand-in repository's builds, the same on both days. The changed vim
carries its version in the installed ``/usr/bin/vim`` (a comment, and ``vim --version``).

``ensure_archive()`` returns ROOT, built on first use (as root: makepkg runs as nobody)
and cached by a hash of its inputs under /var/cache/provision-arch-standin/ (or
$PROVISION_ARCH_STANDIN_CACHE). Serve it with tests.standin.mirror.Mirror; a guest uses
``--mirror http://10.0.2.2:PORT/repos/2026/11/01`` for a day, ``http://10.0.2.2:PORT``
for the plain mirror.

Usage: python3 -m tests.standin.archive   (prints ROOT on its last line)
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

from tests.standin import repo

HERE = pathlib.Path(__file__).resolve().parent
# Bump when the layout changes in a way the hashed inputs do not show.
ARCHIVE_RECIPE = "1"
CHANGED = "vim"  # the package whose version differs between the days
# Host tools whose versions shape the packages and databases.
HOST_PACKAGES = ("pacman-package-manager", "makepkg", "libarchive-tools", "zstd")
REQUIRED_TOOLS = ("makepkg", "repo-add", "runuser", "bsdtar", "zstd")


@dataclasses.dataclass(frozen=True)
class Day:
    """One snapshot of the Archive and the version of CHANGED in it."""

    date: datetime.date
    pkgver: str
    pkgrel: str = "1"

    @property
    def path(self) -> str:
        """Its directory below the root, also the URL path: ``repos/2026/11/01``."""
        return f"repos/{self.date:%Y/%m/%d}"

    @property
    def version(self) -> str:
        """As pacman's databases write it: ``9.1.0001-1``."""
        return f"{self.pkgver}-{self.pkgrel}"


DAY1 = Day(datetime.date(2026, 11, 1), "9.1.0001")
DAY2 = Day(datetime.date(2026, 11, 2), "9.1.0002")
DAYS: tuple[Day, ...] = (DAY1, DAY2)
NEWEST = max(DAYS, key=lambda d: d.date)


class ArchiveError(Exception):
    """The archive could not be built."""


class ArchiveUnavailable(ArchiveError):
    """This host cannot build the archive (not root, a tool or the kernel missing) and has
    no cached copy: tests skip on this, and fail on any other ArchiveError."""


def log(message: str) -> None:
    print(f"standin-archive: {message}", file=sys.stderr, flush=True)


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("PROVISION_ARCH_STANDIN_CACHE", "/var/cache/provision-arch-standin"))


def _host_package_versions() -> list[str]:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package}=${Version}\\n", *HOST_PACKAGES],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
    except FileNotFoundError:
        return ["no-dpkg"]
    return sorted(out.split())


def archive_key() -> str:
    """A hash of everything the archive is made from: this file, the stand-in repository's
    inputs (repo.py, debian.py, the PKGBUILDs), the debootstrap root they take the kernel,
    busybox and Debian's binaries from (its recipe key), the days and the host tools.
    Paths inside the project are hashed relative to it, so clones and worktrees share the cache."""
    # Not at the top: build imports repo, which this module imports.
    from tests.standin.build import project_name, rootfs_key  # noqa: PLC0415

    digest = hashlib.sha256()
    digest.update(f"recipe {ARCHIVE_RECIPE}\n".encode())
    digest.update(f"rootfs {rootfs_key()}\n".encode())
    for day in DAYS:
        digest.update(f"day {day.date.isoformat()} {CHANGED} {day.version}\n".encode())
    for name, path in sorted({project_name(p): p for p in (pathlib.Path(__file__), *repo.INPUTS)}.items()):
        digest.update(f"F {name}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for version in _host_package_versions():
        digest.update(f"P {version}\n".encode())
    return digest.hexdigest()[:16]


def pkgname(filename: str) -> str:
    """``vim-9.1.0001-1-x86_64.pkg.tar.zst`` -> ``vim`` (makepkg's file naming)."""
    stem = filename.split(".pkg.tar", 1)[0]
    return stem.rsplit("-", 3)[0]


def _variant(day: Day, workdir: pathlib.Path) -> pathlib.Path:
    """A copy of packages/CHANGED whose wrapper script names the day's version."""
    source = workdir / f"{CHANGED}-{day.version}" / CHANGED
    shutil.copytree(repo.PACKAGES_DIR / CHANGED, source)
    wrapper = source / CHANGED
    shebang, _, rest = wrapper.read_text().partition("\n")
    if not shebang.startswith("#!"):
        raise ArchiveError(f"{repo.PACKAGES_DIR / CHANGED / CHANGED} does not start with #!")
    stamp = (
        f"# {CHANGED} {day.version} from the stand-in Arch Linux Archive, {day.path}\n"
        f'[ "${{1-}}" = --version ] && {{ echo "VIM - Vi IMproved {day.pkgver} (offline stand-in: busybox vi)"; exit 0; }}\n'
    )
    wrapper.write_text(f"{shebang}\n{stamp}{rest}")
    return source


def _pool_path(root: pathlib.Path, package: pathlib.Path) -> pathlib.Path:
    name = pkgname(package.name)
    return root / "packages" / name[0] / name / package.name


def build_archive(root: pathlib.Path) -> None:
    """Fill the empty or missing directory ``root`` with the layout in this module's doc."""
    with tempfile.TemporaryDirectory(prefix="standin-archive-") as tmp:
        work = pathlib.Path(tmp)
        current = work / "current"
        started = time.monotonic()
        # Not at the top: build imports repo, which this module imports.
        from tests.standin.build import cache_dir, ensure_rootfs  # noqa: PLC0415

        repo.build_repo(current, ensure_rootfs(cache_dir()))
        log(f"stand-in repository built in {time.monotonic() - started:.1f}s")

        # Which repository holds which files, from the current build; CHANGED is swapped per day.
        contents: dict[str, list[pathlib.Path]] = {}
        changed_repo = None
        for name in repo.REPOS:
            files = []
            for package in sorted((current / name / "os" / repo.ARCH).glob("*.pkg.tar.*")):
                if pkgname(package.name) == CHANGED:
                    changed_repo = name
                    continue
                pooled = _pool_path(root, package)
                pooled.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(package, pooled)
                files.append(pooled)
            contents[name] = files
        if changed_repo is None:
            raise ArchiveError(f"the stand-in repository has no {CHANGED} package")

        for day in DAYS:
            started = time.monotonic()
            built = repo.build_package(_variant(day, work), work / "variants" / day.version, pkgver=day.pkgver)
            if [pkgname(p.name) for p in built] != [CHANGED] or f"-{day.version}-" not in built[0].name:
                raise ArchiveError(f"building {CHANGED} {day.version} made {[p.name for p in built]}")
            pooled = _pool_path(root, built[0])
            pooled.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(built[0], pooled)
            log(f"{CHANGED} {day.version} built in {time.monotonic() - started:.1f}s")
            for name, files in contents.items():
                repodir = root / day.path / name / "os" / repo.ARCH
                repodir.mkdir(parents=True)
                linked = []
                for package in [*files, *([pooled] if name == changed_repo else [])]:
                    os.link(package, repodir / package.name)
                    linked.append(repodir / package.name)
                repo.run(["repo-add", "--quiet", str(repodir / f"{name}.db.tar.gz"), *map(str, linked)])
                for old in repodir.glob("*.old"):
                    old.unlink()

        (root / "repos" / "last").symlink_to(f"{NEWEST.date:%Y/%m/%d}")
        for name in repo.REPOS:
            (root / name).symlink_to(f"{NEWEST.path}/{name}")


def _require_tools() -> None:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise ArchiveUnavailable(f"building the stand-in archive needs {', '.join(missing)} on this host")


def ensure_archive() -> pathlib.Path:
    """The archive's root directory, from the cache or built now (root only).

    Raises ArchiveUnavailable when it is not cached and this host cannot build it."""
    cache = cache_dir()
    key = archive_key()
    final = cache / f"archive-{key}"
    if final.is_dir():
        return final
    if os.geteuid() != 0:
        raise ArchiveUnavailable(
            f"no cached stand-in archive at {final} and building one needs root: run `python3 -m tests.standin.archive` as root"
        )
    _require_tools()
    cache.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".archive-{key}-", dir=cache))
    try:
        work.chmod(0o755)
        started = time.monotonic()
        try:
            build_archive(work)
        except repo.RepoBuildError as exc:
            raise ArchiveError(str(exc)) from exc
        log(f"archive {key} built in {time.monotonic() - started:.1f}s")
        # The rename is the commit point; a concurrent build that finished first wins.
        try:
            work.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


# -- reading pacman's databases (for tests) -------------------------------------------------


def parse_desc(text: str) -> dict[str, list[str]]:
    """A pacman ``desc`` file: ``%NAME%`` headers, each followed by value lines."""
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("%") and line.endswith("%") and len(line) > 2:
            current = fields.setdefault(line[1:-1], [])
        elif line and current is not None:
            current.append(line)
        else:
            current = None
    return fields


def db_versions(db: pathlib.Path) -> dict[str, str]:
    """Package name -> version listed in a sync database (``core.db``, a gzip'd tar)."""
    versions = {}
    with tarfile.open(db) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith("/desc"):
                handle = tar.extractfile(member)
                assert handle is not None
                fields = parse_desc(handle.read().decode())
                versions[fields["NAME"][0]] = fields["VERSION"][0]
    return versions


def installed_versions(target: pathlib.Path) -> dict[str, str]:
    """Package name -> version installed in a root (its /var/lib/pacman/local/*/desc)."""
    versions = {}
    for desc in sorted((target / "var/lib/pacman/local").glob("*/desc")):
        fields = parse_desc(desc.read_text())
        versions[fields["NAME"][0]] = fields["VERSION"][0]
    return versions


def main() -> int:
    try:
        root = ensure_archive()
    except ArchiveError as exc:
        print(f"standin-archive: error: {exc}", file=sys.stderr)
        return 1
    for day in DAYS:
        log(f"{day.path}: {CHANGED} {day.version}")
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())

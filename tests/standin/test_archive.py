"""The stand-in Arch Linux Archive: two days that differ in vim, and a plain mirror.

No VM. The archive comes from the cache, or is built here when running as root (about
half a minute); elsewhere these tests skip. The pacman tests also need root (pacman -Sy
insists on it) and Debian's pacman on the host.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import urllib.request

import pytest

from tests.standin import repo
from tests.standin.archive import (
    CHANGED,
    DAY1,
    DAY2,
    DAYS,
    NEWEST,
    ArchiveUnavailable,
    Day,
    db_versions,
    ensure_archive,
    parse_desc,
    pkgname,
)
from tests.standin.mirror import Mirror


@pytest.fixture(scope="module")
def archive() -> pathlib.Path:
    try:
        return ensure_archive()
    except ArchiveUnavailable as exc:
        pytest.skip(str(exc))


def repodir(root: pathlib.Path, day: Day, name: str) -> pathlib.Path:
    return root / day.path / name / "os" / repo.ARCH


def test_pkgname_and_desc_parsing() -> None:
    assert pkgname("vim-9.1.0001-1-x86_64.pkg.tar.zst") == "vim"
    assert pkgname("base-devel-1-2-any.pkg.tar.zst") == "base-devel"
    assert pkgname("archlinux-keyring-20231113-1-any.pkg.tar.zst") == "archlinux-keyring"
    desc = "%FILENAME%\nvim-9.1-1-x86_64.pkg.tar.zst\n\n%NAME%\nvim\n\n%DEPENDS%\nbusybox\nglibc\n\n"
    assert parse_desc(desc) == {"FILENAME": ["vim-9.1-1-x86_64.pkg.tar.zst"], "NAME": ["vim"], "DEPENDS": ["busybox", "glibc"]}


def test_days_are_in_the_archives_layout(archive: pathlib.Path) -> None:
    assert [day.path for day in DAYS] == ["repos/2026/11/01", "repos/2026/11/02"]
    for day in DAYS:
        for name in repo.REPOS:
            d = repodir(archive, day, name)
            for db in (f"{name}.db", f"{name}.db.tar.gz", f"{name}.files", f"{name}.files.tar.gz"):
                assert (d / db).is_file(), d / db
            # Every package file is a hard link to its copy under packages/<l>/<name>/.
            for package in d.glob("*.pkg.tar.zst"):
                pooled = archive / "packages" / pkgname(package.name)[0] / pkgname(package.name) / package.name
                assert package.stat().st_ino == pooled.stat().st_ino, package
    assert os.readlink(archive / "repos/last") == "2026/11/02"


def test_the_two_days_list_different_versions_of_one_package(archive: pathlib.Path) -> None:
    day1 = {name: db_versions(repodir(archive, DAY1, name) / f"{name}.db") for name in repo.REPOS}
    day2 = {name: db_versions(repodir(archive, DAY2, name) / f"{name}.db") for name in repo.REPOS}
    assert day1["extra"][CHANGED] == "9.1.0001-1"
    assert day2["extra"][CHANGED] == "9.1.0002-1"
    # Nothing else changed, and the packages named in repo.REPOS are there (core also has
    # those cut from Debian, which only a build of the repository names).
    for name in repo.REPOS:
        others1 = {k: v for k, v in day1[name].items() if k != CHANGED}
        others2 = {k: v for k, v in day2[name].items() if k != CHANGED}
        assert others1 == others2
        assert set(repo.REPOS[name]) <= set(day1[name]), name
    assert set(day1["extra"]) == set(repo.REPOS["extra"])


def test_the_database_lists_what_tar_lists(archive: pathlib.Path) -> None:
    """The same answer from `tar -tzf`, as a person would check it."""
    for day in DAYS:
        listing = subprocess.run(
            ["tar", "-tzf", str(repodir(archive, day, "extra") / "extra.db")], capture_output=True, text=True, check=True
        ).stdout.split()
        assert f"{CHANGED}-{day.version}/desc" in listing


def test_the_installed_file_names_the_version(archive: pathlib.Path) -> None:
    if shutil.which("bsdtar") is None:
        pytest.skip("bsdtar (libarchive-tools) is needed to read a .pkg.tar.zst")
    for day in DAYS:
        package = repodir(archive, day, "extra") / f"{CHANGED}-{day.version}-{repo.ARCH}.pkg.tar.zst"
        wrapper = subprocess.run(["bsdtar", "-xOf", str(package), "usr/bin/vim"], capture_output=True, text=True, check=True)
        assert wrapper.stdout.startswith("#!/bin/sh\n")
        assert f"{CHANGED} {day.version} " in wrapper.stdout
        assert f"VIM - Vi IMproved {day.pkgver} " in wrapper.stdout
        assert "exec /usr/bin/vi" in wrapper.stdout


def test_the_plain_mirror_is_the_newest_day(archive: pathlib.Path) -> None:
    for name in repo.REPOS:
        plain = archive / name / "os" / repo.ARCH
        assert plain.resolve() == repodir(archive, NEWEST, name).resolve()
    assert db_versions(archive / "extra/os/x86_64/extra.db")[CHANGED] == NEWEST.version


def test_served_over_http_with_the_request_logged(archive: pathlib.Path) -> None:
    path = f"/{DAY1.path}/extra/os/{repo.ARCH}/extra.db"
    with Mirror(archive) as m, urllib.request.urlopen(m.url + path, timeout=10) as response:  # noqa: S310 (loopback)
        body = response.read()
        log = m.requests()
    assert body == (archive / path.lstrip("/")).read_bytes()
    assert [(r.method, r.path, r.status, r.bytes) for r in log] == [("GET", path, 200, len(body))]


# -- Debian's pacman on the host, against the served archive --------------------------------


def pacman_conf(tmp: pathlib.Path, server: str) -> pathlib.Path:
    for sub in ("db", "cache", "root"):
        (tmp / sub).mkdir()
    conf = tmp / "pacman.conf"
    repos = "".join(f"[{name}]\nServer = {server}/$repo/os/$arch\n" for name in repo.REPOS)
    conf.write_text(
        f"[options]\nArchitecture = {repo.ARCH}\nSigLevel = Never\nRootDir = {tmp}/root\nDBPath = {tmp}/db\n"
        f"CacheDir = {tmp}/cache\nLogFile = {tmp}/pacman.log\nGPGDir = {tmp}/gnupg\n\n{repos}"
    )
    return conf


def pacman(conf: pathlib.Path, *args: str) -> str:
    proc = subprocess.run(
        ["pacman", "--config", str(conf), "--noconfirm", "--noprogressbar", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture
def host_pacman(archive: pathlib.Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("pacman -Sy needs root")
    if shutil.which("pacman") is None:
        pytest.skip("no pacman on this host (Debian: pacman-package-manager)")


@pytest.mark.usefixtures("host_pacman")
def test_pacman_syncs_each_day_and_downloads_its_vim(archive: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with Mirror(archive) as m:
        for day in DAYS:
            work = tmp_path / day.date.isoformat()
            work.mkdir()
            conf = pacman_conf(work, f"{m.url}/{day.path}")
            before = len(m.requests())
            pacman(conf, "-Sy")
            assert f"{CHANGED} {day.version}" in pacman(conf, "-Sl", "extra")
            pacman(conf, "-Sw", CHANGED)
            assert (work / "cache" / f"{CHANGED}-{day.version}-{repo.ARCH}.pkg.tar.zst").is_file()
            got = [(r.method, r.path, r.status) for r in m.requests()[before:]]
            assert ("GET", f"/{day.path}/core/os/{repo.ARCH}/core.db", 200) in got
            assert ("GET", f"/{day.path}/extra/os/{repo.ARCH}/{CHANGED}-{day.version}-{repo.ARCH}.pkg.tar.zst", 200) in got
            # A second -Sy sends If-Modified-Since; the unchanged databases are not sent again.
            before = len(m.requests())
            pacman(conf, "-Sy")
            assert {r.status for r in m.requests()[before:]} == {304}


@pytest.mark.usefixtures("host_pacman")
def test_pacman_resumes_a_partial_download_with_range(archive: pathlib.Path, tmp_path: pathlib.Path) -> None:
    source = next((archive / "packages/b/busybox").glob("busybox-*.pkg.tar.zst"))
    name = source.name
    data = source.read_bytes()
    with Mirror(archive) as m:
        conf = pacman_conf(tmp_path, f"{m.url}/{DAY1.path}")
        pacman(conf, "-Sy")
        (tmp_path / "cache" / f"{name}.part").write_bytes(data[:100_000])
        before = len(m.requests())
        pacman(conf, "-Sw", "busybox")
        (request,) = (r for r in m.requests()[before:] if r.path.endswith(name))
    assert (request.status, request.range, request.bytes) == (206, "bytes=100000-", len(data) - 100_000)
    assert (tmp_path / "cache" / name).read_bytes() == data


@pytest.mark.usefixtures("host_pacman")
def test_pacman_on_the_plain_mirror_gets_the_newest_day(archive: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with Mirror(archive) as m:
        conf = pacman_conf(tmp_path, m.url)
        pacman(conf, "-Sy")
        assert f"{CHANGED} {NEWEST.version}" in pacman(conf, "-Sl", "extra")
        pacman(conf, "-Sw", CHANGED)
        got = [(r.path, r.status) for r in m.requests()]
    assert (f"/extra/os/{repo.ARCH}/{CHANGED}-{NEWEST.version}-{repo.ARCH}.pkg.tar.zst", 200) in got

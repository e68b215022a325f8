"""Merging and removing a box's files as the unprivileged user: a dev user's 0700 home belongs
to a subordinate id, which the user can neither enter nor change on the host, only as root of
the user namespace QEMU uses (tree.as_guest_root). The stream install's --force merge and the
removal of a half-unpacked tree depend on it; the fast tiers run as root and cannot show it.
The stream's extractor too: a crafted stream refused, a good one's owners in the subuid range."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.vm.unprivileged import E2EUser, as_user

pytestmark = pytest.mark.vm

SCRIPT = textwrap.dedent("""
    import subprocess, sys
    from pathlib import Path
    from provisioner.tree import as_guest_root
    box = Path(sys.argv[1])
    def guest(command):
        subprocess.run(["unshare", "--map-auto", "--map-root-user", "sh", "-c", command], check=True)
    guest(f"mkdir -p {box}/home/dev {box}/new/home/dev && echo old > {box}/home/dev/notes && "
          f"echo new > {box}/new/home/dev/added && chown -R 1000:1000 {box}/home/dev {box}/new/home/dev && "
          f"chmod 700 {box}/home/dev {box}/new/home/dev")
    as_guest_root("merge", box, "new", as_root=False)
    print(sorted(p.name for p in box.iterdir()))
""")


def test_merge_and_remove_reach_what_only_the_boxs_users_own(user: E2EUser, cli: Path, workdir: Path) -> None:
    box = workdir / "box"
    python = str(cli.parent / "python")
    merged = subprocess.run(as_user(user, workdir, [python, "-c", SCRIPT, str(box)]), capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.strip() == "['home']"
    home = box / "home/dev"
    assert sorted(path.name for path in home.iterdir()) == ["added", "notes"], "merged into the user's 0700 home"
    assert (home / "notes").read_text() == "old\n" and (home / "added").read_text() == "new\n"
    assert home.stat().st_uid == user.subuid + 999, "owned by the box's dev, as before"
    remove = (
        "from pathlib import Path; from provisioner.tree import as_guest_root; "
        f"as_guest_root('remove', Path({str(box)!r}), 'home', as_root=False)"
    )
    removed = subprocess.run(as_user(user, workdir, [python, "-c", remove]), capture_output=True, text=True, check=False)
    assert removed.returncode == 0, removed.stderr
    assert not (box / "home").exists()


UNPACK = textwrap.dedent("""
    import io, json, sys, tarfile
    from pathlib import Path
    from provisioner.unpack import UnpackError, unpack
    work = Path(sys.argv[1])
    def archive(name, members):
        path = work / name
        with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data else None)
        return path
    def member(name, kind=tarfile.REGTYPE, data=b"", **fields):
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, len(data)
        for key, value in fields.items():
            setattr(info, key, value)
        return info, data
    results = {}
    root = member(".", tarfile.DIRTYPE, mode=0o755)
    good = archive("good.tar", [root, member("home", tarfile.DIRTYPE, mode=0o755),
                                member("home/dev", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000),
                                member("home/dev/notes", data=b"x", mode=0o600, uid=1000, gid=1000)])
    (work / "good").mkdir()
    results["good"] = unpack(good, work / "good", as_root=False, limit=1 << 20).entries
    evil = archive("evil.tar", [root, member("esc", tarfile.SYMTYPE, linkname=str(work / "victim")),
                                member("esc/planted", data=b"owned")])
    (work / "evil").mkdir()
    try:
        unpack(evil, work / "evil", as_root=False, limit=1 << 20)
        results["evil"] = "unpacked"
    except UnpackError as exc:
        results["evil"] = exc.message
    print(json.dumps(results))
""")


def test_crafted_streams_are_refused_and_good_ones_land_in_the_subuid_range(
    user: E2EUser, cli: Path, workdir: Path
) -> None:
    """The extractor as users run it: unprivileged, in a real user namespace (the fast tiers run as root)."""
    work = workdir / "unpack"
    work.mkdir()
    (work / "victim").mkdir()
    for path in (work, work / "victim"):
        os.chown(path, user.uid, user.gid)
    python = str(cli.parent / "python")
    done = subprocess.run(as_user(user, workdir, [python, "-c", UNPACK, str(work)]), capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["good"] == 4
    notes = work / "good/home/dev/notes"
    assert (notes.stat().st_uid, notes.stat().st_gid) == (user.subuid + 999, user.subgid + 999)
    assert "lies below the archive's symlink 'esc'" in results["evil"], results
    assert list((work / "victim").iterdir()) == [] and list((work / "evil").iterdir()) == []

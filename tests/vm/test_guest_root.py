"""Merging and removing a box's files as the unprivileged user: a dev user's 0700 home belongs
to a subordinate id, which the user can neither enter nor change on the host, only as root of
the user namespace QEMU uses (tree.as_guest_root). The stream install's --force merge and the
removal of a half-unpacked tree depend on it; the fast tiers run as root and cannot show it."""

from __future__ import annotations

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

"""tree.py: the host's access to a box's tree, which the guest controls."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from provisioner.tree import BENEATH, IN_ROOT, Tree, TreeError, as_guest_root


def tree_with_links(tmp_path: Path) -> tuple[Path, Path]:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("the host's\n")
    box = tmp_path / "box"
    (box / "etc").mkdir(parents=True)
    (box / "etc/passwd").write_text("root:x:0:0::/root:/bin/bash\n")
    (box / "out").symlink_to(victim)
    (box / "file-link").symlink_to(victim / "file")
    return box, victim


def test_nothing_is_read_or_written_through_a_link(tmp_path: Path) -> None:
    box, victim = tree_with_links(tmp_path)
    with Tree(box) as tree:
        assert tree.read("etc/passwd", 100).startswith(b"root:")
        for path in ("out/file", "file-link"):
            with pytest.raises(TreeError):
                tree.read(path, 100)
        with pytest.raises(TreeError):
            tree.write("out/new", b"x", 0o644)
        with pytest.raises(TreeError):
            tree.write("file-link", b"x", 0o644)
        tree.remove("out")
        tree.remove("file-link")
    assert sorted(os.listdir(victim)) == ["file"] and (victim / "file").read_text() == "the host's\n"
    assert not os.path.lexists(box / "out")


def test_in_root_resolves_links_as_the_box_would(tmp_path: Path) -> None:
    box, victim = tree_with_links(tmp_path)
    (box / "boot").mkdir()
    (box / "boot/real").write_bytes(b"kernel")
    (box / "boot/absolute").symlink_to("/boot/real")
    (box / "boot/climbing").symlink_to("../../../../../../boot/real")
    (box / "boot/host").symlink_to(victim / "file")
    with Tree(box) as tree:
        assert tree.read("boot/absolute", 10, IN_ROOT) == b"kernel"
        assert tree.read("boot/climbing", 10, IN_ROOT) == b"kernel"
        assert tree.regular("boot/host", IN_ROOT) is None, "the host's file is not the box's"
        assert tree.regular("boot/absolute", BENEATH) is None, "BENEATH follows no link at all"


def test_a_fifo_is_refused_without_being_opened(tmp_path: Path) -> None:
    box, _ = tree_with_links(tmp_path)
    os.mkfifo(box / "etc/fifo")
    with Tree(box) as tree:  # opening it for reading would block for ever
        assert tree.regular("etc/fifo") is None
        with pytest.raises(TreeError, match="not a regular file"):
            tree.read("etc/fifo", 10)


def test_merge_moves_the_new_tree_over_the_old_without_following_its_links(tmp_path: Path) -> None:
    box, victim = tree_with_links(tmp_path)
    (box / "keep").write_text("mine\n")
    new = box / "new"
    (new / "out").mkdir(parents=True)
    (new / "out/file").write_text("the box's\n")
    (new / "etc").mkdir()
    (new / "etc/hostname").write_text("box\n")
    (new / "file-link").write_text("now a file\n")
    with Tree(box) as tree:
        tree.merge("new")
    assert (victim / "file").read_text() == "the host's\n" and sorted(os.listdir(victim)) == ["file"]
    assert (box / "out").is_dir() and not (box / "out").is_symlink()
    assert (box / "out/file").read_text() == "the box's\n"
    assert (box / "etc/passwd").exists() and (box / "etc/hostname").read_text() == "box\n"
    assert (box / "file-link").read_text() == "now a file\n" and (box / "keep").read_text() == "mine\n"
    assert not (box / "new").exists()


def userns_works() -> bool:
    return subprocess.run(["unshare", "--map-auto", "--map-root-user", "true"], check=False).returncode == 0


@pytest.mark.skipif(not userns_works(), reason="no user namespace for this user")
def test_as_guest_root_reaches_what_only_the_boxs_users_own(tmp_path: Path) -> None:
    """A dev user's 0700 home, owned by a subordinate id: the host user is its root only in the namespace."""
    box = tmp_path / "box"
    (box / "old/home/dev").mkdir(parents=True)
    (box / "old/home/dev/notes").write_text("x\n")
    subprocess.run(["unshare", "--map-auto", "--map-root-user", "sh", "-c",
                    f"chown -R 1000:1000 {box}/old/home/dev && chmod 700 {box}/old/home/dev"], check=True)  # fmt: skip
    as_guest_root("remove", box, "old", as_root=False)
    assert not (box / "old").exists()

"""Attacks on the hostile-guest design found in a review of d5f571e/bf8cb08, at unit level:
each failed before its fix (special files opened before their type was checked, a NUL inside
a hash defeating redaction, the workspace keyed by the path's text)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from provisioner.console import Transcript
from provisioner.errors import ProvisionError
from provisioner.preflight import check_box
from provisioner.runbox import check_runnable
from provisioner.workspace import Workspace
from tests.helpers import installed_box

HASH = "$6$saltsalt$" + "A" * 86  # a sha512-crypt hash as chpasswd -e takes it


# -- the host opens what the guest made, before it knows what it is ---------------------------


IN_OPEN = 0x20
IN_NONBLOCK = os.O_NONBLOCK
_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def watching_opens(path: Path) -> Iterator[Callable[[], bool]]:
    """inotify on ``path``: the callable says whether anyone opened it for I/O since (an O_PATH
    descriptor or a stat is no open to inotify, an O_RDONLY open is)."""
    fd = _libc.inotify_init1(IN_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0 and _libc.inotify_add_watch(fd, os.fsencode(path), IN_OPEN) >= 0, ctypes.get_errno()

    def opened() -> bool:
        try:
            return bool(os.read(fd, 4096))
        except BlockingIOError:
            return False

    try:
        yield opened
    finally:
        os.close(fd)


def _box_for_run(tmp_path: Path) -> Path:
    box = installed_box(tmp_path)
    for name in ("usr/lib/systemd/system-generators/systemd-run-generator", "usr/bin/runuser"):
        (box / name).parent.mkdir(parents=True, exist_ok=True)
        (box / name).write_bytes(b"")
    (box / "etc").mkdir()
    return box


CHECKS: dict[str, tuple[str, Callable[[Path], object]]] = {
    "boot's check_box, a boot file": ("boot/vmlinuz-linux", lambda box: check_box(box, start=False)),
    "run's check_runnable, etc/passwd": ("etc/passwd", lambda box: check_runnable(box, "root")),
}


@pytest.mark.parametrize("case", list(CHECKS))
def test_the_host_never_opens_a_special_file_the_guest_put_in_the_tree(case: str, tmp_path: Path) -> None:
    name, check = CHECKS[case]
    box = _box_for_run(tmp_path)
    (box / name).unlink(missing_ok=True)
    os.mkfifo(box / name)  # as root over 9p it could as well be `mknod boot/vmlinuz-linux c 10 130`: the host's watchdog
    with watching_opens(box / name) as opened:
        with pytest.raises(ProvisionError):
            check(box)
        assert not opened(), f"the host opened the box's FIFO {name}"


# -- redaction ----------------------------------------------------------------------------------


def test_a_hash_with_a_nul_inside_never_reaches_the_transcript(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    transcript = Transcript(log, redact=(HASH,))
    transcript.write("root:" + HASH[:20] + "\x00" + HASH[20:] + ":19000::::::\n")
    transcript.close()
    assert HASH not in log.read_text()


# -- the workspace's key ------------------------------------------------------------------------


def test_one_directory_has_one_workspace_whatever_the_path_to_it(tmp_path: Path) -> None:
    (tmp_path / "elsewhere/inner").mkdir(parents=True)
    (tmp_path / "elsewhere/box").mkdir()
    (tmp_path / "box").mkdir()  # another box, in the directory the given path seems to name
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere/inner")
    given = tmp_path / "link/../box"
    assert os.path.samefile(given, tmp_path / "elsewhere/box")
    assert Workspace.of(given).root == Workspace.of(tmp_path / "elsewhere/box").root, "the box's own lock is not held"
    assert Workspace.of(given).root != Workspace.of(tmp_path / "box").root, "another box's state is used"

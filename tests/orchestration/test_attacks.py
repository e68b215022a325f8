"""Attacks on the hostile-guest design found in a review of d5f571e/bf8cb08; each failed
before its fix. The fake QEMU runs config commands on the host as the test's user with the
tree as the working directory, which is what the guest's root does to the tree: over a 9p
share with security_model=passthrough, and in the archive a stream install unpacks.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from provisioner.cli import app
from provisioner.errors import ExitCode
from tests.helpers import installed_box
from tests.orchestration.conftest import Fake

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the fake's chroot commands chown, and these attacks need a root install"
)


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A directory others may search, as /srv/boxes, /var/lib/boxes or a 0755 home are."""
    parent = Path(tempfile.mkdtemp(prefix="pa-attacks-", dir="/tmp"))
    parent.chmod(0o755)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


def reachable_by_others(path: Path) -> bool:
    """Whether a user who is neither the owner nor in the group can look ``path`` up."""
    return all(directory.stat().st_mode & stat.S_IXOTH for directory in path.parents)


PLANT = (
    "cp usr/bin/bash suid-shell && chmod 4755 suid-shell"  # guest root's setuid copy of a shell
    " && mknod host-loop0 b 7 0 && chmod 666 host-loop0"  # a block device: the host's /dev/loop0, for everyone
)


@pytest.mark.parametrize("via", ["stream", "9p"])
def test_the_guests_setuid_files_and_devices_are_not_left_to_other_host_users(
    via: str, install: Any, fake: Fake, tmp_path: Path, open_parent: Path
) -> None:
    """As root, a box's setuid-root files and device nodes are real on the host (and a booted box
    can make more at any time): an install into a directory others can reach is refused."""
    config = tmp_path / "box.toml"
    config.write_text(f'commands = ["{PLANT}"]\n')
    box = open_parent / "box"
    run = install("--config", str(config), "--install-via", via, target=box)
    assert run.exit_code == ExitCode.HOST, run.stderr
    assert "reachable by other users" in run.events[-1]["message"] and "chmod 700" in run.events[-1]["hint"]
    assert not box.exists() and len(fake.launches()) == 0
    closed = open_parent / "closed"
    closed.mkdir(mode=0o700)
    run = install("--config", str(config), "--install-via", via, target=closed / "box")
    assert run.exit_code == 0, run.stderr
    assert not reachable_by_others(closed / "box/suid-shell") and not reachable_by_others(closed / "box/host-loop0")


def test_the_printed_boot_command_loads_no_host_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim/.ssh/id_ed25519"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"PRIVATE KEY\n")
    box = installed_box(tmp_path)
    initrd = box / "boot/initramfs-linux.img"
    initrd.unlink()
    initrd.symlink_to(victim)  # absolute: in the box, BOX/<the victim's path>
    decoy = box / str(victim).lstrip("/")  # the box makes that path exist, so check_box is satisfied
    decoy.parent.mkdir(parents=True)
    decoy.write_bytes(b"decoy")
    result = CliRunner().invoke(app, ["boot", str(box), "--print"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    argv = shlex.split(result.stdout.strip().splitlines()[-1])
    loaded = Path(argv[argv.index("-initrd") + 1])
    assert loaded.read_bytes() != victim.read_bytes(), f"QEMU, run as printed, loads {victim} into the guest"

"""Attacks on the hostile-guest design that still get through (review of d5f571e/bf8cb08).

Each test shows one weakness and is marked xfail(strict=True) until it is fixed; see the
reason of each. The fake QEMU runs config commands on the host as the test's user with the
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


@pytest.mark.xfail(
    strict=True,
    reason="the guest's setuid files (owned by the invoking user: root here, the user's own uid under "
    "--map-root-user) and, as root, its device nodes stay real on the host, and finish() opens the target 0755",
)
@pytest.mark.parametrize("via", ["stream", "9p"])
def test_the_guests_setuid_files_and_devices_are_not_left_to_other_host_users(
    via: str, install: Any, fake: Fake, tmp_path: Path, open_parent: Path
) -> None:
    config = tmp_path / "box.toml"
    config.write_text(f'commands = ["{PLANT}"]\n')
    box = open_parent / "box"
    run = install("--config", str(config), "--install-via", via, target=box)
    assert run.exit_code == 0, run.stderr
    shell, device = box / "suid-shell", box / "host-loop0"
    assert shell.lstat().st_mode & stat.S_ISUID and shell.lstat().st_uid == os.geteuid()
    assert stat.S_ISBLK(device.lstat().st_mode)
    assert not reachable_by_others(shell), "any local user runs the guest's setuid shell as the installing user"
    assert not reachable_by_others(device), "any local user reads and writes the host's /dev/loop0"


@pytest.mark.xfail(
    strict=True,
    reason="boot --print (qemu._installed without KernelFiles) prints the tree's own boot file paths: QEMU, run "
    "as printed, follows the box's boot/initramfs-linux.img -> ~/.ssh/id_ed25519 on the host, while check_box "
    "resolved it IN_ROOT to a decoy inside the box",
)
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

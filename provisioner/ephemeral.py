"""Throwaway boots (``--ephemeral``): the box runs on an overlay whose lower layer is its tree,
shared read-only, and whose upper layer is a scratch disk deleted after the boot. The tree
stays byte for byte as it was, and several throwaway boots of one box may run at once (they
hold its lock shared; an install, a run or a boot that writes hold it alone).

The scratch disk is a sparse file in the box's workspace, formatted ext4 on the host by
``mkfs.ext4`` (no journal: nothing on it outlives the boot): the host's disk holds only what
the box writes, and the box's writes go to that disk, not to guest RAM, so a build that
writes gigabytes neither fails for want of memory nor grows QEMU.

The root is QEMU's 9p share with ``readonly=on``, which the host enforces whatever the box's
root does (no virtiofsd can be told that everywhere, so ``--ephemeral`` takes 9p). The
kernel runs ``INIT`` as init (``init=``): a script provision-arch writes beside the run's
command in the tree's run directory and removes afterwards. It loads virtio_blk, ext4 and
overlay from the box's own modules, finds the scratch disk by its serial, mounts it, stacks
an overlay on the read-only root, moves /proc, /sys, /dev and /run into it, pivots into it
and execs systemd. If any of that fails it says so on the console (``FAILED``) and powers
the box off: a box on a read-only root would fail later, in confusing ways.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from provisioner.errors import HostError
from provisioner.run import run, sbin_program
from provisioner.workspace import create_private

SERIAL = "pa-ephemeral"  # the scratch disk's virtio serial: /sys/block/vdX/serial in the box
SIZE = 64 << 30  # bytes the box may write; sparse: the host's disk holds only what it does write
FAILED = "provision-arch: the throwaway layer could not be set up:"
SYSTEMD = "/usr/lib/systemd/systemd"


@dataclass(frozen=True)
class Throwaway:
    """A throwaway boot's layer: the scratch disk its writes go to, and the init in the box
    that stacks it on the read-only root."""

    disk: Path
    init: PurePosixPath


def make_scratch(path: Path) -> None:
    """A new sparse file at ``path`` (0600, never an existing one), formatted ext4 with its
    root directory owned by root, as the box's root is."""
    with os.fdopen(create_private(path), "wb") as handle:
        handle.truncate(SIZE)
    argv = [sbin_program("mkfs.ext4"), "-q", "-F", "-O", "^has_journal", "-E", "root_owner=0:0,lazy_itable_init=1", str(path)]
    result = run(argv, timeout=120)
    if result.returncode != 0:
        path.unlink(missing_ok=True)
        said = (result.stderr or result.stdout).strip().splitlines()
        raise HostError(
            f"cannot make the throwaway layer's disk: mkfs.ext4 exited {result.returncode}: {said[-1] if said else ''}",
            f"install e2fsprogs (provision-arch doctor names what is missing), and check the space under {path.parent}",
        )


def init_script() -> str:
    """The box's init for a throwaway boot (see the module's doc)."""
    return textwrap.dedent(f"""\
        #!/bin/sh
        # Written by provision-arch for one --ephemeral boot, and removed after it. The kernel
        # runs it as init: the box's writes go to a scratch disk, its tree stays as it was.
        # Its stdout and stderr are the console (the kernel's gift to init), which outlive the
        # moves below; so does the sysrq trigger opened now, to power off on failure. mount -n:
        # no /run/mount/utab to write while /run moves.
        exec 9>/proc/sysrq-trigger
        fail() {{
            echo "{FAILED} $*" >&2
            echo o >&9
            sleep 600
        }}
        for module in virtio_blk ext4 overlay; do
            modprobe -q "$module" 2>/dev/null
        done
        disk=
        tries=0
        while [ -z "$disk" ] && [ "$tries" -lt 200 ]; do
            for block in /sys/block/vd*; do
                if [ "$(cat "$block/serial" 2>/dev/null)" = {SERIAL} ] && [ -b "/dev/${{block##*/}}" ]; then
                    disk=/dev/${{block##*/}}
                fi
            done
            [ -n "$disk" ] || sleep 0.1
            tries=$((tries + 1))
        done
        [ -n "$disk" ] || fail "no disk with serial {SERIAL}"
        mount -n -t ext4 -o noatime,discard "$disk" /tmp || fail "cannot mount $disk"
        mkdir -p /tmp/upper /tmp/work /tmp/root || fail "cannot make the overlay's directories"
        mount -n -t overlay overlay -o lowerdir=/,upperdir=/tmp/upper,workdir=/tmp/work /tmp/root \\
            || fail "cannot mount the overlay"
        for dir in proc sys dev run; do
            mount -n --move "/$dir" "/tmp/root/$dir" || fail "cannot move /$dir"
        done
        cd /tmp/root || fail "cannot enter the overlay"
        mkdir -p run/provision-arch-lower || fail "cannot make the old root's mount point"
        pivot_root . run/provision-arch-lower || fail "pivot_root failed"
        umount -n -l /run/provision-arch-lower
        rmdir /run/provision-arch-lower
        exec 9>&-
        exec {SYSTEMD}
        fail "cannot start {SYSTEMD}"
        """)


def root_append(append: str, init: PurePosixPath) -> str:
    """The box's kernel command line for a throwaway boot: its root read-only, ``init`` as init."""
    words = ["ro" if word == "rw" else word for word in append.split()]
    return " ".join([*words, f"init={init}"])

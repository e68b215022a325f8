"""The one door for host processes: argv lists only, stdin from /dev/null unless given, a
missing program said plainly, and every child bound to our life.

- ``run()`` runs a short command and captures its output; ``spawn()`` starts a long-lived
  one (virtiofsd, a user-namespace holder) and ``call()`` one that owns the terminal
  (``boot``). QEMU, whose console is a pseudo-terminal, is started by ``qemu.Machine`` with
  the same ``die_with_parent`` and the same prefix.
- ``userns=True`` runs the command as root of a user namespace mapped like QEMU's
  (``unshare --map-auto --map-root-user``): guest root is the invoking user on the host,
  other guest ids land in the user's subuid range. As root there is no prefix.
- Every child gets ``PR_SET_PDEATHSIG``: if provision-arch dies, even by SIGKILL, the child
  gets SIGTERM instead of going on writing into the target.
- A program that is not on PATH is ``NotFound``: a one-line host error that names the
  Debian package to install, never a traceback.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

from provisioner.errors import HostError

log = logging.getLogger(__name__)

USERNS = ("unshare", "--map-auto", "--map-root-user")
# Where a Debian host gets the programs provision-arch starts.
PACKAGES = {
    "unshare": "util-linux",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "tar": "tar",
    "chown": "coreutils",
    "gpgv": "gpgv",
    "sh": "dash",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "sfdisk": "fdisk",
    "mformat": "mtools",
    "mcopy": "mtools",
}
# Where administration tools live that an unprivileged user's PATH may leave out (Debian's).
SBIN = ("/usr/sbin", "/sbin")


def sbin_program(name: str) -> str:
    """``name`` on PATH or in an sbin directory: its path, or ``name`` for require() to refuse."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN])) or name


class NotFound(HostError):
    """A program provision-arch needs is not on PATH."""

    def __init__(self, program: str) -> None:
        package = PACKAGES.get(program)
        fix = f"install it: sudo apt-get install {package}" if package else f"install {program} or put it on PATH"
        super().__init__(f"{program} not found on PATH", f"{fix}; provision-arch doctor lists what is missing")
        self.program = program

    def __str__(self) -> str:
        return self.program


def wrap(argv: Sequence[str], *, as_root: bool) -> list[str]:
    """``argv`` in a user namespace mapped like QEMU's when we are not root; as it is when we are."""
    return list(argv) if as_root else [*USERNS, *argv]


def die_with_parent() -> None:
    """In the child before exec: if provision-arch dies (even by SIGKILL), the child gets SIGTERM."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def require(argv: Sequence[str]) -> list[str]:
    """``argv`` if its program is on PATH (behind the namespace prefix, unshare says it)."""
    if shutil.which(argv[0]) is None:
        raise NotFound(argv[0])
    log.debug("+ %s", shlex.join(argv))
    return list(argv)


def run(argv: Sequence[str], timeout: float = 30.0, **options: Any) -> subprocess.CompletedProcess[str]:
    """Run a short host command and capture its output as text (never raises on a bad status)."""
    options.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        require(argv), capture_output=True, text=True, timeout=timeout, check=False, preexec_fn=die_with_parent, **options
    )


def spawn(argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start a long-lived helper in its own session, bound to our life; the caller ends it."""
    popen.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(require(argv), start_new_session=True, preexec_fn=die_with_parent, **popen)  # noqa: PLW1509


def call(argv: Sequence[str]) -> int:
    """Run a command on our terminal (``boot``: the console is the user's) and return its status."""
    return subprocess.call(require(argv), preexec_fn=die_with_parent)

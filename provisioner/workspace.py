"""Where provision-arch keeps what it knows about a box: out of the guest's reach.

The box's tree is the guest's root: whatever runs as root in it (a package scriptlet, a
config command, a dev box's sudo user) can plant links there or edit files. So nothing
the host relies on lives in the tree. Each target gets a workspace directory of its own
in the user's state directory (``$XDG_STATE_HOME/provision-arch/boxes/NAME-HASH``, mode
0700, keyed by the target's absolute path):

- ``lock`` — held (flock) while a run works on the target;
- ``state.json`` — resume: the box's options and the steps done;
- ``manifest.json`` — what was installed, for a rebuild;
- ``console.log``, ``run-console.log`` — the transcripts;
- ``stage/`` — the files the guest installs (templates, password hashes, keys): shared
  with the guest read-only, for the install only;
- ``scratch.img``, ``stream``, ``stream.tar`` — the stream install's disk, port and
  archive;
- ``keyring``, ``keyring.tar`` — the port the live keyring comes over, and what came
  (checked, then kept in the user's cache: ``keyring``);
- ``boot/`` — the kernel and initramfs, copied out of the tree for each boot;
  ``printed-boot/`` the copies a ``boot --print`` command line names;
- ``throwaway/ID/`` — one ``--ephemeral`` boot's scratch disk (``disk.img``, removed when
  it ends) and its run's transcript (``console.log``; the newest ``KEEP_THROWAWAY`` are kept
  until a run that holds the box alone removes them all, with what killed boots left).

``Workspace`` is the one owner of these paths; no other module joins them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import HostError

ENV = "PROVISION_ARCH_STATE"  # overrides the state directory (tests, or a disk with room)
KEEP_THROWAWAY = 20  # finished throwaway boots whose transcripts are kept
SHARED_HOLDER = "ephemeral\n"  # the lock file's text while throwaway boots hold it


def state_home() -> Path:
    if override := os.environ.get(ENV):
        return Path(override)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
    return Path(base) / "provision-arch"


@dataclass(frozen=True)
class Workspace:
    target: Path  # absolute, as given (not resolved: the target itself may not be a link)
    root: Path

    @classmethod
    def of(cls, target: Path, home: Path | None = None) -> Workspace:
        """The workspace of ``target``, in ``home`` (default: ``state_home()``)."""
        target = Path.cwd() / target  # absolute, but not normalised: link/../box is not ./box
        # The directory the kernel reaches, by any path to it. (A target that is itself a link
        # is refused where it is opened; its own name keys it then.)
        real = os.path.realpath(target.parent) + "/" + target.name if target.is_symlink() else os.path.realpath(target)
        key = hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(real))[:40] or "root"
        return cls(target, (home or state_home()) / "boxes" / f"{name}-{key}")

    def create(self) -> Path:
        """The workspace directory, made 0700 (with its parents) if missing."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        return self.root

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def transcript(self) -> Path:
        return self.root / "console.log"

    @property
    def run_transcript(self) -> Path:
        return self.root / "run-console.log"

    @property
    def stage(self) -> Path:
        return self.root / "stage"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch.img"

    @property
    def pipe(self) -> Path:
        return self.root / "stream"

    @property
    def archive(self) -> Path:
        return self.root / "stream.tar"

    @property
    def keyring_pipe(self) -> Path:
        return self.root / "keyring"

    @property
    def keyring(self) -> Path:
        return self.root / "keyring.tar"

    @property
    def boot(self) -> Path:
        return self.root / "boot"

    @property
    def printed_boot(self) -> Path:
        """The copies ``boot --print`` names in its command line (kept until the next --print)."""
        return self.root / "printed-boot"

    def throwaway(self, ident: str) -> Path:
        """The directory of one --ephemeral boot (see the module's doc)."""
        return self.root / "throwaway" / ident

    def prune_throwaways(self) -> None:
        """Remove all but the newest KEEP_THROWAWAY finished throwaway boots (a running one
        still has its disk)."""
        top = self.root / "throwaway"
        finished: list[tuple[float, Path]] = []
        for path in top.iterdir() if top.is_dir() else ():
            with contextlib.suppress(OSError):  # another run may prune it at the same moment
                if not (path / "disk.img").exists():
                    finished.append((path.stat().st_mtime, path))
        for _, path in sorted(finished)[:-KEEP_THROWAWAY]:
            with contextlib.suppress(OSError):
                remove(path)

    @property
    def leftovers(self) -> tuple[Path, ...]:
        """What a run writes and removes when it ends; a killed run leaves them for the next to remove.

        Among them the password hashes (in the stage) and the whole tree (the scratch disk, the
        archive): each is 0600 in this 0700 directory, and none outlives the next run's start."""
        return (
            self.stage,
            self.scratch,
            *pipe_ends(self.pipe),
            self.archive,
            *pipe_ends(self.keyring_pipe),
            self.keyring,
            self.boot,
            self.root / "throwaway",
        )

    def clean(self) -> None:
        for path in self.leftovers:
            remove(path)

    def write_private(self, path: Path, data: bytes) -> None:
        """Replace a file of the workspace atomically; 0600."""
        tmp = path.with_name(path.name + ".tmp")
        remove(tmp)
        with os.fdopen(create_private(tmp), "wb") as handle:
            handle.write(data)
        tmp.replace(path)

    def holder(self) -> str:
        try:
            return self.lock.read_text(encoding="ascii").strip() or "?"
        except OSError:
            return "?"

    def busy(self) -> tuple[str, str]:
        holder = self.holder()
        if holder == SHARED_HOLDER.strip():
            return (
                f"throwaway boots (--ephemeral) or exports are reading {self.target}",
                "wait for them to finish; throwaway boots and exports may run together",
            )
        return (
            f"another provision-arch (pid {holder}) is working on {self.target}",
            f"wait for it to finish, or stop it (kill {holder}); its lock goes with it",
        )

    @contextmanager
    def locked(self, *, shared: bool = False) -> Iterator[None]:
        """Hold the target's lock for the run: a second provision-arch on the same target stops
        early. ``shared``: for a throwaway boot, which leaves the tree alone; any number of
        them may hold it at once, but not with a run that holds it alone.

        flock(2) ends with the process, so a lock is never left behind, not even by SIGKILL."""
        self.create()
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "r+", encoding="ascii") as handle:
            try:
                fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                raise HostError(*self.busy()) from None
            # Who holds it, for the next one's error: a pid, or that throwaway boots do. Written
            # over the old text, then cut to length: a reader never finds it empty.
            text = (SHARED_HOLDER if shared else f"{os.getpid()}\n").encode("ascii")
            os.pwrite(handle.fileno(), text, 0)
            os.ftruncate(handle.fileno(), len(text))
            if not shared:
                remove(self.root / "throwaway")  # what killed throwaway boots left: none runs now
            yield

    def held_by_another(self) -> bool:
        """Whether a running provision-arch holds the target's lock (nothing is created to find out)."""
        try:
            fd = os.open(self.lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def pipe_ends(pipe: Path) -> tuple[Path, Path]:
    """The two FIFOs of QEMU's chardev pipe at ``pipe``: PIPE.in (QEMU reads it) and PIPE.out
    (QEMU writes what the guest sends there)."""
    return pipe.with_name(pipe.name + ".in"), pipe.with_name(pipe.name + ".out")


def make_pipe(pipe: Path) -> None:
    """Both FIFOs of ``pipe_ends``, 0600."""
    for end in pipe_ends(pipe):
        os.mkfifo(end, 0o600)


def create_private(path: Path) -> int:
    """A new file only we may read, opened for writing: never an existing one, never through a link."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def remove(path: Path) -> None:
    """Remove a file, link or directory tree of the workspace (never what a link points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)

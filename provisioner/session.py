"""One run, built once from the resolved config and handed to every step.

The session holds the target, its state directory, the run id and every file the guest
will need — the rendered templates, the password hashes, the users' authorized_keys and
sudoers files, the files the config copies in — as ``StagedFile`` records (guest path,
content, mode, owner). ``stage()`` writes them into the target's state directory, which
the guest sees over the share; the steps install them from there, so a guest step reads
nothing from the host on its own and no value is typed twice.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from provisioner import users
from provisioner.config import Config, InstallVia
from provisioner.errors import HostError
from provisioner.qemu import Stream
from provisioner.render import render, rootfs_files
from provisioner.staged import StagedFile

STATE = ".provision-arch"  # the state directory, relative to the target
STAGE = "stage"  # staged files, below the state directory
LOCK = "lock"  # held while a run works on the target
SNAPSHOT_MIRRORLIST = "snapshot/mirrorlist.j2"
SCRATCH_SIZE = 64 << 30  # the stream install's sparse scratch disk: room for any package set


@dataclass(frozen=True)
class Session:
    cfg: Config
    run_id: str
    files: tuple[StagedFile, ...]  # rendered templates, installed by the configure step
    root_password: StagedFile  # chpasswd -e input: "root:HASH"
    user_files: tuple[StagedFile, ...] = ()  # authorized_keys and sudoers files, installed by the users step
    user_passwords: StagedFile | None = None  # chpasswd -e input for the users with a password hash
    copied: tuple[StagedFile, ...] = ()  # the config's [[files]], installed by the files step
    resuming: bool = False  # an earlier run on this target stopped part way

    @classmethod
    def create(cls, cfg: Config, resuming: bool = False) -> Session:
        """Render and read everything once; nothing is written until ``stage()``."""
        files = tuple(StagedFile(path, content) for path, content in sorted(rootfs_files(cfg).items()))
        if cfg.snapshot:
            files += (StagedFile(PurePosixPath("/etc/pacman.d/mirrorlist"), render(SNAPSHOT_MIRRORLIST, cfg)),)
        password = StagedFile(PurePosixPath("/root.chpasswd"), f"root:{cfg.password_hash}\n", 0o600, secret=True)
        return cls(
            cfg=cfg,
            run_id=secrets.token_hex(8),
            files=files,
            root_password=password,
            user_files=tuple(file for user in cfg.users for file in user.staged_files()),
            user_passwords=users.password_file(cfg.users),
            copied=tuple(copied.staged() for copied in cfg.files),
            resuming=resuming,
        )

    @property
    def all_files(self) -> tuple[StagedFile, ...]:
        """Everything ``stage()`` writes."""
        optional = (self.user_passwords,) if self.user_passwords else ()
        return (*self.files, self.root_password, *self.user_files, *optional, *self.copied)

    @property
    def target(self) -> Path:
        return self.cfg.target

    @property
    def state_dir(self) -> Path:
        return self.cfg.target / STATE

    @property
    def stage_dir(self) -> Path:
        return self.state_dir / STAGE

    @property
    def transcript(self) -> Path:
        return self.cfg.log or self.state_dir / "console.log"

    @property
    def stream(self) -> Stream | None:
        """The stream install's scratch disk and port pipe, in the state directory (None for 9p)."""
        if self.cfg.install_via is not InstallVia.STREAM:
            return None
        return Stream(scratch=self.state_dir / "scratch.img", pipe=self.state_dir / "stream")

    @property
    def secrets(self) -> tuple[Path, ...]:
        """Host paths of staged secrets: never left behind."""
        return tuple(self.staged(f) for f in self.all_files if f.secret)

    def staged(self, file: StagedFile) -> Path:
        return self.stage_dir / file.stage_name

    def stage(self) -> None:
        """Write the run id and every staged file into the target's state directory."""
        state_directory(self.target)
        self.unstage()  # whatever an interrupted run or an older version left
        self.stage_dir.mkdir()
        (self.state_dir / "run-id").write_text(self.run_id + "\n", encoding="ascii")
        if stream := self.stream:
            # Sparse: the guest's file system takes only what it writes.
            with stream.scratch.open("wb") as scratch:
                scratch.truncate(SCRATCH_SIZE)
            for end in (".in", ".out"):
                os.mkfifo(stream.pipe.with_name(stream.pipe.name + end), 0o600)
        for file in self.all_files:
            path = self.staged(file)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Created with its final mode: a secret is never readable by others, not even briefly.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file.mode & 0o600 if file.secret else 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(file.data)

    def unstage(self) -> None:
        """Remove what ``stage()`` wrote; the transcript stays."""
        remove(self.stage_dir)  # the staged secrets with it
        self.state_dir.joinpath("root.chpasswd").unlink(missing_ok=True)  # where 0.1 staged the hash
        remove(self.state_dir / "run-id")
        for name in ("scratch.img", "stream.in", "stream.out", "stream.tar"):
            remove(self.state_dir / name)


def remove(path: Path) -> None:
    """Remove a file, link or directory tree of ours, whatever an older version or a hand left there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def state_directory(target: Path) -> Path:
    """The target's state directory, created (with the target) when missing; a stray file in its place goes."""
    state = target / STATE
    if state.is_symlink() or (state.exists() and not state.is_dir()):
        state.unlink()
    state.mkdir(parents=True, exist_ok=True)
    return state


@contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold the target's lock for the run: a second provision-arch on the same target stops early.

    flock(2) ends with the process, so a lock is never left behind, not even by SIGKILL.
    """
    lock = state_directory(target) / LOCK
    with lock.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HostError(*busy(target, lock)) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


def busy(target: Path, lock: Path) -> tuple[str, str]:
    holder = lock.read_text().strip() if lock.is_file() else "?"
    return (
        f"another provision-arch (pid {holder}) is working on {target}",
        f"wait for it to finish, or stop it (kill {holder}); its lock goes with it",
    )


def held_by_another(target: Path) -> bool:
    """Whether a running provision-arch holds the target's lock (nothing is created to find out)."""
    lock = target / STATE / LOCK
    if not lock.is_file():
        return False
    with lock.open() as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False

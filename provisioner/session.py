"""One run, built once from the resolved config and handed to every step.

The session holds the target, its workspace (the host directory out of the guest's reach
where the run's state lives, see ``workspace``), the run id and every file the guest will
need — the rendered templates, the password hashes, the users' authorized_keys and
sudoers files, the files the config copies in — as ``StagedFile`` records (guest path,
content, mode, owner). ``stage()`` writes them into the workspace's stage directory,
which the guest sees as a read-only share; the steps install them from there, so a guest
step reads nothing from the host on its own, no value is typed twice, and the guest can
change nothing the host reads back.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from provisioner import users
from provisioner.config import Config, InstallVia
from provisioner.keyring import LiveKeyring
from provisioner.qemu import Stream
from provisioner.render import render, rootfs_files
from provisioner.staged import StagedFile
from provisioner.workspace import Workspace, create_private, make_pipe

RUN_ID = ".run-id"  # in the stage: proves to the guest that the share it mounted is this run's
KEPT_KEYRING = ".keyring.tar"  # in the stage: the live keyring an earlier run from the same ISO kept
SNAPSHOT_MIRRORLIST = "snapshot/mirrorlist.j2"
SCRATCH_SIZE = 64 << 30  # the stream install's sparse scratch disk: room for any package set


@dataclass(frozen=True)
class Session:
    cfg: Config
    workspace: Workspace
    run_id: str
    files: tuple[StagedFile, ...]  # rendered templates, installed by the configure step
    root_password: StagedFile | None  # chpasswd -e input: "root:HASH" (None: an update that keeps the password)
    user_files: tuple[StagedFile, ...] = ()  # authorized_keys and sudoers files, installed by the users step
    user_passwords: StagedFile | None = None  # chpasswd -e input for the users with a password hash
    copied: tuple[StagedFile, ...] = ()  # the config's [[files]], installed by the files step
    resuming: bool = False  # an earlier run on this target stopped part way
    live_keyring: LiveKeyring | None = None  # set once the ISO is known (None: made, not kept)

    @classmethod
    def create(cls, cfg: Config, resuming: bool = False) -> Session:
        """Render and read everything once; nothing is written until ``stage()``."""
        files = tuple(StagedFile(path, content) for path, content in sorted(rootfs_files(cfg).items()))
        if cfg.snapshot:
            files += (StagedFile(PurePosixPath("/etc/pacman.d/mirrorlist"), render(SNAPSHOT_MIRRORLIST, cfg)),)
        password = None
        if cfg.password_hash:
            password = StagedFile(PurePosixPath("/root.chpasswd"), f"root:{cfg.password_hash}\n", 0o600, secret=True)
        return cls(
            cfg=cfg,
            workspace=Workspace.of(cfg.target),
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
        optional = tuple(file for file in (self.root_password, self.user_passwords) if file)
        return (*self.files, *self.user_files, *optional, *self.copied)

    @property
    def target(self) -> Path:
        return self.cfg.target

    @property
    def stage_dir(self) -> Path:
        return self.workspace.stage

    @property
    def transcript(self) -> Path:
        return self.cfg.log or self.workspace.transcript

    @property
    def stream(self) -> Stream | None:
        """The stream install's scratch disk and port pipe, in the workspace (None for 9p)."""
        if self.cfg.install_via is not InstallVia.STREAM:
            return None
        return Stream(scratch=self.workspace.scratch, pipe=self.workspace.pipe)

    @property
    def keyring_port(self) -> Path | None:
        """The pipe of the port the live keyring is sent to the host on, when this run keeps it."""
        live = self.live_keyring
        return self.workspace.keyring_pipe if live is not None and live.kept is None else None

    def staged(self, file: StagedFile) -> Path:
        return self.stage_dir / file.stage_name

    def stage(self) -> None:
        """Write the run id and every staged file into the workspace's stage.

        Everything is 0600 in 0700 directories: the guest reads the stage as root of the
        user namespace, which is the invoking user here, and nobody else reads it at all."""
        self.workspace.create()
        self.workspace.clean()  # whatever an interrupted or killed run left, secrets first
        self.stage_dir.mkdir(mode=0o700)
        self.workspace.write_private(self.stage_dir / RUN_ID, (self.run_id + "\n").encode("ascii"))
        if stream := self.stream:
            # Sparse: the guest's file system takes only what it writes. 0600: it will hold the tree.
            with os.fdopen(create_private(stream.scratch), "wb") as scratch:
                scratch.truncate(SCRATCH_SIZE)
            make_pipe(stream.pipe)
        if (live := self.live_keyring) is not None and live.kept is not None:
            self.workspace.write_private(self.stage_dir / KEPT_KEYRING, live.kept)
        if port := self.keyring_port:
            make_pipe(port)
        for file in self.all_files:
            path = self.staged(file)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with os.fdopen(create_private(path), "wb") as handle:
                handle.write(file.data)

    def unstage(self) -> None:
        """Remove what ``stage()`` wrote and the stream's files; the transcript and state stay."""
        self.workspace.clean()

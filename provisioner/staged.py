"""A file for the installed system, as the run stages it on the share: path, content, mode, owner.

Its own module so that the modules that produce staged files (``render`` through the
session, ``users``, ``files``) need not import the session, which imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath


@dataclass(frozen=True)
class StagedFile:
    """A file for the installed system: where it goes, what it holds, its mode and owner."""

    guest_path: PurePosixPath  # absolute, in the installed system
    content: str | bytes = field(repr=False)
    mode: int = 0o644
    owner: str = "root:root"  # user[:group]; the group defaults to the user's name
    secret: bool = False  # removed as soon as it is used, and on every exit
    area: str = ""  # a subdirectory of the stage, so that files of different origins never collide

    @property
    def stage_name(self) -> PurePosixPath:
        """Its path below the stage directory: the area, then the guest path without the leading slash."""
        return PurePosixPath(self.area or ".") / self.guest_path.relative_to("/")

    @property
    def data(self) -> bytes:
        return self.content.encode("utf-8") if isinstance(self.content, str) else self.content

    @property
    def user(self) -> str:
        return self.owner.partition(":")[0]

    @property
    def group(self) -> str:
        user, _, group = self.owner.partition(":")
        return group or user

"""Resume: which steps of an install into this target are done, for which config.

``state.json`` in the box's workspace (out of the guest's reach, see ``workspace``) holds
the options that define the box (and their digest) and the target steps finished so far;
it is written after each one. A stream install marks the unpack while it runs, so that a
tree it left half written is recognised as such. A run on a
target with an unfinished state for the same config resumes; a finished target or a
different config is refused unless ``--force`` starts over (a finished one with a new config
is pointed to ``update``, which marks its own run: see ``update``). The state also names the
accounts the config made, so that an update can remove those the config drops. A state file from an older
version or edited by hand is not trusted: it is set aside with a note.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner import __version__
from provisioner.errors import ProvisionError, UsageError
from provisioner.manifest import digest
from provisioner.tree import Tree
from provisioner.workspace import Workspace

FORMAT = 1


@dataclass
class State:
    config: dict[str, Any]
    done: list[str] = field(default_factory=list)
    finished: bool = False
    unpacking: bool = False  # a stream install is unpacking its tree into the target
    users: list[str] = field(default_factory=list)  # the accounts the config made: an update removes those it drops
    updating: bool = False  # ``update`` is bringing the finished box to a new config
    before: dict[str, Any] | None = None  # while updating: the config the box had before (what the update changes)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": __version__, "config": self.config, "config_digest": digest(self.config),
                "done": self.done, "finished": self.finished, "unpacking": self.unpacking, "users": self.users,
                "updating": self.updating, "before": self.before}  # fmt: skip


def state_path(target: Path) -> Path:
    return Workspace.of(target).state_file


def load(target: Path) -> State | None:
    """The target's state, or None when there is none or it cannot be trusted."""
    try:
        data = json.loads(state_path(target).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT or digest(data["config"]) != data.get("config_digest"):
            return None
        done = [str(step) for step in data["done"]]
        users = [str(name) for name in data.get("users", [])]
        unpacking, updating = bool(data.get("unpacking", False)), bool(data.get("updating", False))
        before = dict(data["before"]) if data.get("before") is not None else None
        return State(dict(data["config"]), done, bool(data["finished"]), unpacking, users, updating, before)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save(target: Path, state: State) -> None:
    workspace = Workspace.of(target)
    workspace.create()
    workspace.write_private(workspace.state_file, (json.dumps(state.to_json(), indent=2) + "\n").encode())


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{key}: {old.get(key)!r} → {new.get(key)!r}" for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def plan(target: Path, record: dict[str, Any], force: bool, *, stream: bool = False) -> State | None:
    """The state to resume from, None for a fresh install; refuses a finished or different target.

    With ``force`` nothing is resumed: the install starts over. A stream install unpacks a
    whole tree into the target, so it does not take over a partial tree that an interrupted
    9p install left there (stale pacman locks and all), nor one its own unpack left.
    """
    if force or not state_path(target).exists():
        return None
    state = load(target)
    if state is None:
        return None  # untrustworthy: the target check decides (not empty → --force)
    if (state.finished or state.unpacking or state.updating) and not _entries(target):
        return None  # the box was deleted since: its state is stale
    if state.updating:
        raise UsageError(
            f"an update of {target} was interrupted", f"run provision-arch update {target} again, or --force to reinstall"
        )
    if state.unpacking:
        raise UsageError(
            f"{target} holds a tree whose unpack was interrupted",
            "start over with --force (the stream is not kept)",
        )
    if state.config != record:
        changed = "; ".join(differences(state.config, record))
        if state.finished:
            raise UsageError(
                f"{target} is installed with a different config ({changed})",
                f"bring it to the new one in place with provision-arch update {target} (same options), or --force to reinstall",
            )
        raise UsageError(
            f"{target} was installed with a different config ({changed})",
            "use the same options to resume, or --force to start over",
        )
    if state.finished:
        raise UsageError(f"{target} is already installed (state.json says finished)", "boot it, or use --force to reinstall")
    if stream and state.done:
        raise UsageError(
            f"{target} holds a partial install written over 9p",
            "resume it with --install-via 9p, or start over with --force",
        )
    return state


def _entries(target: Path) -> list[str]:
    try:
        with Tree(target) as tree:
            return tree.entries()
    except (OSError, ProvisionError):
        return []

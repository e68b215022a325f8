"""Resume: which steps of an install into this target are done, for which config.

``TARGET/.provision-arch/state.json`` holds the options that define the box (and their
digest) and the target steps finished so far; it is written after each one. A run on a
target with an unfinished state for the same config resumes; a finished target or a
different config is refused unless ``--force`` starts over. A state file from an older
version or edited by hand is not trusted: it is set aside with a note.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner import __version__
from provisioner.errors import UsageError
from provisioner.manifest import digest
from provisioner.session import STATE

STATE_FILE = "state.json"
FORMAT = 1


@dataclass
class State:
    config: dict[str, Any]
    done: list[str] = field(default_factory=list)
    finished: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": __version__, "config": self.config, "config_digest": digest(self.config),
                "done": self.done, "finished": self.finished}  # fmt: skip


def state_path(target: Path) -> Path:
    return target / STATE / STATE_FILE


def load(target: Path) -> State | None:
    """The target's state, or None when there is none or it cannot be trusted."""
    try:
        data = json.loads(state_path(target).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT or digest(data["config"]) != data.get("config_digest"):
            return None
        return State(dict(data["config"]), [str(step) for step in data["done"]], bool(data["finished"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save(target: Path, state: State) -> None:
    path = state_path(target)
    tmp = path.with_name(STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{key}: {old.get(key)!r} → {new.get(key)!r}" for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def plan(target: Path, record: dict[str, Any], force: bool, *, stream: bool = False) -> State | None:
    """The state to resume from, None for a fresh install; refuses a finished or different target.

    With ``force`` nothing is resumed: the install starts over (over the files that are there).
    A stream install unpacks a whole tree into the target, so it does not take over a partial
    tree that an interrupted 9p install left there (stale pacman locks and all).
    """
    if force or not state_path(target).exists():
        return None
    state = load(target)
    if state is None:
        return None  # untrustworthy: the target check decides (not empty → --force)
    if state.config != record:
        raise UsageError(
            f"{target} was installed with a different config ({'; '.join(differences(state.config, record))})",
            "use the same options to resume, or --force to start over",
        )
    if state.finished:
        raise UsageError(f"{target} is already installed (state.json says finished)", "boot it, or use --force to reinstall")
    if stream and any(entry.name != STATE for entry in target.iterdir()):
        raise UsageError(
            f"{target} holds a partial install written over 9p",
            "resume it with --install-via 9p, or start over with --force",
        )
    return state

"""What was built: the manifest a finished install leaves, and rebuilding from one.

``manifest.json`` in the box's workspace (see ``workspace``) records the tool version, the ISO (file name and
sha256), the snapshot day, the options that define the box and their digest (no secrets,
no host paths), and every installed package with its exact version, read from the
target's own pacman database (read without following the guest's links). ``--from-manifest`` rebuilds the same box and compares.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner import __version__
from provisioner.config import Config, box_record
from provisioner.errors import ExitCode, ProvisionError, UsageError
from provisioner.tree import Tree
from provisioner.workspace import Workspace

FORMAT = 1
DESC_LIMIT = 1 << 20  # a package's desc file is a few kB
DESC_FIELD = re.compile(r"^%(NAME|VERSION)%\n(.+)$", re.M)


def digest(record: dict[str, Any]) -> str:
    """A stable digest of a config record: the same options give the same digest on any host."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def installed_packages(target: Path) -> dict[str, str]:
    """name -> version for every package in the target's local pacman database."""
    packages = {}
    local = "var/lib/pacman/local"
    with Tree(target) as tree:
        try:
            entries = sorted(tree.listdir(local))
        except OSError:
            return {}
        for entry in entries:
            desc = tree.regular_text(f"{local}/{entry}/desc", DESC_LIMIT)
            fields = dict(DESC_FIELD.findall(desc or ""))
            if "NAME" in fields and "VERSION" in fields:
                packages[fields["NAME"]] = fields["VERSION"]
    return packages


def file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


def write_manifest(cfg: Config, iso: Path, iso_sha256: str) -> Path:
    record = box_record(cfg)
    manifest = {
        "format": FORMAT,
        "tool": {"name": "provision-arch", "version": __version__},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "iso": {"name": iso.name, "sha256": iso_sha256},
        "snapshot": cfg.snapshot,
        "config": record,
        "config_digest": digest(record),
        "packages": installed_packages(cfg.target),
    }
    workspace = Workspace.of(cfg.target)
    workspace.write_private(workspace.manifest, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return workspace.manifest


@dataclass(frozen=True)
class Manifest:
    path: Path
    iso_sha256: str
    config: dict[str, Any]
    packages: dict[str, str]


def load_manifest(path: Path) -> Manifest:
    hint = "give a manifest.json written by provision-arch (an install prints its path)"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise UsageError(f"{path} is a manifest of format {data.get('format')!r}, this provision-arch reads {FORMAT}", hint)
        manifest = Manifest(path, str(data["iso"]["sha256"]), dict(data["config"]), dict(data["packages"]))
    except OSError as exc:
        raise UsageError(f"cannot read manifest {path}: {exc.strerror}", hint) from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path} is not a provision-arch manifest: {exc}", hint) from exc
    if digest(manifest.config) != data.get("config_digest"):
        raise UsageError(f"{path} was edited: its config does not match its digest", hint)
    return manifest


class Mismatch(ProvisionError):
    """A rebuild from a manifest did not install the same package versions."""

    exit_code = ExitCode.MISMATCH


def compare(expected: dict[str, str], got: dict[str, str]) -> list[str]:
    """Each package whose version differs, is missing or is extra, as 'name: want → got'."""
    return [
        f"{name}: {expected.get(name, 'absent')} → {got.get(name, 'absent')}"
        for name in sorted(set(expected) | set(got))
        if expected.get(name) != got.get(name)
    ]

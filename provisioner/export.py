"""``provision-arch export``: the box as something to use elsewhere, built without root.

Four formats, one tree:

- ``tar``: the root file system as one POSIX (pax) tarball with numeric owners, modes, ACLs,
  extended attributes and file capabilities, for ``podman import``, ``machinectl
  import-tar`` and ``wsl --import``;
- ``oci``: an OCI image layout directory (one gzip layer made from that tarball, a config
  for linux/amd64 whose command is the box's systemd, so that podman runs it as a systemd
  container, and an index naming it ``latest``), for ``skopeo copy oci:PATH …`` and
  ``podman run oci:PATH``;
- ``raw`` and ``qcow2``: a bootable GPT disk (see ``disk``).

The tree is the guest's: GNU tar reads it in the user namespace QEMU uses (unprivileged,
the box's ids are the user's subordinate ones, which only that namespace maps back), never
follows a link (it archives links as links) and stays on the tree's file system. What
belongs to a provisioned box and not to an image is left out, on purpose:

- ``/.provision-arch``, ``/.provision-arch-run``, ``/.provision-arch-unpack``: names
  provision-arch used or uses in the tree (and the guest may have planted);
- ``/etc/machine-id`` becomes empty: every copy of the image makes its own at first boot
  (systemd's rule for an empty file), instead of all sharing the box's;
- ``/etc/ssh/ssh_host_*``: the box's SSH host keys; copies would share them (and a
  stolen image would impersonate the box). Arch's sshd makes new ones at its first start
  (sshdgenkeys.service);
- ``/var/lib/pacman/db.lck``: a stale pacman lock.

The export reads the tree while holding the box's lock shared: throwaway boots may run
alongside, an install, an update or a writing boot may not. The output is written under a
temporary name beside it and renamed when complete, so a failed export leaves nothing; the
box's manifest goes beside it as ``OUTPUT.manifest.json``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from provisioner import preflight, state
from provisioner.errors import HostError, UsageError
from provisioner.events import Bus
from provisioner.run import run, wrap
from provisioner.tree import IN_ROOT, Tree
from provisioner.workspace import Workspace, create_private


class Format(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"
    TAR = "tar"
    OCI = "oci"


# The host programs the archive formats run (doctor checks them, and disk.disk_tools).
TOOLS = {Format.TAR: ("tar",), Format.OCI: ("tar",)}
# Names provision-arch used or uses in the tree: never part of an export.
OWN_NAMES = (".provision-arch", ".provision-arch-run", ".provision-arch-unpack")
LEFT_OUT = (*OWN_NAMES, "var/lib/pacman/db.lck", "etc/ssh/ssh_host_*")
FRESH_MACHINE_ID = "etc/machine-id"  # empty in an image: its first boot makes its own
SYSTEMD = "usr/lib/systemd/systemd"
TAR_TIMEOUT = 6 * 3600.0  # seconds: a tree of many GB on a slow disk
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
BLOCK = 1 << 20


@dataclass(frozen=True)
class Exported:
    path: Path
    size: int  # bytes of the image (for a layout: of its blobs)
    manifest: Path  # the box's manifest, beside it


# pax headers without the access and change times or tar's pid in their names: the same tree
# gives the same bytes. ACLs go as the attributes they are (numeric ids), not as tar's own
# records (user names of the host that packs them).
POSIX = ("--format=posix", "--numeric-owner", "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime")


def tar_argv(target: Path, output: Path) -> list[str]:
    """GNU tar packing the tree (see the module's doc for what it leaves out)."""
    excluded = [f"--exclude=./{name}" for name in (*LEFT_OUT, FRESH_MACHINE_ID)]
    return [
        "tar", "--create", f"--file={output}", f"--directory={target}", *POSIX, "--xattrs", "--xattrs-include=*",
        "--sparse", "--one-file-system", "--sort=name", "--anchored", *excluded, ".",
    ]  # fmt: skip


def append_argv(output: Path, stage: Path) -> list[str]:
    """GNU tar adding the empty /etc/machine-id, root's, mode 0444."""
    return ["tar", "--append", f"--file={output}", f"--directory={stage}", *POSIX, "--owner=0", "--group=0",
            "--mode=0444", "--mtime=@0", f"./{FRESH_MACHINE_ID}"]  # fmt: skip


def pack(target: Path, output: Path, stage: Path, *, as_root: bool) -> None:
    """The tree as one tar at ``output``, packed as the box's root."""
    (stage / FRESH_MACHINE_ID).parent.mkdir(parents=True, exist_ok=True)
    (stage / FRESH_MACHINE_ID).write_bytes(b"")
    for argv in (tar_argv(target, output), append_argv(output, stage)):
        result = run(wrap(argv, as_root=as_root), timeout=TAR_TIMEOUT)
        if result.returncode != 0:
            said = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise HostError(f"tar could not pack {target}: {said}", "check the space where the output goes (df -h)")


def check_output(target: Path, output: Path) -> Path:
    """Where the export may go: a new path, outside the box, in an existing directory."""
    output = output.absolute()
    for path in (output, beside(output)):
        if os.path.lexists(path):
            raise UsageError(f"{path} exists", "give a new path, or remove the old export first")
    box = target.resolve()
    if output.parent.resolve() == box or box in output.parent.resolve().parents:
        raise UsageError(f"{output} is inside the box {target}", "put the export outside the box's directory")
    if not output.parent.is_dir():
        raise UsageError(f"{output.parent} is not a directory", "create it first, or give another --output")
    return output


def beside(output: Path) -> Path:
    """Where the box's manifest goes."""
    return output.with_name(output.name + ".manifest.json")


def check_box(target: Path) -> None:
    """An installed box, whose export this host can make: not one an install or an update left
    half done (a box without provision-arch's state, from an older version, is taken as it is)."""
    preflight.check_box(target, start=False)
    found = state.load(target)
    if found is not None and (found.updating or found.unpacking or not found.finished):
        why = "an update of it was interrupted" if found.updating else "its install is not finished"
        raise UsageError(f"{target} is not a finished box: {why}", f"finish it first (provision-arch update or install {target})")
    if shutil.which("tar") is None:
        raise HostError("tar not found on PATH", "install it: sudo apt-get install tar")


@contextmanager
def partial(output: Path) -> Iterator[Path]:
    """A temporary name beside ``output``, renamed to it when the body succeeds; removed otherwise."""
    temporary = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        yield temporary
        if temporary.is_dir():
            if os.path.lexists(output):
                raise HostError(f"{output} appeared while the export ran", "give a new path")
            os.rename(temporary, output)
        else:
            try:
                os.link(temporary, output)  # never over something that appeared meanwhile
            except FileExistsError:
                raise HostError(f"{output} appeared while the export ran", "give a new path") from None
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)


def export_tar(target: Path, output: Path, work: Path, *, as_root: bool) -> int:
    with partial(output) as temporary:
        pack(target, temporary, work, as_root=as_root)
        size = temporary.stat().st_size
    return size


# -- OCI ----------------------------------------------------------------------------------------


def blob(layout: Path, data: bytes, media_type: str) -> dict[str, Any]:
    """Write one blob into the layout; its descriptor."""
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def compress_layer(tar: Path, layout: Path) -> tuple[dict[str, Any], str]:
    """The tarball gzipped into the layout as a layer blob: its descriptor, and the digest of
    the uncompressed tar (the config's diff_id). gzip's header carries no name and no time, so
    the same tree gives the same digest."""
    raw, packed = hashlib.sha256(), hashlib.sha256()
    staging = layout / "blobs/sha256/.layer"
    with tar.open("rb") as source, staging.open("wb") as sink:

        class Digesting:
            def write(self, data: bytes) -> int:
                packed.update(data)
                return sink.write(data)

            def flush(self) -> None:
                sink.flush()

        with gzip.GzipFile(filename="", mode="wb", fileobj=Digesting(), mtime=0) as zipped:
            while block := source.read(BLOCK):
                raw.update(block)
                zipped.write(block)
    size = staging.stat().st_size
    staging.rename(layout / "blobs/sha256" / packed.hexdigest())
    return {"mediaType": LAYER, "digest": f"sha256:{packed.hexdigest()}", "size": size}, f"sha256:{raw.hexdigest()}"


def image_config(diff_id: str, systemd: bool, created: str) -> dict[str, Any]:
    """The image's config: linux/amd64, one layer; a systemd box runs its systemd (podman then
    runs it as a systemd container), else a shell."""
    command = ["/usr/lib/systemd/systemd"] if systemd else ["/bin/sh"]
    config: dict[str, Any] = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/bin"], "Cmd": command}
    if systemd:
        config["StopSignal"] = "SIGRTMIN+3"  # systemd's own for a clean shutdown
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "provision-arch export --format oci"}],
    }


def export_oci(target: Path, output: Path, work: Path, *, as_root: bool, step: Callable[[str, str], Any]) -> int:
    created = datetime.now(UTC).isoformat(timespec="seconds")
    with Tree(target) as tree:
        systemd = tree.regular(SYSTEMD, IN_ROOT) is not None
    with partial(output) as layout:
        (layout / "blobs/sha256").mkdir(parents=True)
        tar = work / "layer.tar"
        with step("pack", "Packing the tree (tar)"):
            pack(target, tar, work, as_root=as_root)
        with step("layer", "Compressing the layer (gzip)"):
            layer, diff_id = compress_layer(tar, layout)
            tar.unlink()
        config = blob(layout, canonical(image_config(diff_id, systemd, created)), CONFIG)
        manifest = blob(
            layout, canonical({"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [layer]}), MANIFEST
        )
        manifest["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
        (layout / "index.json").write_bytes(canonical({"schemaVersion": 2, "mediaType": INDEX, "manifests": [manifest]}))
        (layout / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
        size = sum(path.stat().st_size for path in (layout / "blobs/sha256").iterdir())
    return size


def canonical(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# -- the command ------------------------------------------------------------------------------

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``--size``: bytes, or a number with K, M, G or T (powers of 1024), e.g. ``8G``."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (value[:-1], value[-1]) if value[-1:] in UNITS else (value, "")
    if not number.isdigit() or int(number) == 0:
        raise UsageError(f"invalid --size {text!r}", "give bytes or a number with K, M, G or T, e.g. --size 8G")
    return int(number) * UNITS[unit]


def export(target: Path, fmt: Format, output: Path, events: Bus, *, size: int | None = None) -> Exported:
    """Export the box at ``target`` as ``fmt`` to ``output``; what was written."""
    check_box(target)
    output = check_output(target, output)
    if size is not None and fmt not in (Format.RAW, Format.QCOW2):
        raise UsageError(f"--size is for a disk image, not --format {fmt.value}", "drop --size, or use --format raw|qcow2")
    workspace = Workspace.of(target)
    as_root = preflight.is_root()
    mask = os.umask(0o077)  # an export holds /etc/shadow and the users' homes: it is yours alone
    try:
        return _export(target, fmt, output, events, size=size, workspace=workspace, as_root=as_root)
    finally:
        os.umask(mask)


def _export(
    target: Path, fmt: Format, output: Path, events: Bus, *, size: int | None, workspace: Workspace, as_root: bool
) -> Exported:
    with workspace.locked(shared=True), tempfile.TemporaryDirectory(dir=workspace.root, prefix="export-") as scratch:
        work = Path(scratch)
        if fmt is Format.TAR:
            with events.step("pack", "Packing the tree (tar)"):
                written = export_tar(target, output, work, as_root=as_root)
        elif fmt is Format.OCI:
            written = export_oci(target, output, work, as_root=as_root, step=events.step)
        else:
            from provisioner.disk import build_disk  # noqa: PLC0415 - the disk tools load only for a disk

            with events.step("disk", f"Building the {fmt.value} disk image"):
                image = build_disk(target, output, size=size, qcow2=fmt is Format.QCOW2, as_root=as_root, progress=events.note)
            written = image.size
        manifest = beside(output)
        if workspace.manifest.exists():
            with os.fdopen(create_private(manifest), "wb") as sink:
                sink.write(workspace.manifest.read_bytes())
        else:
            events.note(f"{target} has no manifest.json (installed by an older provision-arch?): none beside the export")
    return Exported(output, written, manifest)

"""What a boot attaches to a box besides its root: host directories (shares) and host ports
(forwards) — their syntax, their checks before QEMU starts, and the kernel argument that
mounts a share.

A share, ``HOST:GUEST[:ro]``, is a host directory mounted at GUEST in the box, over the
root's transport (QEMU's 9p, or virtiofs with a virtiofsd of its own), in the same user
namespace as the root, so its ownership maps as the root's does. The box's systemd mounts it
from the kernel command line (``systemd.mount-extra=``, systemd 254 and later): nothing is
written into the box. GUEST is one word of that command line, so it is held to a strict
pattern. The box's root can write a writable share as it writes its tree; ``ro`` is enforced
on the host side (QEMU's ``readonly=on``, virtiofsd's ``--readonly``), where the box's root
cannot undo it.

A forward, ``[ADDRESS:]HOSTPORT:GUESTPORT[/udp]``, is a host port that QEMU's user network
forwards to the box, listening on 127.0.0.1 unless an address is given. ``--ssh-port
[ADDRESS:]PORT`` is its short form for the box's port 22.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from provisioner import validate
from provisioner.errors import HostError, UsageError

LOOPBACK = "127.0.0.1"
SSH_PORT = 22
# A guest mount point as one kernel command-line word and one systemd.mount-extra field:
# no space, quote, colon or comma.
GUEST_RE = re.compile(r"^(/[A-Za-z0-9._@+-]+)+$")
# Where a share may not go, nor above (besides validate.guest_path's API file systems and our
# own names): the directories a booting box cannot do without, and Arch's links into /usr.
FORBIDDEN_MOUNTS = ("/usr", "/etc", "/boot", "/var/lib/pacman", "/bin", "/sbin", "/lib", "/lib64")
SHARE_HINT = "--share HOST:GUEST or HOST:GUEST:ro, e.g. --share ./src:/src"
FORWARD_HINT = "--forward [ADDRESS:]HOSTPORT:GUESTPORT[/udp], e.g. --forward 8080:80 or --forward 0.0.0.0:5353:53/udp"


@dataclass(frozen=True)
class Share:
    """A host directory mounted in the box."""

    host: Path
    guest: PurePosixPath
    readonly: bool = False

    @property
    def spec(self) -> str:
        return f"{self.host}:{self.guest}{':ro' if self.readonly else ''}"


@dataclass(frozen=True)
class Forward:
    """A host port that QEMU's user network forwards to a guest port."""

    host_port: int
    guest_port: int = SSH_PORT
    address: str = LOOPBACK  # where QEMU listens on the host
    protocol: str = "tcp"

    @property
    def spec(self) -> str:
        udp = "/udp" if self.protocol == "udp" else ""
        return f"{self.address}:{self.host_port}:{self.guest_port}{udp}"

    def hostfwd(self) -> str:
        return f"hostfwd={self.protocol}:{self.address}:{self.host_port}-:{self.guest_port}"


def parse_share(spec: Any, key: str = "--share", base: Path | None = None) -> Share:
    """``HOST:GUEST[:ro]``. HOST is made absolute now: from the working directory on the
    command line; in a config file (``base``, its directory) only inside that directory, as
    every host path a config names. GUEST is absolute, normalized and plain (see ``GUEST_RE``)."""
    text = validate.string(spec, key, "HOST:GUEST[:ro]")
    readonly = text.endswith(":ro")
    text = text.removesuffix(":ro") if readonly else text.removesuffix(":rw")
    host, colon, guest = text.rpartition(":")
    if not colon or not host or not guest:
        raise UsageError(f"invalid {key} {spec!r}: it needs a host directory and a guest path", SHARE_HINT)
    checked = validate.guest_path(guest, key)
    if not GUEST_RE.fullmatch(str(checked)):
        raise UsageError(f"invalid {key} {spec!r}: guest path {guest!r} may hold only letters, digits and . _ @ + -", SHARE_HINT)
    if any(checked.is_relative_to(top) or PurePosixPath(top).is_relative_to(checked) for top in FORBIDDEN_MOUNTS):
        raise UsageError(f"invalid {key} {spec!r}: the box needs its own {guest}", "mount the share elsewhere, e.g. /mnt/NAME")
    if base is not None:
        validate.host_path(host, base, key, ", or pass --share on the command line")
        if not readonly:  # as the package cache: a file may not choose a host directory the guest can write
            raise UsageError(
                f"config key {key}: share {text!r} is writable; a config file may share host directories only read-only",
                f"add :ro, or pass --share {text} on the command line to let the box write it",
            )
    # Kept as written (made absolute): check_shares looks at it before and after links resolve.
    return Share(Path(os.path.abspath((base or Path.cwd()) / Path(host).expanduser())), checked, readonly)


def from_file(forward: Forward, key: str) -> Forward:
    """A forward a config file gives: on 127.0.0.1 only (listening on other interfaces is only
    ever what the user wrote on the command line)."""
    if forward.address != LOOPBACK:
        raise UsageError(
            f"config key {key}: a config file forwards ports on {LOOPBACK} only, not {forward.address}",
            "drop the address, or pass --forward (--ssh-port) with it on the command line",
        )
    return forward


def parse_forward(spec: Any, key: str = "--forward", *, guest_port: int | None = None) -> Forward:
    """``[ADDRESS:]HOSTPORT:GUESTPORT[/udp]``; with ``guest_port`` (``--ssh-port``) the spec is
    ``[ADDRESS:]HOSTPORT`` alone. The address is IPv4: listening on every interface (0.0.0.0) is
    only ever what the user wrote."""
    text = validate.string(spec, key, "[ADDRESS:]HOSTPORT:GUESTPORT")
    hint = FORWARD_HINT if guest_port is None else f"{key} PORT or ADDRESS:PORT, e.g. {key} 2222 or {key} 0.0.0.0:2222"
    protocol = "tcp"
    if guest_port is None and "/" in text:
        text, _, protocol = text.partition("/")
        if protocol not in ("tcp", "udp"):
            raise UsageError(f"invalid {key} {spec!r}: the protocol is tcp or udp", hint)
    parts = text.split(":")
    wanted = 1 if guest_port is not None else 2
    if len(parts) not in (wanted, wanted + 1):
        raise UsageError(f"invalid {key} {spec!r}", hint)
    address = parts.pop(0) if len(parts) > wanted else LOOPBACK
    ports = [_port(part, spec, key, hint) for part in parts]
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise UsageError(f"invalid {key} {spec!r}: {address!r} is not an IPv4 address", hint) from None
    return Forward(ports[0], ports[1] if guest_port is None else guest_port, address, protocol)


def parse_ssh_port(spec: Any, key: str = "--ssh-port") -> Forward:
    """``[ADDRESS:]PORT`` forwarded to the box's port 22 (a config file may give the port as a number)."""
    text = str(spec) if isinstance(spec, int) and not isinstance(spec, bool) else spec
    return parse_forward(text, key, guest_port=SSH_PORT)


def _port(text: str, spec: Any, key: str, hint: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise UsageError(f"invalid {key} {spec!r}: a port is 1-65535", hint)
    return int(text)


def check_shares(shares: Sequence[Share], target: Path) -> None:
    """Before QEMU starts: each share's host directory exists, lies neither inside the box's
    root nor around it, and no host directory or guest path is given twice."""
    root = target.resolve()
    hosts: dict[Path, Share] = {}
    guests: dict[PurePosixPath, Share] = {}
    for share in shares:
        host = share.host.resolve()
        if not host.is_dir():
            why = "does not exist" if not host.exists() else "is not a directory"
            raise UsageError(f"share {share.spec}: {host} {why}", "create it, or correct the host path")
        # Written or resolved, a path through the box is the box's to change: never followed.
        if any(path.is_relative_to(root) or root.is_relative_to(path) for path in (host, Path(os.path.abspath(share.host)))):
            raise UsageError(
                f"share {share.spec}: {host} overlaps the box's root {root}",
                "share a directory outside the box (the box's own files are in it already)",
            )
        twin = hosts.get(host) or guests.get(share.guest)
        if twin is not None:
            raise UsageError(f"shares {twin.spec} and {share.spec} name the same directory", "give each one once")
        # One inside another: the box could swap the inner one's path for a link, through the outer.
        outer = next((other for path, other in hosts.items() if host.is_relative_to(path) or path.is_relative_to(host)), None)
        if outer is not None:
            raise UsageError(f"shares {outer.spec} and {share.spec} are one inside the other", "share the outer one only")
        hosts[host], guests[share.guest] = share, share


def check_forwards(forwards: Sequence[Forward]) -> None:
    """Before QEMU starts: no host port twice, and each one free to listen on (a busy one is
    named here rather than in QEMU's own words)."""
    seen: set[tuple[str, int, str]] = set()
    for forward in forwards:
        where = (forward.address, forward.host_port, forward.protocol)
        if where in seen:
            port = f"{forward.address}:{forward.host_port}/{forward.protocol}"
            raise UsageError(f"host port {port} is forwarded twice", "give it once")
        seen.add(where)
        kind = socket.SOCK_DGRAM if forward.protocol == "udp" else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:  # as QEMU's own listener: a port in TIME_WAIT is free
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((forward.address, forward.host_port))
            except OSError as exc:
                raise HostError(
                    f"cannot listen on host port {forward.address}:{forward.host_port}/{forward.protocol}: " + _why(exc),
                    "choose another host port (--forward, --ssh-port), or stop what holds it",
                ) from exc


def _why(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "another program is using it"
    if exc.errno == errno.EACCES:
        return "ports below 1024 need privileges this user does not have"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no interface of this host has that address"
    return exc.strerror or str(exc)


def mount_extra(share: Share, tag: str, fstype: str, options: Sequence[str]) -> str:
    """The kernel argument that makes the box's systemd mount ``share`` (its device ``tag``)."""
    chosen = [*options, *(["ro"] if share.readonly else [])]
    return f"systemd.mount-extra={tag}:{share.guest}:{fstype}" + (f":{','.join(chosen)}" if chosen else "")

"""The live system's pacman keyring: made once per ISO, then kept in the user's cache.

Every live boot starts with an empty keyring. pacman-init (masked, ``qemu.LIVE_MASKED``)
or the install makes it: ``pacman-key --init`` (a new RSA 4096 master key) and
``--populate archlinux`` (the ISO's Arch keys imported, its master keys signed locally, the
revoked ones disabled, the trust database computed). Under TCG that is most of a minute on
the stand-in's six keys and several on the real ISO's 160, and its public result depends
on nothing but the ISO.

So the first install from an ISO makes the keyring (``MAKE``) and sends its public part
(``MEMBERS``) to the host on a serial port of its own, right after making it: before
the live system has run any package's code, so the keyring holds exactly the trust the
signed ISO ships. The host reads exactly the bytes the guest's tar wrote and stops reading
(what the guest writes to the port later reaches nothing), checks the tar is those regular
files and no more (``check``), and keeps it in the user's cache, 0600 in a 0700 directory,
named by the ISO's sha256. The next install from that ISO finds it on the read-only stage
and unpacks it into the live keyring's directory (``restore``), then makes a new master key
for what signs locally later (archlinux-keyring's own --populate when the keyring is
refreshed): ed25519, made in milliseconds, ultimately trusted as gpg makes its own keys.

The kept keyring holds no secret: the first master key's secret part dies with the live
system that made it; its public part, its ultimate ownertrust and its local signatures of
Arch's master keys stay, which is all that checking a signature needs. Whoever can write
the user's cache can already replace the cached ISO and its record of verification
(``acquire``), so keeping the keyring there trusts no one new (docs/trust.md).
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote as q

from provisioner.console import Console
from provisioner.errors import ExitCode, ProvisionError
from provisioner.qemu import KEYRING_PORT
from provisioner.stream import SETTLE, Receiver
from provisioner.workspace import create_private

# What pacman-key --init and --populate leave that a signature check reads: the public keys,
# the trust database, and pacman-key's settings for gpg and its agent.
MEMBERS = ("gpg.conf", "gpg-agent.conf", "pubring.gpg", "trustdb.gpg")
LIMIT = 32 << 20  # bytes: Arch's keyring is 1.3 MiB
VERSION = 1  # of what is kept and how it was made: a kept keyring of another version is made again
TRUSTDB_LINE = "no-auto-check-trustdb"
# pacman-init's work: pacman-key --init, then --populate with gpg told not to recompute its
# trust database after each of the master keys' local signatures, most of populate's time,
# which ends with an explicit check of its own; the line goes again before anything else
# uses the keyring. Nor does the keyring wait for time sync, as pacman-init does (never,
# without NTP). The keyring is where pacman.conf's GPGDir says, as for pacman-key; the keys
# are Arch's keyring's, named as archlinux-keyring's own scriptlet names them (a bare
# --populate takes every keyring in the import directory, which on other systems holds other
# distributions' keys).
GPGDIR = "gpgdir=$(pacman-conf GPGDir)"
MOUNT = "{ systemctl start etc-pacman.d-gnupg.mount || true; }"  # the ISO's tmpfs there, as pacman-init's Requires= had it
MAKE = " && ".join([
    GPGDIR,
    MOUNT,
    "pacman-key --init",
    f'echo {TRUSTDB_LINE} >> "$gpgdir/gpg.conf"',
    "pacman-key --populate archlinux",
    f"sed -i '/^{TRUSTDB_LINE}$/d' \"$gpgdir/gpg.conf\"",
])  # fmt: skip
# A master key as pacman-key names its own, for the local signatures still to come.
NEW_MASTER = (
    'gpg --homedir "$gpgdir" --batch --yes --no-permission-warning --pinentry-mode loopback --passphrase "" '
    "--quick-generate-key 'Pacman Keyring Master Key <pacman@localhost>' ed25519 sign never"
)


@dataclass(frozen=True)
class LiveKeyring:
    """One run's live keyring: unpacked from ``kept`` (an earlier run's, on the stage), or
    made and then kept at ``path`` for the next run from the same ISO."""

    path: Path
    kept: bytes | None = field(default=None, repr=False)


class KeyringError(ProvisionError):
    """A kept keyring that is not what this module keeps."""

    exit_code = ExitCode.STEP


def kept_path(cache_dir: Path, iso_sha256: str) -> Path:
    """Where the keyring of the ISO with this sha256 is kept."""
    return cache_dir / "keyrings" / f"{iso_sha256}-v{VERSION}.tar"


def pack(archive: str) -> str:
    """The guest command that packs the made keyring's public part into ``archive`` and prints its size."""
    members = " ".join(MEMBERS)
    return f'{GPGDIR} && cd "$gpgdir" && tar -c --numeric-owner -f {q(archive)} {members} && stat -c %s {q(archive)}'


def send(archive: str, port: str) -> str:
    """The guest command that writes ``archive`` to the ``port`` device, then removes it."""
    return f"dd if={q(archive)} of={q(port)} bs=64K status=none; rc=$?; rm -f {q(archive)}; (exit $rc)"


def receive(con: Console, pipe: Path, into: Path, archive: str) -> bytes:
    """The keyring the live system just made, packed into ``archive`` there and sent on the
    keyring port (QEMU's ``pipe``) into ``into``; checked. The port is read for exactly the
    bytes the guest's tar wrote, no more."""
    with Receiver(pipe.with_name(pipe.name + ".out"), into, limit=LIMIT) as receiver:
        size = int(con.check(pack(archive), 120).split()[-1])
        if size > LIMIT:
            raise KeyringError(f"the keyring is {size} bytes, more than {LIMIT}", "it is made again")
        con.check(send(archive, f"/dev/virtio-ports/{KEYRING_PORT}"), 120)
        receiver.wait_for(size, SETTLE)
    data = into.read_bytes()
    check(data)
    return data


def restore(archive: str) -> str:
    """The guest command that makes the live keyring from a kept one at ``archive`` (on the stage)."""
    return " && ".join([
        GPGDIR,
        MOUNT,
        'mkdir -p -m 755 "$gpgdir"',
        f'tar -x --no-same-owner -C "$gpgdir" -f {q(archive)}',
        NEW_MASTER,
        'gpg --homedir "$gpgdir" --batch --no-permission-warning --check-trustdb',
    ])  # fmt: skip


def check(data: bytes) -> None:
    """KeyringError unless ``data`` is a tar of exactly ``MEMBERS``, each a regular file, at most ``LIMIT`` bytes in all."""
    if len(data) > LIMIT:
        raise KeyringError(f"the keyring is {len(data)} bytes, more than {LIMIT}", "it is made again")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError) as exc:
        raise KeyringError(f"the keyring is not a tar: {exc}", "it is made again") from exc
    names = sorted(member.name for member in members)
    if names != sorted(MEMBERS):
        held = ", ".join(map(repr, names)) or "nothing"
        raise KeyringError(f"the keyring holds {held}, not {', '.join(MEMBERS)}", "it is made again")
    if odd := [member.name for member in members if not member.isreg()]:
        raise KeyringError(f"the keyring's {', '.join(odd)} is not a regular file", "it is made again")


def load(path: Path) -> bytes | None:
    """The keyring kept at ``path``, checked; None if there is none. KeyringError if it does not check out."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyringError(f"cannot read the kept keyring {path}: {exc.strerror}", "it is made again") from exc
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(LIMIT + 1)
    check(data)
    return data


def keep(path: Path, data: bytes) -> None:
    """Keep a checked keyring at ``path``: 0600, in a 0700 directory, replaced whole."""
    check(data)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a killed run's, with this pid
    try:
        with os.fdopen(create_private(tmp), "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

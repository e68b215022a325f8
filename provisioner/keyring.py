"""The live system's pacman keyring: made once per ISO, then kept in the user's cache.

Every live boot starts with an empty keyring. pacman-init (masked, ``qemu.LIVE_MASKED``)
or the install makes it: ``pacman-key --init`` (a new RSA 4096 master key) and
``--populate archlinux`` (the ISO's Arch keys imported, its master keys signed locally, the
revoked ones disabled, the trust database computed). Under TCG that is most of a minute on
the stand-in's six keys and several on the real ISO's 160, and its public result depends
on nothing but the ISO.

So the first install from an ISO makes the keyring (``MAKE``), forgets its master key's
secret (``FORGET``), and sends the keyring's public part (``MEMBERS``) to the host on a
serial port of its own: all before the live system has run any package's code, so the
keyring holds exactly the trust the signed ISO ships, and the one secret that could
certify a key for it is gone before anything untrusted could read it. The host reads exactly
the bytes the guest's tar wrote and stops reading (what the guest writes to the port later
reaches nothing), checks the tar is those regular files and no more and packs them again
itself (``canonical``), and keeps that in the user's cache, 0600 in a 0700 directory,
named by the ISO's sha256. The next install from that ISO finds it on the read-only stage
and unpacks it into the live keyring's directory (``restore``). Either way the live system
then makes a new master key for its own local signatures (``RENEW``: archlinux-keyring's
--populate when the keyring is refreshed), which is never kept.

The kept keyring holds no secret, and no secret of any key it trusts ultimately exists any
more. Its first master key's public part, ultimate ownertrust and local signatures of
Arch's master keys stay, which is all that checking a signature needs. Whoever can write
the user's cache can already replace the cached ISO and its record of verification
(``acquire``), so keeping the keyring there trusts no one new (docs/trust.md).
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote as q

from provisioner.console import Console
from provisioner.errors import ExitCode, ProvisionError
from provisioner.qemu import KEYRING_PORT
from provisioner.stream import SETTLE, Receiver
from provisioner.workspace import create_private, pipe_ends

# What pacman-key --init and --populate leave that a signature check reads: the public keys,
# the trust database, and pacman-key's settings for gpg and its agent.
MEMBERS = ("gpg.conf", "gpg-agent.conf", "pubring.gpg", "trustdb.gpg")
LIMIT = 32 << 20  # bytes: Arch's keyring is 1.3 MiB
VERSION = 2  # of what is kept and how it was made: a kept keyring of another version is made again
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
# The made master key's secret, forgotten before its keyring is kept: its public key stays
# ultimately trusted, and no program the live system runs later (a package's scriptlet) can
# read a secret that certifies keys for every later install from the same ISO.
FORGET = " && ".join([
    GPGDIR,
    'gpgconf --homedir "$gpgdir" --kill gpg-agent',
    'rm -rf "$gpgdir/private-keys-v1.d"',
    '! gpg --homedir "$gpgdir" --batch --no-permission-warning --list-secret-keys --with-colons | grep -q "^sec:"',
])  # fmt: skip
# A new master key as pacman-key names its own, for this live system's local signatures still
# to come (archlinux-keyring's --populate when it is refreshed): ed25519, made in milliseconds,
# ultimately trusted as gpg trusts each key it makes; then the trust database checked once.
RENEW = " && ".join([
    GPGDIR,
    'gpg --homedir "$gpgdir" --batch --yes --no-permission-warning --pinentry-mode loopback --passphrase "" '
    "--quick-generate-key 'Pacman Keyring Master Key <pacman@localhost>' ed25519 sign never",
    'gpg --homedir "$gpgdir" --batch --no-permission-warning --check-trustdb',
])  # fmt: skip


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
    keyring port (QEMU's ``pipe``) into ``into``: exactly as many bytes as the guest's tar
    wrote, and ``canonical``."""
    with Receiver(pipe_ends(pipe)[1], into, limit=LIMIT) as receiver:
        said = con.check(pack(archive), 120).split()
        if not said or not said[-1].isdigit() or int(said[-1]) > LIMIT:
            raise KeyringError(f"the guest's keyring size is not a size up to {LIMIT}: {said[-1:]}", "it is made again")
        size = int(said[-1])
        con.check(send(archive, f"/dev/virtio-ports/{KEYRING_PORT}"), 120)
        receiver.wait_for(size, SETTLE)
    data = into.read_bytes()
    if len(data) != size:
        raise KeyringError(f"{len(data)} bytes of keyring arrived, not the {size} the guest sent", "it is made again")
    return canonical(data)


def restore(archive: str) -> str:
    """The guest command that makes the live keyring from a kept one at ``archive`` (on the stage)."""
    return " && ".join([
        GPGDIR,
        MOUNT,
        'mkdir -p -m 755 "$gpgdir"',
        f'tar -x --no-same-owner -C "$gpgdir" -f {q(archive)}',
        RENEW,
    ])  # fmt: skip


def canonical(data: bytes) -> bytes:
    """The keyring ``data`` holds, packed again by the host: a ustar of exactly ``MEMBERS`` in
    that order, regular files, 0644, owned by 0:0, no times. KeyringError unless ``data`` is a
    tar (at most ``LIMIT`` bytes) of those names, each a regular file, and nothing else.

    Only what Python's tarfile read goes on, so no other reader of ``data`` (GNU tar skips
    a bad header and reads on, where tarfile stops) can find more in what is kept."""
    if len(data) > LIMIT:
        raise KeyringError(f"the keyring is {len(data)} bytes, more than {LIMIT}", "it is made again")
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            names = sorted(member.name for member in members)
            if names != sorted(MEMBERS):
                held = ", ".join(map(repr, names)) or "nothing"
                raise KeyringError(f"the keyring holds {held}, not {', '.join(MEMBERS)}", "it is made again")
            if odd := [member.name for member in members if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE)]:
                raise KeyringError(f"the keyring's {', '.join(odd)} is not a regular file", "it is made again")
            for member in members:
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file's
                contents[member.name] = handle.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise KeyringError(f"the keyring is not a tar: {exc}", "it is made again") from exc
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in MEMBERS:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(contents[name]), 0o644
            tar.addfile(info, io.BytesIO(contents[name]))
    return out.getvalue()


def load(path: Path) -> bytes | None:
    """The keyring kept at ``path``, ``canonical``; None if there is none. KeyringError if it
    is not a regular file of the user's, or does not check out."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyringError(f"cannot read the kept keyring {path}: {exc.strerror}", "it is made again") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise KeyringError(f"the kept keyring {path} is not a regular file of yours", "it is made again")
        data = handle.read(LIMIT + 1)
    return canonical(data)


def keep(path: Path, data: bytes) -> None:
    """Keep the ``canonical`` keyring of ``data`` at ``path``: 0600, in a 0700 directory, replaced whole."""
    data = canonical(data)
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

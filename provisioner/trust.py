"""Which OpenPGP keys may sign an ISO, and the ``gpgv`` check that a signature is theirs.

The keyring holds nothing but the release keys shipped in ``provisioner/data/release-keys/``
plus any ``--trusted-key`` files, and ``gpgv`` runs with a private home directory, so "valid
signature" can only mean "signed by a key we chose to trust": no web of trust, no user
keyring. Parsing the keys is left to gpgv; this module only makes sure each file is a
public key at all, so a wrong file is named as such rather than failing later as a bad
signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from provisioner.errors import HostError, UsageError, VerifyError
from provisioner.run import NotFound, run

# gpgv hashes the whole ISO (~1.2 GB); slow disks need the room.
GPGV_TIMEOUT = 600.0
EXPORT_HINT = "export the key with: gpg --export --armor KEYID > key.asc"
TAMPERED_HINT = "the ISO may have been tampered with; download it again from another mirror"
ARMOR_RE = re.compile(rb"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----", re.DOTALL)
PUBLIC_KEY_TAG = 6  # RFC 9580 §5.5.1.1; a transferable public key starts with this packet


@dataclass(frozen=True)
class Keyring:
    """Binary OpenPGP public keys, concatenated: what gpgv reads with ``--keyring``."""

    data: bytes

    @property
    def digest(self) -> str:
        """Names this exact set of keys; the cache records it to notice when the keys change."""
        return hashlib.sha256(self.data).hexdigest()


def dearmor(data: bytes) -> bytes:
    """ASCII armor to binary packets; binary input passes through. gpgv reads binary only."""
    blocks = ARMOR_RE.findall(data)
    if not blocks:
        return data
    out = b""
    for block in blocks:
        lines = block.replace(b"\r", b"").split(b"\n")
        # Armor headers ("Comment: …") end at the first blank line; the CRC line starts with '='.
        if b"" in lines and any(b":" in line for line in lines[: lines.index(b"")]):
            lines = lines[lines.index(b"") + 1 :]
        body = b"".join(line.strip() for line in lines if line.strip() and not line.startswith(b"="))
        out += base64.b64decode(body, validate=True)
    return out


def is_public_key(data: bytes) -> bool:
    """Whether binary ``data`` opens with a public-key packet (RFC 9580 §4.2 packet header).

    Only the first header is read: enough to refuse a signature, a secret key or a text file
    given as ``--trusted-key``; whether the key itself is sound is gpgv's business.
    """
    if not data or not data[0] & 0x80:  # bit 7 is set in every packet header
        return False
    head = data[0]
    tag = head & 0x3F if head & 0x40 else (head >> 2) & 0x0F  # bit 6: new or old header format
    return tag == PUBLIC_KEY_TAG


def shipped_keys() -> list[tuple[str, bytes]]:
    """The release keys in the package: every ``*.asc`` in provisioner/data/release-keys/."""
    folder = resources.files("provisioner") / "data" / "release-keys"
    return sorted((entry.name, entry.read_bytes()) for entry in folder.iterdir() if entry.name.endswith(".asc"))


def load_keyring(extra: tuple[Path, ...] = ()) -> Keyring:
    """The shipped release keys plus the user's ``--trusted-key`` files, each checked to be a key."""
    sources = shipped_keys()
    for path in extra:
        try:
            sources.append((str(path), path.read_bytes()))
        except OSError as exc:
            raise UsageError(f"cannot read --trusted-key {path}: {exc.strerror}", "give an OpenPGP public key file") from exc
    data = b""
    for name, raw in sources:
        try:
            binary = dearmor(raw)
        except (ValueError, binascii.Error) as exc:
            raise UsageError(f"{name} is not an OpenPGP public key: broken ASCII armor ({exc})", EXPORT_HINT) from exc
        if not is_public_key(binary):
            raise UsageError(f"{name} is not an OpenPGP public key", EXPORT_HINT)
        data += binary
    return Keyring(data)


def _gpgv(data: Path, sig: Path, keyring: Keyring, label: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="provision-arch-gpgv-") as home:
        ring = Path(home) / "trusted.gpg"
        ring.write_bytes(keyring.data)
        # An own --homedir: gpgv must not pick up ~/.gnupg/trustedkeys.kbx, only our keys.
        argv = ["gpgv", "--homedir", home, "--status-fd", "1", "--keyring", str(ring), str(sig), str(data)]
        try:
            return run(argv, timeout=GPGV_TIMEOUT)
        except NotFound as exc:
            raise HostError(
                "gpgv not found; it is needed to check the ISO's signature",
                "install it (Debian/Ubuntu: apt install gpgv; Fedora: dnf install gnupg2; Arch: pacman -S gnupg)",
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise VerifyError(f"{label}: gpgv did not finish within {GPGV_TIMEOUT:.0f} s", "is the disk very slow?") from exc


def verify_signature(data: Path, sig: Path, keyring: Keyring, label: str) -> str:
    """Check ``sig`` over ``data`` with gpgv: the signer's primary-key fingerprint, or VerifyError.

    ``label`` names the file in error messages.
    """
    result = _gpgv(data, sig, keyring, label)
    status: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, *args = line[9:].split()
            status.setdefault(keyword, args)
    if "BADSIG" in status:
        raise VerifyError(
            f"{label}: BAD signature from key {status['BADSIG'][0]}: the file is not what was signed", TAMPERED_HINT
        )
    if "REVKEYSIG" in status:
        raise VerifyError(f"{label}: signed by revoked key {status['REVKEYSIG'][0]}", TAMPERED_HINT)
    if "NO_PUBKEY" in status or "ERRSIG" in status:
        errsig = status.get("ERRSIG", [])
        # ERRSIG's 7th field is the issuer fingerprint when the signature carries one.
        who = errsig[6] if len(errsig) > 6 and errsig[6] != "-" else (status.get("NO_PUBKEY") or errsig or ["?"])[0]
        raise VerifyError(
            f"{label}: signed by key {who}, which is not a trusted release key",
            "if you trust that key, pass its public key with --trusted-key FILE",
        )
    validsig = status.get("VALIDSIG")
    if result.returncode != 0 or not validsig:
        reason = result.stderr.strip().splitlines()[-1:] or ["no valid signature found"]
        raise VerifyError(f"{label}: signature check failed: {reason[0]}", TAMPERED_HINT)
    # VALIDSIG's 10th field is the primary key's fingerprint (the 1st is the signing subkey's).
    # gpgv knew no keys but ours, so a VALIDSIG is from one of them.
    return validsig[9] if len(validsig) > 9 else validsig[0]

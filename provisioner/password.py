"""The root password: read it, hash it on the host, never show it.

The plaintext lives only in this module's locals. The guest receives a crypt hash, and
even that only as a file on the 9p share (``chpasswd -e`` reads it on stdin), so neither
the console, argv, the transcript nor an error message ever holds the secret.
"""

from __future__ import annotations

import re
from pathlib import Path

from passlib.hash import sha512_crypt

from provisioner.errors import UsageError

# SHA-512 ($6$), SHA-256 ($5$) and yescrypt ($y$): what Arch's PAM and chpasswd -e accept.
# The character set also rules out ':' and newlines, which would break chpasswd's input.
HASH_RE = re.compile(
    r"^\$(6|5)\$(rounds=[0-9]+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{43,86}$|^\$y\$[./A-Za-z0-9]+\$[./A-Za-z0-9]*\$[./A-Za-z0-9]{43}$"
)

# crypt(3)'s default round count: what `openssl passwd -6` and shadow's chpasswd produce.
# A bigger count costs seconds at every login on an emulated (TCG) guest.
ROUNDS = 5000


def hash_password(plaintext: str) -> str:
    if not plaintext:
        raise UsageError("the root password is empty", "put a non-empty password in the --password-file")
    return str(sha512_crypt.using(rounds=ROUNDS).hash(plaintext))


def read_password_file(path: Path) -> str:
    """The first line of the file, without its newline."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read password file {path}: {exc.strerror}", "give a readable file to --password-file") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"password file {path} is not UTF-8 text", "write the password as plain text") from exc
    lines = text.splitlines()
    return lines[0] if lines else ""


def check_hash(value: str) -> str:
    value = value.strip()
    if not HASH_RE.fullmatch(value):
        # Say what is wrong without echoing the value back.
        raise UsageError(
            "--password-hash is not a crypt hash", "make one with: openssl passwd -6  (type the password at its prompt)"
        )
    return value


def verifies(plaintext: str, hashed: str) -> bool:
    return bool(sha512_crypt.verify(plaintext, hashed))

"""Users of the dev box: the ``[[users]]`` tables of a config file, checked, and the files they need.

A user has a name, supplementary groups, an optional login shell, an optional password
*hash* (none: the account is locked, as useradd leaves it) and SSH public keys, given as
strings and/or as files: inside the config file's directory, as every host path of a config
(``validate.host_path``), or the user's own public keys, ``~/.ssh/NAME.pub``. Only lines that
are SSH public keys pass, and a line that is not one is never shown, so a config cannot read
anything else of the host through this key. ``sudo = true`` gives them a
``/etc/sudoers.d/<name>`` file: ``NOPASSWD`` when the account has no password (sudo could
never ask for one), a password-asking rule otherwise.

Everything a user needs in the guest is a ``StagedFile`` (authorized_keys 0600 owned by the
user, the sudoers file 0440, the chpasswd input as a secret); the guest commands that create
the account take only checked names, quoted.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from provisioner import validate
from provisioner.password import HASH_RE
from provisioner.staged import StagedFile
from provisioner.tree import Tree

HOME = PurePosixPath("/home")
SUDOERS_D = PurePosixPath("/etc/sudoers.d")
PASSWORDS = PurePosixPath("/users.chpasswd")  # chpasswd -e input, staged as a secret
AREA = "users"  # their files' subdirectory of the stage
MARK = "# Written by provision-arch"  # the first line of every file of a user the config owns
OWN_KEYS = "~/.ssh/"  # authorized_keys_files may also name NAME.pub directly in here
FIELDS = ("name", "groups", "sudo", "shell", "password_hash", "authorized_keys", "authorized_keys_files")
KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)  # fmt: skip
# An authorized_keys line: [options] type base64 [comment]. Options may hold quoted spaces.
KEY_LINE_RE = re.compile(
    r"^(?:(?P<options>\S.*?)\s+)?(?P<type>(?:" + "|".join(map(re.escape, KEY_TYPES)) + r")(?:-cert-v01@openssh\.com)?)"
    r"\s+(?P<blob>[A-Za-z0-9+/]+={0,3})(?:\s+.*)?$",
    re.ASCII,
)


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    sudo: bool = False
    shell: PurePosixPath | None = None  # None: useradd's default (/bin/bash on Arch)
    password_hash: str = field(default="", repr=False)  # "": locked, no password login
    authorized_keys: tuple[str, ...] = ()  # one authorized_keys line each
    key: str = field(default="users", compare=False, repr=False)  # where it was configured, for errors

    def __post_init__(self) -> None:
        validate.user_name(self.name, f"{self.key}.name")
        for i, group in enumerate(self.groups):
            validate.account(group, f"{self.key}.groups[{i}]", "group name")
        if len(set(self.groups)) != len(self.groups):
            raise validate.refuse(f"{self.key}.groups", f"a group is listed twice in {list(self.groups)}", "list each once")
        if self.shell is not None:
            validate.guest_path(str(self.shell), f"{self.key}.shell")
        if self.password_hash and not HASH_RE.fullmatch(self.password_hash):
            # Not echoed: it is a secret, if a malformed one.
            raise validate.refuse(
                f"{self.key}.password_hash", "is not a crypt hash", "make one with: openssl passwd -6 (or leave it out: locked)"
            )
        for i, line in enumerate(self.authorized_keys):
            check_key_line(line, f"{self.key}.authorized_keys[{i}]")

    @property
    def home(self) -> PurePosixPath:
        return HOME / self.name

    @property
    def locked(self) -> bool:
        return not self.password_hash

    def staged_files(self) -> tuple[StagedFile, ...]:
        """authorized_keys (0600, the user's, in a 0700 ~/.ssh the step creates) and the sudoers file (0440)."""
        files = []
        if self.authorized_keys:
            keys = f"{MARK} from {self.key}.authorized_keys: an update rewrites this file.\n"
            keys += "".join(line + "\n" for line in self.authorized_keys)
            files.append(StagedFile(self.home / ".ssh/authorized_keys", keys, 0o600, f"{self.name}:{self.name}", area=AREA))
        if self.sudo:
            files.append(StagedFile(SUDOERS_D / self.name, sudoers(self), 0o440, area=AREA))
        return tuple(files)


def owned_files(name: str) -> tuple[PurePosixPath, PurePosixPath]:
    """The files a user of the config may have from provision-arch: its authorized_keys and
    its sudoers rule. Each starts with MARK; one the config no longer asks for is removed."""
    return HOME / name / ".ssh/authorized_keys", SUDOERS_D / name


def sudoers(user: User) -> str:
    """The sudoers.d rule: without a password sudo could never ask, so NOPASSWD; with one, it asks."""
    rule = "ALL=(ALL:ALL) NOPASSWD: ALL" if user.locked else "ALL=(ALL:ALL) ALL"
    why = "the account has no password" if user.locked else "sudo asks for the user's password"
    return f"{MARK} ({user.key}.sudo = true; {why}).\n{user.name} {rule}\n"


def check_key_line(line: Any, key: str, *, echo: bool = True) -> str:
    """One authorized_keys line: a known key type with a blob that decodes to that type.

    ``echo=False`` for a line read from a file: what is not a public key is not shown.
    """
    text = validate.string(line, key, "an SSH public key line")
    match = KEY_LINE_RE.fullmatch(text.strip())
    if validate.CONTROL_RE.search(text.replace("\t", " ")) or not match:
        hint = "a line of a .pub file, e.g. 'ssh-ed25519 AAAA… me@host'"
        raise validate.refuse(key, "not an SSH public key line" + (f": {text[:50]!r}" if echo else ""), hint)
    try:
        fields = key_fields(base64.b64decode(match["blob"], validate=True))
    except (binascii.Error, ValueError):
        fields = []
    if len(fields) < 2 or fields[0].decode("ascii", "replace") != match["type"]:
        hint = "copy the whole line of the .pub file"
        raise validate.refuse(key, f"the key data is not a {match['type']} key", hint)
    return text.strip()


def key_fields(blob: bytes) -> list[bytes]:
    """The length-prefixed fields of an SSH public key blob (RFC 4253 6.6); ValueError if they do not add up."""
    fields = []
    while blob:
        length = int.from_bytes(blob[:4], "big")
        if len(blob) < 4 + length or length == 0:
            raise ValueError("truncated key blob")
        fields.append(blob[4 : 4 + length])
        blob = blob[4 + length :]
    return fields


def read_key_file(path: Path, key: str) -> tuple[str, ...]:
    """The key lines of an authorized_keys or .pub file; blank lines and comments are skipped."""
    if path.exists() and not path.is_file():
        raise validate.refuse(key, f"{path} is not a regular file", "give a .pub file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise validate.refuse(key, f"cannot read {path}: {reason}", "paths are relative to the config file") from exc
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    return tuple(
        check_key_line(line, f"{key} ({path}, line {n})", echo=False) for n, line in lines if line and not line.startswith("#")
    )


def key_file(value: Any, base: Path, key: str) -> Path:
    """A key file of a config: inside its directory, or NAME.pub directly in ~/.ssh (links resolved inside it)."""
    name = validate.string(value, key, "a path relative to the config file")
    own = name.removeprefix(OWN_KEYS)
    if name.startswith(OWN_KEYS) and own.endswith(".pub") and "/" not in own:
        hint = f"name a public key in {OWN_KEYS} as {OWN_KEYS}NAME.pub, or put the key file beside the config file"
        return validate.beneath(Path.home() / ".ssh", own, key, hint)
    return validate.host_path(name, base, key, f", or name your own public key as {OWN_KEYS}NAME.pub")


def parse_users(value: Any, base: Path, key: str) -> tuple[User, ...]:
    """The ``users`` key of a config file: a list of tables, ``[[users]]`` in TOML."""
    return validate.tables(value, base, key, "users", parse_user)


def parse_user(table: Any, base: Path, key: str) -> User:
    table = validate.table(table, key, FIELDS, "a name")
    if "name" not in table:
        raise validate.refuse(key, "has no name", 'every [[users]] table needs name = "…"')
    sudo = table.get("sudo", False)
    if not isinstance(sudo, bool):
        raise validate.refuse(f"{key}.sudo", f"must be true or false, not {sudo!r}", "sudo = true")
    shell = table.get("shell")
    keys = [check_key_line(line, f"{key}.authorized_keys[{i}]") for i, line in enumerate(strings(table, "authorized_keys", key))]
    for i, name in enumerate(strings(table, "authorized_keys_files", key)):
        where = f"{key}.authorized_keys_files[{i}]"
        keys.extend(read_key_file(key_file(name, base, where), where))
    return User(
        name=validate.string(table["name"], f"{key}.name", "a user name"),
        groups=tuple(strings(table, "groups", key)),
        sudo=sudo,
        shell=validate.guest_path(shell, f"{key}.shell") if shell is not None else None,
        password_hash=validate.string(table.get("password_hash", ""), f"{key}.password_hash", "a crypt hash"),
        authorized_keys=tuple(keys),
        key=key,
    )


def strings(table: dict[str, Any], name: str, key: str) -> list[str]:
    value = table.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise validate.refuse(f"{key}.{name}", f"must be a list of strings, not {value!r}", f'{name} = ["…"]')
    return value


def check_users(users: Sequence[User], key: str = "users") -> None:
    """What no single user can tell: names are unique, and a group that is another configured
    user's own group names a user created before (useradd -U makes that group)."""
    seen: set[str] = set()
    names = [user.name for user in users]
    for index, user in enumerate(users):
        if user.name in seen:
            raise validate.refuse(f"{user.key}.name", f"user {user.name!r} is configured twice", "one [[users]] table per user")
        seen.add(user.name)
        for group in user.groups:
            if group in names[index:]:
                raise validate.refuse(
                    f"{user.key}.groups",
                    f"group {group!r} is the own group of a user configured after {user.name!r} (or of itself)",
                    f"list user {group!r} first; a user is always in its own group",
                )


def password_file(users: Sequence[User]) -> StagedFile | None:
    """The chpasswd -e input for the users with a password hash; None when no user has one."""
    lines = "".join(f"{user.name}:{user.password_hash}\n" for user in users if user.password_hash)
    return StagedFile(PASSWORDS, lines, 0o600, secret=True) if lines else None


SSH_UNITS = ("sshd", "sshd.service", "ssh", "ssh.service")  # Arch's unit, and Debian's name for it
SSH_FIX = "add openssh to packages and sshd to services (config keys, or --packages/--enable-service)"


def ssh_gap(users: tuple[User, ...], packages: tuple[str, ...], services: tuple[str, ...]) -> str | None:
    """A note when users get SSH keys but the box gets no SSH server to use them (or None)."""
    keyed = [user.name for user in users if user.authorized_keys]
    if not keyed or ("openssh" in packages and any(unit in SSH_UNITS for unit in services)):
        return None
    return f"{', '.join(keyed)} get SSH keys, but the box will run no SSH server: {SSH_FIX}"


SSHD_WANTED = "etc/systemd/system/multi-user.target.wants/sshd.service"  # what `systemctl enable sshd` makes


def sshd_enabled(target: Path) -> bool:
    """Whether the installed box starts sshd at boot (looked up in the tree without following links)."""
    with Tree(target) as tree:
        return tree.exists(SSHD_WANTED)

"""The root password: hashed on the host, checked, never echoed back."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.errors import UsageError
from provisioner.password import check_hash, hash_password, read_password_file, verifies


def test_hash_is_sha512_crypt_and_verifies() -> None:
    hashed = hash_password("correct horse")
    assert hashed.startswith("$6$")
    assert verifies("correct horse", hashed)
    assert not verifies("wrong", hashed)
    assert "correct horse" not in hashed


def test_salts_differ() -> None:
    assert hash_password("same") != hash_password("same")


def test_password_file_first_line(tmp_path: Path) -> None:
    file = tmp_path / "pw"
    file.write_text("hunter2\nignored\n")
    assert read_password_file(file) == "hunter2"


def test_empty_password_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "pw"
    file.write_text("\n")
    with pytest.raises(UsageError, match="empty"):
        hash_password(read_password_file(file))


def test_missing_password_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read password file"):
        read_password_file(tmp_path / "nope")


def test_check_hash_accepts_crypt_hashes_and_never_echoes_a_bad_one() -> None:
    good = hash_password("x")
    assert check_hash(good + "\n") == good
    assert check_hash("$y$j9T$F5Jx5fExrKuJdvnEfQ7Ul.$Ydl2JeVdOW1IGZJv.AKIn7Bp0pISBX.a2b5O0z9fwS4")
    with pytest.raises(UsageError) as caught:
        check_hash("plaintext-oops")
    assert "plaintext-oops" not in caught.value.message + caught.value.hint
    with pytest.raises(UsageError):
        check_hash(good + ":root")  # a ':' would break chpasswd's input
    with pytest.raises(UsageError):
        check_hash(good.replace("$6$", "$6$rounds=\u0665\u0660\u0660\u0660$", 1))  # \\d took Arabic-Indic digits

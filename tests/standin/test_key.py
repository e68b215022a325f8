"""The stand-in's cache keys depend on its content, not on where the project is checked out.

No VM, no root: the keys are computed in a copy of the project's stand-in sources made
elsewhere, and in that copy after one PKGBUILD changed.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

PROJECT = pathlib.Path(__file__).resolve().parent.parent.parent
KEYS = (
    "from tests.standin import archive, build\n"
    "print(build.iso_key(build.load_repo_module()), archive.archive_key())\n"
)


def keys(project: pathlib.Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", KEYS], cwd=project, capture_output=True, text=True, check=False,
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PYTHONPATH": str(project), "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def copy_of_standin(dest: pathlib.Path) -> pathlib.Path:
    (dest / "tests").mkdir(parents=True)
    shutil.copy2(PROJECT / "tests/__init__.py", dest / "tests/__init__.py")
    shutil.copytree(PROJECT / "tests/standin", dest / "tests/standin", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_keys_are_the_same_in_another_checkout_and_change_with_content(tmp_path: pathlib.Path) -> None:
    if shutil.which("dpkg-query") is None:
        pytest.skip("the keys include Debian package versions: needs dpkg-query")
    here = keys(PROJECT)
    elsewhere = copy_of_standin(tmp_path / "some other clone")
    assert keys(elsewhere) == here
    pkgbuild = elsewhere / "tests/standin/packages/base/PKGBUILD"
    pkgbuild.write_text(pkgbuild.read_text() + "# changed\n")
    iso_changed, archive_changed = keys(elsewhere).split()
    iso_here, archive_here = here.split()
    assert iso_changed != iso_here and archive_changed != archive_here

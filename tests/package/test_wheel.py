"""The templates ship inside the wheel: install it into a fresh venv and render from there."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).parents[2]

RENDER_ALL = """
import pathlib, provisioner.render as r
from provisioner.config import build
assert pathlib.Path(r.templates_dir()).is_relative_to(pathlib.Path(r.__file__).parent), r.templates_dir()
names = r.template_names()
cfg = build({"target": pathlib.Path("/t")})
for name in names:
    assert r.render(name, cfg).strip(), name
print(len(names))
"""


def test_wheel_ships_and_renders_every_template(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True)  # fmt: skip
    wheel = next((tmp_path / "dist").glob("provision_arch-*.whl"))
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv/bin/python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True)
    # Run from tmp_path so the source checkout's templates/ cannot be found by accident.
    result = subprocess.run([str(python), "-c", RENDER_ALL], cwd=tmp_path, check=True, capture_output=True, text=True)
    expected = len(list((ROOT / "templates").rglob("*.j2")))
    assert int(result.stdout.strip()) == expected > 0
    help_text = subprocess.run([str(tmp_path / "venv/bin/provision-arch"), "--help"], check=True, capture_output=True, text=True)
    assert "provision-arch" in help_text.stdout

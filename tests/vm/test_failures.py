"""Failures on the real stand-in under QEMU end in clear errors, not silent timeouts."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from provisioner.config import build
from provisioner.console import Transcript
from provisioner.errors import BootFailed
from provisioner.install import start_live
from provisioner.iso import read_boot_files
from provisioner.report import Progress

pytestmark = pytest.mark.vm


def test_wrong_uuid_ends_at_the_rescue_shell_with_a_clear_error(standin_iso: Path, tmp_path: Path) -> None:
    """The archiso hook cannot find its medium: the driver names the rescue shell."""
    cfg = build({"target": tmp_path / "base", "iso": standin_iso, "accel": "tcg"})
    cfg.target.mkdir()
    boot = read_boot_files(standin_iso, tmp_path / "cache")
    wrong = dataclasses.replace(boot, uuid="1999-01-01-00-00-00-00")
    transcript = Transcript(tmp_path / "console.log")
    started = time.monotonic()
    with pytest.raises(BootFailed, match=r"rescue shell \[rootfs ~\]#") as caught:
        start_live(cfg, standin_iso, wrong, transcript, Progress())
    transcript.close()
    elapsed = time.monotonic() - started
    print(f"wrong UUID reported after {elapsed:.1f} s")
    assert "archisosearchuuid=1999-01-01-00-00-00-00" not in caught.value.message
    assert "did not find its own boot medium" in caught.value.message
    assert "[rootfs ~]#" in (tmp_path / "console.log").read_text(errors="replace")

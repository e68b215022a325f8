"""The stream install against the fake QEMU: same tree as the 9p path, or an error and no tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provisioner.errors import ExitCode
from provisioner.install import STEPS
from provisioner.workspace import Workspace
from tests.helpers import differences, tree
from tests.orchestration.conftest import Fake

STREAM_STEPS = [step.name for step in STEPS]


def test_stream_and_9p_installs_give_the_same_tree(install: Any, fake: Fake, tmp_path: Path) -> None:
    assert install(target=tmp_path / "ninep").exit_code == 0
    streamed = install("--install-via", "stream", target=tmp_path / "stream")
    assert streamed.exit_code == 0, streamed.stderr
    assert streamed.steps()[4:-3] == STREAM_STEPS and streamed.steps()[-3:] == ["poweroff", "unpack", "manifest"]
    assert any(e["type"] == "note" and "arrived as one" in e["message"] for e in streamed.events)
    # The salt of the password hash differs between any two runs; all else must be identical.
    one, two = tree(tmp_path / "ninep", content_skip=("etc/shadow",)), tree(tmp_path / "stream", content_skip=("etc/shadow",))
    assert len(one) > 20 and differences(one, two) == []
    state = Workspace.of(tmp_path / "stream").root
    assert not [p.name for p in state.iterdir() if p.name.startswith(("scratch", "stream"))], "stream files left behind"
    assert len(fake.launches()) == 2


def test_a_stream_that_stops_short_is_an_error_and_leaves_no_tree(
    install: Any, fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "stream-short")
    monkeypatch.setattr("provisioner.stream.SETTLE", 2.0)
    run = install("--install-via", "stream")
    assert run.exit_code == ExitCode.STEP, run.stderr
    assert "stopped short" in run.events[-1]["message"]
    target = tmp_path / "base"
    assert list(target.iterdir()) == [], "a half-filled target"
    assert not [p.name for p in Workspace.of(target).root.iterdir() if p.name.startswith(("scratch", "stream"))]

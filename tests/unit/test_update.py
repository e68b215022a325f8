"""What an update changes, worked out on the host from the box's state and the new config."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.config import Config
from provisioner.errors import UsageError
from provisioner.state import State
from provisioner.update import Changes, changes, check_updatable, new_config, plan
from provisioner.users import User

RECORD = {"packages": ["base", "linux", "zsh"], "services": ["sshd"], "hostname": "box", "mirror": None}


def state(**fields: object) -> State:
    return State(dict(RECORD), finished=True, users=["dev", "ci"], **fields)  # type: ignore[arg-type]


def config(**fields: object) -> Config:
    return Config(target=Path("/boxes/base"), **fields)  # type: ignore[arg-type]


def test_what_the_config_drops_is_removed_disabled_or_deleted() -> None:
    new = config(packages=("base", "linux", "git"), users=(User("dev"),))
    found = changes(state(), new, accounts=True)
    assert found == Changes(removed=("zsh",), disabled=("sshd",), gone=("ci",), accounts=True)
    assert not found.mirror and not found.downgrade


def test_without_a_config_file_no_account_is_deleted() -> None:
    found = changes(state(), config(packages=("base", "linux", "zsh"), services=("sshd",)), accounts=False)
    assert found.gone == () and not found.accounts
    assert "users and copied files are left as they are" in " ".join(found.summary())


@pytest.mark.parametrize(
    ("given", "mirror", "downgrade"),
    [({}, False, False), ({"snapshot": "2026-11-01"}, True, True), ({"mirror": "https://m.example"}, True, False)],
)
def test_a_new_mirror_or_snapshot_rewrites_the_mirrorlist(given: dict[str, str], mirror: bool, downgrade: bool) -> None:
    found = changes(state(), config(**given), accounts=True)
    assert (found.mirror, found.downgrade) == (mirror, downgrade)
    assert ("mirrorlist" in [step.name for step in plan(config(**given), found)]) is mirror


def test_an_update_never_removes_the_kernel_or_base() -> None:
    with pytest.raises(UsageError) as refused:
        changes(state(), config(packages=("git",)), accounts=False)
    assert "base, linux" in refused.value.message and "give the whole list" in refused.value.hint


def test_an_interrupted_update_is_measured_against_the_config_before_it() -> None:
    interrupted = State({**RECORD, "packages": ["base", "linux"]}, updating=True, before=dict(RECORD))
    assert changes(interrupted, config(packages=("base", "linux")), accounts=False).removed == ("zsh",)


def test_without_a_file_the_recorded_options_are_the_base() -> None:
    values = new_config(RECORD, {"hostname": "other", "packages": None, "timezone": None})
    assert values["hostname"] == "other", "the command line wins"
    assert values["packages"] == ("base", "linux", "zsh"), "a recorded list comes back as the option's tuple"
    assert values["services"] == ("sshd",)


def test_the_steps_follow_the_changes() -> None:
    cfg = config(password_hash="$6$x$y", users=(User("dev"),), services=("sshd",), commands=("true",))
    names = [step.name for step in plan(cfg, Changes(removed=("zsh",), disabled=("x",), gone=("ci",)))]
    assert names == ["mount", "cache", "upgrade", "disable", "remove", "configure", "initramfs", "password", "users",
                     "accounts", "services", "command-1", "unmount"]  # fmt: skip
    quiet = [step.name for step in plan(config(cache_packages=False), Changes(accounts=False))]
    assert quiet == ["mount", "upgrade", "configure", "initramfs", "unmount"]


@pytest.mark.parametrize("found", [None, State({}, finished=False)])
def test_only_a_finished_box_is_updated(found: State | None) -> None:
    with pytest.raises(UsageError) as refused:
        check_updatable(Path("/boxes/base"), found)
    assert refused.value.hint


def test_an_interrupted_update_may_run_again() -> None:
    interrupted = State(dict(RECORD), finished=False, updating=True)
    assert check_updatable(Path("/boxes/base"), interrupted) is interrupted

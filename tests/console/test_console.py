"""The console driver against real local shells through pexpect, behind a fake archiso login.

zsh runs with a grml-like prompt (tests/console/.zshrc): colours, NUL padding, a right
prompt, the exit code, bracketed paste. Nothing here is mocked: the driver types into a
real pseudo-terminal and reads what real shells print.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from provisioner.console import Console, Transcript
from provisioner.errors import BootFailed, CommandFailed, ConsoleTimeout, ProvisionError

FAKE = Path(__file__).with_name("fake_archiso.sh")


def spawn(mode: str, transcript: Transcript | None = None) -> pexpect.spawn[str]:
    child = pexpect.spawn("bash", [str(FAKE), mode], encoding="utf-8", codec_errors="replace", timeout=None)
    if transcript is not None:
        child.logfile_read = transcript
    return child


@pytest.fixture(params=["zsh", "bash"])
def console(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Console]:
    if shutil.which(request.param) is None:
        pytest.skip(f"{request.param} is not installed")
    child = spawn(request.param, Transcript(tmp_path / "console.log"))
    con = Console(child)
    con.login(boot_timeout=10)
    yield con
    child.close(force=True)


def test_run_returns_output_and_status(console: Console) -> None:
    result = console.run("echo hello; echo world")
    assert result.status == 0
    assert result.output == "hello\nworld"


def test_status_of_failing_commands(console: Console) -> None:
    assert console.run("false").status == 1
    assert console.run("(exit 7)").status == 7
    assert console.run("true").status == 0


def test_output_that_looks_like_a_prompt_does_not_end_the_command(console: Console) -> None:
    result = console.run(f"echo 'PA_{console.nonce}_0_PROMPT'; echo after")
    assert result.output.splitlines()[-1] == "after"


def test_check_raises_with_status_and_output(console: Console) -> None:
    with pytest.raises(CommandFailed) as caught:
        console.check("echo some evidence; exit_with() { return 3; }; exit_with")
    assert caught.value.status == 3
    assert "some evidence" in caught.value.details()


def test_continuation_prompt_is_an_error_not_a_hang(console: Console) -> None:
    with pytest.raises(ProvisionError, match="wanted more input"):
        console.run("echo 'unbalanced", timeout=10)
    assert console.run("echo still usable").output == "still usable"


def test_timeout_carries_the_last_output(console: Console) -> None:
    with pytest.raises(ConsoleTimeout) as caught:
        console.run("echo started; sleep 5", timeout=1)
    assert "started" in caught.value.details()


def test_shell_exit_is_reported_as_qemu_gone(console: Console) -> None:
    with pytest.raises(BootFailed, match="QEMU ended"):
        console.run("exit 0", timeout=10)


@pytest.mark.parametrize(("mode", "message"), [("panic", "panicked"), ("rescue", r"rescue shell \[rootfs ~\]#")])
def test_boot_failures_are_recognised_while_waiting_for_login(mode: str, message: str) -> None:
    child = spawn(mode)
    try:
        with pytest.raises(BootFailed, match=message):
            Console(child).login(boot_timeout=10)
    finally:
        child.close(force=True)


def test_transcript_keeps_output_and_redacts_secrets(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    lines: list[str] = []
    transcript = Transcript(log, redact=("s3cr3t-hash",), on_line=lines.append)
    child = spawn("bash", transcript)
    con = Console(child)
    con.login(boot_timeout=10)
    con.run("echo visible; echo s3cr3t-hash")
    child.close(force=True)
    transcript.close()
    text = log.read_text()
    assert "visible" in text
    assert "s3cr3t-hash" not in text
    assert "<redacted>" in text
    assert "\x00" not in text
    assert any("visible" in line for line in lines)


@pytest.mark.parametrize("cut", [1, 7, 40, 105])
def test_a_secret_split_across_reads_never_reaches_the_transcript_or_a_line(tmp_path: Path, cut: int) -> None:
    secret = "$6$salt$" + "x" * 98
    lines: list[str] = []
    transcript = Transcript(tmp_path / "console.log", redact=(secret,), on_line=lines.append)
    text = f"before {secret} after\nand $6$salt$ alone\n"
    for start in range(0, len(text), cut):
        transcript.write(text[start : start + cut])
    transcript.close()
    written = (tmp_path / "console.log").read_text()
    assert secret not in written and "<redacted>" in written and "$6$salt$ alone" in written
    assert lines == ["before <redacted> after", "and $6$salt$ alone"]


def test_the_transcript_does_not_follow_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    (tmp_path / "console.log").symlink_to(victim)
    with pytest.raises(OSError):
        Transcript(tmp_path / "console.log")
    assert victim.read_text() == "mine\n"


def test_a_command_is_measured_in_bytes(console: Console) -> None:
    """The tty cuts a line at 4095 bytes; 1,800 three-byte characters are 5,400 of them."""
    with pytest.raises(ProvisionError, match="bytes"):
        console.run("echo " + "€" * 1800)

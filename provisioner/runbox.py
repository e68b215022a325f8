"""``provision-arch run``: boot the box headless, run one command as a user, stream its output,
return its exit status, power off — in one QEMU, always ended.

The command runs the way systemd itself runs a command given on the kernel command line:
``systemd.run=`` (systemd-run-generator, systemd 240 and later) makes it
kernel-command-line.service and boots into it, and ``systemd.run_success_action=poweroff``
with ``systemd.run_failure_action=poweroff`` end the VM whatever the command returns.
Nothing crosses the console but output, no password or key exists for the run, and the box
needs no sshd and no network.

The kernel command line names only a script that provision-arch writes into the box before
QEMU starts (``TARGET/.provision-arch-run/ID/command``, made anew without following any link
and removed afterwards, see ``boot.boot_dir``), so the command's words never pass through the
command line's quoting. The script:

- sends its own output to /dev/console, the serial console (the unit's stdout goes to
  journald, which would forward it with a ``[time] name[pid]:`` prefix);
- turns the kernel's console messages down (``dmesg -n 1``);
- keeps the serial getty off the console (``systemd.mask=`` on the kernel command line does
  that where systemd-debug-generator is installed; a runtime mask does it everywhere);
- starts multi-user.target, so the command finds the box as a boot leaves it (network,
  enabled services): the generator boots into its own target, which does not pull it in
  (the command is part of the boot, so ``systemctl is-system-running`` says ``starting``);
- writes a start marker;
- runs the command with ``runuser -u USER --`` from the user's home, its words as given
  (quoted once, by ``shlex.join``, for the script's own shell), stdin from /dev/null;
- writes an end marker with the exit status and exits with it.

Both markers carry a nonce that exists only in the script, so nothing the boot prints can
fake them. Everything between them is the command's output, streamed as it comes.
"""

from __future__ import annotations

import re
import secrets
import shlex
import textwrap
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from shlex import quote as q

import pexpect

from provisioner import attach, ephemeral, preflight, validate
from provisioner.boot import boot_dir, hardware, kernel_files, served, throwaway_layer
from provisioner.config import Accel, BootConfig
from provisioner.console import Console, Transcript
from provisioner.ephemeral import Throwaway
from provisioner.errors import BootFailed, ConsoleTimeout, UsageError
from provisioner.events import Bus, Output
from provisioner.live import launched
from provisioner.qemu import KernelFiles, Machine, run_argv
from provisioner.tree import IN_ROOT, Tree
from provisioner.workspace import Workspace

RUN_GENERATOR = "usr/lib/systemd/system-generators/systemd-run-generator"
RUNUSER = ("usr/bin/runuser", "usr/sbin/runuser")  # Arch merges sbin into bin; either will do
BOOT_TIMEOUT = 900.0  # seconds from QEMU's start to the start marker (TCG on a busy host is slow)
POWEROFF_TIMEOUT = 120.0  # seconds from the end marker to QEMU's exit
# A box that cannot finish booting stops at systemd's emergency shell, waiting for a password.
PASSWD_LIMIT = 16 << 20
EMERGENCY = r"You are in emergency mode|Cannot open access to console, the root account is locked"


@dataclass(frozen=True)
class RunRequest:
    target: Path
    argv: tuple[str, ...]
    user: str = "root"
    timeout: float | None = None  # seconds for the command itself; None: as long as it takes
    settings: BootConfig = field(default_factory=BootConfig)  # memory, CPUs, machine, root file system, shares, forwards


def kernel_args(command: PurePosixPath) -> list[str]:
    """What the kernel command line adds to the box's own (ROOT_APPEND) for a run of ``command``."""
    return [
        f"systemd.run={command}",
        "systemd.run_success_action=poweroff",
        "systemd.run_failure_action=poweroff",
        "systemd.show_status=false",
        "systemd.tty.term.console=dumb",
        "systemd.mask=serial-getty@ttyS0.service",  # the console is the command's, not a login prompt's
        "panic=-1",  # with -no-reboot: a panic ends QEMU instead of hanging it
    ]


def script(user: str, argv: Sequence[str], nonce: str) -> str:
    """The script systemd runs for the command (see the module's doc)."""
    return textwrap.dedent(f"""\
        #!/bin/sh
        # Written by provision-arch run for one run, and removed after it. systemd runs it as
        # kernel-command-line.service (systemd.run= on the kernel command line).
        exec </dev/null >/dev/console 2>&1
        dmesg -n 1 2>/dev/null
        systemctl mask --runtime --quiet serial-getty@ttyS0.service 2>/dev/null
        systemctl start multi-user.target >/dev/null 2>&1
        nonce={nonce}
        printf 'PA_RUN_%s_BEGIN\\n' "$nonce"
        runuser -u {q(user)} -- sh -c 'cd 2>/dev/null; exec "$@"' provision-arch-run {shlex.join(argv)}
        status=$?
        printf 'PA_RUN_%s_END_%d\\n' "$nonce" "$status"
        exit "$status"
        """)


# A line ends in \r\r\n on our side: the guest's tty turns \n into \r\n, and QEMU's stdio
# keeps output processing on (OPOST), so the pty between QEMU and us does it again.
EOL = r"\r*\n"


def begin_marker(nonce: str) -> str:
    return rf"PA_RUN_{nonce}_BEGIN{EOL}"


def end_marker(nonce: str) -> re.Pattern[str]:
    """The end marker; it may follow output that did not end its line."""
    return re.compile(rf"PA_RUN_{nonce}_END_([0-9]+){EOL}")


def check_runnable(target: Path, user: str) -> None:
    """The box can run a command this way, as this user: usage errors that say what is missing."""
    preflight.check_box(target, start=False)
    with Tree(target) as tree:
        generator, runuser = tree.exists(RUN_GENERATOR), any(tree.regular(path, IN_ROOT) for path in RUNUSER)
    if not generator:
        raise UsageError(
            f"{target} has no /{RUN_GENERATOR}: run needs systemd (240 or later) as the box's init",
            "Arch's systemd package ships it; a box without it can only be booted: provision-arch boot",
        )
    if not runuser:
        raise UsageError(f"{target} has no /{RUNUSER[0]}", "install util-linux in the box (Arch's base brings it)")
    validate.account(user, "--user")
    with Tree(target) as tree:
        passwd = tree.regular_text("etc/passwd", PASSWD_LIMIT)
    if passwd is None:
        raise UsageError(f"cannot read {target}/etc/passwd (missing, or a link)", "is it an installed box?")
    names = {line.split(":", 1)[0] for line in passwd.splitlines()}
    if user not in names:
        raise UsageError(
            f"there is no user {user!r} in {target}/etc/passwd",
            "create it with a [[users]] table (README 'A dev box'), or leave out --user to run as root",
        )


def run_in_box(request: RunRequest, events: Bus) -> tuple[int, Path]:
    """Run the request's command in its box; its exit status and the run's transcript. Raises
    a ProvisionError when the box fails (it does not boot, powers off too early, or the
    command outlives --timeout)."""
    check_runnable(request.target, request.user)
    settings = request.settings
    attach.check_shares(settings.shares, request.target)
    attach.check_forwards(settings.all_forwards)
    workspace = Workspace.of(request.target)
    nonce = secrets.token_hex(8)  # also names this run's directories
    with workspace.locked(shared=settings.ephemeral), ExitStack() as stack:
        files = stack.enter_context(boot_dir(request.target, nonce, shared=settings.ephemeral))
        command = files.write("command", script(request.user, request.argv, nonce))
        layer = stack.enter_context(throwaway_layer(request.target, settings, files, nonce))
        if settings.ephemeral:
            workspace.prune_throwaways()
        path = workspace.throwaway(nonce) / "console.log" if layer else workspace.run_transcript
        transcript = Transcript(path)
        stack.callback(transcript.close)
        transcript.note(f"run as {request.user}: {shlex.join(request.argv)}")
        kernel = stack.enter_context(kernel_files(request.target))
        return _run(request, Booting(nonce, command, layer, kernel), transcript, events), path


@dataclass(frozen=True)
class Booting:
    """What one run boots with: its nonce, its command in the box, a throwaway layer, the kernel."""

    nonce: str
    command: PurePosixPath
    layer: Throwaway | None
    kernel: KernelFiles


def _run(request: RunRequest, booting: Booting, transcript: Transcript, events: Bus) -> int:
    settings = request.settings
    nonce = booting.nonce
    with ExitStack() as stack:

        def make(accel: Accel) -> Machine:
            hw = hardware(settings, accel)  # this attempt's accelerator: nothing to probe
            transcript.note(f"starting QEMU ({accel.value})")
            # Each attempt has its own helpers (a virtiofsd ends with the QEMU it served); they
            # end after QEMU, with the stack.
            served_as = served(request.target, settings, as_root=preflight.is_root(), throwaway=booting.layer)
            prefix, how = stack.enter_context(served_as)
            args = kernel_args(booting.command)
            argv = [*prefix, *run_argv(hw, request.target, args, settings.all_forwards, served=how, kernel=booting.kernel)]
            return Machine(argv, logfile=transcript)

        shown = textwrap.shorten(shlex.join(request.argv), 60, placeholder=" …")
        with events.step("boot", "Booting the box"):
            machine = stack.enter_context(launched(make, settings.accel, 1.0, events))
            con = Console(machine.child)
            waiting = "the command's start (systemd.run= on the box's kernel command line)"
            outcomes = {"begin": begin_marker(nonce), "emergency": EMERGENCY, "throwaway": f"{re.escape(ephemeral.FAILED)}.*"}
            seen = con.expect(outcomes, BOOT_TIMEOUT, waiting)
            if seen == "emergency":
                hint = "boot it with provision-arch boot to see why"
                raise BootFailed("the box stopped in systemd's emergency mode", hint, output=con.output_so_far())
            if seen == "throwaway":
                raise BootFailed(
                    "the box could not set up its throwaway layer (--ephemeral)",
                    "its kernel needs virtio_blk, ext4 and overlay (Arch's linux has them); see the run's transcript",
                    output=con.output_so_far(),
                )
        with events.step("command", f"Running {shown} as {request.user}"):
            status = stream(machine.child, nonce, events, request.timeout)
        with events.step("poweroff", "Powering off"):
            if machine.child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=POWEROFF_TIMEOUT) == 1:
                events.note(f"the box did not power off within {POWEROFF_TIMEOUT:.0f} s after the command; QEMU was stopped")
                machine.shutdown(hard=True)
    return status


def stream(child: pexpect.spawn[str], nonce: str, events: Bus, timeout: float | None) -> int:
    """Hand each line the command prints to the events until the end marker; its status."""
    patterns: list[re.Pattern[str] | re.Pattern[bytes] | str | bytes | type[pexpect.EOF] | type[pexpect.TIMEOUT]] = [
        end_marker(nonce), re.compile(EOL), pexpect.EOF, pexpect.TIMEOUT,
    ]  # fmt: skip
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        index = child.expect(patterns, timeout=left)
        before = child.before if isinstance(child.before, str) else ""
        if index == 0:
            if before:
                events.emit(Output(before))  # the last text, without a newline of its own
            match = child.match
            assert isinstance(match, re.Match)
            return int(match[1])
        if index == 1:
            events.emit(Output(before + "\n"))
        elif index == 2:
            raise BootFailed(
                "the box ended before the command did (it powered off, or QEMU was killed)",
                "see the run's transcript",
                output=before,
            )
        else:
            hint = "the command ran longer than --timeout; QEMU was stopped"
            raise ConsoleTimeout("end of the command", timeout or 0.0, before, hint)

"""End to end: the real CLI, as an unprivileged user, on the offline ISO stand-in under QEMU.

The test setup (as root) creates the user with subuid/subgid ranges and installs the CLI
into a venv that user can read. Then, as that user: install into ./base with only --iso,
--password-file and --hostname, check the result on the host, boot it with
`provision-arch boot`, log in with the password, and check it from inside.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pytest

from provisioner.config import Config, InstallVia, build
from provisioner.errors import ExitCode
from provisioner.install import STEPS
from provisioner.password import verifies
from provisioner.render import rootfs_files
from tests.helpers import Entry, differences, report, tree
from tests.vm.unprivileged import TIMES, E2EUser, as_user, box_processes, named, user_workspace

pytestmark = pytest.mark.vm

PASSWORD = "e2e-Pass-w0rd"  # the throwaway test box's root password
HOSTNAME = "e2e-box"


@dataclass(frozen=True)
class Installed:
    base: Path
    result: subprocess.CompletedProcess[str]
    events: list[dict[str, Any]]
    most_qemus: int  # the most QEMU processes of the user seen at once during the install


def install_as(user: E2EUser, cli: Path, workdir: Path, iso: Path, name: str, *extra: str) -> Installed:
    """The CLI as the user, into workdir/NAME, sampling the process list while it runs."""
    password_file = workdir / "root-password"
    password_file.write_text(PASSWORD + "\n")
    os.chown(password_file, user.uid, user.gid)
    password_file.chmod(0o600)
    base = workdir / name
    argv = [str(cli), str(base), "--iso", str(iso), "--password-file", str(password_file), "--hostname", HOSTNAME,
            "--json", *extra]  # fmt: skip
    started = time.monotonic()
    most = 0
    with subprocess.Popen(as_user(user, workdir, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(child.stdout.read() if child.stdout else ""))
        err: list[str] = []
        err_reader = threading.Thread(target=lambda: err.append(child.stderr.read() if child.stderr else ""))
        reader.start()
        err_reader.start()
        # Sample the process list while it runs: one QEMU at a time, never two.
        while child.poll() is None and time.monotonic() - started < 2400:
            most = max(most, len(named(box_processes(user, base), "qemu-system-x86_64")))
            time.sleep(0.5)
        reader.join()
        err_reader.join()
    TIMES[f"provision-arch ./{name} {' '.join(extra)} (install)"] = time.monotonic() - started
    result = subprocess.CompletedProcess(argv, child.returncode, "".join(out), "".join(err))
    print(result.stderr)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    events = [json.loads(line) for line in result.stdout.splitlines()]
    return Installed(base, result, events, most)


@pytest.fixture(scope="module")
def installed(user: E2EUser, cli: Path, workdir: Path, standin_iso: Path) -> Installed:
    """The install every test below checks: the default way."""
    return install_as(user, cli, workdir, standin_iso, "base")


@pytest.fixture(scope="module")
def other_way(user: E2EUser, cli: Path, workdir: Path, standin_iso: Path, installed: Installed) -> Installed:
    """The same options, the tree sent the other way (stream if the default is 9p, and the reverse)."""
    default = Config.__dataclass_fields__["install_via"].default
    other = InstallVia.NINEP if default is InstallVia.STREAM else InstallVia.STREAM
    return install_as(user, cli, workdir, standin_iso, f"base-{other.value}", "--install-via", other.value)


# pacman-key --init makes a new key per install and names two files after it.
PER_KEY = re.compile(r"etc/pacman\.d/gnupg/(openpgp-revocs\.d|private-keys-v1\.d)/[0-9A-F]+\.(rev|key)$")
# Files whose content differs between any two installs, whichever way: random keys (pacman's
# keyring), the password hash's salt, install dates and times, the initramfs (cpio mtimes),
# ldconfig's aux-cache (it records each library's inode and ctime), and the machine id
# (systemd's install scriptlet makes a random one, as on Arch).
DIFFER_ANYWAY = ("etc/shadow", "var/log/pacman.log", "boot/initramfs-linux.img", "boot/initramfs-linux-fallback.img",
                 "var/cache/ldconfig/aux-cache", "etc/machine-id")  # fmt: skip


def test_stream_and_9p_installs_give_the_same_tree(installed: Installed, other_way: Installed) -> None:
    """Entry by entry: type, mode, uid, gid, size, content, link target, xattrs (ACLs and capabilities among them)."""
    def content_skips(root: Path) -> tuple[str, ...]:
        variable = [*root.glob("etc/pacman.d/gnupg/**/*"), *root.glob("var/lib/pacman/local/*/desc")]
        return (*DIFFER_ANYWAY, *(str(path.relative_to(root)) for path in variable))

    def compared(root: Path) -> dict[str, Entry]:
        entries = tree(root, content_skip=content_skips(root))
        # pacman-key --init makes a new key per install, and names two files after it.
        return {name: entry for name, entry in entries.items() if not PER_KEY.match(name)}

    one, two = compared(installed.base), compared(other_way.base)
    assert len(one) > 100
    found = differences(one, two)
    assert found == [], "\n".join(found)
    for done in (installed, other_way):
        via = "stream" if any(e["type"] == "step-started" and e["step"] == "stream" for e in done.events) else "9p"
        TIMES[f"install wall (result event), --install-via {via}"] = done.events[-1]["seconds"]


def test_install_succeeds_with_one_qemu_and_every_step(installed: Installed) -> None:
    assert installed.most_qemus == 1, f"{installed.most_qemus} QEMU processes ran at once"
    started = [e["step"] for e in installed.events if e["type"] == "step-started"]
    finished = {e["step"]: e["status"] for e in installed.events if e["type"] == "step-finished"}
    guest = [step.name for step in STEPS if step.enabled(build({"target": installed.base}))]
    unpack = ["unpack"] if "stream" in guest else []
    assert started == ["preflight", "read-iso", "stage", "boot", *guest, "poweroff", *unpack, "manifest"]
    assert set(finished.values()) == {"ok"} and set(finished) == set(started)
    result = installed.events[-1]
    assert result["type"] == "result" and result["paths"]["target"] == str(installed.base)


def test_step_times_account_for_the_wall_time(installed: Installed) -> None:
    """The step table is honest: its sum is the run's wall time, within 2 %."""
    steps = sum(e["seconds"] for e in installed.events if e["type"] == "step-finished")
    wall = installed.events[-1]["seconds"]
    TIMES["install wall time (from the result event)"] = wall
    TIMES["install sum of step times"] = steps
    assert abs(wall - steps) <= 0.02 * wall, f"steps {steps:.1f} s vs wall {wall:.1f} s"


def test_ownership_lands_in_the_users_ids(installed: Installed, user: E2EUser) -> None:
    base = installed.base
    for path in ("etc/hostname", "etc/mkinitcpio.conf", "boot/initramfs-linux.img", "usr/bin"):
        stat = (base / path).lstat()
        assert (stat.st_uid, stat.st_gid) == (user.uid, user.gid), path


def test_rendered_files_and_enabled_services(installed: Installed) -> None:
    base = installed.base
    cfg = build({"target": base, "hostname": HOSTNAME})
    for path, content in rootfs_files(cfg).items():
        assert (base / str(path).lstrip("/")).read_text() == content, path
    # Each unit's [Install] section names its target: multi-user for networkd, sysinit for resolved.
    for unit in ("systemd-networkd.service", "systemd-resolved.service"):
        # Not glob(): the links are absolute, so they dangle on the host and glob skips them.
        links = [wants / unit for wants in (base / "etc/systemd/system").glob("*.target.wants") if (wants / unit).is_symlink()]
        assert links, unit
        # Absolute links into the box (they dangle on the host): resolve them inside its root,
        # where /lib is usr/lib as on Arch, whichever of the two systemctl wrote.
        unit_file = (base / "usr/lib/systemd/system" / unit).resolve()
        assert all((base / os.readlink(link).lstrip("/")).resolve() == unit_file for link in links), unit
    assert os.readlink(base / "etc/resolv.conf") == "/run/systemd/resolve/stub-resolv.conf"
    assert os.readlink(base / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert "en_US.UTF-8 UTF-8" in (base / "etc/locale.gen").read_text().splitlines()
    assert (base / "boot/initramfs-linux.img").stat().st_size > 0


def test_password_set_from_the_hash_and_never_written_in_clear(installed: Installed) -> None:
    base, result = installed.base, installed.result
    root_entry = next(line for line in (base / "etc/shadow").read_text().splitlines() if line.startswith("root:"))
    hashed = root_entry.split(":")[1]
    assert hashed.startswith("$6$") and verifies(PASSWORD, hashed)
    transcript = user_workspace(base).transcript
    text = transcript.read_text(errors="replace")
    assert "archiso login:" in text and "pacstrap" in text
    for leak in (PASSWORD, hashed):
        assert leak not in text
        assert leak not in result.stdout + result.stderr
    assert not list(base.rglob("*.chpasswd")), "a staged hash outlived the run"
    assert not list(user_workspace(base).root.rglob("*.chpasswd")), "a staged hash outlived the run"


def test_boot_the_result_and_log_in(
    installed: Installed, user: E2EUser, cli: Path, workdir: Path
) -> None:
    base = installed.base
    argv = as_user(user, workdir, [str(cli), "boot", str(base), "--accel", "tcg"])
    started = time.monotonic()
    child = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", codec_errors="replace", timeout=300)
    try:
        child.expect(f"{HOSTNAME} login: ")
        TIMES["boot to login"] = time.monotonic() - started
        child.send("root\r")
        child.expect("Password: ")
        child.send(PASSWORD + "\r")
        child.expect("# ")
        child.send("echo HOST=$(hostname) ROOT9P=$(grep -c '^fsRoot / 9p ' /proc/mounts)\r")
        child.expect(r"HOST=(\S+) ROOT9P=(\d+)\r*\n")
        match = child.match
        assert isinstance(match, re.Match)
        assert (match[1], match[2]) == (HOSTNAME, "1")
        # A file the guest gives uid 1000 must land at subuid base + 999 on the host.
        child.send("touch /root/uid1000 && chown 1000:1000 /root/uid1000 && echo CHOWN-$((40+2))\r")
        child.expect("CHOWN-42")
        child.send("poweroff\r")
        child.expect(pexpect.EOF, timeout=120)
    finally:
        child.close(force=True)
    TIMES["boot, log in, power off"] = time.monotonic() - started
    stat = (base / "root/uid1000").stat()
    assert (stat.st_uid, stat.st_gid) == (user.subuid + 999, user.subgid + 999)


def test_a_frozen_init_ends_run_within_seconds(installed: Installed, user: E2EUser, cli: Path, workdir: Path) -> None:
    """systemd 255+ runs every unit through systemd-executor; without it PID 1 prints "Freezing
    execution." and hangs for ever. `run` must end there, not wait out its boot timeout."""
    executor = installed.base / "usr/lib/systemd/systemd-executor"
    if not executor.exists():
        pytest.skip("the box's systemd has no systemd-executor (older than 255)")
    aside = executor.with_name("systemd-executor.aside")
    executor.rename(aside)
    try:
        started = time.monotonic()
        argv = [str(cli), "run", str(installed.base), "--accel", "tcg", "--json", "--", "true"]
        result = subprocess.run(as_user(user, workdir, argv), capture_output=True, text=True, timeout=900, check=False)
        waited = time.monotonic() - started
    finally:
        aside.rename(executor)
    TIMES["run on a box whose PID 1 freezes (boot to the error)"] = waited
    error = json.loads(result.stdout.splitlines()[-1])
    assert result.returncode == ExitCode.BOOT, result.stderr[-2000:]
    assert "Freezing execution" in error["message"], error
    assert waited < 300, f"{waited:.0f} s: the freeze did not end the wait"


def test_zz_report_phase_times(request: pytest.FixtureRequest) -> None:
    phases = {phase: seconds for phase, seconds in TIMES.items() if not phase.startswith(("devbox", "disk:"))}
    report(request, "end-to-end phase wall times (s)", phases)
    assert phases, "no phase ran"

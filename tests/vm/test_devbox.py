"""Issue 8 end to end: a dev box that works once booted, on the stand-in under real QEMU.

One install per module, as the unprivileged e2e user, from a config with a non-root user
who has sudo and an SSH key, sshd enabled and a command, pinned to a day of the stand-in's
archive served over HTTP (so the box's mirrorlist names a server the booted box reaches).
Then the box is booted with `provision-arch boot --config` (its [boot] table shares a host
directory read-only), `--share` (a writable one) and `--forward PORT:22` on QEMU's pc machine and
checked from inside over SSH: the shares are mounted, writable and read-only as asked,
the key logs in, `sudo -n true` works, PID 1 is systemd,
`systemctl is-system-running` says running, the machine id pacstrap made is kept, the root
is the 9p share mounted rw, the NIC our .network file matches has 10.0.2.15, resolv.conf
is resolved's stub, and `pacman -Syu`/`-S` installs a package from the server into the
9p root. Then `provision-arch run` returns 0 and a non-zero status faithfully, once on
the q35 machine, whose NIC has another name, with its address checked there too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pycdlib
import pytest

from provisioner.export import FRESH_MACHINE_ID, LEFT_OUT
from provisioner.manifest import installed_packages
from tests.helpers import report
from tests.standin.archive import DAY2
from tests.standin.mirror import Mirror
from tests.tree_view import archived
from tests.vm.unprivileged import TIMES, E2EUser, as_user, user_workspace

pytestmark = pytest.mark.vm

HOSTNAME = "devbox-e2e"
PASSWORD = "devbox-Pass-w0rd"  # the throwaway box's root password
PACKAGES = ["base", "linux", "mkinitcpio", "openssh", "sudo", "pacman"]
EXTRA = "vim"  # installed with pacman inside the booted box
SYSTEMD = "usr/lib/systemd/systemd"
CONFIG = f"""
hostname = "{HOSTNAME}"
packages = {json.dumps(PACKAGES)}
services = ["sshd"]
commands = ["touch /root/made-by-a-command", "{{PLANT}}"]

[[users]]
name = "dev"
groups = ["wheel"]
sudo = true
authorized_keys_files = ["id_ed25519.pub"]

[boot]
shares = ["readonly:/mnt/ro:ro"]   # a config file shares read-only; the writable one is --share
"""


# A hostile command: links to the host user's files where the host keeps (or kept) its own,
# where `run` writes its script and where the stream is unpacked. In the guest they point at
# nothing; the host must not follow them once the tree is its.
PLANT = " && ".join([
    "mkdir -p /.provision-arch",
    *(f"ln -s @VICTIM@/file /.provision-arch/{name}" for name in ("console.log", "state.json", "stream.tar", "lock")),
    "ln -s @VICTIM@ /.provision-arch/stage", "ln -s @VICTIM@ /.provision-arch-run", "ln -s @VICTIM@ /.provision-arch-unpack",
])


# What the dev-box steps and `run` use in the installed system: coreutils' install (keys,
# sudoers), shadow's useradd, util-linux's runuser and systemd's run generator.
NEEDED_FILES = ("usr/bin/install", "usr/bin/useradd", "usr/bin/runuser",
                "usr/lib/systemd/system-generators/systemd-run-generator")  # fmt: skip


def repository(iso: Path) -> dict[str, set[str]]:
    """Each package of the stand-in's repository and the files it installs, from the
    <repo>.files databases on the ISO (members NAME-VER-REL/files)."""
    image = pycdlib.PyCdlib()
    image.open(str(iso))
    found: dict[str, set[str]] = {}
    try:
        for repo in ("core", "extra"):
            data = io.BytesIO()
            try:
                image.get_file_from_iso_fp(data, rr_path=f"/repo/{repo}/os/x86_64/{repo}.files")
            except pycdlib.pycdlibexception.PyCdlibException:
                continue
            data.seek(0)
            with tarfile.open(fileobj=data) as db:
                for member in db:
                    if member.name.endswith("/files") and (handle := db.extractfile(member)) is not None:
                        name = member.name.removesuffix("/files").rsplit("-", 2)[0]
                        lines = handle.read().decode().splitlines()
                        found[name] = {line for line in lines if line and not line.startswith("%")}
    finally:
        image.close()
    return found


@dataclass(frozen=True)
class Box:
    base: Path
    key: Path  # the private half of dev's key
    cli: Path
    user: E2EUser
    workdir: Path
    machine_id: str  # /etc/machine-id as the install left it, before any boot


@pytest.fixture(scope="module")
def devbox_iso(standin_iso: Path) -> Path:
    """The stand-in, checked before anything is set up: it must be able to build this box."""
    packages = repository(standin_iso)
    missing = sorted({*PACKAGES, EXTRA} - set(packages))
    assert not missing, f"the stand-in's repository has no {', '.join(missing)}"
    absent = sorted({*NEEDED_FILES, SYSTEMD} - set().union(*packages.values()))
    assert not absent, f"the stand-in's packages lack {', '.join(absent)}"
    assert shutil.which("ssh") and shutil.which("ssh-keygen"), "the host has no ssh client (make test-deps installs it)"
    return standin_iso


@pytest.fixture(scope="module")
def box(devbox_iso: Path, mirror: Mirror, user: E2EUser, cli: Path, workdir: Path) -> Box:
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "devbox-e2e", "-f", str(key)], check=True)
    (workdir / "id_ed25519.pub").chmod(0o644)  # read by the CLI, which runs as the e2e user
    config = workdir / "devbox.toml"
    victim = workdir / "victim"
    victim.mkdir()
    (victim / "file").write_text("the host's\n")
    os.chown(victim, user.uid, user.gid)
    os.chown(victim / "file", user.uid, user.gid)
    config.write_text(CONFIG.replace("{PLANT}", PLANT.replace("@VICTIM@", str(victim))))
    password = workdir / "root-password"
    password.write_text(PASSWORD + "\n")
    for name in ("shared", "readonly"):  # the [boot] table's shares, with a file from the host in each
        (workdir / name).mkdir()
        (workdir / name / "in").write_text(f"from the host's {name}\n")
    for path in (config, password, workdir / "shared", workdir / "shared/in", workdir / "readonly", workdir / "readonly/in"):
        os.chown(path, user.uid, user.gid)
    password.chmod(0o600)
    base = workdir / "base"
    argv = [str(cli), str(base), "--iso", str(devbox_iso), "--password-file", str(password), "--config", str(config),
            "--accel", "tcg", "--json", "--archive-url", mirror.guest_url, "--snapshot", DAY2.date.isoformat()]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(as_user(user, workdir, argv), capture_output=True, text=True, timeout=3600, check=False)
    TIMES["devbox: install"] = time.monotonic() - started
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    events = [json.loads(line) for line in result.stdout.splitlines()]
    steps = [e["step"] for e in events if e["type"] == "step-started"]
    assert steps[steps.index("password") + 1 :][:3] == ["users", "services", "command-1"]
    return Box(base, key, cli, user, workdir, (base / "etc/machine-id").read_text().strip())


# What the tests ask the booted box, over SSH as dev, in one boot.
CHECKS = {
    "who": "id -un; id -Gn; stat -c '%a %U' ~/.ssh ~/.ssh/authorized_keys",
    "sudo": "sudo -n true && sudo -n id -un",
    "pid1": "cat /proc/1/comm",
    "state": "timeout 200 systemctl is-system-running --wait",
    "failed": "systemctl --failed --no-pager --no-legend",
    "address": "ip -4 -o addr show scope global",
    "network": "networkctl status --no-pager \"$(ip -4 -o addr show scope global | awk '/ 10.0.2.15\\// {print $2}')\"",
    "resolv": "readlink /etc/resolv.conf; grep '^nameserver' /etc/resolv.conf",
    # Names resolved knows without the internet: its synthesized _gateway (QEMU's 10.0.2.2)
    # over D-Bus, and the host name through the stub listener.
    "resolved": f"resolvectl query _gateway && nslookup {HOSTNAME} 127.0.0.53",
    "command": "sudo -n test -e /root/made-by-a-command",
    "machine-id": "cat /etc/machine-id; sudo -n journalctl -b -o cat _PID=1 | grep -i 'first.boot' || true",
    "root": "findmnt -n -o SOURCE,FSTYPE,OPTIONS /",
    # The [boot] table's shares: the host user is root in the box, and :ro holds against root.
    "shared": "findmnt -n -o SOURCE,FSTYPE,OPTIONS /mnt/shared; cat /mnt/shared/in; "
              "sudo -n sh -c 'echo from the box > /mnt/shared/out'",
    "readonly": "findmnt -n -o SOURCE,FSTYPE,OPTIONS /mnt/ro; cat /mnt/ro/in; sudo -n touch /mnt/ro/out",
    # Last: it changes the box. The mirrorlist is the pinned day's, on the host's server.
    "pacman": f"sudo -n pacman -Sy --noconfirm {EXTRA} && pacman -Q {EXTRA}",
}


def ssh(port: int, key: Path, command: str, timeout: float = 260) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", "dev@127.0.0.1", "--", command]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def inside(box: Box) -> dict[str, subprocess.CompletedProcess[str]]:
    """Boot with `provision-arch boot --config` (its [boot] table's shares) and `--forward` to
    port 22 as the e2e user, wait until the key logs in, ask CHECKS, power off: the answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    argv = as_user(box.user, box.workdir, [str(box.cli), "boot", str(box.base), "--accel", "tcg", "--config",
                                           str(box.workdir / "devbox.toml"), "--forward", f"{port}:22",
                                           "--share", f"{box.workdir / 'shared'}:/mnt/shared"])  # fmt: skip
    started = time.monotonic()
    child = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", codec_errors="replace", timeout=600)
    with (box.workdir / "boot-console.log").open("a") as console:
        child.logfile_read = console
        try:
            child.expect(f"{HOSTNAME} login: ")
            TIMES["devbox: boot to login"] = time.monotonic() - started
            deadline = time.monotonic() + 300
            while (answer := ssh(port, box.key, "true", timeout=60)).returncode != 0:
                assert time.monotonic() < deadline, f"no SSH login with the key: {answer.stderr}"
                time.sleep(5)
            TIMES["devbox: boot to SSH login"] = time.monotonic() - started
            answers = {name: ssh(port, box.key, command) for name, command in CHECKS.items()}
            ssh(port, box.key, "sudo -n systemctl poweroff", timeout=60)
            child.expect(pexpect.EOF, timeout=180)
        finally:
            child.close(force=True)
    return answers


def test_the_key_logs_in_as_dev_and_sudo_needs_no_password(inside: dict[str, subprocess.CompletedProcess[str]]) -> None:
    assert inside["who"].returncode == 0, inside["who"].stderr
    name, groups, ssh_dir, keys = inside["who"].stdout.splitlines()
    assert name == "dev" and "wheel" in groups.split()
    assert (ssh_dir, keys) == ("700 dev", "600 dev")
    assert inside["sudo"].returncode == 0 and inside["sudo"].stdout.strip() == "root", inside["sudo"].stderr


def test_pid_1_is_systemd_and_the_system_is_running(inside: dict[str, subprocess.CompletedProcess[str]]) -> None:
    assert inside["pid1"].stdout.strip() == "systemd"
    assert inside["state"].stdout.strip() == "running", f"{inside['state'].stdout}; failed units:\n{inside['failed'].stdout}"


def test_the_matched_nic_has_qemus_address_and_resolv_conf_is_the_stub(
    inside: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    assert " 10.0.2.15/" in inside["address"].stdout, inside["address"].stdout
    network = inside["network"]
    assert "/etc/systemd/network/20-wired.network" in network.stdout, network.stdout + network.stderr
    assert inside["resolv"].stdout.splitlines() == ["/run/systemd/resolve/stub-resolv.conf", "nameserver 127.0.0.53"]
    resolved = inside["resolved"]
    assert resolved.returncode == 0 and "_gateway: 10.0.2.2" in resolved.stdout, resolved.stdout + resolved.stderr
    server, _, answer = resolved.stdout.partition("Name:")
    assert "127.0.0.53" in server and HOSTNAME in answer and "Address" in answer, resolved.stdout


def test_the_machine_id_is_pacstraps_and_the_root_is_the_9p_share_rw(
    inside: dict[str, subprocess.CompletedProcess[str]], box: Box
) -> None:
    made = box.machine_id
    assert len(made) == 32, "pacstrap (systemd's install scriptlet) made no /etc/machine-id"
    kept, *journal = inside["machine-id"].stdout.splitlines()
    assert kept == made, "the id changed"
    # systemd logs "Detected first boot." and then runs preset-all (a minute over 9p under TCG).
    assert not [line for line in journal if "Detected first boot" in line], journal
    assert inside["root"].stdout.split()[:2] == ["fsRoot", "9p"] and inside["root"].stdout.split()[2].startswith("rw,")


def test_the_boot_tables_shares_are_mounted_writable_and_read_only(
    inside: dict[str, subprocess.CompletedProcess[str]], box: Box
) -> None:
    mount, content = inside["shared"].stdout.splitlines()[:2]
    assert mount.split()[:2] == ["share1", "9p"] and mount.split()[2].startswith("rw,"), mount  # after the file's
    assert content == "from the host's shared" and inside["shared"].returncode == 0, inside["shared"].stderr
    written = box.workdir / "shared/out"
    assert written.read_text() == "from the box\n"
    assert written.stat().st_uid == box.user.uid, "the box's root is the host user on a share"
    mount, content = inside["readonly"].stdout.splitlines()[:2]
    assert mount.split()[:2] == ["share0", "9p"] and content == "from the host's readonly", inside["readonly"].stdout
    assert inside["readonly"].returncode != 0 and "Read-only file system" in inside["readonly"].stderr
    assert not (box.workdir / "readonly/out").exists()


def test_pacman_in_the_booted_box_installs_from_the_server(
    inside: dict[str, subprocess.CompletedProcess[str]], box: Box, mirror: Mirror
) -> None:
    assert inside["pacman"].returncode == 0, inside["pacman"].stdout + inside["pacman"].stderr
    assert inside["pacman"].stdout.splitlines()[-1].startswith(f"{EXTRA} "), inside["pacman"].stdout
    assert (box.base / "usr/bin" / EXTRA).exists(), "not in the 9p root"
    fetched = [r.path for r in mirror.requests() if f"/{EXTRA}-" in r.path and r.path.endswith(".pkg.tar.zst")]
    assert fetched and all(path.startswith(f"/{DAY2.path}/") for path in fetched), fetched


def test_pacstrap_ran_every_scriptlet_and_hook(box: Box) -> None:
    """pacman reports a failed install scriptlet or hook but still exits 0."""
    transcript = user_workspace(box.base).transcript.read_text(errors="replace")
    pacstrap = transcript.split("step pacstrap", 1)[-1].split("step configure", 1)[0]
    assert "error:" not in pacstrap and "failed" not in pacstrap, pacstrap[-3000:]
    assert "Creating system user accounts" in pacstrap


def test_the_command_ran_in_the_chroot(inside: dict[str, subprocess.CompletedProcess[str]]) -> None:
    assert inside["command"].returncode == 0, inside["command"].stderr


def provision_run(box: Box, *args: str) -> subprocess.CompletedProcess[str]:
    argv = as_user(box.user, box.workdir, [str(box.cli), "run", str(box.base), "--accel", "tcg", *args])
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    TIMES[f"devbox: run {' '.join(args)}"[:48]] = time.monotonic() - started
    return result


# On q35 the NIC is enp0s2 (ens3 on pc): the address shows the .network file matches it too.
ON_Q35 = (
    "id -un; echo to-stderr >&2; cat /mnt/ro/in; "
    "/usr/lib/systemd/systemd-networkd-wait-online --interface=enp0s2 --timeout=120 >/dev/null; "
    "ip -4 -o addr show dev enp0s2 scope global | awk '{print $2, $4}'"
)


def test_run_returns_zero_and_output_as_the_user_on_q35(box: Box, inside: dict[str, subprocess.CompletedProcess[str]]) -> None:
    """After the booted box's checks (it is powered off by then: one QEMU per directory)."""
    config = str(box.workdir / "devbox.toml")  # its [boot] table's shares are mounted for the command too
    result = provision_run(box, "--user", "dev", "--machine", "q35", "--config", config, "--", "sh", "-c", ON_Q35)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "dev\nto-stderr\nfrom the host's readonly\nenp0s2 10.0.2.15/24\n"


def test_run_returns_a_non_zero_status_faithfully(box: Box, inside: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = provision_run(box, "--json", "--", "sh", "-c", "echo about to fail; exit 7")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 7, result.stderr
    assert events[-1]["type"] == "result" and events[-1]["exit_status"] == 7
    assert "".join(e["text"] for e in events if e["type"] == "output") == "about to fail\n"


def test_the_links_the_box_planted_reached_nothing_on_the_host(
    box: Box, inside: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    """After the install, a boot and two runs over a tree whose root planted links to the host."""
    victim = box.workdir / "victim"
    assert sorted(path.name for path in victim.iterdir()) == ["file"]
    assert (victim / "file").read_text() == "the host's\n"
    assert (box.base / ".provision-arch/console.log").is_symlink(), "the box keeps what its root made"
    assert not os.path.lexists(box.base / ".provision-arch-run"), "run replaced the planted link and removed its own"


def tree_digest(root: Path) -> str:
    """Every entry of the tree: its path, type, mode, owner, size, mtime, link target and
    content; but for /.provision-arch-run, where a boot removes what the box planted (the
    link PLANT made, when this test runs before the runs that remove it)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.relative_to(root).parts[0] != ".provision-arch-run"):
        status = path.lstat()
        entry = [str(path.relative_to(root)), status.st_mode, status.st_uid, status.st_gid, status.st_size, status.st_mtime_ns]
        digest.update(repr(entry).encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# A throwaway run's work: a 1 GiB file on the root and a change under /etc, then what the
# box sees of its root (an overlay with room for it; the guest has 1 GiB of RAM).
THROWAWAY = (
    "dd if=/dev/zero of=/var/tmp/big bs=1M count=1024 status=none && echo 'throwaway' >> /etc/motd && "
    "stat -c %s /var/tmp/big && findmnt -n -o FSTYPE / && tail -n 1 /etc/motd"
)


def test_zz_throwaway_runs_at_once_leave_the_tree_as_it_was(
    box: Box, inside: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    """Two `run --ephemeral` at once on one box, each writing 1 GiB and touching /etc, in
    1 GiB of guest RAM: both succeed, and the tree is byte for byte what it was."""
    before = tree_digest(box.base)
    argv = as_user(box.user, box.workdir, [str(box.cli), "run", str(box.base), "--accel", "tcg", "--ephemeral",
                                           "--memory", "1024", "--", "sh", "-c", THROWAWAY])  # fmt: skip
    started = time.monotonic()
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run, *run.communicate(timeout=1800)) for run in runs]
    TIMES["devbox: two run --ephemeral at once (1 GiB each)"] = time.monotonic() - started
    for run, stdout, stderr in results:
        assert run.returncode == 0, stderr[-3000:]
        assert stdout.splitlines() == [str(1 << 30), "overlay", "throwaway"], stdout
    assert tree_digest(box.base) == before, "a throwaway run changed the tree"
    assert not list(user_workspace(box.base).root.glob("throwaway/*/disk.img")), "a scratch disk outlived its run"


# The box's config, changed for `update`: a package more, dev replaced by ops (with a key and
# sudo), a file, and a command; the snapshot and archive stay those of the install.
ADDED = "man-pages"
UPDATED = f"""
hostname = "{HOSTNAME}"
packages = {json.dumps([*PACKAGES, ADDED])}
services = ["sshd"]
commands = ["touch /root/made-by-the-update"]

[[users]]
name = "ops"
sudo = true
authorized_keys_files = ["id_ed25519.pub"]

[[files]]
source = "issue.txt"
path = "/etc/issue"
"""
# pacman -Q through cat: on a terminal (run's output is the console) pacman hides the cursor first.
AS_OPS = (
    "id -un; tail -n 1 ~/.ssh/authorized_keys; cat /etc/issue; pacman -Q {added} | cat; "
    "getent passwd dev || echo no-dev; ls -1 /home"
)


def test_zz_update_adds_a_package_a_user_with_a_key_and_a_file_and_removes_a_user(
    box: Box, devbox_iso: Path, mirror: Mirror, inside: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    """`update --config` with the changed file, as the unprivileged user; then the box boots
    with it: ops logs in with the key's account, dev is gone (its home stays), and the
    manifest is the box's pacman database."""
    config, issue = box.workdir / "updated.toml", box.workdir / "issue.txt"
    config.write_text(UPDATED)
    issue.write_text("updated by provision-arch update\n")
    for path in (config, issue):
        os.chown(path, box.user.uid, box.user.gid)
    argv = [str(box.cli), "update", str(box.base), "--iso", str(devbox_iso), "--config", str(config), "--accel", "tcg",
            "--json", "--archive-url", mirror.guest_url, "--snapshot", DAY2.date.isoformat()]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(as_user(box.user, box.workdir, argv), capture_output=True, text=True, timeout=3600, check=False)
    TIMES["devbox: update"] = time.monotonic() - started
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    events = [json.loads(line) for line in result.stdout.splitlines()]
    for event in events:
        if event["type"] == "step-finished":
            TIMES[f"devbox: update step {event['step']}"] = float(event["seconds"])
    steps = [e["step"] for e in events if e["type"] == "step-started"]
    assert steps[steps.index("upgrade") :] == ["upgrade", "configure", "initramfs", "users", "accounts", "files",
                                               "services", "command-1", "unmount", "poweroff", "manifest"]  # fmt: skip
    manifest = json.loads(user_workspace(box.base).manifest.read_text())
    packages = installed_packages(box.base)
    assert manifest["packages"] == packages and ADDED in packages
    ran = provision_run(box, "--user", "ops", "--", "sh", "-c", AS_OPS.format(added=ADDED))
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[:3] == ["ops", (box.workdir / "id_ed25519.pub").read_text().strip(), "updated by provision-arch update"]
    assert lines[3] == f"{ADDED} {packages[ADDED]}"
    assert lines[4] == "no-dev" and "dev" in lines[5:] and "ops" in lines[5:], ran.stdout  # dev's home stays


# Rootless podman as the e2e user. runc and cgroupfs: crun refuses a host with hybrid cgroups.
CONTAINERS_CONF = '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'


def as_box_user(box: Box, argv: list[str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """A command as the e2e user, with a runtime directory for podman, in the user's work
    directory (podman fails where the user cannot enter its working directory: a checkout
    closed to others)."""
    run_dir = box.workdir / "run"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(run_dir, box.user.uid, box.user.gid)
    full = as_user(box.user, box.workdir, ["env", f"XDG_RUNTIME_DIR={run_dir}", *argv])
    return subprocess.run(full, cwd=box.workdir, capture_output=True, text=True, timeout=timeout, check=False)


def exported(box: Box, fmt: str) -> Path:
    output = box.workdir / f"export.{fmt}"
    started = time.monotonic()
    result = as_box_user(box, [str(box.cli), "export", str(box.base), "--format", fmt, "--output", str(output)])
    TIMES[f"devbox: export --format {fmt}"] = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def box_view(box: Box) -> dict[str, list[object]]:
    """The tree as the box sees it (its ids, in the user's namespace), without what an export leaves out."""
    script = box.workdir / "tree_view.py"
    shutil.copyfile(Path(__file__).parents[1] / "tree_view.py", script)
    script.chmod(0o644)
    argv = ["unshare", "--map-auto", "--map-root-user", "python3", str(script), str(box.base), *LEFT_OUT, FRESH_MACHINE_ID]
    result = as_box_user(box, argv)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(line) for line in result.stdout.splitlines())


def test_zz_export_tar_and_oci_keep_every_entry_and_run_in_rootless_podman(box: Box) -> None:
    """Both exports as the unprivileged user: every entry's owner, mode, link, attributes and
    content match the tree as the box sees it; podman (rootless) imports the tarball and runs
    the OCI layout, skopeo reads it, and each names Arch."""
    conf = box.workdir / ".config/containers/containers.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(CONTAINERS_CONF)
    for path in (box.workdir / ".config", conf.parent, conf):
        os.chown(path, box.user.uid, box.user.gid)
    tar = exported(box, "tar")
    expected = box_view(box)
    with tarfile.open(tar) as opened:
        got = archived(opened)
    assert got.pop("./" + FRESH_MACHINE_ID)[6] == hashlib.sha256(b"").hexdigest()
    differ = sorted(name for name in set(got) | set(expected) if got.get(name) != expected.get(name))
    assert not differ, f"{len(differ)} entries differ, e.g. {[(n, got.get(n), expected.get(n)) for n in differ[:3]]}"
    imported = as_box_user(box, ["podman", "import", str(tar), "provision-arch-e2e:tar"])
    assert imported.returncode == 0, imported.stderr[-3000:]
    ran = as_box_user(box, ["podman", "run", "--rm", "--network", "none", "provision-arch-e2e:tar", "cat", "/etc/os-release"])
    assert ran.returncode == 0 and 'NAME="Arch Linux"' in ran.stdout, ran.stderr[-3000:]
    layout = exported(box, "oci")
    inspected = as_box_user(box, ["skopeo", "inspect", f"oci:{layout}"])
    assert inspected.returncode == 0, inspected.stderr[-3000:]
    assert (json.loads(inspected.stdout)["Architecture"], json.loads(inspected.stdout)["Os"]) == ("amd64", "linux")
    ran = as_box_user(box, ["podman", "run", "--rm", "--network", "none", f"oci:{layout}", "cat", "/etc/os-release"])
    assert ran.returncode == 0 and 'NAME="Arch Linux"' in ran.stdout, ran.stderr[-3000:]
    assert tar.with_name("export.tar.manifest.json").exists() and layout.with_name("export.oci.manifest.json").exists()


def test_zz_report_phase_times(request: pytest.FixtureRequest) -> None:
    phases = {phase: seconds for phase, seconds in TIMES.items() if phase.startswith("devbox")}
    report(request, "dev box phase wall times (s)", phases)
    assert phases, "no phase ran"

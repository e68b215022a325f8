"""The offline stand-in ISO behaves like the real Arch ISO (ARCHISO.md).

Each boot under TCG costs about half a minute, so the happy path shares one
VM per module (booted with `mirror=` and a 9p share, which the default path
does not need either way) and the failure paths boot only as far as they go.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pexpect
import pytest

pytestmark = pytest.mark.vm

# The element type pexpect's stubs accept in a pattern list (lists are
# invariant, so the annotation must name the whole union).
Pattern = re.Pattern[str] | re.Pattern[bytes] | str | bytes | type[pexpect.EOF] | type[pexpect.TIMEOUT]
UUID_RE = re.compile(r"^\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}$")
LABEL_RE = re.compile(r"^ARCH_\d{6}$")
# Boot failures the console can show instead of what a wait expects.
FAILURES = [r"Kernel panic - not syncing", r"\[rootfs ~\]# ", r"emergency mode"]
# What provision-arch puts on the live kernel command line against the real ISO's
# gates (provisioner/qemu.py): the stand-in has the gates, so its happy path needs the
# same. Tests of the gates themselves boot without them.
PRODUCT_ARGS = ("systemd.show_status=false systemd.tty.term.console=dumb "
                "systemd.mask=systemd-time-wait-sync.service systemd.firstboot=off")  # fmt: skip
# A marker the echoed command line cannot contain: the command that sets the
# prompt splits it with an empty quote pair.
MARKER = "@@STANDIN@@"
SET_MARKER = 'PS1="@@STAN""DIN@@ "'


@dataclasses.dataclass(frozen=True)
class IsoInfo:
    label: str
    uuid: str
    kernel: pathlib.Path
    initramfs: pathlib.Path


def inspect_iso(iso: pathlib.Path, dest: pathlib.Path) -> IsoInfo:
    """Label, UUID and the extracted kernel/initramfs of an ISO, read the way
    the provisioner reads the real one: without a loop mount."""
    with iso.open("rb") as f:
        f.seek(0x8000)
        pvd = f.read(2048)
    assert pvd[1:6] == b"CD001", "no ISO 9660 primary volume descriptor at 0x8000"
    label = pvd[40:72].decode("ascii").rstrip(" ")
    listing = subprocess.run(
        ["xorriso", "-indev", str(iso), "-find", "/boot", "-name", "*.uuid"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    uuids = re.findall(r"/boot/([^'/]+)\.uuid", listing)
    assert len(uuids) == 1, listing
    dest.mkdir(parents=True, exist_ok=True)
    kernel, initramfs = dest / "vmlinuz-linux", dest / "initramfs-linux.img"
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso),
         "-extract", "/arch/boot/x86_64/vmlinuz-linux", str(kernel),
         "-extract", "/arch/boot/x86_64/initramfs-linux.img", str(initramfs)],
        stdin=subprocess.DEVNULL, capture_output=True, check=True,
    )  # fmt: skip
    return IsoInfo(label=label, uuid=uuids[0], kernel=kernel, initramfs=initramfs)


class Guest:
    """One QEMU guest on a pexpect-driven serial console with a transcript."""

    def __init__(self, iso: pathlib.Path, info: IsoInfo, workdir: pathlib.Path, append: str,
                 share: pathlib.Path | None = None) -> None:  # fmt: skip
        self.transcript = workdir / "console.log"
        cmd = [
            "qemu-system-x86_64",
            "-accel", "tcg",
            "-m", "2048",
            "-smp", "2",
            "-kernel", str(info.kernel),
            "-initrd", str(info.initramfs),
            "-cdrom", str(iso),
            "-append", append,
            "-nographic",
            "-serial", "stdio",
            "-monitor", "none",
            "-no-reboot",
            "-nic", "user,model=virtio-net-pci",
        ]  # fmt: skip
        if share is not None:
            path = str(share).replace(",", ",,")
            cmd += ["-virtfs", f"local,path={path},mount_tag=host,security_model=none,id=host"]
        self.started = time.monotonic()
        self._log = self.transcript.open("wb")
        self.console = pexpect.spawn(cmd[0], cmd[1:], logfile=self._log, timeout=60)

    def expect(self, pattern: str | bytes, timeout: float) -> bytes:
        """Wait for the literal text `pattern`; a failure pattern, EOF or the
        timeout fails the test with the console tail and the transcript path."""
        literal = pattern.encode() if isinstance(pattern, str) else pattern
        wanted = re.escape(literal)
        patterns: list[Pattern] = [wanted]
        patterns += [f.encode() for f in FAILURES if f.encode() != wanted]
        patterns += [pexpect.EOF, pexpect.TIMEOUT]
        index = self.console.expect(patterns, timeout=timeout)
        if index != 0:
            before = self.console.before
            tail = before[-2000:] if isinstance(before, bytes) else b""
            pytest.fail(
                f"waiting for {wanted!r}: got {patterns[index]!r} instead\n"
                f"transcript: {self.transcript}\n--- console tail ---\n"
                f"{tail.decode(errors='replace')}"
            )
        before = self.console.before
        return before if isinstance(before, bytes) else b""

    def send(self, line: str) -> None:
        self.console.sendline(line.encode())

    def close(self) -> None:
        if self.console.isalive():
            self.console.terminate(force=True)
        self._log.close()


@dataclasses.dataclass
class LiveSession:
    """The happy-path guest after login, plus what the login showed."""

    guest: Guest
    info: IsoInfo
    share: pathlib.Path
    mirror: str
    seconds_to_login_prompt: float
    boot_output: bytes
    login_output: bytes
    zsh_prompts: list[bytes]

    def run(self, command: str, timeout: float = 120) -> str:
        """Run a command in the guest's bash and return its output."""
        self.guest.send(command)
        out = self.guest.expect(MARKER, timeout=timeout)
        return out.decode(errors="replace").replace("\r", "")


@pytest.fixture(scope="module")
def iso_info(standin_iso: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> IsoInfo:
    return inspect_iso(standin_iso, tmp_path_factory.mktemp("boot"))


@pytest.fixture(scope="module")
def live(standin_iso: pathlib.Path, iso_info: IsoInfo,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSession]:  # fmt: skip
    workdir = tmp_path_factory.mktemp("live")
    share = workdir / "share"
    share.mkdir()
    (share / "from-host").write_text("hello from the host\n")
    # A trailing slash checks that choose-mirror strips it; the URL is the
    # repository baked into the ISO, so pacman still works offline after it.
    mirror = "file:///run/archiso/bootmnt/repo/"
    append = f"archisobasedir=arch archisosearchuuid={iso_info.uuid} console=ttyS0,115200 mirror={mirror} {PRODUCT_ARGS}"
    guest = Guest(standin_iso, iso_info, workdir, append, share=share)
    try:
        boot_output = guest.expect("archiso login: ", timeout=240)
        seconds = time.monotonic() - guest.started
        print(f"\nstand-in boot to login prompt: {seconds:.1f}s", file=sys.stderr)
        guest.send("root")
        # The first prompt ends with zsh switching bracketed paste on.
        login_output = guest.expect("\x1b[?2004h", timeout=60)
        prompts = [login_output[-400:]]
        # A failing command: the next prompt must carry its status in red.
        guest.send("false")
        prompts.append(guest.expect("\x1b[?2004h", timeout=30)[-400:])
        # A PS1 set by the user must not survive the next precmd.
        guest.send("PS1='plain> '")
        prompts.append(guest.expect("\x1b[?2004h", timeout=30)[-400:])
        # Leave zsh for a plain bash with a marker prompt, as drivers do.
        guest.send("exec env TERM=dumb PAGER=cat SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 "
                   "bash --norc --noprofile")  # fmt: skip
        guest.expect("bash-5.2# ", timeout=30)
        guest.send(f"bind 'set enable-bracketed-paste off'; stty -echo; {SET_MARKER}")
        guest.expect(MARKER, timeout=30)
        yield LiveSession(guest, iso_info, share, mirror, seconds, boot_output, login_output, prompts)
    finally:
        guest.close()


def test_iso_layout_matches_the_real_iso(standin_iso: pathlib.Path, iso_info: IsoInfo) -> None:
    assert LABEL_RE.match(iso_info.label), iso_info.label
    assert UUID_RE.match(iso_info.uuid), iso_info.uuid
    # The label's year and month are those of the build time in the UUID.
    assert iso_info.label == "ARCH_" + iso_info.uuid[:4] + iso_info.uuid[5:7]
    assert iso_info.kernel.read_bytes()[0x202:0x206] == b"HdrS", "not a bzImage"
    assert iso_info.initramfs.stat().st_size > 0
    files = subprocess.run(
        ["xorriso", "-indev", str(standin_iso), "-find", "/", "-type", "f"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for path in ("/arch/x86_64/airootfs.sfs", "/repo/core/os/x86_64/core.db.tar.gz",
                 "/repo/extra/os/x86_64/extra.db.tar.gz"):  # fmt: skip
        assert f"'{path}'" in files, path
    assert standin_iso.stat().st_mode & 0o004, "the ISO must be world-readable"


def test_root_logs_in_without_password_into_zsh_with_colour_prompt(live: LiveSession) -> None:
    assert live.seconds_to_login_prompt < 240
    assert b"Password:" not in live.login_output
    # The motd's raw colour escapes, then a zsh prompt with colours, the
    # host name, and bracketed paste switched on.
    assert b"\x1b[1;37m" in live.login_output
    first = live.zsh_prompts[0]
    assert b"\x1b[" in first and b"@archiso" in first, first
    assert b"# \x1b[K\x1b[?2004h" in first + b"\x1b[?2004h", first


def test_zsh_prompt_shows_exit_code_and_is_rebuilt(live: LiveSession) -> None:
    after_false = live.zsh_prompts[1]
    assert b"\x1b[31m1\x1b[39m" in after_false, after_false
    # The echoed command contains "plain> "; the prompt drawn after it (past
    # the last newline) must not.
    after_ps1 = live.zsh_prompts[2].rsplit(b"\n", 1)[-1]
    assert b"@archiso" in after_ps1 and b"plain> " not in after_ps1, after_ps1


def test_live_system_identity_and_mounts(live: LiveSession) -> None:
    assert live.run("hostname").strip().endswith("archiso")
    mounts = live.run("findmnt -rn -o TARGET,FSTYPE,OPTIONS")
    assert re.search(r"^/run/archiso/bootmnt iso9660 ", mounts, re.M), mounts
    assert re.search(r"^/ overlay ", mounts, re.M), mounts
    cow = re.search(r"^/run/archiso/cowspace tmpfs \S*size=(\d+)k", mounts, re.M)
    assert cow is not None and int(cow.group(1)) == 256 * 1024, mounts


def test_pacman_init_becomes_active(live: LiveSession) -> None:
    start = time.monotonic()
    state = ""
    while time.monotonic() - start < 600:
        state = live.run("systemctl is-active pacman-init.service").strip().splitlines()[-1]
        if state in ("active", "failed"):
            break
        time.sleep(2)
    print(f"\npacman-init active {time.monotonic() - start:.1f}s after login", file=sys.stderr)
    assert state == "active", live.run("journalctl -b -u pacman-init.service --no-pager | tail -20")
    started = live.run(
        "systemctl show -P ExecMainStartTimestampMonotonic -P ExecMainExitTimestampMonotonic pacman-init.service"
    ).split()
    print(f"pacman-init ran {(int(started[1]) - int(started[0])) / 1e6:.1f}s", file=sys.stderr)
    keys = live.run("pacman-key --list-keys 2>/dev/null | grep -c '^pub'").strip().splitlines()[-1]
    assert int(keys) > 1, "the keyring was not populated"


def test_mirror_parameter_rewrites_the_mirrorlist(live: LiveSession) -> None:
    mirrorlist = live.run("grep '^Server' /etc/pacman.d/mirrorlist").strip().splitlines()
    assert mirrorlist == ["Server = file:///run/archiso/bootmnt/repo/$repo/os/$arch"], mirrorlist
    # choose-mirror keeps the original list, which pointed into the ISO too.
    original = live.run("grep '^Server' /etc/pacman.d/mirrorlist.orig").strip().splitlines()
    assert original == ["Server = file:///run/archiso/bootmnt/repo/$repo/os/$arch"], original
    comment = live.run("head -1 /etc/pacman.d/mirrorlist")
    assert "kernel command line" in comment, comment


def test_pacman_lists_the_test_repository(live: LiveSession) -> None:
    sync = live.run("pacman -Sy --noprogressbar >/dev/null 2>&1; echo rc=$?")
    assert "rc=0" in sync, sync
    core = live.run("pacman -Sl --color never core").split()
    for name in ("base", "linux", "mkinitcpio", "base-devel", "archlinux-keyring"):
        assert name in core, core
    extra = live.run("pacman -Sl --color never extra").split()
    for name in ("vim", "man-db", "man-pages"):
        assert name in extra, extra


def test_9p_share_mounts_with_modprobe(live: LiveSession) -> None:
    out = live.run(
        "mkdir -p /mnt/host && mount -t 9p -o trans=virtio,version=9p2000.L host /mnt/host "
        "&& cat /mnt/host/from-host && echo written-by-guest > /mnt/host/from-guest; echo rc=$?"
    )
    assert "hello from the host" in out and "rc=0" in out, out
    assert (live.share / "from-guest").read_text() == "written-by-guest\n"


def test_archisolabel_finds_the_iso_and_firstboot_prompts(standin_iso: pathlib.Path, iso_info: IsoInfo,
                                                          tmp_path: pathlib.Path) -> None:  # fmt: skip
    """Without `systemd.firstboot=off`, the machine id `uninitialized` makes every live boot
    a first boot and systemd 257's firstboot stops the boot on the serial console: a
    welcome screen waiting for a key, then a keymap prompt (systemd#34490). A key and an
    empty answer get past it and the boot goes on."""
    append = f"archisobasedir=arch archisolabel={iso_info.label} console=ttyS0,115200 systemd.show_status=false"
    guest = Guest(standin_iso, iso_info, tmp_path, append)
    try:
        started = time.monotonic()
        guest.expect("-- Press any key to proceed --", timeout=240)
        print(f"\nfirstboot waits for a key {time.monotonic() - started:.1f}s after QEMU started", file=sys.stderr)
        time.sleep(1)
        guest.send("")
        guest.expect("keymap name or number", timeout=60)
        # The rest of the prompt line, then an empty answer (skip).
        time.sleep(1)
        guest.send("")
        guest.expect("archiso login: ", timeout=240)
    finally:
        guest.close()


def test_wrong_uuid_drops_to_the_rescue_shell(standin_iso: pathlib.Path, iso_info: IsoInfo,
                                             tmp_path: pathlib.Path) -> None:  # fmt: skip
    append = "archisobasedir=arch archisosearchuuid=1999-01-01-00-00-00-00 console=ttyS0,115200 rootdelay=3"
    guest = Guest(standin_iso, iso_info, tmp_path, append)
    try:
        # The rescue prompt is the success pattern here, so wait for it by
        # hand rather than through the failure list.
        index = guest.console.expect([rb"\[rootfs ~\]# ", b"archiso login: ", pexpect.EOF, pexpect.TIMEOUT], timeout=120)
        before = guest.console.before
        text = before.decode(errors="replace") if isinstance(before, bytes) else ""
        assert index == 0, f"no rescue shell; transcript {guest.transcript}\n{text[-2000:]}"
        assert re.search(r"ERROR: .*1999-01-01-00-00-00-00.* device did not show up", text), text
        # The shell is interactive.
        guest.send("echo $((6 * 7))")
        # The serial line ends lines with "\r\r\n"; the echoed command holds
        # "6 * 7", never "42" on a line of its own.
        index = guest.console.expect([rb"\n42\r+\n", pexpect.EOF, pexpect.TIMEOUT], timeout=30)
        assert index == 0, f"the rescue shell did not run a command; see {guest.transcript}"
    finally:
        guest.close()


def test_ip_dhcp_ends_in_the_rescue_shell(standin_iso: pathlib.Path, iso_info: IsoInfo,
                                         tmp_path: pathlib.Path) -> None:  # fmt: skip
    append = f"archisobasedir=arch archisosearchuuid={iso_info.uuid} console=ttyS0,115200 ip=dhcp"
    guest = Guest(standin_iso, iso_info, tmp_path, append)
    try:
        index = guest.console.expect([rb"\[rootfs ~\]# ", b"archiso login: ", pexpect.EOF, pexpect.TIMEOUT], timeout=120)
        assert index == 0, f"ip=dhcp did not end in the rescue shell; see {guest.transcript}"
    finally:
        guest.close()


def test_versions_of_todays_arch(live: LiveSession) -> None:
    """Debian 13's stack: Linux 6.12, systemd 257, pacman 7.0, OpenSSH 10, arch-install-scripts 28."""
    assert live.run("uname -r").strip().splitlines()[-1].startswith("6.12."), live.run("uname -r")
    assert re.search(r"\bsystemd 257\b", live.run("systemctl --version"))
    assert "Pacman v7.0" in live.run("pacman --version")
    assert re.search(r"OpenSSH_10\.", live.run("ssh -V 2>&1"))
    assert re.search(r"\b28-", live.run("dpkg-query -W -f '${Version}' arch-install-scripts; echo"))


def test_archiso_hook_polls_ten_seconds(live: LiveSession) -> None:
    text = live.boot_output.decode(errors="replace")
    assert re.search(r"Waiting 10 seconds for device /dev/disk/by-uuid/", text), text[-3000:]


def test_pacman_downloads_as_alpm_with_its_sandbox_on(live: LiveSession) -> None:
    assert live.run("pacman-conf DownloadUser").strip().splitlines()[-1] == "alpm"
    switches = live.run("grep -E '^[[:space:]]*DisableSandbox' /etc/pacman.conf; echo rc=$?")
    assert "rc=1" in switches, switches
    assert live.run("id -un alpm").strip().splitlines()[-1] == "alpm"
    # A download into a directory on the 9p share, as `pacstrap -c` does into the
    # provisioner's cache share: pacman's sandboxed child writes it as alpm.
    out = live.run(
        "mkdir -p /mnt/host && (mountpoint -q /mnt/host || mount -t 9p -o trans=virtio,version=9p2000.L "
        "host /mnt/host) && mkdir -p /mnt/host/pkg && pacman -Sy --noconfirm --noprogressbar >/dev/null 2>&1; "
        "pacman -Sw --noconfirm --noprogressbar --debug --cachedir /mnt/host/pkg man-pages 2>&1 "
        "| grep -iE 'sandbox|landlock|restricted|error|warning|download'; echo rc=${PIPESTATUS[0]}",
        timeout=300,
    )
    print(f"\n--- pacman -Sw onto the 9p share ---\n{out}", file=sys.stderr)
    assert "rc=0" in out, out
    assert list((live.share / "pkg").glob("man-pages-*.pkg.tar.zst")), out
    assert "landlock" in out.lower(), "pacman said nothing about its Landlock sandbox:\n" + out


def test_time_sync_gate_as_on_the_real_iso(live: LiveSession) -> None:
    """time-wait-sync is enabled (the product masks it at boot), pacman-init waits for
    time-sync.target, and no NTP server answers: unmasked, time-wait-sync never finishes."""
    wants = live.run("ls /run/archiso/sfs/airootfs/etc/systemd/system/sysinit.target.wants/")
    assert "systemd-time-wait-sync.service" in wants and "systemd-timesyncd.service" in wants, wants
    assert "time-sync.target" in live.run("systemctl show -P After pacman-init.service")
    assert live.run("timedatectl show -P NTPSynchronized").strip().splitlines()[-1] == "no"
    # The unit is masked by the kernel command line's generator (no runtime unmask): run
    # its program by hand; it waits for a synchronised clock for ever.
    out = live.run("timeout 20 /usr/lib/systemd/systemd-time-wait-sync; echo rc=$?", timeout=120)
    assert "rc=124" in out, out
    status = live.run("systemctl show -P StatusText systemd-timesyncd.service")
    print(f"\ntimesyncd: {status.strip()}", file=sys.stderr)


def test_machine_id_uninitialized_makes_a_first_boot(live: LiveSession) -> None:
    assert live.run("cat /run/archiso/sfs/airootfs/etc/machine-id").strip().splitlines()[-1] == "uninitialized"
    assert re.fullmatch(r"[0-9a-f]{32}", live.run("cat /etc/machine-id").strip().splitlines()[-1])
    firstboot = live.run("systemctl show -P ConditionResult systemd-firstboot.service")
    # Ran (condition met: a first boot) and `systemd.firstboot=off` made it do nothing.
    assert firstboot.strip().splitlines()[-1] == "yes", firstboot


def test_sshd_enabled_as_on_the_iso(live: LiveSession) -> None:
    # Arch's unit name, and host keys made at this boot by sshdgenkeys (the image has none):
    # sshd waits for them, minutes under TCG (the RSA key).
    assert live.run("systemctl is-enabled sshd.service").strip().splitlines()[-1] == "enabled"
    assert "sshdgenkeys.service" in live.run("systemctl show -P After sshd.service")
    waited = live.run("timeout 900 sh -c 'until systemctl is-active -q sshd.service; do sleep 2; done'; echo waited-$?", 960)
    assert waited.strip().splitlines()[-1] == "waited-0", waited
    assert live.run("systemctl is-active sshdgenkeys.service").strip().splitlines()[-1] == "active"
    keys = live.run("ls /etc/ssh/ | grep -c '^ssh_host_.*_key$'").strip().splitlines()[-1]
    assert keys == "3", keys

"""The install pipeline: host preparation, then the guest steps, in order, as data.

``STEPS`` is the one list that the progress display and the timing table read. Each step
is a small function of the console, the resolved config and its timeout. Values reach the
guest shell only through ``shlex.quote`` or as files staged on the 9p share.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from shlex import quote as q

from provisioner import preflight
from provisioner.acquire import DEFAULT_MIRROR, IsoSource, check_given_iso, obtain_iso
from provisioner.config import Accel, Config
from provisioner.console import Console, Transcript
from provisioner.errors import BootFailed, CommandFailed, ConsoleTimeout, HostError, ProvisionError
from provisioner.iso import BootFiles, read_boot_files
from provisioner.qemu import MOUNT_TAG, MSIZE, Hardware, Machine, install_argv, resolve_accel, wrap
from provisioner.render import rootfs_files
from provisioner.report import Progress

log = logging.getLogger(__name__)

MNT = "/mnt"
STATE = f"{MNT}/.provision-arch"  # the target's state directory as the guest sees it
# During the install the guest is the share's only writer, so the non-coherent `loose`
# cache is safe, and file creation is several times faster than the seed's cache=mmap.
INSTALL_MOUNT_OPTIONS = f"trans=virtio,version=9p2000.L,posixacl,msize={MSIZE},cache=loose"
SERVICES = ("systemd-networkd.service", "systemd-resolved.service")
KVM_FIRST_WORDS = 30.0  # seconds for a KVM guest's kernel to print its banner


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    action: Callable[[Console, Config, float], None]
    timeout: float  # seconds at --timeout-scale 1
    enabled: Callable[[Config], bool] = lambda cfg: True


# -- guest steps ---------------------------------------------------------------------------


def wait_keyring(con: Console, cfg: Config, timeout: float) -> None:
    """pacman-init waits for time sync, which never comes without NTP: bound the wait."""
    seconds = int(timeout * con.scale)
    loop = (
        "until systemctl is-active -q pacman-init.service; do systemctl is-failed -q pacman-init.service && exit 3; sleep 1; done"
    )
    result = con.run(f"timeout {seconds} sh -c {q(loop)}", timeout + 30)
    if result.status == 124:
        # Name what it is stuck behind: usually systemd-time-wait-sync (no NTP reachable).
        jobs = con.run("systemctl list-jobs --no-pager --no-legend", 60).output
        raise ConsoleTimeout(
            "ready pacman keyring (pacman-init.service)",
            seconds,
            f"pending systemd jobs:\n{jobs}",
            "pacman-init waits for time sync: let the VM reach NTP (QEMU user networking does, given internet), "
            "or raise --timeout-scale",
        )
    if result.status != 0:
        raise CommandFailed(
            "pacman-init.service",
            result.status,
            con.run("systemctl status --no-pager -l pacman-init.service").output,
            "the live system could not initialise its keyring; see the transcript",
        )


def mount_target(con: Console, cfg: Config, timeout: float) -> None:
    run_id = (cfg.state_dir / "run-id").read_text(encoding="ascii").strip()
    con.check(
        f"mkdir -p {MNT} && mount -t 9p -o {INSTALL_MOUNT_OPTIONS} {MOUNT_TAG} {MNT}",
        timeout,
        hint="the ISO's kernel could not mount the 9p share",
    )
    # Prove that /mnt is this run's target and not something else.
    con.check(f"grep -qx {q(run_id)} {STATE}/run-id", timeout, hint="the share mounted at /mnt is not the target directory")


def refresh_keyring(con: Console, cfg: Config, timeout: float) -> None:
    """Old ISOs carry old keys: update archlinux-keyring in the live system first."""
    con.check(
        "pacman -Sy --noconfirm archlinux-keyring",
        timeout,
        hint="the mirror could not be reached or the keyring did not install; try --mirror URL or --no-refresh-keyring",
    )


def pacstrap(con: Console, cfg: Config, timeout: float) -> None:
    packages = " ".join(q(name) for name in cfg.packages)
    con.check(
        f"pacstrap -K {MNT} {packages}",
        timeout,
        hint="see the pacman output above: a misspelt package (pacman -Ss NAME) or an unreachable mirror (--mirror URL)",
    )


def configure(con: Console, cfg: Config, timeout: float) -> None:
    zone = f"/usr/share/zoneinfo/{cfg.timezone}"
    con.check(f"test -f {q(MNT + zone)}", timeout, hint=f"there is no time zone {cfg.timezone!r}; see timedatectl list-timezones")
    con.check(f"ln -sf {q(zone)} {MNT}/etc/localtime", timeout)
    for path in rootfs_files(cfg):
        staged = f"{STATE}/rootfs{path}"
        con.check(f"install -D -m 0644 {q(staged)} {q(MNT + str(path))}", timeout)
    con.check(f"printf '%s\\n' {q(cfg.locale_gen_line)} >> {MNT}/etc/locale.gen", timeout)
    con.check(
        f"arch-chroot {MNT} locale-gen", timeout, hint=f"locale-gen rejected {cfg.locale!r}; see /etc/locale.gen for valid names"
    )
    con.check(f"arch-chroot {MNT} systemctl enable {' '.join(SERVICES)}", timeout)
    # Outside the chroot: arch-chroot bind-mounts its own resolv.conf over the target's.
    con.check(f"ln -sf /run/systemd/resolve/stub-resolv.conf {MNT}/etc/resolv.conf", timeout)


def build_initramfs(con: Console, cfg: Config, timeout: float) -> None:
    con.check(
        f"arch-chroot {MNT} mkinitcpio -P", timeout, hint="mkinitcpio failed; the rendered /etc/mkinitcpio.conf is in the target"
    )


def set_password(con: Console, cfg: Config, timeout: float) -> None:
    # The hash travels as a file on the share; only its path crosses the console.
    con.check(f"arch-chroot {MNT} chpasswd -e < {STATE}/root.chpasswd", timeout)
    con.check(f"rm -f {STATE}/root.chpasswd", timeout)


def unmount(con: Console, cfg: Config, timeout: float) -> None:
    con.check(f"sync && umount {MNT}", timeout, hint="something still uses the target; see the transcript")


STEPS: list[Step] = [
    Step("keyring", "Waiting for the live system's pacman keyring", wait_keyring, 600),
    Step("mount", "Mounting the target over 9p", mount_target, 60),
    Step(
        "refresh-keyring",
        "Updating archlinux-keyring in the live system",
        refresh_keyring,
        900,
        enabled=lambda cfg: cfg.refresh_keyring,
    ),
    Step("pacstrap", "Installing packages (pacstrap)", pacstrap, 7200),
    Step("configure", "Configuring the system (arch-chroot)", configure, 600),
    Step("initramfs", "Building the initramfs (mkinitcpio -P)", build_initramfs, 1800),
    Step("password", "Setting the root password", set_password, 120),
    Step("unmount", "Syncing and unmounting the target", unmount, 900),
]


# -- host side -----------------------------------------------------------------------------


def stage(cfg: Config) -> None:
    """Write what the guest needs into the target's state directory."""
    state = cfg.state_dir
    shutil.rmtree(state / "rootfs", ignore_errors=True)
    state.mkdir(parents=True, exist_ok=True)
    (state / "run-id").write_text(secrets.token_hex(8) + "\n", encoding="ascii")
    for path, content in rootfs_files(cfg).items():
        staged = state / "rootfs" / path.relative_to(PurePosixPath("/"))
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(content, encoding="utf-8")
    secret = state / "root.chpasswd"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(f"root:{cfg.password_hash}\n")


def unstage(cfg: Config) -> None:
    """Remove the staged files; the transcript stays."""
    (cfg.state_dir / "root.chpasswd").unlink(missing_ok=True)
    (cfg.state_dir / "run-id").unlink(missing_ok=True)
    shutil.rmtree(cfg.state_dir / "rootfs", ignore_errors=True)


def check_host(cfg: Config) -> None:
    checks = [*preflight.host_checks(), lambda: preflight.check_target(cfg.target, cfg.force)]
    if cfg.iso is not None:
        iso = cfg.iso
        checks.append(lambda: preflight.check_iso(iso))
    found = preflight.problems(checks)
    if found:
        first, *others = found
        also = "".join(f"\nerror: {p.message}\n  hint: {p.fix}" for p in others)
        raise HostError(first.message + also, first.fix)


def start_live(cfg: Config, iso: Path, boot: BootFiles, transcript: Transcript, progress: Progress) -> tuple[Machine, Console]:
    """Boot the ISO and log in. With --accel auto, a KVM guest that stays silent is retried under TCG."""
    accel = resolve_accel(cfg.accel)
    while True:
        hw = Hardware(memory=cfg.memory, cpus=cfg.cpus, accel=accel)
        argv = wrap(install_argv(hw, iso, boot, cfg.target, cfg.mirror), as_root=preflight.is_root())
        transcript.note(f"starting QEMU ({accel.value})")
        machine = Machine(argv, logfile=transcript).__enter__()
        assert machine.child is not None
        con = Console(machine.child, scale=cfg.timeout_scale)
        banner_seen = accel is not Accel.KVM
        try:
            if not banner_seen:
                con.expect({"banner": r"Linux version"}, KVM_FIRST_WORDS, "the kernel banner under KVM")
                banner_seen = True
            con.login()
            return machine, con
        except BaseException as exc:
            machine.stop(graceful=False)
            if banner_seen or not isinstance(exc, (ConsoleTimeout, BootFailed)):
                raise
            # QEMU could not use KVM (no /dev/kvm access) or the guest hangs after firmware
            # (KVM without nested virtualisation): the kernel never printed its banner.
            if cfg.accel is Accel.AUTO:
                progress.note(f"no guest under KVM ({exc.message}); retrying with TCG (slower)")
                accel = Accel.TCG
                continue
            raise BootFailed(
                f"the guest did not start under KVM: {exc.message}",
                "use --accel tcg (slower), or --accel auto to fall back by itself",
                output=con.output_so_far(),
            ) from exc


def acquire_iso(cfg: Config, progress: Progress, cache_dir: Path) -> Path:
    """The user's ISO (verified when a .sig lies beside it), or a downloaded, verified one."""
    if cfg.iso is not None:
        check_given_iso(cfg.iso, cfg.trusted_keys, progress)
        return cfg.iso
    source = IsoSource(mirror=cfg.iso_mirror or DEFAULT_MIRROR, version=cfg.iso_version, trusted_keys=cfg.trusted_keys)
    return obtain_iso(source, cache_dir / "iso", progress)


def preflight_step(cfg: Config, progress: Progress) -> None:
    """Host checks, before anything is asked of the user or written."""
    with progress.step("preflight", "Checking the host"):
        check_host(cfg)


def provision(cfg: Config, progress: Progress, cache_dir: Path) -> None:
    """The whole install after preflight. Raises a ProvisionError subclass on any failure."""
    if not cfg.password_hash:
        raise ProvisionError("internal: provision() needs the root password hash", "this is a bug in provision-arch")
    iso = acquire_iso(cfg, progress, cache_dir)  # draws its own progress bar
    with progress.step("iso", f"Reading {iso.name}"):
        boot = read_boot_files(iso, cache_dir / "boot")
    cfg.target.mkdir(parents=True, exist_ok=True)
    transcript = Transcript(cfg.transcript, redact=(cfg.password_hash,), on_line=progress.line)
    progress.console.print(f"[dim]console transcript: {cfg.transcript}[/]")
    try:
        stage(cfg)  # inside the try: a half-written stage (the password hash!) is removed too
        with progress.step("boot", "Booting the ISO and logging in"):
            machine, con = start_live(cfg, iso, boot, transcript, progress)
        with machine:
            con.check("dmesg -n 1", 30)  # keep kernel messages out of command output
            for step in STEPS:
                if not step.enabled(cfg):
                    progress.skip(step.name, step.title)
                    continue
                with progress.step(step.name, step.title):
                    transcript.note(f"step {step.name}")
                    step.action(con, cfg, step.timeout)
            with progress.step("poweroff", "Powering off"):
                con.poweroff()
    except (BootFailed, ConsoleTimeout, CommandFailed) as exc:
        exc.hint = f"{exc.hint}; transcript: {cfg.transcript}" if exc.hint else f"transcript: {cfg.transcript}"
        raise
    finally:
        transcript.close()
        unstage(cfg)
    for name in ("boot/vmlinuz-linux", "boot/initramfs-linux.img"):
        if not (cfg.target / name).is_file():
            raise BootFailed(f"the install finished but {cfg.target / name} is missing", f"see the transcript: {cfg.transcript}")

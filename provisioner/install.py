"""The install pipeline: the guest steps, in order, as data, and the run around them.

``STEPS`` is the one list that the progress display, the ``--json`` events and the timing
table read. Each step is a small function of the console, the run's session and its
timeout. Values reach the guest shell only through ``shlex.quote`` or as files the session
staged on the 9p share.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from shlex import quote as q

from provisioner import stream
from provisioner.acquire import DEFAULT_MIRROR, IsoSource, check_given_iso, obtain_iso
from provisioner.config import Config, InstallVia, box_record
from provisioner.console import Console, Transcript
from provisioner.errors import BootFailed, CommandFailed, ConsoleTimeout, HostError, ProvisionError, VerifyError
from provisioner.events import Bus, ConsoleLine
from provisioner.iso import read_boot_files
from provisioner.live import live_console
from provisioner.manifest import Manifest, Mismatch, compare, file_sha256, installed_packages, write_manifest
from provisioner.preflight import is_root
from provisioner.qemu import CACHE_TAG, MOUNT_TAG, MSIZE, SCRATCH_SERIAL, STREAM_PORT
from provisioner.session import STAGE, STATE, Session, StagedFile, locked
from provisioner.state import State, save
from provisioner.stream import TAR_KEEP, Receiver, extract

MNT = "/mnt"
GUEST_STATE = f"{MNT}/{STATE}"  # the target's state directory as the guest sees it
GUEST_STAGE = f"{GUEST_STATE}/{STAGE}"
# During the install the guest is the share's only writer, so the non-coherent `loose`
# cache is safe, and file creation is several times faster than the seed's cache=mmap.
INSTALL_MOUNT_OPTIONS = f"trans=virtio,version=9p2000.L,posixacl,msize={MSIZE},cache=loose"
CACHE_MOUNT_OPTIONS = f"trans=virtio,version=9p2000.L,msize={MSIZE}"
LIVE_CACHE = "/var/cache/pacman/pkg"
SHARE = "/share"  # the stream install's mount of the share (the tree is built at /mnt)
SCRATCH = f"/dev/disk/by-id/virtio-{SCRATCH_SERIAL}"
SERVICES = ("systemd-networkd.service", "systemd-resolved.service")
INITRAMFS = "/boot/initramfs-linux.img"
# What an initramfs needs to mount the 9p root (modules.builtin names them when built in).
NINEP_MODULES = ("9p", "9pnet", "9pnet_virtio", "virtio_pci")


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    action: Callable[[Console, Session, float], str | None]  # returns a warning for the user, if any
    timeout: float  # seconds at --timeout-scale 1
    enabled: Callable[[Config], bool] = lambda cfg: True
    resumable: bool = False  # works on the target and is recorded in state.json: a resumed run skips it when done


def staged(file: StagedFile) -> str:
    """Where the guest finds a staged file."""
    return f"{GUEST_STAGE}/{file.stage_name}"


# -- guest steps ---------------------------------------------------------------------------


def wait_keyring(con: Console, session: Session, timeout: float) -> None:
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


def mount_target(con: Console, session: Session, timeout: float) -> None:
    if session.stream is None:
        con.check(
            f"mkdir -p {MNT} && mount -t 9p -o {INSTALL_MOUNT_OPTIONS} {MOUNT_TAG} {MNT}",
            timeout,
            hint="the ISO's kernel could not mount the 9p share",
        )
    else:
        # The tree is built on the scratch disk at /mnt; the share is at /share, and its state
        # directory (the staged files) is bound into /mnt, where the steps look for it.
        con.check(
            f"mkdir -p {SHARE} && mount -t 9p -o {INSTALL_MOUNT_OPTIONS} {MOUNT_TAG} {SHARE} && "
            f"mkfs.ext4 -q -F {SCRATCH} && mkdir -p {MNT} && mount {SCRATCH} {MNT} && "
            f"mkdir -p {GUEST_STATE} && mount --bind {SHARE}/{STATE} {GUEST_STATE}",
            timeout,
            hint="the scratch disk or the 9p share did not mount; --install-via 9p does without the disk",
        )
    if session.cfg.cache_packages:
        # The live system's own cache: the keyring refresh and `pacstrap -c` both fill it. No
        # `loose` here: two runs may share this cache, and only coherent caching is safe then.
        con.check(
            f"mkdir -p {LIVE_CACHE} && mount -t 9p -o {CACHE_MOUNT_OPTIONS} {CACHE_TAG} {LIVE_CACHE}",
            timeout,
            hint="the package cache share did not mount; try --no-cache-packages",
        )
    # Prove that /mnt is this run's target and not something else.
    con.check(
        f"grep -qx {q(session.run_id)} {GUEST_STATE}/run-id",
        timeout,
        hint="the share mounted at /mnt is not the target directory",
    )


def refresh_keyring(con: Console, session: Session, timeout: float) -> None:
    """Old ISOs carry old keys: update archlinux-keyring in the live system first."""
    con.check(
        "pacman -Sy --noconfirm archlinux-keyring",
        timeout,
        hint="the mirror could not be reached or the keyring did not install; try --mirror URL or --no-refresh-keyring",
    )


def pacstrap(con: Console, session: Session, timeout: float) -> None:
    packages = " ".join(q(name) for name in session.cfg.packages)
    cache = " -c" if session.cfg.cache_packages else ""  # the live system's cache, i.e. the shared one
    # Resuming after an interrupted pacstrap: its lock is stale (we hold the target's), and files
    # of a package that was half extracted are ours to overwrite.
    again = f"rm -f {MNT}/var/lib/pacman/db.lck && " if session.resuming else ""
    overwrite = " --overwrite '*'" if session.resuming else ""
    result = con.run(f"{again}pacstrap{cache} -K {MNT} {packages}{overwrite}", timeout)
    if result.status != 0:
        raise CommandFailed(result.command, result.status, result.output, pacman_hint(result.output))


def pacman_hint(output: str) -> str:
    """The fix for what pacman said, from its own words."""
    if missing := re.findall(r"target not found: (\S+)", output):
        return f"no package named {', '.join(missing)} in the repositories; check the spelling (pacman -Ss NAME)"
    if "No space left on device" in output or "not enough free disk space" in output:
        return "the target's file system is full: free some space (df -h TARGET) and run again with --force"
    if re.search(r"failed retrieving file|Could not resolve host|failed to synchronize", output):
        return "the guest could not reach the package mirror: check the network, or give another with --mirror URL"
    return "see pacman's output above and the transcript"


def install_file(con: Console, file: StagedFile, timeout: float) -> None:
    """Put one staged file in place with its mode and owner."""
    owner, _, group = file.owner.partition(":")
    con.check(
        f"install -D -m {file.mode:04o} -o {q(owner)} -g {q(group or owner)} {q(staged(file))} {q(MNT + str(file.guest_path))}",
        timeout,
    )


def configure(con: Console, session: Session, timeout: float) -> None:
    cfg = session.cfg
    zone = f"/usr/share/zoneinfo/{cfg.timezone}"
    con.check(f"test -f {q(MNT + zone)}", timeout, hint=f"there is no time zone {cfg.timezone!r}; see timedatectl list-timezones")
    con.check(f"ln -sf {q(zone)} {MNT}/etc/localtime", timeout)
    for file in session.files:
        install_file(con, file, timeout)
    # Idempotent: a re-run must not add the line twice.
    line = q(cfg.locale_gen_line)
    con.check(f"grep -qxF {line} {MNT}/etc/locale.gen || printf '%s\\n' {line} >> {MNT}/etc/locale.gen", timeout)
    con.check(
        f"arch-chroot {MNT} locale-gen", timeout, hint=f"locale-gen rejected {cfg.locale!r}; see /etc/locale.gen for valid names"
    )
    con.check(f"arch-chroot {MNT} systemctl enable {' '.join(SERVICES)}", timeout)
    # Outside the chroot: arch-chroot bind-mounts its own resolv.conf over the target's.
    con.check(f"ln -sf /run/systemd/resolve/stub-resolv.conf {MNT}/etc/resolv.conf", timeout)


def build_initramfs(con: Console, session: Session, timeout: float) -> str | None:
    """mkinitcpio -P; a non-zero exit with an image is checked, not trusted or feared.

    Arch's mkinitcpio exits non-zero with "errors were encountered during the build" for
    packaging slips unrelated to us (v41: a missing /etc/udev/hwdb.bin) while still writing
    an image. Such an image is fine when it can mount the 9p root: it must hold the 9p
    modules and virtio_pci (or the kernel has them built in).
    """
    result = con.run(f"arch-chroot {MNT} mkinitcpio -P", timeout)
    if result.status == 0:
        return None
    hint = "mkinitcpio failed; the rendered /etc/mkinitcpio.conf is in the target"
    image = f"{MNT}{INITRAMFS}"
    if con.run(f"test -s {image}", 30).status != 0:
        raise CommandFailed(result.command, result.status, result.output, hint)
    listing = con.check(f"arch-chroot {MNT} lsinitcpio {INITRAMFS}", timeout, hint=hint)
    builtin = con.run(f"cat {MNT}/usr/lib/modules/*/modules.builtin", 30).output
    have = {name.replace("-", "_") for name in re.findall(r"([\w-]+)\.ko(?:\.\w+)?\s*$", listing + "\n" + builtin, re.M)}
    if missing := sorted(set(NINEP_MODULES) - have):
        raise CommandFailed(
            result.command,
            result.status,
            result.output,
            f"the image lacks {', '.join(missing)}: it could not mount the 9p root; {hint}",
        )
    errors = [line.strip() for line in result.output.splitlines() if "ERROR" in line][:3]
    return f"mkinitcpio exited {result.status} but its image holds what a 9p root needs; it said: {'; '.join(errors)}"


def set_password(con: Console, session: Session, timeout: float) -> None:
    # The hash travels as a file on the share; only its path crosses the console.
    path = staged(session.root_password)
    con.check(f"arch-chroot {MNT} chpasswd -e < {q(path)}", timeout)
    con.check(f"rm -f {q(path)}", timeout)


def send_tree(con: Console, session: Session, timeout: float) -> str:
    """Stream install: the tree goes to the host as one tar, checked by its sha256 before it is unpacked."""
    archive = session.state_dir / "stream.tar"
    assert session.stream is not None  # the step is enabled only then
    with Receiver(session.stream.pipe.with_name(session.stream.pipe.name + ".out"), archive) as receiver:
        # Busybox runs its own applets before PATH, so GNU tar by its path; the share's bind
        # mount is no part of the tree.
        keep = " ".join(q(flag) for flag in TAR_KEEP)
        result = con.check(
            f"umount {GUEST_STATE} && rmdir {GUEST_STATE} && (set -o pipefail; cd {MNT} && "
            f"/usr/bin/tar -c {keep} --sparse --one-file-system -f - . | tee /dev/virtio-ports/{STREAM_PORT} | sha256sum)",
            timeout,
            hint="the guest could not pack the tree; see the transcript",
        )
        sha256 = result.split()[0] if result.split() else ""
        size = receiver.wait_for(sha256, stream.SETTLE)
    extract(archive, session.target, as_root=is_root())
    archive.unlink()
    return f"the tree arrived as one {size / 2**20:.0f} MiB tar (sha256 {sha256[:12]}…) and was unpacked into {session.target}"


def unmount(con: Console, session: Session, timeout: float) -> None:
    mounts = MNT if session.stream is None else f"{MNT} {SHARE}"
    con.check(f"sync && umount {mounts}", timeout, hint="something still uses the target; see the transcript")


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
    Step("pacstrap", "Installing packages (pacstrap)", pacstrap, 7200, resumable=True),
    Step("configure", "Configuring the system (arch-chroot)", configure, 600, resumable=True),
    Step("initramfs", "Building the initramfs (mkinitcpio -P)", build_initramfs, 1800, resumable=True),
    Step("password", "Setting the root password", set_password, 120, resumable=True),
    Step(
        "stream",
        "Sending the tree to the host (one tar over a serial port)",
        send_tree,
        3600,
        enabled=lambda cfg: cfg.install_via is InstallVia.STREAM,
    ),
    Step("unmount", "Syncing and unmounting the target", unmount, 900),
]


# -- the run -------------------------------------------------------------------------------


def acquire_iso(cfg: Config, events: Bus, cache_dir: Path) -> Path:
    """The user's ISO (verified when a .sig lies beside it), or a downloaded, verified one."""
    if cfg.iso is not None:
        check_given_iso(cfg.iso, cfg.trusted_keys, events)
        return cfg.iso
    source = IsoSource(mirror=cfg.iso_mirror or DEFAULT_MIRROR, version=cfg.iso_version, trusted_keys=cfg.trusted_keys)
    return obtain_iso(source, cache_dir / "iso", events)


def provision(
    session: Session, events: Bus, cache_dir: Path, resume: State | None = None, expected: Manifest | None = None
) -> Path:
    """The whole install after preflight; the manifest's path. Raises a ProvisionError subclass on any failure."""
    cfg = session.cfg
    if not cfg.password_hash:
        raise ProvisionError("internal: provision() needs the root password hash", "this is a bug in provision-arch")
    with locked(cfg.target):
        state = resume or State(box_record(cfg))
        save(cfg.target, state)
        if resume:
            events.note(f"resuming the install into {cfg.target}: {', '.join(resume.done) or 'no target step'} done before")
        return _provision(session, events, cache_dir, state, expected)


def _provision(session: Session, events: Bus, cache_dir: Path, state: State, expected: Manifest | None) -> Path:
    cfg = session.cfg
    iso = acquire_iso(cfg, events, cache_dir)
    with events.step("read-iso", f"Reading {iso.name}"):
        boot = read_boot_files(iso, cache_dir / "boot")
        iso_sha256 = file_sha256(iso)
        if expected and iso_sha256 != expected.iso_sha256:
            raise VerifyError(
                f"{iso.name} is not the ISO of {expected.path} (sha256 {iso_sha256[:16]}…, expected {expected.iso_sha256[:16]}…)",
                "give the manifest's ISO with --iso",
            )
    if cfg.cache_packages and cfg.package_cache:
        cfg.package_cache.mkdir(parents=True, exist_ok=True)
    try:
        transcript = Transcript(
            session.transcript, redact=(cfg.password_hash,), on_line=lambda line: events.emit(ConsoleLine(line))
        )
    except OSError as exc:
        raise HostError(f"cannot write {session.transcript}: {exc.strerror}", "check the target directory and --log") from exc
    events.note(f"console transcript: {session.transcript}")
    try:
        with ExitStack() as machine:
            with events.step("stage", "Staging files in the target"):
                session.stage()  # inside the try: a half-written stage (the password hash!) is removed too
            with events.step("boot", "Booting the ISO and logging in"):
                con = machine.enter_context(live_console(session, iso, boot, transcript, events))
                con.check("dmesg -n 1", 30)  # keep kernel messages out of command output
            run_steps(con, session, events, transcript, state)
            with events.step("poweroff", "Powering off"):
                con.poweroff()
    except (BootFailed, ConsoleTimeout, CommandFailed) as exc:
        exc.hint = f"{exc.hint}; transcript: {session.transcript}" if exc.hint else f"transcript: {session.transcript}"
        raise
    finally:
        transcript.close()
        session.unstage()
    return finish(session, events, state, (iso, iso_sha256), expected)


def run_steps(con: Console, session: Session, events: Bus, transcript: Transcript, state: State) -> None:
    """The guest steps in order; a resumed run skips the target steps an earlier run finished."""
    for step in STEPS:
        if not step.enabled(session.cfg):
            events.skip(step.name, step.title)
            continue
        if step.resumable and step.name in state.done:
            events.skip(step.name, step.title, "done by an earlier run")
            continue
        with events.step(step.name, step.title):
            transcript.note(f"step {step.name}")
            warning = step.action(con, session, step.timeout)
        if warning:
            events.note(warning)
        if step.resumable and session.stream is None:  # a stream install's tree is on a disk gone with QEMU
            state.done.append(step.name)
            save(session.target, state)


def finish(session: Session, events: Bus, state: State, iso: tuple[Path, str], expected: Manifest | None) -> Path:
    """Check the result, write the manifest (and compare it with the expected one), mark the target finished.

    ``iso`` is the ISO's path and sha256."""
    cfg = session.cfg
    for name in ("boot/vmlinuz-linux", "boot/initramfs-linux.img"):
        if not (cfg.target / name).is_file():
            raise BootFailed(
                f"the install finished but {cfg.target / name} is missing", f"see the transcript: {session.transcript}"
            )
    with events.step("manifest", "Writing the manifest"):
        manifest = write_manifest(cfg, *iso)
        if expected and (differ := compare(expected.packages, installed_packages(cfg.target))):
            raise Mismatch(
                f"the rebuild differs from {expected.path} in {len(differ)} package(s): {'; '.join(differ[:10])}",
                f"compare {manifest} with {expected.path}; was the snapshot the same?",
            )
        state.finished = True
        save(cfg.target, state)
    return manifest

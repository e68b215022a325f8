"""The install pipeline: the guest steps, in order, as data, and the run around them.

``STEPS`` is the one list that the progress display, the ``--json`` events and the timing
table read; ``plan(cfg)`` adds the dev-box steps a config asks for (users, files,
services, and one step per command) before the unmount. Each step is a small function of
the console, the run's session and its timeout. Values reach the guest shell only through
``shlex.quote`` or as files the session staged on the read-only stage share.

The guest is not trusted (see ``workspace`` and ``tree``): it reads the stage and writes
the target (over 9p), or sends the tree as one archive (stream), which the host unpacks
only after QEMU has ended, into a target the guest never saw.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from shlex import quote as q

from provisioner import keyring, stream, unpack, users
from provisioner.acquire import DEFAULT_MIRROR, IsoSource, check_given_iso, obtain_iso
from provisioner.config import Config, InstallVia, box_record
from provisioner.console import Console, Transcript
from provisioner.errors import BootFailed, CommandFailed, ConsoleTimeout, HostError, ProvisionError, VerifyError
from provisioner.events import Bus, ConsoleLine
from provisioner.iso import read_boot_files
from provisioner.keyring import TRUSTDB_LINE, KeyringError, LiveKeyring
from provisioner.live import live_console
from provisioner.manifest import Manifest, Mismatch, compare, file_sha256, installed_packages, write_manifest
from provisioner.pacman import enable_option, parse_version, sandbox_switch
from provisioner.preflight import is_root, reachable_by_others
from provisioner.qemu import BOX_INITRD, BOX_KERNEL, CACHE_TAG, MOUNT_TAG, MSIZE, SCRATCH_SERIAL, STAGE_TAG, STREAM_PORT
from provisioner.session import KEPT_KEYRING, RUN_ID, SCRATCH_SIZE, Session
from provisioner.staged import StagedFile
from provisioner.state import State, save
from provisioner.stream import TAR_PACK, Receiver
from provisioner.tree import IN_ROOT, Tree, as_guest_root
from provisioner.users import User
from provisioner.workspace import pipe_ends

MNT = "/mnt"
GUEST_RUN = "/run/provision-arch"  # the install's own files in the live system (never in the target)
GUEST_STAGE = f"{GUEST_RUN}/stage"  # the stage share
STAGE_MOUNT_OPTIONS = f"trans=virtio,version=9p2000.L,msize={MSIZE},ro"
# During the install the guest is the share's only writer, so the non-coherent `loose`
# cache is safe, and file creation is several times faster than the seed's cache=mmap.
INSTALL_MOUNT_OPTIONS = f"trans=virtio,version=9p2000.L,posixacl,msize={MSIZE},cache=loose"
CACHE_MOUNT_OPTIONS = f"trans=virtio,version=9p2000.L,msize={MSIZE}"
LIVE_CACHE = "/var/cache/pacman/pkg"
SCRATCH = f"/dev/disk/by-id/virtio-{SCRATCH_SERIAL}"
SERVICES = ("systemd-networkd.service", "systemd-resolved.service")
INITRAMFS = "/boot/initramfs-linux.img"
# What an initramfs needs to mount the 9p root (modules.builtin names them when built in).
NINEP_MODULES = ("9p", "9pnet", "9pnet_virtio", "virtio_pci")
FIRST_UID = 1000  # useradd's UID_MIN: below it, an account is the system's


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    action: Callable[[Console, Session, float], str | None]  # returns a warning for the user, if any
    timeout: float  # seconds at --timeout-scale 1
    enabled: Callable[[Config], bool] = lambda cfg: True
    resumable: bool = False  # works on the target and is recorded in state.json: a resumed run skips it when done


def staged(file: StagedFile) -> str:
    """Where the live system finds a staged file (the chroot does not see the stage: a file
    goes in on a command's standard input)."""
    return f"{GUEST_STAGE}/{file.stage_name}"


def chrooted(command: str) -> str:
    """A command line for the installed system's chroot."""
    return f"arch-chroot {MNT} {command}"


# -- guest steps ---------------------------------------------------------------------------


def make_keyring(con: Console, session: Session, timeout: float) -> str | None:
    """The live system's pacman keyring: unpacked from the one an earlier run from this ISO
    kept, or made as pacman-init would make it, in a fraction of the time, and then kept."""
    live = session.live_keyring
    if live is not None and live.kept is not None:
        con.check(
            keyring.restore(f"{GUEST_STAGE}/{KEPT_KEYRING}"),
            timeout,
            hint=f"the kept live keyring did not unpack; remove {live.path}, or run with --no-keep-keyring",
        )
        return f"the live keyring is the one kept for this ISO ({live.path})"
    try:
        con.check(keyring.MAKE, timeout, hint="the live system could not make its pacman keyring; see the transcript")
    except ConsoleTimeout as exc:
        raise ConsoleTimeout(
            "ready pacman keyring (pacman-key --init, --populate)",
            timeout * con.scale,
            exc.output,
            "under TCG the keyring takes minutes; raise --timeout-scale, or use KVM",
        ) from exc
    if live is None:
        return None
    # Before anything else runs: the made master key's secret must not outlive the moment.
    con.check(keyring.FORGET, 60, hint="the live system could not forget its keyring's master key; see the transcript")
    said = keep_keyring(con, session, live)
    con.check(keyring.RENEW, timeout, hint="the live system could not make a new keyring master key; see the transcript")
    return said


def keep_keyring(con: Console, session: Session, live: LiveKeyring) -> str:
    """Have the keyring just made sent to the host and keep it for the next run from this ISO;
    what is said of it. The install goes on without it if it cannot be kept."""
    received = session.workspace.keyring
    try:
        archive = f"{GUEST_RUN}/keyring-{session.run_id}.tar"
        keyring.keep(live.path, keyring.receive(con, session.workspace.keyring_pipe, received, archive))
    except (CommandFailed, KeyringError, stream.StreamError, ValueError, OSError) as exc:  # a timeout is not: the console is lost
        reason = exc.message if isinstance(exc, ProvisionError) else str(exc)
        return f"the live keyring was not kept for the next install from this ISO: {reason}"
    finally:
        received.unlink(missing_ok=True)
    return f"kept the live keyring for the next install from this ISO: {live.path}"


def mount_target(con: Console, session: Session, timeout: float) -> None:
    # The stage first, read-only, in the live system's own /run; then prove it is this run's.
    con.check(
        f"mkdir -p {GUEST_STAGE} && mount -t 9p -o {STAGE_MOUNT_OPTIONS} {STAGE_TAG} {GUEST_STAGE} && "
        f"grep -qx {q(session.run_id)} {GUEST_STAGE}/{RUN_ID}",
        timeout,
        hint="the ISO's kernel could not mount the stage share (9p), or it is not this run's",
    )
    if session.stream is None:
        con.check(
            f"mkdir -p {MNT} && mount -t 9p -o {INSTALL_MOUNT_OPTIONS} {MOUNT_TAG} {MNT}",
            timeout,
            hint="the ISO's kernel could not mount the 9p share",
        )
    else:
        # The tree is built on the scratch disk; the target is not shared with the guest at all.
        # No journal: the disk is thrown away, and on this 64 GiB disk mkfs would write a
        # 512 MiB one onto the host's. noinit_itable: no zeroing of unused inode tables. No
        # `discard`: the send gives the removed files' blocks back with fstrim (send_tree).
        con.check(
            f"mkfs.ext4 -q -F -O ^has_journal {SCRATCH} && mkdir -p {MNT} && mount -o noinit_itable {SCRATCH} {MNT}",
            timeout,
            hint="the scratch disk did not mount; --install-via 9p does without the disk",
        )
    if session.cfg.cache_packages:
        # The live system's own cache: the keyring refresh and `pacstrap -c` both fill it. No
        # `loose` here: two runs may share this cache, and only coherent caching is safe then.
        con.check(
            f"mkdir -p {LIVE_CACHE} && mount -t 9p -o {CACHE_MOUNT_OPTIONS} {CACHE_TAG} {LIVE_CACHE}",
            timeout,
            hint="the package cache share did not mount; try --no-cache-packages",
        )


def refresh_keyring(con: Console, session: Session, timeout: float) -> None:
    """Old ISOs carry old keys: update archlinux-keyring in the live system first."""
    con.check(
        "pacman -Sy --noconfirm archlinux-keyring",
        timeout,
        hint="the mirror could not be reached or the keyring did not install; try --mirror URL or --no-refresh-keyring",
    )


# The box's own keyring. pacstrap -K makes it only when the directory is missing, and
# archlinux-keyring's post_install populates it (pacman-key --populate archlinux): the live
# keyring's cost once more. So it is made first, as pacstrap would, with gpg's trustdb checks
# off for the populate (it checks the trustdb once at its end); the line goes, and the gpg-agent
# the populate started ends, whatever pacstrap did.
TARGET_GPGDIR = f"{MNT}/etc/pacman.d/gnupg"
TARGET_KEYRING = f"pacman-key --gpgdir {TARGET_GPGDIR} --init && echo {TRUSTDB_LINE} >> {TARGET_GPGDIR}/gpg.conf"
TARGET_KEYRING_DONE = f"sed -i '/^{TRUSTDB_LINE}$/d' {TARGET_GPGDIR}/gpg.conf; gpgconf --homedir {TARGET_GPGDIR} --kill gpg-agent"


def pacstrap(con: Console, session: Session, timeout: float) -> None:
    packages = " ".join(q(name) for name in session.cfg.packages)
    cache = " -c" if session.cfg.cache_packages else ""  # the live system's cache, i.e. the shared one
    # Resuming after an interrupted pacstrap: its lock is stale (we hold the target's), and files
    # of a package that was half extracted are ours to overwrite.
    again = f"rm -f {MNT}/var/lib/pacman/db.lck && " if session.resuming else ""
    overwrite = " --overwrite '*'" if session.resuming else ""
    con.check(TARGET_KEYRING, timeout, hint="the box's pacman keyring could not be made; see the transcript")
    result = con.run(f"{again}pacstrap{cache} -K {MNT} {packages}{overwrite}", timeout)
    con.run(TARGET_KEYRING_DONE, 60)  # whatever pacstrap did
    if result.status != 0:
        raise CommandFailed(result.command, result.status, result.output, pacman_hint(result.output))


def pacman_hint(output: str) -> str:
    """The fix for what pacman said, from its own words."""
    if missing := re.findall(r"target not found: (\S+)", output, re.ASCII):
        return f"no package named {', '.join(missing)} in the repositories; check the spelling (pacman -Ss NAME)"
    if "No space left on device" in output or "not enough free disk space" in output:
        return "the target's file system is full: free some space (df -h TARGET) and run again with --force"
    if re.search(r"failed retrieving file|Could not resolve host|failed to synchronize", output):
        return "the guest could not reach the package mirror: check the network, or give another with --mirror URL"
    if corrupt := re.findall(r"File (\S+) is corrupted", output, re.ASCII):
        names = ", ".join(name.rsplit("/", 1)[-1] for name in corrupt)
        return f"a cached package did not match its checksum ({names}; pacman removed it): run again, or use --no-cache-packages"
    return "see pacman's output above and the transcript"


def install_file(con: Console, file: StagedFile, timeout: float, *, chroot: bool = False, hint: str = "") -> None:
    """Put one staged file in place with its mode and owner.

    In the chroot, the owner's name is looked up in the installed system's passwd (a
    configured user exists only there), and the file comes in on standard input; outside
    it, the live system's passwd (root only) and the staged file itself.
    """
    mode = f"-m {file.mode:04o} -o {q(file.user)} -g {q(file.group)}"
    if chroot:
        command = f"{chrooted(f'install -D {mode} /dev/stdin {q(str(file.guest_path))}')} < {q(staged(file))}"
    else:
        command = f"install -D {mode} {q(staged(file))} {q(MNT + str(file.guest_path))}"
    con.check(command, timeout, hint=hint)


def chpasswd(con: Console, file: StagedFile, timeout: float) -> None:
    """Set passwords from a staged chpasswd -e file; only its path crosses the console."""
    con.check(f"{chrooted('chpasswd -e')} < {q(staged(file))}", timeout)


def configure(con: Console, session: Session, timeout: float) -> str | None:
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
    return None if cfg.pacman_sandbox else pacman_sandbox(con, timeout)


def pacman_sandbox(con: Console, timeout: float) -> str | None:
    """Turn off the part of pacman 7's download sandbox that misfires on a 9p root (see pacman.py)."""
    result = con.run(chrooted("pacman --version"), timeout)
    version = parse_version(result.output) if result.status == 0 else None
    switch = sandbox_switch(version) if version else None
    if version is None or switch is None:
        return None  # no pacman in the target, or one without a sandbox
    con.check(enable_option(f"{MNT}/etc/pacman.conf", switch), timeout, hint="the installed /etc/pacman.conf has no [options]")
    shown = ".".join(map(str, version))
    why = "--no-pacman-sandbox; pacman's other defences stay"
    return f"pacman {shown}: set {switch} in /etc/pacman.conf ({why})"


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
    modules = re.findall(r"([\w-]+)\.ko(?:\.\w+)?\s*$", listing + "\n" + builtin, re.M | re.ASCII)
    have = {name.replace("-", "_") for name in modules}
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
    assert session.root_password is not None  # an install always has one; an update without one has no such step
    chpasswd(con, session.root_password, timeout)


# -- dev-box steps (only when the config asks for them) -----------------------------------


def create_users(con: Console, session: Session, timeout: float) -> str | None:
    """useradd in the chroot, then the users' staged files, then their password hashes."""
    cfg = session.cfg
    names = {user.name for user in cfg.users}
    # A user's own group comes with it (useradd -U); any other group is made if missing.
    for group in sorted({group for user in cfg.users for group in user.groups} - names):
        con.check(chrooted(f"groupadd -f {q(group)}"), timeout)
    for user in cfg.users:
        add_user(con, user, timeout)
    for file in session.user_files:
        if file.guest_path.name == "authorized_keys":
            ssh = file.guest_path.parent
            con.check(chrooted(f"install -d -m 0700 -o {q(file.user)} -g {q(file.group)} {q(str(ssh))}"), timeout)
        install_file(con, file, timeout, chroot=True)
    if session.user_passwords is not None:
        chpasswd(con, session.user_passwords, timeout)
    # What an earlier run gave a user and the config no longer does (keys, a sudo rule) goes.
    for user in cfg.users:
        keys, rule = users.owned_files(user.name)
        for path, wanted in ((keys, user.authorized_keys), (rule, user.sudo)):
            if not wanted:
                remove_owned(con, path, timeout)
    sudoers = [user.name for user in cfg.users if user.sudo]
    if sudoers and con.run(f"test -x {MNT}/usr/bin/sudo", 30).status != 0:
        return f"sudo is not installed, so the sudo rule for {', '.join(sudoers)} does nothing yet: add sudo to packages"
    return None


def add_user(con: Console, user: User, timeout: float) -> None:
    """Create the account, or bring an account of an earlier run up to date; never take over a system account."""
    if user.shell is not None:
        con.check(
            f"test -x {q(MNT + str(user.shell))}",
            timeout,
            hint=f"{user.key}.shell: {user.shell} is not installed in the target; add its package to packages",
        )
    options = (f" -s {q(str(user.shell))}" if user.shell else "") + (f" -G {q(','.join(user.groups))}" if user.groups else "")
    entry, uid = account(con, user.name)
    if entry is None:
        con.check(chrooted(f"useradd -m -U{options} {q(user.name)}"), timeout, hint=f"see useradd's message ({user.key})")
        return
    if uid is None or uid < FIRST_UID:
        raise CommandFailed(
            f"useradd {user.name}",
            9,  # useradd's status for a name in use
            entry,
            f"{user.key}.name: {user.name!r} is a system account of the installed system; pick another name",
        )
    # An account of an earlier run (--force): the config is the truth for its groups and shell.
    groups = "" if user.groups else " -G ''"
    con.check(chrooted(f"usermod{options}{groups} {q(user.name)}"), timeout)


def remove_owned(con: Console, path: PurePosixPath, timeout: float) -> None:
    """Remove a user's file from the target if provision-arch wrote it (its first line is users.MARK)."""
    where = q(MNT + str(path))
    con.check(f'case "$(head -n 1 -- {where} 2>/dev/null)" in {q(users.MARK)}*) rm -f -- {where} ;; esac', timeout)


def account(con: Console, name: str) -> tuple[str | None, int | None]:
    """The target's passwd line for ``name`` (None: no such account) and its uid (None: not a number)."""
    entry = con.run(f"grep -m1 {q('^' + name + ':')} {MNT}/etc/passwd", 30)
    if entry.status != 0:
        return None, None
    fields = entry.output.strip().split(":")
    return entry.output, int(fields[2]) if len(fields) >= 3 and re.fullmatch(r"[0-9]+", fields[2]) else None


def copy_files(con: Console, session: Session, timeout: float) -> None:
    for file in session.copied:
        hint = f"copying to {file.guest_path}: the owner {file.owner} must exist in the installed system"
        install_file(con, file, timeout, chroot=True, hint=hint)


def enable_services(con: Console, session: Session, timeout: float) -> None:
    units = " ".join(q(unit) for unit in session.cfg.services)
    con.check(
        chrooted(f"systemctl enable {units}"),
        timeout,
        hint="a unit the installed system does not have? Add the package that ships it to packages",
    )


def command_step(index: int, command: str) -> Step:
    """The step that runs ``commands[index]`` in the chroot; a failure names it and stops the run."""

    def action(con: Console, session: Session, timeout: float) -> None:
        result = con.run(chrooted(f"sh -c {q(command)}"), timeout)
        if result.status != 0:
            hint = f"command-{index + 1} (config key commands[{index}]) failed; the commands after it did not run"
            raise CommandFailed(command, result.status, result.output, hint)

    title = f"Running command {index + 1}: {textwrap.shorten(command, 60, placeholder=' …')}"
    return Step(f"command-{index + 1}", title, action, COMMAND_TIMEOUT)


def send_tree(con: Console, session: Session, timeout: float) -> str:
    """Stream install: the tree goes to the host as one tar into a file of the workspace,
    bounded in size; the host waits for exactly the bytes tar says it wrote, and it is
    unpacked once QEMU has ended.

    Each file leaves the scratch disk once it is in the tar (``--remove-files``), and a loop
    beside the pipeline gives the freed blocks back to the host's disk with fstrim every
    TRIM_EVERY seconds (QEMU's ``discard=unmap``), so the host holds the scratch image and the
    archive at once only for the part in flight, not the tree twice. Not the mount's
    ``discard``: that sends a discard for each removed file as it goes, which under TCG made
    the send of 59,364 entries 2.7 ms an entry (docs/performance.md). The port gets whole
    records (RECORD bytes): under TCG every write to it costs a trap, and tee's 8 KiB writes
    made it a fifth as fast."""
    assert session.stream is not None  # the step is enabled only then
    out = pipe_ends(session.stream.pipe)[1]
    with Receiver(out, session.workspace.archive, limit=STREAM_LIMIT) as receiver:
        # Busybox runs its own applets before PATH, so GNU find and tar by their paths. The
        # tree's top-level entries are named (tar cannot remove "." itself; the host makes the
        # box's / anyway), the scratch file system's lost+found is no part of it.
        flags = (*TAR_PACK, "--one-file-system", "--remove-files", "--totals", f"--blocking-factor={RECORD // 512}",
                 "--null", "--no-unquote", "-T", "-")  # fmt: skip
        keep = " ".join(q(flag) for flag in flags)
        pack = f"/usr/bin/find . -mindepth 1 -maxdepth 1 ! -name lost+found -print0 | /usr/bin/tar -c {keep} -f -"
        carry = f"dd of=/dev/virtio-ports/{STREAM_PORT} bs={RECORD} iflag=fullblock"
        # tar's words (its totals among them) are shown after dd's, which would interleave with them.
        said, stop = f"{GUEST_RUN}/tar-{session.run_id}.log", f"{GUEST_RUN}/trim-{session.run_id}.stop"
        # The trimmer ends at its next round once the pipeline has (no fstrim left holding the mount).
        trim = f"(while [ ! -e {stop} ]; do fstrim {MNT} 2>/dev/null; sleep {TRIM_EVERY}; done) & trimmer=$!"
        send = f"{pack} 2>{said} | {carry}; rc=$?; touch {stop}; wait $trimmer; rm -f {stop}; exit $rc"
        result = con.check(
            f"(set -o pipefail; cd {MNT} || exit; {trim}; {send}); rc=$?; cat {said}; rm -f {said}; (exit $rc)",
            timeout,
            hint="the guest could not pack the tree; see the transcript",
        )
        written = re.search(r"^Total bytes written: (\d+)", result, re.MULTILINE)
        if written is None:
            raise stream.StreamError("the guest's tar did not say how many bytes it wrote", "see the transcript")
        size = receiver.wait_for(int(written[1]), stream.SETTLE)
    return f"the tree arrived as one {size / 2**20:.0f} MiB tar; it is unpacked once the guest is gone"


def unmount(con: Console, session: Session, timeout: float) -> None:
    con.check(f"sync && umount -R {MNT}", timeout, hint="something still uses the target; see the transcript")


STEPS: list[Step] = [
    Step("mount", "Mounting the target over 9p", mount_target, 60),
    Step("keyring", "Making the live system's pacman keyring", make_keyring, 1800),
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
COMMAND_TIMEOUT = 3600.0  # seconds per command at --timeout-scale 1
# The stream can hold no more than the scratch disk does; a guest that sends more is refused
# before it fills the host's disk.
STREAM_LIMIT = SCRATCH_SIZE + (1 << 30)
RECORD = 128 << 10  # the stream's tar record, and what each write to the port carries
TRIM_EVERY = 1  # seconds between the send's fstrim rounds on the scratch disk
LEGACY_STATE = ".provision-arch"  # where provision-arch up to 0.x kept its state: in the guest's reach
UNPACK_DIR = ".provision-arch-unpack"  # in the target, while the stream is unpacked
# The dev-box steps and the config that asks for each: a step nobody asked for is no part of
# the run (not even a skipped one).
DEVBOX_STEPS: list[tuple[Callable[[Config], object], Step]] = [
    (lambda cfg: cfg.users, Step("users", "Creating users", create_users, 600)),
    (lambda cfg: cfg.files, Step("files", "Copying files in", copy_files, 600)),
    (lambda cfg: cfg.services, Step("services", "Enabling services", enable_services, 300)),
]


def plan(cfg: Config) -> list[Step]:
    """The guest steps of one run: STEPS, with the dev-box steps the config asks for before the tree is sent.

    Files come after users (they may be a user's), services after files (a unit may be a
    copied file), and the commands last, when the box is complete.
    """
    devbox = [step for wanted, step in DEVBOX_STEPS if wanted(cfg)]
    commands = [command_step(index, command) for index, command in enumerate(cfg.commands)]
    at = [step.name for step in STEPS].index("stream")  # a stream install sends the tree when it is complete
    return [*STEPS[:at], *devbox, *commands, *STEPS[at:]]


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
    events.hide(*cfg.password_hashes)  # out of every event: guest output in an error, a note, a console line
    if gap := users.ssh_gap(cfg.users, cfg.packages, cfg.services):
        events.note(gap)
    with session.workspace.locked():
        # A root directory's mode: the guest's own users must pass it (pacman 7 downloads its
        # databases as `alpm` into the target during a 9p pacstrap). What keeps other host users
        # from the box's setuid files and device nodes is a closed parent (preflight, finish()).
        cfg.target.mkdir(mode=0o755, parents=True, exist_ok=True)
        with Tree(cfg.target) as tree:
            legacy = tree.exists(LEGACY_STATE)
        if legacy:
            as_guest_root("remove", cfg.target, LEGACY_STATE, as_root=is_root())  # it may hold a staged password hash
            events.note(f"removed {cfg.target / LEGACY_STATE}: an older provision-arch kept its state there")
        state = resume or State(box_record(cfg), users=[user.name for user in cfg.users])
        save(cfg.target, state)
        if resume:
            events.note(f"resuming the install into {cfg.target}: {', '.join(resume.done) or 'no target step'} done before")
        return in_live_system(session, events, cache_dir, state, plan(cfg), expected=expected)


def in_live_system(
    session: Session, events: Bus, cache_dir: Path, state: State, steps: list[Step], *, expected: Manifest | None = None
) -> Path:
    """Boot the ISO, run ``steps`` on the target, power off, unpack a stream, finish; the manifest's path.

    The install's and the update's common part: the caller holds the target's lock."""
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
    if any(step.name == "keyring" for step in steps):  # an update has none: it keeps no keyring, and has no port
        session = dataclasses.replace(session, live_keyring=live_keyring(cfg, cache_dir, iso_sha256, events))
    try:
        transcript = Transcript(
            session.transcript, redact=cfg.password_hashes, on_line=lambda line: events.emit(ConsoleLine(line))
        )
    except OSError as exc:
        raise HostError(f"cannot write {session.transcript}: {exc.strerror}", "check --log and the state directory") from exc
    events.note(f"console transcript: {session.transcript}")
    try:
        with ExitStack() as ahead:
            extract = None
            with ExitStack() as machine:
                with events.step("stage", "Staging files for the guest"):
                    session.stage()  # inside the try: a half-written stage (the password hash!) is removed too
                with events.step("boot", "Booting the ISO and logging in"):
                    con = machine.enter_context(live_console(session, iso, boot, transcript, events))
                    con.check("dmesg -n 1", 30)  # keep kernel messages out of command output
                run_steps(con, session, events, transcript, state, steps=steps)
                with events.step("poweroff", "Powering off"):
                    if session.stream is not None:  # the archive is whole: checked while the guest powers off
                        extract = ahead.enter_context(
                            unpack.checked_ahead(session.workspace.archive, as_root=is_root(), limit=STREAM_LIMIT, consume=True)
                        )
                    con.poweroff()
            if extract is not None:
                session.workspace.scratch.unlink(missing_ok=True)  # QEMU is gone: the tree is in the archive alone
                with events.step("unpack", "Unpacking the tree into the target"):
                    events.note(unpack_tree(session, state, extract))
    except (BootFailed, ConsoleTimeout, CommandFailed) as exc:
        exc.hint = f"{exc.hint}; transcript: {session.transcript}" if exc.hint else f"transcript: {session.transcript}"
        raise
    finally:
        transcript.close()
        session.unstage()
    return finish(session, events, state, (iso, iso_sha256), expected)


def live_keyring(cfg: Config, cache_dir: Path, iso_sha256: str, events: Bus) -> LiveKeyring | None:
    """How this run gets its live keyring (None: made, and not kept: --no-keep-keyring)."""
    if not cfg.keep_keyring:
        return None
    path = keyring.kept_path(cache_dir, iso_sha256)
    try:
        return LiveKeyring(path, keyring.load(path))
    except KeyringError as exc:
        events.note(f"{exc.message}: the live keyring is made again, and kept anew")
        return LiveKeyring(path)


def unpack_tree(session: Session, state: State, extract: Callable[[Path], unpack.Summary]) -> str:
    """The stream's archive into the target, now that no guest can reach either: ``extract``
    (of ``unpack.checked_ahead``) waits for the archive's check, then unpacks it.

    The archive goes into a new empty directory of the target, which is then moved over
    whatever an older tree left there (with --force): the extractor never meets a link it did
    not make. The state file marks the unpack, so an interrupted one is recognised next time.
    The archive is consumed as it is unpacked (its blocks freed behind tar): the host's disk
    holds the tree and a bounded part of the archive, never both whole."""
    state.unpacking = True
    save(session.target, state)
    root = is_root()
    as_guest_root("remove", session.target, UNPACK_DIR, as_root=root)
    with Tree(session.target) as tree:
        tree.mkdir(UNPACK_DIR, 0o700)
    summary = extract(session.target / UNPACK_DIR)
    as_guest_root("merge", session.target, UNPACK_DIR, as_root=root)
    state.unpacking = False
    save(session.target, state)
    return f"unpacked {summary.entries} entries ({summary.bytes / 2**20:.0f} MiB) into {session.target}"


def run_steps(con: Console, session: Session, events: Bus, transcript: Transcript, state: State, *, steps: list[Step]) -> None:
    """The guest steps in order; a resumed run skips the target steps an earlier run finished."""
    for step in steps:
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
    with Tree(cfg.target) as tree:
        missing = [name for name in (BOX_KERNEL, BOX_INITRD) if tree.regular(name, IN_ROOT) is None]
    if missing:
        raise BootFailed(
            f"the install finished but {cfg.target / missing[0]} is missing", f"see the transcript: {session.transcript}"
        )
    cfg.target.chmod(0o755)  # the box's /, whatever the tree's "./" said
    if reachable_by_others(cfg.target):
        owner = "root" if is_root() else "you"
        events.note(
            f"{cfg.target} is reachable by other users of this host, and the box's setuid files (sudo, su) run as "
            f"{owner} for them: keep the box in a directory closed to others (chmod 700 its parent)"
        )
    with events.step("manifest", "Writing the manifest"):
        manifest = write_manifest(cfg, *iso)
        if expected and (differ := compare(expected.packages, installed_packages(cfg.target))):
            raise Mismatch(
                f"the rebuild differs from {expected.path} in {len(differ)} package(s): {'; '.join(differ[:10])}",
                f"compare {manifest} with {expected.path}; was the snapshot the same?",
            )
        state.finished, state.updating = True, False
        save(cfg.target, state)
    return manifest

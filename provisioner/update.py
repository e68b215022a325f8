"""``provision-arch update``: bring a finished box to its (changed) config, in place.

The update runs where the install ran: in the live ISO, with the target shared over 9p and
the box's own pacman run in ``arch-chroot``. Booting the box itself would be the other way;
the ISO is the safer one, and no slower (docs/update.md has both boots' times):

- nothing of the box runs but pacman and its scriptlets, as during the install: not its
  init, its enabled services, its network set-up, nor what its users left in them;
- a box that no longer boots (a broken initramfs, a bad unit) can still be updated;
- the steps are the install's own (configure, initramfs, users, files, services,
  commands), proven there, with the same quoting, staging and redaction.

What changes is worked out on the host from the box's state (``state.json``: the options
that define the box and the accounts its config made) and the new config (see ``Changes``):
packages the config no longer names are removed when nothing else needs them (they are
marked as dependencies, and only orphans go), services it no longer names are disabled,
accounts it no longer names are removed (their home directories stay), a changed mirror or
snapshot rewrites the box's mirrorlist first (a new snapshot may move packages back:
``pacman -Suu``). Then ``pacman -Syu`` with the config's packages (``--needed``), and the
install's steps again; the manifest is rewritten from the box's pacman database.

With ``--config``, the file and the command line describe the box, as for an install (a key
the file leaves out takes its default): the same file that installed a box, changed, updates
it. Without one, the box's recorded options are the base and the command line changes them;
accounts and copied files live only in a config file (their secrets are not recorded), so
they are left as they are. The config's commands run again: they should be safe to repeat.

Interrupted, the box is marked as being updated: ``install`` refuses it and ``update`` runs
again from the start (every step is safe to repeat; pacman's stale lock is removed).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from shlex import quote as q
from typing import Any

from provisioner import users
from provisioner.config import Config, box_record, option_table
from provisioner.console import Console
from provisioner.errors import CommandFailed, UsageError
from provisioner.events import Bus
from provisioner.install import (
    FIRST_UID,
    LIVE_CACHE,
    MNT,
    STEPS,
    Step,
    account,
    chrooted,
    command_step,
    copy_files,
    create_users,
    enable_services,
    in_live_system,
    install_file,
    pacman_hint,
    remove_owned,
)
from provisioner.session import Session
from provisioner.state import State, save

PACMAN = "pacman --noconfirm"
ESSENTIAL = ("base", "linux")  # an update never removes these: the box would not boot
BOX_CACHE = "/var/cache/pacman/pkg"  # pacman's CacheDir in the box


@dataclass(frozen=True)
class Changes:
    """What an update changes beyond applying the new config, from the box's state and that config."""

    removed: tuple[str, ...] = ()  # packages the old config named and the new one does not
    disabled: tuple[str, ...] = ()  # services likewise
    gone: tuple[str, ...] = ()  # accounts likewise (those the config made)
    mirror: bool = False  # --mirror or --snapshot changed: the box's mirrorlist is rewritten
    downgrade: bool = False  # the snapshot changed: a package may go back to that day's version
    accounts: bool = True  # a config file was given: its users and files are the truth

    def summary(self) -> list[str]:
        """Notes for the user: what goes, what stays as it is."""
        notes = []
        if self.removed:
            notes.append(f"packages the config no longer names: {', '.join(self.removed)} (removed unless another needs them)")
        if self.disabled:
            notes.append(f"services the config no longer names are disabled: {', '.join(self.disabled)}")
        if self.gone:
            notes.append(f"accounts the config no longer names are removed (their homes stay): {', '.join(self.gone)}")
        if not self.accounts:
            notes.append("no --config: users and copied files are left as they are (only a config file holds them)")
        return notes


def changes(state: State, cfg: Config, *, accounts: bool) -> Changes:
    """What the update of a box in ``state`` to ``cfg`` removes, disables and rewrites: against
    the config before the first of a series of interrupted updates, whose changes may be half
    made (``State.before``)."""
    old = state.before if state.updating and state.before is not None else state.config
    packages, services = set(cfg.packages), set(cfg.services)
    gone = tuple(name for name in state.users if name not in {user.name for user in cfg.users}) if accounts else ()
    removed = tuple(name for name in old.get("packages", []) if name not in packages)
    if kept := [name for name in removed if name in ESSENTIAL]:
        raise UsageError(
            f"the new config no longer names {', '.join(kept)}: the update would remove the box's "
            + ("kernel" if kept == ["linux"] else "base system"),
            f"name {' and '.join(kept)} in the packages (--package replaces the list; give the whole list)",
        )
    return Changes(
        removed=removed,
        disabled=tuple(name for name in old.get("services", []) if name not in services),
        gone=gone,
        mirror=(old.get("mirror"), old.get("snapshot")) != (cfg.mirror, cfg.snapshot),
        downgrade=old.get("snapshot") != cfg.snapshot and cfg.snapshot is not None,
        accounts=accounts,
    )


def new_config(recorded: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The update's option values without a config file: those given, then the box's recorded ones."""
    rows = {row.name: row for row in option_table()}
    kept = {
        key: tuple(value) if rows[key].repeatable else value
        for key, value in recorded.items()
        if key in rows and values.get(key) is None
    }
    return {**values, **kept}


def check_updatable(target: Path, state: State | None) -> State:
    """The box's state, when it is a finished install (or an interrupted update)."""
    if state is None:
        raise UsageError(
            f"{target} has no install state provision-arch can trust",
            "update works on a box this provision-arch installed; install it again with --force",
        )
    if not state.finished and not state.updating:
        raise UsageError(
            f"{target} is not a finished install",
            f"finish it first: run the install command again (it resumes), or --force to start over: provision-arch {target}",
        )
    return state


# -- guest steps -----------------------------------------------------------------------------


def mount_cache(con: Console, session: Session, timeout: float) -> None:
    """The shared package cache over the box's own: downloads land in it, nothing in the box."""
    con.check(f"mount --bind {LIVE_CACHE} {MNT}{BOX_CACHE}", timeout, hint="the box has no /var/cache/pacman/pkg?")


def rewrite_mirrorlist(con: Console, session: Session, timeout: float) -> None:
    """The pinned day's mirrorlist, or (unpinned, or a new --mirror) the live system's, which names the mirror."""
    pinned = [file for file in session.files if str(file.guest_path) == "/etc/pacman.d/mirrorlist"]
    if pinned:
        install_file(con, pinned[0], timeout)
    else:
        con.check(f"install -m 0644 /etc/pacman.d/mirrorlist {MNT}/etc/pacman.d/mirrorlist", timeout)


def upgrade(downgrade: bool) -> Step:
    """pacman -Syu with the config's packages (--needed: those there are only upgraded); the
    keyring first, as Arch advises, so that packages signed by new keys verify."""

    def action(con: Console, session: Session, timeout: float) -> None:
        con.check(f"rm -f {MNT}/var/lib/pacman/db.lck", 30)  # ours: we hold the target's lock; an interrupted update left it
        keyring = f"{PACMAN} -S --needed archlinux-keyring"
        keyring = f"{PACMAN} -Sy && if {PACMAN} -Q archlinux-keyring >/dev/null 2>&1; then {keyring}; fi"
        packages = " ".join(q(name) for name in session.cfg.packages)
        flags = "-Suu" if downgrade else "-Su"
        for command in (f"sh -c {q(keyring)}", f"{PACMAN} {flags} --needed {packages}"):
            result = con.run(chrooted(command), timeout)
            if result.status != 0:
                raise CommandFailed(result.command, result.status, result.output, pacman_hint(result.output))

    return Step("upgrade", "Upgrading and installing packages (pacman -Syu)", action, 7200)


def remove_packages(names: tuple[str, ...]) -> Step:
    """Mark the dropped packages as dependencies, then remove those nothing needs (-Rns: with
    their own orphaned dependencies and saved configs); one another package needs stays."""

    def action(con: Console, session: Session, timeout: float) -> str | None:
        listed = con.run(chrooted(f"{PACMAN} -Qq {' '.join(map(q, names))}"), timeout).output.splitlines()
        installed = [name for name in names if name in {line.strip() for line in listed}]
        if not installed:
            return None
        con.check(chrooted(f"{PACMAN} -D --asdeps {' '.join(map(q, installed))}"), timeout)
        orphans = {line.strip() for line in con.run(chrooted(f"{PACMAN} -Qdtq"), timeout).output.splitlines()}
        going = [name for name in installed if name in orphans]
        if going:
            result = con.run(chrooted(f"{PACMAN} -Rns {' '.join(map(q, going))}"), timeout)
            if result.status != 0:
                raise CommandFailed(result.command, result.status, result.output, "see pacman's output and the transcript")
        if kept := [name for name in installed if name not in going]:
            return f"kept {', '.join(kept)}: another package needs it (now marked as a dependency)"
        return None

    return Step("remove", "Removing packages the config no longer names", action, 1800)


def disable_services(units: tuple[str, ...]) -> Step:
    def action(con: Console, session: Session, timeout: float) -> None:
        con.check(chrooted(f"systemctl disable {' '.join(map(q, units))}"), timeout, hint="see systemctl's message")

    return Step("disable", "Disabling services the config no longer names", action, 300)


def remove_accounts(names: tuple[str, ...]) -> Step:
    """userdel each account the config made and no longer names (never a system account); its
    home stays, its sudo rule goes."""

    def action(con: Console, session: Session, timeout: float) -> str | None:
        for name in names:
            _, uid = account(con, name)
            if uid is None or uid < FIRST_UID:
                continue  # gone already, or not an account of ours
            con.check(chrooted(f"userdel {q(name)}"), timeout, hint=f"see userdel's message ({name})")
            remove_owned(con, users.owned_files(name)[1], timeout)
        return f"removed {', '.join(names)}; their home directories under /home stay"

    return Step("accounts", "Removing accounts the config no longer names", action, 300)


def plan(cfg: Config, change: Changes) -> list[Step]:
    """The update's guest steps: the install's mount, then what changes, then the install's
    configuration steps again, then its unmount."""
    install = {step.name: step for step in STEPS}
    steps = [install["mount"]]
    if cfg.cache_packages:
        steps.append(Step("cache", "Sharing the package cache with the box's pacman", mount_cache, 60))
    if change.mirror:
        steps.append(Step("mirrorlist", "Writing the box's mirrorlist", rewrite_mirrorlist, 60))
    steps.append(upgrade(change.downgrade))
    if change.disabled:  # before their packages may go: disabling needs the unit file
        steps.append(disable_services(change.disabled))
    if change.removed:
        steps.append(remove_packages(change.removed))
    steps += [install["configure"], install["initramfs"]]
    if cfg.password_hash:
        steps.append(install["password"])
    if change.accounts and cfg.users:
        steps.append(Step("users", "Creating and updating users", create_users, 600))
    if change.gone:
        steps.append(remove_accounts(change.gone))
    if change.accounts and cfg.files:
        steps.append(Step("files", "Copying files in", copy_files, 600))
    if cfg.services:
        steps.append(Step("services", "Enabling services", enable_services, 300))
    steps += [command_step(index, command) for index, command in enumerate(cfg.commands)]
    return [*steps, install["unmount"]]


def update_box(session: Session, events: Bus, cache_dir: Path, state: State, change: Changes) -> Path:
    """The whole update after preflight; the manifest's path."""
    with session.workspace.locked():
        return _update(session, events, cache_dir, state, change)


def _update(session: Session, events: Bus, cache_dir: Path, state: State, change: Changes) -> Path:
    cfg = session.cfg
    events.hide(*cfg.password_hashes)
    for note in change.summary():
        events.note(note)
    if gap := users.ssh_gap(cfg.users, cfg.packages, cfg.services):
        events.note(gap)
    if state.updating:
        events.note(f"an earlier update of {cfg.target} was interrupted: this one starts over")
    # Until it is done, the box is being updated, and every account either config names is the config's.
    kept = state.users if not change.accounts else [user.name for user in cfg.users]
    before = state.before if state.updating and state.before is not None else state.config
    working = replace(state, config=box_record(cfg), done=[], finished=False, updating=True, before=before)
    working.users = sorted(set(state.users) | set(kept))
    save(cfg.target, working)
    manifest = in_live_system(session, events, cache_dir, working, plan(cfg, change))
    working.users, working.before = kept, None
    save(cfg.target, working)
    return manifest

"""The live system: boot the ISO in one QEMU and hand over its logged-in console.

``live_console`` is a context manager: it yields the ``Console`` of a logged-in live
system and, on leaving, always ends that QEMU. With ``--accel auto`` a KVM guest that
never prints its kernel banner (no KVM access, or KVM without nested virtualisation,
which hangs after the firmware) is retried under TCG; the KVM attempt is fully ended
before the TCG one starts, so two QEMUs never run at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from provisioner import preflight
from provisioner.config import Accel
from provisioner.console import Console, Transcript
from provisioner.errors import BootFailed, ConsoleTimeout
from provisioner.events import Bus
from provisioner.iso import BootFiles
from provisioner.qemu import Hardware, Machine, install_argv, resolve_accel, wrap
from provisioner.session import Session

KVM_FIRST_WORDS = 30.0  # seconds for a KVM guest's kernel to print its banner
BOOT_TIMEOUT = 900.0  # seconds from QEMU's start to `archiso login:` (TCG on a busy host is slow)
BANNER = r"Linux version"


def _machine(session: Session, accel: Accel, iso: Path, boot: BootFiles, transcript: Transcript) -> Machine:
    cfg = session.cfg
    hw = Hardware(memory=cfg.memory, cpus=cfg.cpus, accel=accel)
    cache = cfg.package_cache if cfg.cache_packages else None
    argv = install_argv(hw, iso, boot, cfg.target, mirror=cfg.guest_mirror, package_cache=cache, stream=session.stream)
    argv = wrap(argv, as_root=preflight.is_root())
    transcript.note(f"starting QEMU ({accel.value})")
    return Machine(argv, logfile=transcript)


def _kvm_starts(session: Session, iso: Path, boot: BootFiles, transcript: Transcript) -> Machine | None:
    """Launch under KVM; the machine if its kernel speaks, else None after ending it."""
    machine = _machine(session, Accel.KVM, iso, boot, transcript)
    try:
        con = Console(machine.launch(), scale=session.cfg.timeout_scale)
        con.expect({"banner": BANNER}, KVM_FIRST_WORDS, "the kernel banner under KVM")
        return machine
    except (ConsoleTimeout, BootFailed) as exc:
        machine.shutdown(hard=True)
        if session.cfg.accel is not Accel.AUTO:
            raise BootFailed(
                f"the guest did not start under KVM: {exc.message}",
                "use --accel tcg (slower), or --accel auto to fall back by itself",
                output=exc.output,
            ) from exc
        return None
    except BaseException:
        machine.shutdown(hard=True)
        raise


@contextmanager
def live_console(session: Session, iso: Path, boot: BootFiles, transcript: Transcript, events: Bus) -> Iterator[Console]:
    """Boot the ISO, log in, yield the console; QEMU is ended on the way out, always."""
    machine = None
    if resolve_accel(session.cfg.accel) is Accel.KVM:
        machine = _kvm_starts(session, iso, boot, transcript)
        if machine is None:
            events.note("no guest under KVM (the kernel never spoke); retrying with TCG, which is slower")
    with machine or _machine(session, Accel.TCG, iso, boot, transcript) as running:
        # The KVM machine is already running; a new one is launched here, exactly once.
        con = Console(running.child if machine else running.launch(), scale=session.cfg.timeout_scale)
        con.login(BOOT_TIMEOUT)
        yield con

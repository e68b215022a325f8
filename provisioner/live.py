"""The live system: boot the ISO in one QEMU and hand over its logged-in console.

``live_console`` is a context manager: it yields the ``Console`` of a logged-in live
system and, on leaving, always ends that QEMU. ``launched`` is the QEMU start it (and
``provision-arch run``) share: with ``--accel auto`` a KVM guest that never prints its
kernel banner (no KVM access, or KVM without nested virtualisation, which hangs after the
firmware) is retried under TCG; the KVM attempt is fully ended before the TCG one starts,
so two QEMUs never run at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from provisioner import preflight
from provisioner.config import Accel
from provisioner.console import Console, Transcript
from provisioner.errors import BootFailed, ConsoleTimeout
from provisioner.events import Bus
from provisioner.iso import BootFiles
from provisioner.qemu import Hardware, Machine, install_argv, resolve_accel
from provisioner.run import wrap
from provisioner.session import Session

KVM_FIRST_WORDS = 30.0  # seconds for a KVM guest's kernel to print its banner
BOOT_TIMEOUT = 900.0  # seconds from QEMU's start to `archiso login:` (TCG on a busy host is slow)
BANNER = r"Linux version"


def _machine(session: Session, accel: Accel, iso: Path, boot: BootFiles, transcript: Transcript) -> Machine:
    cfg = session.cfg
    hw = Hardware(memory=cfg.memory, cpus=cfg.cpus, accel=accel)
    cache = cfg.package_cache if cfg.cache_packages else None
    argv = install_argv(
        hw, iso, boot, cfg.target, session.stage_dir, mirror=cfg.guest_mirror, package_cache=cache, stream=session.stream,
        keyring=session.keyring_port,
    )  # fmt: skip
    argv = wrap(argv, as_root=preflight.is_root())
    transcript.note(f"starting QEMU ({accel.value})")
    return Machine(argv, logfile=transcript)


def _kvm_starts(make: Callable[[Accel], Machine], accel: Accel, scale: float) -> Machine | None:
    """Launch under KVM; the machine if its kernel speaks, else None after ending it."""
    machine = make(Accel.KVM)
    try:
        con = Console(machine.launch(), scale=scale)
        con.expect({"banner": BANNER}, KVM_FIRST_WORDS, "the kernel banner under KVM")
        return machine
    except (ConsoleTimeout, BootFailed) as exc:
        machine.shutdown(hard=True)
        if accel is not Accel.AUTO:
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
def launched(make: Callable[[Accel], Machine], accel: Accel, scale: float, events: Bus) -> Iterator[Machine]:
    """One launched QEMU, made by ``make`` for an accelerator; always ended on the way out.

    KVM first when it is usable; under ``auto`` a KVM guest whose kernel stays silent is
    ended before a TCG one is launched, so two QEMUs never run at once.
    """
    machine = None
    if resolve_accel(accel) is Accel.KVM:
        machine = _kvm_starts(make, accel, scale)
        if machine is None:
            events.note("no guest under KVM (the kernel never spoke); retrying with TCG, which is slower")
    with machine or make(Accel.TCG) as running:
        if machine is None:
            running.launch()  # the KVM machine is already running; a new one is launched here, exactly once
        yield running


@contextmanager
def live_console(session: Session, iso: Path, boot: BootFiles, transcript: Transcript, events: Bus) -> Iterator[Console]:
    """Boot the ISO, log in, yield the console; QEMU is ended on the way out, always."""
    cfg = session.cfg

    def make(accel: Accel) -> Machine:
        return _machine(session, accel, iso, boot, transcript)

    with launched(make, cfg.accel, cfg.timeout_scale, events) as running:
        con = Console(running.child, scale=cfg.timeout_scale)
        con.login(BOOT_TIMEOUT)
        yield con

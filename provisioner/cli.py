"""The command line: parse, build a Config, call one function, report.

``provision-arch ./base`` installs (the ``install`` command is the default), and
``provision-arch boot ./base`` boots the result. A ProvisionError becomes one line, a
hint line and the documented exit code.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from provisioner import __version__, preflight
from provisioner.config import Accel, build, load_file, merge, split_packages
from provisioner.errors import EXIT_CODES, ExitCode, HostError, ProvisionError, UsageError
from provisioner.install import preflight_step, provision
from provisioner.password import check_hash, hash_password, read_password_file
from provisioner.qemu import Hardware, boot_argv, resolve_accel, wrap
from provisioner.report import Progress

EPILOG = "Exit codes: " + "; ".join(f"{int(code)} {text}" for code, text in EXIT_CODES.items())


class DefaultInstallGroup(TyperGroup):
    """``provision-arch ./base …`` means ``provision-arch install ./base …``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # click.Context (vendored by typer)
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["install", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=DefaultInstallGroup,
    help="Build an Arch Linux root in a host directory from the Arch ISO, without root, and boot it under QEMU over 9p.\n\n"
    "  provision-arch ./base --iso archlinux-x86_64.iso --password-file pw.txt\n\n"
    "  provision-arch boot ./base",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # an error stays one line


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "provision-arch"


def fail(exc: ProvisionError) -> NoReturn:
    err.print(f"[red]error:[/] {escape(exc.message)}")
    details = exc.details()
    if details:
        err.print(escape(details), style="dim")
    if exc.hint:
        err.print(f"  [bold]hint:[/] {escape(exc.hint)}")
    raise typer.Exit(int(exc.exit_code))


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every `finally`: QEMU is stopped, staged secrets removed


def _version(value: bool) -> None:
    if value:
        print(f"provision-arch {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Build an Arch Linux root in a host directory from the Arch ISO and boot it under QEMU over 9p."""


def resolve_password(password_file: Path | None, password_hash: str | None) -> str:
    """The root password's crypt hash, from a hash, a file, or a prompt on a terminal."""
    if password_hash:
        return check_hash(password_hash)
    if password_file is not None:
        return hash_password(read_password_file(password_file))
    if sys.stdin.isatty():
        plaintext: str = typer.prompt("Root password for the new system", hide_input=True, confirmation_prompt=True)
        return hash_password(plaintext)
    raise UsageError("no root password given", "pass --password-file FILE (or set PROVISION_ARCH_PASSWORD_FILE)")


@app.command(epilog=EPILOG)
def install(
    target: Annotated[Path, typer.Argument(help="Directory to install into (created if missing; must be empty unless --force).")],
    *,
    iso: Annotated[
        Path | None,
        typer.Option(help="The Arch ISO; verified when ISO.sig lies beside it. [default: download and verify the latest]"),
    ] = None,
    iso_mirror: Annotated[
        str | None,
        typer.Option(help="Mirror to download the ISO from (without --iso). [default: https://geo.mirror.pkgbuild.com]"),
    ] = None,
    iso_version: Annotated[
        str | None,
        typer.Option(help="Release to download, YYYY.MM.DD; old ones come from the Arch Linux Archive. [default: latest]"),
    ] = None,
    trusted_key: Annotated[
        list[Path] | None, typer.Option(metavar="FILE", help="Extra OpenPGP key file trusted to sign the ISO (repeatable).")
    ] = None,
    package: Annotated[
        list[str] | None,
        typer.Option(
            "--package",
            "-p",
            metavar="NAME",
            help="Package to install (repeatable). Default: base base-devel linux vim man-db man-pages.",
        ),
    ] = None,
    packages: Annotated[str | None, typer.Option(help='Packages as one string, e.g. "base linux vim".')] = None,
    hostname: Annotated[str | None, typer.Option(help="Host name of the new system. [default: archlinux]")] = None,
    timezone: Annotated[str | None, typer.Option(help="Zoneinfo name, e.g. Europe/Berlin. [default: UTC]")] = None,
    locale: Annotated[str | None, typer.Option(help="Locale with charset, e.g. de_DE.UTF-8. [default: en_US.UTF-8]")] = None,
    keymap: Annotated[str | None, typer.Option(help="Console keymap for vconsole.conf. [default: us]")] = None,
    password_file: Annotated[
        Path | None,
        typer.Option(
            envvar="PROVISION_ARCH_PASSWORD_FILE",
            help="File whose first line is the root password (hashed on the host, never sent).",
        ),
    ] = None,
    password_hash: Annotated[
        str | None,
        typer.Option(
            envvar="PROVISION_ARCH_PASSWORD_HASH", help="Root password as a crypt hash ($6$… from `openssl passwd -6`)."
        ),
    ] = None,
    mirror: Annotated[
        str | None,
        typer.Option(help="Arch mirror for the guest, e.g. https://geo.mirror.pkgbuild.com (passed as mirror= to the ISO)."),
    ] = None,
    memory: Annotated[int | None, typer.Option(help="Guest memory in MiB. [default: 2048]")] = None,
    cpus: Annotated[int | None, typer.Option(help="Guest CPUs. [default: 2]")] = None,
    accel: Annotated[
        Accel | None, typer.Option(help="auto: KVM when usable (falls back to TCG if the guest stays silent). [default: auto]")
    ] = None,
    refresh_keyring: Annotated[
        bool | None,
        typer.Option(
            "--refresh-keyring/--no-refresh-keyring",
            help="Update archlinux-keyring in the live system before pacstrap (old ISOs need it). [default: on]",
        ),
    ] = None,
    timeout_scale: Annotated[
        float | None, typer.Option(help="Multiply every timeout (slow machines, big package sets). [default: 1.0]")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file with any of these options (command line wins).")] = None,
    log: Annotated[
        Path | None, typer.Option(help="Console transcript file. [default: TARGET/.provision-arch/console.log]")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Install into a non-empty target directory.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the guest console and host commands as they run.")
    ] = False,
) -> None:
    """Install Arch Linux into TARGET: boot the ISO in QEMU, pacstrap over 9p, configure, power off."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    progress = Progress(verbose=verbose)
    try:
        file_values = load_file(config) if config else {}
        listed = split_packages([*(package or []), *([packages] if packages else [])])
        cli_values: dict[str, Any] = {
            "iso": iso,
            "iso_mirror": iso_mirror,
            "iso_version": iso_version,
            "trusted_keys": tuple(trusted_key) if trusted_key else None,
            "packages": listed or None,
            "hostname": hostname,
            "timezone": timezone,
            "locale": locale,
            "keymap": keymap,
            "mirror": mirror,
            "memory": memory,
            "cpus": cpus,
            "accel": accel,
            "refresh_keyring": refresh_keyring,
            "timeout_scale": timeout_scale,
        }
        values = merge(cli_values, file_values)
        file_secret = values.pop("password_file", None)
        secret_file = password_file or file_secret
        cfg = build({**values, "target": target, "log": log, "force": force})
        # The host first: nobody should type a password twice to learn QEMU is missing.
        preflight_step(cfg, progress)
        cfg = dataclasses.replace(cfg, password_hash=resolve_password(secret_file, password_hash))
        provision(cfg, progress, cache_home())
    except ProvisionError as exc:
        fail(exc)
    except KeyboardInterrupt:
        err.print("[red]error:[/] interrupted; QEMU was stopped")
        err.print("  [bold]hint:[/] run the same command with --force to start over in the same directory")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    err.print(progress.table())
    err.print(f"[green]Installed Arch Linux into {escape(str(cfg.target))}.[/] Boot it with:")
    print(f"provision-arch boot {shlex.quote(str(target))}")


@app.command(epilog=EPILOG)
def boot(
    target: Annotated[Path, typer.Argument(help="A directory installed by provision-arch.")],
    *,
    print_only: Annotated[bool, typer.Option("--print", help="Print the QEMU command line instead of running it.")] = False,
    memory: Annotated[int, typer.Option(help="Guest memory in MiB.")] = 2048,
    cpus: Annotated[int, typer.Option(help="Guest CPUs.")] = 2,
    accel: Annotated[Accel, typer.Option(help="auto: KVM when /dev/kvm is usable and the CPU has VT-x/AMD-V.")] = Accel.AUTO,
) -> None:
    """Boot TARGET with its 9p root; the serial console is this terminal (Ctrl-A X quits QEMU)."""
    try:
        if missing := preflight.problems([lambda: preflight.check_installed(target)]):
            raise UsageError(missing[0].message, missing[0].fix)
        if not print_only and (host := preflight.problems(preflight.host_checks())):
            raise HostError(host[0].message, host[0].fix)
        hw = Hardware(memory=memory, cpus=cpus, accel=resolve_accel(accel))
        argv = wrap(boot_argv(hw, target), as_root=preflight.is_root())
    except ProvisionError as exc:
        fail(exc)
    if print_only:
        print(shlex.join(argv))
        return
    raise typer.Exit(subprocess.call(argv))


def main() -> None:
    app(prog_name="provision-arch")

"""The command line: parse, resolve a Config, call one function, report.

``provision-arch ./base`` installs (the ``install`` command is the default),
``provision-arch boot ./base`` boots the result, and ``provision-arch run ./base -- CMD``
runs one command in it and exits with its status. The install options are not written
here: they are generated from the option table, ``Config``'s fields (``config.py``).
A ProvisionError becomes an error event: one line, a hint line, the documented exit code.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from provisioner import __version__, attach, preflight, state
from provisioner.boot import boot_command, describe
from provisioner.config import (
    BOOT_TABLE,
    BootConfig,
    Config,
    InstallVia,
    OptionField,
    box_record,
    build,
    build_boot,
    defaults_shown,
    load_file,
    merge,
    option_table,
    secret_in_argv,
    split_packages,
)
from provisioner.display import Display
from provisioner.errors import EXIT_CODES, ExitCode, HostError, ProvisionError, UsageError
from provisioner.events import Bus, Checked, Error, Event, Output, Result, RunResult, Started
from provisioner.export import Format, export, parse_size
from provisioner.install import provision
from provisioner.jsonlines import JsonLines
from provisioner.manifest import Manifest, load_manifest
from provisioner.password import check_hash, hash_password, read_password_file
from provisioner.preflight import Host, check_host, run_checks
from provisioner.run import call
from provisioner.runbox import RunRequest, run_in_box
from provisioner.session import Session
from provisioner.update import changes, check_updatable, new_config, update_box
from provisioner.users import SSH_FIX, sshd_enabled
from provisioner.workspace import Workspace

FILE_ONLY = [row.name for row in option_table() if not row.option.in_cli]
EPILOG = "Exit codes: " + "; ".join(f"{int(code)} {text}" for code, text in EXIT_CODES.items())
CONTEXT = {"help_option_names": ["-h", "--help"]}


class DefaultInstallGroup(TyperGroup):
    """``provision-arch ./base …`` means ``provision-arch install ./base …``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # click.Context (vendored by typer)
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["install", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=DefaultInstallGroup,
    help="Build an Arch Linux root in a host directory from the Arch ISO, without root, and boot it under QEMU over 9p.\n\n"
    "  provision-arch ./base --iso archlinux-x86_64.iso --password-file pw.txt\n\n"
    "  provision-arch boot ./base",
    epilog=EPILOG,
    no_args_is_help=True,
    context_settings=CONTEXT,
    rich_markup_mode=None,
)


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "provision-arch"


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


Json = Annotated[
    bool, typer.Option("--json", help="Print events as JSON lines on stdout (see README); human text stays on stderr.")
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show the guest console and host commands as they run.")]


AGAIN = {"update": "run the same update again: it starts over"}  # after Ctrl-C; otherwise --force


@contextmanager
def reporting(command: str, target: Path, *, json: bool, verbose: bool) -> Iterator[Bus]:
    """The run's event bus with its consumers; a ProvisionError or Ctrl-C ends as an error event and exit code."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s")
    bus = Bus(Display(verbose=verbose))
    if json:
        bus.sinks.append(JsonLines(sys.stdout))
    bus.emit(Started(command, str(target), __version__))
    try:
        yield bus
    except ProvisionError as exc:
        bus.emit(Error(exc.message, exc.hint, int(exc.exit_code), exc.details()))
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        hint = AGAIN.get(command, "run the same command with --force to start over in the same directory")
        bus.emit(Error("interrupted; QEMU was stopped", hint, int(ExitCode.INTERRUPTED)))
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


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


def _cli_type(row: OptionField) -> Any:
    """The Typer type of an option: lists for repeatable ones, text for those read from text,
    and always optional (None = not given)."""
    base = str if row.option.from_text else row.base_type
    return list[base] | None if row.repeatable else base | None  # type: ignore[valid-type]


def _cli_option(row: OptionField, shown_default: str, of: type) -> Any:
    flags = row.flags
    if row.base_type is bool and row.default is True:
        flags = (f"{flags[0]}/{flags[1]}",)  # click's on/off switch
    help_text = row.option.help
    if shown_default and "[default" not in help_text:
        help_text += f" [default: {shown_default}]"
    if row.option.in_file:
        help_text += f" (config key: {row.name})" if of is Config else f" ([{BOOT_TABLE}] key: {row.name})"
    return typer.Option(*flags, help=help_text, metavar=row.option.metavar, envvar=row.option.envvar, show_default=False)


def _with_options(of: type, leave: tuple[str, ...] = ()) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command one keyword parameter per row of an option table (``Config``'s or
    ``BootConfig``'s), after its own; not those in ``leave``."""

    def give(command: Callable[..., None]) -> Callable[..., None]:
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        own = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
        generated = [
            inspect.Parameter(row.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=Annotated[_cli_type(row), _cli_option(row, shown, of)])
            for row, shown in defaults_shown(of)
            if row.option.in_cli and row.name not in leave
        ]  # fmt: skip
        signature = inspect.Signature([*own, *generated])
        command.__signature__ = signature  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return command

    return give


def _option_values(given: dict[str, Any], of: type = Config) -> dict[str, Any]:
    """Command-line values by config key; lists become tuples, package lists are split, and
    values given as text are read (shares, forwards)."""
    values: dict[str, Any] = {}
    for row in option_table(of):
        value = given.get(row.name)
        read = row.option.from_text
        if isinstance(value, list):
            if row.option.split:
                value = split_packages(value)
            else:
                value = tuple(read(item, row.flags[0]) for item in value) if read else tuple(value)
            value = value or None
        elif value is not None and read:
            value = read(value, row.flags[0])
        values[row.name] = value
    return values


ADDED = ("shares", "forwards")  # the command line's add to the file's; every other option replaces it


def boot_settings(given: dict[str, Any], config: Path | None) -> BootConfig:
    """How to boot: the command line over the config file's [boot] table over the defaults;
    shares and forwards from both (a team's file's, then yours)."""
    ours, file = _option_values(given, BootConfig), load_file(config, BootConfig) if config else {}
    values = merge(ours, file)
    for key in ADDED:
        values[key] = (*file.get(key, ()), *(ours.get(key) or ()))
    return build_boot(values)


def from_the_manifest(expected: Manifest, given: dict[str, Any]) -> dict[str, Any]:
    """The options a manifest fixes; the command line may not contradict them."""
    fixed = {key: tuple(value) if isinstance(value, list) else value for key, value in expected.config.items()}
    clashes = [key for key, value in fixed.items() if given.get(key) not in (None, value)]
    if clashes:
        raise UsageError(
            f"{expected.path} fixes {', '.join(clashes)}; the command line gives other values",
            "drop those options, or build without --from-manifest",
        )
    return fixed


@app.command(epilog=EPILOG, context_settings=CONTEXT)
@_with_options(Config)
def install(
    ctx: typer.Context,
    target: Annotated[Path, typer.Argument(help="Directory to install into (created if missing; must be empty unless --force).")],
    *,
    config: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="TOML file with any of the options below, by config key (the command line wins), and the keys only a file "
            f"can hold: {', '.join(FILE_ONLY)}.",
        ),
    ] = None,
    from_manifest: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Rebuild the box a manifest.json describes: same ISO, snapshot, options, versions."),
    ] = None,
    json: Json = False,
    verbose: Verbose = False,
    **options: Any,
) -> None:
    """Install Arch Linux into TARGET: boot the ISO in QEMU, pacstrap over 9p, configure, power off."""
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    with reporting("install", target, json=json, verbose=verbose) as events:
        _warn_secret_flags(ctx, events)
        given = _option_values(options)
        values = merge(given, load_file(config) if config else {})
        expected = load_manifest(from_manifest) if from_manifest else None
        if expected:
            values = {**values, **from_the_manifest(expected, given)}
        password_file, password_hash = values.pop("password_file", None), values.pop("password_hash", None)
        cfg = _with_cache(build({**values, "target": target}))
        resume = state.plan(cfg.target, box_record(cfg), cfg.force, stream=cfg.install_via is InstallVia.STREAM)
        # The host first: nobody should type a password twice to learn QEMU is missing.
        with events.step("preflight", "Checking the host"):
            warnings = check_host(Host(target=cfg.target, force=cfg.force or resume is not None, iso=cfg.iso))
        for warning in warnings:
            events.note(f"{warning.message} ({warning.fix})")
        asked = time.monotonic()
        cfg = dataclasses.replace(cfg, password_hash=resolve_password(password_file, password_hash))
        prompt_seconds = time.monotonic() - asked
        session = Session.create(cfg, resuming=resume is not None)
        manifest = provision(session, events, cache_home(), resume, expected)
        wall = time.monotonic() - started - prompt_seconds
        boot_line = f"provision-arch boot {shlex.quote(str(target))}"
        events.emit(
            Result(
                "ok",
                f"Installed Arch Linux into {cfg.target}. Boot it with: {boot_line}",
                round(wall, 3),
                {
                    "target": str(cfg.target),
                    "transcript": str(session.transcript),
                    "manifest": str(manifest),
                    "boot": boot_line,
                },
            )
        )
    if not json:
        print(boot_line)  # stdout: the one thing a script may want


def _warn_secret_flags(ctx: typer.Context, events: Bus) -> None:
    for row in option_table():
        source = ctx.get_parameter_source(row.name) if row.option.secret else None
        if source is not None and source.name == "COMMANDLINE":  # not from its environment variable
            events.note(secret_in_argv(row))


# What provision-arch keeps in the user's cache and trusts on its next run (the verified ISOs,
# the kept live keyrings): the guest, which writes the package cache, must reach neither.
TRUSTED_CACHES = ("iso", "keyrings")


def _with_cache(cfg: Config) -> Config:
    """The package cache's default place, in the user's cache directory; UsageError for one
    that holds what a run trusts (``TRUSTED_CACHES``)."""
    if cfg.cache_packages and cfg.package_cache is None:
        return dataclasses.replace(cfg, package_cache=cache_home() / "pkg")
    if cfg.cache_packages and cfg.package_cache is not None:
        shared = cfg.package_cache.resolve()
        for name in TRUSTED_CACHES:
            trusted = (cache_home() / name).resolve()
            if shared == trusted or shared in trusted.parents:
                raise UsageError(
                    f"--package-cache {cfg.package_cache} holds {trusted}, which the guest must not write",
                    f"give a directory of its own (the default is {cache_home() / 'pkg'})",
                )
    return cfg


UPDATE_LEAVES = ("force", "install_via")  # an update works in place, over 9p


@app.command(name="update", epilog=EPILOG, context_settings=CONTEXT)
@_with_options(Config, leave=UPDATE_LEAVES)
def update_command(
    ctx: typer.Context,
    target: Annotated[Path, typer.Argument(help="A directory installed by provision-arch.")],
    *,
    config: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="TOML file with the box's whole config, as for the install (the command line wins; a key it leaves out "
            "takes its default). Without it, the box's own options are the base, and its users and files stay as they are.",
        ),
    ] = None,
    json: Json = False,
    verbose: Verbose = False,
    **options: Any,
) -> None:
    """Bring the installed box TARGET to its (changed) config, in place, from the ISO.

    New packages are installed and the rest upgraded (pacman -Syu); packages, services and
    users the config no longer names are removed or disabled; configuration, users, files,
    services and commands are applied again; the manifest is rewritten. With --config the
    file (and the command line) describe the box, as for an install; without it, an option
    not given keeps the box's value. Without --password-file the root password stays.
    """
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    with reporting("update", target, json=json, verbose=verbose) as events:
        _warn_secret_flags(ctx, events)
        recorded = check_updatable(target, state.load(target))
        values = merge(_option_values(options), load_file(config) if config else {})
        password_file, password_hash = values.pop("password_file", None), values.pop("password_hash", None)
        if config is None:
            values = new_config(recorded.config, values)  # without a file, the box's own options are the base
        cfg = _with_cache(build({**values, "target": target, "install_via": InstallVia.NINEP}))
        change = changes(recorded, cfg, accounts=config is not None)
        with events.step("preflight", "Checking the host"):
            warnings = check_host(Host(target=cfg.target, force=True, iso=cfg.iso))
        for warning in warnings:
            events.note(f"{warning.message} ({warning.fix})")
        if password_file is not None or password_hash:
            cfg = dataclasses.replace(cfg, password_hash=resolve_password(password_file, password_hash))
        session = Session.create(cfg)
        manifest = update_box(session, events, cache_home(), recorded, change)
        boot_line = f"provision-arch boot {shlex.quote(str(target))}"
        paths = {"target": str(cfg.target), "transcript": str(session.transcript), "manifest": str(manifest), "boot": boot_line}
        message = f"Updated {cfg.target} to its config. Boot it with: {boot_line}"
        events.emit(Result("ok", message, round(time.monotonic() - started, 3), paths))


@app.command(name="export", epilog=EPILOG, context_settings=CONTEXT)
def export_command(
    target: Annotated[Path, typer.Argument(help="A directory installed by provision-arch.")],
    *,
    fmt: Annotated[
        Format,
        typer.Option(
            "--format",
            help="raw or qcow2: a bootable GPT disk (UEFI); tar: the root file system for podman import, machinectl "
            "import-tar or wsl --import; oci: an OCI image layout directory for skopeo and podman.",
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="PATH", help="Where to write it (a new path outside the box).")
    ],
    size: Annotated[
        str | None,
        typer.Option(metavar="SIZE", help="The disk's size (raw, qcow2), e.g. 8G [default: the tree plus headroom]."),
    ] = None,
    json: Json = False,
    verbose: Verbose = False,
) -> None:
    """Export the box TARGET as a disk image, a root tarball or an OCI image, without root.

    The box's SSH host keys, its machine id (empty: each copy makes its own) and
    provision-arch's own names in the tree are left out; the box's manifest is written beside
    the export as OUTPUT.manifest.json. See docs/export.md.
    """
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    with reporting("export", target, json=json, verbose=verbose) as events:
        exported = export(target, fmt, output, events, size=parse_size(size) if size else None)
        paths = {"target": str(target), "output": str(exported.path), "manifest": str(exported.manifest)}
        message = f"Exported {target} as {fmt.value}: {exported.path} ({exported.size / 2**20:.0f} MiB)"
        events.emit(Result("ok", message, round(time.monotonic() - started, 3), paths))


BootConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help=f"TOML file whose [{BOOT_TABLE}] table gives any of the options below (the command line wins; its "
        "--share and --forward add to the table's).",
    ),
]


@app.command(epilog=EPILOG, context_settings=CONTEXT)
@_with_options(BootConfig)
def boot(
    target: Annotated[Path, typer.Argument(help="A directory installed by provision-arch.")],
    *,
    print_only: Annotated[bool, typer.Option("--print", help="Print the QEMU command line instead of running it.")] = False,
    config: BootConfigOption = None,
    **options: Any,
) -> None:
    """Boot TARGET with its root shared from this directory; the serial console is this terminal (Ctrl-A X quits QEMU)."""
    with reporting("boot", target, json=False, verbose=False) as events:
        settings = boot_settings(options, config)
        preflight.check_box(target, start=not print_only)
        attach.check_shares(settings.shares, target)
        ssh = [forward for forward in settings.all_forwards if forward.guest_port == attach.SSH_PORT]
        if ssh and not sshd_enabled(target):
            events.note(
                f"host port {ssh[0].host_port} forwards to the box's SSH port, but {target} has no sshd enabled, so "
                f"nothing will answer there; {SSH_FIX} and reinstall, or enable it in the box (systemctl enable --now sshd)"
            )
        root = preflight.is_root()
        if print_only:
            if settings.ephemeral:
                raise UsageError(
                    "--print cannot show an --ephemeral boot: its scratch disk and init exist only while it runs",
                    "drop --print, or --ephemeral",
                )
            print(describe(target, settings, as_root=root))
            return
        attach.check_forwards(settings.all_forwards)
        if settings.ephemeral:
            events.note("a throwaway boot: what the box writes is gone when it powers off (shares excepted)")
        # One provision-arch per target, but throwaway boots may run together: they leave the tree alone.
        lock = Workspace.of(target).locked(shared=settings.ephemeral)
        with lock, boot_command(target, settings, as_root=root) as argv:
            status = call(argv)
    raise typer.Exit(status)


RUN_EPILOG = (
    "Exit status: the command's own (0-255) once it ran; before that, provision-arch's: "
    "2 bad command line, no such user, or a box without systemd; 3 host not ready; 5 the box did not boot, "
    "or ended before the command did; 7 no start in time, or the command outlived --timeout; 130 interrupted. "
    "With --json the last event tells them apart: result (with exit_status) or error."
)


@app.command(epilog=RUN_EPILOG, context_settings=CONTEXT)
@_with_options(BootConfig)
def run(
    target: Annotated[Path, typer.Argument(help="A directory installed by provision-arch (its init must be systemd).")],
    command: Annotated[list[str], typer.Argument(metavar="COMMAND", help="The command and its arguments, after --.")],
    *,
    user: Annotated[str, typer.Option(metavar="NAME", help="Run as this user of the box.")] = "root",
    timeout: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="Stop the box if the command runs longer (exit 7).")
    ] = None,
    config: BootConfigOption = None,
    json: Json = False,
    verbose: Verbose = False,
    **options: Any,
) -> None:
    """Boot TARGET headless, run COMMAND as --user, stream its output, power off, exit with its status.

    The command runs as a systemd unit from the kernel command line (systemd.run=): no SSH,
    no network and no password are needed. Its stdout and stderr come on stdout, mixed as
    the box's console carries them (with --json: as output events).
    """
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    with reporting("run", target, json=json, verbose=verbose) as events:
        if not json:
            events.sinks.append(_print_output)
        request = RunRequest(target, tuple(command), user, timeout, boot_settings(options, config))
        status, transcript = run_in_box(request, events)
        paths = {"target": str(target), "transcript": str(transcript)}
        message = f"{shlex.join(command)} exited with status {status} in {target}"
        events.emit(RunResult("ok", message, round(time.monotonic() - started, 3), paths, status))
    raise typer.Exit(status)


def _print_output(event: Event) -> None:
    """The command's output on stdout, as it comes (without --json)."""
    if isinstance(event, Output):
        sys.stdout.write(event.text)
        sys.stdout.flush()


@app.command(epilog=EPILOG, context_settings=CONTEXT)
def doctor(
    target: Annotated[
        Path | None, typer.Argument(metavar="[TARGET]", help="Also check this target directory (space, file system).")
    ] = None,
    *,
    json: Annotated[bool, typer.Option("--json", help="Print each check as a JSON line on stdout.")] = False,
) -> None:
    """Check this host for provision-arch: one line per check, with the command that fixes a problem.

    Exits 3 when something blocks an install, 0 otherwise (warnings such as a missing KVM do not block).
    """
    with reporting("doctor", target or Path("."), json=json, verbose=False) as events:
        blocking: list[str] = []
        host = Host(target=target, force=True, cache=cache_home())
        for check, problems in run_checks(host, doctor=True):
            if not problems:
                events.emit(Checked(check.name, check.title, "ok"))
            for problem in problems:
                status = "fail" if problem.blocking else "warn"
                events.emit(Checked(check.name, check.title, status, problem.message, problem.fix))
                if problem.blocking:
                    blocking.append(problem.fix)
        if blocking:
            raise HostError(f"{len(blocking)} problem(s) would stop an install", blocking[0])
        events.emit(Result("ok", "this host can run provision-arch", 0.0, {}))


def main() -> None:
    app(prog_name="provision-arch")

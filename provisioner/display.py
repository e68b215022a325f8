"""The human display: events drawn on stderr for a person, or as plain lines for a log.

On a terminal each step shows a spinner, its elapsed time and the guest's latest console
line, and a download shows a progress bar; elsewhere (CI logs) one plain line when a step
starts, one when it ends, and a download line every 10 %. Everything goes to stderr.

Event text can carry the guest's output (an error's details are the console's last lines),
and the guest is not trusted: every text is drawn through ``shown()``, which removes terminal
escape sequences and replaces every other control character, so an OSC 52 clipboard write, a
title change or a screen clear from the box never reaches the user's terminal. ``--json``
needs no such step: ``json.dumps`` escapes the controls (``jsonlines``).
"""

from __future__ import annotations

import re
import time

from rich import progress as rich_progress
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from provisioner.download import size_text
from provisioner.events import (
    CONTROL_RE,
    Checked,
    ConsoleLine,
    Download,
    Error,
    Event,
    Note,
    Result,
    StepFinished,
    StepSkipped,
    StepStarted,
)

# A whole escape sequence goes, so that its printable tail ('[31m', ']52;c;…') does not show:
# CSI (ESC [ or the 8-bit CSI) with its parameters; OSC, DCS, SOS, PM and APC strings up to
# their terminator (BEL, ST, or the end of the line when it was cut); any other two-byte ESC.
ESCAPE_RE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -~]?"
)


def terminal_safe(text: str) -> str:
    """``text`` without escape sequences; any other control character becomes U+FFFD."""
    return CONTROL_RE.sub("\ufffd", ESCAPE_RE.sub("", text.replace("\r\n", "\n")))


def shown(text: str) -> str:
    """Event text as Rich markup that draws exactly that text, and nothing a terminal acts on."""
    return escape(terminal_safe(text))


class Display:
    """An event sink that draws for a person on ``console`` (stderr by default)."""

    def __init__(self, console: Console | None = None, verbose: bool = False) -> None:
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.verbose = verbose
        self.finished: list[StepFinished | StepSkipped] = []
        self._live: Live | None = None
        self._bar: rich_progress.Progress | None = None
        self._title = ""
        self._started = 0.0
        self._last_line = ""
        self._tenth = -1
        self._spinner = Spinner("dots")

    @property
    def animated(self) -> bool:
        return self.console.is_terminal and not self.verbose

    def __call__(self, event: Event) -> None:
        match event:
            case StepStarted() | StepFinished() | StepSkipped():
                self._step(event)
            case ConsoleLine(message=text):
                self._line(text)
            case Download():
                self._download(event)
            case Note(message=message):
                self.console.print(f"[yellow]![/] {shown(message)}")
            case Checked():
                self._checked(event)
            case Error():
                self._error(event)
            case Result():
                if self.finished:
                    self.console.print(self.table(event.seconds))
                self.console.print(f"[green]{shown(event.message)}[/]")

    def _step(self, event: StepStarted | StepFinished | StepSkipped) -> None:
        if isinstance(event, StepStarted):
            self._title, self._started, self._last_line, self._tenth = event.title, time.monotonic(), "", -1
            if self.animated:
                self._live = Live(self, console=self.console, transient=True, refresh_per_second=4)
                self._live.start()
            else:
                self.console.print(f"==> {shown(event.title)} …")
            return
        self._stop()
        self.finished.append(event)
        if isinstance(event, StepSkipped):
            self.console.print(f"[dim]- {shown(event.title)} (skipped)[/]")
        else:
            mark = "[green]✓[/]" if event.status == "ok" else "[red]✗[/]"
            self.console.print(f"{mark} {shown(event.title)} [dim]({event.seconds:.1f} s)[/]")

    def _checked(self, event: Checked) -> None:
        """One line per check: ✓ what, or the problem and the command that fixes it."""
        if event.status == "ok":
            self.console.print(f"[green]✓[/] {shown(event.title)}")
            return
        mark = "[red]✗[/]" if event.status == "fail" else "[yellow]![/]"
        self.console.print(f"{mark} {shown(event.title)}: {shown(event.message)} [bold]fix:[/] {shown(event.hint)}")

    def _error(self, event: Error) -> None:
        self._stop()
        self.console.print(f"[red]error:[/] {shown(event.message)}")
        if event.details:
            self.console.print(shown(event.details), style="dim")
        if event.hint:
            self.console.print(f"  [bold]hint:[/] {shown(event.hint)}")

    def _stop(self) -> None:
        for running in (self._live, self._bar):
            if running is not None:
                running.stop()
        self._live = self._bar = None

    def _line(self, text: str) -> None:
        """A line of guest console output: shown live, or printed in verbose mode."""
        text = "".join(ch for ch in terminal_safe(text) if ch.isprintable()).strip()
        if not text:
            return
        self._last_line = text
        if self.verbose:
            self.console.print(Text(f"    {text}", style="dim"))

    def _download(self, event: Download) -> None:
        if self.animated:
            if self._live is not None:  # the bar replaces the step's spinner
                self._live.stop()
                self._live = None
            if self._bar is None:
                self._bar = rich_progress.Progress(
                    rich_progress.TextColumn("{task.description}"),
                    rich_progress.BarColumn(),
                    rich_progress.DownloadColumn(binary_units=True),
                    rich_progress.TransferSpeedColumn(),
                    rich_progress.TimeRemainingColumn(),
                    console=self.console,
                    transient=True,
                )
                self._bar.start()
                self._bar.add_task(f"Downloading {shown(event.name)}", total=event.total)
            self._bar.update(self._bar.task_ids[0], completed=event.done, total=event.total)
        elif event.total:
            tenth = event.done * 10 // event.total
            if tenth != self._tenth:
                self._tenth = tenth
                self.console.print(f"    {tenth * 10}% ({size_text(event.done)} of {size_text(event.total)})", highlight=False)

    def __rich__(self) -> Spinner:
        """What Live redraws four times a second: spinner, title, elapsed, last guest line."""
        elapsed = time.monotonic() - self._started
        detail = Text(f"\n    {self._last_line[:120]}", style="dim") if self._last_line else Text("")
        self._spinner.update(text=Text.assemble(f"{self._title} ", (f"{elapsed:.0f} s", "dim"), detail))
        return self._spinner

    def table(self, wall: float) -> Table:
        """Step times, their sum, and the run's wall time: the two should agree."""
        rows = [(done.step, done.seconds, done.status) if isinstance(done, StepFinished) else (done.step, 0.0, "skipped")
                for done in self.finished]  # fmt: skip
        table = Table(title="Step times", show_footer=True)
        table.add_column("step", footer="sum of steps\nwall time")
        table.add_column("seconds", justify="right", footer=f"{sum(row[1] for row in rows):.1f}\n{wall:.1f}")
        table.add_column("status")
        for step, seconds, status in rows:
            table.add_row(step, f"{seconds:.1f}", status)
        return table

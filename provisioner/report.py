"""Progress for long work, and the closing timing table.

On a terminal each step shows a spinner, its elapsed time and the guest's latest console
line; elsewhere (CI logs) one plain line when a step starts and one when it ends.
Everything goes to stderr: stdout carries only the results a script may want.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text


@dataclass
class Timing:
    name: str
    seconds: float
    status: str


@dataclass
class Progress:
    console: Console = field(default_factory=lambda: Console(stderr=True, highlight=False, soft_wrap=True))
    verbose: bool = False
    timings: list[Timing] = field(default_factory=list)
    _live: Live | None = None
    _title: str = ""
    _started: float = 0.0
    _last_line: str = ""
    _spinner: Spinner = field(default_factory=lambda: Spinner("dots"))

    @contextmanager
    def step(self, name: str, title: str) -> Iterator[None]:
        self._title, self._started, self._last_line = title, time.monotonic(), ""
        if self.console.is_terminal and not self.verbose:
            self._live = Live(self, console=self.console, transient=True, refresh_per_second=4)
            self._live.start()
        else:
            self.console.print(f"==> {escape(title)} …")
        status = "failed"
        try:
            yield
            status = "ok"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            if self._live is not None:
                self._live.stop()
                self._live = None
            seconds = time.monotonic() - self._started
            self.timings.append(Timing(name, seconds, status))
            mark = "[green]✓[/]" if status == "ok" else "[red]✗[/]"
            self.console.print(f"{mark} {escape(title)} [dim]({seconds:.1f} s)[/]")

    def skip(self, name: str, title: str) -> None:
        self.timings.append(Timing(name, 0.0, "skipped"))
        self.console.print(f"[dim]- {escape(title)} (skipped)[/]")

    def line(self, text: str) -> None:
        """A line of guest console output: shown live, or printed in verbose mode."""
        text = "".join(ch for ch in text if ch.isprintable()).strip()
        if not text:
            return
        self._last_line = text
        if self.verbose:
            self.console.print(Text(f"    {text}", style="dim"))

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]![/] {escape(text)}")

    def __rich__(self) -> Spinner:
        """What Live redraws four times a second: spinner, title, elapsed, last guest line."""
        elapsed = time.monotonic() - self._started
        detail = Text(f"\n    {self._last_line[:120]}", style="dim") if self._last_line else Text("")
        self._spinner.update(text=Text.assemble(f"{self._title} ", (f"{elapsed:.0f} s", "dim"), detail))
        return self._spinner

    def table(self) -> Table:
        table = Table(title="Step times", show_footer=True)
        table.add_column("step", footer="total")
        table.add_column("seconds", justify="right", footer=f"{sum(t.seconds for t in self.timings):.1f}")
        table.add_column("status")
        for timing in self.timings:
            table.add_row(timing.name, f"{timing.seconds:.1f}", timing.status)
        return table

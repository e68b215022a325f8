"""What a run tells the world, as data: events, and the bus that hands them to consumers.

Domain code (``install``, ``acquire``, …) emits events and never imports a display. Two
consumers read them: the human display on stderr (``display.py``) and the ``--json``
stream on stdout (``jsonlines.py``). The JSON form of every event is ``to_json()``: a
``type`` plus the event's fields, the stable interface documented in the README.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

# Characters of event text that no terminal may receive raw (event text can be the guest's
# output): C0 but newline and tab, DEL, C1, and the bidirectional overrides that make text read
# other than it is stored. The display replaces them, --json escapes them.
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class Event:
    type: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class Started(Event):
    """The first event of every run."""

    type: ClassVar[str] = "start"
    command: str
    target: str
    version: str


@dataclass(frozen=True)
class StepStarted(Event):
    type: ClassVar[str] = "step-started"
    step: str
    title: str


@dataclass(frozen=True)
class StepFinished(Event):
    """``status`` is ``ok``, ``failed`` or ``interrupted``."""

    type: ClassVar[str] = "step-finished"
    step: str
    title: str
    seconds: float
    status: str


@dataclass(frozen=True)
class StepSkipped(Event):
    type: ClassVar[str] = "step-skipped"
    step: str
    title: str
    message: str = ""


@dataclass(frozen=True)
class Checked(Event):
    """One host check of ``doctor``: ``status`` is ``ok``, ``warn`` (the install goes on) or ``fail``."""

    type: ClassVar[str] = "check"
    step: str
    title: str
    status: str
    message: str = ""
    hint: str = ""


@dataclass(frozen=True)
class Note(Event):
    """Something the user should know that does not stop the run."""

    type: ClassVar[str] = "note"
    message: str


@dataclass(frozen=True)
class ConsoleLine(Event):
    """One line the guest printed (secrets already redacted)."""

    type: ClassVar[str] = "console"
    message: str


@dataclass(frozen=True)
class Download(Event):
    """Bytes of ``name`` received so far; ``total`` is None when the server did not say."""

    type: ClassVar[str] = "download"
    name: str
    done: int
    total: int | None


@dataclass(frozen=True)
class Result(Event):
    """The last event of a run that succeeded."""

    type: ClassVar[str] = "result"
    status: str
    message: str
    seconds: float
    paths: dict[str, str]


@dataclass(frozen=True)
class RunResult(Result):
    """The last event of a ``run`` whose command ran: its exit status, which is also provision-arch's."""

    exit_status: int


@dataclass(frozen=True)
class Output(Event):
    """What the command of ``run`` printed (stdout and stderr, as the console carries them): a
    line with its newline, or the text before the end of the command without one."""

    type: ClassVar[str] = "output"
    text: str


@dataclass(frozen=True)
class Error(Event):
    """The last event of a run that failed; ``exit_code`` is the process's exit status."""

    type: ClassVar[str] = "error"
    message: str
    hint: str
    exit_code: int
    details: str = ""


Sink = Callable[[Event], None]


REDACTED = "<redacted>"


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


class Bus:
    """Hands every event to every sink, in order; times steps.

    Every text field of every event is redacted of the secrets the run registered with
    ``hide()`` (the password hashes) before any sink sees it: a message, an error's details
    (guest output), a note. So no consumer, display or --json, can leak one."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = list(sinks)
        self._secrets: tuple[str, ...] = ()

    def hide(self, *secrets: str) -> None:
        """Never let these strings through (longest first, so none is left half-replaced)."""
        self._secrets = tuple(sorted({*self._secrets, *(secret for secret in secrets if secret)}, key=len, reverse=True))

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def emit(self, event: Event) -> None:
        if self._secrets:
            texts = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
            changed = {
                name: redact(value.replace("\x00", ""), self._secrets) for name, value in texts.items() if isinstance(value, str)
            }
            event = dataclasses.replace(event, **changed)
        for sink in self.sinks:
            sink(event)

    def note(self, message: str) -> None:
        self.emit(Note(message))

    def skip(self, step: str, title: str, why: str = "") -> None:
        self.emit(StepSkipped(step, title, why))

    @contextmanager
    def step(self, name: str, title: str) -> Iterator[None]:
        """A timed step: started, then finished with ``ok``, ``failed`` or ``interrupted``."""
        self.emit(StepStarted(name, title))
        started, status = time.monotonic(), "failed"
        try:
            yield
            status = "ok"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            self.emit(StepFinished(name, title, round(time.monotonic() - started, 3), status))

"""``--json``: every event as one JSON object per line on stdout, nothing else there.

The fields are ``Event.to_json()``'s; the README documents them. Download progress is
thinned to one line per whole percent, so a 1 GiB ISO makes about a hundred lines.

Text from the guest (an error's details) stays as it was, escaped: ``json.dumps`` writes the
C0 controls as ``\\u001b`` and the like, and DEL, the C1 controls and the bidirectional
overrides, which it would leave raw with ``ensure_ascii=False``, are escaped here, so that a
terminal showing the stream acts on none of them.
"""

from __future__ import annotations

import json
from typing import TextIO

from provisioner.events import CONTROL_RE, Download, Event


def line(event: Event) -> str:
    """One event as its JSON line, without a raw control character."""
    text = json.dumps(event.to_json(), ensure_ascii=False)
    # Outside its strings JSON is printable ASCII, so what is left of CONTROL_RE after
    # json.dumps sits inside a string, where the \\u escape means the same character.
    return CONTROL_RE.sub(lambda match: f"\\u{ord(match[0]):04x}", text) + "\n"


class JsonLines:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._percent: tuple[str, int] | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Download) and event.total:
            percent = (event.name, event.done * 100 // event.total)
            if percent == self._percent:
                return
            self._percent = percent
        self.stream.write(line(event))
        self.stream.flush()

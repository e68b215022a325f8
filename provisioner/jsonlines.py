"""``--json``: every event as one JSON object per line on stdout, nothing else there.

The fields are ``Event.to_json()``'s; the README documents them. Download progress is
thinned to one line per whole percent, so a 1 GiB ISO makes about a hundred lines.
"""

from __future__ import annotations

import json
from typing import TextIO

from provisioner.events import Download, Event


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
        self.stream.write(json.dumps(event.to_json(), ensure_ascii=False) + "\n")
        self.stream.flush()

"""Host commands: argv lists only, stdin from /dev/null, a missing binary said plainly."""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Sequence

log = logging.getLogger(__name__)


class NotFound(Exception):
    """The program is not on PATH."""


def run(argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a short host command and capture its output (never raises on a bad status)."""
    if shutil.which(argv[0]) is None:
        raise NotFound(argv[0])
    log.debug("+ %s", shlex.join(argv))
    return subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)

"""The clock the workflow, the outbox and the scheduler read.

In production it is the system clock. For tests that run real bot processes over simulated days, the
test-only setting `FRBOT_TEST_CLOCK_FILE` names a file holding an ISO 8601 time with its offset (e.g.
`2026-03-02T09:00:00+00:00`); every process reads "now" from it, so a test moves time for all of them by
rewriting the file. Never set it in production: the bot logs a warning at start-up when it is set. While
the file's time stands still, nothing that waits on time (reminders, outbox retries) moves either.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from storage.models import utcnow

log = logging.getLogger(__name__)
TEST_CLOCK_ENV = "FRBOT_TEST_CLOCK_FILE"

Clock = Callable[[], datetime]


class FileClock:
    """Now is the time written in a file, read at every call.

    Compared by content, not by the file's modification time and size: two same-length times written
    within one tick of the file system's clock (a few milliseconds) left the stamp as it was, and the
    second time was never read. Reading a line costs a test run nothing it would notice."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # the workflow, the outbox and the scheduler read it from their threads
        self._text: str | None = None
        self._now: datetime | None = None
        self()  # fail at start-up, not at the first sweep, if the file is missing or malformed

    def __call__(self) -> datetime:
        text = self.path.read_text(encoding="utf-8").strip()
        with self._lock:
            if text != self._text or self._now is None:
                try:
                    moment = datetime.fromisoformat(text)
                except ValueError:
                    if self._now is not None:  # caught mid-rewrite (write a temp file and rename to avoid it)
                        return self._now
                    raise ValueError(f"{self.path}: not an ISO 8601 time: {text!r}") from None
                if moment.tzinfo is None:
                    raise ValueError(f"{self.path}: the time needs an offset, e.g. {text}+00:00")
                self._now, self._text = moment, text
            return self._now


def system_clock() -> Clock:
    """The wall clock, or the test clock file when FRBOT_TEST_CLOCK_FILE is set."""
    path = os.environ.get(TEST_CLOCK_ENV)
    if not path:
        return utcnow
    log.warning("%s is set: reading the time from %s (tests only, never in production)", TEST_CLOCK_ENV, path)
    return FileClock(Path(path))

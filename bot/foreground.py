"""Answers first: work that follows an answer steps aside while this process is answering Slack.

Slack waits for every answer (3 s at most, and a person is looking at a spinner); what follows an answer
(opening a modal, recording a submission as a request, sending the outbox) can start a few milliseconds
later without anyone noticing. In one process they share one GIL, and on a small machine the same cores
with PostgreSQL and the Slack calls they make, so a piece of that work started while an answer is being
produced makes the answer wait for it. Background work therefore waits, before each piece, until no
answer is in flight, for at most MOST_WAIT_SECONDS: under saturation answers never stop, and the work
behind them must go on (a modal's trigger_id lives 3 s). A piece already started is not interrupted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Long enough for the answers in flight to finish (a few ms each), short against trigger_id's 3 s.
MOST_WAIT_SECONDS = 0.02


class AnswersInFlight:
    """How many answers this process is producing now, and a way to wait until there are none."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition(threading.Lock())

    @property
    def count(self) -> int:
        return self._count

    @contextmanager
    def answering(self) -> Iterator[None]:
        with self._idle:
            self._count += 1
        try:
            yield
        finally:
            with self._idle:
                self._count -= 1
                if self._count == 0:
                    self._idle.notify_all()

    def step_aside(self, most: float | None = None) -> None:
        """Wait until no answer is in flight, for at most `most` seconds (MOST_WAIT_SECONDS)."""
        if self._count == 0:  # the usual case, without taking the lock
            return
        with self._idle:
            self._idle.wait_for(lambda: self._count == 0, timeout=MOST_WAIT_SECONDS if most is None else most)


ANSWERS = AnswersInFlight()

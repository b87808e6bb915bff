"""Answers first: work that follows an answer steps aside while this process is answering Slack.

Slack waits for every answer (3 s at most, and a person is looking at a spinner); what follows an answer
(opening a modal, recording a submission as a request, sending the outbox) can start a few milliseconds
later without anyone noticing. In one process they share one GIL, and on a small machine the same cores
with PostgreSQL and the Slack calls they make, so a piece of that work started while an answer is being
produced makes the answer wait for it. Background work therefore waits, before each piece, until no
answer is in flight, for at most MOST_WAIT_SECONDS: under saturation answers never stop, and the work
behind them must go on (a modal's trigger_id lives 3 s). A piece already started is not interrupted.

A piece already started also yields the CPU: the threads that do background work run at a lower priority
than the ones that answer (`lower_this_thread`; on Linux a thread's niceness is its own), so when an answer
arrives while the machine's cores are busy, the kernel runs the answer first. It lowers only CPU priority:
idle CPU still goes to the background work, and its locks and transactions are the same.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from storage.db import background_work

# The niceness of background threads (0 keeps them level with the answers). At 19 the kernel gives a busy
# answering thread about 70 times the CPU of a background thread that competes with it for a core.
DEFAULT_BACKGROUND_NICENESS = 19

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


class BackgroundPriority:
    """Lowers the CPU priority of the threads that do background work, once per thread."""

    def __init__(self, niceness: int = DEFAULT_BACKGROUND_NICENESS) -> None:
        self.niceness = niceness
        self._lowered = threading.local()

    def lower_this_thread(self) -> None:
        """Called by background work as it starts; the main thread (a CLI command doing the same work
        in the foreground) is left as it is."""
        if getattr(self._lowered, "done", False):
            return
        self._lowered.done = True
        # Only Linux gives each thread its own niceness; elsewhere PRIO_PROCESS with a thread id would
        # name a process.
        if (
            self.niceness <= 0
            or not sys.platform.startswith("linux")
            or threading.current_thread() is threading.main_thread()
        ):
            return
        thread = threading.get_native_id()
        # A sandbox that forbids it leaves the work at the usual priority. Without privileges niceness
        # only goes up: never below what the thread already has.
        with contextlib.suppress(OSError):
            current = os.getpriority(os.PRIO_PROCESS, thread)
            os.setpriority(os.PRIO_PROCESS, thread, max(current, self.niceness))


BACKGROUND = BackgroundPriority()


@contextmanager
def background_thread() -> Iterator[None]:
    """Marks what runs inside (a thread's loop, a sweep) as background work twice over: at background CPU
    priority (BACKGROUND), and on SQLite behind the writers that answer Slack (storage.db.background_work).
    Used as a decorator on the loops of the intake and the outbox and on the scheduler's runs."""
    BACKGROUND.lower_this_thread()
    with background_work():
        yield

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

The answering threads also ask the kernel for a short time slice (`AnswerSlice`; Linux 6.12 and later,
where EEVDF takes a thread's own slice from `sched_setattr`). A thread woken by a request then preempts
whatever holds its core instead of waiting for that thread's slice to run out (1.4 ms by default on two
cores): PostgreSQL's backends, the Slack calls' peers, other processes. Background threads go back to
the kernel's slice.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from storage.db import background_work

# The niceness of background threads (0 keeps them level with the answers). At 19 the kernel gives a busy
# answering thread about 70 times the CPU of a background thread that competes with it for a core.
DEFAULT_BACKGROUND_NICENESS = 19

# The time slice asked for the answering threads, in microseconds (0: the kernel's). The kernel takes
# 100 us to 100 ms; a shorter slice lets a woken thread preempt sooner, and costs more switches only
# while it and another thread both want one core.
DEFAULT_ANSWER_SLICE_US = 100

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
        if threading.current_thread() is threading.main_thread():
            return
        ANSWER_SLICE.set_this_thread(0)  # an answering thread's short slice is not for background work
        # Only Linux gives each thread its own niceness; elsewhere PRIO_PROCESS with a thread id would
        # name a process.
        if self.niceness <= 0 or not sys.platform.startswith("linux"):
            return
        thread = threading.get_native_id()
        # A sandbox that forbids it leaves the work at the usual priority. Without privileges niceness
        # only goes up: never below what the thread already has.
        with contextlib.suppress(OSError):
            current = os.getpriority(os.PRIO_PROCESS, thread)
            os.setpriority(os.PRIO_PROCESS, thread, max(current, self.niceness))


BACKGROUND = BackgroundPriority()


class _SchedAttr(ctypes.Structure):
    # struct sched_attr (linux/sched/types.h); sched_runtime is a fair thread's slice in ns (6.12+).
    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
        ("sched_util_min", ctypes.c_uint32),
        ("sched_util_max", ctypes.c_uint32),
    ]


# (sched_setattr, sched_getattr) by machine; glibc has no wrapper for either.
_SCHED_ATTR_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}
_SCHED_OTHER = 0


class AnswerSlice:
    """The kernel's time slice for this process's threads (Linux 6.12+); elsewhere nothing happens."""

    def __init__(self) -> None:
        linux = sys.platform.startswith("linux")
        self._calls = _SCHED_ATTR_SYSCALLS.get(platform.machine()) if linux else None
        self._libc: ctypes.CDLL | None = None  # loaded at the first call: most processes never make one

    def set_this_thread(self, microseconds: int) -> bool:
        """Asks for a slice of `microseconds` (0: the kernel's default) for the calling thread, keeping
        its policy and niceness; threads and processes it starts later inherit it. False where the
        kernel or the machine cannot (then nothing changed)."""
        attr = self._attr_of_this_thread()
        if attr is None or attr.sched_policy != _SCHED_OTHER:  # real-time or idle: not ours to change
            return False
        attr.size = ctypes.sizeof(attr)
        attr.sched_flags = 0
        attr.sched_runtime = microseconds * 1000
        return self._syscall(0, attr, 0)

    def of_this_thread(self) -> int | None:
        """The calling thread's slice in microseconds, None where it cannot be read."""
        attr = self._attr_of_this_thread()
        return None if attr is None else int(attr.sched_runtime // 1000)

    def _attr_of_this_thread(self) -> _SchedAttr | None:
        attr = _SchedAttr()
        return attr if self._syscall(1, attr, ctypes.sizeof(attr), 0) else None

    def _syscall(self, which: int, attr: _SchedAttr, *rest: int) -> bool:
        if self._calls is None:
            return False
        try:
            if self._libc is None:
                self._libc = ctypes.CDLL(None, use_errno=True)
            return self._libc.syscall(self._calls[which], 0, ctypes.byref(attr), *rest) == 0
        except (OSError, AttributeError):
            return False


ANSWER_SLICE = AnswerSlice()


@contextmanager
def background_thread() -> Iterator[None]:
    """Marks what runs inside (a thread's loop, a sweep) as background work twice over: at background CPU
    priority (BACKGROUND), and on SQLite behind the writers that answer Slack (storage.db.background_work).
    Used as a decorator on the loops of the intake and the outbox and on the scheduler's runs."""
    BACKGROUND.lower_this_thread()
    with background_work():
        yield

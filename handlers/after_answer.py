"""Work a listener does once Slack has its answer.

The app runs with Bolt's `process_before_response=True`: the HTTP thread that received the request runs the
listener and sends the answer when the listener returns. A listener therefore acks, hands whatever follows
(opening a modal, reading the database, replying) to `AfterAnswer`, and returns.

With Bolt's default (`False`) the listener ran on another thread while the HTTP thread slept in 10 ms steps
until it saw the ack: every answer waited for a thread hand-over and the next 10 ms tick, and under load for
the GIL twice (bench/NOTES.md, item 20).

Where the work runs: on this process's listener pool, or, when `fr-bot run` has a follow-up process
(bot/follow_up.py), in that process: the request is handed over as its body arrived and that process
runs the same listener again, which there does its work locally. The answering process then spends its
GIL on answers.
The listener must judge the request there as it did here: a check that reads the clock (a deputy's start
date, not before today) reads it through `as_of`, which there gives the moment it read here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from bot.foreground import ANSWERS, BACKGROUND
from bot.guard import log_listener_failure

_HANDED_OVER: dict[str, Any] = {}
# In a follow-up process, while a handed-over request's listener runs on this thread: the moment the
# answering process judged it as of (`AfterAnswer.as_of`), if its listener read the clock, and the work
# the listener started (`started`), whose end the answering process is told of.
_JUDGED = threading.local()
# While the work of a request sent again to a new follow-up process runs on this thread (`sent_again`).
_AGAIN = threading.local()


@dataclass(frozen=True)
class ReceivedText:
    """A request's body as it arrived (bot/server.py read and checked it), for the follow-up process to
    parse again (bot/guard.py `read_body`): a text crosses the pipe as one copy, where the parsed payload
    (a submission's is about 18 kB of JSON as nested dicts) was pickled item by item on the answering
    process's GIL (bench/NOTES.md item 72)."""

    content_type: str
    text: str


class HandOver(Protocol):
    """Takes a request (its payload, or its body as it arrived) to run its work elsewhere; `here` runs it
    in this process instead, if the other process cannot take it. `as_of`: the moment the listener judged
    the request as of, if it read the clock (`AfterAnswer.as_of`), for the listener run there to judge it
    as of the same moment."""

    def __call__(
        self,
        request: dict[str, Any] | ReceivedText,
        here: Callable[[], None],
        as_of: datetime | None = None,
    ) -> None: ...


@contextmanager
def judged_as_of(moment: datetime | None, again: bool = False) -> Iterator[list[Future[None]]]:
    """In a follow-up process: the listener run meanwhile on this thread, for a request handed over by
    the answering process, reads `moment` from `AfterAnswer.as_of`, as that process's listener read it.
    Gives the list of the work it starts (filled as it runs), to tell that process when the request is
    done with (bot/follow_up.py). `again`: the request was sent again, after a follow-up process died
    before saying it was done with it (`sent_again`)."""
    started: list[Future[None]] = []
    _JUDGED.moment, _JUDGED.started, _JUDGED.again = moment, started, again
    try:
        yield started
    finally:
        _JUDGED.moment, _JUDGED.started, _JUDGED.again = None, None, False


def sent_again() -> bool:
    """Whether the work running on this thread is a request's sent again to a new follow-up process: its
    first run may have done it already (a modal opened, whose trigger_id is now spent), so a failure that
    only says so is not the user's business."""
    return bool(getattr(_AGAIN, "active", False))


class AfterAnswer:
    """Runs work on the listener pool after the answer, or hands the request to the follow-up process;
    shutdown waits for it (bot/cli.py)."""

    def __init__(self, executor: Executor, hand_over: HandOver | None = None) -> None:
        self._executor = executor
        self._hand_over = hand_over
        self._current = threading.local()  # the payload the listener on this thread is answering

    def remember(self, payload: dict[str, Any], received: ReceivedText | None = None) -> None:
        """Called for each request before its listener (a Bolt middleware, bot/app.py), on the thread that
        runs the listener: what a hand-over sends, the body as it arrived when there is one, else the
        payload. Bolt runs listeners after its middleware has returned, so this cannot be a context around
        them; the next request on the thread replaces it."""
        self._current.payload = payload if received is None else received
        self._current.as_of = None

    def as_of(self, clock: Callable[[], datetime]) -> datetime:
        """The moment a listener judges its request as of: now, by `clock`; in a follow-up process, the
        moment the answering process's listener read, sent with the hand-over. A form answered "received"
        a moment before midnight must not be refused there a moment after it, where nobody would see the
        refusal (its answer has gone) and nothing would be saved."""
        handed = getattr(_JUDGED, "moment", None)
        if handed is not None:
            return handed  # type: ignore[no-any-return]
        moment = clock()
        self._current.as_of = moment  # sent with this request's hand-over; `remember` clears it
        return moment

    def __call__(self, kind: str, work: Callable[..., None], *args: Any) -> None:
        """`kind` names the request in the log line of a failure (its payload may hold user text)."""

        def here() -> None:
            again = bool(getattr(_JUDGED, "again", False))
            future = self._executor.submit(self._run, kind, work, args, again)
            started = getattr(_JUDGED, "started", None)
            if started is not None:  # a handed-over request's work, in a follow-up process
                started.append(future)

        payload = getattr(self._current, "payload", None)
        if self._hand_over is None or payload is None:
            here()
        elif payload is not _HANDED_OVER:
            # The other process runs the whole listener again, so a second call in the same listener
            # is already covered by this hand-over.
            self._current.payload = _HANDED_OVER
            self._hand_over(payload, here, getattr(self._current, "as_of", None))

    @staticmethod
    def _run(kind: str, work: Callable[..., None], args: tuple[Any, ...], again: bool = False) -> None:
        BACKGROUND.lower_this_thread()
        ANSWERS.step_aside()
        _AGAIN.active = again
        try:
            work(*args)
        except Exception as error:  # nobody else would see it: a Future's exception is never read
            log_listener_failure(error, kind)
        finally:
            _AGAIN.active = False

"""Work a listener does once Slack has its answer.

The app runs with Bolt's `process_before_response=True`: the HTTP thread that received the request runs the
listener and sends the answer when the listener returns. A listener therefore acks, hands whatever follows
(opening a modal, reading the database, replying) to `AfterAnswer`, and returns.

With Bolt's default (`False`) the listener ran on another thread while the HTTP thread slept in 10 ms steps
until it saw the ack: every answer waited for a thread hand-over and the next 10 ms tick, and under load for
the GIL twice (bench/NOTES.md, item 20).

Where the work runs: on this process's listener pool, or, when `fr-bot run` has a follow-up process
(bot/follow_up.py), in that process: the request is handed over as it is and that process runs the same
listener again, which there does its work locally. The answering process then spends its GIL on answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

from bot.foreground import ANSWERS, BACKGROUND
from bot.guard import log_listener_failure

_HANDED_OVER: dict[str, Any] = {}


class HandOver(Protocol):
    """Takes a request's payload to run its work elsewhere; `here` runs it in this process instead, if the
    other process cannot take it."""

    def __call__(self, payload: dict[str, Any], here: Callable[[], None]) -> None: ...


class AfterAnswer:
    """Runs work on the listener pool after the answer, or hands the request to the follow-up process;
    shutdown waits for it (bot/cli.py)."""

    def __init__(self, executor: Executor, hand_over: HandOver | None = None) -> None:
        self._executor = executor
        self._hand_over = hand_over
        self._current = threading.local()  # the payload the listener on this thread is answering

    def remember(self, payload: dict[str, Any]) -> None:
        """Called for each request before its listener (a Bolt middleware, bot/app.py), on the thread that
        runs the listener: the payload a hand-over sends. Bolt runs listeners after its middleware has
        returned, so this cannot be a context around them; the next request on the thread replaces it."""
        self._current.payload = payload

    def __call__(self, kind: str, work: Callable[..., None], *args: Any) -> None:
        """`kind` names the request in the log line of a failure (its payload may hold user text)."""

        def here() -> None:
            self._executor.submit(self._run, kind, work, args)

        payload = getattr(self._current, "payload", None)
        if self._hand_over is None or payload is None:
            here()
        elif payload is not _HANDED_OVER:
            # The other process runs the whole listener again, so a second call in the same listener
            # is already covered by this hand-over.
            self._current.payload = _HANDED_OVER
            self._hand_over(payload, here)

    @staticmethod
    def _run(kind: str, work: Callable[..., None], args: tuple[Any, ...]) -> None:
        BACKGROUND.lower_this_thread()
        ANSWERS.step_aside()
        try:
            work(*args)
        except Exception as error:  # nobody else would see it: a Future's exception is never read
            log_listener_failure(error, kind)

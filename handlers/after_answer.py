"""Work a listener does once Slack has its answer.

The app runs with Bolt's `process_before_response=True`: the HTTP thread that received the request runs the
listener and sends the answer when the listener returns. A listener therefore acks, hands whatever follows
(opening a modal, reading the database, replying) to `AfterAnswer`, and returns.

With Bolt's default (`False`) the listener ran on another thread while the HTTP thread slept in 10 ms steps
until it saw the ack: every answer waited for a thread hand-over and the next 10 ms tick, and under load for
the GIL twice (bench/NOTES.md, item 20).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from bot.foreground import ANSWERS, BACKGROUND
from bot.guard import log_listener_failure


class AfterAnswer:
    """Runs work on the listener pool after the answer; shutdown waits for it (bot/cli.py)."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    def __call__(self, kind: str, work: Callable[..., None], *args: Any) -> None:
        """`kind` names the request in the log line of a failure (its payload may hold user text)."""
        self._executor.submit(self._run, kind, work, args)

    @staticmethod
    def _run(kind: str, work: Callable[..., None], args: tuple[Any, ...]) -> None:
        BACKGROUND.lower_this_thread()
        ANSWERS.step_aside()
        try:
            work(*args)
        except Exception as error:  # nobody else would see it: a Future's exception is never read
            log_listener_failure(error, kind)

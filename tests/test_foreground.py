"""Answers first: work that follows an answer waits while the process is answering (bot/foreground.py)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
from slack_bolt import Ack, App
from slack_bolt.authorization import AuthorizeResult

from bot import foreground
from bot.foreground import ANSWER_SLICE, ANSWERS, AnswersInFlight, BackgroundPriority
from bot.server import wsgi_app
from handlers.after_answer import AfterAnswer
from tests.conftest import in_a_new_thread, linux_only, needs_thread_slices, signed_environ

# Long enough for a waiting thread to be waiting, and for one that did not wait to have finished.
SETTLE = 0.1


def steps_aside_and_goes_on(answers: AnswersInFlight, most: float) -> bool:
    """Whether background work stepping aside for at most `most` seconds goes on (within 10 s)."""
    done = threading.Event()
    worker = threading.Thread(target=lambda: (answers.step_aside(most=most), done.set()))
    worker.start()
    worker.join(timeout=10)
    return done.is_set()


def test_with_no_answer_in_flight_background_work_goes_at_once() -> None:
    assert steps_aside_and_goes_on(AnswersInFlight(), most=60)


def test_background_work_waits_for_the_answers_in_flight() -> None:
    answers = AnswersInFlight()
    order: list[str] = []

    def background() -> None:
        answers.step_aside(most=60)
        order.append("background")

    with answers.answering():
        with answers.answering():
            assert answers.count == 2
            worker = threading.Thread(target=background)
            worker.start()
            time.sleep(SETTLE)
            order.append("first answer sent")
        time.sleep(SETTLE)
        order.append("second answer sent")
    worker.join(timeout=10)
    assert order == ["first answer sent", "second answer sent", "background"]
    assert answers.count == 0


def test_background_work_is_not_starved_by_answers_that_never_stop() -> None:
    answers = AnswersInFlight()
    with answers.answering():
        assert steps_aside_and_goes_on(answers, most=0.01)


def test_an_answer_that_fails_still_leaves_the_count() -> None:
    answers = AnswersInFlight()
    try:
        with answers.answering():
            raise RuntimeError("listener failed")
    except RuntimeError:
        pass
    assert answers.count == 0


def test_work_after_an_answer_starts_once_the_answers_in_flight_are_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(foreground, "MOST_WAIT_SECONDS", 60)
    order: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        after_answer = AfterAnswer(pool)
        with ANSWERS.answering():
            after_answer("test", order.append, "opened the modal")
            time.sleep(SETTLE)
            order.append("answered")
    assert order == ["answered", "opened the modal"]


def test_the_server_counts_an_answer_as_in_flight_while_it_is_produced() -> None:
    secret = "test-secret"
    authorized = AuthorizeResult(enterprise_id=None, team_id="T1", bot_token="xoxb-test", bot_user_id="UBOT")
    app = App(signing_secret=secret, authorize=lambda **_: authorized, process_before_response=True)
    seen: list[int] = []

    @app.command("/fr-request")
    def command(ack: Ack) -> None:
        seen.append(ANSWERS.count)
        ack()

    body = urlencode({"command": "/fr-request", "user_id": "U1", "trigger_id": "1.2.3", "team_id": "T1"})
    environ = signed_environ(secret, body, "application/x-www-form-urlencoded")
    statuses: list[str] = []
    wsgi_app(app, secret)(environ, lambda status, _headers: statuses.append(status))
    assert statuses == ["200 OK"]
    assert seen == [1]
    assert ANSWERS.count == 0


def own_niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def niceness_in_a_new_thread(priority: BackgroundPriority, before: int = 0) -> int:
    """The niceness of a new thread that starts at `before` and lowers itself (twice: once counts)."""

    def work() -> int:
        if before > own_niceness():
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), before)
        priority.lower_this_thread()
        priority.lower_this_thread()
        return own_niceness()

    return int(in_a_new_thread(work))


@linux_only
def test_a_background_thread_lowers_its_own_cpu_priority_only() -> None:
    main_before = own_niceness()
    assert niceness_in_a_new_thread(BackgroundPriority(niceness=7)) == 7
    assert own_niceness() == main_before


@linux_only
def test_background_priority_never_raises_a_thread_and_zero_leaves_it() -> None:
    assert niceness_in_a_new_thread(BackgroundPriority(niceness=5), before=12) == 12
    assert niceness_in_a_new_thread(BackgroundPriority(niceness=0)) == 0


@linux_only
def test_the_main_thread_doing_background_work_keeps_its_priority() -> None:
    """A CLI command that runs a sweep in the foreground is not slowed for the rest of its life."""
    main_before = own_niceness()
    BackgroundPriority(niceness=7).lower_this_thread()
    assert own_niceness() == main_before


@linux_only
def test_work_after_an_answer_runs_at_the_background_priority() -> None:
    seen: list[int] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        AfterAnswer(pool)("test", lambda: seen.append(own_niceness()))
    assert seen == [foreground.BACKGROUND.niceness]


@needs_thread_slices
def test_answering_threads_pass_their_short_slice_on_and_background_work_drops_it() -> None:
    kernel_default = ANSWER_SLICE.of_this_thread()
    assert kernel_default is not None and kernel_default != 250

    def answering_thread() -> tuple[int | None, int | None, int | None]:
        assert ANSWER_SLICE.set_this_thread(250)
        started_by_it = in_a_new_thread(ANSWER_SLICE.of_this_thread)  # as the server's threads are

        def background() -> int | None:
            BackgroundPriority(niceness=7).lower_this_thread()
            return ANSWER_SLICE.of_this_thread()

        return ANSWER_SLICE.of_this_thread(), started_by_it, in_a_new_thread(background)

    own, inherited, background = in_a_new_thread(answering_thread)
    assert (own, inherited, background) == (250, 250, kernel_default)
    assert ANSWER_SLICE.of_this_thread() == kernel_default  # the caller's thread is untouched


@needs_thread_slices
def test_background_work_drops_the_short_slice_even_at_niceness_zero() -> None:
    kernel_default = ANSWER_SLICE.of_this_thread()

    def answering_then_background() -> int | None:
        ANSWER_SLICE.set_this_thread(250)
        BackgroundPriority(niceness=0).lower_this_thread()
        return ANSWER_SLICE.of_this_thread()

    assert in_a_new_thread(answering_then_background) == kernel_default

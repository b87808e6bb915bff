"""The follow-up process (bot/follow_up.py): on PostgreSQL in HTTP mode, what follows an answer runs in a
second process, and the bot still behaves as one bot.

The end-to-end suites run the PostgreSQL bot this way already (`FRBOT_FOLLOW_UP_PROCESS` is `auto`); these
tests check what is particular to the split: the work really leaves the answering process, a dead
follow-up process is replaced, a decision's messages go out at once although the answering process does
not send them, a clean stop finishes what was answered, and a killed bot leaves no half running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from slack_bolt import BoltRequest
from sqlalchemy import func, select

from bot import follow_up, forms, views
from bot.app import create_app
from bot.cli import _follow_up_process
from bot.config import load_settings
from bot.policy import LoadedPolicy, parse_policy
from bot.server import wsgi_app
from bot.services import build_services
from handlers.after_answer import AfterAnswer, ReceivedText, judged_as_of
from storage.db import make_engine, transaction
from storage.models import Delegation, FrRequest
from tests.botprocess import SIGNING_SECRET, BotProcess, follow_up_processes
from tests.conftest import (
    TEST_POLICY,
    FakeClock,
    _truncate_postgres,
    needs_thread_slices,
    signed_environ,
    slack_state,
    valid_form_values,
    wait_until,
)
from tests.e2e_support import decide, outcome_of, reference_of, reviewer_message, submitted_reference
from tests.slackstub import SlackDriver, SlackStub
from tests.test_app import IDENTITY

# --- Which work is handed over -------------------------------------------------------------------------


def test_work_after_an_answer_is_handed_over_once_with_the_request_it_answered() -> None:
    handed: list[tuple[dict[str, Any], Callable[[], None]]] = []
    ran: list[str] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        after_answer = AfterAnswer(pool, hand_over=lambda payload, here, _: handed.append((payload, here)))
        payload = {"type": "block_actions", "user": {"id": "U1"}}
        after_answer.remember(payload)
        after_answer("block_actions", ran.append, "first")
        after_answer("block_actions", ran.append, "second")  # the other process runs the whole listener
        assert [p for p, _ in handed] == [payload] and ran == []
        handed[0][1]()  # the other process could not take it: this one does the work after all
    assert ran == ["first"]


def test_work_with_no_request_behind_it_runs_here() -> None:
    handed: list[dict[str, Any]] = []
    ran: list[str] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        AfterAnswer(pool, hand_over=lambda payload, *_: handed.append(payload))("test", ran.append, "x")
        AfterAnswer(pool)("test", ran.append, "y")  # no follow-up process at all
    assert handed == [] and sorted(ran) == ["x", "y"]


def test_the_moment_a_listener_read_goes_with_its_hand_over_and_is_read_there() -> None:
    handed: list[datetime | None] = []
    before = datetime(2026, 12, 7, 23, 59, 59, 900_000, tzinfo=UTC)
    with ThreadPoolExecutor(max_workers=1) as pool:
        answering = AfterAnswer(pool, hand_over=lambda _payload, _here, as_of: handed.append(as_of))
        answering.remember({"type": "view_submission"})
        assert answering.as_of(lambda: before) == before
        answering("view_submission", print)
        answering.remember({"type": "view_submission"})  # the thread's next request read no clock
        answering("view_submission", print)
        following = AfterAnswer(pool)
        with judged_as_of(before):
            assert following.as_of(lambda: before + timedelta(seconds=1)) == before
        assert following.as_of(lambda: before + timedelta(seconds=1)) == before + timedelta(seconds=1)
    assert handed == [before, None]


def test_a_request_is_handed_over_as_its_body_arrived_and_parsed_there_to_the_same_payload(
    database_url: str, policy: LoadedPolicy, stub: SlackStub
) -> None:
    """The answering process sends the body it received, not a pickled copy of its parse (bench/NOTES.md
    item 72); the follow-up process's parse of it is the payload the listener had here."""
    handed: list[Any] = []
    seen: list[dict[str, Any]] = []
    services = build_services(database_url, policy, stub.client())
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            app = create_app(
                services,
                signing_secret=SIGNING_SECRET,
                listener_executor=pool,
                hand_over=lambda request, _here, _as_of: handed.append(request),
                identity=IDENTITY,
            )
            app.middleware(lambda body, next: (seen.append(body), next())[1])
            view = views.request_modal(policy.policy) | {
                "id": "VTEXT",
                "state": {"values": slack_state(valid_form_values())},
            }
            payload = {
                "type": "view_submission",
                "team": {"id": "T0TEST"},
                "user": {"id": "UOFFICER1"},
                "view": view,
            }
            body = urlencode({"payload": json.dumps(payload)})
            environ = signed_environ(SIGNING_SECRET, body, "application/x-www-form-urlencoded")
            statuses: list[str] = []
            b"".join(wsgi_app(app, SIGNING_SECRET)(environ, lambda status, _: statuses.append(status)))
    finally:
        services.close()
    assert statuses == ["200 OK"]
    [request] = handed
    assert isinstance(request, ReceivedText) and request.text == body
    assert follow_up._payload_of(request) == seen[0] == payload


def test_a_deputy_named_a_moment_before_midnight_is_saved_by_the_follow_up_process_after_it(
    database_url: str, policy: LoadedPolicy, stub: SlackStub
) -> None:
    """The answering process answers a delegation starting today "received" at 23:59:59.9; its follow-up
    process runs the listener again a moment after midnight. Judged by its own clock there, the start date
    would be in the past: the form refused where nobody sees the refusal, and nothing saved."""
    clock = FakeClock(datetime(2026, 12, 7, 23, 59, 59, 900_000, tzinfo=UTC))  # London is on UTC
    today = clock.now.date()
    handed: list[tuple[dict[str, Any], datetime | None]] = []
    services = build_services(database_url, policy, stub.client(), clock=clock)
    with ThreadPoolExecutor(max_workers=2) as pool:
        answering = create_app(
            services,
            signing_secret=None,
            listener_executor=pool,
            hand_over=lambda payload, _here, as_of: handed.append((payload, as_of)),
            identity=IDENTITY,
        )
        view = views.delegation_modal(today.isoformat()) | {
            "id": "VDELEGATE",
            "state": {
                "values": {
                    forms.DEPUTY.block_id: {
                        forms.ACTION_ID: {"type": "users_select", "selected_user": "UDEPUTY"}
                    },
                    forms.STARTS_ON.block_id: {
                        forms.ACTION_ID: {"type": "datepicker", "selected_date": str(today)}
                    },
                    forms.ENDS_ON.block_id: {
                        forms.ACTION_ID: {
                            "type": "datepicker",
                            "selected_date": str(today + timedelta(days=2)),
                        }
                    },
                }
            },
        }
        body = {"type": "view_submission", "user": {"id": "USUP1", "team_id": "T0TEST"}, "view": view}
        answer = answering.dispatch(BoltRequest(body=body, mode="socket_mode"))
        assert answer.status == 200 and "received" in answer.body, answer.body
        [(payload, as_of)] = handed

        clock.advance(seconds=0.5)  # the next day, when the follow-up process runs the listener
        following = create_app(services, signing_secret=None, listener_executor=pool, identity=IDENTITY)
        with judged_as_of(as_of):
            again = following.dispatch(BoltRequest(body=payload, mode="socket_mode"))
        assert "errors" not in again.body, again.body
    try:
        with transaction(services.db, read_only=True) as session:
            saved = session.scalars(select(Delegation)).all()
        assert [(d.approver_id, d.deputy_id, d.starts_on) for d in saved] == [("USUP1", "UDEPUTY", today)]
    finally:
        services.close()


@pytest.mark.parametrize(
    "settings",
    [
        {"mode": "http", "database_url": "sqlite:///x.db"},  # auto: SQLite keeps one process
        {"mode": "socket", "database_url": "postgresql+psycopg://h/db"},
        {"mode": "http", "database_url": "postgresql+psycopg://h/db", "follow_up_process": "off"},
    ],
)
def test_one_process_where_a_second_would_not_help(settings: dict[str, str]) -> None:
    chosen = _follow_up_process(
        load_settings(**settings), {}, {}, parse_policy(TEST_POLICY), threading.Event()
    )
    assert chosen is None


# --- A real bot on PostgreSQL ------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether any of the process's threads is still running: a killed process's first thread turns
    zombie before the others have exited and closed its end of the pipe."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
    except OSError:
        return False
    return state != "Z" or threads > 1


@pytest.fixture
def pg_bot(postgres_migrated: str, stub: SlackStub, tmp_path: Path) -> Iterator[Callable[..., BotProcess]]:
    """Starts the real bot on PostgreSQL in HTTP mode (so with a follow-up process, by default)."""
    _truncate_postgres(postgres_migrated)
    policy = tmp_path / "policy.yml"
    policy.write_text(TEST_POLICY)
    started: list[BotProcess] = []
    stub.clear()
    stub.violations.clear()

    def start(**env: str) -> BotProcess:
        process = BotProcess(postgres_migrated, policy, stub.base_url, tmp_path, **env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop(signal.SIGKILL)
    stub.assert_no_violations()


def started(pg_bot: Callable[..., BotProcess], **env: str) -> tuple[BotProcess, int]:
    """A bot and the pid of its follow-up process."""
    bot = pg_bot(**env)
    assert bot.process is not None
    pid = bot.process.pid
    (follow_up,) = wait_until(lambda: follow_up_processes(pid), "the follow-up process")
    return bot, follow_up


def replacement(bot: BotProcess, dead: int) -> int:
    """The follow-up process started in place of `dead`."""
    assert bot.process is not None
    pid = bot.process.pid
    (new,) = wait_until(lambda: [child for child in follow_up_processes(pid) if child != dead], "a new one")
    return int(new)


def open_form(slack: SlackDriver, stub: SlackStub, user: str) -> dict[str, Any]:
    trigger = stub.issue_trigger_id(user)
    status, _ = slack.slash_command("/fr-request", "", user, trigger_id=trigger)
    assert status == 200
    call = stub.wait_for(lambda c: c.method == "views.open" and c.args.get("trigger_id") == trigger)
    assert call.ok, call.describe()
    return call.response["view"]


def test_the_work_after_answers_runs_in_the_follow_up_process_and_a_dead_one_is_replaced(
    pg_bot: Callable[..., BotProcess], stub: SlackStub
) -> None:
    bot, first = started(pg_bot)
    slack = SlackDriver(bot.url, SIGNING_SECRET, stub=stub)
    open_form(slack, stub, "UOFFICER1")

    # Killed while idle: replaced without waiting for a request (the outbox and scheduler run there).
    os.kill(first, signal.SIGKILL)
    second = replacement(bot, first)
    assert "follow-up process gone (it exited, exit code -9): starting another" in bot.log()
    view = open_form(slack, stub, "UOFFICER1")  # the new one opens the modal

    # Killed just before a request: the request goes to the next one.
    os.kill(second, signal.SIGKILL)
    wait_until(lambda: not alive(second), "the follow-up process to die")
    status, answer = slack.view_submission("UOFFICER1", view, slack_state(valid_form_values()))
    assert status == 200
    # Stored, recorded and announced by the third follow-up process.
    assert "FR-20" in reference_of(outcome_of(stub, view, answer))
    assert bot.stop() == 0
    assert "Traceback" not in bot.log(), bot.log()


def test_a_request_a_dead_follow_up_process_had_not_finished_goes_to_the_next_one(
    pg_bot: Callable[..., BotProcess], stub: SlackStub
) -> None:
    """The follow-up process stops (SIGSTOP: it reads nothing), an officer submits a form and is answered
    "received", the request waits in the pipe, then the process is killed. The next one is sent it again
    (it had not said it was done with it): the form is stored, recorded and announced. Before, a request
    sent down the pipe was forgotten, and that officer's form with it."""
    bot, first = started(pg_bot, FRBOT_BACKGROUND_NICENESS="0")  # its start-up timed on a busy machine
    slack = SlackDriver(bot.url, SIGNING_SECRET, stub=stub)
    view = open_form(slack, stub, "UOFFICER1")
    os.kill(first, signal.SIGSTOP)
    status, answer = slack.view_submission("UOFFICER1", view, slack_state(valid_form_values()))
    assert status == 200 and "Request received" in str(answer)
    os.kill(first, signal.SIGKILL)
    replacement(bot, first)
    assert "FR-20" in reference_of(outcome_of(stub, view, answer))
    # The form too, if the dead one had not yet said it was done with opening it (DONE_GATHER_SECONDS):
    # sent again, but not opened twice, and nobody told it was not opened.
    assert re.search(r"sending [12] request\(s\) the dead follow-up process had not finished", bot.log())
    assert not stub.calls_to("chat.postEphemeral") and not [
        c for c in stub.calls_to("chat.postMessage") if "did not open" in c.args.get("text", "")
    ]
    assert bot.stop() == 0
    assert "Traceback" not in bot.log(), bot.log()


def thread_priorities(pid: int) -> list[tuple[int, int]]:
    """(niceness, time slice in us) of each of the process's threads, from /proc."""
    seen = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            niceness = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
            sched = (task / "sched").read_text()
        except OSError:  # a thread that has just ended
            continue
        (line,) = [line for line in sched.splitlines() if line.startswith("se.slice")]
        seen.append((niceness, int(line.split(":")[1]) // 1000))
    return seen


@needs_thread_slices
def test_the_answering_threads_take_a_short_slice_and_the_work_after_them_the_kernels(
    pg_bot: Callable[..., BotProcess], stub: SlackStub
) -> None:
    bot, follow_up = started(pg_bot, FRBOT_ANSWER_SLICE_US="200")
    slack = SlackDriver(bot.url, SIGNING_SECRET, stub=stub)
    open_form(slack, stub, "UOFFICER1")  # the server's threads and the follow-up's pool have started
    assert bot.process is not None
    kernel_default = thread_priorities(os.getpid())[0][1]  # pytest's main thread: never changed

    answering = thread_priorities(bot.process.pid)
    assert len(answering) > 1 and {slice_us for _, slice_us in answering} == {200}, answering
    following = thread_priorities(follow_up)
    assert len(following) > 1, following
    assert {slice_us for _, slice_us in following} == {kernel_default}, following
    assert bot.stop() == 0


@needs_thread_slices
def test_in_one_process_the_background_threads_go_back_to_the_kernels_slice(
    stub: SlackStub, tmp_path: Path
) -> None:
    """SQLite keeps one process: its answering threads have the short slice, and the threads that lower
    their niceness for background work (intake, outbox, scheduler, work after answers) drop it."""
    policy = tmp_path / "policy.yml"
    policy.write_text(TEST_POLICY)
    bot = BotProcess(f"sqlite:///{tmp_path / 'bot.db'}", policy, stub.base_url, tmp_path).start()
    try:
        slack = SlackDriver(bot.url, SIGNING_SECRET, stub=stub)
        open_form(slack, stub, "UOFFICER1")
        assert bot.process is not None
        kernel_default = thread_priorities(os.getpid())[0][1]
        threads = thread_priorities(bot.process.pid)
        assert {slice_us for niceness, slice_us in threads if niceness == 0} == {100}, threads
        assert {slice_us for niceness, slice_us in threads if niceness == 19} == {kernel_default}, threads
        assert bot.stop() == 0
    finally:
        bot.stop(signal.SIGKILL)


def test_a_new_follow_up_process_judges_forms_by_the_policy_the_bot_started_with(
    pg_bot: Callable[..., BotProcess], stub: SlackStub, postgres_migrated: str
) -> None:
    # The policy file is edited while the bot runs (it is read at start-up only); a follow-up process
    # started after that must not store forms under rules the answering process did not check them by.
    bot, first = started(pg_bot)
    policy_file = Path(bot.env["FRBOT_POLICY_FILE"])
    policy_file.write_text(TEST_POLICY + "\n# edited while the bot runs\n")
    os.kill(first, signal.SIGKILL)
    replacement(bot, first)

    slack = SlackDriver(bot.url, SIGNING_SECRET, stub=stub)
    view = open_form(slack, stub, "UOFFICER1")
    status, _ = slack.view_submission("UOFFICER1", view, slack_state(valid_form_values()))
    assert status == 200
    submitted_reference(stub, "UOFFICER1")
    engine = make_engine(postgres_migrated)
    try:
        with engine.connect() as connection:
            recorded = connection.scalar(select(FrRequest.policy_version))
    finally:
        engine.dispose()
    assert recorded == parse_policy(TEST_POLICY).version
    assert bot.stop() == 0


def test_a_decision_answered_here_is_recorded_and_sent_at_once_by_the_follow_up_process(
    pg_bot: Callable[..., BotProcess], stub: SlackStub
) -> None:
    # Outbox polls a minute apart: only the follow-up process's own wake, when it has recorded the
    # decision handed over to it, sends the officer's DM promptly.
    bot = pg_bot(FRBOT_OUTBOX_POLL_SECONDS="60")
    slack = SlackDriver(bot.url, SIGNING_SECRET, stub=stub)
    view = open_form(slack, stub, "UOFFICER1")
    status, _ = slack.view_submission("UOFFICER1", view, slack_state(valid_form_values()))
    assert status == 200
    reference = submitted_reference(stub, "UOFFICER1")
    message = reviewer_message(stub, "C0SUPER", reference)
    status, body = decide(
        slack,
        stub,
        "USUP1",
        views.REJECT_ACTION,
        message,
        rationale="Not necessary: other routes remain.",
        reason_code="alternatives_not_exhausted",
        outcome=False,
    )
    assert status == 200 and "Decision received" in str(body), body
    decided = time.monotonic()
    stub.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.ok
            and c.args.get("channel") == "UOFFICER1"
            and "rejected" in c.args.get("text", "")
        ),
        timeout=20,
    )
    assert time.monotonic() - decided < 10  # not the next poll, a minute later
    assert bot.stop() == 0


def test_a_clean_stop_finishes_what_was_answered_and_a_killed_bot_leaves_no_half_running(
    pg_bot: Callable[..., BotProcess], stub: SlackStub, postgres_migrated: str
) -> None:
    bot, follow_up = started(pg_bot)
    slack = SlackDriver(bot.url, SIGNING_SECRET, stub=stub)
    view = open_form(slack, stub, "UOFFICER1")
    status, answer = slack.view_submission("UOFFICER1", view, slack_state(valid_form_values()))
    assert status == 200 and "Request received" in str(answer)
    assert bot.stop(signal.SIGTERM) == 0  # at once: the form is stored and recorded before both exit
    assert not alive(follow_up)
    engine = make_engine(postgres_migrated)
    try:
        with engine.connect() as connection:
            assert connection.scalar(select(func.count()).select_from(FrRequest)) == 1
    finally:
        engine.dispose()

    bot, follow_up = started(pg_bot)
    bot.stop(signal.SIGKILL)
    wait_until(lambda: not alive(follow_up), "the follow-up process to die with the bot", timeout=10)

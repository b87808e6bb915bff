"""Faults with real processes: the bot killed (SIGKILL) at several points and restarted, stopped with SIGTERM
mid-work, its database made unavailable or locked, approvers removed from a user group.

After each, the database is consistent, Slack shows what the database holds, every notification owed is
delivered, and none twice. The stand-in reports where posts landed as Slack's Events API does
(message_metadata_posted, retried after a failed delivery), so a post cut off mid-call is adopted, not
posted again. Only when that report never comes (the app not subscribed) or comes after the post was sent
again can a second copy appear, and then it is marked as a duplicate of the live message.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from bot import forms, views
from bot.approvers import ApproverDirectory, StaticGroupSource
from bot.copies import METADATA_EVENT_TYPE
from bot.policy import Policy, parse_policy
from bot.workflow import Workflow
from storage.db import make_engine, make_session_factory, transaction
from storage.models import (
    AuditEvent,
    Decision,
    FrRequest,
    OutboxMessage,
    OutboxStatus,
    RequestStatus,
    StageStatus,
    SubmissionReceipt,
    utcnow,
)
from storage.queries import request_with_history
from tests.botprocess import SIGNING_SECRET, BotProcess
from tests.conftest import GROUPS, TEST_POLICY, slack_state, valid_form_values
from tests.conftest import wait_until as conftest_wait_until
from tests.e2e_support import open_form, outcome_of, report_landings_to, view_sent
from tests.slackstub import SlackDriver, SlackStub

LEASE = "4"  # seconds: a killed bot's in-flight row is retried this soon after restart
LANDING_WAIT = "20"  # seconds: ...but a cut-off post waits this long (from its send) for Slack's report
EVENT_RETRIES = (1.0, 4.0, 8.0)  # the stand-in redelivers a failed event after these (Slack: 1 and 5 min)
RATIONALE = "Necessary and proportionate: no other way to identify."


@dataclass
class World:
    url: str
    stub: SlackStub
    db: sessionmaker[Session]
    policy: Policy
    workdir: Path
    policy_file: Path
    reports_landings: bool = True  # False: as if the app were not subscribed to message_metadata_posted

    def bot(self, **env: str) -> BotProcess:
        """A bot process; Slack's reports of where posts landed go to it (as to one public URL)."""
        settings = {
            "FRBOT_OUTBOX_LEASE_SECONDS": LEASE,
            "FRBOT_OUTBOX_LANDING_WAIT_SECONDS": LANDING_WAIT,
            "FRBOT_OUTBOX_POLL_SECONDS": "0.1",
            **env,
        }
        bot = BotProcess(self.url, self.policy_file, self.stub.base_url, self.workdir, **settings)
        report_landings_to(self.stub, bot if self.reports_landings else None)
        return bot

    def driver(self, bot: BotProcess) -> SlackDriver:
        return SlackDriver(bot.url, SIGNING_SECRET, stub=self.stub)


@pytest.fixture
def world(database_url: str, tmp_path: Path) -> Iterator[World]:
    policy_file = tmp_path / "policy.yml"
    policy_file.write_text(TEST_POLICY)
    engine = make_engine(database_url)
    with SlackStub() as stub:
        for group, members in GROUPS.items():
            stub.add_usergroup(group, sorted(members))
        stub.metadata_subscriptions = {METADATA_EVENT_TYPE}
        stub.event_retry_delays = EVENT_RETRIES
        yield World(
            database_url,
            stub,
            make_session_factory(engine),
            parse_policy(TEST_POLICY).policy,
            tmp_path,
            policy_file,
        )
        stub.assert_no_violations()
    engine.dispose()


@contextlib.contextmanager
def running(bot: BotProcess) -> Iterator[BotProcess]:
    bot.start()
    try:
        yield bot
    finally:
        if bot.process is not None:
            bot.stop(signal.SIGKILL)


def wait_until(condition: Callable[[], Any], what: str) -> Any:
    # Polled often: some conditions (a send in flight) hold only for a moment.
    return conftest_wait_until(condition, what, timeout=30.0, every=0.01)


def outbox(world: World) -> list[OutboxMessage]:
    with transaction(world.db) as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def in_flight(world: World, kind: str) -> OutboxMessage | None:
    return next((r for r in outbox(world) if r.kind == kind and r.attempt_started_at is not None), None)


def reported(world: World) -> bool:
    """Where the stand-in reports landings: every report delivered, and the bot has noted that they arrive."""
    if not world.reports_landings:
        return True
    deliveries = list(world.stub.event_deliveries)
    answered = {event_id for event_id, _retry, delivered in deliveries if delivered}
    return answered == {event_id for event_id, *_ in deliveries} and any(r.reported_at for r in outbox(world))


def all_sent(world: World) -> bool:
    rows = outbox(world)
    return bool(rows) and all(row.status == OutboxStatus.SENT for row in rows)


def submit(
    world: World, slack: SlackDriver, user: str, view: dict[str, Any] | None = None
) -> tuple[int, Any]:
    view = slack._full_view(view or views.request_modal(world.policy), {})
    status, answer = slack.view_submission(user, view, slack_state(valid_form_values()))
    if "Request received" in json.dumps(answer):
        # The form is stored just after the answer, then recorded (handlers/views.py, bot/intake.py).
        wait_until(lambda: receipt_recorded(world, view["id"]), what="the stored form to be recorded")
    return status, answer


def receipt_recorded(world: World, view_id: str) -> bool:
    """The modal's form is stored and recorded as a request (its submission key is the modal's id)."""
    with transaction(world.db) as session:
        recorded_at = select(SubmissionReceipt.recorded_at).where(SubmissionReceipt.submission_key == view_id)
        return session.scalar(recorded_at) is not None


def receipts_recorded(world: World) -> bool:
    """No stored form is waiting to become a request (bot/intake.py)."""
    with transaction(world.db) as session:
        waiting = (
            select(func.count()).select_from(SubmissionReceipt).where(SubmissionReceipt.recorded_at.is_(None))
        )
        return session.scalar(waiting) == 0


def request_of(world: World, requester: str) -> FrRequest:
    """The officer's request, once recorded (the bot records a stored form just after answering it)."""

    def recorded() -> FrRequest | None:
        with transaction(world.db) as session:
            found = session.scalars(select(FrRequest).where(FrRequest.requester_id == requester)).first()
            return request_with_history(session, found.id) if found is not None else None

    return wait_until(recorded, what=f"{requester}'s request to be recorded")


def decide(
    world: World, slack: SlackDriver, user: str, request: FrRequest, position: int = 0
) -> tuple[int, Any]:
    """Submit a decision form as Slack would after the approver clicked Approve. The bot answers "received"
    and records it just after (`decisions_recorded` waits for that)."""
    ctx = views.ReviewContext(request_id=request.id, position=position, action="approve")
    form = views.decision_modal(request, world.policy, ctx, utcnow())
    state = {forms.RATIONALE.block_id: {forms.ACTION_ID: {"type": "plain_text_input", "value": RATIONALE}}}
    return slack.view_submission(user, form, state)


def decisions_recorded(world: World, count: int) -> None:
    def recorded() -> bool:
        with transaction(world.db, read_only=True) as session:
            return session.scalar(select(func.count()).select_from(Decision)) == count

    wait_until(recorded, what=f"{count} decision(s) recorded")


def posts_by_row(stub: SlackStub) -> Counter[int]:
    """How many messages in Slack each outbox row made (posts carry their row id in metadata)."""
    return Counter(
        int(message["metadata"]["event_payload"]["outbox_id"])
        for message in stub.messages.values()
        if isinstance(message.get("metadata"), dict)
    )


def assert_consistent(world: World) -> None:
    """The database's invariants, and Slack showing what the database holds."""
    with transaction(world.db) as session:
        requests = [request_with_history(session, rid) for rid in session.scalars(select(FrRequest.id))]
        audit = Counter(
            (row.request_id, row.action)
            for row in session.execute(select(AuditEvent.request_id, AuditEvent.action))
        )
    for request in requests:
        assert request is not None and request.stages
        assert audit[(request.id, "request_submitted")] == 1
        decisions = [d for stage in request.stages for d in stage.decisions]
        assert audit[(request.id, "decision_recorded")] == len(decisions)
        for stage in request.stages:
            assert len(stage.approvals) <= stage.required_approvals
        if request.status == RequestStatus.PENDING:
            assert request.current is not None and request.current.status == StageStatus.PENDING
        for stage in request.stages:
            if stage.message_ts is None:
                continue
            message = world.stub.message(stage.message_channel, stage.message_ts)
            has_buttons = any(block["type"] == "actions" for block in message["blocks"])
            assert has_buttons == (stage.status == StageStatus.PENDING), (request.reference, stage.status)
    rows = outbox(world)
    assert all(row.status == OutboxStatus.SENT and row.attempt_started_at is None for row in rows), [
        (row.id, row.kind, row.status, row.last_error) for row in rows if row.status != OutboxStatus.SENT
    ]
    sent = posts_by_row(world.stub)
    for row in rows:
        if row.kind in ("dm", "post_review") and not (row.kind == "post_review" and sent[row.id] == 0):
            # A second copy only for a send that was cut off; a post_review may be an edit (sent 0).
            assert 1 <= sent[row.id] <= 1 + row.doubtful_attempts, (row.id, row.kind, sent[row.id])


# --- SIGKILL -----------------------------------------------------------------------------------------


def cut_off_mid_call(world: World, killed_during: str, officer: str) -> None:
    """Kill the bot while the stand-in holds its `killed_during` call; the stand-in then completes the
    call, as Slack would: the post is in Slack, but its answer never reached the bot."""
    method = "chat.update" if killed_during == "refresh_reviews" else "chat.postMessage"
    with running(world.bot()) as bot:
        slack = world.driver(bot)
        # Earlier traffic: where Slack reports landings, the bot has seen reports before the kill.
        submit(world, slack, "UOFFICER0" if killed_during != "refresh_reviews" else officer)
        wait_until(lambda: all_sent(world) and reported(world), what="the first notifications")
        calls_before = world.stub.received[method]
        world.stub.latency = 0.8
        if killed_during == "refresh_reviews":
            assert decide(world, slack, "USUP1", request_of(world, officer))[0] == 200
        else:
            assert submit(world, slack, officer)[0] == 200
        wait_until(lambda: in_flight(world, killed_during), what=f"a {killed_during} send")
        # A submission posts the reviewer message, then the officer's DM.
        arrived = calls_before + (2 if killed_during == "dm" else 1)
        wait_until(lambda: world.stub.received[method] >= arrived, what=f"the {method} call")
        bot.stop(signal.SIGKILL)  # mid-call: the stand-in is still sleeping on the request
    time.sleep(1.3)  # let the stand-in finish the call the dead bot made
    world.stub.latency = 0.0


def copies_of(world: World, row: OutboxMessage) -> list[dict[str, Any]]:
    return [
        m
        for m in world.stub.messages.values()
        if (m.get("metadata") or {}).get("event_payload", {}).get("outbox_id") == row.id
    ]


@pytest.mark.parametrize("killed_during", ["post_review", "dm", "refresh_reviews"])
def test_sigkill_mid_slack_call_then_restart_delivers_everything_exactly_once(
    world: World, killed_during: str
) -> None:
    officer = "UOFFICER1"
    cut_off_mid_call(world, killed_during, officer)
    with running(world.bot()) as bot:
        wait_until(lambda: all_sent(world), what="every notification after restart")
        assert bot.stop() == 0
    cut_off = [row for row in outbox(world) if row.kind == killed_during][-1]
    # A post is counted doubtful only if Slack's report came after the dead bot's lease ran out.
    assert (
        cut_off.doubtful_attempts == 1
        if killed_during == "refresh_reviews"
        else cut_off.doubtful_attempts <= 1
    )
    assert_consistent(world)
    if killed_during != "refresh_reviews":
        # Slack's report of the cut-off post reached the restarted bot: that post is the live one.
        [only] = copies_of(world, cut_off)
        assert "Sent again" not in json.dumps(only["blocks"])
        assert cut_off.posted_ts == only["ts"]
    if killed_during == "post_review":
        stage = request_of(world, officer).stages[0]
        assert stage.message_ts == cut_off.posted_ts
    if killed_during == "refresh_reviews":
        request = request_of(world, officer)
        assert request.status == RequestStatus.APPROVED
        assert len(request.stages[0].decisions) == 1


@pytest.mark.parametrize("copy_found_by", ["a late report", "a click"])
def test_sigkill_mid_post_unreported_posts_again_and_the_second_copy_is_retired(
    world: World, copy_found_by: str
) -> None:
    """Slack's report of the cut-off post does not come in time (here: none comes): the post goes out
    again, saying so, and the earlier copy is retired once the bot learns of it."""
    world.reports_landings = False
    officer = "UOFFICER1"
    cut_off_mid_call(world, "post_review", officer)
    with running(world.bot()) as bot:  # Slack reports no landings here: no wait beyond the lease
        wait_until(lambda: all_sent(world), what="every notification after restart")
        cut_off = [row for row in outbox(world) if row.kind == "post_review"][-1]
        first, second = copies_of(world, cut_off)
        assert cut_off.doubtful_attempts == 1 and cut_off.posted_ts == second["ts"]
        assert "Sent again after an interruption" in json.dumps(second["blocks"])
        if copy_found_by == "a late report":  # e.g. Slack's last redelivery, five minutes on
            event = world.stub.landing_event(first["channel"], first["ts"], first["metadata"])
            assert world.driver(bot).deliver(event, "EvLATE0001", 3)
        else:  # a reviewer clicks the stray copy: the click works, and that copy is retired
            world.driver(bot).block_action("USUP1", views.APPROVE_ACTION, message=first)
            assert world.stub.wait_for("views.open").ok
        world.stub.wait_for(lambda c: c.method == "chat.update" and c.args["ts"] == first["ts"])
        assert bot.stop() == 0
    retired = world.stub.message(first["channel"], first["ts"])
    assert not any(block["type"] == "actions" for block in retired["blocks"])
    assert "Duplicate" in json.dumps(retired["blocks"]) and second["ts"].replace(".", "") in json.dumps(
        retired
    )
    assert_consistent(world)


def test_post_cut_off_by_killing_one_of_two_processes_is_adopted_by_the_other(world: World) -> None:
    """Two processes behind one URL: the one that dies mid-post never hears Slack's answer, the other hears
    Slack's report of where the post landed and records it. No wait, no second copy."""
    with running(world.bot()) as first:
        slack = world.driver(first)
        submit(world, slack, "UOFFICER0")
        wait_until(lambda: all_sent(world) and reported(world), what="the first notifications")
        # Slack's events now go to the second process. It only polls the outbox every 30 s, so the post
        # below is the first process's (woken by its own submission), and Slack's report wakes the second.
        with running(world.bot(FRBOT_OUTBOX_POLL_SECONDS="30")) as second:
            calls_before = world.stub.received["chat.postMessage"]
            world.stub.latency = 5.0  # Slack is slow to answer the post the first process is making
            assert submit(world, slack, "UOFFICER1")[0] == 200
            wait_until(lambda: world.stub.received["chat.postMessage"] > calls_before, what="the post")
            world.stub.latency = 0.0  # (the post under way still takes its 5 s)
            first.stop(signal.SIGKILL)  # while its post is under way, well inside its Slack timeout
            wait_until(lambda: all_sent(world), what="every notification")
            assert second.stop() == 0
    cut_off = [row for row in outbox(world) if row.kind == "post_review"][-1]
    # Counted doubtful if the dead process's lease ran out before the report came; never posted again.
    assert cut_off.doubtful_attempts <= 1 and cut_off.reported_at is not None
    [only] = copies_of(world, cut_off)
    assert "Sent again" not in json.dumps(only["blocks"])
    assert only["ts"] == cut_off.posted_ts == request_of(world, "UOFFICER1").stages[0].message_ts
    assert_consistent(world)


def test_sigkill_with_notifications_pending_loses_none_and_duplicates_none(world: World) -> None:
    with running(world.bot()) as bot:
        world.stub.fail_next("*", status=503, count=100_000)  # Slack is down
        slack = world.driver(bot)
        for officer in ("UOFFICER1", "UOFFICER2"):
            assert submit(world, slack, officer)[0] == 200
        status, body = decide(world, slack, "USUP2", request_of(world, "UOFFICER1"))
        assert status == 200 and "Decision received" in str(body)
        decisions_recorded(world, 1)
        wait_until(lambda: all(row.attempts > 0 for row in outbox(world)[:1]), what="failed attempts")
        bot.stop(signal.SIGKILL)
    world.stub.clear_faults()
    with running(world.bot()) as bot:
        wait_until(lambda: all_sent(world), what="every notification after restart")
        assert bot.stop() == 0
    assert_consistent(world)
    rows = outbox(world)
    sent = posts_by_row(world.stub)
    assert [sent[row.id] for row in rows if row.kind == "dm"] == [1, 1, 1]  # none lost, none twice
    assert sorted(c.args["channel"] for c in world.stub.calls_to("chat.postMessage") if c.ok) == [
        "C0SUPER",
        "C0SUPER",
        "UOFFICER1",
        "UOFFICER1",
        "UOFFICER2",
    ]


@contextlib.contextmanager
def database_locked(world: World) -> Iterator[None]:
    """Another connection holds the write lock the bot needs (SQLite) or the tables it writes (PostgreSQL)."""
    url = make_url(world.url)
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(url.database or "", isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
        return
    engine = create_engine(world.url)
    with engine.connect() as connection:
        transaction_ = connection.begin()
        connection.execute(
            text("LOCK TABLE submission_receipts, fr_requests, reference_counters IN ACCESS EXCLUSIVE MODE")
        )
        try:
            yield
        finally:
            transaction_.rollback()
    engine.dispose()


@pytest.mark.parametrize("killed_during", ["submission", "decision"])
def test_sigkill_while_saving_leaves_nothing_half_written(world: World, killed_during: str) -> None:
    officer = "UOFFICER3"
    view = SlackDriver("http://unused", SIGNING_SECRET, stub=world.stub)._full_view(
        views.request_modal(world.policy), {}
    )
    with running(world.bot()) as bot:
        slack = world.driver(bot)
        if killed_during == "decision":
            submit(world, slack, officer, view)
            wait_until(lambda: all_sent(world), what="the submission's notifications")
        request = request_of(world, officer) if killed_during == "decision" else None

        def save() -> None:
            with contextlib.suppress(OSError):  # the bot dies before it answers
                if request is not None:
                    decide(world, slack, "USUP1", request)
                else:
                    submit(world, slack, officer, view)

        with database_locked(world):
            saving = threading.Thread(target=save, daemon=True)
            saving.start()
            time.sleep(0.7)  # the bot is now waiting for the lock, inside its transaction
            bot.stop(signal.SIGKILL)
        saving.join(5)
    with transaction(world.db) as session:
        requests = session.scalar(select(func.count()).select_from(FrRequest))
        decisions = session.scalar(select(func.count()).select_from(Decision))
    assert (requests, decisions) == ((0, 0) if killed_during == "submission" else (1, 0))
    # The user's retry after the restart is saved once.
    with running(world.bot()) as bot:
        slack = world.driver(bot)
        if request is None:
            status, body = submit(world, slack, officer, view)
            assert status == 200 and "Request received" in str(body)
        else:
            status, body = decide(world, slack, "USUP1", request)
            assert status == 200 and "Decision received" in str(body)
            decisions_recorded(world, 1)
        wait_until(lambda: all_sent(world), what="the notifications after restart")
        assert bot.stop() == 0
    assert_consistent(world)


def test_form_stored_but_not_recorded_when_the_bot_died_is_recorded_on_restart(world: World) -> None:
    """The bot answers a valid form once it is stored; if it dies before recording it, the next start
    records it: one request, its reviewer message and the officer's DM, nothing twice."""
    loaded = parse_policy(TEST_POLICY)
    form = forms.check_request(loaded.policy, valid_form_values())
    directory = ApproverDirectory(StaticGroupSource({k: set(v) for k, v in GROUPS.items()}))
    left_behind = Workflow(world.db, loaded, directory)
    left_behind.receive(form, "UOFFICER9", "T0TEST", "VLEFTBEHIND", view_id="VLEFTBEHIND")
    with running(world.bot()) as bot:
        request = request_of(world, "UOFFICER9")
        wait_until(lambda: all_sent(world), what="the request's notifications")
        assert bot.stop() == 0
    assert receipts_recorded(world)
    posted = [c.args["channel"] for c in world.stub.calls_to("chat.postMessage") if c.ok]
    assert sorted(posted) == ["C0SUPER", "UOFFICER9"]
    assert request.reference in json.dumps(world.stub.calls_to("chat.postMessage")[0].args)
    assert_consistent(world)


# --- SIGTERM -----------------------------------------------------------------------------------------


def test_sigterm_finishes_in_flight_work_and_exits_0(world: World) -> None:
    first, second = "UOFFICER4", "UOFFICER5"
    with running(world.bot()) as bot:
        slack = world.driver(bot)
        submit(world, slack, first)
        wait_until(lambda: all_sent(world), what="the first request's notifications")
        stage = request_of(world, first).stages[0]
        message = world.stub.message(stage.message_channel, stage.message_ts)
        world.stub.clear()
        world.stub.latency = 0.6  # within the bot's Slack timeout (a quarter of the lease)
        answers: list[tuple[int, Any]] = []
        with database_locked(world):
            # A submission waiting for the database when SIGTERM arrives: an HTTP request in flight.
            waiting = threading.Thread(target=lambda: answers.append(submit(world, slack, second)))
            waiting.start()
            # A click acknowledged at once whose listener then opens a form (1 s at the stand-in).
            assert slack.block_action("USUP1", views.APPROVE_ACTION, message=message)[0] == 200
            time.sleep(0.3)
            bot.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
        waiting.join(20)
        code = bot.process.wait(30)
        log = bot.log()
        bot.process = None
    assert code == 0, log
    assert "stopped" in log and "Traceback" not in log
    assert answers and answers[0][0] == 200 and "Request received" in str(answers[0][1]), answers
    assert world.stub.wait_for("views.open", timeout=1).ok  # the listener finished before exit
    # No send left in doubt.
    assert [row.id for row in outbox(world) if row.attempt_started_at is not None] == []
    world.stub.latency = 0.0
    with running(world.bot()) as bot:
        wait_until(lambda: all_sent(world), what="what was left after the clean stop")
        assert bot.stop() == 0
    assert_consistent(world)
    assert all(row.doubtful_attempts == 0 for row in outbox(world))


# --- Database unavailable or locked -----------------------------------------------------------------


def readiness(bot: BotProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{bot.port}/readyz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def healthz(bot: BotProcess) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{bot.port}/healthz", timeout=5) as response:
        return int(response.status)


@contextlib.contextmanager
def database_unavailable(world: World) -> Iterator[None]:
    """PostgreSQL refuses connections to this test database (only ours: the server stays up)."""
    url = make_url(world.url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = url.database
    with admin.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
    try:
        yield
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
        # The test's own pooled connections were killed too, moments after their last use: storage/db.py
        # checks only connections idle for a while, so the first use of one would fail once (as the bot's
        # first transaction in the outage did). The bot process is left to find that out by itself.
        world.db.kw["bind"].dispose()


def test_database_down_or_locked_says_not_saved_and_recovers_without_restart(world: World) -> None:
    officer = "UOFFICER6"
    outages: list[Callable[[World], contextlib.AbstractContextManager[None]]] = [database_locked]
    if make_url(world.url).get_backend_name() == "postgresql":
        outages.append(database_unavailable)
    answers = valid_form_values()
    with running(world.bot()) as bot:
        slack = world.driver(bot)
        submit(world, slack, "UOFFICER7")
        wait_until(lambda: all_sent(world), what="a first request's notifications")
        reviewer = request_of(world, "UOFFICER7").stages[0]
        message = world.stub.message(reviewer.message_channel, reviewer.message_ts)
        # A reviewer's decision form, opened before the outage and submitted during it.
        slack.block_action("USUP1", views.APPROVE_ACTION, message=message)
        decision_form = world.stub.wait_for("views.open").response["view"]
        rationale = {
            forms.RATIONALE.block_id: {forms.ACTION_ID: {"type": "plain_text_input", "value": RATIONALE}}
        }
        for outage in outages:
            world.stub.clear()
            view = open_form(slack, world.stub, officer)
            with outage(world):
                if outage is database_unavailable:
                    # A balancer's readiness check takes this process out while its database is away
                    # (liveness, /healthz, stays 200: the process still answers Slack).
                    wait_until(lambda: readiness(bot)[0] == 503, what="/readyz to say 503")
                    assert readiness(bot)[1].startswith("database unavailable")
                    assert healthz(bot) == 200
                # The answer needs no database: the form passed its checks. Storing it fails just after,
                # and the officer gets the form back, answers and all, saying it was not saved.
                status, body = slack.view_submission(officer, view, slack_state(answers))
                assert status == 200 and "Request received" in json.dumps(body), body
                shown = view_sent(world.stub, view["id"], taken=True)
                assert shown["callback_id"] == views.REQUEST_CALLBACK
                assert "Not saved" in json.dumps(shown)
                assert answers[forms.CASE_REFERENCE.block_id] in json.dumps(shown)
                # The decision is answered "received" and given back, rationale and all, not recorded.
                world.stub.clear()
                status, body = slack.view_submission("USUP1", decision_form, rationale)
                assert status == 200 and "Decision received" in json.dumps(body), body
                shown = view_sent(world.stub, decision_form["id"], taken=True)
                assert shown["callback_id"] == views.DECISION_CALLBACK
                assert "Not saved" in json.dumps(shown) and RATIONALE in json.dumps(shown)
                decision_form = world.stub.views[decision_form["id"]].view  # as Slack now holds it
                slack.block_action("USUP1", views.APPROVE_ACTION, message=message)
                if outage is database_locked and make_url(world.url).get_backend_name() == "sqlite":
                    # A click only reads, and SQLite's readers do not wait for a writer: the form opens
                    # (its submission would be "Not saved" while the lock lasts, as above), in place of
                    # the one given back.
                    opened = world.stub.wait_for("views.open")
                    assert opened.ok
                    decision_form = opened.response["view"]
                else:
                    told = world.stub.wait_for("chat.postEphemeral")
                    assert "cannot reach its database" in told.args["text"]
            with transaction(world.db) as session:
                # Nothing half-written.
                assert session.scalar(select(func.count()).select_from(FrRequest)) == 1
                assert session.scalar(select(func.count()).select_from(Decision)) == 0
        # The database is back: the form given back goes through, and the outbox carries on, no restart
        # needed.
        wait_until(lambda: readiness(bot) == (200, "ready"), what="/readyz to say ready again")
        status, body = submit(world, slack, officer, world.stub.views[view["id"]].view)
        assert status == 200 and "Request received" in str(body), body
        world.stub.clear()
        status, body = slack.view_submission("USUP1", decision_form, rationale)
        assert "Decision recorded" in json.dumps(outcome_of(world.stub, decision_form, body)), body
        wait_until(lambda: all_sent(world), what="notifications after the outage")
        assert bot.stop() == 0
        assert "Traceback" not in bot.log()
    assert_consistent(world)


# --- Approvers removed from a user group ------------------------------------------------------------


def test_approver_removed_from_group_loses_the_right_within_the_cache_time(world: World) -> None:
    officer = "UOFFICER8"
    with running(world.bot(FRBOT_APPROVER_CACHE_SECONDS="1")) as bot:
        slack = world.driver(bot)
        submit(world, slack, officer)
        wait_until(lambda: all_sent(world), what="the reviewer message")
        stage = request_of(world, officer).stages[0]
        message = world.stub.message(stage.message_channel, stage.message_ts)
        slack.block_action("USUP3", views.APPROVE_ACTION, message=message)  # a member of S0SUPERS
        opened = world.stub.wait_for("views.open")
        assert opened.ok
        world.stub.add_usergroup("S0SUPERS", [])  # removed from the group in Slack
        time.sleep(1.2)  # the configured cache time
        world.stub.clear()
        slack.block_action("USUP3", views.APPROVE_ACTION, message=message)
        assert "not an approver" in world.stub.wait_for("chat.postEphemeral").args["text"]
        state = {
            forms.RATIONALE.block_id: {forms.ACTION_ID: {"type": "plain_text_input", "value": RATIONALE}}
        }
        form = opened.response["view"]  # the form opened before
        status, body = slack.view_submission("USUP3", form, state)
        assert status == 200 and "Not recorded" in str(outcome_of(world.stub, form, body))
        assert bot.stop() == 0
    with transaction(world.db) as session:
        refused = session.scalars(select(AuditEvent).where(AuditEvent.action == "action_refused")).all()
        assert session.scalar(select(func.count()).select_from(Decision)) == 0
    assert [(e.actor_id, e.details["reason"], e.details["attempted"]) for e in refused] == [
        ("USUP3", "not_approver", "approve"),
        ("USUP3", "not_approver", "approve"),
    ]


# --- Slack down when the bot starts -----------------------------------------------------------------


def test_bot_started_while_slack_is_down_waits_for_it(world: World) -> None:
    world.stub.fail_next("auth.test", status=503, count=1)
    world.stub.fail_next("auth.test", retry_after=1, count=1)
    with running(world.bot()) as bot:
        slack = world.driver(bot)
        assert submit(world, slack, "UOFFICER9")[0] == 200
        wait_until(lambda: all_sent(world), what="notifications")
        assert bot.stop() == 0
        assert "Slack is not reachable (HTTP 503); trying again" in bot.log()
    assert not world.stub.pending_faults


def test_wait_for_slack_refuses_a_bad_token_without_echoing_it(world: World) -> None:
    from bot.cli import CliError, wait_for_slack

    client = world.stub.client(token="xoxb-wrong-SECRETPART")
    with pytest.raises(CliError) as refused:
        wait_for_slack(client, sleep=lambda _: None)
    assert "invalid_auth" in str(refused.value) and "SECRETPART" not in str(refused.value)


def test_sigterm_while_waiting_for_slack_at_start_exits_0(world: World) -> None:
    world.stub.fail_next("auth.test", status=503, count=1000)
    bot = world.bot()
    with bot.log_path.open("ab") as log:  # BotProcess.start() would wait for a health check that never comes
        bot.process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "run"], cwd=bot.workdir, env=bot.env, stdout=log, stderr=log
        )
    try:
        wait_until(lambda: world.stub.calls_to("auth.test"), what="the first auth.test")
        bot.process.send_signal(signal.SIGTERM)
        assert bot.process.wait(15) == 0, bot.log()
        assert "stopped before Slack answered" in bot.log()
    finally:
        if bot.process.poll() is None:
            bot.process.kill()
        bot.process.wait()
        bot.process = None
    world.stub.clear_faults()

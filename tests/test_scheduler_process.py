"""Exactly once across real processes: `fr-bot scheduler` processes sharing one PostgreSQL database, talking
to the Slack stand-in, which counts every message each channel received.

The requests are made in the past with the workflow's clock, so the processes run on the real clock and
need no test hook: what is overdue and which digest is due follow from the data and the policy.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.approvers import ApproverDirectory, StaticGroupSource
from bot.forms import check_request
from bot.policy import parse_policy
from bot.workflow import Workflow
from storage.db import make_engine, make_session_factory, transaction
from storage.models import DigestRun, OutboxMessage, OutboxStatus, ScheduledNotice, utcnow
from tests.botprocess import BackgroundProcess, BotProcess
from tests.conftest import GROUPS, TEST_POLICY, _truncate_postgres, valid_form_values, wait_until
from tests.slackstub import SlackStub

WHY = "Suspect is armed and has threatened a named victim tonight."
OFFICER = "UOFFICER"
# What the data below owes: 4 review posts and 4 DMs, then per channel one consolidated reminder (three
# urgent reviews), one threaded reminder (threat to life), one escalation and one digest.
EXPECTED = {"C0SUPER": 3 + 1, "C0AUTH": 1 + 1, "C0LEADS": 1 + 1, "D" + OFFICER: 4}
EXPECTED_NOTICES = 3 + 1 + 1


@pytest.fixture
def postgres_url(postgres_migrated: str) -> str:
    _truncate_postgres(postgres_migrated)
    return postgres_migrated


@pytest.fixture
def stub() -> Iterator[SlackStub]:
    with SlackStub() as running:
        for group, members in GROUPS.items():
            running.add_usergroup(group, sorted(members))
        yield running
        running.assert_no_violations()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    # Today's digest time five minutes ago: due now, within the one-hour grace.
    policy = parse_policy(TEST_POLICY).policy
    digest_at = (utcnow() - timedelta(minutes=5)).astimezone(policy.zone).strftime("%H:%M")
    path = tmp_path / "policy.yml"
    path.write_text(TEST_POLICY + f'digest: {{local_time: "{digest_at}", grace_hours: 1}}\n')
    return path


def make_overdue_requests(database_url: str, policy_file: Path) -> None:
    loaded = parse_policy(policy_file.read_text(), str(policy_file))
    engine = make_engine(database_url)
    now = utcnow()
    made_at = now

    def clock() -> datetime:
        return made_at

    directory = ApproverDirectory(StaticGroupSource({k: set(v) for k, v in GROUPS.items()}))
    workflow = Workflow(make_session_factory(engine), loaded, directory, clock=clock)
    # Urgent (8 h deadline, reminders every 2 h): due an hour ago, one reminder owed, escalation in 3 h.
    made_at = now - timedelta(hours=9)
    for n in range(3):
        form = check_request(loaded.policy, valid_form_values(urgency="urgent", urgency_justification=WHY))
        workflow.submit(form, OFFICER, "T0TEST", f"urgent-{n}")
    # Threat to life (1 h, every 30 min, escalates after one reminder): reminder 3 and the escalation owed.
    made_at = now - timedelta(hours=2, minutes=10)
    form = check_request(
        loaded.policy, valid_form_values(urgency="threat_to_life", urgency_justification=WHY)
    )
    workflow.submit(form, OFFICER, "T0TEST", "ttl-0")
    engine.dispose()


def outbox_rows(database_url: str) -> list[tuple[object, ...]]:
    """Every outbox row's kind, status, attempts, pace key and due time: what a timed-out wait shows."""
    engine = make_engine(database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            rows = session.execute(
                select(
                    OutboxMessage.id,
                    OutboxMessage.kind,
                    OutboxMessage.status,
                    OutboxMessage.attempts,
                    OutboxMessage.pace_key,
                    OutboxMessage.next_attempt_at,
                    OutboxMessage.claimed_until,
                ).order_by(OutboxMessage.id)
            )
            return [tuple(row) for row in rows]
    finally:
        engine.dispose()


def db_state(database_url: str) -> tuple[int, int, int]:
    """(notices recorded, digests recorded, outbox rows still pending)."""
    engine = make_engine(database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            notices = session.scalar(select(func.count()).select_from(ScheduledNotice)) or 0
            digests = session.scalar(select(func.count()).select_from(DigestRun)) or 0
            pending = (
                session.scalar(select(func.count()).where(OutboxMessage.status == OutboxStatus.PENDING)) or 0
            )
            return notices, digests, pending
    finally:
        engine.dispose()


def messages_per_channel(stub: SlackStub) -> Counter[str]:
    return Counter(c.response["channel"] for c in stub.calls_to("chat.postMessage") if c.ok)


def settle(database_url: str, processes: Sequence[BackgroundProcess | BotProcess]) -> None:
    """Wait until every notice is recorded and every message sent; on a timeout, show why."""
    try:
        wait_until(
            lambda: db_state(database_url) == (EXPECTED_NOTICES, 1, 0),
            "every notice is recorded and delivered",
        )
    except AssertionError as timed_out:
        state = db_state(database_url)
        raise AssertionError(
            f"{timed_out}: (notices, digests, pending) = {state}; outbox:\n"
            + "\n".join(map(repr, outbox_rows(database_url)))
            + "\nlogs:\n"
            + "\n".join(process.log() for process in processes)
        ) from None
    time.sleep(2.0)  # several more sweep intervals, in which a duplicate would show


@pytest.mark.postgres
def test_two_scheduler_processes_send_each_reminder_and_digest_once(
    postgres_url: str, policy_file: Path, stub: SlackStub, tmp_path: Path
) -> None:
    make_overdue_requests(postgres_url, policy_file)
    processes = [
        BackgroundProcess(postgres_url, policy_file, stub.base_url, tmp_path / name) for name in ("a", "b")
    ]
    for process in processes:
        process.workdir.mkdir()
    for process in processes:
        process.start()
    try:
        settle(postgres_url, processes)
        assert messages_per_channel(stub) == EXPECTED
        reminders = [c for c in stub.calls_to("chat.postMessage") if "overdue" in c.args.get("text", "")]
        assert len([c for c in reminders if c.args.get("thread_ts")]) == 1  # the threat-to-life one
    finally:
        codes = [process.stop() for process in processes]
    assert codes == [0, 0], [p.log() for p in processes]
    for process in processes:
        assert "Traceback" not in process.log(), process.log()

    # A restart resends nothing.
    again = BackgroundProcess(postgres_url, policy_file, stub.base_url, processes[0].workdir).start()
    try:
        # Sweeps, not seconds: a loaded machine may take longer than any sleep to start the process.
        wait_until(lambda: again.sweeps_finished() >= 3, "the restarted process has swept three times")
        assert db_state(postgres_url) == (EXPECTED_NOTICES, 1, 0)
        assert messages_per_channel(stub) == EXPECTED
    finally:
        assert again.stop() == 0


@pytest.mark.postgres
def test_killed_mid_send_and_restarted_nothing_lost_nothing_doubled(
    postgres_url: str, policy_file: Path, stub: SlackStub, tmp_path: Path
) -> None:
    make_overdue_requests(postgres_url, policy_file)
    # Slack is failing while the first process sweeps and tries to send: its work is committed and queued.
    stub.fail_next("chat.postMessage", status=503, count=100_000)
    first = BackgroundProcess(postgres_url, policy_file, stub.base_url, tmp_path)
    first.start()
    try:
        wait_until(lambda: db_state(postgres_url)[:2] == (EXPECTED_NOTICES, 1), "the first sweep is recorded")
        wait_until(lambda: len(stub.calls_to("chat.postMessage")) >= 4, "sends are being attempted")
    finally:
        first.stop(signal.SIGKILL)
    stub.clear_faults()
    assert not any(c.ok for c in stub.calls_to("chat.postMessage"))

    restarted = [BackgroundProcess(postgres_url, policy_file, stub.base_url, tmp_path) for _ in range(2)]
    for process in restarted:
        process.start()
    try:
        settle(postgres_url, restarted)
        assert messages_per_channel(stub) == EXPECTED
    finally:
        for process in restarted:
            assert process.stop() == 0


@pytest.mark.postgres
def test_the_bot_process_runs_the_scheduler_unless_told_not_to(
    postgres_url: str, policy_file: Path, stub: SlackStub, tmp_path: Path
) -> None:
    make_overdue_requests(postgres_url, policy_file)
    scheduler_on = {"FRBOT_SCHEDULER_ENABLED": "true", "FRBOT_SCHEDULER_INTERVAL_SECONDS": "0.5"}
    # `--no-scheduler` wins over the setting: this process only serves Slack and delivers the outbox.
    quiet = BotProcess(postgres_url, policy_file, stub.base_url, tmp_path, **scheduler_on)
    quiet.start(args=("--no-scheduler",))
    try:
        wait_until(lambda: db_state(postgres_url)[2] == 0, "the review posts and DMs are delivered")
        time.sleep(2.0)  # several sweep intervals, had a scheduler been running
        assert db_state(postgres_url)[:2] == (0, 0)
    finally:
        assert quiet.stop() == 0

    bot = BotProcess(postgres_url, policy_file, stub.base_url, tmp_path, **scheduler_on).start()
    try:
        settle(postgres_url, [bot])
        assert messages_per_channel(stub) == EXPECTED
    finally:
        assert bot.stop() == 0
    assert "Traceback" not in bot.log(), bot.log()


def set_time(path: Path, moment: datetime) -> None:
    """Move every process's clock: write a new file and rename it over the old one (atomic)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(moment.isoformat())
    os.replace(temporary, path)


@pytest.mark.postgres
def test_two_processes_on_a_test_clock_over_two_days(
    postgres_url: str, stub: SlackStub, tmp_path: Path
) -> None:
    from bot.clock import FileClock
    from bot.forms import DecisionForm

    clock_file = tmp_path / "now.txt"
    monday = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # London on GMT: local time = UTC
    set_time(clock_file, monday)
    policy_file = tmp_path / "policy.yml"
    policy_file.write_text(TEST_POLICY)
    loaded = parse_policy(TEST_POLICY, str(policy_file))
    engine = make_engine(postgres_url)
    clock = FileClock(clock_file)
    directory = ApproverDirectory(StaticGroupSource({k: set(v) for k, v in GROUPS.items()}))
    workflow = Workflow(make_session_factory(engine), loaded, directory, clock=clock)
    for n in range(2):
        form = check_request(loaded.policy, valid_form_values(urgency="urgent", urgency_justification=WHY))
        workflow.submit(form, OFFICER, "T0TEST", f"urgent-{n}")
    form = check_request(
        loaded.policy, valid_form_values(urgency="threat_to_life", urgency_justification=WHY)
    )
    ttl = workflow.submit(form, OFFICER, "T0TEST", "ttl").request_id

    processes = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        process = BackgroundProcess(postgres_url, policy_file, stub.base_url, tmp_path / name)
        process.env["FRBOT_TEST_CLOCK_FILE"] = str(clock_file)
        processes.append(process.start())

    def step(moment: datetime, notices: int, digests: int) -> None:
        set_time(clock_file, moment)
        wait_until(
            lambda: db_state(postgres_url) == (notices, digests, 0), f"the sweeps at {moment} are done"
        )

    try:
        step(monday, 0, 1)  # Monday's 08:00 digest, an hour late but within the grace
        step(monday + timedelta(hours=1), 1, 1)  # threat to life due: reminder
        step(monday + timedelta(hours=1, minutes=30), 3, 1)  # second reminder and the escalation
        set_time(clock_file, monday + timedelta(hours=1, minutes=45))
        approve = DecisionForm(rationale="Immediate risk to life; no other way to identify in time.")
        workflow.decide(ttl, 0, "UAUTH1", "approve", approve)
        workflow.decide(ttl, 0, "UAUTH2", "approve", approve)  # valid for 6 hours
        step(monday + timedelta(hours=5, minutes=45), 4, 1)  # expiry warning to the officer
        step(monday + timedelta(hours=8), 7, 1)  # both urgent reviews due: one consolidated reminder; the
        # approval ended at 07:45, so the officer is asked to record the search outcome
        step(monday + timedelta(hours=12), 11, 1)  # third reminders and the escalations
        step(monday + timedelta(hours=13, minutes=45), 12, 1)  # ratification reminder, 12 h after approval
        step(monday + timedelta(hours=23), 14, 2)  # Tuesday 08:00: the digest and the latest reminders
        time.sleep(2.0)  # several more sweep intervals, in which a duplicate would show
        assert db_state(postgres_url) == (14, 2, 0)
    finally:
        codes = [process.stop() for process in processes]
        engine.dispose()
    assert codes == [0, 0]
    assert messages_per_channel(stub) == {
        "C0SUPER": 2 + 3,  # review posts, then three consolidated reminders
        "C0AUTH": 1 + 2,
        "C0LEADS": 2 + 2 + 1,  # two digests, two escalation messages, one ratification reminder
        "D" + OFFICER: 3 + 2 + 1 + 1,  # submitted, two decisions, the expiry warning, the post-use reminder
    }

"""The scheduler's sweeps, called directly with a fake clock, on SQLite and PostgreSQL. Queued messages are
delivered by the real outbox dispatcher to the Slack stand-in, which checks every message's Block Kit."""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from bot import sweeps, views
from bot.audit import verify_chain
from bot.forms import FREE_TEXT_FIELDS, DecisionForm, DelegationForm, check_request
from bot.outbox import OutboxDispatcher
from bot.pacing import Pacer, Rate, SlackLimits
from bot.workflow import Workflow, audit
from storage.db import make_engine, make_session_factory, transaction
from storage.models import (
    AuditEvent,
    DigestRun,
    DigestStatus,
    FrRequest,
    NoticeKind,
    OutboxMessage,
    ScheduledNotice,
    StageReview,
)
from tests.conftest import GROUPS, FakeClock, statements_run, valid_form_values
from tests.plans import plan_of
from tests.slackstub import SlackStub
from tests.test_workflow import audit_actions

OFFICER = "UOFFICER"
WHY = "Suspect is armed and has threatened a named victim tonight."
APPROVE = DecisionForm(rationale="Necessary and proportionate: no other way to identify in time.")
MONDAY = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # London is on GMT: local time = UTC


@pytest.fixture
def stub() -> Iterator[SlackStub]:
    with SlackStub() as running:
        for group, members in GROUPS.items():
            running.add_usergroup(group, sorted(members))
        yield running
        running.assert_no_violations()


def submit(workflow: Workflow, key: str, **overrides: str) -> int:
    form = check_request(workflow.policy, valid_form_values(**overrides))
    return workflow.submit(form, OFFICER, "T0TEST", key).request_id


UNPACED = SlackLimits(
    post_per_channel=Rate(interval=1e-6, burst=10_000), update=Rate(interval=1e-6, burst=10_000)
)


def deliver(workflow: Workflow, stub: SlackStub, clock: FakeClock) -> None:
    """Everything queued, at once: these tests are about what the sweeps queue, not about Slack's pace
    (tests/test_outbox.py covers pacing). App Home refreshes are not what these tests look at."""
    dispatcher = OutboxDispatcher(
        workflow.db,
        stub.client(),
        workflow.policy,
        clock=clock,
        pacer=Pacer(UNPACED),
        senders={"publish_home": lambda payload: None},
    )
    while dispatcher.run_once():
        pass


def sweep(workflow: Workflow, clock: FakeClock) -> sweeps.SweepReport:
    """Reviews and approvals; the digest tests call the digest sweep themselves."""
    report = sweeps.sweep_reviews(workflow.db, workflow.policy, clock)
    return sweeps.sweep_approvals(workflow.db, workflow.policy, clock, report)


def sweep_digest(workflow: Workflow, clock: FakeClock) -> sweeps.SweepReport:
    return sweeps.sweep_digests(workflow.db, workflow.policy, clock)


def posts(stub: SlackStub, channel: str) -> list[Any]:
    return [c for c in stub.calls_to("chat.postMessage") if c.ok and c.response["channel"] == channel]


def blocks_text(call: Any) -> str:
    return json.dumps(call.args.get("blocks", []))


def reference(workflow: Workflow, request_id: int) -> str:
    request = workflow.load(request_id)
    assert request is not None
    return request.reference


def count(workflow: Workflow, query: Any) -> int:
    with transaction(workflow.db) as session:
        return int(session.scalar(query) or 0)


def audit_count(workflow: Workflow, action: str) -> int:
    return count(workflow, select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action))


# --- Reminders and escalation ------------------------------------------------------------------------


def test_due_time_shows_on_the_reviewer_message_and_the_officers_dm(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    submit(workflow, "V1", urgency="urgent", urgency_justification=WHY)
    deliver(workflow, stub, clock)
    (review,) = posts(stub, "C0SUPER")
    assert "Decision due by" in blocks_text(review)
    assert str(int((MONDAY + timedelta(hours=8)).timestamp())) in blocks_text(review)
    (dm,) = posts(stub, "D" + OFFICER)
    assert "Decision due by" in blocks_text(dm)
    with transaction(workflow.db) as session:
        stage = session.scalars(select(StageReview)).one()
        assert stage.due_at == MONDAY + timedelta(hours=8)
        assert stage.message_permalink and stage.message_permalink.endswith(
            review.response["ts"].replace(".", "")
        )


def test_overdue_review_is_reminded_in_its_thread_repeats_then_escalates(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    request_id = submit(workflow, "V1", urgency="urgent", urgency_justification=WHY)
    ref = reference(workflow, request_id)
    deliver(workflow, stub, clock)
    review_ts = posts(stub, "C0SUPER")[0].response["ts"]
    due = MONDAY + timedelta(hours=8)

    clock.now = due - timedelta(minutes=1)
    assert sweep(workflow, clock).reminders == 0
    clock.now = due
    report = sweep(workflow, clock)
    assert (report.reminders, report.escalations) == (1, 0)
    assert sweep(workflow, clock).reminders == 0  # a second sweep at the same moment sends nothing
    deliver(workflow, stub, clock)
    reminder = posts(stub, "C0SUPER")[-1]
    assert reminder.args["thread_ts"] == review_ts
    assert ref in reminder.args["text"]
    for mention in ("<@USUP1>", "<@USUP2>", "<!subteam^S0SUPERS>"):
        assert mention in blocks_text(reminder)
    assert "Overdue" in json.dumps(stub.message("C0SUPER", review_ts)["blocks"])  # the message is marked

    clock.now = due + timedelta(hours=2) - timedelta(seconds=1)
    assert sweep(workflow, clock).reminders == 0
    clock.now = due + timedelta(hours=2)  # repeats every 2 hours for urgent requests
    assert sweep(workflow, clock).reminders == 1
    deliver(workflow, stub, clock)
    assert "Reminder 2" in posts(stub, "C0SUPER")[-1].args["text"]

    clock.now = due + timedelta(hours=4)  # 2 unanswered reminders (and 1.5x the deadline): escalate
    report = sweep(workflow, clock)
    assert (report.reminders, report.escalations) == (1, 1)
    deliver(workflow, stub, clock)
    (escalation,) = posts(stub, "C0LEADS")
    assert ref in escalation.args["text"] and "3 reminders sent" in blocks_text(escalation)
    # The audit trail counts them as the leads' message does: two before, and this sweep's own.
    with transaction(workflow.db) as session:
        escalated = session.scalars(select(AuditEvent).where(AuditEvent.action == "review_escalated")).one()
        assert escalated.details["reminders_sent"] == 3

    clock.now = due + timedelta(hours=6)
    report = sweep(workflow, clock)
    assert (report.reminders, report.escalations) == (1, 0)  # reminders go on; escalation happens once
    deliver(workflow, stub, clock)
    assert len(posts(stub, "C0SUPER")) == 1 + 4
    assert len(posts(stub, "C0LEADS")) == 1
    assert audit_count(workflow, "reminder_sent") == 4
    assert audit_count(workflow, "review_escalated") == 1


def test_many_overdue_reviews_in_one_channel_make_one_reminder(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    refs = [reference(workflow, submit(workflow, f"V{n}")) for n in range(3)]
    clock.advance(minutes=5)
    late = submit(workflow, "V-late")
    deliver(workflow, stub, clock)
    thursday = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)  # 3 working days after Monday 09:00

    clock.now = thursday
    report = sweep(workflow, clock)
    assert (report.reminders, report.messages_queued) == (3, 1)
    deliver(workflow, stub, clock)
    consolidated = posts(stub, "C0SUPER")[-1]
    assert "thread_ts" not in consolidated.args
    assert all(ref in blocks_text(consolidated) for ref in refs)
    assert "3 FR reviews" in consolidated.args["text"]

    # The fourth falls due 5 minutes later, inside the channel's 10-minute gap: it waits, then goes alone.
    clock.now = thursday + timedelta(minutes=5)
    assert sweep(workflow, clock).reminders == 0
    clock.now = thursday + timedelta(minutes=10)
    assert sweep(workflow, clock).reminders == 1
    deliver(workflow, stub, clock)
    single = posts(stub, "C0SUPER")[-1]
    assert reference(workflow, late) in single.args["text"] and "thread_ts" in single.args
    assert len(posts(stub, "C0SUPER")) == 4 + 2


def test_threat_to_life_escalates_after_one_reminder(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    submit(workflow, "V1", urgency="threat_to_life", urgency_justification=WHY)
    deliver(workflow, stub, clock)
    clock.now = MONDAY + timedelta(hours=1)
    report = sweep(workflow, clock)
    assert (report.reminders, report.escalations) == (1, 0)
    clock.now = MONDAY + timedelta(hours=1, minutes=30)
    report = sweep(workflow, clock)
    assert (report.reminders, report.escalations) == (1, 1)
    deliver(workflow, stub, clock)
    assert len(posts(stub, "C0AUTH")) == 1 + 2 and len(posts(stub, "C0LEADS")) == 1


def test_decided_stage_is_not_reminded_and_the_next_stage_gets_its_own_deadline(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    request_id = submit(workflow, "V1", tool="engine-a")  # supervisor -> authoriser -> data protection
    clock.advance(hours=1)
    workflow.decide(request_id, 0, "USUP1", "approve", APPROVE)
    deliver(workflow, stub, clock)
    request = workflow.load(request_id)
    assert request is not None
    assert request.stages[1].due_at == datetime(2026, 3, 5, 10, 0, tzinfo=UTC)
    assert "Decision due by" in blocks_text(posts(stub, "D" + OFFICER)[-1])  # the DM names the new due time

    clock.now = datetime(2026, 3, 5, 9, 30, tzinfo=UTC)  # the supervisor's old deadline has passed
    assert sweep(workflow, clock).reminders == 0
    clock.now = datetime(2026, 3, 5, 10, 0, tzinfo=UTC)
    assert sweep(workflow, clock).reminders == 1
    deliver(workflow, stub, clock)
    assert posts(stub, "C0AUTH")[-1].args["thread_ts"] == posts(stub, "C0AUTH")[0].response["ts"]
    assert len(posts(stub, "C0SUPER")) == 1


def _free_text_read(statements: list[str]) -> list[str]:
    """The statements that select a request's free text (the officer's justifications)."""
    columns = [f"fr_requests.{name}" for name in FREE_TEXT_FIELDS]
    return [s for s in statements if s.lstrip().upper().startswith("SELECT") and any(c in s for c in columns)]


def test_expiring_approval_warns_the_officer_and_urgent_approval_needs_ratification(
    workflow: Workflow, clock: FakeClock, stub: SlackStub, engine: Engine
) -> None:
    request_id = submit(workflow, "V1", urgency="threat_to_life", urgency_justification=WHY)
    clock.advance(minutes=20)
    workflow.decide(request_id, 0, "UAUTH1", "approve", APPROVE)
    workflow.decide(request_id, 0, "UAUTH2", "approve", APPROVE)  # valid for 6 hours: until 15:20
    decided = clock.now
    deliver(workflow, stub, clock)

    clock.now = decided + timedelta(hours=4) - timedelta(seconds=1)
    assert sweep(workflow, clock).expiry_warnings == 0
    clock.now = decided + timedelta(hours=4)  # 2 hours before expiry
    with statements_run(engine) as statements:
        assert sweep(workflow, clock).expiry_warnings == 1
    # The warning reads the request's own columns it shows, none of the officer's free text.
    assert not _free_text_read(statements)
    assert sweep(workflow, clock).expiry_warnings == 0
    deliver(workflow, stub, clock)
    assert "expires" in posts(stub, "D" + OFFICER)[-1].args["text"]

    clock.now = decided + timedelta(hours=12) - timedelta(seconds=1)
    assert sweep(workflow, clock).ratifications == 0
    clock.now = decided + timedelta(hours=12)
    assert sweep(workflow, clock).ratifications == 1
    clock.advance(hours=1)
    assert sweep(workflow, clock).ratifications == 0
    deliver(workflow, stub, clock)
    (ratify,) = posts(stub, "C0LEADS")
    assert reference(workflow, request_id) in blocks_text(ratify)
    assert "<@UAUTH1>" in blocks_text(ratify) and "<@UAUTH2>" in blocks_text(ratify)


def test_approvals_through_several_stages_do_not_hold_back_a_ratification(
    workflow: Workflow, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threat to life through the online engines' three stages needs no ratifying; read in the batch and
    passed over in Python, such approvals filled it (BATCH_SIZE 1 here) and the one-stage approval that
    needs ratifying waited until they aged out of the week's window."""
    monkeypatch.setattr(sweeps, "BATCH_SIZE", 1)
    several = submit(workflow, "V1", tool="engine-a", urgency="threat_to_life", urgency_justification=WHY)
    for position, approver in ((0, "USUP1"), (1, "UAUTH1"), (1, "UAUTH2"), (2, "UDPO1")):
        workflow.decide(several, position, approver, "approve", APPROVE)
    clock.advance(minutes=1)  # decided first: ahead in the batch on any database
    one = submit(workflow, "V2", urgency="threat_to_life", urgency_justification=WHY)
    for approver in ("UAUTH1", "UAUTH2"):
        workflow.decide(one, 0, approver, "approve", APPROVE)
    clock.advance(hours=12)
    assert sweep(workflow, clock).ratifications == 1


def test_the_ratification_check_tests_urgency_and_status_in_the_index(
    workflow: Workflow, clock: FakeClock, engine: Engine
) -> None:
    """Every sweep looks for the week's urgent approvals to ratify. By an index of decision times alone
    PostgreSQL read each request decided that week from the table to test its urgency and status (5,040
    rows at 1,000,000 requests, 2.5-3.6 ms a sweep); migration 0014's index holds both, so the generic
    plan tests them in the index and reads only the matches. (Planned with sequential scans off: on a
    table of a few rows a scan is cheaper than any index.)"""

    if engine.dialect.name == "sqlite":
        pytest.skip("a PostgreSQL plan: SQLite, the first run's database, has no statistics to plan by")

    def chosen(statement: str) -> bool:
        return "FROM fr_requests" in statement and "decided_at <=" in statement

    plan = plan_of(engine, lambda: sweep(workflow, clock), chosen, {"enable_seqscan": "off"}).splitlines()
    scan = next(index for index, line in enumerate(plan) if "ix_fr_requests_decided" in line)
    condition = plan[scan + 1]
    assert "Index Cond" in condition and "urgency" in condition and "decided_at" in condition, plan


def test_a_crash_in_the_middle_of_a_sweep_leaves_nothing_half_done(
    workflow: Workflow, clock: FakeClock, stub: SlackStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    submit(workflow, "V1", urgency="threat_to_life", urgency_justification=WHY)
    deliver(workflow, stub, clock)
    clock.now = MONDAY + timedelta(hours=2)  # a reminder and an escalation are both due

    def crash(*_args: object) -> None:
        raise RuntimeError("process killed")

    # Killed after the channel's notices were recorded but before its transaction committed: all undone.
    monkeypatch.setattr(sweeps, "_record_escalations", crash)
    with pytest.raises(RuntimeError):
        sweeps.sweep_reviews(workflow.db, workflow.policy, clock)
    assert count(workflow, select(func.count()).select_from(ScheduledNotice)) == 0
    assert count(workflow, select(func.count()).where(OutboxMessage.kind == "channel_post")) == 0
    monkeypatch.undo()

    # Killed after the reminder went into the outbox, while announcing the escalation to the leads.
    monkeypatch.setattr(views, "escalation_message", crash)
    with pytest.raises(RuntimeError):
        sweeps.sweep_reviews(workflow.db, workflow.policy, clock)
    assert count(workflow, select(func.count()).where(OutboxMessage.kind == "channel_post")) == 1
    monkeypatch.undo()

    report = sweeps.sweep_reviews(workflow.db, workflow.policy, clock)  # the restart
    assert (report.reminders, report.escalations, report.messages_queued) == (0, 0, 1)
    assert sweeps.sweep_reviews(workflow.db, workflow.policy, clock).messages_queued == 0
    deliver(workflow, stub, clock)
    assert len(posts(stub, "C0AUTH")) == 1 + 1 and len(posts(stub, "C0LEADS")) == 1
    assert audit_count(workflow, "reminder_sent") == 1 and audit_count(workflow, "review_escalated") == 1


def test_concurrent_sweepers_send_each_notice_once(
    workflow: Workflow, clock: FakeClock, database_url: str
) -> None:
    for n in range(8):
        submit(workflow, f"R{n}")  # supervisor channel, due Thursday 09:00
    for n in range(4):
        submit(workflow, f"T{n}", urgency="threat_to_life", urgency_justification=WHY)  # authoriser channel
    clock.now = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)  # reminders, escalations and the digest are all due

    engines: list[Engine] = [make_engine(database_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def run(engine: Engine) -> None:
        try:
            barrier.wait()
            sweeps.run_sweeps(make_session_factory(engine), workflow.policy, clock)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert not errors

    with transaction(workflow.db) as session:
        kinds = dict(
            session.execute(select(ScheduledNotice.kind, func.count()).group_by(ScheduledNotice.kind)).all()
        )
        posted = [
            row.payload["channel"]
            for row in session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "channel_post"))
        ]
        assert session.scalar(select(func.count()).select_from(DigestRun)) == 1
    assert kinds == {NoticeKind.REMINDER: 12, NoticeKind.ESCALATION: 4}
    # One consolidated reminder per reviewer channel; the leads get the escalations and the digest.
    assert sorted(posted).count("C0SUPER") == 1 and posted.count("C0AUTH") == 1
    assert posted.count("C0LEADS") == 2


def test_run_sweeps_runs_the_sweeps_at_once_on_postgresql_and_adds_up_their_reports(
    workflow: Workflow, clock: FakeClock, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL each sweep has its own thread and they run at once: each here waits at a barrier
    until all have reached it, which they could not do in turn. SQLite's single writer takes them in
    turn, in the caller's thread."""
    at_once = engine.dialect.name == "postgresql"
    barrier = threading.Barrier(len(sweeps.SWEEPS), timeout=10)
    ran_in: list[threading.Thread] = []

    def sweep_counting(reminders: int) -> Any:
        def sweep(_db: Any, _policy: Any, _clock: Any, report: sweeps.SweepReport) -> sweeps.SweepReport:
            ran_in.append(threading.current_thread())
            if at_once:
                barrier.wait()
            report.reminders += reminders
            report.messages_queued += 1
            return report

        return sweep

    monkeypatch.setattr(sweeps, "SWEEPS", (sweep_counting(1), sweep_counting(2), sweep_counting(4)))
    report = sweeps.run_sweeps(workflow.db, workflow.policy, clock)
    assert (report.reminders, report.messages_queued) == (7, 3)
    if at_once:
        assert len(set(ran_in)) == 3 and threading.current_thread() not in ran_in
    else:
        assert ran_in == [threading.current_thread()] * 3


def test_the_reviewer_channels_are_swept_at_once_on_postgresql(
    workflow: Workflow, clock: FakeClock, engine: Engine, stub: SlackStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each reviewer channel's overdue reviews are swept in a thread of their own on PostgreSQL: each
    channel's sweep here waits at a barrier until the other's has reached it. Each channel still gets its
    one reminder, and the leads the escalation (the threat to life's: the routine one is not yet due).
    SQLite sweeps them in turn, in the caller's thread."""
    submit(workflow, "R1")  # supervisor channel
    submit(workflow, "T1", urgency="threat_to_life", urgency_justification=WHY)  # authoriser channel
    clock.now = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)  # both overdue; the threat to life's escalated
    at_once = engine.dialect.name == "postgresql"
    barrier = threading.Barrier(2, timeout=10)
    swept_in: dict[str, threading.Thread] = {}
    sweep_channel = sweeps._sweep_channel

    def meeting(db: Any, policy: Any, channel: str, *rest: Any) -> int:
        if channel not in swept_in:
            swept_in[channel] = threading.current_thread()
            if at_once:
                barrier.wait()
        return sweep_channel(db, policy, channel, *rest)

    monkeypatch.setattr(sweeps, "_sweep_channel", meeting)
    report = sweeps.sweep_reviews(workflow.db, workflow.policy, clock)
    assert sorted(swept_in) == ["C0AUTH", "C0SUPER"]
    assert (len(set(swept_in.values())) == 2) is at_once
    assert (report.reminders, report.escalations) == (2, 1)
    deliver(workflow, stub, clock)
    assert len(posts(stub, "C0SUPER")) == 1 + 1 and len(posts(stub, "C0AUTH")) == 1 + 1
    assert len(posts(stub, "C0LEADS")) == 1


def test_a_channel_another_process_is_sweeping_is_left_to_it(
    workflow: Workflow, clock: FakeClock, engine: Engine, stub: SlackStub
) -> None:
    """On PostgreSQL a reviewer channel's due read takes the channel's advisory lock first: while another
    process holds it (it is sweeping that channel), this sweep reads none of the channel's reviews, claims
    and records nothing for it, and sweeps the other channel; once the lock is free the channel is swept."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's sweeps take the database's one writer lock (BEGIN IMMEDIATE) instead")
    submit(workflow, "R1")  # supervisor channel
    submit(workflow, "T1", urgency="threat_to_life", urgency_justification=WHY)  # authoriser channel
    clock.now = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)  # both overdue
    with engine.connect() as other:
        lock = func.pg_try_advisory_xact_lock(sweeps.channel_lock_key("C0SUPER"))
        assert other.scalar(select(lock))
        report = sweeps.sweep_reviews(workflow.db, workflow.policy, clock)
        assert report.reminders == 1
        with transaction(workflow.db) as session:
            reminded = session.scalars(
                select(ScheduledNotice.channel).where(ScheduledNotice.kind == NoticeKind.REMINDER)
            ).all()
            unclaimed = session.scalar(
                select(func.count()).where(
                    StageReview.channel_id == "C0SUPER", StageReview.next_check_at.is_(None)
                )
            )
        assert reminded == ["C0AUTH"] and unclaimed == 1
        other.rollback()  # the other process's transaction ends, and its lock with it
    assert sweeps.sweep_reviews(workflow.db, workflow.policy, clock).reminders == 1
    deliver(workflow, stub, clock)
    assert len(posts(stub, "C0SUPER")) == 1 + 1 and len(posts(stub, "C0AUTH")) == 1 + 1


def test_a_notices_batch_that_cannot_go_as_json_is_claimed_and_recorded_in_two_statements(
    workflow: Workflow, clock: FakeClock, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the notices' batch cannot be one JSON parameter (storage/recordsets.py: text holding a NUL),
    PostgreSQL's sweep claims the reviews and records their notices with a statement each, as SQLite's
    does, with the same outcome."""
    submit(workflow, "R1")
    submit(workflow, "T1", urgency="threat_to_life", urgency_justification=WHY)
    clock.now = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)
    as_json = sweeps.records

    def refusing_notices(rows: Any) -> Any:
        return None if rows and "kind" in rows[0] else as_json(rows)

    monkeypatch.setattr(sweeps, "records", refusing_notices)
    with statements_run(engine) as statements:
        report = sweep(workflow, clock)
    assert (report.reminders, report.escalations) == (2, 1)
    normalised = [" ".join(statement.split()).upper() for statement in statements]
    assert sum(s.startswith("UPDATE STAGE_REVIEWS") for s in normalised) == 2
    assert not [s for s in normalised if s.startswith("WITH CLAIMED AS")]
    assert audit_actions(workflow).count("reminder_sent") == 2
    assert sweep(workflow, clock).reminders == 0  # claimed


def test_a_channel_that_fails_does_not_stop_the_others_nor_the_leads_escalation(
    workflow: Workflow, clock: FakeClock, stub: SlackStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    submit(workflow, "R1")  # supervisor channel: its sweep fails
    submit(workflow, "T1", urgency="threat_to_life", urgency_justification=WHY)  # authoriser channel
    clock.now = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)
    sweep_channel = sweeps._sweep_channel

    def failing_in_supervisors(db: Any, policy: Any, channel: str, *rest: Any) -> int:
        if channel == "C0SUPER":
            raise RuntimeError("the supervisors' channel is broken")
        return sweep_channel(db, policy, channel, *rest)

    monkeypatch.setattr(sweeps, "_sweep_channel", failing_in_supervisors)
    with pytest.raises(RuntimeError, match="supervisors' channel"):
        sweeps.sweep_reviews(workflow.db, workflow.policy, clock)
    deliver(workflow, stub, clock)
    assert len(posts(stub, "C0AUTH")) == 1 + 1 and len(posts(stub, "C0SUPER")) == 1  # reviewers' posts
    assert len(posts(stub, "C0LEADS")) == 1  # the authoriser channel's escalation, announced


def test_a_sweep_that_fails_does_not_stop_the_others_and_its_error_is_raised_after(
    workflow: Workflow, clock: FakeClock, stub: SlackStub, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken digest must not hold back the reviews' reminders:
    the reminder is recorded, audited and sent, and the digest's error reaches the scheduler, which logs
    it and tries again at the next run."""
    request_id = submit(workflow, "V1")
    clock.now = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)  # the review is overdue and the digest is due

    def broken_digest(*_args: Any) -> sweeps.SweepReport:
        raise RuntimeError("the digest is broken")

    # The broken sweep first, so on SQLite the others come after it in turn.
    monkeypatch.setattr(sweeps, "SWEEPS", (broken_digest, *sweeps.SWEEPS[:2]))
    with pytest.raises(RuntimeError, match="the digest is broken"):
        sweeps.run_sweeps(workflow.db, workflow.policy, clock)
    assert audit_count(workflow, "reminder_sent") == 1
    deliver(workflow, stub, clock)
    assert reference(workflow, request_id) in blocks_text(posts(stub, "C0SUPER")[-1])
    assert verify_chain(engine).ok


def test_a_review_whose_row_is_being_written_is_still_in_the_channels_reminder(
    workflow: Workflow, clock: FakeClock, database_url: str
) -> None:
    """The dispatcher records where a review post landed on the stage's row. A sweep that skipped that row
    (SKIP LOCKED) would remind the others and leave it waiting for the channel's gap to pass."""
    stage_ids = []
    for n in range(3):
        request = workflow.load(submit(workflow, f"R{n}"))
        assert request is not None
        stage_ids.append(request.stages[0].id)
    clock.now = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)  # all three are due

    writer = make_engine(database_url)
    sweeper_done = threading.Event()
    try:
        with writer.begin() as connection:  # the landing's write, still open while the sweep starts
            connection.execute(
                update(StageReview).where(StageReview.id == stage_ids[1]).values(message_ts="1.000001")
            )
            sweeper = threading.Thread(
                target=lambda: (sweeps.sweep_reviews(workflow.db, workflow.policy, clock), sweeper_done.set())
            )
            sweeper.start()
            sweeper_done.wait(0.5)  # SQLite: the writer holds the database, so the sweep waits here too
        sweeper.join(30)
    finally:
        writer.dispose()
    assert sweeper_done.is_set()
    with transaction(workflow.db) as session:
        reminded = set(
            session.scalars(
                select(ScheduledNotice.subject_id).where(ScheduledNotice.kind == NoticeKind.REMINDER)
            )
        )
    assert reminded == set(stage_ids)


# --- The daily digest -----------------------------------------------------------------------------------


def digests(workflow: Workflow) -> list[DigestRun]:
    with transaction(workflow.db) as session:
        return list(session.scalars(select(DigestRun).order_by(DigestRun.local_date)))


def test_quiet_day_still_gets_a_short_digest(workflow: Workflow, clock: FakeClock, stub: SlackStub) -> None:
    clock.now = datetime(2026, 3, 2, 7, 59, tzinfo=UTC)
    assert sweep_digest(workflow, clock).digests_sent == 0
    clock.now = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    assert sweep_digest(workflow, clock).digests_sent == 1
    assert sweep_digest(workflow, clock).digests_sent == 0
    deliver(workflow, stub, clock)
    (digest,) = posts(stub, "C0LEADS")
    assert digest.args["text"] == "FR digest: nothing pending"
    assert "Nothing pending" in blocks_text(digest)
    assert digest.args["blocks"][0]["type"] == "header"


def test_digest_counts_lists_and_decision_times(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    pending = submit(workflow, "V1")
    approved = submit(workflow, "V2")
    rejected = submit(workflow, "V3")
    overdue = submit(workflow, "V4", urgency="urgent", urgency_justification=WHY)
    workflow.record_refused_submission(OFFICER, "engine-b", {"tool": "prohibited"})
    clock.advance(hours=1)
    workflow.decide(approved, 0, "USUP1", "approve", APPROVE)
    clock.advance(hours=2)
    reject = DecisionForm(
        rationale="Other enquiries have not been tried.", reason_code="alternatives_not_exhausted"
    )
    workflow.decide(rejected, 0, "USUP2", "reject", reject)
    deliver(workflow, stub, clock)

    clock.now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)  # Tuesday's digest covers Monday 08:00 onwards
    assert sweeps.sweep_digests(workflow.db, workflow.policy, clock).digests_sent == 1
    (run,) = digests(workflow)
    summary = run.summary
    assert summary is not None
    assert summary["counts"] == {"submitted": 4, "approved": 1, "rejected": 1, "withdrawn": 0, "expired": 0}
    assert summary["pending"] == [{"stage": "Supervisor review", "count": 2, "oldest_hours": 23.0}]
    assert [o["reference"] for o in summary["overdue"]] == [reference(workflow, overdue)]
    assert summary["overdue"][0]["link"].startswith("https://example.slack.com/archives/C0SUPER/p")
    assert [p["tool"] for p in summary["prohibited"]] == ["Engine B"]
    assert summary["decision_hours"] == {"count": 2, "median": 2.0, "p90": 3.0}
    assert reference(workflow, pending) not in json.dumps(summary["overdue"])
    deliver(workflow, stub, clock)
    (digest,) = posts(stub, "C0LEADS")
    text = blocks_text(digest)
    assert "Pending reviews by stage" in text and "Requests for prohibited tools" in text
    assert reference(workflow, overdue) in text and "2 h" in text and "3 h" in text


def test_digest_counts_each_expired_request_once_and_each_request_once_per_outcome(
    workflow: Workflow, clock: FakeClock
) -> None:
    """Expired in the period: an approval whose validity ran out in it, or a request marked expired in it;
    one marked and run out counts once. Two events of one outcome for one request count once."""
    start = clock.now
    ran_out = submit(workflow, "V1")
    marked = submit(workflow, "V2")
    still_valid = submit(workflow, "V3")
    workflow.decide(ran_out, 0, "USUP1", "approve", APPROVE)
    clock.advance(hours=100)  # past ran_out's validity (72 hours for a routine request)
    workflow.decide(still_valid, 0, "USUP1", "approve", APPROVE)
    with transaction(workflow.db) as session:
        for request_id in (ran_out, marked):
            audit(session, "system", "request_expired", request_id, clock.now)
        audit(session, "system", "request_submitted", marked, clock.now)  # marked's second, counted once
    end = clock.now + timedelta(minutes=1)
    with transaction(workflow.db, read_only=True) as session:
        summary = sweeps.digest_summary(session, workflow.policy, start, end, end)
    assert summary["counts"] == {"submitted": 3, "approved": 2, "rejected": 0, "withdrawn": 0, "expired": 2}
    assert summary["decision_hours"]["count"] == 2


def test_digest_lists_approvals_about_to_expire_with_a_link_to_their_last_stage(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    approved = submit(workflow, "V1")
    later = submit(workflow, "V2")
    deliver(workflow, stub, clock)
    workflow.decide(approved, 0, "USUP1", "approve", APPROVE)
    clock.advance(hours=1)
    workflow.decide(later, 0, "USUP1", "approve", APPROVE)
    deliver(workflow, stub, clock)
    with transaction(workflow.db) as session:
        requests = [session.get(FrRequest, approved), session.get(FrRequest, later)]
        valid_until = [r.valid_until for r in requests if r is not None]
        channel, ts = requests[0].stages[-1].message_channel, requests[0].stages[-1].message_ts  # type: ignore[union-attr]
    now = valid_until[0] - timedelta(hours=workflow.policy.digest.expiring_within_hours - 2)
    with transaction(workflow.db, read_only=True) as session:
        summary = sweeps.digest_summary(session, workflow.policy, now - timedelta(days=1), now, now)
    assert [e["reference"] for e in summary["expiring"]] == [
        reference(workflow, approved),
        reference(workflow, later),
    ]
    assert summary["expiring"][0]["valid_until"] == valid_until[0].isoformat()
    assert summary["expiring"][0]["link"].endswith(f"/archives/{channel}/p{ts.replace('.', '')}")


def test_digest_lists_are_capped_and_fit_slack() -> None:
    from bot.policy import parse_policy
    from tests.conftest import TEST_POLICY

    policy = parse_policy(TEST_POLICY).policy
    at = "2026-03-02T08:00:00+00:00"
    overdue = [
        {
            "reference": f"FR-2026-{n:05d}",
            "stage": "Supervisor review",
            "urgency": "routine",
            "due_at": at,
            "link": None,
        }
        for n in range(1, 26)
    ]
    summary = {
        "period_start": at,
        "period_end": "2026-03-03T08:00:00+00:00",
        "counts": {"submitted": 25, "approved": 0, "rejected": 0, "withdrawn": 0, "expired": 0},
        "pending": [{"stage": f"Stage {n}", "count": 1, "oldest_hours": 30.5} for n in range(14)],
        "overdue": overdue,
        "prohibited": [{"tool": "Engine B", "requester": "UOFF", "at": at}] * 12,
        "decision_hours": {"count": 0, "median": None, "p90": None},
        "expiring": [{"reference": "FR-2026-00001", "valid_until": at, "link": None}] * 11,
        "missed_dates": ["2026-03-01"],
    }
    message = views.digest_message("C0LEADS", summary, policy)
    text = json.dumps(message["blocks"])
    assert "and 15 more" in text and "and 4 more" in text and "and 2 more" in text and "and 1 more" in text
    assert "No digest was sent for Sun 01 Mar" in text
    assert len(message["blocks"]) <= views.MESSAGE_BLOCK_LIMIT
    items = [
        views.OverdueItem(
            f"FR-2026-{n:05d}", "urgent", "Supervisor review", datetime(2026, 3, 2, tzinfo=UTC), None, ("U1",)
        )
        for n in range(14)
    ]
    reminder = views.reminder_message("C0SUPER", items, policy, datetime(2026, 3, 3, tzinfo=UTC))
    assert "and 4 more" in json.dumps(reminder["blocks"])
    with SlackStub() as stub:  # the stand-in checks both against Slack's Block Kit schema
        client = stub.client()
        client.chat_postMessage(channel="C0LEADS", text=message["text"], blocks=message["blocks"])
        client.chat_postMessage(channel="C0SUPER", text=reminder["text"], blocks=reminder["blocks"])
        stub.assert_no_violations()


@pytest.mark.parametrize(
    ("start", "utc_hours"),
    [
        (datetime(2026, 3, 27, 0, 0, tzinfo=UTC), [8, 8, 7, 7]),  # clocks go forward on Sunday 29 March
        (datetime(2026, 10, 23, 0, 0, tzinfo=UTC), [7, 7, 8, 8]),  # and back on Sunday 25 October
    ],
)
def test_digest_keeps_its_wall_clock_time_across_dst(
    workflow: Workflow, clock: FakeClock, start: datetime, utc_hours: list[int]
) -> None:
    clock.now = start
    while clock.now < start + timedelta(days=4):
        sweeps.sweep_digests(workflow.db, workflow.policy, clock)
        clock.advance(minutes=20)
    runs = digests(workflow)
    assert [r.local_date for r in runs] == [start.date() + timedelta(days=n) for n in range(4)]
    assert [r.scheduled_for.hour for r in runs] == utc_hours
    for run in runs:
        assert run.status == DigestStatus.SENT
        assert run.scheduled_for.astimezone(workflow.policy.zone).strftime("%H:%M") == "08:00"
        assert timedelta(0) <= run.created_at - run.scheduled_for < timedelta(minutes=20)
    # Each digest starts where the previous one ended: 23 or 25 hours across the change, nothing lost.
    for before, after in itertools.pairwise(runs):
        assert after.period_start == before.period_end
    assert count(workflow, select(func.count()).where(OutboxMessage.kind == "channel_post")) == 4


def test_missed_digest_is_sent_within_grace_and_recorded_as_missed_after(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    clock.now = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    sweep_digest(workflow, clock)  # Monday's digest
    clock.now = datetime(2026, 3, 4, 13, 59, tzinfo=UTC)  # down since; back 5 h 59 min after Wednesday's
    report = sweep_digest(workflow, clock)
    assert (report.digests_sent, report.digests_missed) == (1, 1)  # Tuesday missed, Wednesday sent late
    clock.now = datetime(2026, 3, 5, 14, 1, tzinfo=UTC)  # Thursday: 6 h 1 min late, past the grace
    report = sweep_digest(workflow, clock)
    assert (report.digests_sent, report.digests_missed) == (0, 1)
    clock.now = datetime(2026, 3, 6, 8, 0, tzinfo=UTC)
    assert sweep_digest(workflow, clock).digests_sent == 1

    runs = digests(workflow)
    assert [(r.local_date, r.status) for r in runs] == [
        (date(2026, 3, 2), DigestStatus.SENT),
        (date(2026, 3, 3), DigestStatus.MISSED),
        (date(2026, 3, 4), DigestStatus.SENT),
        (date(2026, 3, 5), DigestStatus.MISSED),
        (date(2026, 3, 6), DigestStatus.SENT),
    ]
    assert runs[2].period_start == runs[0].period_end  # Wednesday's covers Tuesday's too
    assert runs[4].period_start == runs[2].period_end
    assert audit_count(workflow, "digest_missed") == 2
    deliver(workflow, stub, clock)
    sent = posts(stub, "C0LEADS")
    assert len(sent) == 3
    assert "No digest was sent for Tue 03 Mar" in blocks_text(sent[1])
    assert "No digest was sent for Thu 05 Mar" in blocks_text(sent[2])


def test_pending_stage_without_a_due_time_gets_one(workflow: Workflow, clock: FakeClock) -> None:
    request_id = submit(workflow, "V1", urgency="urgent", urgency_justification=WHY)
    with transaction(workflow.db) as session:  # as if created before deadlines existed
        session.get(FrRequest, request_id).stages[0].due_at = None  # type: ignore[union-attr]
    clock.now = MONDAY + timedelta(hours=8)
    assert sweep(workflow, clock).reminders == 1


def test_a_large_backlog_goes_out_in_batches_spaced_by_the_channel_gap(
    workflow: Workflow, clock: FakeClock
) -> None:
    for n in range(3):
        submit(workflow, f"V{n}")
    clock.now = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)
    report = sweeps.sweep_reviews(workflow.db, workflow.policy, clock, batch_size=2)
    assert (report.reminders, report.messages_queued) == (2, 1)  # the third waits for the channel's gap
    clock.advance(minutes=9)
    assert sweeps.sweep_reviews(workflow.db, workflow.policy, clock, batch_size=2).reminders == 0
    clock.advance(minutes=1)
    assert sweeps.sweep_reviews(workflow.db, workflow.policy, clock, batch_size=2).reminders == 1


def test_escalations_from_several_channels_make_one_message_to_the_leads(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    urgent = submit(workflow, "V1", urgency="urgent", urgency_justification=WHY)  # supervisor channel
    ttl = submit(workflow, "V2", urgency="threat_to_life", urgency_justification=WHY)  # authoriser channel
    deliver(workflow, stub, clock)
    clock.now = MONDAY + timedelta(hours=12)  # both past their escalation time
    report = sweep(workflow, clock)
    assert (report.reminders, report.escalations) == (2, 2)
    deliver(workflow, stub, clock)
    (escalation,) = posts(stub, "C0LEADS")
    assert "2 overdue FR reviews" in escalation.args["text"]
    assert reference(workflow, urgent) in blocks_text(escalation)
    assert reference(workflow, ttl) in blocks_text(escalation)


def test_the_clock_stops_while_a_question_waits_on_the_officer(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    request_id = submit(workflow, "V1", urgency="urgent", urgency_justification=WHY)
    due = MONDAY + timedelta(hours=8)
    clock.now = MONDAY + timedelta(hours=2)
    workflow.request_info(request_id, 0, "USUP1", "Which exhibit is the still from?", "VQ1")
    clock.now = due + timedelta(hours=1)  # past the original due time, but waiting on the officer
    assert sweep(workflow, clock).reminders == 0
    request = workflow.load(request_id)
    assert request is not None
    info = request.stages[0].info_requests[0]
    clock.now = MONDAY + timedelta(hours=10)  # answered after 8 hours of waiting
    workflow.answer_info(info.id, OFFICER, "Exhibit JS/1, camera 3")
    with transaction(workflow.db) as session:
        stage = session.scalars(select(StageReview)).one()
        assert stage.due_at == due + timedelta(hours=8)
    clock.now = due + timedelta(hours=8) - timedelta(minutes=1)
    assert sweep(workflow, clock).reminders == 0
    clock.now = due + timedelta(hours=8)
    assert sweep(workflow, clock).reminders == 1


def _ask_and_answer(workflow: Workflow, clock: FakeClock, request_id: int, asked: datetime, key: str) -> int:
    clock.now = asked
    workflow.request_info(request_id, 0, "USUP1", "Which exhibit is the still from?", key)
    request = workflow.load(request_id)
    assert request is not None
    return max(info.id for info in request.stages[0].info_requests)


def _due_at(workflow: Workflow) -> datetime:
    with transaction(workflow.db) as session:
        due = session.scalars(select(StageReview.due_at)).one()
        assert due is not None
        return due


def test_a_stopped_clock_moves_the_escalation_with_the_due_time(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    """Urgent: due 8 h after it starts, escalated after 2 reminders 2 h apart or at 1.5x the deadline. A
    question waits 8 h, so the review is due at +16 h: it escalates at +20 h, not at +12 h counted from
    its start, which would send the leads a review at the moment it falls due."""
    request_id = submit(workflow, "V1", urgency="urgent", urgency_justification=WHY)
    info = _ask_and_answer(workflow, clock, request_id, MONDAY + timedelta(hours=2), "VQ1")
    clock.now = MONDAY + timedelta(hours=10)
    workflow.answer_info(info, OFFICER, "Exhibit JS/1, camera 3")
    due = _due_at(workflow)
    assert due == MONDAY + timedelta(hours=16)
    clock.now = due
    report = sweep(workflow, clock)
    assert (report.reminders, report.escalations) == (1, 0)
    clock.now = due + timedelta(hours=4) - timedelta(minutes=1)
    assert sweep(workflow, clock).escalations == 0
    clock.now = due + timedelta(hours=4)
    assert sweep(workflow, clock).escalations == 1


def test_reminders_go_on_after_a_question_numbered_by_those_sent(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    """Urgent: due at +8 h, reminded every 2 h. Reminded at +8 h; a question at +9 h answered at +11 h
    moves the due time to +10 h. The sweep at +11 h owes a reminder (the slot at +10 h): it was keyed by its
    number in the new schedule, 0, which the reminder at +8 h had taken, and was dropped, and the next one
    came at +12 h called 'Reminder 2'."""
    request_id = submit(workflow, "V1", urgency="urgent", urgency_justification=WHY)
    clock.now = MONDAY + timedelta(hours=8)
    assert sweep(workflow, clock).reminders == 1
    info = _ask_and_answer(workflow, clock, request_id, MONDAY + timedelta(hours=9), "VQ1")
    clock.now = MONDAY + timedelta(hours=11)
    workflow.answer_info(info, OFFICER, "Exhibit JS/1, camera 3")
    assert _due_at(workflow) == MONDAY + timedelta(hours=10)
    assert sweep(workflow, clock).reminders == 1
    assert sweep(workflow, clock).reminders == 0  # once for its slot
    clock.now = MONDAY + timedelta(hours=12)
    assert sweep(workflow, clock).reminders == 1
    deliver(workflow, stub, clock)
    numbers = [
        re.findall(r"Reminder \d+|Reminder", c.args["text"])
        for c in posts(stub, "C0SUPER")
        if "eminder" in c.args["text"]
    ]
    assert [n[0] for n in numbers] == ["Reminder", "Reminder 2", "Reminder 3"]


def test_the_reviewer_message_says_the_clock_is_stopped_not_overdue_while_a_question_waits(
    workflow: Workflow, clock: FakeClock
) -> None:
    request_id = submit(workflow, "V1", urgency="urgent", urgency_justification=WHY)
    _ask_and_answer(workflow, clock, request_id, MONDAY + timedelta(hours=9), "VQ1")
    request = workflow.load(request_id)
    assert request is not None
    message = json.dumps(
        views.review_message(request, request.stages[0], workflow.policy, MONDAY + timedelta(hours=10))
    )
    assert "Overdue" not in message and "Clock stopped" in message


def _the_authorisers_reminder(workflow: Workflow, clock: FakeClock, stub: SlackStub) -> str:
    """The one reminder a threat-to-life review gets when it falls due (+1 h), as posted: its blocks."""
    clock.now = MONDAY + timedelta(hours=1)
    assert sweep(workflow, clock).reminders == 1
    deliver(workflow, stub, clock)
    [reminder] = [c for c in posts(stub, "C0AUTH") if "eminder" in c.args["text"]]
    return json.dumps(reminder.args["blocks"])


def test_a_reminder_does_not_ask_an_approver_who_has_decided(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    """Threat to life: the authorisers' stage needs two approvals. UAUTH1 has given one; the reminder asks
    UAUTH2 and UAUTH3 (it asked UAUTH1 too, to approve or reject what they had approved)."""
    request_id = submit(workflow, "V1", urgency="threat_to_life", urgency_justification=WHY)
    workflow.decide(request_id, 0, "UAUTH1", "approve", APPROVE)
    text = _the_authorisers_reminder(workflow, clock, stub)
    assert "<@UAUTH2>" in text and "<@UAUTH3>" in text and "<@UAUTH1>" not in text
    # Escalated at +1 h 30: the leads are pointed at those still to decide, too.
    clock.now = MONDAY + timedelta(hours=1, minutes=30)
    assert sweep(workflow, clock).escalations == 1
    deliver(workflow, stub, clock)
    [escalation] = [c for c in posts(stub, "C0LEADS")]
    text = json.dumps(escalation.args["blocks"])
    assert "<@UAUTH2>" in text and "<@UAUTH1>" not in text


def test_a_reminder_does_not_ask_an_approver_whose_deputy_decided_for_them(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    today = clock.now.date()
    workflow.delegate("UAUTH1", DelegationForm(deputy_id="UDEPUTY", starts_on=today, ends_on=today))
    request_id = submit(workflow, "V1", urgency="threat_to_life", urgency_justification=WHY)
    workflow.decide(request_id, 0, "UDEPUTY", "approve", APPROVE)
    text = _the_authorisers_reminder(workflow, clock, stub)
    assert "<@UAUTH2>" in text and "<@UAUTH1>" not in text


def test_a_closed_approval_is_neither_expiring_in_the_digest_nor_warned_of(
    workflow: Workflow, clock: FakeClock
) -> None:
    """Its search's outcome recorded the day it was approved: the digest listed it as expiring soon and
    the officer was warned it expires."""
    from bot.forms import PostUseForm

    request_id = submit(workflow, "V1")
    workflow.decide(request_id, 0, "USUP1", "approve", APPROVE)
    use = PostUseForm(search_run=True, result="no_match", handling="deleted", authority="Exhibit JS/4")
    workflow.record_post_use(request_id, OFFICER, use)
    request = workflow.load(request_id)
    assert request is not None and request.valid_until is not None
    clock.now = request.valid_until - timedelta(hours=1)
    assert sweep(workflow, clock).expiry_warnings == 0
    with transaction(workflow.db) as session:
        summary = sweeps.digest_summary(
            session, workflow.policy, clock.now - timedelta(days=1), clock.now, clock.now
        )
    assert summary["expiring"] == []


def test_a_working_time_deadline_stops_only_for_the_working_time_spent_waiting(
    workflow: Workflow, clock: FakeClock
) -> None:
    """Routine: 3 working days (09:00-17:00, Monday to Friday). Submitted Thursday 09:00, due Monday
    17:00; a question asked Friday 16:00 and answered Monday 10:00 kept it waiting for two working hours
    (not the 66 hours of the weekend), so it is due Tuesday 11:00."""
    thursday = MONDAY + timedelta(days=3)
    clock.now = thursday
    request_id = submit(workflow, "V1")
    assert _due_at(workflow) == MONDAY + timedelta(days=7, hours=8)
    info = _ask_and_answer(workflow, clock, request_id, thursday + timedelta(days=1, hours=7), "VQ1")
    clock.now = MONDAY + timedelta(days=7, hours=1)
    workflow.answer_info(info, OFFICER, "Exhibit JS/1, camera 3")
    assert _due_at(workflow) == MONDAY + timedelta(days=8, hours=2)


def test_questions_that_overlap_stop_the_clock_from_the_first_until_the_last_answer(
    workflow: Workflow, clock: FakeClock
) -> None:
    """Urgent (8 h of clock time). Two questions: one asked at +1 h, another at +2 h, the first answered
    at +2.5 h, the second at +4 h. The stage waited on the officer without a break from +1 h to +4 h."""
    request_id = submit(workflow, "V1", urgency="urgent", urgency_justification=WHY)
    first = _ask_and_answer(workflow, clock, request_id, MONDAY + timedelta(hours=1), "VQ1")
    second = _ask_and_answer(workflow, clock, request_id, MONDAY + timedelta(hours=2), "VQ2")
    clock.now = MONDAY + timedelta(hours=2, minutes=30)
    workflow.answer_info(first, OFFICER, "Exhibit JS/1")
    assert _due_at(workflow) == MONDAY + timedelta(hours=8)  # the second still waits: no change yet
    clock.now = MONDAY + timedelta(hours=4)
    workflow.answer_info(second, OFFICER, "Camera 3")
    assert _due_at(workflow) == MONDAY + timedelta(hours=11)


def test_every_unrecorded_approval_gets_its_daily_reminder_however_many_wait(
    workflow: Workflow, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep reminds a batch at a time: the oldest approvals already reminded today must not fill every
    batch, or those after them are never reminded (BATCH_SIZE 2 here, 3 approvals ended)."""
    monkeypatch.setattr(sweeps, "BATCH_SIZE", 2)
    ids = [submit(workflow, f"V{n}") for n in range(3)]
    for request_id in ids:
        workflow.decide(request_id, 0, "USUP1", "approve", APPROVE)
        clock.advance(minutes=1)
    request = workflow.load(ids[-1])
    assert request is not None and request.valid_until is not None
    clock.now = request.valid_until + timedelta(hours=1)
    assert sweep(workflow, clock).post_use_reminders == 2
    assert sweep(workflow, clock).post_use_reminders == 1
    assert sweep(workflow, clock).post_use_reminders == 0
    clock.advance(days=1)
    assert sweep(workflow, clock).post_use_reminders + sweep(workflow, clock).post_use_reminders == 3


def test_the_digest_does_not_list_as_overdue_a_review_whose_clock_is_stopped(
    workflow: Workflow, clock: FakeClock
) -> None:
    """Due at +8 h, a question to the officer asked at +7 h and still unanswered: the leads are not sent
    to chase a reviewer who waits on the officer."""
    request_id = submit(workflow, "V1", urgency="urgent", urgency_justification=WHY)
    _ask_and_answer(workflow, clock, request_id, MONDAY + timedelta(hours=7), "VQ1")
    now = MONDAY + timedelta(hours=9)
    with transaction(workflow.db) as session:
        summary = sweeps.digest_summary(session, workflow.policy, now - timedelta(days=1), now, now)
    assert summary["overdue"] == []


def test_officer_is_reminded_daily_until_the_outcome_is_recorded(
    workflow: Workflow, clock: FakeClock, stub: SlackStub, engine: Engine
) -> None:
    from bot.forms import PostUseForm

    request_id = submit(workflow, "V1")
    workflow.decide(request_id, 0, "USUP1", "approve", APPROVE)
    request = workflow.load(request_id)
    assert request is not None and request.valid_until is not None
    clock.now = request.valid_until - timedelta(minutes=1)
    assert sweep(workflow, clock).post_use_reminders == 0
    deliver(workflow, stub, clock)  # the reviewer message, drawn while the approval is valid
    stub.clear()
    clock.now = request.valid_until
    with statements_run(engine) as statements:
        assert sweep(workflow, clock).post_use_reminders == 1
    assert not _free_text_read(statements)  # as the expiry warning
    deliver(workflow, stub, clock)
    # The approval ran out: the reviewer message is drawn again and no longer says "valid until" a time
    # now past (it was edited only when something else happened to the request).
    edits = [str(c.args) for c in stub.calls_to("chat.update") if c.ok]
    assert len(edits) == 1 and "Approved, ran out" in edits[0] and "valid until" not in edits[0]
    clock.now += timedelta(hours=12)
    assert sweep(workflow, clock).post_use_reminders == 0  # once a day
    clock.now += timedelta(hours=12)
    assert sweep(workflow, clock).post_use_reminders == 1
    deliver(workflow, stub, clock)
    reminders = [c for c in posts(stub, "D" + OFFICER) if "Record the outcome" in c.args["text"]]
    assert len(reminders) == 2
    assert views.RECORD_USE_ACTION in blocks_text(reminders[-1])
    assert views.REREQUEST_ACTION in blocks_text(reminders[-1])  # the approval has ended
    form = PostUseForm(search_run=False, result="not_run", handling="deleted", authority="Never downloaded")
    workflow.record_post_use(request_id, OFFICER, form)
    clock.now += timedelta(days=1)
    assert sweep(workflow, clock).post_use_reminders == 0
    assert audit_count(workflow, "post_use_reminder_sent") == 2


def test_an_approval_first_seen_run_out_days_late_is_still_drawn_again(
    workflow: Workflow, clock: FakeClock, stub: SlackStub
) -> None:
    """The redraw went with the day-0 reminder only: a sweep that first saw the approval run out a day or
    more late (the scheduler down over a weekend, a backlog) sent day 2's reminder and left the reviewer
    message saying "valid until" a time long past."""
    request_id = submit(workflow, "V1")
    workflow.decide(request_id, 0, "USUP1", "approve", APPROVE)
    request = workflow.load(request_id)
    assert request is not None and request.valid_until is not None
    deliver(workflow, stub, clock)
    stub.clear()
    clock.now = request.valid_until + timedelta(days=2, hours=1)
    assert sweep(workflow, clock).post_use_reminders == 1
    deliver(workflow, stub, clock)
    edits = [str(c.args) for c in stub.calls_to("chat.update") if c.ok]
    assert len(edits) == 1 and "Approved, ran out" in edits[0]
    stub.clear()
    clock.now += timedelta(days=1)  # the next day's reminder: drawn once is enough
    assert sweep(workflow, clock).post_use_reminders == 1
    deliver(workflow, stub, clock)
    assert [c for c in stub.calls_to("chat.update") if c.ok] == []


def test_scheduler_jobs_have_stable_ids_and_purge_runs_retention(
    workflow: Workflow, clock: FakeClock
) -> None:
    from bot.scheduler import DIGEST_JOB_ID, RETENTION_JOB_ID, SWEEP_JOB_ID, SweepScheduler

    scheduler = SweepScheduler(workflow.db, workflow.policy, clock, interval_seconds=3600)
    scheduler.start()
    try:
        jobs = {job.id: job for job in scheduler._scheduler.get_jobs()}
        assert set(jobs) == {SWEEP_JOB_ID, DIGEST_JOB_ID, RETENTION_JOB_ID}
        assert all(job.coalesce and job.max_instances == 1 for job in jobs.values())
    finally:
        scheduler.stop()
    request_id = submit(workflow, "V1")
    workflow.withdraw(request_id, OFFICER)
    clock.advance(days=workflow.policy.retention_days.withdrawn + 1)
    assert scheduler.purge() == 1
    request = workflow.load(request_id)
    assert request is not None and request.redacted_at is not None


def test_a_sweep_claims_and_records_a_channels_reviews_a_batch_at_a_time(
    workflow: Workflow, clock: FakeClock, engine: Engine
) -> None:
    """A channel's due reviews are claimed with one statement and their notices inserted with another (on
    PostgreSQL both in one statement, item 61), the database skipping a key already taken (no savepoint
    round for each), and a batch's audit events are chained with one append (bench/NOTES.md items 40 to
    42). The chain still verifies and every event is there."""
    for n in range(8):
        submit(workflow, f"B{n}")  # supervisor channel, due Thursday 09:00
    for n in range(4):
        submit(workflow, f"BT{n}", urgency="threat_to_life", urgency_justification=WHY)  # authoriser channel
    clock.now = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)
    with statements_run(engine) as statements:
        report = sweep(workflow, clock)
    assert (report.reminders, report.escalations) == (12, 4)
    normalised = [" ".join(statement.split()).upper() for statement in statements]
    assert not [s for s in normalised if s.startswith("SAVEPOINT")]
    # For each reviewer channel one claim of its reviews and one insert of their notices (the authorisers'
    # reminders and escalations together); on PostgreSQL one statement, the claim a CTE of the insert, and
    # the channel's lock taken by its due read (bench/NOTES.md item 61).
    postgres = engine.dialect.name == "postgresql"
    claims = "WITH CLAIMED AS (UPDATE STAGE_REVIEWS" if postgres else "UPDATE STAGE_REVIEWS"
    assert sum(s.startswith(claims) for s in normalised) == 2
    if postgres:
        assert all("INSERT INTO SCHEDULED_NOTICES" in s for s in normalised if s.startswith(claims))
        assert not [s for s in normalised if s.startswith(("UPDATE STAGE_REVIEWS", "INSERT INTO SCHEDULED"))]
        assert not [s for s in normalised if s.startswith("SELECT PG_TRY_ADVISORY_XACT_LOCK")]
    else:
        assert sum(s.startswith("INSERT INTO SCHEDULED_NOTICES") for s in normalised) == 2
    # One append for each channel's reminders and escalations together: 2 for 16 events (on PostgreSQL
    # the head's update, inserting the events in a CTE).
    appends = ("INSERT INTO AUDIT_EVENTS", "WITH NEW_EVENTS AS (INSERT INTO AUDIT_EVENTS")
    assert sum(s.startswith(appends) for s in normalised) == 2
    assert sum(s.startswith("UPDATE SCHEDULED_NOTICES") for s in normalised) == 1  # escalations announced
    # Each channel's message and its reviews' refreshes in one insert, and the leads' announcement.
    assert sum(s.startswith("INSERT INTO OUTBOX") for s in normalised) == 3
    # Each channel's due reviews are read with one statement, which also gives whether each has escalated,
    # how many reminders it had and when the channel's last reminder went; the notices are read apart only
    # by the leads' announcement (the escalations not yet announced).
    due_reads = [s for s in normalised if s.startswith("SELECT STAGE_REVIEWS.ID, STAGE_REVIEWS.REQUEST_ID")]
    assert len(due_reads) == 2 and all("SCHEDULED_NOTICES.KIND" in s for s in due_reads)
    assert all(("PG_TRY_ADVISORY_XACT_LOCK(" in s) is postgres for s in due_reads)
    notices_read = [s for s in normalised if re.match(r"SELECT [^(]*\bFROM SCHEDULED_NOTICES\b", s)]
    assert len(notices_read) == 1 and "ANNOUNCED_AT IS NULL" in notices_read[0]
    if postgres:
        # Each channel's batch is sent as one JSON parameter: the claim and the inserts of notices, audit
        # events and outbox rows have the same text whatever the batch, built and parsed once
        # (bench/NOTES.md items 42 and 47).
        for start in (claims, appends[1]):
            texts = {s for s in normalised if s.startswith(start)}
            assert len(texts) == 1 and "JSON_TO_RECORDSET(" in next(iter(texts)), start
        assert all("JSON_TO_RECORDSET(" in s for s in normalised if s.startswith("INSERT INTO OUTBOX"))
        # Nor does any list of the batch's ids: `= ANY(array)`, never an IN list with a parameter for each
        # id, whose text changes with the batch's length (item 44).
        assert not [s for s in normalised if re.search(r"(\bID|_ID) IN \(%\(", s)]
        assert [s for s in normalised if "= ANY (%(" in s]
    # A due review is read with its request's reference and urgency only: none of the request's free
    # text, and no decisions, questions or comments, which the sweep never reads (bench/NOTES.md item 41).
    assert not [
        s
        for s in normalised
        if s.startswith(("SELECT DECISIONS.", "SELECT INFO_REQUESTS.", "SELECT COMMENTS."))
    ]
    reviews_read = [s for s in normalised if s.startswith("SELECT") and "FROM STAGE_REVIEWS" in s]
    assert reviews_read
    assert not _free_text_read(statements)  # nor does any other read of the sweep

    actions = audit_actions(workflow)
    assert (actions.count("reminder_sent"), actions.count("review_escalated")) == (12, 4)
    assert verify_chain(engine).ok
    with transaction(workflow.db) as session:  # each claimed review's own time to look again
        checks = session.scalars(select(StageReview.next_check_at).where(StageReview.status == "pending"))
        assert all(at is not None and at > clock.now for at in checks)
    assert sweep(workflow, clock).reminders == 0  # claimed: the next sweep finds nothing due


def test_notices_already_recorded_are_skipped_and_the_rest_recorded(workflow: Workflow) -> None:
    """Another process may have recorded a notice first: its key is skipped, the others go in."""
    rid = submit(workflow, "V-NOTICE")
    now = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)
    reminder, later, escalation = (
        (NoticeKind.REMINDER, 0),
        (NoticeKind.REMINDER, 1),
        (NoticeKind.ESCALATION, 0),
    )

    def notice(key: tuple[str, int]) -> sweeps.Notice:
        kind, sequence = key
        return sweeps.Notice(
            kind=kind,
            subject_id=rid,
            sequence=sequence,
            request_id=rid,
            channel=None,
            due_at=now,
            created_at=now,
        )

    def recorded(*keys: tuple[str, int]) -> list[tuple[str, int, str]]:
        """What _record_all recorded of these notices (each entry is named by its own key), in order."""
        entries = [(notice(key), f"{key[0]}/{key[1]}") for key in keys]
        with transaction(workflow.db) as session:
            done = sweeps._record_all(session, entries)
        return [(n.kind, n.subject_id, entry) for n, entry in done]

    assert recorded(reminder) == [(NoticeKind.REMINDER, rid, "reminder/0")]
    assert recorded(reminder, later, escalation) == [
        (NoticeKind.REMINDER, rid, "reminder/1"),
        (NoticeKind.ESCALATION, rid, "escalation/0"),
    ]
    assert recorded(escalation) == []
    assert recorded() == []
    with transaction(workflow.db) as session:
        stored = session.execute(select(ScheduledNotice.kind, ScheduledNotice.sequence)).all()
    assert sorted(tuple(row) for row in stored) == sorted([reminder, later, escalation])

"""Retention: what is purged when, what a purge keeps, legal hold, and the chain surviving it."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine, func, select

from bot import report, retention, views
from bot.audit import PURGE_ACTION, REMOVED_TEXT, verify_chain
from bot.evidence import request_events
from bot.forms import FREE_TEXT_FIELDS, DecisionForm, check_request
from bot.policy import LoadedPolicy, parse_policy
from bot.workflow import Workflow
from storage.db import transaction
from storage.models import AuditEvent, AuditEventText, FrRequest, OutboxMessage, RequestStatus
from tests.conftest import TEST_POLICY, FakeClock, valid_form_values
from tests.slackstub import SlackStub
from tests.test_audit_chain import delete_kept_text
from tests.test_outbox import drain, make_dispatcher

REJECT = DecisionForm(
    rationale="Alternatives are not exhausted: ask the family.", reason_code="alternatives_not_exhausted"
)
APPROVE = DecisionForm(
    rationale="Necessary and proportionate for this robbery.", conditions="Delete in 30 days"
)


@pytest.fixture
def short_policy() -> LoadedPolicy:
    return parse_policy(
        TEST_POLICY + "retention_days: {approved: 30, rejected: 10, withdrawn: 10, expired: 10}\n"
    )


def submit(workflow: Workflow, key: str) -> int:
    form = check_request(workflow.policy, valid_form_values())
    return workflow.submit(form, "UOFFICER", "T0", key).request_id


def load(workflow: Workflow, request_id: int) -> FrRequest:
    request = workflow.load(request_id)
    assert request is not None
    return request


def test_policy_retention_defaults_and_validation() -> None:
    from bot.policy import PolicyError

    assert parse_policy(TEST_POLICY).policy.retention_days.rejected == 365
    with pytest.raises(PolicyError, match=r"retention_days\.approved"):
        parse_policy(TEST_POLICY + "retention_days: {approved: 0}\n")
    with pytest.raises(PolicyError, match=r"retention_days\.pending"):
        parse_policy(TEST_POLICY + "retention_days: {pending: 5}\n")


def test_purge_waits_for_the_period_of_each_outcome(
    workflow: Workflow, short_policy: LoadedPolicy, clock: FakeClock, engine: Engine
) -> None:
    rejected = submit(workflow, "V1")
    workflow.decide(rejected, 0, "USUP1", "reject", REJECT)
    approved = submit(workflow, "V2")
    workflow.decide(approved, 0, "USUP1", "approve", APPROVE)
    pending = submit(workflow, "V3")
    policy = short_policy.policy

    clock.advance(days=9)
    assert retention.preview(workflow.db, policy, clock) == []
    clock.advance(days=1)
    assert [c.request_id for c in retention.preview(workflow.db, policy, clock)] == [rejected]
    purged = retention.purge(workflow.db, policy, clock)
    assert [p.reference for p in purged] == [load(workflow, rejected).reference]
    assert retention.purge(workflow.db, policy, clock) == []  # nothing twice

    clock.advance(days=25)
    assert [c.request_id for c in retention.preview(workflow.db, policy, clock)] == [approved]
    retention.purge(workflow.db, policy, clock)
    assert load(workflow, approved).redacted_at == clock.now
    assert load(workflow, pending).redacted_at is None  # a pending request is never purged
    result = verify_chain(engine)
    assert result.ok, [p.describe() for p in result.problems]


def test_purge_removes_free_text_and_keeps_the_skeleton(
    workflow: Workflow, short_policy: LoadedPolicy, clock: FakeClock
) -> None:
    request_id = submit(workflow, "V1")
    workflow.request_info(request_id, 0, "USUP1", "Which exhibit is the still from?", "Q1")
    workflow.decide(request_id, 0, "USUP1", "reject", REJECT)
    clock.advance(days=11)
    [purged] = retention.purge(workflow.db, short_policy.policy, clock, actor="URETENTION")
    assert purged.texts_removed > 0

    request = load(workflow, request_id)
    for column in retention.REQUEST_TEXT_COLUMNS:
        assert getattr(request, column) in (REMOVED_TEXT, "")
    decision = request.stages[0].decisions[0]
    assert decision.rationale == REMOVED_TEXT
    assert (decision.outcome, decision.reason_code, decision.approver_id) == (
        "reject",
        "alternatives_not_exhausted",
        "USUP1",
    )
    assert request.stages[0].info_requests[0].question == REMOVED_TEXT
    # The skeleton statistics need is kept.
    assert (request.status, request.tool_id, request.subject_category, request.urgency) == (
        RequestStatus.REJECTED,
        "force-rfr",
        "suspect",
        "routine",
    )
    assert request.case_reference == "CRIM/123456/26"
    with transaction(workflow.db) as session:
        assert (
            session.scalar(
                select(func.count())
                .select_from(AuditEventText)
                .where(AuditEventText.request_id == request_id)
            )
            == 0
        )
        events = request_events(session, request_id)
        queued = session.scalars(
            select(OutboxMessage.kind)
            .where(OutboxMessage.request_id == request_id)
            .order_by(OutboxMessage.id.desc())
            .limit(2)
        ).all()
    purge_event = events[-1]
    assert (purge_event.action, purge_event.actor) == (PURGE_ACTION, "URETENTION")
    assert purge_event.details["retention_days"] == 10
    submitted = next(e for e in events if e.action == "request_submitted")
    assert submitted.readable["form"]["necessity"] == REMOVED_TEXT
    assert "robbery" not in str([e.readable for e in events])
    assert queued == ["redact_dms", "refresh_reviews"]  # reviewer messages and the officer's DMs


def test_a_purge_leaves_no_typed_text_in_slack_threads_or_the_outbox(
    workflow: Workflow, short_policy: LoadedPolicy, clock: FakeClock
) -> None:
    """A question answered, then a rejection: the answer's note threaded under the reviewer message, the
    question's and the decision's DMs, and the outbox rows behind them held the typed text after the purge
    (only the reviewer messages and the DMs were edited, and no payload was touched)."""
    question, answer = "Which exhibit is the still from?", "Exhibit JS/1, camera three"
    with SlackStub() as stub:
        dispatcher = make_dispatcher(workflow, stub, clock)
        request_id = submit(workflow, "V1")
        workflow.request_info(request_id, 0, "USUP1", question, "Q1")
        info = load(workflow, request_id).stages[0].info_requests[0]
        workflow.answer_info(info.id, "UOFFICER", answer)
        workflow.decide(request_id, 0, "USUP1", "reject", REJECT)
        drain(dispatcher, clock)
        typed = (question, answer, REJECT.rationale)
        assert any(t in json.dumps(m) for m in stub.messages.values() for t in typed)
        clock.advance(days=11)
        retention.purge(workflow.db, short_policy.policy, clock, actor="URETENTION")
        with transaction(workflow.db) as session:
            payloads = session.scalars(
                select(OutboxMessage.payload).where(OutboxMessage.request_id == request_id)
            ).all()
        assert not [t for t in typed if t in json.dumps(payloads)]
        drain(dispatcher, clock)
        assert not [t for t in typed if t in json.dumps(list(stub.messages.values()))]
        stub.assert_no_violations()


def test_a_purged_request_starts_a_new_one_with_its_free_text_blank(
    workflow: Workflow, short_policy: LoadedPolicy, clock: FakeClock
) -> None:
    """Not the removal marker in every box (shorter than the minimum: seven errors on submitting)."""
    request_id = submit(workflow, "V1")
    workflow.decide(request_id, 0, "USUP1", "reject", REJECT)
    clock.advance(days=11)
    retention.purge(workflow.db, short_policy.policy, clock, actor="URETENTION")
    values = views.initial_values(load(workflow, request_id))
    assert not set(values) & set(FREE_TEXT_FIELDS)
    assert REMOVED_TEXT not in values.values()
    assert values["tool"] == "force-rfr" and values["case_reference"] == "CRIM/123456/26"


def test_a_text_written_after_a_purge_and_deleted_is_not_excused_by_the_purge(
    workflow: Workflow, short_policy: LoadedPolicy, clock: FakeClock, engine: Engine
) -> None:
    """A hold placed on a purged request writes its reason as a sealed text; the purge, earlier, cannot
    have removed it, so its deletion is tampering (any purge of the request excused every missing text)."""
    request_id = submit(workflow, "V1")
    workflow.decide(request_id, 0, "USUP1", "reject", REJECT)
    clock.advance(days=11)
    retention.purge(workflow.db, short_policy.policy, clock, actor="URETENTION")
    assert verify_chain(engine).ok
    reference = load(workflow, request_id).reference
    retention.set_legal_hold(workflow.db, reference, "ULEGAL", "Judicial review lodged", clock(), True)
    seq = delete_kept_text(engine, "hold_reason")
    result = verify_chain(engine)
    assert result.first is not None and (result.first.seq, result.first.kind) == (seq, "text_deleted")
    assert "after its purge" in result.first.message


def test_legal_hold_stops_the_purge_until_released(
    workflow: Workflow, short_policy: LoadedPolicy, clock: FakeClock, engine: Engine
) -> None:
    request_id = submit(workflow, "V1")
    workflow.decide(request_id, 0, "USUP1", "reject", REJECT)
    reference = load(workflow, request_id).reference
    assert retention.set_legal_hold(
        workflow.db, reference, "UDPO1", "Civil claim pending", clock(), hold=True
    )
    assert not retention.set_legal_hold(workflow.db, reference, "UDPO1", "again", clock(), hold=True)
    clock.advance(days=400)
    [candidate] = retention.preview(workflow.db, short_policy.policy, clock)
    assert candidate.legal_hold
    assert retention.purge(workflow.db, short_policy.policy, clock) == []
    assert load(workflow, request_id).redacted_at is None

    assert retention.set_legal_hold(workflow.db, reference, "UDPO1", "Claim settled", clock(), hold=False)
    assert len(retention.purge(workflow.db, short_policy.policy, clock)) == 1
    with transaction(workflow.db) as session:
        actions = list(session.scalars(select(AuditEvent.action).where(AuditEvent.request_id == request_id)))
    assert actions[-3:] == ["legal_hold_placed", "legal_hold_released", PURGE_ACTION]
    assert verify_chain(engine).ok
    with pytest.raises(LookupError):
        retention.set_legal_hold(workflow.db, "FR-2026-99999", "UDPO1", "x", clock(), hold=True)


def test_purged_request_renders_details_removed(
    workflow: Workflow, short_policy: LoadedPolicy, clock: FakeClock
) -> None:
    from bot import views

    request_id = submit(workflow, "V1")
    workflow.decide(request_id, 0, "USUP1", "reject", REJECT)
    before = str(
        views.review_message(
            load(workflow, request_id), load(workflow, request_id).stages[0], workflow.policy, clock()
        )
    )
    assert "Identify the suspect" in before
    clock.advance(days=11)
    retention.purge(workflow.db, short_policy.policy, clock)
    request = load(workflow, request_id)
    after = str(views.review_message(request, request.stages[0], workflow.policy, clock()))
    assert "Details removed under the retention policy" in after
    assert "Identify the suspect" not in after
    assert "Alternatives are not exhausted" not in after


def test_report_counts_and_times(workflow: Workflow, clock: FakeClock) -> None:
    from datetime import UTC, datetime

    fast = submit(workflow, "V1")
    clock.advance(hours=4)
    workflow.decide(fast, 0, "USUP1", "approve", APPROVE)
    slow = submit(workflow, "V2")
    clock.advance(hours=10)
    workflow.decide(slow, 0, "USUP1", "approve", APPROVE)
    submit(workflow, "V3")  # still pending: counted, not timed
    with transaction(workflow.db) as session:
        data = report.build(session, workflow.policy, 2026, 3, datetime(2026, 4, 1, tzinfo=UTC))
    assert data.requests == 3
    assert data.by_outcome == {"approved": 2, "pending": 1}
    assert sorted(data.decision_hours["Routine"]) == [4.0, 10.0]
    assert report.summary(data.decision_hours["Routine"])["median"] == 7.0
    reviewer = data.reviewers["USUP1"]
    assert (reviewer.decisions, reviewer.approval_rate, sorted(reviewer.hours_to_decide)) == (
        2,
        1.0,
        [4.0, 10.0],
    )
    first_week = next(w for w in data.weeks if w.requests)
    assert first_week.start.date().isoformat() == "2026-03-02" and first_week.requests == 3
    # Both approvals (72 hours) ended before 1 April with no outcome recorded: both are overdue.
    assert sorted(ref for ref, _ in data.overdue_post_use) == ["FR-2026-00001", "FR-2026-00002"]
    assert "## Overdue post-use records" in report.markdown(data, "chart.png")


def test_the_reports_90th_percentile_is_the_nearest_rank() -> None:
    """Seven urgent decisions, one slow: the slow one is the 90th percentile (round() to even took the 6th
    of the 7), as the digest counts it."""
    assert report.summary([1.0] * 6 + [48.0])["p90"] == 48.0
    assert report.summary([float(n) for n in range(1, 11)])["p90"] == 9.0
    assert report.summary([5.0])["p90"] == 5.0

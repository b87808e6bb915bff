"""The workflow core without Slack: routing, authorisation, multi-approval stages, the audit trail."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from bot.forms import DecisionForm, check_request
from bot.workflow import Decided, Refusal, Workflow
from storage.db import transaction
from storage.models import (
    AuditEvent,
    Decision,
    FrRequest,
    OutboxMessage,
    RequestStatus,
    StageReview,
    StageStatus,
)
from tests.conftest import FakeClock, valid_form_values

APPROVE = DecisionForm(
    rationale="Necessary and proportionate for this robbery.", conditions="Delete results in 30 days"
)
REJECT = DecisionForm(
    rationale="Alternatives have not been exhausted yet.", reason_code="alternatives_not_exhausted"
)


def submit(workflow: Workflow, key: str = "V1", requester: str = "UOFFICER", **overrides: str):
    form = check_request(workflow.policy, valid_form_values(**overrides))
    return workflow.submit(form, requester, "T0TEST", key)


def audit_actions(workflow: Workflow, request_id: int | None = None) -> list[str]:
    with transaction(workflow.db) as session:
        query = select(AuditEvent.action).order_by(AuditEvent.id)
        if request_id is not None:
            query = query.where(AuditEvent.request_id == request_id)
        return list(session.scalars(query))


def outbox_kinds(workflow: Workflow, request_id: int) -> list[str]:
    with transaction(workflow.db) as session:
        rows = session.scalars(
            select(OutboxMessage).where(OutboxMessage.request_id == request_id).order_by(OutboxMessage.id)
        )
        return [row.kind for row in rows]


def test_submit_stores_routes_and_queues_notifications(workflow: Workflow) -> None:
    result = submit(workflow)
    assert result.created
    assert result.reference == "FR-2026-00001"
    assert result.route_name == "default"
    assert result.stage_names == ("Supervisor review",)
    request = workflow.load(result.request_id)
    assert request is not None
    assert request.case_reference == "CRIM/123456/26"  # normalised to upper case
    assert request.status == RequestStatus.PENDING
    assert request.tool_snapshot["name"] == "Force RFR"
    assert request.policy_version == workflow.loaded.version
    assert [s.status for s in request.stages] == [StageStatus.PENDING]
    assert audit_actions(workflow, result.request_id) == ["request_submitted", "request_routed"]
    assert outbox_kinds(workflow, result.request_id) == ["post_review", "dm", "publish_home"]


def test_references_count_up_per_year(workflow: Workflow, clock: FakeClock) -> None:
    assert submit(workflow, key="V1").reference == "FR-2026-00001"
    assert submit(workflow, key="V2").reference == "FR-2026-00002"
    clock.advance(days=365)
    assert submit(workflow, key="V3").reference == "FR-2027-00001"


def test_same_modal_submitted_twice_creates_one_request(workflow: Workflow) -> None:
    first = submit(workflow, key="V-same")
    second = submit(workflow, key="V-same")
    assert not second.created
    assert second.reference == first.reference
    with transaction(workflow.db) as session:
        assert session.scalar(select(func.count()).select_from(FrRequest)) == 1
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 3


@pytest.mark.parametrize(
    ("overrides", "route", "stages"),
    [
        (
            {"tool": "engine-a"},
            "Online engines",
            ("Supervisor review", "Authorising officer", "Data protection"),
        ),
        (
            {"urgency": "threat_to_life", "urgency_justification": "Child at immediate risk of harm tonight"},
            "Threat to life",
            ("Authorising officer",),
        ),
        ({}, "default", ("Supervisor review",)),
    ],
)
def test_first_matching_route_wins(
    workflow: Workflow, overrides: dict[str, str], route: str, stages: tuple
) -> None:
    result = submit(workflow, **overrides)
    assert (result.route_name, result.stage_names) == (route, stages)


def test_requester_and_strangers_are_refused_and_recorded(workflow: Workflow) -> None:
    result = submit(workflow, requester="USUP1")  # a supervisor asking for their own search
    own = workflow.decide(result.request_id, 0, "USUP1", "approve", APPROVE)
    assert isinstance(own, Refusal) and own.code == "own_request"
    stranger = workflow.authorise(result.request_id, 0, "UNOBODY", "approve")
    assert isinstance(stranger, Refusal) and stranger.code == "not_approver"
    assert audit_actions(workflow, result.request_id)[-2:] == ["action_refused", "action_refused"]
    request = workflow.load(result.request_id)
    assert request is not None and request.status == RequestStatus.PENDING


def test_group_member_may_decide(workflow: Workflow) -> None:
    result = submit(workflow)
    assert workflow.authorise(result.request_id, 0, "USUP3", "approve") is None  # via user group S0SUPERS
    decided = workflow.decide(result.request_id, 0, "USUP3", "approve", APPROVE)
    assert isinstance(decided, Decided) and decided.request_status == RequestStatus.APPROVED


def test_multi_stage_route_with_two_approvals(workflow: Workflow, clock: FakeClock) -> None:
    result = submit(workflow, tool="engine-a")
    rid = result.request_id
    assert isinstance(workflow.decide(rid, 0, "USUP1", "approve", APPROVE), Decided)
    # Stage 1 is done: deciding it again is refused, stage 2 needs two distinct approvers.
    again = workflow.decide(rid, 0, "USUP2", "approve", APPROVE)
    assert isinstance(again, Refusal) and again.code == "stage_not_current"
    first = workflow.decide(rid, 1, "UAUTH1", "approve", APPROVE)
    assert isinstance(first, Decided) and (first.approvals, first.required) == (1, 2)
    twice = workflow.decide(rid, 1, "UAUTH1", "approve", APPROVE)
    assert isinstance(twice, Refusal) and twice.code == "already_decided"
    second = workflow.decide(rid, 1, "UAUTH2", "approve", APPROVE)
    assert isinstance(second, Decided) and second.request_status == RequestStatus.PENDING
    clock.advance(minutes=5)
    final = workflow.decide(rid, 2, "UDPO1", "approve", APPROVE)
    assert isinstance(final, Decided) and final.request_status == RequestStatus.APPROVED
    request = workflow.load(rid)
    assert request is not None
    assert [s.status for s in request.stages] == [StageStatus.APPROVED] * 3
    assert request.valid_until is not None
    assert (request.valid_until - clock.now).total_seconds() == 72 * 3600
    actions = audit_actions(workflow, rid)
    assert actions.count("decision_recorded") == 4
    assert actions.count("stage_approved") == 3
    assert actions[-1] == "request_approved"
    # Each later stage was posted to its own channel when reached.
    assert outbox_kinds(workflow, rid).count("post_review") == 3


def test_rejection_ends_the_request(workflow: Workflow) -> None:
    result = submit(workflow, tool="engine-a")
    outcome = workflow.decide(result.request_id, 0, "USUP2", "reject", REJECT)
    assert isinstance(outcome, Decided) and outcome.request_status == RequestStatus.REJECTED
    request = workflow.load(result.request_id)
    assert request is not None
    assert [s.status for s in request.stages] == [
        StageStatus.REJECTED,
        StageStatus.CANCELLED,
        StageStatus.CANCELLED,
    ]
    late = workflow.decide(result.request_id, 1, "UAUTH1", "approve", APPROVE)
    assert isinstance(late, Refusal) and late.code == "request_closed"


def _pending_stages_of_closed_requests(workflow: Workflow) -> list[tuple[str, int, str]]:
    with transaction(workflow.db) as session:
        rows = session.execute(
            select(FrRequest.reference, StageReview.position, FrRequest.status)
            .join(FrRequest, FrRequest.id == StageReview.request_id)
            .where(StageReview.status == StageStatus.PENDING, FrRequest.status != RequestStatus.PENDING)
        )
        return [tuple(row) for row in rows]


def test_a_pending_stage_always_belongs_to_a_pending_request(workflow: Workflow) -> None:
    """The sweeps, the digest and the leads' figures find pending stages without testing their requests'
    status (storage/models.py, PENDING_STAGE; bench/NOTES.md item 42): every way a request leaves pending
    moves its pending stage on in the same transaction, and a stage becomes pending only under a pending
    request."""
    approved = submit(workflow, "V-A").request_id  # one stage
    rejected_first = submit(workflow, "V-R1", tool="engine-a").request_id  # three stages
    rejected_later = submit(workflow, "V-R2", tool="engine-a").request_id
    withdrawn_first = submit(workflow, "V-W1", tool="engine-a").request_id
    withdrawn_later = submit(workflow, "V-W2", tool="engine-a").request_id
    three_stages = submit(workflow, "V-3", tool="engine-a").request_id
    assert isinstance(workflow.decide(approved, 0, "USUP1", "approve", APPROVE), Decided)
    assert isinstance(workflow.decide(rejected_first, 0, "USUP1", "reject", REJECT), Decided)
    for rid in (rejected_later, withdrawn_later, three_stages):
        assert isinstance(workflow.decide(rid, 0, "USUP1", "approve", APPROVE), Decided)
    assert isinstance(workflow.decide(rejected_later, 1, "UAUTH1", "reject", REJECT), Decided)
    assert not isinstance(workflow.withdraw(withdrawn_first, "UOFFICER"), Refusal)
    assert not isinstance(workflow.withdraw(withdrawn_later, "UOFFICER"), Refusal)
    for approver in ("UAUTH1", "UAUTH2"):
        assert isinstance(workflow.decide(three_stages, 1, approver, "approve", APPROVE), Decided)
    assert isinstance(workflow.decide(three_stages, 2, "UDPO1", "approve", APPROVE), Decided)

    statuses = {rid: workflow.load(rid).status for rid in (approved, rejected_first, three_stages)}  # type: ignore[union-attr]
    assert set(statuses.values()) == {RequestStatus.APPROVED, RequestStatus.REJECTED}
    assert _pending_stages_of_closed_requests(workflow) == []
    still_open = submit(workflow, "V-OPEN").request_id  # and the check does see a pending stage
    with transaction(workflow.db) as session:
        session.execute(
            text("UPDATE fr_requests SET status = 'withdrawn' WHERE id = :id"), {"id": still_open}
        )
    assert len(_pending_stages_of_closed_requests(workflow)) == 1


def test_request_info_records_the_question(workflow: Workflow) -> None:
    result = submit(workflow)
    asked = workflow.request_info(result.request_id, 0, "USUP1", "Which exhibit is the still from?", "VQ1")
    assert not isinstance(asked, Refusal)
    workflow.request_info(
        result.request_id, 0, "USUP1", "Which exhibit is the still from?", "VQ1"
    )  # resubmitted
    request = workflow.load(result.request_id)
    assert request is not None
    assert [i.question for i in request.stages[0].info_requests] == ["Which exhibit is the still from?"]
    assert audit_actions(workflow, result.request_id).count("info_requested") == 1
    assert outbox_kinds(workflow, result.request_id)[-3:] == ["refresh_reviews", "dm", "publish_home"]


def test_refused_submission_of_prohibited_tool_is_audited(workflow: Workflow) -> None:
    workflow.record_refused_submission("UOFFICER", "engine-b", {"tool": "Engine B is prohibited"})
    with transaction(workflow.db) as session:
        event = session.scalars(select(AuditEvent)).one()
    assert event.action == "submission_refused"
    assert event.details["tool_id"] == "engine-b"


def test_one_decision_per_approver_is_enforced_by_the_database(workflow: Workflow) -> None:
    result = submit(workflow, tool="engine-a")
    workflow.decide(result.request_id, 0, "USUP1", "approve", APPROVE)
    workflow.decide(result.request_id, 1, "UAUTH1", "approve", APPROVE)
    with pytest.raises(DBAPIError), transaction(workflow.db) as session:
        existing = session.scalars(select(Decision).where(Decision.approver_id == "UAUTH1")).one()
        session.add(
            Decision(
                request_id=existing.request_id,
                stage_review_id=existing.stage_review_id,
                approver_id="UAUTH1",
                outcome="approve",
                rationale="x",
                conditions="",
                policy_version="v",
            )
        )


def test_audit_table_is_append_only(workflow: Workflow) -> None:
    submit(workflow)
    with pytest.raises(DBAPIError), transaction(workflow.db) as session:
        session.execute(text("UPDATE audit_events SET actor_id = 'UEVIL'"))
    with pytest.raises(DBAPIError), transaction(workflow.db) as session:
        session.execute(text("DELETE FROM audit_events"))
    assert audit_actions(workflow) == ["request_submitted", "request_routed"]

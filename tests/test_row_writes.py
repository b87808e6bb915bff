"""A decision's rows are written as Core statements (storage/row_writes.py), not flushed by the ORM, and sent
with its outbox rows just before the commit, as one statement on PostgreSQL: the statements, what the
database then holds, and that the answer and messages built in the transaction see the new state."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import Engine, event, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.forms import DecisionForm
from bot.workflow import Decided, Refusal, Workflow
from storage.db import transaction
from storage.models import Decision, FrRequest, OutboxMessage, RequestStatus, StageReview, StageStatus
from storage.recordsets import write_rows
from storage.row_writes import RowChanges, write_at_commit
from tests.conftest import FakeClock, statements_run
from tests.test_workflow import APPROVE, REJECT, submit

# A third-party online tool goes through three stages: supervisor, authoriser (two approvals), DPO.
THREE_STAGES = {"tool": "engine-a"}


# A write of a request's own rows, or of its messages: a statement of its own or one CTE of a statement.
_WRITE = re.compile(
    r"UPDATE (fr_requests|stage_reviews) SET (.*?) (?:FROM|WHERE)|INSERT INTO (decisions|outbox)\b"
)


def _writes(statements: list[str]) -> list[list[str]]:
    """The writes of a request's own rows and its outbox rows among `statements`, each as its table and
    verb, with the columns an UPDATE sets: a list for each statement that writes any."""
    shown = []
    for statement in statements:
        writes = []
        for updated, assignments, inserted in _WRITE.findall(" ".join(statement.split())):
            if inserted:
                writes.append(f"INSERT {inserted}")
            else:
                names = sorted(part.split("=")[0].strip() for part in assignments.split(", "))
                writes.append(f"UPDATE {updated} {','.join(names)}")
        if writes:
            shown.append(writes)
    return shown


def _as_sent(engine: Engine, writes: list[str]) -> list[list[str]]:
    """How `writes` go to the database: one statement on PostgreSQL, one each on SQLite."""
    return [writes] if engine.dialect.name == "postgresql" else [[write] for write in writes]


@pytest.fixture
def no_flush(workflow: Workflow):
    """Counts the ORM's flushes that had something to write (`before_flush` fires only for those)."""
    flushes: list[int] = []

    def flushed(session: Session, *_args: object) -> None:
        flushes.append(len(session.dirty) + len(session.new) + len(session.deleted))

    event.listen(Session, "before_flush", flushed)
    try:
        yield flushes
    finally:
        event.remove(Session, "before_flush", flushed)


def _first_decision(
    workflow: Workflow, engine: Engine, clock: FakeClock, outcome: str, form: DecisionForm
) -> tuple[int, Decided | Refusal, list[list[str]]]:
    """A three-stage request's first stage decided by its supervisor five minutes after it was submitted
    (so the times it sets differ from the submission's): the request, the result, and the writes of the
    request's rows the decision sent."""
    rid = submit(workflow, **THREE_STAGES).request_id
    clock.advance(minutes=5)
    with statements_run(engine) as statements:
        result = workflow.decide(rid, 0, "USUP1", outcome, form)
    return rid, result, _writes(statements)


def _stored(workflow: Workflow, request_id: int) -> tuple[FrRequest, list[StageReview], list[Decision]]:
    with transaction(workflow.db, read_only=True) as session:
        request = session.get(FrRequest, request_id)
        stages = list(
            session.scalars(
                select(StageReview).where(StageReview.request_id == request_id).order_by(StageReview.position)
            )
        )
        decisions = list(
            session.scalars(select(Decision).where(Decision.request_id == request_id).order_by(Decision.id))
        )
        session.expunge_all()
    assert request is not None
    return request, stages, decisions


def test_a_decision_that_passes_a_stage_writes_its_rows_without_the_orm(
    workflow: Workflow, engine: Engine, clock: FakeClock, no_flush: list[int]
) -> None:
    rid, result, writes = _first_decision(workflow, engine, clock, "approve", APPROVE)
    assert no_flush == []
    # The request's row before its stages' (the order every writer takes them), then the decision, then
    # its messages (the next stage's post, the refresh, the DM, App Home: one insert).
    assert writes == _as_sent(
        engine,
        [
            "UPDATE fr_requests current_stage,updated_at",
            "UPDATE stage_reviews completed_at,status",
            "UPDATE stage_reviews due_at,started_at,status",
            "INSERT decisions",
            "INSERT outbox",
        ],
    )
    assert result == Decided(
        reference="FR-2026-00001",
        outcome="approve",
        request_status=RequestStatus.PENDING,
        stage_name="Supervisor review",
        approvals=1,
        required=1,
    )
    request, stages, decisions = _stored(workflow, rid)
    now = clock.now
    assert (request.status, request.current_stage, request.updated_at) == (RequestStatus.PENDING, 1, now)
    assert (stages[0].status, stages[0].completed_at) == (StageStatus.APPROVED, now)
    assert (stages[1].status, stages[1].started_at) == (StageStatus.PENDING, now)
    assert stages[1].due_at is not None and stages[1].due_at > now
    assert stages[2].status == StageStatus.WAITING
    [decision] = decisions
    assert (decision.stage_review_id, decision.approver_id, decision.outcome) == (
        stages[0].id,
        "USUP1",
        "approve",
    )
    assert (decision.rationale, decision.conditions, decision.created_at) == (
        APPROVE.rationale,
        APPROVE.conditions,
        now,
    )
    assert decision.policy_version == workflow.loaded.version
    # The next stage's reviewers are told: its post is queued for the stage the write made pending.
    with transaction(workflow.db, read_only=True) as session:
        posts = session.scalars(
            select(OutboxMessage.payload).where(
                OutboxMessage.request_id == rid, OutboxMessage.kind == "post_review"
            )
        ).all()
    assert {"stage_review_id": stages[1].id} in posts


def test_a_rejection_cancels_the_later_stages_in_one_statement(
    workflow: Workflow, engine: Engine, clock: FakeClock, no_flush: list[int]
) -> None:
    rid, result, writes = _first_decision(workflow, engine, clock, "reject", REJECT)
    assert no_flush == []
    assert writes == _as_sent(
        engine,
        [
            "UPDATE fr_requests current_stage,decided_at,status,updated_at",
            "UPDATE stage_reviews completed_at,status",
            "UPDATE stage_reviews status",  # both later stages: one update (an executemany on SQLite)
            "INSERT decisions",
            "INSERT outbox",
        ],
    )
    assert isinstance(result, Decided) and result.request_status == RequestStatus.REJECTED
    request, stages, decisions = _stored(workflow, rid)
    assert (request.status, request.current_stage, request.decided_at) == (
        RequestStatus.REJECTED,
        None,
        clock.now,
    )
    assert [stage.status for stage in stages] == [
        StageStatus.REJECTED,
        StageStatus.CANCELLED,
        StageStatus.CANCELLED,
    ]
    assert [(d.outcome, d.reason_code) for d in decisions] == [("reject", REJECT.reason_code)]


def test_the_last_approval_closes_the_request_with_its_validity(
    workflow: Workflow, clock: FakeClock, no_flush: list[int]
) -> None:
    rid = submit(workflow, **THREE_STAGES).request_id
    for position, approver in ((0, "USUP1"), (1, "UAUTH1"), (1, "UAUTH2")):
        assert isinstance(workflow.decide(rid, position, approver, "approve", APPROVE), Decided)
    # The second of two approvals the authoriser stage needs: the stage counted the first one stored.
    request, stages, _ = _stored(workflow, rid)
    assert [stage.status for stage in stages] == [
        StageStatus.APPROVED,
        StageStatus.APPROVED,
        StageStatus.PENDING,
    ]
    result = workflow.decide(rid, 2, "UDPO1", "approve", APPROVE)
    assert isinstance(result, Decided)
    assert (result.request_status, result.approvals, result.required) == (RequestStatus.APPROVED, 1, 1)
    assert no_flush == []
    request, stages, decisions = _stored(workflow, rid)
    assert request.status == RequestStatus.APPROVED
    assert request.decided_at == clock.now
    assert request.valid_until is not None and request.valid_until > clock.now
    assert {stage.status for stage in stages} == {StageStatus.APPROVED}
    assert [d.approver_id for d in decisions] == ["USUP1", "UAUTH1", "UAUTH2", "UDPO1"]


def test_row_changes_refuse_what_they_could_not_write(workflow: Workflow) -> None:
    rid = submit(workflow).request_id
    with transaction(workflow.db) as session:
        request = session.get(FrRequest, rid)
        assert request is not None
        changes = RowChanges()
        with pytest.raises(KeyError, match="no column"):
            changes.set(request, stages=[])  # a relationship, not a column
        changes.set(request, case_reference="CRIM/999/26")
        assert request.case_reference == "CRIM/999/26"  # seen at once
        assert not session.dirty  # and nothing for the ORM to flush
        write_rows(session, changes.writes())
        with pytest.raises(RuntimeError, match="never reach the database"):
            changes.set(request, purpose="late")
    with transaction(workflow.db, read_only=True) as session:
        assert session.scalar(select(FrRequest.case_reference).where(FrRequest.id == rid)) == "CRIM/999/26"


def test_writes_kept_for_the_commit_must_be_sent(workflow: Workflow) -> None:
    rid = submit(workflow).request_id
    with pytest.raises(RuntimeError, match="never sent"), transaction(workflow.db) as session:
        request = session.get(FrRequest, rid)
        assert request is not None
        changes = RowChanges()
        changes.set(request, case_reference="CRIM/999/26")
        write_at_commit(session, changes.writes())
    with transaction(workflow.db, read_only=True) as session:
        assert session.scalar(select(FrRequest.case_reference).where(FrRequest.id == rid)) != "CRIM/999/26"


def test_a_decision_raced_past_the_lock_writes_nothing(
    workflow: Workflow, engine: Engine, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two deciders past the lock (which the lock prevents; the uniqueness of a decision per approver and
    stage is the guarantee behind it): the second's statement fails on that uniqueness, and none of its
    writes stays, though on PostgreSQL they went in the same statement as its decision."""
    rid = submit(workflow, **THREE_STAGES).request_id
    clock.advance(minutes=5)
    assert isinstance(workflow.decide(rid, 0, "USUP1", "reject", REJECT), Decided)
    request, stages, _ = _stored(workflow, rid)
    # The stage as it was before the first decision, so the second decider reaches its writes.
    with engine.begin() as conn:
        conn.execute(text("UPDATE stage_reviews SET status = 'pending' WHERE id = :id"), {"id": stages[0].id})
        conn.execute(
            text("UPDATE fr_requests SET status = 'pending', current_stage = 0 WHERE id = :id"), {"id": rid}
        )
    monkeypatch.setattr(Workflow, "_authority", lambda *_args: (None, None))
    outbox_before = _outbox_count(workflow)
    clock.advance(minutes=1)
    result = workflow.decide(rid, 0, "USUP1", "approve", APPROVE)
    assert result == Refusal("already_decided", "Your decision on this stage is already recorded.")
    request, stages, decisions = _stored(workflow, rid)
    # Neither the stage's approval nor the request's update, nor any message, stayed.
    assert (request.status, request.current_stage) == (RequestStatus.PENDING, 0)
    assert stages[0].status == StageStatus.PENDING
    assert [d.outcome for d in decisions] == ["reject"]
    assert _outbox_count(workflow) == outbox_before


def _outbox_count(workflow: Workflow) -> int:
    with transaction(workflow.db, read_only=True) as session:
        return len(session.scalars(select(OutboxMessage.id)).all())


def test_a_decision_that_breaks_another_constraint_is_not_told_as_already_recorded(
    workflow: Workflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the uniqueness of a decision per approver and stage means "already recorded": any other
    IntegrityError of a decision's writes is a defect, raised, with nothing stored."""
    rid = submit(workflow).request_id

    def broken(*_args: object) -> None:
        raise IntegrityError("INSERT INTO outbox …", {}, ValueError("null value in column"))

    monkeypatch.setattr("bot.workflow.write_rows", broken)
    with pytest.raises(IntegrityError):
        workflow.decide(rid, 0, "USUP1", "approve", APPROVE)
    _, _, decisions = _stored(workflow, rid)
    assert decisions == []


def test_a_row_is_updated_by_one_write_only(workflow: Workflow) -> None:
    """In one statement PostgreSQL would make only one of two updates of a row: refused on both databases."""
    rid = submit(workflow).request_id
    with transaction(workflow.db) as session:
        request = session.get(FrRequest, rid)
        assert request is not None
        first, second = RowChanges(), RowChanges()
        first.set(request, case_reference="CRIM/1/26")
        second.set(request, purpose_detail="Changed twice")
        with pytest.raises(ValueError, match="updated by two of the writes"):
            write_rows(session, [*first.writes(), *second.writes()])
        session.rollback()

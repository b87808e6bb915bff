"""Many approvers deciding the same stage at the same moment, with real threads on a real database.

Every thread starts at a barrier and calls the workflow as a handler would. Exactly the right decisions are
recorded, each with one audit event; every other attempt is refused with a reason and audited; nothing
raises. Runs on PostgreSQL (row locks) and SQLite (serialised writers) alike.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, text

from bot import views
from bot.audit import HEAD_ID, AuditChainError, append_at_commit, prepare_event, verify_chain
from bot.forms import DecisionForm, check_request
from bot.workflow import Decided, Refusal, Workflow
from storage.db import DatabaseUnavailable, transaction
from storage.models import (
    AuditChainHead,
    AuditEvent,
    Decision,
    FrRequest,
    OutboxMessage,
    RequestStatus,
    ScheduledNotice,
    StageStatus,
)
from storage.queries import request_with_history
from tests.conftest import valid_form_values, wait_until
from tests.test_workflow import submit

THREADS = 16
APPROVE = DecisionForm(rationale="Necessary and proportionate for this robbery.")
REJECT = DecisionForm(
    rationale="Alternatives have not been exhausted yet.", reason_code="alternatives_not_exhausted"
)


def race(workflow: Workflow, request_id: int, attempts: list[tuple[str, str]]) -> list[Any]:
    """Run every (user, outcome) at once; return what each call returned or raised."""
    barrier = threading.Barrier(len(attempts))
    results: list[Any] = [None] * len(attempts)

    def attempt(index: int, user: str, outcome: str) -> None:
        form = APPROVE if outcome == "approve" else REJECT
        barrier.wait()
        try:
            results[index] = workflow.decide(request_id, 0, user, outcome, form)
        except Exception as exc:  # the assertion below names it
            results[index] = exc

    threads = [
        threading.Thread(target=attempt, args=(i, user, outcome))
        for i, (user, outcome) in enumerate(attempts)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def audit_counts(workflow: Workflow, request_id: int) -> Counter[str]:
    with transaction(workflow.db) as session:
        return Counter(session.scalars(select(AuditEvent.action).where(AuditEvent.request_id == request_id)))


def refusal_reasons(workflow: Workflow, request_id: int) -> Counter[str]:
    with transaction(workflow.db) as session:
        events = session.scalars(
            select(AuditEvent).where(
                AuditEvent.request_id == request_id, AuditEvent.action == "action_refused"
            )
        )
        return Counter(event.details["reason"] for event in events)


def test_sixteen_deciders_on_a_single_approval_stage(workflow: Workflow) -> None:
    form = check_request(workflow.policy, valid_form_values())
    request_id = workflow.submit(form, "UOFFICER", "T0TEST", "V-race-1").request_id
    approvers = ["USUP1", "USUP2", "USUP3"]  # USUP3 through the user group
    attempts = [(approvers[i % 3], "approve" if i % 2 else "reject") for i in range(12)]
    attempts += [
        ("USTRANGER", "approve"),
        ("UOFFICER", "approve"),
        ("USTRANGER2", "reject"),
        ("UOFFICER", "reject"),
    ]

    results = race(workflow, request_id, attempts)

    assert not [r for r in results if isinstance(r, Exception)], results
    decided = [r for r in results if isinstance(r, Decided)]
    assert len(decided) == 1  # the first to get the lock decides; the stage is then closed
    refused = [r for r in results if isinstance(r, Refusal)]
    assert len(refused) == THREADS - 1
    audit = audit_counts(workflow, request_id)
    assert audit["decision_recorded"] == 1
    assert audit["action_refused"] == THREADS - 1
    reasons = refusal_reasons(workflow, request_id)
    # Strangers and the requester are refused for who they are, or because the request closed first.
    assert set(reasons) <= {"request_closed", "not_approver", "own_request"}
    assert reasons["request_closed"] >= THREADS - 1 - 4
    request = workflow.load(request_id)
    assert request is not None
    expected = RequestStatus.APPROVED if decided[0].outcome == "approve" else RequestStatus.REJECTED
    assert request.status == expected
    assert len(request.stages[0].decisions) == 1
    with transaction(workflow.db) as session:
        dms = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "dm")).all()
    assert len(dms) == 2  # the submission's and the one decision's


@pytest.mark.parametrize("with_rejections", [False, True])
def test_sixteen_deciders_on_a_two_approval_stage(workflow: Workflow, with_rejections: bool) -> None:
    # Threat to life goes straight to the authorising officers: 2 approvals from UAUTH1..3.
    values = valid_form_values(
        urgency="threat_to_life", urgency_justification="Immediate risk to a child's life."
    )
    request_id = workflow.submit(
        check_request(workflow.policy, values), "UOFFICER", "T0TEST", "V-race-2"
    ).request_id
    approvers = ["UAUTH1", "UAUTH2", "UAUTH3"]
    attempts = [(approvers[i % 3], "approve") for i in range(12)]
    if with_rejections:
        attempts[5] = ("UAUTH3", "reject")
    attempts += [
        ("USUP1", "approve"),
        ("UOFFICER", "approve"),
        ("USTRANGER", "approve"),
        ("UAUTH1", "approve"),
    ]

    results = race(workflow, request_id, attempts)

    assert not [r for r in results if isinstance(r, Exception)], results
    decided = [r for r in results if isinstance(r, Decided)]
    request = workflow.load(request_id)
    assert request is not None
    stage = request.stages[0]
    with transaction(workflow.db) as session:
        decisions = session.scalars(select(Decision).where(Decision.request_id == request_id)).all()
    assert len(decided) == len(decisions) == len(stage.decisions)
    assert len({d.approver_id for d in decisions}) == len(decisions)  # never twice by one approver
    if request.status == RequestStatus.APPROVED:
        assert [d.outcome for d in decisions] == ["approve", "approve"]
        assert stage.status == StageStatus.APPROVED
    else:  # a rejection came first or second and closed the request
        assert with_rejections and request.status == RequestStatus.REJECTED
        assert decisions[-1].outcome == "reject" and len(decisions) <= 2
    audit = audit_counts(workflow, request_id)
    assert audit["decision_recorded"] == len(decisions)
    assert audit["action_refused"] == THREADS - len(decisions)
    assert audit["request_approved"] + audit["request_rejected"] == 1
    with transaction(workflow.db) as session:
        loaded = request_with_history(session, request_id)
        assert loaded is not None and loaded.current_stage is None


def test_concurrent_submissions_and_decisions_keep_references_gapless_and_the_chain_whole(
    workflow: Workflow, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Submissions take the reference counter and the chain head last, beside decisions taking the head."""
    form = check_request(workflow.policy, valid_form_values())
    earlier = [workflow.submit(form, "UOFFICER", "T0", f"E{i}").request_id for i in range(4)]
    # One submission fails after its reference was drawn (rendering its DM): it must leave no gap.
    render = views.submitted_dm
    failed = threading.Event()

    def fail_once(*args: Any) -> Any:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("rendering failed")
        return render(*args)

    monkeypatch.setattr(views, "submitted_dm", fail_once)
    barrier = threading.Barrier(THREADS)
    outcomes: list[Any] = []

    def act(index: int) -> None:
        barrier.wait()
        try:
            if index < len(earlier):
                outcomes.append(workflow.decide(earlier[index], 0, "USUP1", "approve", APPROVE))
            else:
                outcomes.append(workflow.submit(form, f"UOFF{index}", "T0", f"V{index}"))
        except Exception as exc:  # only the planted failure is expected
            outcomes.append(exc)

    threads = [threading.Thread(target=act, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert [str(e) for e in errors] == ["rendering failed"]
    assert sum(isinstance(o, Decided) for o in outcomes) == len(earlier)
    with transaction(workflow.db) as session:
        references = session.scalars(select(FrRequest.reference)).all()
    numbers = sorted(int(reference.rsplit("-", 1)[1]) for reference in references)
    saved = len(earlier) + (THREADS - len(earlier) - 1)  # all but the failed submission
    assert numbers == list(range(1, saved + 1))  # FR-2026-00001 onwards, no gap
    report = verify_chain(engine)
    assert report.ok, [p.describe() for p in report.problems]


def test_events_queued_for_the_commit_are_never_dropped(workflow: Workflow, clock: Any) -> None:
    with pytest.raises(AuditChainError), transaction(workflow.db) as session:
        append_at_commit(session, prepare_event("U1", "request_viewed", None, clock(), {}))
    with transaction(workflow.db) as session:
        assert session.scalars(select(AuditEvent)).first() is None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # SQLite's own writer queue
def test_a_failed_sqlite_writer_lets_the_next_one_in(workflow: Workflow, engine: Engine) -> None:
    """The in-process writer queue is given back however a write transaction ends."""
    with pytest.raises(RuntimeError), transaction(workflow.db) as session:
        session.execute(select(FrRequest.id))
        raise RuntimeError("handler failed mid-transaction")
    blocker = sqlite3.connect(engine.url.database or "", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the database
    try:
        with pytest.raises(DatabaseUnavailable), transaction(workflow.db) as session:
            session.execute(select(FrRequest.id))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    result = workflow.submit(check_request(workflow.policy, valid_form_values()), "UOFFICER", "T0", "V1")
    assert result.created


def _waits_for_the_chain_head(engine: Engine) -> bool:
    """Whether a backend is waiting for a lock while asking for the audit chain's head."""
    with engine.connect() as conn:
        return bool(
            conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%FROM audit_chain_head%FOR UPDATE%'"
                )
            )
        )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # row locks and foreign keys
def test_a_decision_and_a_write_for_its_request_under_the_chain_head_do_not_deadlock(
    workflow: Workflow, engine: Engine, clock: Any
) -> None:
    """Every writer takes the chain's head last, and the rows it writes under the head that refer to a
    request (its audit events; in some transactions outbox rows) check their request exists, which locks
    the request's key. A decision holds its request's row while it waits for the head; the head's holder,
    writing a row for that request, must not wait for the decision's lock, or each waits for the other
    until PostgreSQL aborts one (a deadlock). The decision locks the row only against other updates (FOR
    NO KEY UPDATE), not against such checks."""
    rid = submit(workflow).request_id
    with engine.connect() as holder:
        holder.execute(text("SET LOCAL lock_timeout = '5s'"))
        holder.execute(select(AuditChainHead.seq).where(AuditChainHead.id == HEAD_ID).with_for_update())
        outcome: list[Any] = []

        def decide() -> None:
            try:
                outcome.append(workflow.decide(rid, 0, "USUP1", "approve", APPROVE))
            except Exception as exc:  # the assertion below names it
                outcome.append(exc)

        deciding = threading.Thread(target=decide)
        deciding.start()
        wait_until(lambda: _waits_for_the_chain_head(engine), "the decision waits for the chain head")
        # What an append under the head does for the request: a row that refers to it.
        holder.execute(
            insert(ScheduledNotice).values(
                kind="test", subject_id=rid, sequence=0, request_id=rid, due_at=clock(), created_at=clock()
            )
        )
        holder.commit()
    deciding.join(30)
    assert [type(result) for result in outcome] == [Decided], outcome

"""Reading a request with its history: everything the views render, in a fixed number of statements."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError

from bot.workflow import Decided, Recorded, Workflow
from storage.db import transaction
from storage.models import FrRequest
from storage.queries import request_with_history, requests_with_history
from tests.conftest import statements_run
from tests.test_workflow import APPROVE, REJECT, submit


def _request_with_some_history(workflow: Workflow) -> int:
    """A three-stage request: the first stage decided, the second with one approval of two, a question
    asked on it and a comment on the request."""
    rid = submit(workflow, tool="engine-a").request_id
    assert isinstance(workflow.decide(rid, 0, "USUP1", "approve", APPROVE), Decided)
    assert isinstance(workflow.decide(rid, 1, "UAUTH1", "approve", APPROVE), Decided)
    workflow.request_info(rid, 1, "UAUTH2", "Which exhibit is the still from?", "VQ-HISTORY")
    assert isinstance(workflow.comment(rid, "UAUTH2", "Checked the custody record.", "VC-HISTORY"), Recorded)
    return rid


def _history(request: FrRequest) -> tuple[object, ...]:
    """Every collection a reviewer's message and the request's views read."""
    return (
        [(stage.position, stage.stage_id, stage.status) for stage in request.stages],
        [[(d.approver_id, d.outcome) for d in stage.decisions] for stage in request.stages],
        [[(i.asked_by, i.question) for i in stage.info_requests] for stage in request.stages],
        [(c.author_id, c.text) for c in request.comments],
    )


@pytest.mark.parametrize(("lock", "statements_expected"), [(False, 3), (True, 5)])
def test_a_request_and_its_history_are_read_in_a_fixed_number_of_statements(
    workflow: Workflow, engine: Engine, lock: bool, statements_expected: int
) -> None:
    """Unlocked, the request joined with its stages and their decisions, then its questions and its
    comments: three statements (bench/NOTES.md item 38; a query a collection took five). Locked, the
    request's row first and each collection after the lock is held (what the lock's previous holder
    committed is seen: tests/test_concurrency.py). Whatever the request holds, and none more when the
    views touch every collection."""
    rid = _request_with_some_history(workflow)
    with transaction(workflow.db) as session, statements_run(engine) as statements:
        request = request_with_history(session, rid, lock=lock)
        assert request is not None
        history = _history(request)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == statements_expected, statements
    assert history == (
        [(0, "supervisor", "approved"), (1, "authoriser", "pending"), (2, "dpo", "waiting")],
        [[("USUP1", "approve")], [("UAUTH1", "approve")], []],
        [[], [("UAUTH2", "Which exhibit is the still from?")], []],
        [("UAUTH2", "Checked the custody record.")],
    )
    if lock and engine.dialect.name == "postgresql":
        assert "FOR UPDATE OF fr_requests" in selects[0], selects[0]
    with transaction(workflow.db) as session:
        assert request_with_history(session, 999_999, lock=lock) is None


def test_a_decision_committed_during_the_read_is_seen_whole_or_not_at_all(
    workflow: Workflow, engine: Engine
) -> None:
    """The outbox reads a request for a reviewer's message without BEGIN and COMMIT on PostgreSQL, and in
    read committed every statement takes its own snapshot anyway. The request's status, its stages' and
    their decisions come from one statement, so a decision committed while the read runs cannot give a
    message that says "Rejected" and still offers the buttons (a stage read after the decision, the
    request before it). Questions and comments, read after, carry no state the buttons depend on."""
    rid = submit(workflow, tool="engine-a").request_id
    assert isinstance(workflow.decide(rid, 0, "USUP1", "approve", APPROVE), Decided)
    decided: list[object] = []
    reader: list[object] = []

    def decide_after_the_first_read(conn: object, _cursor: object, statement: str, *_args: Any) -> None:
        if not reader and "FROM fr_requests" in statement:
            reader.append(conn)  # the decision's own statements, on another connection, pass by
            decided.append(workflow.decide(rid, 1, "UAUTH1", "reject", REJECT))

    event.listen(engine, "after_cursor_execute", decide_after_the_first_read)
    try:
        with transaction(workflow.db, read_only=True, single_statement=True) as session:
            request = request_with_history(session, rid)
            assert request is not None
            seen = (
                request.status,
                [s.status for s in request.stages],
                [len(s.decisions) for s in request.stages],
            )
    finally:
        event.remove(engine, "after_cursor_execute", decide_after_the_first_read)
    assert len(decided) == 1 and isinstance(decided[0], Decided)
    # The read's snapshot came before the decision on both databases (SQLite's reader holds its snapshot
    # for the transaction; PostgreSQL's one statement had run).
    assert seen == ("pending", ["approved", "pending", "waiting"], [1, 0, 0])
    with transaction(workflow.db) as session:
        after = request_with_history(session, rid)
        assert after is not None and after.status == "rejected"
        assert [s.status for s in after.stages] == ["approved", "rejected", "cancelled"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite has no row locks
def test_the_locked_read_holds_the_requests_row_until_the_transaction_ends(
    workflow: Workflow, engine: Engine
) -> None:
    """A writer's read locks the request's row, which serialises the request's writers, until its
    transaction ends."""
    rid = _request_with_some_history(workflow)
    with transaction(workflow.db) as session:
        assert request_with_history(session, rid, lock=True) is not None
        with engine.connect() as other, pytest.raises(OperationalError, match="could not obtain lock"):
            other.execute(text("SELECT id FROM fr_requests WHERE id = :id FOR UPDATE NOWAIT"), {"id": rid})
    with engine.connect() as other:  # released at the end of the transaction
        locked = other.execute(
            text("SELECT id FROM fr_requests WHERE id = :id FOR UPDATE NOWAIT"), {"id": rid}
        )
        assert locked.scalar_one() == rid


def test_several_requests_are_read_with_their_histories_in_three_statements(
    workflow: Workflow, engine: Engine
) -> None:
    """A list (the officer's requests, the approver's queue in App Home) reads its requests' histories
    in three statements whatever their number, in the order asked, leaving out ids that do not exist."""
    first = _request_with_some_history(workflow)
    others = [submit(workflow, f"V-MANY-{n}", tool="engine-a").request_id for n in range(4)]
    asked = [others[2], 999_999, first, others[0]]
    with transaction(workflow.db) as session:
        singly = [_history(r) for r in (request_with_history(session, i) for i in asked) if r is not None]
    with transaction(workflow.db) as session, statements_run(engine) as statements:
        requests = requests_with_history(session, asked)
        together = [_history(request) for request in requests]
        assert requests_with_history(session, []) == []
    assert [request.id for request in requests] == [others[2], first, others[0]]
    assert together == singly
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 3, statements


@pytest.mark.parametrize("pending", [2, 12])
def test_an_approvers_queue_takes_as_many_statements_however_many_requests_wait(
    workflow: Workflow, engine: Engine, pending: int
) -> None:
    """App Home's "awaiting your decision" read each request of the queue by itself, three statements (five
    before item 38) a request; now the whole queue's histories take three."""
    for n in range(pending):
        submit(workflow, f"V-QUEUE-{n}", tool="engine-a")
    with statements_run(engine) as statements:
        queue = workflow.awaiting_decision("USUP1")
    assert len(queue) == pending
    assert all(stage.position == 0 and request.current is stage for request, stage in queue)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    # Delegations to USUP1 for the two stages it does not approve, the queue, and the three reads.
    assert len(selects) == 6, statements

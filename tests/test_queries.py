"""Reading a request with its history: everything the views render, in a fixed number of statements."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import InvalidRequestError, OperationalError

from bot.workflow import Decided, Recorded, Workflow
from storage.db import transaction
from storage.models import FrRequest
from storage.queries import request_for_review, request_with_history, requests_with_history
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


@pytest.mark.parametrize(("lock", "statements_expected"), [(False, 3), (True, 4)])
def test_a_request_and_its_history_are_read_in_a_fixed_number_of_statements(
    workflow: Workflow, engine: Engine, lock: bool, statements_expected: int
) -> None:
    """The request joined with its stages and their decisions, then its questions and its comments:
    three statements (bench/NOTES.md item 38; a query a collection took five). Locked, the request's row
    is locked alone first and the three read after the lock is held (what the lock's previous holder
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
    if lock:
        _assert_locks_the_row_alone(engine, selects[0])
    with transaction(workflow.db) as session:
        assert request_with_history(session, 999_999, lock=lock) is None


def _assert_locks_the_row_alone(engine: Engine, statement: str) -> None:
    """The lock is a statement of its own that joins nothing: rows joined to a locking statement are
    read as they were before it waited for the lock."""
    flat = " ".join(statement.split())
    assert flat.startswith("SELECT fr_requests.id FROM fr_requests WHERE"), flat
    assert " JOIN " not in flat, flat
    if engine.dialect.name == "postgresql":  # against other writers, not foreign-key checks
        assert flat.endswith("FOR NO KEY UPDATE"), flat


def test_a_writer_that_changes_only_stages_reads_the_request_in_two_statements(
    workflow: Workflow, engine: Engine
) -> None:
    """A decision, a withdrawal and a record of use read the request locked: its row's lock alone, then
    the request joined with its stages and their decisions, read once the lock is held. Two statements
    (five when it was the whole history with each collection by a query of its own); questions and
    comments are not loaded, and touching them raises rather than quietly reading them."""
    rid = _request_with_some_history(workflow)
    with transaction(workflow.db) as session, statements_run(engine) as statements:
        request = request_for_review(session, rid, lock=True)
        assert request is not None
        seen = (
            [(stage.position, stage.stage_id, stage.status) for stage in request.stages],
            [[(d.approver_id, d.outcome) for d in stage.decisions] for stage in request.stages],
        )
        with pytest.raises(InvalidRequestError, match="info_requests"):
            _ = request.stages[1].info_requests
        with pytest.raises(InvalidRequestError, match="comments"):
            _ = request.comments
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2, statements
    _assert_locks_the_row_alone(engine, selects[0])
    assert seen == (
        [(0, "supervisor", "approved"), (1, "authoriser", "pending"), (2, "dpo", "waiting")],
        [[("USUP1", "approve")], [("UAUTH1", "approve")], []],
    )
    with transaction(workflow.db) as session, statements_run(engine) as statements:
        assert request_for_review(session, 999_999, lock=True) is None
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1


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
    transaction ends; a foreign-key check of a row referring to the request (KEY SHARE) does not wait."""
    rid = _request_with_some_history(workflow)
    with transaction(workflow.db) as session:
        assert request_with_history(session, rid, lock=True) is not None
        with engine.connect() as other:
            checked = other.execute(
                text("SELECT id FROM fr_requests WHERE id = :id FOR KEY SHARE NOWAIT"), {"id": rid}
            )
            assert checked.scalar_one() == rid
        with engine.connect() as other, pytest.raises(OperationalError, match="could not obtain lock"):
            other.execute(
                text("SELECT id FROM fr_requests WHERE id = :id FOR NO KEY UPDATE NOWAIT"), {"id": rid}
            )
    with engine.connect() as other:  # released at the end of the transaction
        locked = other.execute(
            text("SELECT id FROM fr_requests WHERE id = :id FOR UPDATE NOWAIT"), {"id": rid}
        )
        assert locked.scalar_one() == rid


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite has no row locks
@pytest.mark.parametrize("read", [request_with_history, request_for_review], ids=["history", "for_review"])
def test_a_locked_read_that_waited_sees_what_the_locks_holder_committed(
    workflow: Workflow, engine: Engine, read: Callable[..., FrRequest | None]
) -> None:
    """The exactly-one-decision guarantee rests on this: a writer that waited for the request's row reads
    its stages and decisions as the lock's previous holder left them. Here the holder marks the second
    stage approved and adds a decision to it while a locked read waits; the read must see both."""
    rid = _request_with_some_history(workflow)
    seen: list[tuple[str, int]] = []

    def locked_read() -> None:
        with transaction(workflow.db) as session:
            request = read(session, rid, lock=True)
            assert request is not None
            seen.append((request.stages[1].status, len(request.stages[1].decisions)))

    with engine.connect() as holder:
        holder.execute(text("SELECT id FROM fr_requests WHERE id = :id FOR UPDATE"), {"id": rid})
        waiting = threading.Thread(target=locked_read)
        waiting.start()
        with engine.connect() as watcher:
            for _ in range(200):  # until the read waits for the row's lock
                blocked = watcher.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                ).scalar_one()
                if blocked:
                    break
                time.sleep(0.05)
            assert blocked, "the locked read never waited for the row"
        stage_id = holder.execute(
            text("SELECT id FROM stage_reviews WHERE request_id = :id AND position = 1"), {"id": rid}
        ).scalar_one()
        holder.execute(
            text(
                "INSERT INTO decisions (request_id, stage_review_id, approver_id, outcome, rationale,"
                " conditions, policy_version, created_at)"
                " VALUES (:r, :s, 'UAUTH2', 'approve', 'Held lock.', '', 'test', now())"
            ),
            {"r": rid, "s": stage_id},
        )
        holder.execute(text("UPDATE stage_reviews SET status = 'approved' WHERE id = :s"), {"s": stage_id})
        holder.commit()
        waiting.join(30)
    assert seen == [("approved", 2)]


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

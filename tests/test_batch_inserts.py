"""A batch of audit events or outbox rows (a sweep queues hundreds at once) is one statement, kept in order,
with the columns' defaults, on both databases: on PostgreSQL one JSON parameter (storage/recordsets.py),
unless the batch holds a NUL character, which PostgreSQL's JSON functions refuse; then an executemany."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, Text, cast, func, select

from bot import sweeps
from bot.audit import append_events, prepare_event, verify_chain
from bot.workflow import Decided, Workflow, enqueue, enqueue_at_commit, insert_outbox
from storage.canonical import canonical_json
from storage.db import make_session_factory, transaction
from storage.models import AuditEvent, AuditEventText, OutboxMessage, OutboxStatus, ScheduledNotice
from storage.recordsets import members, records
from tests.conftest import statements_run
from tests.test_workflow import APPROVE, submit

AT = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def test_a_batch_of_events_chains_in_order_and_verifies(engine: Engine) -> None:
    db = make_session_factory(engine)
    # Enough to show the batch is one statement, with free text to seal, and no request for some.
    events = [
        prepare_event(
            f"U{n}",
            "comment_added" if n % 3 == 0 else "reminder_sent",
            None,
            AT + timedelta(seconds=n),
            {"comment": f"note {n} — ünïcode", "n": n} if n % 3 == 0 else {"sequence": n, "list": [n, None]},
        )
        for n in range(250)
    ]
    with transaction(db) as session:  # the first event starts the chain
        append_events(session, events[:1])
    with statements_run(engine) as statements, transaction(db) as session:
        append_events(session, events[1:])
    # What runs once the chain's head is read (and, on PostgreSQL, locked): on PostgreSQL one statement,
    # which inserts the events and their texts and moves the head; on SQLite one executemany each.
    under_lock = statements[_head_read(statements) + 1 :]
    if engine.dialect.name == "postgresql":
        assert len(under_lock) == 1
        assert under_lock[0].startswith("WITH new_events AS \n(INSERT INTO audit_events ")
        assert "new_texts AS \n(INSERT INTO audit_event_texts " in under_lock[0]
        assert "UPDATE audit_chain_head SET" in under_lock[0]
    else:
        assert [s.split(" (")[0] for s in under_lock] == [
            "INSERT INTO audit_events",
            "INSERT INTO audit_event_texts",
            "UPDATE audit_chain_head SET seq=?, hash=? WHERE audit_chain_head.id = ?",
        ]

    with transaction(db, read_only=True) as session:
        rows = session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
        texts = session.execute(select(AuditEventText).order_by(AuditEventText.event_seq)).scalars().all()
    assert [row.seq for row in rows] == list(range(1, 251))  # ids follow seq
    assert [row.actor_id for row in rows] == [f"U{n}" for n in range(250)]
    assert rows[1].details == {"sequence": 1, "list": [1, None]}
    assert rows[0].created_at == AT
    assert [t.text for t in texts] == [f"note {n} — ünïcode" for n in range(0, 250, 3)]
    assert verify_chain(engine).ok


def _head_read(statements: list[str]) -> int:
    return next(n for n, s in enumerate(statements) if s.startswith("SELECT audit_chain_head.seq"))


def test_outbox_rows_take_the_list_order_and_the_column_defaults(engine: Engine) -> None:
    db = make_session_factory(engine)
    rows = [
        {
            "request_id": None,
            "kind": "channel_post",
            "payload": {"channel": "C1", "text": f"message {n}", "blocks": [{"type": "divider"}]},
            "next_attempt_at": AT,
            "created_at": AT - timedelta(minutes=n),
            "pace_key": None if n % 2 else f"channel:C{n}",
        }
        for n in range(40)
    ]
    with statements_run(engine) as statements, transaction(db) as session:
        insert_outbox(session, rows)
        insert_outbox(session, [])  # nothing to queue: no statement, no error
    assert len([s for s in statements if s.startswith("INSERT INTO outbox ")]) == 1
    with transaction(db, read_only=True) as session:
        stored = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
    assert [m.payload["text"] for m in stored] == [f"message {n}" for n in range(40)]
    assert [m.pace_key for m in stored] == [row["pace_key"] for row in rows]
    assert {(m.status, m.attempts, m.doubtful_attempts) for m in stored} == {(OutboxStatus.PENDING, 0, 0)}
    assert stored[5].created_at == AT - timedelta(minutes=5)


def test_a_batch_is_stored_in_canonical_text_and_one_with_a_nul_still_goes_in(engine: Engine) -> None:
    """The chain hashes each event's details in canonical text, and verification hashes the stored text as
    it is: the batch stores exactly that text. A NUL in any row sends the batch as an executemany, which
    stores it too (and PostgreSQL would refuse it as JSON)."""
    db = make_session_factory(engine)
    details = [
        {"z": 'é "quoted" \n', "a": [1, 2.5, None]},
        {"tool": "nul\u0000inside", "b": {"y": 1, "x": 2}},
    ]
    assert records([{"details": details[1]}]) is None  # this batch cannot go as JSON
    for batch in ([details[0]], details):
        events = [prepare_event("system", "reminder_sent", None, AT, d) for d in batch]
        outbox = [
            {
                "request_id": None,
                "kind": "channel_post",
                "payload": {"text": str(d)},
                "next_attempt_at": AT,
                "created_at": AT,
                "pace_key": None,
            }
            for d in batch
        ]
        with statements_run(engine) as statements, transaction(db) as session:
            append_events(session, events)
            insert_outbox(session, outbox)
        # One statement writes the batch's events: on PostgreSQL the head's update with them as JSON,
        # unless a NUL sends them as an executemany before it.
        assert len([s for s in statements if "INSERT INTO audit_events " in s]) == 1
        as_json = engine.dialect.name == "postgresql" and len(batch) == 1
        assert any(s.startswith("WITH new_events AS") for s in statements) == as_json
        assert len([s for s in statements if s.startswith("INSERT INTO outbox ")]) == 1
    with transaction(db, read_only=True) as session:
        stored = (
            session.execute(select(cast(AuditEvent.details, Text)).order_by(AuditEvent.id)).scalars().all()
        )
        payloads = session.scalars(select(OutboxMessage.payload).order_by(OutboxMessage.id)).all()
    assert stored == [canonical_json(d) for d in (details[0], *details)]
    assert [p["text"] for p in payloads] == [str(d) for d in (details[0], *details)]
    assert verify_chain(engine).ok


def test_a_typed_backslash_u0000_is_no_nul_and_an_incomplete_outbox_row_takes_the_defaults(
    engine: Engine,
) -> None:
    """Text holding a backslash and "u0000" (as typed, not a NUL) still goes as JSON and is stored as it is;
    an outbox row missing a column goes as an executemany, which takes the column's default where JSON
    would read NULL."""
    db = make_session_factory(engine)
    typed = "C\\u0000"
    assert records([{"channel": typed}]) is not None and records([{"text": "a\x00"}]) is None
    notices = [sweeps.Notice("reminder", n, 0, None, typed if n == 1 else "C1", AT, AT) for n in range(3)]
    with transaction(db) as session:
        recorded = sweeps._record_all(session, [(notice, notice.subject_id) for notice in notices])
        again = sweeps._record_all(session, [(notices[1], 1)])  # its key is taken: skipped
        insert_outbox(session, [{"request_id": None, "kind": "dm", "payload": {"text": typed}}])
    assert [entry for _, entry in recorded] == [0, 1, 2] and again == []
    with transaction(db, read_only=True) as session:
        channels = session.scalars(select(ScheduledNotice.channel).order_by(ScheduledNotice.id)).all()
        queued = session.scalars(select(OutboxMessage)).one()
    assert channels == ["C1", typed, "C1"]
    assert queued.payload == {"text": typed} and queued.status == OutboxStatus.PENDING
    assert queued.next_attempt_at is not None


def test_sealed_texts_go_in_the_heads_one_statement_and_with_a_nul_as_rows(engine: Engine) -> None:
    """An event's sealed free text goes with it: in the head's one statement on PostgreSQL, unless the
    batch holds a NUL (here in an event's details: a text column cannot hold one at all), which sends
    the batch as executemanys, as on SQLite always. Either way the texts are stored as typed, under
    their events, and the chain verifies."""
    db = make_session_factory(engine)
    assert members({"text": "a\x00"}) is None
    assert members({"a": 1}, {"details": '{"b":2}'}) == '"a":1,"details":{"b":2}'
    typed = 'quoted "C\\u0000" — ünïcode'
    for tool in ("PimEyes", "nul\x00inside"):
        events = [
            prepare_event("U1", "comment_added", None, AT, {"comment": typed}),
            prepare_event("system", "reminder_sent", None, AT, {"tool": tool}),
        ]
        with statements_run(engine) as statements, transaction(db) as session:
            append_events(session, events)
        one_statement = engine.dialect.name == "postgresql" and tool == "PimEyes"
        assert any(s.startswith("WITH new_events AS") for s in statements) == one_statement
        assert any(s.startswith("INSERT INTO audit_event_texts") for s in statements) != one_statement
    with transaction(db, read_only=True) as session:
        stored = session.execute(
            select(AuditEventText.event_seq, AuditEventText.path, AuditEventText.text).order_by(
                AuditEventText.event_seq
            )
        ).all()
    assert [tuple(row) for row in stored] == [(1, "comment", typed), (3, "comment", typed)]
    assert verify_chain(engine).ok


def test_a_decisions_slack_messages_go_in_one_insert_in_the_order_they_were_queued(
    workflow: Workflow, engine: Engine
) -> None:
    """A decision that passes a stage queues the next stage's post, the reviewers' refresh, the officer's
    DM and the App Home refresh: one insert (on PostgreSQL in one statement with the decision's own
    writes, tests/test_row_writes.py) before the audit chain's head is taken, ids in that order (a
    request's messages are sent in id order), each with its pace key."""
    rid = submit(workflow, tool="engine-a").request_id
    with transaction(workflow.db, read_only=True) as session:
        before = session.scalar(select(func.max(OutboxMessage.id)))
    with statements_run(engine) as statements:
        assert isinstance(workflow.decide(rid, 0, "USUP1", "approve", APPROVE), Decided)
    # An insert of its own on SQLite; on PostgreSQL the statement that also writes the decision's rows.
    inserts = [n for n, s in enumerate(statements) if "INSERT INTO outbox " in s]
    assert len(inserts) == 1, statements
    head = next(n for n, s in enumerate(statements) if "FROM audit_chain_head" in s)
    assert inserts[0] < head
    with transaction(workflow.db, read_only=True) as session:
        queued = session.scalars(
            select(OutboxMessage).where(OutboxMessage.id > before).order_by(OutboxMessage.id)
        ).all()
    assert [(m.request_id, m.kind) for m in queued] == [
        (rid, "post_review"),
        (rid, "refresh_reviews"),
        (rid, "dm"),
        (rid, "publish_home"),
    ]
    assert [m.pace_key for m in queued] == ["post:C0AUTH", "update", "post:UOFFICER", None]
    assert {(m.status, m.attempts) for m in queued} == {(OutboxStatus.PENDING, 0)}


def test_outbox_rows_queued_for_the_commit_are_never_dropped(workflow: Workflow) -> None:
    """A transaction that queued Slack messages for its commit and never inserted them does not commit."""
    with pytest.raises(RuntimeError, match="never inserted"), transaction(workflow.db) as session:
        enqueue_at_commit(session, "channel_post", {"channel": "C1", "text": "lost"}, None, AT)
        enqueue(session, "channel_post", {"channel": "C1", "text": "written with it"}, None, AT)
    with transaction(workflow.db, read_only=True) as session:
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 0

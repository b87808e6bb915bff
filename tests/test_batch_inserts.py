"""A batch of audit events or outbox rows (a sweep queues hundreds at once) is one statement, kept in order,
with the columns' defaults, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from bot.audit import append_events, prepare_event, verify_chain
from bot.workflow import insert_outbox
from storage.db import make_session_factory, transaction
from storage.models import AuditEvent, AuditEventText, OutboxMessage, OutboxStatus
from tests.conftest import statements_run

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
    with statements_run(engine) as statements, transaction(db) as session:
        append_events(session, events)
    inserts = [s for s in statements if s.startswith("INSERT INTO audit_events ")]
    assert len(inserts) == 1  # one executemany for the batch

    with transaction(db, read_only=True) as session:
        rows = session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
        texts = session.execute(select(AuditEventText).order_by(AuditEventText.event_seq)).scalars().all()
    assert [row.seq for row in rows] == list(range(1, 251))  # ids follow seq
    assert [row.actor_id for row in rows] == [f"U{n}" for n in range(250)]
    assert rows[1].details == {"sequence": 1, "list": [1, None]}
    assert rows[0].created_at == AT
    assert [t.text for t in texts] == [f"note {n} — ünïcode" for n in range(0, 250, 3)]
    assert verify_chain(engine).ok


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

"""Migration 0002 on a database that already has audit events: they are chained and their text sealed."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from alembic import command
from sqlalchemy import Engine, select, text

from bot.audit import SEALED, verify_chain
from storage.db import alembic_config, make_session_factory, transaction
from storage.models import AuditEvent, AuditEventText


def test_existing_events_are_chained_on_upgrade(database_url: str, engine: Engine) -> None:
    config = alembic_config(database_url)
    command.downgrade(config, "0001")
    try:
        with engine.begin() as conn:
            for day, (actor, details) in enumerate(
                [
                    ("UOFFICER", {"rationale": "Serious robbery, no other lead.", "outcome": "approve"}),
                    ("system", {"stage": "supervisor"}),
                    ("UDPO1", {"form": {"necessity": "Only image of the suspect.", "urgency": "routine"}}),
                ],
                start=1,
            ):
                conn.execute(
                    text(
                        "INSERT INTO audit_events (actor_id, action, details, created_at) "
                        "VALUES (:actor, 'legacy', :details, :at)"
                    ),
                    {
                        "actor": actor,
                        "details": json.dumps(details),
                        "at": datetime(2026, 1, day, tzinfo=UTC),
                    },
                )
    finally:
        command.upgrade(config, "head")

    result = verify_chain(engine)
    assert result.ok, [p.describe() for p in result.problems]
    assert (result.events, result.head_seq, result.texts_checked) == (3, 3, 2)
    with transaction(make_session_factory(engine)) as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        texts = {(t.event_seq, t.path): t.text for t in session.scalars(select(AuditEventText))}
    assert [e.seq for e in events] == [1, 2, 3]
    assert set(events[0].details["rationale"]) == {SEALED}
    assert events[0].details["outcome"] == "approve"
    assert texts == {
        (1, "rationale"): "Serious robbery, no other lead.",
        (3, "form.necessity"): "Only image of the suspect.",
    }

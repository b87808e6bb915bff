"""Migration 0010 on a database with messages still to send: each gets the rate-limit key new rows get."""

from __future__ import annotations

from alembic import command
from sqlalchemy import Engine, select

from bot.forms import RequestForm
from bot.outbox import pace_key_for
from bot.workflow import Workflow
from storage.db import alembic_config, transaction
from storage.models import OutboxMessage, OutboxStatus


def test_rows_waiting_to_be_sent_get_their_pace_key_on_upgrade(
    database_url: str, engine: Engine, workflow: Workflow, form: RequestForm
) -> None:
    workflow.submit(form, "UOFFICER", "T0TEST", "VMIGRATE")  # a reviewer post, a DM, App Home
    with transaction(workflow.db) as session:
        expected = {row.id: row.pace_key for row in session.scalars(select(OutboxMessage))}
        session.query(OutboxMessage).filter(OutboxMessage.kind == "publish_home").update(
            {"status": OutboxStatus.SENT}
        )
    assert set(expected.values()) == {"post:C0SUPER", "post:UOFFICER", None}

    config = alembic_config(database_url)
    command.downgrade(config, "0009")  # the column, and every key in it, is gone
    command.upgrade(config, "head")

    with transaction(workflow.db) as session:
        rows = list(session.scalars(select(OutboxMessage)))
        assert {row.id: row.pace_key for row in rows} == expected
        assert all(row.pace_key == pace_key_for(session, row.kind, row.payload) for row in rows)


def test_a_database_holding_requests_migrates_down_and_up_again(
    database_url: str, engine: Engine, workflow: Workflow, form: RequestForm
) -> None:
    """On SQLite a migration that changes a table's columns copies it and drops the old one, which the
    foreign-key checks refused while requests referred to it: a database with one request could not go
    below 0004 (nor a populated 0001 database up)."""
    request_id = workflow.submit(form, "UOFFICER", "T0TEST", "VDOWN").request_id
    config = alembic_config(database_url)
    try:
        command.downgrade(config, "0001")
    finally:  # the session's other tests share this database: leave it at head whatever happened
        command.upgrade(config, "head")
    assert workflow.load(request_id) is not None

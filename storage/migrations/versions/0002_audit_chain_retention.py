"""audit hash chain, redactable audit texts, legal hold and retention columns

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 02:50:00

Existing audit events are chained in id order, their free text moved to audit_event_texts behind salted
commitments, exactly as bot.audit.append_event does for new events.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.models
from storage.append_only import allow_changes, forbid_changes

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite rebuilds the table for batch changes, which would lose the triggers anyway.
    allow_changes(op, "audit_events")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))

    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_head")),
    )
    op.create_table(
        "audit_event_texts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.BigInteger(), nullable=True),
        sa.Column("path", sa.String(length=200), nullable=False),
        sa.Column("salt", sa.String(length=32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_event_texts")),
        sa.UniqueConstraint("event_seq", "path", name="uq_audit_event_texts_event_seq_path"),
    )
    with op.batch_alter_table("audit_event_texts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_event_texts_request_id"), ["request_id"], unique=False)

    with op.batch_alter_table("fr_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("legal_hold", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("legal_hold_reason", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("redacted_at", storage.models.UTCDateTime(timezone=True), nullable=True)
        )

    _chain_existing_events()

    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_audit_events_seq"), ["seq"])
    forbid_changes(op, "audit_events")


def _chain_existing_events() -> None:
    from bot.audit import GENESIS_HASH, HEAD_ID, event_hash, seal

    bind = op.get_bind()
    events = sa.table(
        "audit_events",
        sa.column("id", sa.BigInteger()),
        sa.column("seq", sa.BigInteger()),
        sa.column("request_id", sa.BigInteger()),
        sa.column("actor_id", sa.String()),
        sa.column("action", sa.String()),
        sa.column("details", sa.JSON()),
        sa.column("created_at", storage.models.UTCDateTime()),
        sa.column("prev_hash", sa.String()),
        sa.column("hash", sa.String()),
    )
    texts = sa.table(
        "audit_event_texts",
        sa.column("event_seq", sa.BigInteger()),
        sa.column("request_id", sa.BigInteger()),
        sa.column("path", sa.String()),
        sa.column("salt", sa.String()),
        sa.column("text", sa.Text()),
    )
    rows = bind.execute(
        sa.select(
            events.c.id,
            events.c.request_id,
            events.c.actor_id,
            events.c.action,
            events.c.details,
            events.c.created_at,
        ).order_by(events.c.id)
    ).all()
    previous = GENESIS_HASH
    for seq, row in enumerate(rows, start=1):
        chained, sealed = seal(row.details or {})
        digest = event_hash(seq, row.request_id, row.actor_id, row.action, chained, row.created_at, previous)
        bind.execute(
            events.update()
            .where(events.c.id == row.id)
            .values(seq=seq, details=chained, prev_hash=previous, hash=digest)
        )
        for text in sealed:
            bind.execute(
                texts.insert().values(
                    event_seq=seq, request_id=row.request_id, path=text.path, salt=text.salt, text=text.text
                )
            )
        previous = digest
    head = sa.table("audit_chain_head", sa.column("id"), sa.column("seq"), sa.column("hash"))
    bind.execute(head.insert().values(id=HEAD_ID, seq=len(rows), hash=previous))


def downgrade() -> None:
    allow_changes(op, "audit_events")
    with op.batch_alter_table("fr_requests", schema=None) as batch_op:
        batch_op.drop_column("redacted_at")
        batch_op.drop_column("legal_hold_reason")
        batch_op.drop_column("legal_hold")
    with op.batch_alter_table("audit_event_texts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_event_texts_request_id"))
    op.drop_table("audit_event_texts")
    op.drop_table("audit_chain_head")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_audit_events_seq"), type_="unique")
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")
        batch_op.drop_column("seq")
    forbid_changes(op, "audit_events")

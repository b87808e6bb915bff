"""A partial index on the outbox's pending rows by request, for the dispatcher's due query.

Revision ID: 0011
Revises: 0010

The dispatcher's due query sends a row only as its request's first pending row, and finds those rows
on every pass: from this index, without reading the table (bench/NOTES.md item 30).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

PENDING = "status = 'pending'"


def upgrade() -> None:
    op.create_index(
        "ix_outbox_pending_request",
        "outbox",
        ["request_id", "id"],
        unique=False,
        postgresql_where=sa.text(PENDING),
        sqlite_where=sa.text(PENDING),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_pending_request", table_name="outbox")

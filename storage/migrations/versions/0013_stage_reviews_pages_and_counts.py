"""Stage reviews: room on each page for heap-only updates, and the pending stages' index covers their
counts by stage.

Revision ID: 0013
Revises: 0012

The reminder sweep writes each due review's next check time; the dispatcher writes where its reviewer
message landed. Neither column is indexed, but on a full page PostgreSQL writes the new row version to
another page, and then a new entry in each of the table's five indexes, each index page's first change
after a checkpoint a full page in the WAL. With room left on the page the update is heap-only. New pages
are filled to 90 %; pages written before keep their rows until PostgreSQL rewrites them.

The leads' figures (App Home, the digest) count pending stages by name with the oldest's start: with
those two columns in the index of pending stages, PostgreSQL counts from the index alone (4.5 -> 1.2 ms
with 10,000 pending; bench/NOTES.md item 42). SQLite has neither setting.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

PENDING = "status = 'pending'"
INDEX = "ix_stage_reviews_pending_due"


def _pending_index(include: list[str]) -> None:
    op.drop_index(INDEX, table_name="stage_reviews")
    op.create_index(
        INDEX,
        "stage_reviews",
        ["due_at", "id"],
        unique=False,
        postgresql_where=sa.text(PENDING),
        postgresql_include=include,
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE stage_reviews SET (fillfactor = 90)")
        _pending_index(["stage_name", "started_at"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _pending_index([])
        op.execute("ALTER TABLE stage_reviews RESET (fillfactor)")

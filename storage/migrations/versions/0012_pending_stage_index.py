"""The index on stage reviews' due time covers the pending ones only, for the sweep and the digest.

Revision ID: 0012
Revises: 0011

The reminder sweep claims each channel's overdue reviews in due order, and the digest lists the overdue
ones in due order. By the index on due_at, PostgreSQL walked the decided stages as well as the pending
ones (each query of due_at is about pending stages); from this index it reads the pending ones only
(bench/NOTES.md item 41).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

PENDING = "status = 'pending'"


def upgrade() -> None:
    op.drop_index("ix_stage_reviews_due_at", table_name="stage_reviews")
    op.create_index(
        "ix_stage_reviews_pending_due",
        "stage_reviews",
        ["due_at", "id"],
        unique=False,
        postgresql_where=sa.text(PENDING),
        sqlite_where=sa.text(PENDING),
    )


def downgrade() -> None:
    op.drop_index("ix_stage_reviews_pending_due", table_name="stage_reviews")
    op.create_index("ix_stage_reviews_due_at", "stage_reviews", ["due_at"], unique=False)

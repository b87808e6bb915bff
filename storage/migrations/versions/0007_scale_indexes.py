"""indexes for the scheduler's sweeps, the digest and audit export at scale (bench/scale.py)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# (table, column): each a plain index named by the metadata's convention, ix_<table>_<column>.
INDEXES = (
    ("fr_requests", "decided_at"),  # the digest's decisions in a period, the leads' "decided today"
    ("fr_requests", "valid_until"),  # expiry warnings, post-use reminders, the digest's expiring list
    ("stage_reviews", "status"),  # pending reviews: a few among millions of decided ones
    ("audit_events", "created_at"),  # the digest's period and `audit export --since/--until`
    ("info_requests", "stage_review_id"),  # the sweep's "question waiting on the officer" check
)


# The post-use reminder sweep looks for approvals without a post-use record; a partial index keeps that
# to the few open ones (a plain valid_until index still scans every closed approval before now).
OPEN_APPROVAL = "status = 'approved' AND closed_at IS NULL"


def upgrade() -> None:
    for table, column in INDEXES:
        op.create_index(f"ix_{table}_{column}", table, [column], unique=False)
    op.create_index(
        "ix_fr_requests_open_approvals",
        "fr_requests",
        ["valid_until"],
        unique=False,
        postgresql_where=sa.text(OPEN_APPROVAL),
        sqlite_where=sa.text(OPEN_APPROVAL),
    )


def downgrade() -> None:
    op.drop_index("ix_fr_requests_open_approvals", table_name="fr_requests")
    for table, column in reversed(INDEXES):
        op.drop_index(f"ix_{table}_{column}", table_name=table)

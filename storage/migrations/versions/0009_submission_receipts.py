"""Submission receipts: a validated form is stored before the modal is answered (bot/intake.py).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "submission_receipts",
        sa.Column("id", big_id, primary_key=True, nullable=False),
        sa.Column("submission_key", sa.String(length=64), nullable=False),
        sa.Column("requester_id", sa.String(length=32), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("previous_request_id", big_id, nullable=True),
        sa.Column("view_id", sa.String(length=64), nullable=True),
        sa.Column("form", sa.JSON(), nullable=True),
        sa.Column("received_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", storage.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("request_id", big_id, sa.ForeignKey("fr_requests.id"), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.UniqueConstraint("submission_key"),
    )
    op.create_index("ix_submission_receipts_pending", "submission_receipts", ["recorded_at", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_submission_receipts_pending", table_name="submission_receipts")
    op.drop_table("submission_receipts")

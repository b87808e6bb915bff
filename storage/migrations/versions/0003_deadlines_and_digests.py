"""deadlines, scheduled notices and digests

Revision ID: 0003
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("stage_reviews", schema=None) as batch_op:
        batch_op.add_column(sa.Column("due_at", storage.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("next_check_at", storage.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("message_permalink", sa.String(length=300), nullable=True))
        batch_op.create_index(batch_op.f("ix_stage_reviews_due_at"), ["due_at"], unique=False)

    op.create_table(
        "scheduled_notices",
        sa.Column("id", BigId, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject_id", sa.BigInteger(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("request_id", BigId, nullable=True),
        sa.Column("channel", sa.String(length=32), nullable=True),
        sa.Column("due_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("announced_at", storage.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"], ["fr_requests.id"], name=op.f("fk_scheduled_notices_request_id_fr_requests")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduled_notices")),
        sa.UniqueConstraint(
            "kind", "subject_id", "sequence", name="uq_scheduled_notices_kind_subject_sequence"
        ),
    )
    with op.batch_alter_table("scheduled_notices", schema=None) as batch_op:
        batch_op.create_index("ix_scheduled_notices_channel_created", ["channel", "created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_scheduled_notices_request_id"), ["request_id"], unique=False)

    op.create_table(
        "digests",
        sa.Column("id", BigId, nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("scheduled_for", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("period_start", storage.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("period_end", storage.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("created_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_digests")),
        sa.UniqueConstraint("channel", "local_date", name="uq_digests_channel_local_date"),
    )


def downgrade() -> None:
    op.drop_table("digests")
    with op.batch_alter_table("scheduled_notices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scheduled_notices_request_id"))
        batch_op.drop_index("ix_scheduled_notices_channel_created")
    op.drop_table("scheduled_notices")
    with op.batch_alter_table("stage_reviews", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stage_reviews_due_at"))
        batch_op.drop_column("message_permalink")
        batch_op.drop_column("next_check_at")
        batch_op.drop_column("due_at")

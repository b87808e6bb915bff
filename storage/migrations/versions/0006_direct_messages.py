"""Where DMs about a request landed, so a retention purge can edit them.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "direct_messages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("request_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("ts", sa.String(length=32), nullable=False),
        sa.Column("created_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"], ["fr_requests.id"], name=op.f("fk_direct_messages_request_id_fr_requests")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_direct_messages")),
        sa.UniqueConstraint("channel", "ts", name="uq_direct_messages_channel_ts"),
    )
    with op.batch_alter_table("direct_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_direct_messages_request_id"), ["request_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("direct_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_direct_messages_request_id"))
    op.drop_table("direct_messages")

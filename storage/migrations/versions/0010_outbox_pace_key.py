"""Each outbox row's rate-limit key, so the dispatcher picks due rows without reading their payloads.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

STAGE_POST_KINDS = ("post_review", "stage_note")
UPDATE_KINDS = ("refresh_reviews", "retire_copy", "redact_dms")


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pace_key", sa.String(length=64), nullable=True))
    # Rows still to send (or to replay) get their key, as bot/outbox.py `pace_key_for` gives new rows.
    outbox = sa.table(
        "outbox",
        sa.column("id", sa.Integer),
        sa.column("kind", sa.String),
        sa.column("status", sa.String),
        sa.column("payload", sa.JSON),
        sa.column("pace_key", sa.String),
    )
    stages = sa.table("stage_reviews", sa.column("id", sa.Integer), sa.column("channel_id", sa.String))
    stage_channel = (
        sa.select(stages.c.channel_id)
        .where(stages.c.id == outbox.c.payload["stage_review_id"].as_integer())
        .scalar_subquery()
    )
    post = sa.literal("post:", sa.String)
    key = sa.case(
        (outbox.c.kind.in_(STAGE_POST_KINDS), post + stage_channel),
        (outbox.c.kind == "dm", post + outbox.c.payload["user"].as_string()),
        (outbox.c.kind == "channel_post", post + outbox.c.payload["channel"].as_string()),
        (outbox.c.kind.in_(UPDATE_KINDS), sa.literal("update", sa.String)),
        else_=sa.null(),
    )
    op.execute(outbox.update().where(outbox.c.status != "sent").values(pace_key=key))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("pace_key")

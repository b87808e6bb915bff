"""The index of requests by decision time also holds their urgency and status.

Revision ID: 0014
Revises: 0013

Every sweep looks for recent urgent approvals to ratify: decided in the last week, of an urgency the
policy names, approved or expired. By the index on decided_at alone PostgreSQL read every request decided
that week from the table to test its urgency and status (5,040 rows, 2.5-3.6 ms, in each sweep whether
or not anything is due); with both in the index it tests them there and reads only the matches (0.35 ms).
The digest's count of decisions in its period tests the status the same way. It replaces the index on
decided_at alone, whose queries it serves as well.
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_fr_requests_decided_at", table_name="fr_requests")
    op.create_index(
        "ix_fr_requests_decided", "fr_requests", ["decided_at", "urgency", "status"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_fr_requests_decided", table_name="fr_requests")
    op.create_index("ix_fr_requests_decided_at", "fr_requests", ["decided_at"], unique=False)

"""Stage reviews' pages keep a tenth free, so a review's claim by the sweep is a heap-only update.

Revision ID: 0013
Revises: 0012

The reminder sweep writes each due review's next check time; the dispatcher writes where its reviewer
message landed. Neither column is indexed, but on a full page PostgreSQL writes the new row version to
another page, and then a new entry in each of the table's five indexes, each index page's first change
after a checkpoint a full page in the WAL. With room left on the page the update is heap-only
(bench/NOTES.md item 42). New pages are filled to 90 %; pages written before keep their rows until
PostgreSQL rewrites them. SQLite has no such setting.
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE stage_reviews SET (fillfactor = 90)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE stage_reviews RESET (fillfactor)")

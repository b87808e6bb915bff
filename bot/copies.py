"""Stray copies of a reviewer message: the one duplicate the outbox can make (a post cut off mid-call and
sent again, see bot/outbox.py). Slack gives no way to find the copy, but a click on it tells us where it
is: the click still counts, and the copy is then edited into a button-less note pointing at the message
the bot keeps up to date, so at most one copy stays actionable."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.db import transaction
from storage.models import OutboxMessage, StageReview, utcnow

RETIRE_COPY = "retire_copy"


def note_clicked_message(
    db: sessionmaker[Session],
    stage_review: tuple[int, int],
    channel: str | None,
    ts: str | None,
    clock: Callable[[], datetime] = utcnow,
) -> bool:
    """Queue the retirement of the clicked message if it is not the stage's recorded message."""
    request_id, position = stage_review
    if not channel or not ts:
        return False
    with transaction(db) as session:
        stage = session.scalars(
            select(StageReview).where(StageReview.request_id == request_id, StageReview.position == position)
        ).one_or_none()
        if stage is None or stage.message_ts is None or stage.message_ts == ts:
            return False
        if channel != (stage.message_channel or stage.channel_id):
            return False  # not a copy of this stage's message (a forged or moved container)
        now = clock()
        session.add(
            OutboxMessage(
                request_id=request_id,
                kind=RETIRE_COPY,
                payload={"stage_review_id": stage.id, "channel": channel, "ts": ts},
                next_attempt_at=now,
                created_at=now,
            )
        )
    return True

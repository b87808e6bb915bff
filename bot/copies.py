"""Where the bot's posts landed in Slack, and what becomes of a second copy.

`chat.postMessage` has no idempotency key. When a send is cut off after Slack accepted it (the process
killed mid-call, the connection dropped, a 5xx after posting), the answer carrying the message's `ts` is
lost, and the outbox must post again or risk losing the message (bot/outbox.py). To close that gap every
post carries message metadata naming its outbox row, and Slack tells the app where each such message
landed: the `message_metadata_posted` event (scope `metadata.message:read`, see manifest.yml). Each landing
is recorded against its row, whichever arrives first, Slack's answer to the call or the event:

- the first landing recorded is the live message: the row counts as sent, and the reviewer message or DM is
  known even when the answer was lost, so later edits reach it and the dispatcher never posts it again;
- any other landing of the same row is a second copy: it is edited down to a pointer at the live message.

A click on a copy the bot never heard of (its event lost as well) is the last resort: the click still
counts, and that copy is retired the same way.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.pacing import UPDATE_KEY
from storage.db import transaction
from storage.models import DirectMessage, OutboxMessage, OutboxStatus, StageReview, utcnow
from storage.queries import stage_review

log = logging.getLogger(__name__)

RETIRE_COPY = "retire_copy"
METADATA_EVENT_TYPE = "fr_bot_outbox"  # manifest.yml subscribes to exactly this event type
_CHANNEL = re.compile(r"^[A-Z0-9]{1,32}$")
_TS = re.compile(r"^\d{1,12}\.\d{1,8}$")
REPORT_MARK_SECONDS = 5.0  # how often a process notes that Slack's reports arrive (ReportMarks)


class LandingOutcome(StrEnum):
    RECORDED = "recorded"  # the first landing of the row: its live message
    KNOWN = "known"  # the live message, heard of again
    DUPLICATE = "duplicate"  # another copy of the row's post: queued to be retired
    UNKNOWN = "unknown"  # no such outbox row


@dataclass(frozen=True)
class Landing:
    outbox_id: int
    channel: str
    ts: str
    permalink: str | None = None


class PostedRow(Protocol):
    """What a post's metadata names of the outbox row that sends it."""

    @property
    def id(self) -> int: ...
    @property
    def request_id(self) -> int | None: ...
    @property
    def kind(self) -> str: ...


def post_metadata(row: PostedRow) -> dict[str, Any]:
    """The metadata every post carries, so any copy in Slack can be traced to the row that made it.
    Workspace members can read message metadata: it names rows, never people or request text."""
    return {
        "event_type": METADATA_EVENT_TYPE,
        "event_payload": {"outbox_id": row.id, "request_id": row.request_id, "kind": row.kind},
    }


def landing_from_event(body: dict[str, Any], event: dict[str, Any]) -> Landing | None:
    """The landing a `message_metadata_posted` event reports, if it is one of this app's posts."""
    metadata = event.get("metadata") or {}
    if not isinstance(metadata, dict) or metadata.get("event_type") != METADATA_EVENT_TYPE:
        return None
    # Another app in the workspace could post the same metadata: only our own posts count.
    own_app = body.get("api_app_id")
    if not own_app or event.get("app_id") != own_app:
        log.warning(
            "ignored %s metadata posted by another app (%r)", METADATA_EVENT_TYPE, event.get("app_id")
        )
        return None
    payload = metadata.get("event_payload") or {}
    outbox_id = payload.get("outbox_id") if isinstance(payload, dict) else None
    channel, ts = event.get("channel_id"), event.get("message_ts")
    if (
        not isinstance(outbox_id, int)
        or isinstance(outbox_id, bool)
        or not isinstance(channel, str)
        or not _CHANNEL.match(channel)
        or not isinstance(ts, str)
        or not _TS.match(ts)
    ):
        log.warning("ignored a malformed %s metadata event", METADATA_EVENT_TYPE)
        return None
    return Landing(outbox_id=outbox_id, channel=channel, ts=ts)


class ReportMarks:
    """When this process last wrote down that Slack reports landings (`OutboxMessage.reported_at`).

    The mark only tells the dispatcher that reports arrive in this deployment (bot/outbox.py,
    `landings_reported`); one a few seconds is plenty, so a report of a post already recorded costs a
    read, not a write that would queue behind every other writer.
    """

    def __init__(self, every_seconds: float = REPORT_MARK_SECONDS) -> None:
        self.every_seconds = every_seconds
        self._last = -math.inf
        self._lock = threading.Lock()

    def due(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.every_seconds:
                return False
            self._last = now
            return True


def record_landing(
    db: sessionmaker[Session],
    landing: Landing,
    clock: Callable[[], datetime] = utcnow,
    marks: ReportMarks | None = None,
) -> LandingOutcome:
    """Record a landing reported by Slack's event."""
    now = clock()
    with transaction(db, read_only=True, single_statement=True) as session:
        # The usual case: the post Slack's answer already told us of. Nothing to write, unless it is
        # time to note again that reports arrive here.
        recorded = session.execute(
            select(OutboxMessage.posted_channel, OutboxMessage.posted_ts, OutboxMessage.reported_at).where(
                OutboxMessage.id == landing.outbox_id
            )
        ).one_or_none()
    where = (recorded.posted_channel, recorded.posted_ts) if recorded is not None else None
    reported = recorded.reported_at if recorded is not None else None
    if where == (landing.channel, landing.ts):
        if reported is None and (marks is None or marks.due()):
            with transaction(db) as session:
                session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id == landing.outbox_id, OutboxMessage.reported_at.is_(None))
                    .values(reported_at=now)
                )
        return LandingOutcome.KNOWN
    with transaction(db) as session:
        row = session.get(OutboxMessage, landing.outbox_id, with_for_update=True)
        if row is None:
            return LandingOutcome.UNKNOWN
        row.reported_at = row.reported_at or now
        outcome = land(session, row, landing, now)
    if outcome is LandingOutcome.RECORDED:
        log.info(
            "outbox row %s: Slack's event reports its post at %s/%s", landing.outbox_id, *_where(landing)
        )
    return outcome


def land(session: Session, row: OutboxMessage, landing: Landing, now: datetime) -> LandingOutcome:
    """Record where one of the row's posts landed. The caller holds the row locked."""
    where = (landing.channel, landing.ts)
    if row.posted_ts is not None:
        if (row.posted_channel, row.posted_ts) == where:
            return LandingOutcome.KNOWN
        _queue_retirement(session, row.request_id, landing, now, of_outbox_id=row.id)
        return LandingOutcome.DUPLICATE
    stage = _stage_of(session, row)
    if (
        stage is not None
        and stage.message_ts is not None
        and (stage.message_channel, stage.message_ts) != where
    ):
        # The stage already has its live message (e.g. from a replayed row): this is another copy.
        _queue_retirement(session, row.request_id, landing, now, stage_review_id=stage.id)
        return LandingOutcome.DUPLICATE
    row.posted_channel, row.posted_ts = where
    if row.status != OutboxStatus.SENT:
        # Slack has the message although its answer never reached us: the row is delivered.
        row.status, row.sent_at, row.last_error = OutboxStatus.SENT, now, None
        row.claimed_until = row.attempt_started_at = None
    if stage is not None:
        stage.message_channel, stage.message_ts = where
        stage.message_permalink = landing.permalink
    if row.kind == "dm" and row.request_id is not None:
        session.add(
            DirectMessage(request_id=row.request_id, channel=landing.channel, ts=landing.ts, created_at=now)
        )
    return LandingOutcome.RECORDED


def note_clicked_message(
    db: sessionmaker[Session],
    stage_review: tuple[int, int],
    channel: str | None,
    ts: str | None,
    clock: Callable[[], datetime] = utcnow,
    stage: StageReview | None = None,
) -> bool:
    """Queue the retirement of the clicked message if it is not the stage's recorded message. `stage`:
    the stage as the caller has just read it (a click reads its request anyway), to save a read."""
    request_id, position = stage_review
    if not channel or not ts:
        return False
    if stage is None:
        query = select(StageReview).where(
            StageReview.request_id == request_id, StageReview.position == position
        )
        with transaction(db, read_only=True) as session:
            stage = session.scalars(query).one_or_none()
    if stage is None or stage.message_ts is None or stage.message_ts == ts:
        return False  # the usual click: on the live message (no write, so no write lock)
    if channel != (stage.message_channel or stage.channel_id):
        return False  # not a copy of this stage's message (a forged or moved container)
    with transaction(db) as session:
        _queue_retirement(session, request_id, Landing(0, channel, ts), clock(), stage_review_id=stage.id)
    return True


def live_message(session: Session, payload: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(permalink, channel, ts) of the live message a retired copy points at."""
    if payload.get("stage_review_id") is not None:
        stage = stage_review(session, int(payload["stage_review_id"]))
        if stage is not None:
            return stage.message_permalink, stage.message_channel, stage.message_ts
    if payload.get("of_outbox_id") is not None:
        row = session.get(OutboxMessage, int(payload["of_outbox_id"]))
        if row is not None:
            stage = _stage_of(session, row)
            if stage is not None and stage.message_ts is not None:
                return stage.message_permalink, stage.message_channel, stage.message_ts
            return None, row.posted_channel, row.posted_ts
    return None, None, None


def _stage_of(session: Session, row: OutboxMessage) -> StageReview | None:
    if row.kind != "post_review":
        return None
    return stage_review(session, int(row.payload["stage_review_id"]))


def _queue_retirement(
    session: Session, request_id: int | None, copy: Landing, now: datetime, **live: int
) -> None:
    log.warning(
        "a second copy of a post (request %s) is at %s/%s: it will be marked as a duplicate",
        request_id,
        *_where(copy),
    )
    session.add(
        OutboxMessage(
            request_id=request_id,
            kind=RETIRE_COPY,
            payload={"channel": copy.channel, "ts": copy.ts, **live},
            next_attempt_at=now,
            created_at=now,
            pace_key=UPDATE_KEY,  # chat.update
        )
    )


def _where(landing: Landing) -> tuple[str, str]:
    return landing.channel, landing.ts

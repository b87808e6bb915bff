"""Deliver the outbox: the Slack calls owed for committed state changes.

Rows are claimed with a short lease (a conditional UPDATE, which works the same on SQLite and PostgreSQL),
sent outside any transaction, then marked sent. Per request, rows go out strictly in order: a row waits
while an earlier row of the same request is still pending. Reviewer messages are rendered from the
database at send time, so a late or retried update always shows the current state.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from bot import views
from bot.policy import Policy
from storage.db import DatabaseUnavailable, transaction
from storage.models import FrRequest, OutboxMessage, OutboxStatus, StageReview, utcnow
from storage.queries import request_with_history

log = logging.getLogger(__name__)

# Errors a retry cannot fix: an admin must act (invite the bot, fix the policy), then replay.
PERMANENT_ERRORS = {
    "channel_not_found": "the channel does not exist or the bot cannot see it: check the policy's channel ID",
    "not_in_channel": "the bot is not a member: invite it with /invite @FR Request Bot",
    "is_archived": "the channel is archived: unarchive it or change the policy",
    "invalid_blocks": "Slack refused the message layout: report this as a bot defect",
    "invalid_arguments": "Slack refused the call's arguments: report this as a bot defect",
    "msg_too_long": "the message is too long: report this as a bot defect",
    "no_text": "the message was empty: report this as a bot defect",
    "message_not_found": "the reviewer message was deleted in Slack",
    "cant_update_message": "the bot may not edit that message",
    "user_not_found": "the Slack user no longer exists",
    "cannot_dm_bot": "the recipient is a bot",
    "invalid_auth": "the bot token is wrong: check FRBOT_SLACK_BOT_TOKEN",
    "account_inactive": "the bot token was revoked: reinstall the app",
    "token_revoked": "the bot token was revoked: reinstall the app",
    "missing_scope": "the app lacks a scope: reinstall it from manifest.yml",
}
MAX_BACKOFF_SECONDS = 300.0


class PermanentFailure(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class RetryLater(Exception):
    def __init__(self, error: str, delay: float) -> None:
        super().__init__(error)
        self.error = error
        self.delay = delay


@dataclass(frozen=True)
class Sent:
    stage_review_id: int | None = None
    channel: str | None = None
    ts: str | None = None
    permalink: str | None = None


def backoff(attempts: int) -> float:
    """Exponential backoff with jitter, so many failed rows do not retry in lockstep."""
    return min(MAX_BACKOFF_SECONDS, 2.0 ** min(attempts, 10)) * random.uniform(0.75, 1.25)


class OutboxDispatcher:
    def __init__(
        self,
        db: sessionmaker[Session],
        client: WebClient,
        policy: Policy,
        clock: Callable[[], datetime] = utcnow,
        poll_seconds: float = 1.0,
        lease_seconds: float = 60.0,
        batch_size: int = 50,
        senders: dict[str, Callable[[dict[str, Any]], None]] | None = None,
    ) -> None:
        self.db = db
        self.client = client
        self.policy = policy
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.lease = timedelta(seconds=lease_seconds)
        self.batch_size = batch_size
        # Extra outbox kinds delivered by other modules (e.g. App Home publishing), by kind.
        self.senders = dict(senders or {})
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- Lifecycle --------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="outbox-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.run_once()
            except DatabaseUnavailable as exc:
                log.warning("outbox: database unavailable, will retry: %s", exc)
                sent = 0
            except Exception:
                log.exception("outbox: unexpected error; continuing")
                sent = 0
            if sent == 0:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    # --- One pass ---------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Send what is due now; return how many rows were handled."""
        handled = 0
        for row_id in self._due_ids():
            if self._stop.is_set():
                break
            row = self._claim(row_id)
            if row is None:
                continue  # another dispatcher took it
            self._deliver(row)
            handled += 1
        return handled

    def _due_ids(self) -> list[int]:
        now = self.clock()
        earlier = aliased(OutboxMessage)
        blocked = exists().where(
            and_(
                earlier.request_id == OutboxMessage.request_id,
                earlier.status == OutboxStatus.PENDING,
                earlier.id < OutboxMessage.id,
            )
        )
        query = (
            select(OutboxMessage.id)
            .where(
                OutboxMessage.status == OutboxStatus.PENDING,
                OutboxMessage.next_attempt_at <= now,
                or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now),
                or_(OutboxMessage.request_id.is_(None), ~blocked),
            )
            .order_by(OutboxMessage.id)
            .limit(self.batch_size)
        )
        with transaction(self.db, read_only=True) as session:
            return list(session.scalars(query))

    def _claim(self, row_id: int) -> OutboxMessage | None:
        now = self.clock()
        with transaction(self.db) as session:
            claimed = session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id == row_id,
                    OutboxMessage.status == OutboxStatus.PENDING,
                    or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now),
                )
                .values(claimed_until=now + self.lease)
            ).rowcount
            if claimed != 1:
                return None
            return session.get(OutboxMessage, row_id)

    def _deliver(self, row: OutboxMessage) -> None:
        try:
            sent = self._send(row)
        except PermanentFailure as exc:
            advice = PERMANENT_ERRORS.get(exc.error, "see the Slack error code")
            log.error(
                "outbox row %s (%s, request %s) failed for good: %s: %s. "
                "Fix it, then run `fr-bot outbox retry %s`.",
                row.id,
                row.kind,
                row.request_id,
                exc.error,
                advice,
                row.id,
            )
            self._finish(row.id, OutboxStatus.DEAD, error=f"{exc.error}: {advice}")
        except RetryLater as exc:
            log.warning("outbox row %s (%s): %s; retrying in %.1fs", row.id, row.kind, exc.error, exc.delay)
            self._finish(row.id, OutboxStatus.PENDING, error=exc.error, retry_in=exc.delay)
        else:
            self._finish(row.id, OutboxStatus.SENT, sent=sent)

    def _finish(
        self,
        row_id: int,
        status: str,
        error: str | None = None,
        retry_in: float | None = None,
        sent: Sent | None = None,
    ) -> None:
        now = self.clock()
        with transaction(self.db) as session:
            row = session.get(OutboxMessage, row_id)
            if row is None:
                return
            row.status = status
            row.claimed_until = None
            row.attempts += 1
            row.last_error = error
            if status == OutboxStatus.SENT:
                row.sent_at = now
            if retry_in is not None:
                row.next_attempt_at = now + timedelta(seconds=retry_in)
            if sent is not None and sent.stage_review_id is not None:
                stage = session.get(StageReview, sent.stage_review_id)
                if stage is not None:
                    stage.message_channel, stage.message_ts = sent.channel, sent.ts
                    stage.message_permalink = sent.permalink

    # --- Slack calls -------------------------------------------------------------------------------

    def _send(self, row: OutboxMessage) -> Sent:
        try:
            if row.kind == "post_review":
                return self._post_review(int(row.payload["stage_review_id"]))
            if row.kind == "refresh_reviews":
                self._refresh_reviews(int(row.payload["request_id"]))
                return Sent()
            if row.kind == "stage_note":
                self._stage_note(row.payload)
                return Sent()
            if row.kind in self.senders:
                self.senders[row.kind](row.payload)
                return Sent()
            if row.kind == "dm":
                payload = row.payload
                self.client.chat_postMessage(
                    channel=payload["user"], text=payload["text"], blocks=payload["blocks"]
                )
                return Sent()
            if row.kind == "channel_post":
                self._channel_post(row.payload)
                return Sent()
            raise PermanentFailure(f"unknown outbox kind {row.kind}")
        except SlackApiError as exc:
            raise classify(exc, row.attempts) from None
        except (OSError, TimeoutError) as exc:  # connection refused, reset, DNS, timeouts
            raise RetryLater(f"connection error: {type(exc).__name__}", backoff(row.attempts)) from None
        except (PermanentFailure, RetryLater, DatabaseUnavailable):
            raise
        except Exception as exc:
            # A defect, not a Slack fault: keep the row, back off, and make it loud in the log.
            log.exception("outbox row %s (%s): unexpected error", row.id, row.kind)
            raise RetryLater(f"unexpected error: {type(exc).__name__}", backoff(row.attempts)) from None

    def _load_stage(self, stage_review_id: int) -> tuple[FrRequest, StageReview] | None:
        with transaction(self.db, read_only=True) as session:
            stage = session.get(StageReview, stage_review_id)
            request = request_with_history(session, stage.request_id) if stage is not None else None
            if request is None:
                return None
            return request, request.stages[stage.position]

    def _post_review(self, stage_review_id: int) -> Sent:
        loaded = self._load_stage(stage_review_id)
        if loaded is None:
            raise PermanentFailure("stage review no longer exists")
        request, stage = loaded
        message = views.review_message(request, stage, self.policy, now=self.clock())
        if stage.message_ts:  # posted before a crash stopped us marking it: edit, never post twice
            self.client.chat_update(
                channel=stage.message_channel or stage.channel_id, ts=stage.message_ts, **_body(message)
            )
            return Sent()
        response = self.client.chat_postMessage(channel=stage.channel_id, **_body(message))
        channel, ts = response["channel"], response["ts"]
        return Sent(stage_review_id=stage.id, channel=channel, ts=ts, permalink=self._permalink(channel, ts))

    def _permalink(self, channel: str, ts: str) -> str | None:
        """Reminders and digests link to the reviewer message. The message is already posted, so a failure
        here must not fail the row (a retry would post it twice): links then use the archive URL."""
        try:
            return str(self.client.chat_getPermalink(channel=channel, message_ts=ts)["permalink"])
        except Exception as exc:
            log.warning(
                "chat.getPermalink for %s/%s failed (%s); links will use the archive URL", channel, ts, exc
            )
            return None

    def _channel_post(self, payload: dict[str, Any]) -> None:
        """A scheduler notice. With `thread_stage_review_id` it is threaded under that stage's reviewer
        message, looked up now because the message may have been posted after the notice was queued."""
        thread_ts = None
        stage_review_id = payload.get("thread_stage_review_id")
        if stage_review_id is not None:
            with transaction(self.db) as session:
                stage = session.get(StageReview, int(stage_review_id))
                if stage is not None and (stage.message_channel or stage.channel_id) == payload["channel"]:
                    thread_ts = stage.message_ts
        extra = {"thread_ts": thread_ts} if thread_ts else {}
        self.client.chat_postMessage(channel=payload["channel"], **_body(payload), **extra)

    def _stage_note(self, payload: dict[str, Any]) -> None:
        """A reply threaded under a stage's reviewer message (or in its channel if it was never posted)."""
        with transaction(self.db, read_only=True) as session:
            stage = session.get(StageReview, int(payload["stage_review_id"]))
        if stage is None:
            raise PermanentFailure("stage review no longer exists")
        thread = {"thread_ts": stage.message_ts} if stage.message_ts else {}
        channel = stage.message_channel or stage.channel_id
        self.client.chat_postMessage(
            channel=channel, text=payload["text"], blocks=payload["blocks"], **thread
        )

    def _refresh_reviews(self, request_id: int) -> None:
        with transaction(self.db, read_only=True) as session:
            request = request_with_history(session, request_id)
        if request is None:
            raise PermanentFailure("request no longer exists")
        for stage in request.stages:
            if stage.message_ts:
                message = views.review_message(request, stage, self.policy, now=self.clock())
                self.client.chat_update(
                    channel=stage.message_channel or stage.channel_id, ts=stage.message_ts, **_body(message)
                )


def _body(message: dict[str, Any]) -> dict[str, Any]:
    return {"text": message["text"], "blocks": message["blocks"]}


def classify(exc: SlackApiError, attempts: int) -> Exception:
    response = exc.response
    error = str(response.get("error") or f"http_{response.status_code}")
    if response.status_code == 429 or error == "ratelimited":
        retry_after = response.headers.get("Retry-After") or response.headers.get("retry-after") or "1"
        try:
            delay = float(retry_after if not isinstance(retry_after, list) else retry_after[0])
        except ValueError:
            delay = 1.0
        return RetryLater("rate limited", max(delay, 1.0))
    if error in PERMANENT_ERRORS:
        return PermanentFailure(error)
    return RetryLater(error, backoff(attempts))

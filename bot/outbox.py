"""Deliver the outbox: the Slack calls owed for committed state changes.

Rows are claimed with a short lease (a conditional UPDATE, which works the same on SQLite and PostgreSQL),
sent outside any transaction, then marked sent. Per request, rows go out strictly in order: a row waits
while an earlier row of the same request is still pending. Reviewer messages are rendered from the
database at send time, so a late or retried update always shows the current state.

Delivery guarantee (README, "Reliability"):
- Every row is sent until Slack accepts it, or it is parked as DEAD for an admin (`fr-bot outbox`).
- Before each Slack call the claim commits `attempt_started_at`; the outcome clears it. A failure Slack
  reports (429, an `ok: false` error, a refused connection) means Slack did nothing, so a retry cannot
  duplicate anything. Updates (`chat.update`) are idempotent and are simply redone.
- A post whose outcome is unknown (the process died mid-call, the connection broke after the request
  was sent, Slack answered 5xx) may already be in Slack. Every post carries metadata naming its row, and
  Slack's `message_metadata_posted` event reports where it landed (bot/copies.py): a row whose post is
  reported is delivered and never posted again. Where Slack's reports arrive, a post cut off by a crash
  waits `landing_wait` after the cut-off send began (Slack retries an undelivered event after one minute)
  before it is sent again, because a lost reviewer message would stall a request unseen; where they do
  not (the app not subscribed), it is sent again after its lease. If the event comes later still, the
  first landing recorded stays the live message and the other copy is edited into a pointer at it; the
  row's `doubtful_attempts` counts such sends and a repeated post says it was sent again. A clean
  shutdown (SIGTERM) never leaves a send in doubt.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import random
import socket
import threading
import time
import urllib.error
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import (
    Select,
    String,
    bindparam,
    cast,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased, sessionmaker

from bot import views
from bot.copies import RETIRE_COPY, Landing, ReportMarks, land, live_message, post_metadata
from bot.foreground import ANSWERS, background_thread
from bot.pacing import UPDATE_KEY, Pacer, post_key, posted_to
from bot.policy import Policy
from storage.db import DatabaseUnavailable, transaction
from storage.models import (
    DirectMessage,
    FrRequest,
    OutboxMessage,
    OutboxStatus,
    StageReview,
    UTCDateTime,
    utcnow,
)
from storage.queries import request_with_history, stage_review

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
    "is_inactive": "the channel is archived or frozen: unarchive it or change the policy",
    "posting_to_channel_denied": "the bot may not post in that channel: check its posting permissions",
    "restricted_action": "the workspace does not let the bot post there: check the channel's settings",
    "restricted_action_read_only_channel": "the channel is read-only: let the bot post or change the policy",
    "restricted_action_thread_only_channel": "the channel takes thread replies only: change the policy",
    "restricted_action_non_threadable_channel": "the channel takes no thread replies: change the policy",
    "restricted_action_thread_locked": "the thread is locked: unlock it in Slack",
    "edit_window_closed": "the workspace no longer lets the bot edit that message",
    "app_access_restricted": "the workspace restricts this app: ask a Slack admin to approve it",
    "ekm_access_denied": "the workspace's encryption keys refuse access: ask a Slack admin",
    "team_access_not_granted": "the token has no access to that workspace: reinstall the app",
    "no_permission": "the token may not do that: reinstall the app from manifest.yml",
    "not_allowed_token_type": "the wrong kind of token: use the bot token (xoxb-)",
    "not_enabled": "App Home is not enabled: turn on its Home tab (manifest.yml)",
    "invalid_blocks_format": "Slack refused the message layout: report this as a bot defect",
    "msg_blocks_too_long": "the message is too long: report this as a bot defect",
    "view_too_large": "the view is too large: report this as a bot defect",
    "metadata_too_large": "the message metadata is too large: report this as a bot defect",
    "invalid_metadata_format": "Slack refused the message metadata: report this as a bot defect",
    "invalid_metadata_schema": "Slack refused the message metadata: report this as a bot defect",
}
# Errors that say Slack could not act just now: retried, however often, as a 5xx or a dropped connection
# is (with the backoff, and every backoff ends when Slack answers again).
TRANSIENT_ERRORS = frozenset(
    {
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",
        "external_channel_migrating",
        "message_limit_exceeded",
        "update_failed",
    }
)
# Any other failure (an error code not known above, or an exception of the bot's own) is tried this many
# times, then dead-lettered: a row kept pending holds back every later row of its request (an officer's
# decision DM behind a refresh Slack will never take), and the dead-letter list shows it to an admin.
UNRECOGNISED_TRIES = 5
# Errors that say one message cannot be edited any more: a row editing several messages passes it over
# and edits the rest (it has nothing left to show there), where one such error made the whole row dead.
MESSAGE_GONE = frozenset(
    {
        "message_not_found",
        "cant_update_message",
        "channel_not_found",
        "is_archived",
        "is_inactive",
        "edit_window_closed",
        "not_in_channel",
    }
)
MAX_BACKOFF_SECONDS = 300.0
# A pass for a row that falls due later runs this long after: its clock must read the row as due.
DUE_MARGIN_SECONDS = 0.01
# How long a pass for a row due later waits for another pass to serve it: under load a pass runs every few
# milliseconds for new rows, and one more for each modal's outcome, a second after each save, would double
# them. A pace key's release is not delayed so: its rows have waited their turn already.
PASS_GRACE_SECONDS = 0.05
STALE_PASS_SECONDS = 5.0
# The last_error of a row whose cut-off post waits for Slack's report of where it landed.
LANDING_WAIT = "waiting for the landing report of a cut-off send"
# Kinds that post a new message (the rest edit or publish, which a retry simply redoes).
POST_KINDS = frozenset({"post_review", "dm", "channel_post", "stage_note"})
STAGE_POST_KINDS = ("post_review", "stage_note")  # posted to the channel of their stage
# How far back to look for Slack's reports of where posts landed: a process notes a report of a post it
# already knew of only every few seconds (bot/copies.py, ReportMarks), so at a busy time that is many posts.
RECENT_POSTS = 1000
REDACT_DMS = "redact_dms"
UPDATE_KINDS = ("refresh_reviews", RETIRE_COPY, REDACT_DMS)  # chat.update only
FINISH_TRIES = 5  # a sent row whose outcome cannot be saved would be sent again: try hard to save it

_OUTBOX = OutboxMessage.__table__
# The usual claim, in one statement (one round trip, no BEGIN/COMMIT on PostgreSQL): lease a due row whose
# last send finished, note that a send starts, and return what the send reads of it. A row whose last send
# was cut off (it has attempt_started_at) takes OutboxDispatcher._claim_cut_off's longer path. A Core
# statement: the ORM's UPDATE ... RETURNING of a whole entity cost twice the CPU (bench/NOTES.md item 37).
CLAIM_FINISHED = (
    update(_OUTBOX)
    .where(
        _OUTBOX.c.id == bindparam("row_id"),
        _OUTBOX.c.status == OutboxStatus.PENDING,
        _OUTBOX.c.attempt_started_at.is_(None),
        or_(_OUTBOX.c.claimed_until.is_(None), _OUTBOX.c.claimed_until < bindparam("now")),
        # Due still: a dispatcher's list can be seconds old, and another may have put the row off since
        # (a backoff, a rate limit's Retry-After, the wait for a cut-off post's landing).
        _OUTBOX.c.next_attempt_at <= bindparam("now"),
    )
    .values(claimed_until=bindparam("until"), attempt_started_at=bindparam("now"))
    .returning(
        _OUTBOX.c.id,
        _OUTBOX.c.request_id,
        _OUTBOX.c.kind,
        _OUTBOX.c.payload,
        _OUTBOX.c.attempts,
        _OUTBOX.c.doubtful_attempts,
        _OUTBOX.c.last_error,
    )
)
# The usual outcome of a row that posts nothing (a modal update, an edit, App Home), in one statement: the
# row lock the longer path takes is the statement's own, and there is no landing to record. Core, as
# CLAIM_FINISHED is.
SENT_WITHOUT_POST = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("row_id"))
    .values(
        status=OutboxStatus.SENT,
        claimed_until=None,
        attempt_started_at=None,
        attempts=_OUTBOX.c.attempts + 1,
        last_error=None,
        doubtful_attempts=_OUTBOX.c.doubtful_attempts + bindparam("doubtful"),
        sent_at=bindparam("now"),
    )
)


class PermanentFailure(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class RetryLater(Exception):
    def __init__(self, error: str, delay: float, doubtful: bool = False) -> None:
        super().__init__(error)
        self.error = error
        self.delay = delay
        # True when Slack may have acted on the call although we saw a failure.
        self.doubtful = doubtful


@dataclass(frozen=True)
class Claimed:
    """A claimed outbox row, as its send reads it."""

    id: int
    request_id: int | None
    kind: str
    payload: dict[str, Any]
    attempts: int
    doubtful_attempts: int
    last_error: str | None = None

    @classmethod
    def of(cls, row: OutboxMessage) -> Claimed:
        return cls(
            row.id, row.request_id, row.kind, row.payload, row.attempts, row.doubtful_attempts, row.last_error
        )


@dataclass(frozen=True)
class Sent:
    """What a send made: where its post landed, if it posted one."""

    channel: str | None = None
    ts: str | None = None
    permalink: str | None = None


def backoff(attempts: int) -> float:
    """Exponential backoff with jitter, so many failed rows do not retry in lockstep."""
    return min(MAX_BACKOFF_SECONDS, 2.0 ** min(attempts, 10)) * random.uniform(0.75, 1.25)


def dispatcher_client(client: WebClient, timeout: float) -> WebClient:
    """A client of its own for the dispatcher: no built-in retries (they would sleep on Retry-After with
    every other channel waiting, and retry posts blindly); the dispatcher retries by itself."""
    own = WebClient(token=client.token, base_url=client.base_url, timeout=int(max(1, timeout)))
    own.retry_handlers = []
    return own


class OutboxDispatcher:
    def __init__(
        self,
        db: sessionmaker[Session],
        client: WebClient,
        policy: Policy,
        clock: Callable[[], datetime] = utcnow,
        poll_seconds: float = 1.0,
        lease_seconds: float = 30.0,
        landing_wait_seconds: float = 75.0,
        batch_size: int = 200,
        pacer: Pacer | None = None,
        senders: dict[str, Callable[[dict[str, Any]], None]] | None = None,
    ) -> None:
        self.db = db
        self.client = client
        self.policy = policy
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.lease = timedelta(seconds=lease_seconds)
        self.landing_wait = timedelta(seconds=landing_wait_seconds)
        self.batch_size = batch_size
        self.pacer = pacer or Pacer()
        # Extra outbox kinds delivered by other modules (e.g. App Home publishing), by kind.
        self.senders = dict(senders or {})
        self._wake = threading.Event()
        self._wake_lock = threading.Lock()
        self._pass_wanted = False  # a wake that asks for a pass now, not only at a pace key's release
        # Monotonic times, heaps: when queued rows fall due (a pass then, or within the grace), and when
        # the pace keys of queued rows that are due already are free to send (a pass then).
        self._due_times: list[float] = []
        self._free_times: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._paced_wait: float | None = None  # soonest a row skipped for pacing may go
        # Rows whose Slack call is under way, and the landing Slack's event reported for each meanwhile.
        self._in_flight: dict[int, Landing | None] = {}
        self._in_flight_lock = threading.Lock()
        self.report_marks = ReportMarks()
        self._calling: str = UPDATE_KEY  # the rate-limit key of the Slack call in progress
        self._failing = False  # a send failed since the last success: Slack may be down
        # Set in an answering process whose outbox is sent by its follow-up process (bot/follow_up.py):
        # takes what `wake` was told, as `timing_of` keeps it.
        self.wake_elsewhere: Callable[[list[dict[str, Any]] | None], None] | None = None

    # --- Lifecycle --------------------------------------------------------------------------------

    def wake(self, queued: Sequence[Mapping[str, Any]] | None = None) -> None:
        """New rows may be due: pass now. `queued`: the values of the rows just committed (new requests'
        rows and rows of no request, as `workflow.outbox_row` gives them), when the caller has them: if
        none of them may go now, as each waits for a pace key that has sent its share or falls due later,
        the pass waits for the first of those moments instead. Under a burst into one channel each
        recorded batch would otherwise cost a pass (two due queries over the whole backlog) that can send
        nothing (bench/NOTES.md item 36); a row due later (a modal's outcome, a second after its save)
        would wait for the poll after it fell due (item 67)."""
        if self.wake_elsewhere is not None:
            self._wake.set()
            # The dispatcher there needs the rows' timing only (a row due later is passed for when it
            # falls due there too); their payloads stay out of the pipe.
            self.wake_elsewhere(None if queued is None else [timing_of(row) for row in queued])
            return
        now_wanted, due_in, free_in = self._pass_moments(queued) if queued is not None else (True, None, None)
        with self._wake_lock:
            if not now_wanted and due_in is None and free_in is None:
                return  # no rows
            self._pass_wanted = self._pass_wanted or now_wanted
            now = time.monotonic()
            for times, wait in ((self._due_times, due_in), (self._free_times, free_in)):
                if wait is None:
                    continue
                # Long past: served by a pass, or no loop runs here to take it (the heap stays small).
                while times and times[0] <= now - STALE_PASS_SECONDS:
                    heapq.heappop(times)
                heapq.heappush(times, now + wait)
        self._wake.set()

    def _pass_moments(self, queued: Sequence[Mapping[str, Any]]) -> tuple[bool, float | None, float | None]:
        """Whether one of the queued rows is due and may be sent now as far as the pace allows; in how many
        seconds the first of those due later falls due (a pass now would not see them); and, if none may
        go now, in how many seconds the first of those due now is free to go. Only each request's first
        row counts: the rest wait behind it."""
        now = self.clock()
        paced: list[float] = []
        due_later: list[float] = []
        requests: set[int] = set()
        for row in queued:
            request_id = row["request_id"]
            if request_id is not None:
                if request_id in requests:
                    continue
                requests.add(request_id)
            key = row["pace_key"]
            wait = self.pacer.ready_in([key]) if key else 0.0
            if row["next_attempt_at"] > now:
                # A moment after: the pass must find it due by its own clock.
                due_in = (row["next_attempt_at"] - now).total_seconds() + DUE_MARGIN_SECONDS
                due_later.append(max(wait, due_in))
            else:
                paced.append(wait)
        if any(wait <= 0 for wait in paced):
            return True, min(due_later, default=None), None
        return False, min(due_later, default=None), min(paced, default=None)

    def note_landing(self, landing: Landing) -> bool:
        """Take Slack's report of a post this dispatcher is still sending (the event often comes before
        the call's answer); it is recorded with the call's outcome, in the same write. False when the
        row is not in flight here: the caller records it (bot/copies.py, `record_landing`)."""
        with self._in_flight_lock:
            if landing.outbox_id not in self._in_flight or self._in_flight[landing.outbox_id] is not None:
                return False
            self._in_flight[landing.outbox_id] = landing
            return True

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="outbox-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the row being sent (so its outcome is recorded), then stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.lease.total_seconds())
            if self._thread.is_alive():
                log.warning("outbox: dispatcher still busy at shutdown; its row is retried after the lease")
            self._thread = None

    @background_thread()
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                # A pass sends until nothing is due but rows that fell due during it: the next wake, pace
                # key or poll finds those, rather than another query at once (bench/NOTES.md item 37).
                self.run_once()
            except DatabaseUnavailable as exc:
                log.warning("outbox: database unavailable, will retry: %s", exc)
            except Exception:
                log.exception("outbox: unexpected error; continuing")
            wait = self.poll_seconds
            if self._paced_wait is not None:
                wait = min(wait, max(self._paced_wait, 0.01))
            self._sleep(wait)

    def _sleep(self, wait: float) -> None:
        """Until the next pass: `wait` seconds, a wake that asks for a pass now, the moment rows queued
        earlier fall due (with PASS_GRACE_SECONDS for another pass to come first) or the moment their keys
        are free, whichever comes first."""
        until = time.monotonic() + wait
        while not self._stop.is_set():
            with self._wake_lock:
                self._wake.clear()  # before the flags are read: a wake after this sets it again
                now = time.monotonic()
                if self._due_times:
                    until = min(until, self._due_times[0] + PASS_GRACE_SECONDS)
                if self._free_times:
                    until = min(until, self._free_times[0])
                if self._pass_wanted or until <= now:
                    self._pass_wanted = False
                    for times in (self._due_times, self._free_times):
                        while times and times[0] <= now:
                            heapq.heappop(times)  # the pass about to run serves it
                    return
            self._wake.wait(until - now)

    # --- One pass ---------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Send what is due now and allowed by the pace; return how many rows were handled.

        Each query returns only the first due row of each pace key (a channel, a user, or chat.update) whose
        key may send now, so a backlog held by Slack's one-post-a-second limit costs one row per pass, not
        one row per waiting message.
        """
        handled = 0
        held: set[str] = set()  # keys that must wait: later rows for them wait too, keeping order
        tried: set[int] = set()
        self._paced_wait = None
        while not self._stop.is_set():
            found = self._due(held)
            due = [row for row in found if row[0] not in tried]
            if not due:
                break
            unblocked = False  # whether a row handled here may have let its request's next row go
            for row_id, key in due:
                if self._stop.is_set():
                    break
                tried.add(row_id)
                keys = [key] if key else []
                wait = self.pacer.ready_in(keys)
                if wait > 0:
                    held.update(keys)
                    self._paced_wait = wait if self._paced_wait is None else min(self._paced_wait, wait)
                    continue
                ANSWERS.step_aside()  # each row is a claim, a Slack call and an outcome: answers go first
                row = self._claim(row_id)
                if row is None:
                    continue  # another dispatcher took it, or it waits for Slack's report of a cut-off post
                self.pacer.take(keys)
                self._deliver(row, key)
                handled += 1
                unblocked = unblocked or row.request_id is not None
            if not unblocked and len(found) < self.batch_size:
                # The query gave every key's first due row, and each was sent or waits for its key; none
                # of those sent was followed by a row of its request. Asked again it would find only rows
                # that fell due meanwhile, which the next pass finds (bench/NOTES.md items 36 and 37). A
                # full batch may have left keys out.
                break
        return handled

    def _due(self, held: set[str]) -> list[tuple[int, str | None]]:
        """The first due row of each pace key not in `held` (every due row without a key), in id order,
        with its key. A row waits while an earlier row of its request is pending."""
        params: dict[str, Any] = {"now": self.clock(), "batch": self.batch_size}
        if held:
            params["held"] = sorted(held)
        with transaction(self.db, read_only=True) as session:
            rows = session.execute(_DUE_HOLDING if held else _DUE, params)
            return [(row.id, row.pace_key) for row in rows]

    def _claim(self, row_id: int) -> Claimed | None:
        """Lease the row and record that a send is starting, committed before the send."""
        now = self.clock()
        params = {"row_id": row_id, "now": now, "until": now + self.lease}
        with transaction(self.db, single_statement=True) as session:
            row = session.execute(CLAIM_FINISHED, params).one_or_none()
        return Claimed(**row._mapping) if row is not None else self._claim_cut_off(row_id, now)

    def _claim_cut_off(self, row_id: int, now: datetime) -> Claimed | None:
        """`_claim` of a row whose last send began and never recorded an outcome (or of a row that is not
        due after all: another dispatcher took it)."""
        with transaction(self.db) as session:
            claimed = session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id == row_id,
                    OutboxMessage.status == OutboxStatus.PENDING,
                    or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now),
                    OutboxMessage.next_attempt_at <= now,
                )
                .values(claimed_until=now + self.lease)
            ).rowcount
            if claimed != 1:
                return None
            row = session.get(OutboxMessage, row_id)
            assert row is not None
            if row.attempt_started_at is not None:
                # The last send began and never recorded an outcome: the process died during it.
                started, row.attempt_started_at = row.attempt_started_at, None
                row.doubtful_attempts += 1
                if (
                    row.kind in POST_KINDS
                    and now < started + self.landing_wait
                    and landings_reported(session)
                ):
                    # Slack may have the post: give its landing event time to say so before posting again.
                    row.next_attempt_at, row.claimed_until = started + self.landing_wait, None
                    row.last_error = LANDING_WAIT  # not a backoff that Slack answering again ends
                    log.warning(
                        "outbox row %s (%s, request %s): the send started at %s was cut off; waiting until "
                        "%s for Slack to report whether it landed before sending again",
                        row.id,
                        row.kind,
                        row.request_id,
                        started.isoformat(),
                        row.next_attempt_at.isoformat(),
                    )
                    return None
                log.warning(
                    "outbox row %s (%s, request %s): the send started at %s was cut off; Slack may "
                    "already have it, sending again%s",
                    row.id,
                    row.kind,
                    row.request_id,
                    started.isoformat(),
                    " (a second copy would be marked as such)" if row.kind in POST_KINDS else "",
                )
            row.attempt_started_at = now
            return Claimed.of(row)

    def _renew(self, row_id: int) -> None:
        """Extend the lease before another Slack call of a multi-call row."""
        with transaction(self.db) as session:
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row_id)
                .values(claimed_until=self.clock() + self.lease)
            )

    def _deliver(self, row: Claimed, key: str | None = None) -> None:
        with self._in_flight_lock:
            self._in_flight[row.id] = None
        try:
            sent = self._send(row)
        except (PermanentFailure, RetryLater) as exc:
            reported = self._landed(row.id)
            if reported is None:
                self._failed(row, exc, key)
                return
            # Slack's event showed the post landed although the call looked like a failure.
            log.info("outbox row %s: %s, but Slack reports the post landed", row.id, exc)
            sent = Sent(channel=reported.channel, ts=reported.ts)
        except BaseException:
            self._landed(row.id)
            raise
        else:
            reported = self._landed(row.id)
        self._finish(row.id, OutboxStatus.SENT, sent=sent, reported=reported)
        if self._failing:
            self._failing = False
            self._end_backoff()

    def _landed(self, row_id: int) -> Landing | None:
        with self._in_flight_lock:
            return self._in_flight.pop(row_id, None)

    def _failed(self, row: Claimed, exc: PermanentFailure | RetryLater, key: str | None) -> None:
        if isinstance(exc, PermanentFailure):
            advice = PERMANENT_ERRORS.get(exc.error, "see the Slack error code")
            log.error(
                "outbox row %s (%s to %s, request %s) failed for good: %s: %s. "
                "Fix it, then run `fr-bot outbox retry %s`.",
                row.id,
                row.kind,
                posted_to(key) or "Slack",
                row.request_id,
                exc.error,
                advice,
                row.id,
            )
            self._finish(row.id, OutboxStatus.DEAD, error=f"{exc.error}: {advice}")
            return
        log.warning("outbox row %s (%s): %s; retrying in %.1fs", row.id, row.kind, exc.error, exc.delay)
        self._failing = True
        self._finish(row.id, OutboxStatus.PENDING, error=exc.error, retry_in=exc.delay, doubtful=exc.doubtful)

    def _finish(
        self,
        row_id: int,
        status: str,
        error: str | None = None,
        retry_in: float | None = None,
        sent: Sent | None = None,
        doubtful: bool = False,
        reported: Landing | None = None,
    ) -> None:
        for attempt in range(1, FINISH_TRIES + 1):
            try:
                self._record_outcome(row_id, status, error, retry_in, sent, doubtful, reported)
                return
            except DatabaseUnavailable as exc:
                if attempt == FINISH_TRIES:
                    log.error(
                        "outbox row %s: sent but the database is unavailable to record it (%s); "
                        "it will be treated as a doubtful send after its lease",
                        row_id,
                        exc,
                    )
                    raise
                time.sleep(min(2.0**attempt, 8.0))

    def _end_backoff(self) -> None:
        """Slack answers again after failures: rows backing off from the outage are due now, not minutes
        later. Rows waiting out a rate limit keep their Retry-After."""
        now = self.clock()
        with transaction(self.db) as session:
            released = session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.status == OutboxStatus.PENDING,
                    OutboxMessage.next_attempt_at > now,
                    OutboxMessage.attempts > 0,
                    or_(
                        OutboxMessage.last_error.is_(None),
                        OutboxMessage.last_error.not_in(["rate limited", LANDING_WAIT]),
                    ),
                )
                .values(next_attempt_at=now)
            ).rowcount
        if released:
            log.info("outbox: Slack is answering again; %s delayed message(s) are due now", released)

    def _record_outcome(
        self,
        row_id: int,
        status: str,
        error: str | None,
        retry_in: float | None,
        sent: Sent | None,
        doubtful: bool,
        reported: Landing | None = None,
    ) -> None:
        now = self.clock()
        posted = sent is not None and bool(sent.channel and sent.ts)
        if (
            status == OutboxStatus.SENT
            and error is None
            and retry_in is None
            and not posted
            and reported is None
        ):
            with transaction(self.db, single_statement=True) as session:
                session.execute(SENT_WITHOUT_POST, {"row_id": row_id, "doubtful": int(doubtful), "now": now})
            return
        with transaction(self.db) as session:
            # Locked: Slack's landing event for this row may be recorded at the same moment (bot/copies.py).
            row = session.get(OutboxMessage, row_id, with_for_update=True)
            if row is None:
                return
            if row.status == OutboxStatus.SENT and status != OutboxStatus.SENT:
                # Slack's event already showed the post landed, although this call looked like a failure.
                row.claimed_until = row.attempt_started_at = None
                row.attempts += 1
                return
            row.status = status
            row.claimed_until = None
            row.attempt_started_at = None
            row.attempts += 1
            row.last_error = error
            if doubtful:
                row.doubtful_attempts += 1
            if status == OutboxStatus.SENT:
                row.sent_at = now
            if retry_in is not None:
                row.next_attempt_at = now + timedelta(seconds=retry_in)
            if sent is not None and sent.channel and sent.ts:
                land(session, row, Landing(row.id, sent.channel, sent.ts, sent.permalink), now)
            if reported is not None:
                row.reported_at = row.reported_at or now
                if sent is None or (reported.channel, reported.ts) != (sent.channel, sent.ts):
                    land(session, row, reported, now)  # another copy of this row's post

    # --- Slack calls -------------------------------------------------------------------------------

    def _send(self, row: Claimed) -> Sent:
        try:
            if row.kind == "post_review":
                return self._post_review(row, int(row.payload["stage_review_id"]))
            if row.kind == "refresh_reviews":
                self._refresh_reviews(row.id, int(row.payload["request_id"]))
                return Sent()
            if row.kind == RETIRE_COPY:
                self._retire_copy(row)
                return Sent()
            if row.kind == "channel_post":
                return self._channel_post(row)
            if row.kind == "stage_note":
                return self._stage_note(row)
            if row.kind in self.senders:
                self._calling = f"kind:{row.kind}"
                self.senders[row.kind](row.payload)
                return Sent()
            if row.kind == "dm":
                payload = row.payload
                self._calling = post_key(str(payload["user"]))
                response = self.client.chat_postMessage(
                    channel=payload["user"],
                    text=payload["text"],
                    blocks=_owning_up(row, payload["blocks"]),
                    metadata=post_metadata(row),
                )
                return Sent(channel=response["channel"], ts=response["ts"])
            if row.kind == REDACT_DMS:
                self._redact_dms(row.id, int(row.payload["request_id"]))
                return Sent()
            raise PermanentFailure(f"unknown outbox kind {row.kind}")
        except SlackApiError as exc:
            failure = classify(exc, row.attempts, row.last_error)
            if isinstance(failure, RetryLater) and exc.response.status_code == 429:
                self.pacer.hold(self._calling, failure.delay)
            raise failure from None
        except (OSError, TimeoutError) as exc:  # connection refused, reset, DNS, timeouts
            raise RetryLater(
                f"connection error: {type(exc).__name__}",
                backoff(row.attempts),
                doubtful=not _refused(exc),
            ) from None
        except (PermanentFailure, RetryLater, DatabaseUnavailable):
            raise
        except Exception as exc:
            # A defect, not a Slack fault: back off and make it loud in the log; dead after a few tries,
            # so that it does not hold the request's later rows.
            log.exception("outbox row %s (%s): unexpected error", row.id, row.kind)
            raise unrecognised(
                f"unexpected error: {type(exc).__name__}", row.attempts, row.last_error
            ) from None

    def _load_stage(self, row: Claimed, stage_review_id: int) -> tuple[FrRequest, StageReview] | None:
        """The request of a stage post with its history, and the stage. Reads that share no snapshot (each
        statement of a read-committed transaction takes its own anyway), so without BEGIN and COMMIT."""
        if row.request_id is None:  # every stage post is queued with its request
            return None
        with transaction(self.db, read_only=True, single_statement=True) as session:
            request = request_with_history(session, row.request_id)
        stage = next((s for s in request.stages if s.id == stage_review_id), None) if request else None
        return (request, stage) if request is not None and stage is not None else None

    def _post_review(self, row: Claimed, stage_review_id: int) -> Sent:
        loaded = self._load_stage(row, stage_review_id)
        if loaded is None:
            raise PermanentFailure("stage review no longer exists")
        request, stage = loaded
        message = views.review_message(request, stage, self.policy, now=self.clock())
        if stage.message_ts:  # posted before a crash stopped us marking it: edit, never post twice
            self._calling = UPDATE_KEY
            self.client.chat_update(
                channel=stage.message_channel or stage.channel_id, ts=stage.message_ts, **_body(message)
            )
            return Sent()
        self._calling = post_key(stage.channel_id)
        message["blocks"] = _owning_up(row, message["blocks"])
        response = self.client.chat_postMessage(
            channel=stage.channel_id, metadata=post_metadata(row), **_body(message)
        )
        channel, ts = response["channel"], response["ts"]
        return Sent(channel=channel, ts=ts, permalink=self._permalink(channel, ts))

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

    def _channel_post(self, row: Claimed) -> Sent:
        """A scheduler notice. With `thread_stage_review_id` it is threaded under that stage's reviewer
        message, looked up now because the message may have been posted after the notice was queued."""
        payload = row.payload
        thread_ts = None
        stage_review_id = payload.get("thread_stage_review_id")
        if stage_review_id is not None:
            with transaction(self.db, read_only=True, single_statement=True) as session:
                stage = stage_review(session, int(stage_review_id))
                if stage is not None and (stage.message_channel or stage.channel_id) == payload["channel"]:
                    thread_ts = stage.message_ts
        extra = {"thread_ts": thread_ts} if thread_ts else {}
        self._calling = post_key(str(payload["channel"]))
        response = self.client.chat_postMessage(
            channel=payload["channel"], metadata=post_metadata(row), **_body(payload), **extra
        )
        return Sent(channel=response["channel"], ts=response["ts"])

    def _stage_note(self, row: Claimed) -> Sent:
        """A reply threaded under a stage's reviewer message (or in its channel if it was never posted)."""
        payload = row.payload
        with transaction(self.db, read_only=True, single_statement=True) as session:
            stage = stage_review(session, int(payload["stage_review_id"]))
        if stage is None:
            raise PermanentFailure("stage review no longer exists")
        thread = {"thread_ts": stage.message_ts} if stage.message_ts else {}
        channel = stage.message_channel or stage.channel_id
        self._calling = post_key(stage.channel_id)
        response = self.client.chat_postMessage(
            channel=channel,
            text=payload["text"],
            blocks=payload["blocks"],
            metadata=post_metadata(row),
            **thread,
        )
        return Sent(channel=response["channel"], ts=response["ts"])

    def _retire_copy(self, row: Claimed) -> None:
        """Edit a second copy of a post down to a pointer at the live message (bot/copies.py)."""
        payload = row.payload
        with transaction(self.db, read_only=True) as session:
            permalink, channel, ts = live_message(session, payload)
            request = session.get(FrRequest, row.request_id) if row.request_id is not None else None
        reference = request.reference if request is not None else "this notice"
        message = views.retired_copy_message(reference, views.message_link(permalink, channel, ts))
        self._calling = UPDATE_KEY
        self.client.chat_update(channel=payload["channel"], ts=payload["ts"], **_body(message))

    def _redact_dms(self, row_id: int, request_id: int) -> None:
        """After a retention purge, every DM about the request, and every note threaded under its reviewer
        messages (a question with its answer), is edited down to a notice."""
        with transaction(self.db, read_only=True) as session:
            request = session.get(FrRequest, request_id)
            sent = session.execute(
                select(DirectMessage.channel, DirectMessage.ts)
                .where(DirectMessage.request_id == request_id)
                .order_by(DirectMessage.id)
            ).all()
            sent += session.execute(
                select(OutboxMessage.posted_channel, OutboxMessage.posted_ts)
                .where(
                    OutboxMessage.request_id == request_id,
                    OutboxMessage.kind == "stage_note",
                    OutboxMessage.posted_ts.is_not(None),
                )
                .order_by(OutboxMessage.id)
            ).all()
        if request is None:
            raise PermanentFailure("request no longer exists")
        message = _body(views.redacted_dm(request, self.policy))
        self._edit_each(row_id, [(channel, ts, message) for channel, ts in sent])

    def _refresh_reviews(self, row_id: int, request_id: int) -> None:
        with transaction(self.db, read_only=True, single_statement=True) as session:  # as _load_stage
            request = request_with_history(session, request_id)
        if request is None:
            raise PermanentFailure("request no longer exists")
        now = self.clock()
        edits = [
            (
                stage.message_channel or stage.channel_id,
                stage.message_ts,
                _body(views.review_message(request, stage, self.policy, now=now)),
            )
            for stage in request.stages
            if stage.message_ts
        ]
        self._edit_each(row_id, edits)

    def _edit_each(self, row_id: int, edits: list[tuple[str, str, dict[str, Any]]]) -> None:
        """chat.update each message in turn, the row's lease renewed and the pace kept between them. One
        that cannot be edited any more (deleted, its channel archived: MESSAGE_GONE) is logged and passed
        over: the rest are still edited, and a retry would only fail on it again."""
        for index, (channel, ts, body) in enumerate(edits):
            if index:
                self._renew(row_id)
                self.pacer.take([UPDATE_KEY])
            self._calling = UPDATE_KEY
            try:
                self.client.chat_update(channel=channel, ts=ts, **body)
            except SlackApiError as exc:
                error = str(exc.response.get("error") or "")
                if error not in MESSAGE_GONE:
                    raise
                log.warning(
                    "outbox row %s: message %s in %s cannot be edited (%s: %s); editing the others",
                    row_id,
                    ts,
                    channel,
                    error,
                    PERMANENT_ERRORS.get(error, "see the Slack error code"),
                )


def pace_key_for(
    session: Session, kind: str, payload: dict[str, Any], stage: StageReview | None = None
) -> str | None:
    """The rate-limit key of a row's Slack call (bot/pacing.py), stored with the row when it is queued:
    `post:<channel or user>` for a post, `update` for edits; None for calls Slack limits more loosely.
    `stage`: the stage a stage post goes to, when the caller has it (otherwise it is looked up)."""
    if kind in STAGE_POST_KINDS:
        if stage is None:
            stage = stage_review(session, int(payload.get("stage_review_id", 0)))
        return post_key(stage.channel_id) if stage is not None else None
    if kind == "dm":
        return post_key(str(payload.get("user", "")))
    if kind == "channel_post":
        return post_key(str(payload.get("channel", "")))
    if kind in UPDATE_KINDS:
        return UPDATE_KEY
    return None


def timing_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """What `OutboxDispatcher.wake` reads of a queued row's values."""
    return {key: row[key] for key in ("request_id", "pace_key", "next_attempt_at")}


def _due_query(holding: bool) -> Select[tuple[int, str | None]]:
    """Built once: constructing a statement this size costs more Python than running it."""
    now = bindparam("now", type_=UTCDateTime())
    # Written into the SQL, not bound: PostgreSQL reuses a generic plan for a prepared statement, and a
    # generic plan cannot use the partial index of pending rows for a status it does not know.
    pending = literal(OutboxStatus.PENDING, String, literal_execute=True)
    # A row waits while an earlier row of its request is pending: it goes only as its request's first
    # pending row. Found once per pass (from ix_outbox_pending_request), not probed for each pending row,
    # which PostgreSQL planned from stale statistics as a scan of every pending row for each one
    # (bench/NOTES.md item 30).
    earlier = aliased(OutboxMessage)
    firsts_of_requests = (
        select(func.min(earlier.id))
        .where(earlier.status == pending, earlier.request_id.is_not(None))
        .group_by(earlier.request_id)
    )
    candidates = (
        select(OutboxMessage.id, OutboxMessage.pace_key)
        .where(
            OutboxMessage.status == pending,
            OutboxMessage.next_attempt_at <= now,
            or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now),
            or_(OutboxMessage.request_id.is_(None), OutboxMessage.id.in_(firsts_of_requests)),
        )
        .subquery()
    )
    # One row per pace key (its first); rows without a key are each their own group.
    group = func.coalesce(candidates.c.pace_key, literal("row:", String) + cast(candidates.c.id, String))
    firsts = select(func.min(candidates.c.id)).group_by(group)
    if holding:
        held = bindparam("held", expanding=True)
        firsts = firsts.where(or_(candidates.c.pace_key.is_(None), candidates.c.pace_key.not_in(held)))
    firsts = firsts.order_by(func.min(candidates.c.id)).limit(bindparam("batch"))
    return (
        select(OutboxMessage.id, OutboxMessage.pace_key)
        .where(OutboxMessage.id.in_(firsts.scalar_subquery()))
        .order_by(OutboxMessage.id)
    )


_DUE = _due_query(holding=False)
_DUE_HOLDING = _due_query(holding=True)


def landings_reported(session: Session) -> bool:
    """Whether Slack reports where posts land in this deployment (the app subscribed to
    message_metadata_posted): one of the latest delivered posts was reported. Without reports, waiting
    for one would only delay the post."""
    latest = (
        select(OutboxMessage.reported_at)
        .where(OutboxMessage.status == OutboxStatus.SENT, OutboxMessage.kind.in_(POST_KINDS))
        .order_by(OutboxMessage.id.desc())
        .limit(RECENT_POSTS)
        .subquery()
    )
    return bool(
        session.scalar(select(func.count()).select_from(latest).where(latest.c.reported_at.is_not(None)))
    )


def _body(message: dict[str, Any]) -> dict[str, Any]:
    return {"text": message["text"], "blocks": message["blocks"]}


def _owning_up(row: Claimed, blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A post sent again after a cut-off send says so, so a second copy explains itself."""
    if row.doubtful_attempts == 0 or len(blocks) >= views.MESSAGE_BLOCK_LIMIT:
        return blocks
    note = "Sent again after an interruption: if an earlier copy appears, it is marked as a duplicate."
    return [*blocks, views.context(note)]


def _refused(exc: BaseException) -> bool:
    """True when the connection was never made, so Slack cannot have seen the call."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return isinstance(reason, (ConnectionRefusedError, socket.gaierror))


def unrecognised(error: str, attempts: int, last_error: str | None) -> Exception:
    """A failure the bot does not know: tried again until it has come UNRECOGNISED_TRIES times in a row
    (counted in the row's last_error, so retries of other failures before it, an outage's or a rate
    limit's, do not count), then dead-lettered."""
    mark = f"{error} (unrecognised, try "
    streak = 1
    if last_error is not None and last_error.startswith(mark):
        with contextlib.suppress(ValueError):
            streak = int(last_error[len(mark) :].split(" ", 1)[0]) + 1
    if streak >= UNRECOGNISED_TRIES:
        return PermanentFailure(error)
    return RetryLater(f"{mark}{streak} of {UNRECOGNISED_TRIES})", backoff(attempts))


def classify(exc: SlackApiError, attempts: int, last_error: str | None = None) -> Exception:
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
    if response.status_code >= 500 or error in TRANSIENT_ERRORS:
        # Slack documents that a 5xx may come after part of the work was done.
        return RetryLater(error, backoff(attempts), doubtful=response.status_code >= 500)
    return unrecognised(error, attempts, last_error)


# --- Administration: the dead-letter list and replay (`fr-bot outbox`) ------------------------------


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    request_id: int | None
    kind: str
    target: str
    status: str
    attempts: int
    doubtful_attempts: int
    next_attempt_at: datetime
    last_error: str | None


def _target(session: Session, row: OutboxMessage) -> str:
    if row.kind in POST_KINDS:
        key = row.pace_key or pace_key_for(session, row.kind, row.payload)
        return posted_to(key) or "?"
    if row.kind == "publish_home":
        return "App Home"
    if row.kind == REDACT_DMS:
        return "officer DMs"
    return "reviewer messages"


def list_outbox(db: sessionmaker[Session], status: str = OutboxStatus.DEAD) -> list[OutboxEntry]:
    """Rows with `status` (pending, dead, sent) or every row not yet sent for "all"."""
    query = select(OutboxMessage).order_by(OutboxMessage.id)
    if status == "all":
        query = query.where(OutboxMessage.status != OutboxStatus.SENT)
    else:
        query = query.where(OutboxMessage.status == status)
    with transaction(db) as session:
        return [
            OutboxEntry(
                id=row.id,
                request_id=row.request_id,
                kind=row.kind,
                target=_target(session, row),
                status=row.status,
                attempts=row.attempts,
                doubtful_attempts=row.doubtful_attempts,
                next_attempt_at=row.next_attempt_at,
                last_error=row.last_error,
            )
            for row in session.scalars(query)
        ]


def retry_outbox(
    db: sessionmaker[Session],
    ids: Iterable[int] = (),
    all_dead: bool = False,
    actor: str = "admin",
    clock: Callable[[], datetime] = utcnow,
) -> list[int]:
    """Put dead rows back in the queue, due now; returns the ids requeued. Each replay is audited."""
    from bot.workflow import audit  # the workflow imports this module's neighbours; import late

    now = clock()
    query = select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.DEAD)
    if not all_dead:
        wanted = list(ids)
        if not wanted:
            return []
        query = query.where(OutboxMessage.id.in_(wanted))
    requeued: list[int] = []
    with transaction(db) as session:
        for row in session.scalars(query.order_by(OutboxMessage.id).with_for_update()):
            audit(
                session,
                actor,
                "outbox_retried",
                row.request_id,
                now,
                outbox_id=row.id,
                kind=row.kind,
                last_error=row.last_error,
            )
            row.status = OutboxStatus.PENDING
            row.next_attempt_at = now
            row.claimed_until = None
            row.attempts = 0  # a fresh start: no backoff carried over from before the fix
            requeued.append(row.id)
    return requeued

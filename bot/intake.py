"""Record stored submissions as requests, after the officer's modal has been answered.

A submission is validated and answered, then its form stored as a receipt (`Workflow.receive`, one small
insert, just after the answer: handlers/views.py `store_request`); this worker then records it as a request
(reference, stages, audit events, outbox) and, in the same transaction, queues the update of the officer's
modal with the reference (an outbox row, MODAL_UPDATE, sent a moment later so that Slack has shown the
answer first). The officer's answer therefore waits for neither, and the request's transaction, with the
database-wide locks it takes (the year's reference counter and the audit chain head), which under load
queue behind each other (bench/RESULTS.md), holds up nobody's answer.

Nothing stored is lost between the two steps: a receipt not yet recorded is picked up again, by this process
after a failure (with backoff) or by any process after a restart (`orphan_after`), so a process that dies in
between leaves it to the next. Recording is idempotent (the submission key is unique), so two processes
recording the same receipt make one request.

One worker thread per process records receipts in order; on SQLite it is then the only long writer, so
a receipt's insert waits for at most one request's transaction. It records what arrives within a tenth of
a second together (`record_batch`): one transaction and one statement per table for several requests, so
that under load the recording costs the answers less CPU, not more. A batch that fails is recorded one
receipt at a time, so a receipt that cannot be recorded holds up no other.

On PostgreSQL the recording can move out of the processes that answer Slack: `fr-bot run --no-worker`
only stores receipts, and `fr-bot worker` processes (`records_all`) look for every unrecorded receipt each
`poll_seconds`, so the answering process spends its CPU on answers (bench/NOTES.md).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import select

from bot.foreground import ANSWERS, background_thread
from bot.workflow import Submitted, Workflow
from storage.db import DatabaseUnavailable, transaction
from storage.models import SubmissionReceipt, utcnow

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 60.0
ORPHAN_SCAN_LIMIT = 100
# Receipts recorded in one transaction at most: at 50 submissions a second a batch holds a few; the bound
# keeps one transaction, and the locks it takes last, short.
MAX_BATCH = 20
# How long a receipt waits for others to be recorded with. Recording several in one transaction costs
# a fraction of recording each (bench/NOTES.md); the officer's modal shows the reference a second after
# the answer in any case (MODAL_UPDATE_DELAY), and the reviewers' post waits this much longer at most.
BATCH_WINDOW_SECONDS = 0.1


class IntakeWorker:
    def __init__(
        self,
        workflow: Workflow,
        clock: Callable[[], datetime] = utcnow,
        poll_seconds: float = 5.0,
        orphan_after_seconds: float = 30.0,
        records_all: bool = False,
    ) -> None:
        self.workflow = workflow
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.orphan_after = timedelta(seconds=orphan_after_seconds)
        # A worker process: every scan takes every unrecorded receipt, however new, as this process does
        # not receive submissions itself.
        self.records_all = records_all
        self._queue: queue.Queue[int] = queue.Queue()
        self._retry_at: dict[int, float] = {}  # receipt id -> monotonic time of its next attempt
        self._failures: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_scan = False

    # --- Lifecycle --------------------------------------------------------------------------------

    def received(self, receipt_id: int) -> None:
        """A receipt was stored and its modal answered: record it now (or leave it to a worker process,
        when this one does not record: `fr-bot run --no-worker`)."""
        if self._thread is not None:
            self._queue.put(receipt_id)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="intake", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Record what was received before stopping (a receipt left over is recorded after restart)."""
        self._stop.set()
        self._queue.put(0)  # wake the loop
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("intake: still recording at shutdown; the rest is recorded after restart")
            self._thread = None

    @background_thread()
    def _loop(self) -> None:
        next_scan = 0.0  # at start: receipts a dead process left behind
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                now = time.monotonic()
                if now >= next_scan:
                    found = self._scan_orphans(everything=self.records_all or not self._started_scan)
                    self._started_scan = True
                    # A full batch: there is more to record, so look again at once.
                    next_scan = now if found >= ORPHAN_SCAN_LIMIT else now + self.poll_seconds
                due_retry = min(self._retry_at.values(), default=next_scan)
                try:
                    wait = max(0.0, min(next_scan, due_retry) - time.monotonic())
                    receipt_id = self._queue.get(timeout=wait)
                except queue.Empty:
                    receipt_id = None
                if receipt_id:
                    batch = [receipt_id, *self._queued(MAX_BATCH - 1)]
                    ANSWERS.step_aside()
                    self.record_batch(batch)
                for retry_id, at in list(self._retry_at.items()):
                    if at <= time.monotonic():
                        self.record(retry_id)
            except Exception:  # never let the thread die: receipts would wait for a restart
                log.exception("intake: unexpected error; continuing")
                time.sleep(1.0)

    # --- Work -------------------------------------------------------------------------------------

    def record(self, receipt_id: int) -> Submitted | None:
        """Record one receipt as a request; on failure keep it for a retry. Returns what was recorded."""
        self._retry_at.pop(receipt_id, None)
        try:
            result = self.workflow.record_receipt(receipt_id)
        except DatabaseUnavailable as exc:
            self._retry_later(receipt_id, f"database unavailable: {exc}")
            return None
        except Exception as exc:  # a defect: keep the receipt, back off, make it loud in the log
            log.exception("intake: could not record submission receipt %s", receipt_id)
            self._retry_later(receipt_id, f"{type(exc).__name__}: {exc}")
            return None
        self._failures.pop(receipt_id, None)
        return result

    def _queued(self, most: int) -> list[int]:
        """Receipts that arrive within BATCH_WINDOW_SECONDS, to be recorded with the one just taken."""
        found: list[int] = []
        deadline = time.monotonic() + BATCH_WINDOW_SECONDS
        while len(found) < most and not self._stop.is_set():
            try:
                receipt_id = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if receipt_id:
                found.append(receipt_id)
        return found

    def record_batch(self, receipt_ids: list[int]) -> None:
        """Record receipts together (one transaction; bot/workflow.py `record_receipts`). If that fails,
        each is recorded on its own, so one that cannot be recorded does not hold up the others."""
        if len(receipt_ids) == 1:
            self.record(receipt_ids[0])
            return
        for receipt_id in receipt_ids:
            self._retry_at.pop(receipt_id, None)
        try:
            self.workflow.record_receipts(receipt_ids)
        except Exception as exc:
            # The type only: a database error's text can quote the forms.
            log.warning(
                "intake: %d receipts together: %s; one at a time", len(receipt_ids), type(exc).__name__
            )
            for receipt_id in receipt_ids:
                self.record(receipt_id)
            return
        for receipt_id in receipt_ids:
            self._failures.pop(receipt_id, None)

    def _retry_later(self, receipt_id: int, error: str) -> None:
        failures = self._failures[receipt_id] = self._failures.get(receipt_id, 0) + 1
        delay = min(MAX_BACKOFF_SECONDS, 2.0**failures)
        self._retry_at[receipt_id] = time.monotonic() + delay
        log.warning("intake: receipt %s not recorded yet (%s); retrying in %.0fs", receipt_id, error, delay)
        with contextlib.suppress(DatabaseUnavailable):  # noted in the log; the receipt itself is safe
            self.workflow.failed_receipt(receipt_id, error)

    def _scan_orphans(self, everything: bool) -> int:
        """Receipts not recorded: all of them at start (a restart's leftovers) and in a worker process,
        otherwise only those older than `orphan_after` (another process that received them may have
        died). Returns how many it found."""
        cutoff = self.clock() - (timedelta(0) if everything else self.orphan_after)
        query = (
            select(SubmissionReceipt.id)
            .where(SubmissionReceipt.recorded_at.is_(None), SubmissionReceipt.received_at <= cutoff)
            .order_by(SubmissionReceipt.id)
            .limit(ORPHAN_SCAN_LIMIT)
        )
        if self._retry_at:  # waiting for their backoff: they must not fill the batch
            query = query.where(SubmissionReceipt.id.not_in(list(self._retry_at)))
        try:
            with transaction(self.workflow.db, read_only=True) as session:
                orphans = list(session.scalars(query))
        except DatabaseUnavailable as exc:
            log.warning("intake: database unavailable, will look for unrecorded submissions later: %s", exc)
            return 0
        if not self.records_all:
            for receipt_id in orphans:
                log.info("intake: recording submission receipt %s left unrecorded", receipt_id)
        for start in range(0, len(orphans), MAX_BATCH):
            self.record_batch(orphans[start : start + MAX_BATCH])
        return len(orphans)


def modal_updater(client: WebClient) -> Callable[[dict[str, Any]], None]:
    """The outbox sender of MODAL_UPDATE rows: a "received" modal, now with what was recorded (the
    officer's reference, a reviewer's decision or its refusal)."""

    def update(payload: dict[str, Any]) -> None:
        try:
            client.views_update(view_id=payload["view_id"], view=payload["view"])
        except SlackApiError as exc:
            if exc.response.get("error") != "not_found":
                raise
            # The modal was closed. A reference or a recorded decision is told elsewhere (the officer's
            # direct message, the request's message); a refusal only here, so it goes as a message.
            closed = payload.get("if_closed")
            if closed:
                client.chat_postMessage(channel=closed["user"], text=closed["text"])

    return update

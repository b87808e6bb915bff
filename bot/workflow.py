"""The workflow core: submit, authorise, decide, ask for information. Plain Python, no Slack.

Every method is one transaction: the state change, its audit events and the outbox rows that announce it
commit together or not at all. Handlers call these and render what they return.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, case, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from bot import deadlines, views
from bot.approvers import ApproverDirectory, ApproverLookupFailed
from bot.audit import (
    append_at_commit,
    append_deferred,
    append_event,
    prepare_event,
    texts_for,
    unseal,
)
from bot.forms import DecisionForm, DelegationForm, PostUseForm, RequestForm, tool_barred
from bot.outbox import pace_key_for
from bot.policy import LoadedPolicy, Stage, ToolStatus, Urgency
from bot.routing import choose_route
from storage.db import kept_for_the_commit, transaction
from storage.models import (
    AuditEvent,
    Comment,
    Decision,
    Delegation,
    FrRequest,
    InfoRequest,
    OutboxMessage,
    PostUseRecord,
    ReferenceCounter,
    RequestStatus,
    StageReview,
    StageStatus,
    SubmissionReceipt,
    utcnow,
)
from storage.queries import (
    pending_by_stage,
    request_for_review,
    request_with_history,
    requests_with_history,
)
from storage.recordsets import RowsWrite, write_rows
from storage.row_writes import RowChanges, write_at_commit, writes_at_commit

log = logging.getLogger(__name__)

# Tables written with Core statements where the ORM's bookkeeping costs more than the write (`submit`).
REQUESTS = FrRequest.__table__
STAGES = StageReview.__table__
OUTBOX = OutboxMessage.__table__
RECEIPTS = SubmissionReceipt.__table__
# Built once, as building a statement costs about as much as running it.
STORE_RECEIPT = insert(RECEIPTS).returning(RECEIPTS.c.id)
INSERT_REQUESTS = insert(REQUESTS).returning(REQUESTS.c.id, sort_by_parameter_order=True)
INSERT_STAGES = insert(STAGES).returning(STAGES.c.id, sort_by_parameter_order=True)
_DECISION_COLUMNS = (
    "request_id",
    "stage_review_id",
    "approver_id",
    "outcome",
    "rationale",
    "conditions",
    "reason_code",
    "policy_version",
    "on_behalf_of",
    "created_at",
)
DECISION_INSERT = RowsWrite(Decision.__table__, _DECISION_COLUMNS)
NUMBER_REQUEST = (
    update(REQUESTS).where(REQUESTS.c.id == bindparam("number")).values(reference=bindparam("reference"))
)
CLOSE_RECEIPT = (
    update(RECEIPTS)
    .where(RECEIPTS.c.id == bindparam("receipt"))
    .values(request_id=bindparam("request"), form=None, last_error=None)
)


@dataclass(frozen=True)
class Submitted:
    request_id: int
    reference: str
    route_name: str
    stage_names: tuple[str, ...]
    created: bool  # False when the same modal submission was already stored


@dataclass(frozen=True)
class Submission:
    """A checked form to record as a request (`receipt`: the stored form it comes from, and the modal)."""

    form: RequestForm
    requester_id: str
    team_id: str
    submission_key: str
    previous_request_id: int | None = None
    receipt: tuple[int, str | None] | None = None


@dataclass(frozen=True)
class Refusal:
    """Why an action was not allowed; `message` is fit to show the user."""

    code: str
    message: str


@dataclass(frozen=True)
class Decided:
    reference: str
    outcome: str
    request_status: str
    stage_name: str
    approvals: int
    required: int


@dataclass(frozen=True)
class InfoAsked:
    reference: str


def audit(
    session: Session, actor: str, action: str, request_id: int | None, at: datetime, **details: Any
) -> None:
    """Append an event to the tamper-evident chain (bot/audit.py) in the caller's transaction."""
    append_event(session, actor, action, request_id, at, details)


def audit_at_commit(
    session: Session, actor: str, action: str, request_id: int | None, at: datetime, **details: Any
) -> None:
    """Record an event that `Workflow._write` chains as the last step before its commit."""
    append_at_commit(session, prepare_event(actor, action, request_id, at, details))


def outbox_row(
    session: Session,
    kind: str,
    payload: dict[str, Any],
    request_id: int | None,
    at: datetime,
    stage: StageReview | None = None,
) -> dict[str, Any]:
    """A new outbox row's values; the other columns take their defaults. `stage`: a stage post's stage,
    when the caller has it."""
    return {
        "request_id": request_id,
        "kind": kind,
        "payload": payload,
        "next_attempt_at": at,
        "created_at": at,
        "pace_key": pace_key_for(session, kind, payload, stage),
    }


def enqueue(
    session: Session, kind: str, payload: dict[str, Any], request_id: int | None, at: datetime
) -> None:
    session.add(OutboxMessage(**outbox_row(session, kind, payload, request_id, at)))


_OUTBOX_DEFERRED_KEY = "frbot_outbox_deferred"


def enqueue_at_commit(
    session: Session, kind: str, payload: dict[str, Any], request_id: int | None, at: datetime
) -> None:
    """Queue an outbox row that `Workflow._write` inserts with the transaction's others, in one statement,
    before its audit events are chained: the rows of a decision (three or four) as ORM objects cost a
    sixth of its CPU in the flush (bench/NOTES.md item 54). For rows nothing in the transaction reads
    back; their ids follow the order they were queued in, and a request's messages go in id order."""
    session.info.setdefault(_OUTBOX_DEFERRED_KEY, []).append(
        outbox_row(session, kind, payload, request_id, at)
    )


# A transaction that queued Slack messages but never inserted them would commit a change untold.
kept_for_the_commit(
    _OUTBOX_DEFERRED_KEY,
    lambda: RuntimeError("outbox rows queued with enqueue_at_commit were never inserted"),
)


_OUTBOX_COLUMNS = ("request_id", "kind", "payload", "next_attempt_at", "created_at", "pace_key")
_OUTBOX_KEYS = set(_OUTBOX_COLUMNS)
# PostgreSQL: the batch as one JSON parameter (storage/recordsets.py); the other columns take their
# defaults, as in the executemany that SQLite (or a batch that cannot go as JSON) uses.
OUTBOX_INSERT = RowsWrite(OUTBOX, _OUTBOX_COLUMNS)


def insert_outbox(session: Session, rows: list[dict[str, Any]]) -> None:
    """Queue outbox rows (`outbox_row`'s values) with one statement. Their ids follow the list, and a
    request's messages are sent in id order."""
    if not rows:
        return
    if not all(row.keys() == _OUTBOX_KEYS for row in rows):
        # A row without one of the columns would read as NULL from JSON, not take the column's default.
        session.execute(insert(OUTBOX), rows)
        return
    write_rows(session, [(OUTBOX_INSERT, rows)])


# How many pages of the oldest pending stages "Awaiting my decision" looks through for ones the user may
# decide now (most pages hold them all; see Workflow.awaiting_decision).
AWAITING_PAGES = 10
MODAL_UPDATE = "update_modal"  # outbox kind (bot/intake.py sends it)
# Slack shows the "received" answer when our HTTP reply reaches it; an update sent sooner could land first.
MODAL_UPDATE_DELAY = timedelta(seconds=1)


class OutboxWake(Protocol):
    """Told after a commit that queued Slack messages (`OutboxDispatcher.wake`), with the rows' values
    when the caller has them."""

    def __call__(self, queued: Sequence[Mapping[str, Any]] | None = None) -> None: ...


def no_outbox(queued: Sequence[Mapping[str, Any]] | None = None) -> None:
    """A workflow's `on_outbox` where no dispatcher runs to be told (the rows wait for one)."""


class Workflow:
    def __init__(
        self,
        db: sessionmaker[Session],
        policy: LoadedPolicy,
        approvers: ApproverDirectory,
        clock: Callable[[], datetime] = utcnow,
        on_outbox: OutboxWake = no_outbox,
    ) -> None:
        self.db = db
        self.loaded = policy
        self.policy = policy.policy
        self.approvers = approvers
        self.clock = clock
        # Called after a commit that queued Slack messages, so the dispatcher sends them at once.
        self._on_outbox = on_outbox

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction whose outbox rows (`enqueue_at_commit`) are inserted and audit events
        (`audit_at_commit`) chained just before the commit.

        The chain head is a database-wide lock (every writer appends to the one chain); taken last, it is
        held for a few statements and the commit instead of the whole transaction.
        """
        with transaction(self.db) as session:
            yield session
            # The rows kept for the commit (a decision's own, then its Slack messages, all `outbox_row`'s
            # values): one statement on PostgreSQL (storage/recordsets.py write_rows).
            outbox = session.info.pop(_OUTBOX_DEFERRED_KEY, [])
            write_rows(session, [*writes_at_commit(session), (OUTBOX_INSERT, outbox)])
            append_deferred(session)
        now = self.clock()
        later = [row for row in outbox if row["next_attempt_at"] > now]
        if later:
            # Committed: the dispatcher passes when these fall due (a modal's outcome, a second after its
            # save), not at its next poll after that (bench/NOTES.md item 67). Rows due now are the
            # caller's to announce (`_on_outbox`), once it has finished.
            self._on_outbox(later)

    # --- Officer ---------------------------------------------------------------------------------

    def record_refused_submission(self, requester_id: str, tool_id: str, errors: dict[str, str]) -> None:
        """A submission the policy refused outright (prohibited tool, other process) is itself on record."""
        tool = self.policy.tool(tool_id)
        if tool is None or not (
            tool.status is ToolStatus.PROHIBITED or tool.category in self.policy.own_process
        ):
            return
        with self._write() as session:
            audit_at_commit(
                session,
                requester_id,
                "submission_refused",
                None,
                self.clock(),
                tool_id=tool.id,
                tool_status=tool.status.value,
                tool_category=tool.category.value,
                reason=errors.get("tool", ""),
            )

    def receive(
        self,
        form: RequestForm,
        requester_id: str,
        team_id: str,
        submission_key: str,
        previous_request_id: int | None = None,
        view_id: str | None = None,
    ) -> int:
        """Store a validated form, just after the officer's modal is answered; `record_receipt` turns it
        into a request. One small insert, kept apart from the request's own transaction (its counter,
        audit chain and outbox) so that a batch of those can be recorded together. Returns the receipt's
        id; the same modal submitted again returns the first receipt."""
        if self.policy.tool(form.tool) is None:
            raise ValueError(f"unknown tool {form.tool}")
        receipt = {
            "submission_key": submission_key,
            "requester_id": requester_id,
            "team_id": team_id,
            "previous_request_id": previous_request_id,
            "view_id": view_id,
            "form": form.model_dump(mode="json"),
            "received_at": self.clock(),
            "attempts": 0,
        }
        try:
            with transaction(self.db, single_statement=True) as session:
                return int(session.scalar(STORE_RECEIPT, receipt))
        except IntegrityError:
            with transaction(self.db, read_only=True) as session:
                found = session.scalar(
                    select(SubmissionReceipt.id).where(SubmissionReceipt.submission_key == submission_key)
                )
            if found is None:
                raise
            return int(found)

    def record_receipt(self, receipt_id: int) -> Submitted | None:
        """Turn a stored form into a request (at most once), clearing the receipt's copy of the form in the
        same transaction. None when the receipt does not exist."""
        return self.record_receipts([receipt_id]).get(receipt_id)

    def record_receipts(self, receipt_ids: list[int]) -> dict[int, Submitted]:
        """Record several receipts at once: one transaction, and one statement per table rather than per
        request, which is most of a request's cost (bench/NOTES.md). What each was recorded as, by receipt
        id; a receipt that does not exist is left out."""
        with transaction(self.db, read_only=True) as session:
            receipts = session.execute(select(RECEIPTS).where(RECEIPTS.c.id.in_(set(receipt_ids)))).all()
        done: dict[int, Submitted] = {}
        pending = []
        recorded: dict[str, int] = {}  # receipt id by submission key, for those already recorded
        for receipt in receipts:
            if receipt.recorded_at is None and receipt.form is not None:
                pending.append(receipt)
            else:
                recorded[receipt.submission_key] = receipt.id
        if recorded:
            with transaction(self.db, read_only=True) as session:
                for key, existing in self._by_submissions(session, list(recorded)).items():
                    done[recorded[key]] = self._submitted(existing, created=False)
        submissions = [
            Submission(
                RequestForm.model_validate(receipt.form),
                receipt.requester_id,
                receipt.team_id,
                receipt.submission_key,
                previous_request_id=receipt.previous_request_id,
                receipt=(receipt.id, receipt.view_id),
            )
            for receipt in sorted(pending, key=lambda receipt: receipt.id)  # references in the order received
        ]
        for submission, submitted in zip(submissions, self.submit_all(submissions), strict=True):
            assert submission.receipt is not None
            done[submission.receipt[0]] = submitted
        return done

    def submit(
        self,
        form: RequestForm,
        requester_id: str,
        team_id: str,
        submission_key: str,
        previous_request_id: int | None = None,
        receipt: tuple[int, str | None] | None = None,
    ) -> Submitted:
        """Record a request (`receipt`: the stored form it comes from, and the officer's modal)."""
        submission = Submission(form, requester_id, team_id, submission_key, previous_request_id, receipt)
        return self.submit_all([submission])[0]

    def submit_all(self, submissions: list[Submission]) -> list[Submitted]:
        """Record requests in one transaction, in the order given; each submission key at most once.

        Written with Core statements rather than the ORM's unit of work, one per table for all of them: a
        submission is the busiest write and runs beside the answers to Slack, and the unit of work's
        bookkeeping was most of its CPU time (bench/NOTES.md). Same rows, same order, same locks taken last.
        """
        if not submissions:
            return []
        if len({s.submission_key for s in submissions}) != len(submissions):
            raise ValueError("a submission key given twice")
        unknown = [s.form.tool for s in submissions if self.policy.tool(s.form.tool) is None]
        if unknown:  # check_request already refuses unknown tools; this guards direct callers
            raise ValueError(f"unknown tool {unknown[0]}")
        try:
            with self._write() as session:
                existing = self._by_submissions(session, [s.submission_key for s in submissions])
                fresh = [s for s in submissions if s.submission_key not in existing]
                queued = self._close_receipts(
                    session,
                    [
                        (s.receipt, existing[s.submission_key])
                        for s in submissions
                        if s.submission_key in existing
                    ],
                )
                previous = [self._previous(session, s.requester_id, s.previous_request_id) for s in fresh]
                requests = self._create(session, fresh, previous)
                queued += self._number(session, requests, [s.form for s in fresh], previous)
                queued += self._close_receipts(
                    session, [(s.receipt, r) for s, r in zip(fresh, requests, strict=True)]
                )
                insert_outbox(session, queued)
                created = {r.submission_key: r for r in requests}
                results = [
                    self._submitted(created[s.submission_key], created=True)
                    if s.submission_key in created
                    else self._submitted(existing[s.submission_key], created=False)
                    for s in submissions
                ]
        except IntegrityError:
            if len(submissions) > 1:  # another process recorded one of them: settle each on its own
                return [self.submit_all([submission])[0] for submission in submissions]
            # The same modal submitted twice at the same moment: the other transaction won.
            submission = submissions[0]
            with self._write() as session:
                found = self._by_submission(session, submission.submission_key)
                if found is None:
                    raise
                insert_outbox(session, self._close_receipts(session, [(submission.receipt, found)]))
                return [self._submitted(found, created=False)]
        if queued:
            self._on_outbox(queued)
        return results

    def _close_receipts(
        self, session: Session, recorded: list[tuple[tuple[int, str | None] | None, FrRequest]]
    ) -> list[dict[str, Any]]:
        """The requests now hold the forms: each receipt keeps only that it was recorded, and as what.
        Returns the outbox rows that show the officers' modals, answered "received", the reference a moment
        later (none for a request without a receipt or a modal)."""
        now = self.clock()
        closed = [
            {"receipt": receipt[0], "request": request.id}
            for receipt, request in recorded
            if receipt is not None
        ]
        if closed:
            session.execute(CLOSE_RECEIPT.values(recorded_at=now), closed)
        rows = []
        for receipt, request in recorded:
            if receipt is None or not receipt[1]:
                continue
            stages = tuple(stage.stage_name for stage in request.stages)
            payload = {"view_id": receipt[1], "view": views.recorded_modal(request.reference, stages)}
            # Not tied to the request's order: a closed modal must not hold up its other messages.
            rows.append(outbox_row(session, MODAL_UPDATE, payload, None, now + MODAL_UPDATE_DELAY))
        return rows

    def failed_receipt(self, receipt_id: int, error: str) -> None:
        """Note a failed attempt to record a receipt (bot/intake.py retries it)."""
        with transaction(self.db) as session:
            session.execute(
                update(SubmissionReceipt)
                .where(SubmissionReceipt.id == receipt_id)
                .values(attempts=SubmissionReceipt.attempts + 1, last_error=error[:500])
            )

    def _create(
        self, session: Session, submissions: list[Submission], previous: list[FrRequest | None]
    ) -> list[FrRequest]:
        """The requests and their stages, written without references yet (see `_number`). Returns them as
        objects outside the session, for the messages that announce them."""
        if not submissions:
            return []
        now = self.clock()
        values: list[dict[str, Any]] = []
        routes = []
        for submission, earlier in zip(submissions, previous, strict=True):
            tool = self.policy.tool(submission.form.tool)
            assert tool is not None  # `submit_all` refused unknown tools
            route = choose_route(self.policy, tool, submission.form)
            routes.append(route)
            values.append(
                {
                    # Unique and never committed: `_number` replaces it in this transaction.
                    "reference": f"~{secrets.token_hex(8)}",
                    "submission_key": submission.submission_key,
                    "team_id": submission.team_id,
                    "requester_id": submission.requester_id,
                    "status": RequestStatus.PENDING,
                    "tool_id": tool.id,
                    "tool_snapshot": tool.model_dump(mode="json"),
                    "route_name": route.name,
                    "policy_version": self.loaded.version,
                    "current_stage": 0,
                    "created_at": now,
                    "updated_at": now,
                    "previous_request_id": earlier.id if earlier is not None else None,
                    **submission.form.model_dump(exclude={"tool"}),
                }
            )
        ids = session.scalars(INSERT_REQUESTS, values).all()
        stages: list[dict[str, Any]] = []
        for request_id, submission, route in zip(ids, submissions, routes, strict=True):
            for position, stage_id in enumerate(route.stage_ids):
                stage = self.policy.stage(stage_id)
                first = position == 0
                due = (
                    deadlines.review_due(self.policy, stage.id, submission.form.urgency, now)
                    if first
                    else None
                )
                stages.append(
                    {
                        "request_id": request_id,
                        "position": position,
                        "stage_id": stage.id,
                        "stage_name": stage.name,
                        "channel_id": stage.channel,
                        "required_approvals": stage.required_approvals,
                        "status": StageStatus.PENDING if first else StageStatus.WAITING,
                        "started_at": now if first else None,
                        "due_at": due,
                    }
                )
        stage_ids = session.scalars(INSERT_STAGES, stages).all()
        requests = [
            FrRequest(id=request_id, legal_hold=False, **row)
            for request_id, row in zip(ids, values, strict=True)
        ]
        by_id = {request.id: request for request in requests}
        for stage_review_id, row in zip(stage_ids, stages, strict=True):
            by_id[row["request_id"]].stages.append(StageReview(id=stage_review_id, **row))
        return requests

    def _previous(self, session: Session, requester_id: str, previous_id: int | None) -> FrRequest | None:
        """The officer's own earlier request this one was started from (a re-request)."""
        previous = session.get(FrRequest, previous_id) if previous_id is not None else None
        # Only the same officer's own earlier request can be the origin of a re-request.
        return previous if previous is not None and previous.requester_id == requester_id else None

    def _number(
        self,
        session: Session,
        requests: list[FrRequest],
        forms: list[RequestForm],
        previous: list[FrRequest | None],
    ) -> list[dict[str, Any]]:
        """The end of a submission: the references, and what needs them. Returns the requests' outbox rows,
        in the order they are sent.

        Both database-wide locks come here, last: the year's reference counter (gapless references), then
        the audit chain head when the transaction ends (`_write`). Everything else is already written, so
        each is held for a few statements and the commit, not the whole submission.
        """
        if not requests:
            return []
        now = requests[0].created_at
        # Sealing the forms' free text is the costly part of their events: done before the locks.
        events = [
            (
                prepare_event(
                    request.requester_id,
                    "request_submitted",
                    request.id,
                    now,
                    {
                        "form": form.model_dump(mode="json"),
                        "policy_version": self.loaded.version,
                        "tool": request.tool_snapshot,
                    },
                ),
                prepare_event(
                    "system",
                    "request_routed",
                    request.id,
                    now,
                    {"route": request.route_name, "stages": [s.stage_id for s in request.stages]},
                ),
            )
            for request, form in zip(requests, forms, strict=True)
        ]
        references = self._next_references(session, now, len(requests))
        for request, reference in zip(requests, references, strict=True):
            request.reference = reference
        session.execute(NUMBER_REQUEST, [{"number": r.id, "reference": r.reference} for r in requests])
        queued: list[dict[str, Any]] = []
        for request, (submitted, routed), earlier in zip(requests, events, previous, strict=True):
            append_at_commit(session, submitted.with_plain(reference=request.reference))
            append_at_commit(session, routed)
            if earlier is not None:
                audit_at_commit(
                    session,
                    request.requester_id,
                    "request_rerequested",
                    request.id,
                    now,
                    previous=earlier.reference,
                    previous_status=earlier.status,
                )
            first = request.stages[0]
            queued += [
                outbox_row(session, "post_review", {"stage_review_id": first.id}, request.id, now, first),
                outbox_row(session, "dm", views.submitted_dm(request, self.policy), request.id, now),
                outbox_row(session, "publish_home", self._homes(request), request.id, now),
            ]
        return queued

    def _next_references(self, session: Session, now: datetime, count: int) -> list[str]:
        """The year's next `count` references. The counter row stays locked until commit: no gaps, no
        duplicates."""
        year = now.astimezone(self.policy.zone).year
        counters = ReferenceCounter.__table__
        bump = (
            update(counters)
            .where(counters.c.year == year)
            .values(last_value=counters.c.last_value + count)
            .returning(counters.c.last_value)
        )
        last = session.scalar(bump)  # one round trip: lock, increment, read
        if last is None:
            try:
                with session.begin_nested():
                    session.execute(insert(counters).values(year=year, last_value=0))
            except IntegrityError:
                pass  # another process created this year's counter first
            last = session.scalar(bump)
            assert last is not None
        return [f"FR-{year}-{value:05d}" for value in range(last - count + 1, last + 1)]

    @staticmethod
    def _by_submission(session: Session, key: str) -> FrRequest | None:
        return Workflow._by_submissions(session, [key]).get(key)

    @staticmethod
    def _by_submissions(session: Session, keys: list[str]) -> dict[str, FrRequest]:
        # Ids first: almost always there are none, and a plain query is cheaper than the ORM's.
        found = session.execute(
            select(REQUESTS.c.submission_key, REQUESTS.c.id).where(REQUESTS.c.submission_key.in_(keys))
        ).all()
        return {key: request for key, request_id in found if (request := session.get(FrRequest, request_id))}

    @staticmethod
    def _submitted(request: FrRequest, created: bool) -> Submitted:
        return Submitted(
            request_id=request.id,
            reference=request.reference,
            route_name=request.route_name,
            stage_names=tuple(s.stage_name for s in request.stages),
            created=created,
        )

    # --- Reviewer --------------------------------------------------------------------------------

    def _refusal(
        self, session: Session, request: FrRequest | None, position: int, user_id: str
    ) -> Refusal | None:
        return self._authority(session, request, position, user_id)[0]

    def _authority(
        self, session: Session, request: FrRequest | None, position: int, user_id: str
    ) -> tuple[Refusal | None, str | None]:
        """Why `user_id` may not act on stage `position` now (or None), and whom they act for as deputy."""
        refusal = self._stage_refusal(request, position, user_id)
        if refusal is not None or request is None:
            return refusal, None
        stage = request.stages[position]
        try:
            policy_stage = self.policy.stage(stage.stage_id)
        except StopIteration:
            message = f"The {stage.stage_name} stage is no longer in the policy; ask an admin."
            return Refusal("stage_removed", message), None
        on_behalf_of: str | None = None
        deciders = {d.approver_id for d in stage.decisions} | {d.on_behalf_of for d in stage.decisions}
        if user_id in deciders:  # decided already, in person or as a deputy: said so, whoever they stand for
            message = (
                f"A decision by you (or for you) on this stage of {request.reference} is already recorded."
            )
            return Refusal("already_decided", message), None
        try:
            if not self.approvers.is_approver(policy_stage, user_id):
                # For an approver who has not decided yet: a deputy of two approvers may still act for
                # the second once the first has decided for himself.
                on_behalf_of = self._delegator(
                    session, policy_stage, user_id, request.requester_id, already_decided=deciders
                )
                if on_behalf_of is None:
                    message = f"You are not an approver for the {stage.stage_name} stage."
                    return Refusal("not_approver", message), None
        except ApproverLookupFailed as exc:
            log.warning("approver lookup failed: %s", exc)
            message = "Slack could not confirm the approver list; try again shortly."
            return Refusal("approvers_unavailable", message), None
        if user_id in deciders or (on_behalf_of is not None and on_behalf_of in deciders):
            message = (
                f"A decision by you (or for you) on this stage of {request.reference} is already recorded."
            )
            return Refusal("already_decided", message), None
        return None, on_behalf_of

    def _approval_refusal(self, request: FrRequest | None) -> Refusal | None:
        """An approval needs the tool to be usable under the policy in force now: the register may have
        changed since the request was made (a tool prohibited, removed, or moved to a process of its
        own). Its reviewers can still reject it, and the officer withdraw it."""
        if request is None:
            return None
        barred = tool_barred(self.policy, request.tool_id)
        if barred is None:
            return None
        message = (
            f"{request.reference} cannot be approved under the policy in force: {barred} "
            "Reject it, or ask the officer to withdraw it."
        )
        return Refusal("tool_barred", message)

    def _groups_looked_up(self) -> None:
        """The user groups the policy names, asked of Slack now if their cache has expired, before a write
        transaction that checks who may act: the write must not hold its lock (on SQLite the process's
        one writer lock) while Slack answers. A failure is left for the check to meet and report."""
        groups = tuple(
            p
            for principals in (*(s.approvers for s in self.policy.stages), self.policy.leads)
            for p in principals
        )
        with contextlib.suppress(ApproverLookupFailed):
            self.approvers.members(groups)

    def _delegator(
        self,
        session: Session,
        stage: Stage,
        deputy_id: str,
        requester_id: str,
        already_decided: Collection[str | None] = (),
    ) -> str | None:
        """The approver of `stage` whose active delegation lets `deputy_id` decide today, if any, passing
        over those in `already_decided` (a decision by or for them is recorded on the stage)."""
        today = self.clock().astimezone(self.policy.zone).date()
        principals = session.scalars(
            select(Delegation.approver_id)
            .where(
                Delegation.deputy_id == deputy_id,
                Delegation.revoked_at.is_(None),
                Delegation.starts_on <= today,
                Delegation.ends_on >= today,
            )
            .distinct()
            .order_by(Delegation.approver_id)
        )
        for principal in principals:
            # A requester's own delegation never lets anyone decide for them on their own request.
            if principal == requester_id or principal in already_decided:
                continue
            if self.approvers.is_approver(stage, principal):
                return principal
        return None

    def _stage_refusal(self, request: FrRequest | None, position: int, user_id: str) -> Refusal | None:
        """The checks that need no directory look-up: request open, stage current, not the requester."""
        if request is None:
            return Refusal("unknown_request", "That request does not exist.")
        if request.status != RequestStatus.PENDING:
            return Refusal("request_closed", f"{request.reference} is already {request.status}.")
        if position < 0 or position >= len(request.stages):
            return Refusal("unknown_stage", "That review stage does not exist.")
        stage = request.stages[position]
        if request.current_stage != position or stage.status != StageStatus.PENDING:
            return Refusal(
                "stage_not_current",
                f"The {stage.stage_name} stage of {request.reference} is not awaiting a decision.",
            )
        if user_id == request.requester_id:
            return Refusal("own_request", "You cannot decide your own request.")
        return None

    def authorise(self, request_id: int, position: int, user_id: str, action: str) -> Refusal | None:
        """Check before opening a decision modal; a refusal is recorded in the audit trail."""
        self._groups_looked_up()
        with self._write() as session:
            request = request_with_history(session, request_id)
            refusal = self._refusal(session, request, position, user_id)
            if refusal is not None:
                self._refuse(session, request, position, user_id, action, refusal)
            return refusal

    def authorised_request(
        self, request_id: int, position: int, user_id: str, action: str
    ) -> FrRequest | Refusal:
        """`authorise` and `load` for a reviewer's click, in one read in the usual case: the request is
        read once, without a write lock (which on SQLite would queue every click behind every writer), and
        a write transaction is opened only to record a refusal. The read needs no snapshot of its own (on
        PostgreSQL one statement without BEGIN and COMMIT): the decision is authorised again as it is
        recorded."""
        with transaction(self.db, read_only=True, single_statement=True) as session:
            request = request_for_review(session, request_id)
            refusal = self._click_refusal(session, request, position, user_id, action)
        if refusal is None and request is not None:
            return request
        with self._write() as session:
            request = request_for_review(session, request_id)
            # Checked again in the writing transaction: the refusal recorded is the one that holds now.
            refusal = self._click_refusal(session, request, position, user_id, action)
            if refusal is None and request is not None:
                return request
            refusal = refusal or Refusal("gone", "That request no longer exists.")
            self._refuse(session, request, position, user_id, action, refusal)
            return refusal

    def _click_refusal(
        self, session: Session, request: FrRequest | None, position: int, user_id: str, action: str
    ) -> Refusal | None:
        """Why a reviewer's click on `action` is refused, as the form it opens would be: a question may
        come from an approver who has given their approval already (a stage waiting for a second one,
        as `request_info` allows); an approval needs the tool still allowed."""
        refusal = self._refusal(session, request, position, user_id)
        if refusal is not None and action == "request_info" and refusal.code == "already_decided":
            return None
        if refusal is None and action == "approve":
            return self._approval_refusal(request)
        return refusal

    def _refuse(
        self,
        session: Session,
        request: FrRequest | None,
        position: int,
        user_id: str,
        action: str,
        refusal: Refusal,
        view_id: str | None = None,
        what: str = "decision",
    ) -> None:
        """A refused action on record; a refused form's also shown in its "received" modal (`view_id`,
        `_show`)."""
        audit_at_commit(
            session,
            user_id,
            "action_refused",
            request.id if request else None,
            self.clock(),
            attempted=action,
            stage=position,
            reason=refusal.code,
            message=refusal.message,
        )
        self._show(session, view_id, user_id, refusal, what)

    def decide(
        self,
        request_id: int,
        position: int,
        user_id: str,
        outcome: str,
        form: DecisionForm,
        view_id: str | None = None,
        again: bool = False,
    ) -> Decided | Refusal:
        """Record a reviewer's decision, or the refusal of it. `view_id`: the reviewer's modal, answered
        "received" before this ran (handlers/views.py): the same transaction queues its update with the
        outcome, so the reviewer is shown what the database holds. `again`: the form is run again by a
        follow-up process after the one that ran it died before saying it was done (bot/follow_up.py):
        this reviewer's decision, if recorded, is shown as recorded, not refused as decided."""
        if outcome not in ("approve", "reject"):
            raise ValueError(outcome)
        self._groups_looked_up()
        try:
            with self._write() as session:
                # The row lock serialises deciders of one request on PostgreSQL;
                # SQLite's BEGIN IMMEDIATE does the same there.
                request = request_for_review(session, request_id, lock=True)
                refusal, on_behalf_of = self._authority(session, request, position, user_id)
                if refusal is None and outcome == "approve":
                    refusal = self._approval_refusal(request)
                recorded = (
                    _decided_already(request, position, user_id, outcome) if refusal and again else None
                )
                if refusal is not None and recorded is None:
                    self._refuse(session, request, position, user_id, outcome, refusal, view_id)
                    return refusal
                assert request is not None
                # Recorded by the run before (`again`): shown as recorded, nothing written again.
                result = recorded or self._apply_decision(
                    session, request, request.stages[position], user_id, outcome, form, on_behalf_of
                )
                shown = partial(
                    views.decision_outcome_modal,
                    result.reference,
                    result.outcome,
                    result.stage_name,
                    result.approvals,
                    result.required,
                )
                self._show(session, view_id, user_id, shown)
        except IntegrityError:
            # Two transactions raced past the lock, and the database kept one decision: told as such only
            # if that is what happened, not for any other constraint a defect broke.
            if not self._has_decided(request_id, position, user_id):
                raise
            refusal = Refusal("already_decided", "Your decision on this stage is already recorded.")
            self._show_alone(view_id, user_id, refusal)
            result = refusal
        self._on_outbox()
        return result

    def _show(
        self,
        session: Session,
        view_id: str | None,
        user_id: str,
        outcome: Callable[[], dict[str, Any]] | Refusal,
        what: str = "decision",
    ) -> None:
        """Queue the update of a "received" modal (a reviewer's decision or question, an everyday form:
        `what`; handlers/views.py) with what was recorded, the view `outcome` builds (only if there is a
        modal), or the refusal, a moment later: Slack shows the answer first. A refusal that finds the
        modal closed is sent to its author directly instead (bot/intake.py, `modal_updater`): they must
        not take it as recorded."""
        if view_id is None:
            return
        payload: dict[str, Any] = {"view_id": view_id}
        if isinstance(outcome, Refusal):
            payload["view"] = views.not_recorded_modal(outcome.message)
            payload["if_closed"] = {"user": user_id, "text": views.not_recorded_text(outcome.message, what)}
        else:
            payload["view"] = outcome()
        enqueue_at_commit(session, MODAL_UPDATE, payload, None, self.clock() + MODAL_UPDATE_DELAY)

    def _show_alone(
        self, view_id: str | None, user_id: str, refusal: Refusal, what: str = "decision"
    ) -> None:
        """`_show` for a refusal reached outside a write transaction, in one of its own."""
        if view_id is not None:
            with self._write() as session:
                self._show(session, view_id, user_id, refusal, what)

    def _has_decided(self, request_id: int, position: int, user_id: str) -> bool:
        with transaction(self.db, read_only=True) as session:
            return (
                session.scalar(
                    select(Decision.id)
                    .join(StageReview, StageReview.id == Decision.stage_review_id)
                    .where(
                        StageReview.request_id == request_id,
                        StageReview.position == position,
                        Decision.approver_id == user_id,
                    )
                    .limit(1)
                )
                is not None
            )

    def _apply_decision(
        self,
        session: Session,
        request: FrRequest,
        stage: StageReview,
        user_id: str,
        outcome: str,
        form: DecisionForm,
        on_behalf_of: str | None = None,
    ) -> Decided:
        now = self.clock()
        decision = {
            "request_id": request.id,
            "stage_review_id": stage.id,
            "approver_id": user_id,
            "outcome": outcome,
            "rationale": form.rationale,
            "conditions": form.conditions,
            "reason_code": form.reason_code,
            "policy_version": self.loaded.version,
            "on_behalf_of": on_behalf_of,
            "created_at": now,
        }
        # The rows are written as Core statements below, not flushed by the ORM (storage/row_writes.py):
        # the loaded objects take the new values as committed ones, for the answer and the messages.
        set_committed_value(stage, "decisions", [*stage.decisions, Decision(**decision)])
        changes = RowChanges()
        audit_at_commit(
            session,
            user_id,
            "decision_recorded",
            request.id,
            now,
            stage=stage.stage_id,
            outcome=outcome,
            rationale=form.rationale,
            conditions=form.conditions,
            reason_code=form.reason_code,
            policy_version=self.loaded.version,
            on_behalf_of=on_behalf_of,
        )
        changes.set(request, updated_at=now)
        if outcome == "reject":
            self._close(
                session, changes, request, stage, StageStatus.REJECTED, RequestStatus.REJECTED, now, user_id
            )
        elif len(stage.approvals) >= stage.required_approvals:
            changes.set(stage, status=StageStatus.APPROVED, completed_at=now)
            audit_at_commit(session, "system", "stage_approved", request.id, now, stage=stage.stage_id)
            following = stage.position + 1
            if following < len(request.stages):
                next_stage = request.stages[following]
                changes.set(
                    next_stage,
                    status=StageStatus.PENDING,
                    started_at=now,
                    due_at=deadlines.review_due(self.policy, next_stage.stage_id, request.urgency, now),
                )
                changes.set(request, current_stage=following)
                audit_at_commit(
                    session, "system", "stage_started", request.id, now, stage=next_stage.stage_id
                )
                enqueue_at_commit(session, "post_review", {"stage_review_id": next_stage.id}, request.id, now)
            else:
                hours = self.policy.approval_validity_hours.hours_for(Urgency(request.urgency))
                changes.set(request, valid_until=now + timedelta(hours=hours))
                self._close(
                    session,
                    changes,
                    request,
                    stage,
                    StageStatus.APPROVED,
                    RequestStatus.APPROVED,
                    now,
                    user_id,
                )
        # Sent with the transaction's outbox rows just before its commit (`_write`), in the order the ORM
        # wrote them: the request's row, its stages', then the decision (whose uniqueness per approver and
        # stage raises IntegrityError there if two deciders raced the lock).
        write_at_commit(session, [*changes.writes(), (DECISION_INSERT, [decision])])
        enqueue_at_commit(session, "refresh_reviews", {"request_id": request.id}, request.id, now)
        enqueue_at_commit(
            session,
            "dm",
            views.decision_dm(request, stage, user_id, outcome, form, self.policy),
            request.id,
            now,
        )
        self._touch_homes(session, request, now, closed=stage, actor=user_id)
        return Decided(
            reference=request.reference,
            outcome=outcome,
            request_status=request.status,
            stage_name=stage.stage_name,
            approvals=len(stage.approvals),
            required=stage.required_approvals,
        )

    def _close(
        self,
        session: Session,
        changes: RowChanges,
        request: FrRequest,
        stage: StageReview,
        stage_status: str,
        status: str,
        now: datetime,
        actor: str,
    ) -> None:
        changes.set(stage, status=stage_status, completed_at=now)
        for later in request.stages[stage.position + 1 :]:
            changes.set(later, status=StageStatus.CANCELLED)
        changes.set(request, status=status, decided_at=now, current_stage=None)
        details: dict[str, Any] = {"stage": stage.stage_id, "decided_by": actor}
        if request.valid_until is not None:
            details["valid_until"] = request.valid_until.isoformat()
        audit_at_commit(session, "system", f"request_{status}", request.id, now, **details)

    def request_info(
        self,
        request_id: int,
        position: int,
        user_id: str,
        question: str,
        submission_key: str,
        view_id: str | None = None,
    ) -> InfoAsked | Refusal:
        """Record a reviewer's question to the officer. `view_id`: the reviewer's modal, answered
        "received" (handlers/views.py), updated with the outcome (`_show`); so are the everyday forms'."""
        self._groups_looked_up()
        with self._write() as session:
            request = request_with_history(session, request_id, lock=True)
            refusal = self._refusal(session, request, position, user_id)
            if refusal is not None and refusal.code != "already_decided":
                self._refuse(
                    session, request, position, user_id, "request_info", refusal, view_id, "question"
                )
                return refusal
            assert request is not None
            duplicate = session.scalars(
                select(InfoRequest).where(InfoRequest.submission_key == submission_key)
            ).first()
            if duplicate is not None:
                return InfoAsked(request.reference)
            now = self.clock()
            stage = request.stages[position]
            stage.info_requests.append(
                InfoRequest(
                    request_id=request.id,
                    asked_by=user_id,
                    question=question,
                    submission_key=submission_key,
                    created_at=now,
                )
            )
            request.updated_at = now
            session.flush()
            audit_at_commit(
                session, user_id, "info_requested", request.id, now, stage=stage.stage_id, question=question
            )
            enqueue_at_commit(session, "refresh_reviews", {"request_id": request.id}, request.id, now)
            enqueue_at_commit(
                session,
                "dm",
                views.info_requested_dm(request, stage, stage.info_requests[-1]),
                request.id,
                now,
            )
            self._touch_homes(session, request, now)
            result = InfoAsked(request.reference)
            shown = partial(views.question_sent_modal, request.reference)
            self._show(session, view_id, user_id, shown, "question")
        self._on_outbox()
        return result

    # --- Reading ---------------------------------------------------------------------------------

    def load(self, request_id: int) -> FrRequest | None:
        with transaction(self.db, read_only=True) as session:
            return request_with_history(session, request_id)

    # --- Everyday flows: withdraw, answer, comment, post-use record, delegation, viewing --------------

    def _touch_homes(
        self,
        session: Session,
        request: FrRequest,
        now: datetime,
        closed: StageReview | None = None,
        actor: str | None = None,
    ) -> None:
        """Queue an App Home refresh for the people this request concerns: `closed`, a stage this change
        took out of its approvers' hands (decided, or cancelled by a withdrawal), whose "Awaiting my
        decision" lists showed it; `actor`, who made the change (a deputy, say)."""
        enqueue_at_commit(session, "publish_home", self._homes(request, closed, actor), request.id, now)

    def _homes(
        self, request: FrRequest, closed: StageReview | None = None, actor: str | None = None
    ) -> dict[str, Any]:
        """Whose App Home shows this request: the officer's, its current deciders', and those of a stage
        it has just left (`closed`) with who left it there (`actor`)."""
        principals: list[str] = []
        stages = [closed] if closed is not None else []
        if request.status == RequestStatus.PENDING and request.current is not None:
            stages.append(request.current)
        for stage in stages:
            with contextlib.suppress(StopIteration):
                principals += [p for p in self.policy.stage(stage.stage_id).approvers if p not in principals]
        users = [request.requester_id]
        if actor is not None and actor not in users:
            users.append(actor)
        return {"users": users, "principals": principals}

    def withdraw(self, request_id: int, user_id: str) -> Recorded | Refusal:
        with self._write() as session:
            request = request_for_review(session, request_id, lock=True)
            refusal = _not_the_officers(request, user_id, "withdraw it")
            if refusal is None and request is not None and request.status != RequestStatus.PENDING:
                refusal = Refusal("request_closed", f"{request.reference} is already {request.status}.")
            if refusal is not None:
                self._refuse(session, request, -1, user_id, "withdraw", refusal)
                return refusal
            assert request is not None
            now = self.clock()
            current = request.current
            for stage in request.stages:
                if stage.status in (StageStatus.PENDING, StageStatus.WAITING):
                    stage.status = StageStatus.CANCELLED
                    stage.completed_at = now if stage is current else None
            request.status = RequestStatus.WITHDRAWN
            request.decided_at = request.updated_at = now
            request.current_stage = None
            audit_at_commit(
                session,
                user_id,
                "request_withdrawn",
                request.id,
                now,
                stage=current.stage_id if current else None,
            )
            enqueue_at_commit(session, "refresh_reviews", {"request_id": request.id}, request.id, now)
            enqueue_at_commit(session, "dm", views.withdrawn_dm(request), request.id, now)
            self._touch_homes(session, request, now, closed=current)
            result = Recorded(request.reference)
        self._on_outbox()
        return result

    def answer_info(
        self, info_id: int, user_id: str, answer: str, view_id: str | None = None, again: bool = False
    ) -> Recorded | Refusal:
        """`again`: as `decide`'s; this answer, recorded by the run before, is shown as saved."""
        with self._write() as session:
            info = session.get(InfoRequest, info_id)
            request = request_with_history(session, info.request_id, lock=True) if info else None
            if request is not None:  # read again under the request's lock: answered meanwhile?
                info = session.get(InfoRequest, info_id, populate_existing=True)
            refusal = None
            already = False
            if info is None or request is None:
                refusal = Refusal("unknown_question", "That question does not exist.")
            elif request.requester_id != user_id:
                refusal = Refusal("not_requester", "Only the officer who made the request can answer.")
            elif again and info.answer is not None and info.answer == answer:
                already = True  # recorded by the run before: shown as saved, nothing written again
            elif info.answer is not None:
                refusal = Refusal("already_answered", "This question has already been answered.")
            elif request.status != RequestStatus.PENDING:
                refusal = Refusal("request_closed", f"{request.reference} is already {request.status}.")
            if refusal is not None:
                self._refuse(session, request, -1, user_id, "answer_info", refusal, view_id, "answer")
                return refusal
            assert info is not None and request is not None
            if not already:
                now = self.clock()
                info.answer, info.answered_at = answer, now
                request.updated_at = now
                stage = next(s for s in request.stages if s.id == info.stage_review_id)
                self._resume_clock(stage, request.urgency, info, now)
                audit_at_commit(
                    session,
                    user_id,
                    "info_answered",
                    request.id,
                    now,
                    stage=stage.stage_id,
                    question=info.question,
                    answer=answer,
                )
                enqueue_at_commit(session, "refresh_reviews", {"request_id": request.id}, request.id, now)
                note = views.answer_note(request, info)
                enqueue_at_commit(
                    session, "stage_note", {"stage_review_id": stage.id, **note}, request.id, now
                )
                self._touch_homes(session, request, now)
            result = Recorded(request.reference)
            self._show(session, view_id, user_id, views.answer_sent_modal, "answer")
        self._on_outbox()
        return result

    def _resume_clock(self, stage: StageReview, urgency: str, answered: InfoRequest, now: datetime) -> None:
        """The stage's deadline stood still while it waited on the officer: move it on by that wait, from
        the first of the questions that kept it waiting without a break (one asked while another was open
        stopped nothing new), counted as the deadline counts (deadlines.paused_due)."""
        if not self.policy.review_deadlines.pause_while_awaiting_officer or stage.due_at is None:
            return
        if any(i.answer is None and i.id != answered.id for i in stage.info_requests):
            return  # still waiting on another question: the clock stays stopped
        stopped = answered.created_at
        waits = [(i.created_at, i.answered_at or now) for i in stage.info_requests]
        for asked, answered_at in sorted(waits, reverse=True):  # latest asked first
            if asked < stopped <= answered_at:
                stopped = asked  # this wait ran on into the span: the clock stood still since it began
        stage.due_at = deadlines.paused_due(self.policy, stage.stage_id, urgency, stage.due_at, stopped, now)
        stage.next_check_at = None

    def question(self, info_id: int) -> tuple[FrRequest, InfoRequest] | None:
        with transaction(self.db, read_only=True) as session:
            info = session.get(InfoRequest, info_id)
            request = request_with_history(session, info.request_id) if info is not None else None
            return (request, info) if request is not None and info is not None else None

    def may_view(self, request: FrRequest, user_id: str, session: Session | None = None) -> bool:
        """The requester, anyone who may decide any stage of it or has decided one, a deputy today of an
        approver of any stage of it (their "Awaiting my decision" list offers its details), and leads.
        `session`: the caller's, if it has one, for the delegations."""
        if user_id == request.requester_id:
            return True
        if any(d.approver_id == user_id for s in request.stages for d in s.decisions):
            return True
        try:
            if self.approvers.includes(self.policy.leads, user_id):
                return True
            stages = []
            for stage in request.stages:
                with contextlib.suppress(StopIteration):
                    stages.append(self.policy.stage(stage.stage_id))
            if any(self.approvers.is_approver(stage, user_id) for stage in stages):
                return True
            with contextlib.ExitStack() as opened:
                if session is None:
                    session = opened.enter_context(transaction(self.db, read_only=True))
                return any(self._delegator(session, stage, user_id, request.requester_id) for stage in stages)
        except ApproverLookupFailed as exc:
            log.warning("approver lookup failed: %s", exc)
            return False

    def _allowed_to_look(
        self, reference_or_id: str | int, user_id: str, requester_too: bool = True
    ) -> tuple[FrRequest | None, bool]:
        """The request, and whether `user_id` may see it (`requester_too`: its officer included), asked in
        a read-only transaction before the write that records the look: on SQLite a write holds the
        process's one writer lock, and the answer can be a question to Slack (a user group's members),
        which every other write would wait behind."""
        with transaction(self.db, read_only=True) as session:
            if isinstance(reference_or_id, int):
                request = request_with_history(session, reference_or_id)
            else:
                found = session.scalar(select(FrRequest.id).where(FrRequest.reference == reference_or_id))
                request = request_with_history(session, found) if found is not None else None
            if request is None or (not requester_too and user_id == request.requester_id):
                return request, False
            return request, self.may_view(request, user_id, session)

    def view_request(self, reference_or_id: str | int, user_id: str, surface: str) -> RequestView | Refusal:
        """A request and its timeline for someone entitled to see it; every look is recorded."""
        request, allowed = self._allowed_to_look(reference_or_id, user_id)
        with self._write() as session:
            now = self.clock()
            if request is None or not allowed:
                # The same answer whether it exists or not: do not confirm references to outsiders.
                refusal = Refusal("not_yours", "That request is not one of yours, or does not exist.")
                audit(
                    session,
                    user_id,
                    "action_refused",
                    request.id if request else None,
                    now,
                    attempted=f"view:{surface}",
                    reason=refusal.code,
                    reference=str(reference_or_id),
                )
                return refusal
            audit(session, user_id, "request_viewed", request.id, now, surface=surface)
            rows = list(
                session.scalars(
                    select(AuditEvent).where(AuditEvent.request_id == request.id).order_by(AuditEvent.seq)
                )
            )
            # Free text in the chain is sealed; show the kept text (or the purge marker) instead.
            texts = texts_for(session, [row.seq for row in rows])
            events = [
                TimelineEntry(
                    row.actor_id,
                    row.action,
                    unseal(row.details, {path: text for path, (_, text) in texts.get(row.seq, {}).items()}),
                    row.created_at,
                )
                for row in rows
            ]
            comments = list(
                session.scalars(select(Comment).where(Comment.request_id == request.id).order_by(Comment.id))
            )
            post_use = session.scalar(select(PostUseRecord).where(PostUseRecord.request_id == request.id))
            return RequestView(request, events, comments, post_use)

    def start_again_from(self, request_id: int | None, user_id: str) -> FrRequest | Refusal:
        """The officer's own request that a new one starts from (Re-request): the form shows its details
        again, so the look is logged as a view (s.62), as Details and `/fr-request status` are."""
        with self._write() as session:
            request = request_with_history(session, request_id) if request_id is not None else None
            now = self.clock()
            if request is None or request.requester_id != user_id:
                refusal = Refusal("not_yours", "You can only start again from one of your own requests.")
                self._refuse(session, request, -1, user_id, "rerequest", refusal)
                return refusal
            audit(session, user_id, "request_viewed", request.id, now, surface="rerequest")
            return request

    def comment(
        self, request_id: int, user_id: str, text: str, submission_key: str, view_id: str | None = None
    ) -> Recorded | Refusal:
        # The request as that read loaded it serves the write too: only its id and reference are used.
        request, allowed = self._allowed_to_look(request_id, user_id, requester_too=False)
        with self._write() as session:
            if request is None or not allowed:
                refusal = Refusal(
                    "not_reviewer", "Only this request's reviewers and leads can comment on it."
                )
                self._refuse(session, request, -1, user_id, "comment", refusal, view_id, "comment")
                return refusal
            if session.scalar(select(Comment.id).where(Comment.submission_key == submission_key)) is not None:
                return Recorded(request.reference)
            now = self.clock()
            session.add(
                Comment(
                    request_id=request.id,
                    author_id=user_id,
                    text=text,
                    submission_key=submission_key,
                    created_at=now,
                )
            )
            audit_at_commit(session, user_id, "comment_added", request.id, now, comment=text)
            enqueue_at_commit(session, "refresh_reviews", {"request_id": request.id}, request.id, now)
            result = Recorded(request.reference)
            self._show(session, view_id, user_id, views.comment_added_modal, "comment")
        self._on_outbox()
        return result

    def record_post_use(
        self,
        request_id: int,
        user_id: str,
        form: PostUseForm,
        view_id: str | None = None,
        again: bool = False,
    ) -> Recorded | Refusal:
        """`again`: as `decide`'s; this record, kept by the run before, is shown as saved."""
        with self._write() as session:
            request = request_for_review(session, request_id, lock=True)
            refusal = _not_the_officers(request, user_id, "record its use")
            already = False
            if refusal is None and request is not None:
                if request.status != RequestStatus.APPROVED:
                    why = f"{request.reference} was not approved, so there is no use to record."
                    refusal = Refusal("not_approved", why)
                elif request.closed_at is not None:
                    kept = session.scalar(select(PostUseRecord).where(PostUseRecord.request_id == request.id))
                    already = (
                        again
                        and kept is not None
                        and all(getattr(kept, name) == value for name, value in form.model_dump().items())
                    )
                    if not already:
                        why = f"The use of {request.reference} is already recorded."
                        refusal = Refusal("already_recorded", why)
            if refusal is not None:
                self._refuse(
                    session, request, -1, user_id, "record_post_use", refusal, view_id, views.POST_USE_NAME
                )
                return refusal
            assert request is not None
            if not already:
                now = self.clock()
                session.add(
                    PostUseRecord(
                        request_id=request.id,
                        recorded_by=user_id,
                        created_at=now,
                        **form.model_dump(),
                    )
                )
                request.closed_at = request.updated_at = now
                audit_at_commit(session, user_id, "post_use_recorded", request.id, now, **form.model_dump())
                enqueue_at_commit(session, "refresh_reviews", {"request_id": request.id}, request.id, now)
                self._touch_homes(session, request, now)
            result = Recorded(request.reference)
            self._show(session, view_id, user_id, views.post_use_recorded_modal, views.POST_USE_NAME)
        self._on_outbox()
        return result

    def delegate(
        self, approver_id: str, form: DelegationForm, view_id: str | None = None
    ) -> Delegated | Refusal:
        # Asked before the transaction: a user group's members can come from Slack, and no write lock
        # is held while it answers.
        try:
            approves_something = any(self.approvers.is_approver(s, approver_id) for s in self.policy.stages)
        except ApproverLookupFailed:
            refusal = Refusal(
                "approvers_unavailable", "Slack could not confirm the approver list; try again."
            )
            self._show_alone(view_id, approver_id, refusal, "delegation")
            return refusal
        with self._write() as session:
            if not approves_something:
                refusal = Refusal("not_approver", "Only approvers can name a deputy.")
                self._refuse(session, None, -1, approver_id, "delegate", refusal, view_id, "delegation")
                return refusal
            now = self.clock()
            shown = partial(views.deputy_named_modal, form.deputy_id, form.starts_on, form.ends_on)
            same = session.scalar(
                select(Delegation.id).where(
                    Delegation.approver_id == approver_id,
                    Delegation.deputy_id == form.deputy_id,
                    Delegation.starts_on == form.starts_on,
                    Delegation.ends_on == form.ends_on,
                    Delegation.revoked_at.is_(None),
                )
            )
            if same is not None:
                # Named already (the form run again, or submitted twice): one delegation, one event.
                result = Delegated(same)
            else:
                delegation = Delegation(
                    approver_id=approver_id,
                    deputy_id=form.deputy_id,
                    starts_on=form.starts_on,
                    ends_on=form.ends_on,
                    created_at=now,
                )
                session.add(delegation)
                session.flush()
                _delegation_changed(
                    session,
                    "delegation_created",
                    delegation,
                    now,
                    starts_on=form.starts_on.isoformat(),
                    ends_on=form.ends_on.isoformat(),
                )
                result = Delegated(delegation.id)
            self._show(session, view_id, approver_id, shown, "delegation")
        self._on_outbox()
        return result

    def revoke_delegation(self, delegation_id: int, user_id: str) -> Delegated | Refusal:
        with self._write() as session:
            # Locked: two clicks on Revoke (through two processes) must not both pass the check below.
            delegation = session.get(Delegation, delegation_id, with_for_update={"key_share": True})
            if delegation is None or delegation.approver_id != user_id or delegation.revoked_at is not None:
                return Refusal("not_yours", "That delegation is not yours, or has already been revoked.")
            now = self.clock()
            delegation.revoked_at = now
            _delegation_changed(session, "delegation_revoked", delegation, now)
            result = Delegated(delegation.id)
        self._on_outbox()
        return result

    # --- Lists for App Home and `/fr-request list` -------------------------------------------------------

    def my_requests(self, user_id: str, limit: int = 10) -> list[FrRequest]:
        """The officer's requests still open (pending, or approved with the search's outcome to record)
        first, then the most recent: an old approval waiting for its outcome is not pushed off the list by
        newer requests."""
        still_open = and_(
            FrRequest.closed_at.is_(None),
            FrRequest.status.in_([RequestStatus.PENDING, RequestStatus.APPROVED]),
        )
        with transaction(self.db, read_only=True) as session:
            ids = session.scalars(
                select(FrRequest.id)
                .where(FrRequest.requester_id == user_id)
                .order_by(case((still_open, 0), else_=1), FrRequest.id.desc())
                .limit(limit)
            ).all()
            return requests_with_history(session, ids)

    def my_delegations(self, user_id: str) -> list[Delegation]:
        today = self.clock().astimezone(self.policy.zone).date()
        with transaction(self.db, read_only=True) as session:
            return list(
                session.scalars(
                    select(Delegation)
                    .where(
                        or_(Delegation.approver_id == user_id, Delegation.deputy_id == user_id),
                        Delegation.revoked_at.is_(None),
                        Delegation.ends_on >= today,
                    )
                    .order_by(Delegation.starts_on)
                )
            )

    def awaiting_decision(self, user_id: str, limit: int = 15) -> list[tuple[FrRequest, StageReview]]:
        """Pending stages this user may decide now (directly or as deputy) and has not decided yet."""
        with transaction(self.db, read_only=True) as session:
            stage_ids: list[str] = []
            for stage in self.policy.stages:
                try:
                    if self.approvers.is_approver(stage, user_id) or self._delegator(
                        session, stage, user_id, ""
                    ):
                        stage_ids.append(stage.id)
                except ApproverLookupFailed:
                    continue
            if not stage_ids:
                return []
            decided_by_them = exists().where(
                Decision.stage_review_id == StageReview.id,
                or_(Decision.approver_id == user_id, Decision.on_behalf_of == user_id),
            )
            candidates = (
                select(StageReview.request_id)
                .join(FrRequest, FrRequest.id == StageReview.request_id)
                .where(
                    StageReview.status == StageStatus.PENDING,
                    StageReview.stage_id.in_(stage_ids),
                    FrRequest.status == RequestStatus.PENDING,
                    FrRequest.requester_id != user_id,
                    ~decided_by_them,
                )
                .order_by(StageReview.started_at, StageReview.id)
            )
            found: list[tuple[FrRequest, StageReview]] = []
            page = limit * 2
            # Page on while the checks below pass over some (a deputy's principal's own request, say), so
            # a long queue of those does not hide the rest behind "Nothing is waiting for you".
            for offset in range(0, page * AWAITING_PAGES, page):
                ids = session.scalars(candidates.offset(offset).limit(page)).all()
                for request in requests_with_history(session, ids):
                    if request.current is None:
                        continue
                    if self._authority(session, request, request.current.position, user_id)[0] is None:
                        found.append((request, request.current))
                    if len(found) >= limit:
                        return found
                if len(ids) < page:
                    break
            return found

    def is_lead(self, user_id: str) -> bool:
        try:
            return self.approvers.includes(self.policy.leads, user_id)
        except ApproverLookupFailed:
            return False

    def overview(self) -> Overview:
        """Leads' live figures: pending by stage, oldest pending, today's decisions."""
        today_start = (
            self.clock().astimezone(self.policy.zone).replace(hour=0, minute=0, second=0, microsecond=0)
        )
        with transaction(self.db, read_only=True) as session:
            pending = pending_by_stage(session)
            decided = session.execute(
                select(FrRequest.status, func.count())
                .where(FrRequest.decided_at >= today_start)
                .group_by(FrRequest.status)
            ).all()
        return Overview(
            pending_by_stage=pending,
            decided_today={status: int(count) for status, count in decided},
        )


def _decided_already(request: FrRequest | None, position: int, user_id: str, outcome: str) -> Decided | None:
    """The outcome of `user_id`'s decision `outcome` on stage `position`, if it is recorded."""
    if request is None or not 0 <= position < len(request.stages):
        return None
    stage = request.stages[position]
    if not any(d.approver_id == user_id and d.outcome == outcome for d in stage.decisions):
        return None
    return Decided(
        reference=request.reference,
        outcome=outcome,
        request_status=request.status,
        stage_name=stage.stage_name,
        approvals=len(stage.approvals),
        required=stage.required_approvals,
    )


def _delegation_changed(
    session: Session, action: str, delegation: Delegation, now: datetime, **details: Any
) -> None:
    """A delegation named or revoked by its approver: audited, and both their App Homes refreshed (the
    deputy's "Awaiting my decision" lists the approver's stages while the delegation stands)."""
    approver, deputy = delegation.approver_id, delegation.deputy_id
    audit_at_commit(session, approver, action, None, now, delegation=delegation.id, deputy=deputy, **details)
    enqueue_at_commit(session, "publish_home", {"users": [approver, deputy], "principals": []}, None, now)


def _not_the_officers(request: FrRequest | None, user_id: str, doing: str) -> Refusal | None:
    """Officer-only actions: the request must exist and be the user's own."""
    if request is None:
        return Refusal("unknown_request", "That request does not exist.")
    if request.requester_id != user_id:
        return Refusal("not_requester", f"Only the officer who made the request can {doing}.")
    return None


@dataclass(frozen=True)
class Recorded:
    """An everyday action (withdraw, answer, comment, post-use record) was saved for this request."""

    reference: str


@dataclass(frozen=True)
class Delegated:
    delegation_id: int


@dataclass(frozen=True)
class TimelineEntry:
    """One audit event as people read it: its sealed free text restored."""

    actor_id: str
    action: str
    details: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class RequestView:
    request: FrRequest
    events: list[TimelineEntry]
    comments: list[Comment]
    post_use: PostUseRecord | None


@dataclass(frozen=True)
class Overview:
    pending_by_stage: list[tuple[str, int, datetime | None]]
    decided_today: dict[str, int]

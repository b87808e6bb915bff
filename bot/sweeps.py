"""The scheduler's work: overdue reminders, escalations, approval warnings and the leads' daily digest.

Each sweep is a plain function of a session factory, the policy and a clock, so tests call it directly and
any number of bot processes can run it at once against one database. What is due is decided by the
database, never by memory:

- a process claims due work in the database (PostgreSQL: `SELECT … FOR UPDATE SKIP LOCKED` on the rows,
  except a reviewer channel's reviews, which a transaction-scoped advisory lock per channel gives to one
  process so it consolidates the channel's reminders; SQLite: `BEGIN IMMEDIATE` serialises writers and a
  conditional UPDATE claims each row);
- each notice is recorded in `scheduled_notices` (unique on kind, subject and sequence) and each digest in
  `digests` (unique on channel and local date): a second process's insert fails, the final guard;
- the record, its audit event and the outbox row that sends it commit in one transaction, so a process
  killed mid-sweep leaves either all of it or none of it, and the outbox delivers what was committed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from functools import partial
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    BigInteger,
    Float,
    Result,
    and_,
    any_,
    bindparam,
    case,
    exists,
    func,
    literal,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, load_only, raiseload, sessionmaker

from bot import deadlines, views
from bot.audit import PreparedEvent, append_events, prepare_event
from bot.policy import Policy
from bot.workflow import audit, enqueue, insert_outbox, outbox_row
from storage.db import dialect_of, transaction
from storage.models import (
    AuditEvent,
    Decision,
    DigestRun,
    DigestStatus,
    FrRequest,
    InfoRequest,
    NoticeKind,
    RequestStatus,
    ScheduledNotice,
    StageReview,
    StageStatus,
)
from storage.queries import IS_PENDING_STAGE, pending_by_stage
from storage.recordsets import PARAMETER, execute_batch, records, recordset

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
BATCH_SIZE = 200
# Missed digests older than this are not back-filled one by one after a long outage.
MAX_MISSED_DAYS_RECORDED = 31
# Ratification reminders are for recent approvals only: an old database gaining the feature is not flooded.
RATIFICATION_LOOKBACK = timedelta(days=7)
# How many overdue items a stored digest summary keeps (the message shows `digest.list_limit` of them).
DIGEST_ITEMS_KEPT = 200


@dataclass
class SweepReport:
    """What one run queued; the counts are of notices recorded, not of Slack messages."""

    reminders: int = 0
    escalations: int = 0
    expiry_warnings: int = 0
    ratifications: int = 0
    post_use_reminders: int = 0
    digests_sent: int = 0
    digests_missed: int = 0
    messages_queued: int = 0

    def __str__(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name))

    def add(self, other: SweepReport) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def run_sweeps(db: sessionmaker[Session], policy: Policy, clock: Clock) -> SweepReport:
    """Every sweep once (SWEEPS); what the scheduler's interval job runs.

    On PostgreSQL the sweeps run at once (`_all_of`): a backlog's sweep took 84 ms against 96
    in turn (bench/NOTES.md item 48). On SQLite they run in turn. Either way a sweep that fails does not
    stop the others (a broken digest must not hold back reminders); its error is raised once all have
    run."""
    report = SweepReport()
    _all_of(db, report, [partial(sweep, db, policy, clock) for sweep in SWEEPS])
    return report


# Threads for the parts of a sweep run at once: each holds a pooled connection, and on a small machine
# more threads than this only take turns for the GIL and the cores.
MOST_AT_ONCE = 4


def _all_of(
    db: sessionmaker[Session], report: SweepReport, parts: list[Callable[[SweepReport], object]]
) -> None:
    """Run every part, each given a report of its own, and add their reports to `report`.

    On PostgreSQL the parts run at once, each in its own thread on its own connection. They must be
    independent, as the sweeps and the reviewer channels are: each claims its work in the database as it
    would against another process's sweeps (tests/test_sweeps.py runs them at once from several), and
    every transaction takes the audit chain's head last. Together they spend about as long waiting for
    the server as running Python, so one's statements run while another builds its rows. SQLite has one
    writer at a time, so there they run in turn. A part that fails does not stop the others; the first
    failure is raised once all have run (what the others queued is committed and in `report`)."""
    reports = [SweepReport() for _ in parts]
    failures: list[BaseException] = []
    if dialect_of(db) == "postgresql" and len(parts) > 1:
        # Threads started here keep this one's CPU priority (the scheduler's background niceness).
        workers = min(len(parts), MOST_AT_ONCE)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fr-bot-sweep") as pool:
            running = [pool.submit(part, own) for part, own in zip(parts, reports, strict=True)]
        failures = [failure for done in running if (failure := done.exception()) is not None]
    else:
        for part, own in zip(parts, reports, strict=True):
            try:
                part(own)
            except Exception as exc:  # raised below, after the other parts
                failures.append(exc)
    for own in reports:
        report.add(own)
    if failures:
        raise failures[0]


# --- Claiming -------------------------------------------------------------------------------------------


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _one_of(session: Session, column: Any, values: list[Any]) -> Any:
    """`column IN (values)` for a batch's ids. PostgreSQL: `column = ANY(:array)`, one parameter whatever
    the batch, so the statement's text is the same for every batch; an IN list has a parameter per id,
    and each new length is a new text that psycopg converts and PostgreSQL parses and plans again (a list
    of 150 to 200 ids 2.9 ms against 1.2, bench/NOTES.md item 44). SQLite keeps the IN list."""
    if _is_postgres(session):
        return column == any_(bindparam(None, values, type_=postgresql.ARRAY(column.type)))
    return column.in_(values)


def _channel_lock(session: Session, channel: str) -> list[Any]:
    """Only one process works on a reviewer channel at a time, so its reminders are consolidated into one
    message. PostgreSQL: an advisory lock held until the transaction ends, taken by the channel's due read
    as a condition of its own; a busy channel reads no reviews and is skipped (the other process is doing
    it). The condition is an uncorrelated subquery, which PostgreSQL runs once, before any row is read or
    locked (an InitPlan), so the read costs no statement of its own (bench/NOTES.md item 61). SQLite: no
    condition; BEGIN IMMEDIATE already made this transaction the only writer."""
    if not _is_postgres(session):
        return []
    key = bindparam("channel_key", channel_lock_key(channel), BigInteger)
    return [select(func.pg_try_advisory_xact_lock(key)).scalar_subquery()]


def channel_lock_key(channel: str) -> int:
    """The key of a reviewer channel's advisory lock (`_channel_lock`)."""
    digest = hashlib.sha256(f"fr-bot reminders {channel}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Notice(NamedTuple):
    """A notice to record in scheduled_notices (announced_at starts empty). A tuple, not the ORM's object:
    nothing here goes through the unit of work, and building and reading hundreds of ORM objects in the
    first sweep cost more than their insert (bench/NOTES.md item 42)."""

    kind: str
    subject_id: int
    sequence: int
    request_id: int | None
    channel: str | None
    due_at: datetime
    created_at: datetime


_NOTICES = ScheduledNotice.__table__
# uq_scheduled_notices_kind_subject_sequence: a Notice's first three fields.
_NOTICE_KEY = ("kind", "subject_id", "sequence")
_NOTICE_COLUMNS = list(Notice._fields)


# From one JSON parameter (storage/recordsets.py), where an executemany binds and sends each notice apart.
_NEW_NOTICES = recordset(_NOTICES, _NOTICE_COLUMNS)
_RETURNED_KEY = tuple(_NOTICES.c[name] for name in _NOTICE_KEY)
# The database skips a notice whose key is taken (on PostgreSQL after waiting for a concurrent insert of
# the same key to commit or roll back, as the unique index would) and returns the keys it recorded.
_RECORD_NOTICES_FROM_JSON = (
    postgresql.insert(_NOTICES)
    .from_select(_NOTICE_COLUMNS, select(_NEW_NOTICES))
    .on_conflict_do_nothing(index_elements=_NOTICE_KEY)
    .returning(*_RETURNED_KEY)
)
# SQLite (or a PostgreSQL batch that cannot go as JSON): an executemany of one cached statement, sent as
# one INSERT with VALUES; by dialect.
_RECORD_NOTICE_ROWS = {
    name: dialect.insert(_NOTICES)
    .on_conflict_do_nothing(index_elements=_NOTICE_KEY)
    .returning(*_RETURNED_KEY)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}


Entry = TypeVar("Entry")


def _record_all(session: Session, entries: list[tuple[Notice, Entry]]) -> list[tuple[Notice, Entry]]:
    """Insert the entries' notices; the entries whose notice this recorded, in order, leaving out those
    already recorded (sent before, or by another process).

    One statement for them all, where a savepoint caught the IntegrityError in three statements and a
    flush for each notice (bench/NOTES.md item 40)."""
    if not entries:
        return []
    notices = [notice for notice, _ in entries]
    rows = [notice._asdict() for notice in notices]
    as_rows = _RECORD_NOTICE_ROWS[session.get_bind().dialect.name]
    return _those_recorded(entries, execute_batch(session, _RECORD_NOTICES_FROM_JSON, as_rows, rows))


def _those_recorded(entries: list[tuple[Notice, Entry]], result: Result[Any]) -> list[tuple[Notice, Entry]]:
    """The entries whose notice is among the keys an insert of notices returned, in order."""
    recorded = {(kind, subject_id, sequence) for kind, subject_id, sequence in result}
    return [(notice, entry) for notice, entry in entries if notice[:3] in recorded]


class DueReview(NamedTuple):
    """A due review as the overdue-review sweep reads it: the stage's columns it needs, its request's
    reference and urgency, and what its notices say of it (counted in the same statement, item 50).
    Columns, not ORM objects, which cost more to build than the sweep's own work (bench/NOTES.md item
    42); none of the request's free text, nor any collection (item 41)."""

    id: int
    request_id: int
    stage_id: str
    stage_name: str
    due_at: datetime  # the query's reviews all have one
    message_permalink: str | None
    message_channel: str | None
    message_ts: str | None
    reference: str
    urgency: str
    escalated: bool  # its escalation is recorded (it escalates once)
    reminders_sent: int  # before this sweep's
    last_reminder_due: datetime | None  # the slot its latest reminder was for
    last_sequence: int | None  # the number its latest reminder was recorded under
    requester_id: str
    decided_by: str | None  # who decided the stage already (by or for), space-separated


def _notices_of_the_stage(kind: str) -> Any:
    """The notices of one kind about the review on the row (the unique index's first two columns)."""
    return and_(ScheduledNotice.kind == kind, ScheduledNotice.subject_id == StageReview.id)


# How many reminders the review on the row has had: in its due read and in the leads' escalation message.
_REMINDERS_SENT = select(func.count()).where(_notices_of_the_stage(NoticeKind.REMINDER)).scalar_subquery()


# Who has decided the stage on the row (a stage waiting for its second approval), in person or by a
# deputy: not asked again.
_DECIDED_BY = (
    select(func.aggregate_strings(Decision.approver_id + " " + func.coalesce(Decision.on_behalf_of, ""), " "))
    .where(Decision.stage_review_id == StageReview.id)
    .scalar_subquery()
)


_DUE_REVIEW_COLUMNS = select(
    StageReview.id,
    StageReview.request_id,
    StageReview.stage_id,
    StageReview.stage_name,
    StageReview.due_at,
    StageReview.message_permalink,
    StageReview.message_channel,
    StageReview.message_ts,
    FrRequest.reference,
    FrRequest.urgency,
    exists().where(_notices_of_the_stage(NoticeKind.ESCALATION)),
    _REMINDERS_SENT,
    select(func.max(ScheduledNotice.due_at))
    .where(_notices_of_the_stage(NoticeKind.REMINDER))
    .scalar_subquery(),
    select(func.max(ScheduledNotice.sequence))
    .where(_notices_of_the_stage(NoticeKind.REMINDER))
    .scalar_subquery(),
    FrRequest.requester_id,
    _DECIDED_BY,
).join(FrRequest, FrRequest.id == StageReview.request_id)


def _last_reminder_in(channel: str) -> Any:
    """When the channel's last reminder was recorded (the gap between reminders runs from it): one value
    for the whole query, which both databases compute once."""
    return (
        select(func.max(ScheduledNotice.created_at))
        .where(ScheduledNotice.kind == NoticeKind.REMINDER, ScheduledNotice.channel == channel)
        .scalar_subquery()
    )


# The sweeps lock requests' and stages' rows FOR NO KEY UPDATE (`key_share=True`), the lock an update of
# other columns takes, as a decision locks its request (storage/queries.py _LOCK_ONE): a transaction holding
# the chain's head may be chaining events for those requests, and must not wait for these locks while their
# holder waits for the head. Only other writers wait for them, not the checks of rows that refer to them.

# The sweeps' claims (conditional updates) leave the session's objects as they were read: by default the
# ORM tests an update's criteria against every object in the session, which with a claim for each row
# was quadratic in the batch (half the first sweep's CPU with 200 reviews due; bench/NOTES.md item 40),
# and nothing reads the claimed columns from those objects afterwards.
_UNSYNCED: dict[str, Any] = {"synchronize_session": False}


def _not_checked_after(now: Any) -> Any:
    """A review the sweep has not put off past `now` (a time, or the claim's bound parameter)."""
    return or_(StageReview.next_check_at.is_(None), StageReview.next_check_at <= now)


def _due_reviews(now: datetime, policy: Policy) -> list[Any]:
    """Pending stages due by `now`, by the stage's columns alone: a pending stage's request is pending
    (storage/models.py, PENDING_STAGE). Testing the request's status as well made PostgreSQL, which
    expects most pending stages to be due (its statistics of due_at are of every stage), join all pending
    requests by hash instead of looking up the few due ones (bench/NOTES.md item 42)."""
    return [
        IS_PENDING_STAGE,
        StageReview.due_at.is_not(None),
        StageReview.due_at <= now,
        _not_checked_after(now),
        *_clock_running(policy),
    ]


def _clock_running(policy: Policy) -> list[Any]:
    """A review whose clock runs: not one waiting on the officer's answer to a question, when the policy
    stops the clock for that (it is not overdue meanwhile, for reminders nor for the digest)."""
    if not policy.review_deadlines.pause_while_awaiting_officer:
        return []
    waiting = exists().where(InfoRequest.stage_review_id == StageReview.id, InfoRequest.answer.is_(None))
    return [~waiting]


# --- Overdue reviews: reminders and escalation ------------------------------------------------------------


def sweep_reviews(
    db: sessionmaker[Session],
    policy: Policy,
    clock: Clock,
    report: SweepReport | None = None,
    batch_size: int = BATCH_SIZE,
) -> SweepReport:
    report = report if report is not None else SweepReport()
    now = clock()
    with transaction(db) as session:
        _backfill_due_times(session, policy)
        channels = list(
            session.scalars(select(StageReview.channel_id).where(*_due_reviews(now, policy)).distinct())
        )

    def sweep_channel(channel: str, channel_report: SweepReport) -> None:
        while _sweep_channel(db, policy, channel, now, channel_report, batch_size) == batch_size:
            pass

    # The channels at once on PostgreSQL (each under its own lock), in turn on SQLite.
    try:
        _all_of(db, report, [partial(sweep_channel, channel) for channel in sorted(channels)])
    finally:  # what the other channels escalated is announced even if one channel failed
        _announce_escalations(db, policy, now, report)
    return report


def _backfill_due_times(session: Session, policy: Policy) -> None:
    """Pending stages without a due time (created before deadlines existed, or by a code path that does
    not set one) get it from when they started; in the transaction that then reads which channels have
    reviews due, which sees them."""
    # Columns, not objects, and the stage's urgency with it (a query for each stage before item 41):
    # this runs in every sweep and nearly always finds nothing (bench/NOTES.md item 42).
    missing = session.execute(
        select(StageReview.id, StageReview.stage_id, StageReview.started_at, FrRequest.urgency)
        .join(FrRequest, FrRequest.id == StageReview.request_id)
        # From the index of pending stages, in which these have no due time (models' PENDING_STAGE).
        .where(IS_PENDING_STAGE, StageReview.due_at.is_(None), StageReview.started_at.is_not(None))
        .with_for_update(of=StageReview, skip_locked=True, key_share=True)
    ).all()
    if missing:  # the ORM's bulk update by primary key: one statement, run for each stage
        due = [
            {"id": review_id, "due_at": deadlines.review_due(policy, stage_id, urgency, started_at)}
            for review_id, stage_id, started_at, urgency in missing
        ]
        session.execute(update(StageReview), due)


def _approvers(policy: Policy, stage_id: str) -> tuple[str, ...]:
    try:
        return policy.stage(stage_id).approvers
    except StopIteration:  # the stage was removed from the policy after the request was routed
        return ()


def _still_to_decide(
    policy: Policy, stage_id: str, requester_id: str, decided_by: str | None
) -> tuple[str, ...]:
    """The stage's approvers a reminder or an escalation names: not those who have decided it (a stage
    waiting for a second approval), in person or by a deputy, nor the officer who made the request (who
    may not decide it). Groups are named whole."""
    done = {requester_id, *(decided_by or "").split()}
    return tuple(a for a in _approvers(policy, stage_id) if a not in done)


def _link(stage: StageReview | DueReview) -> str | None:
    return views.message_link(stage.message_permalink, stage.message_channel, stage.message_ts)


def _sweep_channel(
    db: sessionmaker[Session],
    policy: Policy,
    channel: str,
    now: datetime,
    report: SweepReport,
    batch_size: int,
) -> int:
    """One transaction over one reviewer channel's due reviews; returns how many were looked at."""
    with transaction(db) as session:
        # The reviews with what else the batch needs (whether each has escalated, how many reminders it
        # had, when the channel's last reminder went) in one statement, where these took three; on
        # PostgreSQL it takes the channel's lock first, and reads nothing if another process holds it.
        rows = session.execute(
            _DUE_REVIEW_COLUMNS.add_columns(_last_reminder_in(channel))
            .where(
                *_channel_lock(session, channel),
                StageReview.channel_id == channel,
                *_due_reviews(now, policy),
            )
            .order_by(StageReview.due_at, StageReview.id)
            .limit(batch_size)
            # Wait, never skip: the channel lock already keeps other sweepers out, so a locked review is
            # one the dispatcher is writing a landing to, and skipping it would hold its reminder back
            # until the channel's gap has passed.
            .with_for_update(of=StageReview, key_share=True)
        ).all()
        if not rows:
            return 0
        stages = [DueReview(*row[:-1]) for row in rows]
        last_reminder = rows[0][-1]
        gap_ends = None
        if last_reminder is not None:
            gap_ends = last_reminder + timedelta(minutes=policy.reminders.channel_gap_minutes)
            if gap_ends <= now:
                gap_ends = None

        # When to look at each review again, and the notices it is due; claimed and recorded together.
        next_checks: dict[int, datetime] = {}
        due: list[tuple[Notice, tuple[DueReview, views.OverdueItem]]] = []
        for stage in stages:
            slot = deadlines.reminder_slot(policy, stage.urgency, stage.due_at, now)
            assert slot is not None  # the query only returns reviews past their due time
            item = views.OverdueItem(
                reference=stage.reference,
                urgency=stage.urgency,
                stage_name=stage.stage_name,
                due_at=stage.due_at,
                link=_link(stage),
                approvers=_still_to_decide(policy, stage.stage_id, stage.requester_id, stage.decided_by),
            )
            escalate_at = None
            if not stage.escalated:
                escalate_at = deadlines.escalation_due(policy, stage.stage_id, stage.urgency, stage.due_at)
            # Look again when the next reminder falls due (or the channel's gap ends) or it escalates.
            checks = [gap_ends if gap_ends is not None else slot.next_due]
            if escalate_at is not None and escalate_at > now:
                checks.append(escalate_at)
            next_checks[stage.id] = min(checks)
            # One reminder for each slot of the schedule (collapsed after downtime), numbered after the
            # latest recorded: a due time moved on by a question to the officer starts its slots again,
            # whose numbers, counted from it, the reminders before it had taken (and were dropped).
            owed = stage.last_reminder_due is None or slot.due > stage.last_reminder_due
            if gap_ends is None and owed:
                notice = Notice(
                    kind=NoticeKind.REMINDER,
                    subject_id=stage.id,
                    # After the latest recorded (not their count: numbers recorded before this scheme
                    # skipped the slots collapsed after downtime, and a count would meet one of them).
                    sequence=0 if stage.last_sequence is None else stage.last_sequence + 1,
                    request_id=stage.request_id,
                    channel=channel,
                    due_at=slot.due,
                    created_at=now,
                )
                due.append((notice, (stage, item)))
            if escalate_at is not None and escalate_at <= now:
                notice = Notice(
                    kind=NoticeKind.ESCALATION,
                    subject_id=stage.id,
                    sequence=0,
                    request_id=stage.request_id,
                    channel=policy.leads_channel,
                    due_at=escalate_at,
                    created_at=now,
                )
                due.append((notice, (stage, item)))

        recorded = _claim_and_record(session, next_checks, due, now)
        reminded = [
            (stage, item, notice.sequence)
            for notice, (stage, item) in recorded
            if notice.kind == NoticeKind.REMINDER
        ]
        escalations = [
            (stage, item) for notice, (stage, item) in recorded if notice.kind == NoticeKind.ESCALATION
        ]
        events = _queue_reminders(session, policy, channel, reminded, now, report)
        reminded_now = {stage.id for stage, _, _ in reminded}
        events += _record_escalations(policy, escalations, reminded_now, now, report)
        # The batch's events chained with one append, last: it holds the chain's head until the commit.
        append_events(session, events)
        return len(stages)


def _claim_and_record(
    session: Session,
    next_checks: dict[int, datetime],
    due: list[tuple[Notice, tuple[DueReview, views.OverdueItem]]],
    now: datetime,
) -> list[tuple[Notice, tuple[DueReview, views.OverdueItem]]]:
    """Claim the reviews (`_claim_reviews`) and record the notices due of those claimed (`_record_all`);
    the entries whose notice this recorded, in order.

    On PostgreSQL one statement does both, the claim a data-modifying CTE of the notices' insert, which
    keeps the notices of the reviews it claimed: a round trip fewer for each channel's batch, each a wait
    for the server and then for this process's GIL (bench/NOTES.md item 61)."""
    if not next_checks:
        return []
    if _is_postgres(session) and due:
        notices = records([notice._asdict() for notice, _ in due])
        if notices is not None:  # else a notice's text holds a NUL: the two statements below
            given = {**notices, **_claim_parameters(next_checks), "now": now}
            return _those_recorded(due, session.execute(_CLAIM_AND_RECORD_NOTICES, given))
    claimed = _claim_reviews(session, next_checks, now)
    return _record_all(session, [(notice, entry) for notice, entry in due if entry[0].id in claimed])


def _claim_parameters(next_checks: dict[int, datetime]) -> dict[str, str]:
    """The claim's batch as its JSON parameter (`_NEXT_CHECKS`)."""
    times = records([{"id": review, "next_check_at": at} for review, at in next_checks.items()])
    assert times is not None  # numbers and times only: no text to hold a NUL
    return {_CLAIMS: times[PARAMETER]}


def _claim_reviews(session: Session, next_checks: dict[int, datetime], now: datetime) -> set[int]:
    """Claim the reviews, each with when to look at it again; the ids of those claimed.

    The claim is a conditional update: it matches a review only while it is still due, so of two sweeps
    that both read it (possible on SQLite, whose readers do not lock) only one goes on. One statement for
    the batch (bench/NOTES.md item 40): on PostgreSQL each review's time is joined to it from a JSON
    parameter (items 42 and 47), on SQLite chosen by its id in a CASE."""
    if not next_checks:
        return set()
    if _is_postgres(session):
        return set(session.scalars(_CLAIM_REVIEWS, {**_claim_parameters(next_checks), "now": now}))
    column_type = StageReview.next_check_at.type
    when = {stage_id: literal(at, column_type) for stage_id, at in next_checks.items()}
    return set(
        session.scalars(
            update(StageReview)
            .where(StageReview.id.in_(list(next_checks)), *_STILL_DUE)
            .values(next_check_at=case(when, value=StageReview.id))
            .returning(StageReview.id)
            .execution_options(**_UNSYNCED),
            {"now": now},
        )
    )


# The claim's test that a review read as due still is: the due query's own conditions on the stage.
_STILL_DUE = (IS_PENDING_STAGE, _not_checked_after(bindparam("now")))
_CLAIM_COLUMNS = ["id", "next_check_at"]
_CLAIMS = "claims"  # the claim's parameter, so that it can share a statement with a notices' batch
_NEXT_CHECKS = recordset(StageReview.__table__, _CLAIM_COLUMNS, _CLAIMS)
_CLAIM_REVIEWS = (
    update(StageReview)
    .where(StageReview.id == _NEXT_CHECKS.c.id, *_STILL_DUE)
    .values(next_check_at=_NEXT_CHECKS.c.next_check_at)
    .returning(StageReview.id)
    .execution_options(**_UNSYNCED)
)
# The claim as a CTE of the notices' insert, which takes only the notices of the reviews it claimed (a
# notice's subject is its review). PostgreSQL runs such a CTE to completion whether or not the insert reads
# all of it, so reviews claimed with no notice due (the channel's gap not over) are claimed too.
_CLAIMED = _CLAIM_REVIEWS.cte("claimed")
_CLAIM_AND_RECORD_NOTICES = (
    postgresql.insert(_NOTICES)
    .from_select(
        _NOTICE_COLUMNS,
        select(_NEW_NOTICES).where(_NEW_NOTICES.c.subject_id.in_(select(_CLAIMED.c.id))),
    )
    .on_conflict_do_nothing(index_elements=_NOTICE_KEY)
    .returning(*_RETURNED_KEY)
    .add_cte(_CLAIMED)
)


def _queue_reminders(
    session: Session,
    policy: Policy,
    channel: str,
    reminded: list[tuple[DueReview, views.OverdueItem, int]],
    now: datetime,
    report: SweepReport,
) -> list[PreparedEvent]:
    """Queue the channel's reminder (one message for the batch) and its refreshes; the audit events to
    append for them."""
    if not reminded:
        return []
    items = [item for _, item, _ in reminded]
    if len(reminded) == 1:
        stage, _, sequence = reminded[0]
        message = {
            **views.reminder_message(channel, items, policy, now, sequence),
            "thread_stage_review_id": stage.id,
        }
        # Queued under the request, so it waits for the reviewer message it is threaded under.
        queued_under: int | None = stage.request_id
    else:
        message, queued_under = views.reminder_message(channel, items, policy, now), None
    rows = [outbox_row(session, "channel_post", message, queued_under, now)]
    report.messages_queued += 1
    events: list[PreparedEvent] = []
    for stage, _, sequence in reminded:
        details = {
            "stage": stage.stage_id,
            "sequence": sequence,
            "channel": channel,
            "consolidated": len(reminded) > 1,
        }
        events.append(prepare_event("system", "reminder_sent", stage.request_id, now, details))
        if stage.last_reminder_due is None or stage.last_reminder_due < stage.due_at:
            # The first reminder since the due time: the reviewer message now shows the review as overdue.
            payload = {"request_id": stage.request_id}
            rows.append(outbox_row(session, "refresh_reviews", payload, stage.request_id, now))
        report.reminders += 1
    # One statement for the batch's outbox rows, in this order (the ORM's unit of work took 0.2 ms a row).
    insert_outbox(session, rows)
    return events


def _record_escalations(
    policy: Policy,
    escalations: list[tuple[DueReview, views.OverdueItem]],
    reminded: set[int],
    now: datetime,
    report: SweepReport,
) -> list[PreparedEvent]:
    """The audit trail records each escalation with its notice (the events returned, to append);
    `_announce_escalations` tells the leads."""
    if not escalations:
        return []
    events: list[PreparedEvent] = []
    for stage, _ in escalations:
        details = {
            "stage": stage.stage_id,
            "due_at": stage.due_at.isoformat(),
            # Its reminders before this sweep and the one this sweep recorded with the escalation, if any
            # (the channel's lock keeps any other sweep from recording one meanwhile).
            "reminders_sent": stage.reminders_sent + (1 if stage.id in reminded else 0),
            "leads_channel": policy.leads_channel,
        }
        events.append(prepare_event("system", "review_escalated", stage.request_id, now, details))
        report.escalations += 1
    return events


def _announce_escalations(
    db: sessionmaker[Session], policy: Policy, now: datetime, report: SweepReport
) -> None:
    """One message to the leads' channel for every escalation recorded and not yet announced, whichever
    reviewer channel it came from. Announcing marks the notices in the same transaction as the outbox row."""
    with transaction(db) as session:
        notices = session.scalars(
            select(ScheduledNotice.id)
            .where(ScheduledNotice.kind == NoticeKind.ESCALATION, ScheduledNotice.announced_at.is_(None))
            .order_by(ScheduledNotice.id)
            .limit(BATCH_SIZE)
            .with_for_update(skip_locked=True)
        ).all()
        if not notices:
            return
        # The conditional update is the claim on SQLite, where readers do not lock: one statement for the
        # batch, returning the notices it claimed. (As a subquery of the update, the read above made
        # PostgreSQL's plan slower, 8 ms against 2.5, on a table it has no statistics of yet.)
        claimed = session.scalars(
            update(ScheduledNotice)
            .where(
                _one_of(session, ScheduledNotice.id, list(notices)), ScheduledNotice.announced_at.is_(None)
            )
            .values(announced_at=now)
            .returning(ScheduledNotice.subject_id)
            .execution_options(**_UNSYNCED)
        ).all()
        if not claimed:
            return
        # Columns, not objects: each review's line, with the reminders it had (bench/NOTES.md item 42).
        escalated = session.execute(
            select(
                FrRequest.reference,
                FrRequest.urgency,
                StageReview.stage_name,
                StageReview.stage_id,
                StageReview.due_at,
                StageReview.message_permalink,
                StageReview.message_channel,
                StageReview.message_ts,
                _REMINDERS_SENT,
                FrRequest.requester_id,
                _DECIDED_BY,
            )
            .join(FrRequest, FrRequest.id == StageReview.request_id)
            .where(_one_of(session, StageReview.id, list(claimed)))
            .order_by(StageReview.due_at, StageReview.id)
        ).all()
        if not escalated:
            return
        if policy.leads_channel is None:
            log.warning("%d review(s) escalated but the policy has no leads_channel to tell", len(escalated))
            return
        items = [
            views.OverdueItem(
                reference=reference,
                urgency=urgency,
                stage_name=stage_name,
                due_at=due_at or now,
                link=views.message_link(permalink, message_channel, message_ts),
                approvers=_still_to_decide(policy, stage_id, requester_id, decided_by),
                reminders_sent=int(count),
            )
            for (
                reference,
                urgency,
                stage_name,
                stage_id,
                due_at,
                permalink,
                message_channel,
                message_ts,
                count,
                requester_id,
                decided_by,
            ) in escalated
        ]
        message = views.escalation_message(policy.leads_channel, items, policy, now)
        insert_outbox(session, [outbox_row(session, "channel_post", message, None, now)])
        report.messages_queued += 1


# --- Approvals: expiry warnings and ratification -----------------------------------------------------------


def _no_notice(kind: str) -> Any:
    return ~exists().where(ScheduledNotice.kind == kind, ScheduledNotice.subject_id == FrRequest.id)


def sweep_approvals(
    db: sessionmaker[Session], policy: Policy, clock: Clock, report: SweepReport | None = None
) -> SweepReport:
    report = report if report is not None else SweepReport()
    now = clock()
    _warn_expiring(db, policy, now, report)
    _remind_ratification(db, policy, now, report)
    _remind_post_use(db, now, report)
    return report


# What an officer's reminder or warning reads of each request (views.expiry_warning_dm and
# post_use_reminder_dm, with the officer's buttons): none of its free text, which a batch of 200 whole
# requests read and held only to drop (as the reviews sweep does not, bench/NOTES.md item 41), and none of
# its history. Touching any other column or relationship raises, rather than loading it row by row.
_FOR_A_DM = (
    load_only(
        FrRequest.id,
        FrRequest.reference,
        FrRequest.requester_id,
        FrRequest.status,
        FrRequest.tool_snapshot,
        FrRequest.valid_until,
        FrRequest.closed_at,
        raiseload=True,
    ),
    raiseload("*"),
)


def _remind_post_use(db: sessionmaker[Session], now: datetime, report: SweepReport) -> None:
    """Once a day after an approval ends, until the officer records what the search did."""
    # Whether the request has had a post-use reminder before: its first is when the approval is seen to
    # have run out, however late the sweep that sees it (downtime, a backlog).
    reminded_before = (
        exists()
        .where(ScheduledNotice.kind == NoticeKind.POST_USE, ScheduledNotice.subject_id == FrRequest.id)
        .label("reminded_before")
    )
    with transaction(db) as session:
        requests = session.execute(
            select(FrRequest, reminded_before)
            .where(
                FrRequest.status == RequestStatus.APPROVED,
                FrRequest.closed_at.is_(None),
                FrRequest.valid_until <= now,
                # Not those reminded for this day already (its reminder is due within the last day):
                # otherwise the oldest BATCH_SIZE unrecorded approvals, read again in every sweep, would
                # keep the rest from their reminders for good.
                ~exists().where(
                    ScheduledNotice.kind == NoticeKind.POST_USE,
                    ScheduledNotice.subject_id == FrRequest.id,
                    ScheduledNotice.due_at > now - timedelta(days=1),
                ),
            )
            .order_by(FrRequest.valid_until)
            .limit(BATCH_SIZE)
            .with_for_update(of=FrRequest, skip_locked=True, key_share=True)
            .options(*_FOR_A_DM)
        ).all()
        notices: list[tuple[Notice, tuple[FrRequest, bool]]] = []
        for request, was_reminded in requests:
            assert request.valid_until is not None
            days = int((now - request.valid_until) / timedelta(days=1))
            notice = Notice(
                kind=NoticeKind.POST_USE,
                subject_id=request.id,
                sequence=days,
                request_id=request.id,
                channel=request.requester_id,
                due_at=request.valid_until + timedelta(days=days),
                created_at=now,
            )
            notices.append((notice, (request, was_reminded)))
        rows: list[dict[str, Any]] = []
        events: list[PreparedEvent] = []
        for notice, (request, was_reminded) in _record_all(session, notices):  # not those reminded today
            days = notice.sequence
            message = views.post_use_reminder_dm(request, days, now)
            rows.append(outbox_row(session, "dm", message, request.id, now))
            if not was_reminded:
                # The approval has just run out: the reviewer messages and the officer's App Home, drawn
                # while it was valid, said "valid until" a time now past. Drawn again, they say it ran out.
                refresh = {"request_id": request.id}
                rows.append(outbox_row(session, "refresh_reviews", refresh, request.id, now))
                home = {"users": [request.requester_id], "principals": []}
                rows.append(outbox_row(session, "publish_home", home, request.id, now))
                report.messages_queued += 2
            events.append(prepare_event("system", "post_use_reminder_sent", request.id, now, {"day": days}))
            report.post_use_reminders += 1
            report.messages_queued += 1
        insert_outbox(session, rows)
        append_events(session, events)


def _warn_expiring(db: sessionmaker[Session], policy: Policy, now: datetime, report: SweepReport) -> None:
    """The officer is told once, shortly before an approval runs out."""
    lead = timedelta(hours=policy.reminders.expiry_warning_hours)
    with transaction(db) as session:
        requests = session.scalars(
            select(FrRequest)
            .where(
                FrRequest.status == RequestStatus.APPROVED,
                FrRequest.closed_at.is_(None),  # its search's outcome recorded: nothing left to expire
                FrRequest.valid_until > now,
                FrRequest.valid_until <= now + lead,
                _no_notice(NoticeKind.EXPIRY_WARNING),
            )
            .order_by(FrRequest.valid_until)
            .limit(BATCH_SIZE)
            .with_for_update(of=FrRequest, skip_locked=True, key_share=True)
            .options(*_FOR_A_DM)
        ).all()
        notices: list[tuple[Notice, FrRequest]] = []
        for request in requests:
            assert request.valid_until is not None
            notice = Notice(
                kind=NoticeKind.EXPIRY_WARNING,
                subject_id=request.id,
                sequence=0,
                request_id=request.id,
                channel=request.requester_id,
                due_at=request.valid_until - lead,
                created_at=now,
            )
            notices.append((notice, request))
        rows: list[dict[str, Any]] = []
        events: list[PreparedEvent] = []
        for _, request in _record_all(session, notices):
            assert request.valid_until is not None
            rows.append(
                outbox_row(session, "dm", views.expiry_warning_dm(request, policy, now), request.id, now)
            )
            details = {"valid_until": request.valid_until.isoformat()}
            events.append(prepare_event("system", "expiry_warning_sent", request.id, now, details))
            report.expiry_warnings += 1
            report.messages_queued += 1
        insert_outbox(session, rows)  # one statement for the batch, as a channel's reminders
        append_events(session, events)


def _remind_ratification(
    db: sessionmaker[Session], policy: Policy, now: datetime, report: SweepReport
) -> None:
    """Urgent approvals the policy wants ratified: one reminder to the leads' channel, consolidated."""
    rule = policy.ratification
    if not rule.required_for or policy.leads_channel is None:
        return
    after = timedelta(hours=rule.remind_after_hours)
    # Approved by one stage only, asked in SQL: left to the loop below, approvals through several stages
    # (which need no ratifying, and record no notice) filled every batch, and held back those that do.
    single_stage = (
        [
            select(func.count())
            .where(StageReview.request_id == FrRequest.id, StageReview.status == StageStatus.APPROVED)
            .scalar_subquery()
            == 1
        ]
        if rule.single_stage_only
        else []
    )
    with transaction(db) as session:
        requests = session.scalars(
            select(FrRequest)
            .where(
                FrRequest.status.in_([RequestStatus.APPROVED, RequestStatus.EXPIRED]),
                FrRequest.urgency.in_(list(rule.required_for)),
                FrRequest.decided_at <= now - after,
                FrRequest.decided_at >= now - after - RATIFICATION_LOOKBACK,
                _no_notice(NoticeKind.RATIFICATION),
                *single_stage,
            )
            .order_by(FrRequest.decided_at)
            .limit(BATCH_SIZE)
            .with_for_update(of=FrRequest, skip_locked=True, key_share=True)
            # Its stages and their decisions (who approved), none of its free text or comments.
            .options(
                load_only(
                    FrRequest.id,
                    FrRequest.reference,
                    FrRequest.urgency,
                    FrRequest.decided_at,
                    raiseload=True,
                ),
                raiseload(FrRequest.comments),
            )
        ).all()
        notices: list[tuple[Notice, tuple[FrRequest, list[StageReview]]]] = []
        for request in requests:
            approving = [s for s in request.stages if s.status == StageStatus.APPROVED]
            if rule.single_stage_only and len(approving) != 1:
                continue
            assert request.decided_at is not None
            notice = Notice(
                kind=NoticeKind.RATIFICATION,
                subject_id=request.id,
                sequence=0,
                request_id=request.id,
                channel=policy.leads_channel,
                due_at=request.decided_at + after,
                created_at=now,
            )
            notices.append((notice, (request, approving)))
        items: list[views.RatificationItem] = []
        events: list[PreparedEvent] = []
        for _, (request, approving) in _record_all(session, notices):
            assert request.decided_at is not None
            last = approving[-1] if approving else None
            items.append(
                views.RatificationItem(
                    reference=request.reference,
                    urgency=request.urgency,
                    decided_at=request.decided_at,
                    approvers=tuple(d.approver_id for s in approving for d in s.approvals),
                    link=_link(last) if last is not None else None,
                )
            )
            details = {"channel": policy.leads_channel}
            events.append(prepare_event("system", "ratification_reminder_sent", request.id, now, details))
            report.ratifications += 1
        if items:
            message = views.ratification_message(policy.leads_channel, items, policy)
            enqueue(session, "channel_post", message, None, now)
            report.messages_queued += 1
        append_events(session, events)  # last: the chain's head is locked until the commit


# --- The leads' daily digest ----------------------------------------------------------------------------


def sweep_digests(
    db: sessionmaker[Session], policy: Policy, clock: Clock, report: SweepReport | None = None
) -> SweepReport:
    """Send today's digest if its time has come and it is not yet recorded. A digest whose time passed
    more than `digest.grace_hours` ago (the bot was down) is recorded as missed instead, as is every day
    skipped since the last one."""
    report = report if report is not None else SweepReport()
    channel = policy.leads_channel
    if not policy.digest.enabled or channel is None:
        return report
    now = clock()
    day, moment = deadlines.latest_digest_slot(policy, now)
    with transaction(db) as session:
        # Dates and times only: a digest's row holds its whole summary, which every sweep would parse.
        last = session.scalar(
            select(DigestRun.local_date)
            .where(DigestRun.channel == channel)
            .order_by(DigestRun.local_date.desc())
            .limit(1)
        )
        if last is not None and last >= day:
            return report  # already sent or recorded as missed
        skipped: list[date] = []
        if last is not None:
            cursor = max(last + timedelta(days=1), day - timedelta(days=MAX_MISSED_DAYS_RECORDED))
            while cursor < day:
                skipped.append(cursor)
                cursor += timedelta(days=1)
        for missed_day in skipped:
            _record_missed(session, policy, channel, missed_day, now, report)
        if now - moment > timedelta(hours=policy.digest.grace_hours):
            if last is not None:  # a new installation has missed nothing: its first digest comes next time
                _record_missed(session, policy, channel, day, now, report)
            return report
        previous_end = session.scalar(
            select(DigestRun.period_end)
            .where(DigestRun.channel == channel, DigestRun.status == DigestStatus.SENT)
            .order_by(DigestRun.local_date.desc())
            .limit(1)
        )
        period_start = previous_end or moment - timedelta(days=1)
        summary = digest_summary(session, policy, period_start, moment, now)
        summary["missed_dates"] = [
            d.isoformat()
            for d in session.scalars(
                select(DigestRun.local_date).where(
                    DigestRun.channel == channel,
                    DigestRun.status == DigestStatus.MISSED,
                    DigestRun.scheduled_for >= period_start,
                )
            )
        ]
        run = DigestRun(
            channel=channel,
            local_date=day,
            status=DigestStatus.SENT,
            scheduled_for=moment,
            period_start=period_start,
            period_end=moment,
            summary=summary,
            created_at=now,
        )
        try:
            with session.begin_nested():
                session.add(run)
        except IntegrityError:
            return report  # another process recorded today's digest first
        enqueue(session, "channel_post", views.digest_message(channel, summary, policy), None, now)
        audit(session, "system", "digest_sent", None, now, channel=channel, local_date=day.isoformat())
        report.digests_sent += 1
        report.messages_queued += 1
    return report


def _record_missed(
    session: Session, policy: Policy, channel: str, day: date, now: datetime, report: SweepReport
) -> None:
    try:
        with session.begin_nested():
            session.add(
                DigestRun(
                    channel=channel,
                    local_date=day,
                    status=DigestStatus.MISSED,
                    scheduled_for=deadlines.digest_moment(policy, day),
                    created_at=now,
                )
            )
    except IntegrityError:
        return
    log.warning("the leads' digest for %s was not sent in time (the bot was not running)", day)
    audit(session, "system", "digest_missed", None, now, channel=channel, local_date=day.isoformat())
    report.digests_missed += 1


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `fraction` of the values at or below."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def digest_summary(
    session: Session, policy: Policy, start: datetime, end: datetime, now: datetime
) -> dict[str, Any]:
    """What the leads need at a glance: what happened in [start, end), and what is pending as of `now`."""
    in_period = and_(AuditEvent.created_at >= start, AuditEvent.created_at < end)
    actions = {
        "request_submitted": "submitted",
        "request_approved": "approved",
        "request_rejected": "rejected",
        "request_withdrawn": "withdrawn",
    }
    # Counted by the database: the period's events were each a row to fetch (2,160 a day in the scale
    # benchmark, growing with a force's activity, not its history; bench/NOTES.md item 59).
    counts = dict.fromkeys([*actions.values(), "expired"], 0)
    for action, count in session.execute(
        select(AuditEvent.action, func.count(AuditEvent.request_id.distinct()))
        .where(in_period, AuditEvent.action.in_(list(actions)))
        .group_by(AuditEvent.action)
    ):
        counts[actions[action]] = count
    # Expired: marked so in the period, or an approval whose validity ran out in it whether or not
    # anything marked it; each request once.
    expired = union(
        select(AuditEvent.request_id).where(
            in_period, AuditEvent.action == "request_expired", AuditEvent.request_id.is_not(None)
        ),
        select(FrRequest.id).where(
            FrRequest.status.in_([RequestStatus.APPROVED, RequestStatus.EXPIRED]),
            FrRequest.valid_until >= start,
            FrRequest.valid_until < end,
        ),
    ).subquery()
    counts["expired"] = session.scalar(select(func.count()).select_from(expired)) or 0

    # Aggregated and limited in SQL: loading every pending review (and its request, one query each) made
    # the digest's cost grow with the queue.
    pending = [
        {"stage": name, "count": count, "oldest_hours": (now - (oldest or now)).total_seconds() / 3600}
        for name, count, oldest in pending_by_stage(session)
    ]
    overdue = [
        {
            "reference": reference,
            "stage": stage_name,
            "urgency": urgency,
            "due_at": due_at.isoformat(),
            "link": views.message_link(permalink, message_channel, message_ts),
        }
        for reference, stage_name, urgency, due_at, permalink, message_channel, message_ts in session.execute(
            select(
                FrRequest.reference,
                StageReview.stage_name,
                FrRequest.urgency,
                StageReview.due_at,
                StageReview.message_permalink,
                StageReview.message_channel,
                StageReview.message_ts,
            )
            .join(FrRequest, FrRequest.id == StageReview.request_id)
            .where(
                IS_PENDING_STAGE,
                StageReview.due_at.is_not(None),
                StageReview.due_at <= now,
                *_clock_running(policy),
            )
            .order_by(StageReview.due_at, StageReview.id)
            .limit(DIGEST_ITEMS_KEPT)
        )
    ]

    prohibited = []
    for event in session.scalars(
        select(AuditEvent).where(in_period, AuditEvent.action == "submission_refused").order_by(AuditEvent.id)
    ):
        if event.details.get("tool_status") != "prohibited":
            continue
        tool = policy.tool(str(event.details.get("tool_id")))
        prohibited.append(
            {
                "tool": tool.name if tool is not None else str(event.details.get("tool_id")),
                "requester": event.actor_id,
                "at": event.created_at.isoformat(),
            }
        )

    decided_in_period = (
        FrRequest.decided_at >= start,
        FrRequest.decided_at < end,
        FrRequest.status.in_([RequestStatus.APPROVED, RequestStatus.REJECTED, RequestStatus.EXPIRED]),
    )
    if _is_postgres(session):
        # One number a request, computed and sorted by the server, not two times to convert (item 59).
        took = func.extract("epoch", FrRequest.decided_at - FrRequest.created_at).cast(Float)
        hours = [
            seconds / 3600
            for seconds in session.scalars(select(took).where(*decided_in_period).order_by(took))
        ]
    else:  # SQLite's date functions count days in floating point: 2 hours would not come out as 2.0
        decided = session.execute(
            select(FrRequest.created_at, FrRequest.decided_at).where(*decided_in_period)
        ).all()
        hours = sorted((decided_at - created).total_seconds() / 3600 for created, decided_at in decided)
    decision_hours = {
        "count": len(hours),
        "median": statistics.median(hours) if hours else None,
        "p90": percentile(hours, 0.9) if hours else None,
    }

    horizon = now + timedelta(hours=policy.digest.expiring_within_hours)
    # Columns only: loading whole requests parsed each one's stored form and eager-loaded its stages,
    # decisions, questions and comments (half the digest's time at 100,000 requests) to print a link.
    soon = session.execute(
        select(FrRequest.id, FrRequest.reference, FrRequest.valid_until)
        .where(
            FrRequest.status == RequestStatus.APPROVED,
            FrRequest.closed_at.is_(None),  # closed with its outcome recorded: not expiring
            FrRequest.valid_until > now,
            FrRequest.valid_until <= horizon,
        )
        .order_by(FrRequest.valid_until)
        .limit(DIGEST_ITEMS_KEPT)
    ).all()
    last_link: dict[int, str | None] = {}  # each request's last stage's message
    if soon:
        for request_id, permalink, channel, ts in session.execute(
            select(
                StageReview.request_id,
                StageReview.message_permalink,
                StageReview.message_channel,
                StageReview.message_ts,
            )
            .where(_one_of(session, StageReview.request_id, [row.id for row in soon]))
            .order_by(StageReview.position)  # a later stage's link replaces an earlier one's
        ):
            last_link[request_id] = views.message_link(permalink, channel, ts)
    expiring = [
        {
            "reference": row.reference,
            "valid_until": row.valid_until.isoformat(),
            "link": last_link.get(row.id),
        }
        for row in soon
        if row.valid_until is not None
    ]
    return {
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "counts": counts,
        "pending": pending,
        "overdue": overdue,
        "prohibited": prohibited[:DIGEST_ITEMS_KEPT],
        "decision_hours": decision_hours,
        "expiring": expiring,
    }


# What run_sweeps runs, in order: overdue reviews, approvals, the digest's catch-up.
SWEEPS: tuple[Callable[[sessionmaker[Session], Policy, Clock, SweepReport | None], SweepReport], ...] = (
    sweep_reviews,
    sweep_approvals,
    sweep_digests,
)

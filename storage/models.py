"""Database tables. The database is the truth; Slack messages are re-rendered from it.

Timestamps are stored as timezone-aware UTC on PostgreSQL; SQLite has no time zones, so `UTCDateTime`
normalises on the way in and out and the same code works on both.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY, so big keys fall back to Integer there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use aware UTC datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class RequestStatus:
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    FINAL = frozenset({APPROVED, REJECTED, WITHDRAWN, EXPIRED})


class StageStatus:
    WAITING = "waiting"  # not reached yet
    PENDING = "pending"  # current stage, awaiting decisions
    APPROVED = "approved"
    REJECTED = "rejected"
    CANCELLED = "cancelled"  # the request ended before this stage decided


# Approvals whose post-use record is still owed: a handful among the millions of closed ones.
OPEN_APPROVAL = "status = 'approved' AND closed_at IS NULL"


class FrRequest(Base):
    __tablename__ = "fr_requests"
    __table_args__ = (
        Index(
            "ix_fr_requests_open_approvals",
            "valid_until",
            postgresql_where=text(OPEN_APPROVAL),
            sqlite_where=text(OPEN_APPROVAL),
        ),
        # Decisions in a period, with the urgency and status the sweep and the digest test checked in the
        # index, so only the rows that match are read from the table (migration 0014).
        Index("ix_fr_requests_decided", "decided_at", "urgency", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    reference: Mapped[str] = mapped_column(String(20), unique=True)
    # Slack's view id of the submitted modal: a modal submitted twice cannot create two requests.
    submission_key: Mapped[str] = mapped_column(String(64), unique=True)
    team_id: Mapped[str] = mapped_column(String(32))
    requester_id: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=RequestStatus.PENDING)
    tool_id: Mapped[str] = mapped_column(String(64))
    # The register entry as it stood when the request was made; the register may change later.
    tool_snapshot: Mapped[dict[str, Any]] = mapped_column(JSON)
    case_reference: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(64))
    purpose_detail: Mapped[str] = mapped_column(Text)
    offence_category: Mapped[str] = mapped_column(String(64))
    offence_seriousness: Mapped[str] = mapped_column(String(32))
    subject_category: Mapped[str] = mapped_column(String(32))
    subject_is_child: Mapped[bool] = mapped_column(Boolean)
    image_source: Mapped[str] = mapped_column(String(64))
    image_authority: Mapped[str] = mapped_column(Text)
    necessity: Mapped[str] = mapped_column(Text)
    alternatives: Mapped[str] = mapped_column(Text)
    proportionality: Mapped[str] = mapped_column(Text)
    collateral_intrusion: Mapped[str] = mapped_column(Text)
    equality: Mapped[str] = mapped_column(Text)
    urgency: Mapped[str] = mapped_column(String(32))
    urgency_justification: Mapped[str] = mapped_column(Text, default="")
    route_name: Mapped[str] = mapped_column(String(100))
    policy_version: Mapped[str] = mapped_column(String(64))
    current_stage: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set explicitly with the workflow's clock: an ORM onupdate would stamp the wall clock mid-transaction.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    # A re-request links to the request it was started from (after a rejection or expiry). No foreign key:
    # adding one would make SQLite rebuild this table, which its incoming foreign keys forbid.
    previous_request_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    # An approved request stays open until the officer records what the search did (post-use record).
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Retention (bot/retention.py): a held request is never purged; a purged one keeps its skeleton.
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    legal_hold_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    redacted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    stages: Mapped[list[StageReview]] = relationship(
        back_populates="request", order_by="StageReview.position", lazy="selectin"
    )
    comments: Mapped[list[Comment]] = relationship(order_by="Comment.id", lazy="selectin")

    @property
    def current(self) -> StageReview | None:
        if self.current_stage is None:
            return None
        return self.stages[self.current_stage]


# Stages awaiting decisions: at most a few thousand among the millions decided. A pending stage always
# belongs to a pending request: a stage becomes pending only while its request is (routing, or the stage
# before it approved), and every change of a request away from pending (its decision, its withdrawal)
# moves its pending stage on in the same transaction (bot/workflow.py; tests/test_workflow.py checks it).
# So queries of pending stages need not join their requests to test the request's status: the join is
# what PostgreSQL planned from all pending requests (bench/NOTES.md item 42).
PENDING_STAGE = "status = 'pending'"


class StageReview(Base):
    __tablename__ = "stage_reviews"
    __table_args__ = (
        UniqueConstraint("request_id", "position", name="uq_stage_reviews_request_position"),
        # The sweep's overdue reviews and the digest's overdue list, in due order, from the pending stages
        # alone: by an index on every stage's due_at, PostgreSQL walked the decided stages too, and every
        # query of due_at is about pending stages (bench/NOTES.md item 41). On PostgreSQL it also holds
        # what the leads' counts of pending stages read, which it then counts from the index alone
        # (migration 0013; item 42).
        Index(
            "ix_stage_reviews_pending_due",
            "due_at",
            "id",
            postgresql_where=text(PENDING_STAGE),
            postgresql_include=["stage_name", "started_at"],
            sqlite_where=text(PENDING_STAGE),
        ),
        # Room on each page for a claimed review's new version, so the claim updates no index (migration
        # 0013; bench/NOTES.md item 42).
        {"postgresql_with": {"fillfactor": 90}},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("fr_requests.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    stage_id: Mapped[str] = mapped_column(String(64))
    stage_name: Mapped[str] = mapped_column(String(100))
    channel_id: Mapped[str] = mapped_column(String(32))
    required_approvals: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=StageStatus.WAITING, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Where the reviewer message lives once the dispatcher has posted it.
    message_channel: Mapped[str | None] = mapped_column(String(32), nullable=True)
    message_ts: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Deadlines (bot/deadlines.py): when the stage must decide, and when the scheduler next looks at it
    # (NULL: as soon as it is due). The permalink of the reviewer message, for links in reminders.
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_check_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    message_permalink: Mapped[str | None] = mapped_column(String(300), nullable=True)

    request: Mapped[FrRequest] = relationship(back_populates="stages")
    decisions: Mapped[list[Decision]] = relationship(
        back_populates="stage", order_by="Decision.id", lazy="selectin"
    )
    info_requests: Mapped[list[InfoRequest]] = relationship(order_by="InfoRequest.id", lazy="selectin")

    @property
    def approvals(self) -> list[Decision]:
        return [d for d in self.decisions if d.outcome == "approve"]


class Decision(Base):
    __tablename__ = "decisions"
    # One decision per approver and stage, enforced here rather than by a check-then-insert race.
    __table_args__ = (UniqueConstraint("stage_review_id", "approver_id", name="uq_decisions_stage_approver"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("fr_requests.id"), index=True)
    stage_review_id: Mapped[int] = mapped_column(ForeignKey("stage_reviews.id"))
    approver_id: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))  # approve | reject
    rationale: Mapped[str] = mapped_column(Text)
    conditions: Mapped[str] = mapped_column(Text, default="")
    reason_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    policy_version: Mapped[str] = mapped_column(String(64))
    # Set when a deputy decided under a delegation from this approver.
    on_behalf_of: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    stage: Mapped[StageReview] = relationship(back_populates="decisions")


class InfoRequest(Base):
    __tablename__ = "info_requests"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("fr_requests.id"), index=True)
    stage_review_id: Mapped[int] = mapped_column(ForeignKey("stage_reviews.id"), index=True)
    asked_by: Mapped[str] = mapped_column(String(32))
    question: Mapped[str] = mapped_column(Text)
    # Same idempotency idea as requests: the asking modal's view id.
    submission_key: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The officer's answer is added beside the question; neither is ever overwritten.
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Comment(Base):
    """A reviewer's remark on a request without deciding; part of the timeline."""

    __tablename__ = "comments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("fr_requests.id"), index=True)
    author_id: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    submission_key: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PostUseRecord(Base):
    """What the officer did with an approval: whether the search ran, what it found, what was kept."""

    __tablename__ = "post_use_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("fr_requests.id"), unique=True)
    recorded_by: Mapped[str] = mapped_column(String(32))
    search_run: Mapped[bool] = mapped_column(Boolean)
    result: Mapped[str] = mapped_column(String(32))  # not_run | no_match | possible_match
    handling: Mapped[str] = mapped_column(String(32))  # deleted | retained
    authority: Mapped[str] = mapped_column(Text)
    notes: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delegation(Base):
    """An approver's deputy for a date range (inclusive, in the policy's time zone)."""

    __tablename__ = "delegations"
    __table_args__ = (Index("ix_delegations_deputy", "deputy_id", "starts_on", "ends_on"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    approver_id: Mapped[str] = mapped_column(String(32), index=True)
    deputy_id: Mapped[str] = mapped_column(String(32))
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditEvent(Base):
    """Append-only: the migration installs triggers that refuse UPDATE and DELETE.

    Rows form a hash chain (bot/audit.py): `hash` covers the row and `prev_hash`, the previous row's hash.
    Write them only through `bot.audit.append_event`.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("fr_requests.id"), nullable=True, index=True)
    actor_id: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """One row: the newest event's seq and hash. Locking it serialises appends to the chain."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AuditEventText(Base):
    """Personal free text of an audit event, kept out of the chain so retention can delete it.

    The chained event holds a salted commitment sha256(salt || text) in its place; no foreign key to
    audit_events, so an event row is never held back by its texts and a purge only deletes here.
    """

    __tablename__ = "audit_event_texts"
    __table_args__ = (UniqueConstraint("event_seq", "path", name="uq_audit_event_texts_event_seq_path"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_seq: Mapped[int] = mapped_column(BigInteger)
    request_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    path: Mapped[str] = mapped_column(String(200))
    salt: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)


class ReferenceCounter(Base):
    """Per-year counter behind human references such as FR-2026-00042."""

    __tablename__ = "reference_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_value: Mapped[int] = mapped_column(Integer, default=0)


class OutboxStatus:
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"  # cannot succeed without an admin's help (e.g. bot not in channel)


OUTBOX_PENDING = f"status = '{OutboxStatus.PENDING}'"


class OutboxMessage(Base):
    """A Slack call owed to users, written in the same transaction as the change it announces."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        # Each request's first pending row, which the dispatcher finds on every pass (bot/outbox.py).
        Index(
            "ix_outbox_pending_request",
            "request_id",
            "id",
            postgresql_where=text(OUTBOX_PENDING),
            sqlite_where=text(OUTBOX_PENDING),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("fr_requests.id"), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A claim is a lease: a dispatcher that dies mid-send releases the row when the lease runs out.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Set (and committed) before each Slack call, cleared with its outcome: a row claimed again with this
    # still set had a send cut off by a crash, so Slack may or may not have it.
    attempt_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # How many sends of this row ended without knowing whether Slack acted on them.
    doubtful_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Where the row's post landed: from Slack's answer, or from the message_metadata_posted event when the
    # answer was lost. The first landing recorded is the live message; any other copy is retired.
    posted_channel: Mapped[str | None] = mapped_column(String(32), nullable=True)
    posted_ts: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # When Slack's message_metadata_posted event first reported the post (not every deployment gets them).
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Slack's rate-limit key of the row's call (bot/pacing.py): `post:<channel or user>`, `update`, or
    # NULL for calls limited more loosely. Set when queued, so the dispatcher need not read payloads.
    pace_key: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AppHomeViewer(Base):
    """Who has opened App Home: only their home tabs are republished after a change."""

    __tablename__ = "app_home_viewers"

    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- Scheduled notices and digests (bot/sweeps.py) -------------------------------------------------------


class NoticeKind:
    REMINDER = "reminder"  # subject: stage review; sequence: reminder number (0 at the deadline)
    ESCALATION = "escalation"  # subject: stage review; sequence 0
    EXPIRY_WARNING = "expiry_warning"  # subject: request; sequence 0
    RATIFICATION = "ratification"  # subject: request; sequence 0
    POST_USE = "post_use_reminder"  # subject: request; sequence: whole days since the approval ended


class ScheduledNotice(Base):
    """One reminder, escalation or warning the scheduler owed and queued. The unique key makes a second
    process's attempt to record the same notice fail, so each is sent once however many processes run."""

    __tablename__ = "scheduled_notices"
    __table_args__ = (
        UniqueConstraint("kind", "subject_id", "sequence", name="uq_scheduled_notices_kind_subject_sequence"),
        Index("ix_scheduled_notices_channel_created", "channel", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[int] = mapped_column(BigInteger)
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("fr_requests.id"), nullable=True, index=True)
    channel: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # When it fell due by the schedule, and when the scheduler recorded (and queued) it.
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Escalations from all reviewer channels are announced to the leads together; set once announced.
    announced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class DigestStatus:
    SENT = "sent"  # queued in the outbox
    MISSED = "missed"  # the bot was down past the grace period


class DigestRun(Base):
    """One leads' digest per channel and local date: the unique key is what makes it exactly once."""

    __tablename__ = "digests"
    __table_args__ = (UniqueConstraint("channel", "local_date", name="uq_digests_channel_local_date"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    local_date: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16))
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime)
    # The digest covers [period_start, period_end): from the previous digest sent to its own time.
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    period_end: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DirectMessage(Base):
    """Where each DM about a request landed, so a retention purge can edit them too."""

    __tablename__ = "direct_messages"
    __table_args__ = (UniqueConstraint("channel", "ts", name="uq_direct_messages_channel_ts"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("fr_requests.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    ts: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SubmissionReceipt(Base):
    """An officer's validated form, written before the modal is answered and turned into a request just
    after (bot/intake.py). The receipt is what makes answering first safe: a process that dies in between
    leaves it here, and it is recorded on restart. The form text is cleared once the request holds it."""

    __tablename__ = "submission_receipts"
    __table_args__ = (Index("ix_submission_receipts_pending", "recorded_at", "received_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    submission_key: Mapped[str] = mapped_column(String(64), unique=True)
    requester_id: Mapped[str] = mapped_column(String(32))
    team_id: Mapped[str] = mapped_column(String(32))
    previous_request_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    view_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    form: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("fr_requests.id"), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

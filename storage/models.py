"""Database tables. The database is the truth; Slack messages are re-rendered from it.

Timestamps are stored as timezone-aware UTC on PostgreSQL; SQLite has no time zones, so `UTCDateTime`
normalises on the way in and out and the same code works on both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
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


class FrRequest(Base):
    __tablename__ = "fr_requests"

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
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    stages: Mapped[list[StageReview]] = relationship(
        back_populates="request", order_by="StageReview.position", lazy="selectin"
    )

    @property
    def current(self) -> StageReview | None:
        if self.current_stage is None:
            return None
        return self.stages[self.current_stage]


class StageReview(Base):
    __tablename__ = "stage_reviews"
    __table_args__ = (UniqueConstraint("request_id", "position", name="uq_stage_reviews_request_position"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("fr_requests.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    stage_id: Mapped[str] = mapped_column(String(64))
    stage_name: Mapped[str] = mapped_column(String(100))
    channel_id: Mapped[str] = mapped_column(String(32))
    required_approvals: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=StageStatus.WAITING)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Where the reviewer message lives once the dispatcher has posted it.
    message_channel: Mapped[str | None] = mapped_column(String(32), nullable=True)
    message_ts: Mapped[str | None] = mapped_column(String(32), nullable=True)

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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    stage: Mapped[StageReview] = relationship(back_populates="decisions")


class InfoRequest(Base):
    __tablename__ = "info_requests"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("fr_requests.id"), index=True)
    stage_review_id: Mapped[int] = mapped_column(ForeignKey("stage_reviews.id"))
    asked_by: Mapped[str] = mapped_column(String(32))
    question: Mapped[str] = mapped_column(Text)
    # Same idempotency idea as requests: the asking modal's view id.
    submission_key: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditEvent(Base):
    """Append-only: the migration installs triggers that refuse UPDATE and DELETE."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("fr_requests.id"), nullable=True, index=True)
    actor_id: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReferenceCounter(Base):
    """Per-year counter behind human references such as FR-2026-00042."""

    __tablename__ = "reference_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_value: Mapped[int] = mapped_column(Integer, default=0)


class OutboxStatus:
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"  # cannot succeed without an admin's help (e.g. bot not in channel)


class OutboxMessage(Base):
    """A Slack call owed to users, written in the same transaction as the change it announces."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)

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

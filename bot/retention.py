"""Retention: redact the free text of finished requests once the policy's period has passed (DPA 2018 s.39).

A purge keeps the skeleton (reference, tool, categories, outcome, who decided and when, the policy
version) that statistics and the audit chain need, and removes what officers and reviewers typed: the
request's justifications, decision rationales and conditions, questions and answers, and the matching
free texts of the audit trail (their salted commitments stay in the chain, so it still verifies). Each
purge is itself an audit event, and the request's Slack messages are re-rendered to say the details were
removed: the reviewer messages, the officer's DMs and the notes threaded under the reviewer messages (a
question with its answer), and the payloads the outbox kept of them. A request under legal hold is never
purged.

`purge` is a plain function so the scheduler and `fr-bot retention purge` can both call it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from bot import views
from bot.audit import PURGE_ACTION, REMOVED_TEXT, append_event
from bot.forms import FREE_TEXT_FIELDS
from bot.outbox import REDACT_DMS
from bot.policy import Policy
from bot.workflow import enqueue
from storage.db import transaction
from storage.models import AuditEventText, FrRequest, OutboxMessage, PostUseRecord, utcnow
from storage.queries import request_with_history

# The request's typed free text; everything else on the row is a category, an ID or a time.
REQUEST_TEXT_COLUMNS = FREE_TEXT_FIELDS
SYSTEM_ACTOR = "system"


@dataclass(frozen=True)
class Candidate:
    request_id: int
    reference: str
    status: str
    decided_at: datetime
    due_at: datetime
    legal_hold: bool


@dataclass(frozen=True)
class Purged:
    reference: str
    fields_redacted: int
    texts_removed: int


def candidates(session: Session, policy: Policy, now: datetime) -> list[Candidate]:
    """Finished, not yet redacted requests whose retention period has ended, held ones included."""
    found: list[Candidate] = []
    decided = func.coalesce(FrRequest.decided_at, FrRequest.updated_at)
    for status, days in policy.retention_days.model_dump().items():
        cutoff = now - timedelta(days=days)
        rows = session.execute(
            select(
                FrRequest.id,
                FrRequest.reference,
                FrRequest.status,
                FrRequest.decided_at,
                FrRequest.updated_at,
                FrRequest.legal_hold,
            )
            .where(FrRequest.status == status, FrRequest.redacted_at.is_(None), decided <= cutoff)
            .order_by(FrRequest.id)
        )
        for request_id, reference, request_status, decided_at, updated_at, held in rows:
            moment = decided_at or updated_at
            found.append(
                Candidate(request_id, reference, request_status, moment, moment + timedelta(days=days), held)
            )
    return sorted(found, key=lambda c: c.request_id)


def preview(
    db: sessionmaker[Session], policy: Policy, clock: Callable[[], datetime] = utcnow
) -> list[Candidate]:
    with transaction(db) as session:
        return candidates(session, policy, clock())


def purge(
    db: sessionmaker[Session],
    policy: Policy,
    clock: Callable[[], datetime] = utcnow,
    actor: str = SYSTEM_ACTOR,
    on_outbox: Callable[[], None] = lambda: None,
) -> list[Purged]:
    """Redact every request past retention and not on legal hold; one transaction per request."""
    purged: list[Purged] = []
    for candidate in preview(db, policy, clock):
        if candidate.legal_hold:
            continue
        with transaction(db) as session:
            result = _redact(session, candidate.request_id, policy, clock(), actor)
        if result is not None:
            purged.append(result)
    if purged:
        on_outbox()
    return purged


def _redact(session: Session, request_id: int, policy: Policy, now: datetime, actor: str) -> Purged | None:
    request = request_with_history(session, request_id, lock=True)
    # Checked again under the lock: a hold placed since the preview wins.
    if request is None or request.redacted_at is not None or request.legal_hold:
        return None
    days = policy.retention_days.days_for(request.status)
    decided_at = request.decided_at or request.updated_at
    if days is None or decided_at + timedelta(days=days) > now:
        return None
    redacted: list[str] = []
    for column in REQUEST_TEXT_COLUMNS:
        if getattr(request, column):
            setattr(request, column, REMOVED_TEXT)
            redacted.append(column)
    for stage in request.stages:
        for decision in stage.decisions:
            for column in ("rationale", "conditions"):
                if getattr(decision, column):
                    setattr(decision, column, REMOVED_TEXT)
                    redacted.append(f"decision.{column}")
        for info in stage.info_requests:
            for column in ("question", "answer"):
                if getattr(info, column):
                    setattr(info, column, REMOVED_TEXT)
                    redacted.append(f"info_request.{column}")
    for comment in request.comments:
        comment.text = REMOVED_TEXT
        redacted.append("comment.text")
    post_use = session.scalar(select(PostUseRecord).where(PostUseRecord.request_id == request.id))
    if post_use is not None:
        for column in ("authority", "notes"):
            if getattr(post_use, column):
                setattr(post_use, column, REMOVED_TEXT)
                redacted.append(f"post_use.{column}")
    removed = session.execute(delete(AuditEventText).where(AuditEventText.request_id == request.id)).rowcount
    request.redacted_at = now
    request.updated_at = now
    append_event(
        session,
        actor,
        PURGE_ACTION,
        request.id,
        now,
        {
            "reference": request.reference,
            "status": request.status,
            "retention_days": days,
            "decided_at": decided_at.isoformat(),
            "fields_redacted": len(redacted),
            "audit_texts_removed": removed,
        },
    )
    _scrub_outbox(session, request, policy)
    enqueue(session, "refresh_reviews", {"request_id": request.id}, request.id, now)
    enqueue(session, REDACT_DMS, {"request_id": request.id}, request.id, now)
    return Purged(request.reference, len(redacted), removed)


# The request's outbox rows whose payload holds what was typed: DMs (a decision's rationale and conditions,
# a question) and notes threaded under a reviewer message (a question with its answer).
TEXT_KINDS = ("dm", "stage_note")


def _scrub_outbox(session: Session, request: FrRequest, policy: Policy) -> None:
    """The removal notice in place of the typed text in the request's queued messages, sent or not: kept
    payloads would hold what the purge removed, and a dead one replayed (`fr-bot outbox retry`) or one
    still pending would post it again. The posts already made are edited (REDACT_DMS, bot/outbox.py)."""
    notice = views.redacted_dm(request, policy)
    rows = session.scalars(
        select(OutboxMessage).where(
            OutboxMessage.request_id == request.id, OutboxMessage.kind.in_(TEXT_KINDS)
        )
    ).all()
    for row in rows:
        kept = {key: row.payload[key] for key in ("user", "stage_review_id") if key in row.payload}
        row.payload = {**kept, **notice}


def set_legal_hold(
    db: sessionmaker[Session], reference: str, actor: str, reason: str, now: datetime, hold: bool
) -> bool:
    """Place (hold=True) or release a legal hold; returns False when it was already in that state."""
    with transaction(db) as session:
        request = session.scalars(
            select(FrRequest).where(FrRequest.reference == reference).with_for_update(key_share=True)
        ).first()
        if request is None:
            raise LookupError(reference)
        if request.legal_hold == hold:
            return False
        request.legal_hold = hold
        request.legal_hold_reason = reason if hold else None
        request.updated_at = now
        action = "legal_hold_placed" if hold else "legal_hold_released"
        append_event(session, actor, action, request.id, now, {"reference": reference, "hold_reason": reason})
        return True

"""The workflow core: submit, authorise, decide, ask for information. Plain Python, no Slack.

Every method is one transaction: the state change, its audit events and the outbox rows that announce it
commit together or not at all. Handlers call these and render what they return.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot import deadlines, views
from bot.approvers import ApproverDirectory, ApproverLookupFailed
from bot.forms import DecisionForm, RequestForm
from bot.policy import LoadedPolicy, Tool, ToolStatus, Urgency
from bot.routing import choose_route
from storage.db import transaction
from storage.models import (
    AuditEvent,
    Decision,
    FrRequest,
    InfoRequest,
    OutboxMessage,
    ReferenceCounter,
    RequestStatus,
    StageReview,
    StageStatus,
    utcnow,
)
from storage.queries import request_with_history

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    request_id: int
    reference: str
    route_name: str
    stage_names: tuple[str, ...]
    created: bool  # False when the same modal submission was already stored


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
    session.add(
        AuditEvent(request_id=request_id, actor_id=actor, action=action, details=details, created_at=at)
    )


def enqueue(
    session: Session, kind: str, payload: dict[str, Any], request_id: int | None, at: datetime
) -> None:
    session.add(
        OutboxMessage(request_id=request_id, kind=kind, payload=payload, next_attempt_at=at, created_at=at)
    )


class Workflow:
    def __init__(
        self,
        db: sessionmaker[Session],
        policy: LoadedPolicy,
        approvers: ApproverDirectory,
        clock: Callable[[], datetime] = utcnow,
        on_outbox: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.loaded = policy
        self.policy = policy.policy
        self.approvers = approvers
        self.clock = clock
        # Called after a commit that queued Slack messages, so the dispatcher sends them at once.
        self._on_outbox = on_outbox

    # --- Officer ---------------------------------------------------------------------------------

    def record_refused_submission(self, requester_id: str, tool_id: str, errors: dict[str, str]) -> None:
        """A submission the policy refused outright (prohibited tool, other process) is itself on record."""
        tool = self.policy.tool(tool_id)
        if tool is None or not (
            tool.status is ToolStatus.PROHIBITED or tool.category in self.policy.own_process
        ):
            return
        with transaction(self.db) as session:
            audit(
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

    def submit(self, form: RequestForm, requester_id: str, team_id: str, submission_key: str) -> Submitted:
        tool = self.policy.tool(form.tool)
        if tool is None:  # check_request already refuses unknown tools; this guards direct callers
            raise ValueError(f"unknown tool {form.tool}")
        try:
            with transaction(self.db) as session:
                existing = self._by_submission(session, submission_key)
                if existing is not None:
                    return self._submitted(existing, created=False)
                request = self._create(session, form, tool, requester_id, team_id, submission_key)
                result = self._submitted(request, created=True)
        except IntegrityError:
            # The same modal submitted twice at the same moment: the other transaction won.
            with transaction(self.db) as session:
                existing = self._by_submission(session, submission_key)
                if existing is None:
                    raise
                return self._submitted(existing, created=False)
        self._on_outbox()
        return result

    def _create(
        self, session: Session, form: RequestForm, tool: Tool, requester_id: str, team_id: str, key: str
    ) -> FrRequest:
        now = self.clock()
        route = choose_route(self.policy, tool, form)
        request = FrRequest(
            reference=self._next_reference(session, now),
            submission_key=key,
            team_id=team_id,
            requester_id=requester_id,
            status=RequestStatus.PENDING,
            tool_id=tool.id,
            tool_snapshot=tool.model_dump(mode="json"),
            route_name=route.name,
            policy_version=self.loaded.version,
            current_stage=0,
            created_at=now,
            updated_at=now,
            **form.model_dump(exclude={"tool"}),
        )
        session.add(request)
        for position, stage_id in enumerate(route.stage_ids):
            stage = self.policy.stage(stage_id)
            request.stages.append(
                StageReview(
                    position=position,
                    stage_id=stage.id,
                    stage_name=stage.name,
                    channel_id=stage.channel,
                    required_approvals=stage.required_approvals,
                    status=StageStatus.PENDING if position == 0 else StageStatus.WAITING,
                    started_at=now if position == 0 else None,
                    due_at=deadlines.review_due(self.policy, stage.id, form.urgency, now)
                    if position == 0
                    else None,
                )
            )
        session.flush()
        audit(
            session,
            requester_id,
            "request_submitted",
            request.id,
            now,
            reference=request.reference,
            form=form.model_dump(mode="json"),
            policy_version=self.loaded.version,
            tool=request.tool_snapshot,
        )
        audit(
            session,
            "system",
            "request_routed",
            request.id,
            now,
            route=route.name,
            stages=[s.stage_id for s in request.stages],
        )
        first = request.stages[0]
        enqueue(session, "post_review", {"stage_review_id": first.id}, request.id, now)
        enqueue(session, "dm", views.submitted_dm(request, self.policy), request.id, now)
        return request

    def _next_reference(self, session: Session, now: datetime) -> str:
        year = now.astimezone(self.policy.zone).year
        counter = session.get(ReferenceCounter, year, with_for_update=True)
        if counter is None:
            try:
                with session.begin_nested():
                    session.add(ReferenceCounter(year=year, last_value=0))
            except IntegrityError:
                pass  # another process created this year's counter first
            counter = session.get(ReferenceCounter, year, with_for_update=True, populate_existing=True)
            assert counter is not None
        counter.last_value += 1
        return f"FR-{year}-{counter.last_value:05d}"

    @staticmethod
    def _by_submission(session: Session, key: str) -> FrRequest | None:
        return session.scalars(select(FrRequest).where(FrRequest.submission_key == key)).first()

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

    def _refusal(self, request: FrRequest | None, position: int, user_id: str) -> Refusal | None:
        """Why `user_id` may not act on stage `position` now, or None when they may."""
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
        try:
            policy_stage = self.policy.stage(stage.stage_id)
        except StopIteration:
            return Refusal(
                "stage_removed", f"The {stage.stage_name} stage is no longer in the policy; ask an admin."
            )
        try:
            if not self.approvers.is_approver(policy_stage, user_id):
                return Refusal("not_approver", f"You are not an approver for the {stage.stage_name} stage.")
        except ApproverLookupFailed as exc:
            log.warning("approver lookup failed: %s", exc)
            return Refusal(
                "approvers_unavailable", "Slack could not confirm the approver list; try again shortly."
            )
        if any(d.approver_id == user_id for d in stage.decisions):
            return Refusal(
                "already_decided",
                f"You have already recorded a decision on this stage of {request.reference}.",
            )
        return None

    def authorise(self, request_id: int, position: int, user_id: str, action: str) -> Refusal | None:
        """Check before opening a decision modal; a refusal is recorded in the audit trail."""
        with transaction(self.db) as session:
            request = request_with_history(session, request_id)
            refusal = self._refusal(request, position, user_id)
            if refusal is not None:
                self._record_refusal(session, request, position, user_id, action, refusal)
            return refusal

    def _record_refusal(
        self,
        session: Session,
        request: FrRequest | None,
        position: int,
        user_id: str,
        action: str,
        refusal: Refusal,
    ) -> None:
        audit(
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

    def decide(
        self, request_id: int, position: int, user_id: str, outcome: str, form: DecisionForm
    ) -> Decided | Refusal:
        if outcome not in ("approve", "reject"):
            raise ValueError(outcome)
        try:
            with transaction(self.db) as session:
                # The row lock serialises deciders of one request on PostgreSQL;
                # SQLite's BEGIN IMMEDIATE does the same there.
                request = request_with_history(session, request_id, lock=True)
                refusal = self._refusal(request, position, user_id)
                if refusal is not None:
                    self._record_refusal(session, request, position, user_id, outcome, refusal)
                    return refusal
                assert request is not None
                result = self._apply_decision(
                    session, request, request.stages[position], user_id, outcome, form
                )
        except IntegrityError:
            # Only reachable if two transactions raced past the lock: the database kept one decision.
            return Refusal("already_decided", "Your decision on this stage is already recorded.")
        self._on_outbox()
        return result

    def _apply_decision(
        self,
        session: Session,
        request: FrRequest,
        stage: StageReview,
        user_id: str,
        outcome: str,
        form: DecisionForm,
    ) -> Decided:
        now = self.clock()
        stage.decisions.append(
            Decision(
                request_id=request.id,
                approver_id=user_id,
                outcome=outcome,
                rationale=form.rationale,
                conditions=form.conditions,
                reason_code=form.reason_code,
                policy_version=self.loaded.version,
                created_at=now,
            )
        )
        session.flush()
        audit(
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
        )
        request.updated_at = now
        if outcome == "reject":
            self._close(session, request, stage, StageStatus.REJECTED, RequestStatus.REJECTED, now, user_id)
        elif len(stage.approvals) >= stage.required_approvals:
            stage.status = StageStatus.APPROVED
            stage.completed_at = now
            audit(session, "system", "stage_approved", request.id, now, stage=stage.stage_id)
            following = stage.position + 1
            if following < len(request.stages):
                next_stage = request.stages[following]
                next_stage.status = StageStatus.PENDING
                next_stage.started_at = now
                next_stage.due_at = deadlines.review_due(
                    self.policy, next_stage.stage_id, request.urgency, now
                )
                request.current_stage = following
                audit(session, "system", "stage_started", request.id, now, stage=next_stage.stage_id)
                session.flush()
                enqueue(session, "post_review", {"stage_review_id": next_stage.id}, request.id, now)
            else:
                hours = self.policy.approval_validity_hours.hours_for(Urgency(request.urgency))
                request.valid_until = now + timedelta(hours=hours)
                self._close(
                    session, request, stage, StageStatus.APPROVED, RequestStatus.APPROVED, now, user_id
                )
        enqueue(session, "refresh_reviews", {"request_id": request.id}, request.id, now)
        enqueue(
            session,
            "dm",
            views.decision_dm(request, stage, user_id, outcome, form, self.policy),
            request.id,
            now,
        )
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
        request: FrRequest,
        stage: StageReview,
        stage_status: str,
        status: str,
        now: datetime,
        actor: str,
    ) -> None:
        stage.status = stage_status
        stage.completed_at = now
        for later in request.stages[stage.position + 1 :]:
            later.status = StageStatus.CANCELLED
        request.status = status
        request.decided_at = now
        request.current_stage = None
        details: dict[str, Any] = {"stage": stage.stage_id, "decided_by": actor}
        if request.valid_until is not None:
            details["valid_until"] = request.valid_until.isoformat()
        audit(session, "system", f"request_{status}", request.id, now, **details)

    def request_info(
        self, request_id: int, position: int, user_id: str, question: str, submission_key: str
    ) -> InfoAsked | Refusal:
        with transaction(self.db) as session:
            request = request_with_history(session, request_id, lock=True)
            refusal = self._refusal(request, position, user_id)
            if refusal is not None and refusal.code != "already_decided":
                self._record_refusal(session, request, position, user_id, "request_info", refusal)
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
            audit(
                session, user_id, "info_requested", request.id, now, stage=stage.stage_id, question=question
            )
            enqueue(session, "refresh_reviews", {"request_id": request.id}, request.id, now)
            enqueue(
                session, "dm", views.info_requested_dm(request, stage, user_id, question), request.id, now
            )
            result = InfoAsked(request.reference)
        self._on_outbox()
        return result

    # --- Reading ---------------------------------------------------------------------------------

    def load(self, request_id: int) -> FrRequest | None:
        with transaction(self.db) as session:
            return request_with_history(session, request_id)

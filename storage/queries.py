"""Loading a request with everything the views and the workflow read, in a fixed number of queries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, Select, String, bindparam, func, literal, select
from sqlalchemy.orm import Session, joinedload, raiseload, selectinload

from storage.models import FrRequest, StageReview, StageStatus


def _built_with_history(where: ColumnElement[bool]) -> Select[tuple[FrRequest]]:
    # The stages and their decisions joined to the request (a request has a few stages with a few
    # decisions each), so its status, its stages' and their decisions come from one snapshot. Read a
    # statement each, a decision committed between them gave a reviewer's message a stage marked rejected
    # under a request still pending, with its buttons (bench/NOTES.md item 38). Questions and comments,
    # which no status depends on, by a query each: joining them too would multiply the rows.
    stages = joinedload(FrRequest.stages)
    return (
        select(FrRequest)
        .where(where)
        .options(
            stages.joinedload(StageReview.decisions),
            stages.selectinload(StageReview.info_requests),
            selectinload(FrRequest.comments),
        )
        # A request already in the session is refreshed, not returned as it was read.
        .execution_options(populate_existing=True)
    )


# Built once, as _FOR_REVIEW below: a statement built afresh for every read is keyed afresh too.
_ONE = FrRequest.id == bindparam("request_id")
_WITH_HISTORY = _built_with_history(_ONE)
_MANY_WITH_HISTORY = _built_with_history(FrRequest.id.in_(bindparam("request_ids", expanding=True)))

# A writer's lock on the request's row, taken alone before the request is read. Each statement after it
# takes its snapshot once the lock is held, so it sees what the lock's previous holder committed. Rows
# joined to the locking statement would not: PostgreSQL re-reads only the locked row itself after waiting
# for its lock, and the joined rows stay as they were when the statement began (two deciders would both see
# a stage with no decision). On SQLite, whose writers queue at BEGIN IMMEDIATE, it only finds the row.
# FOR NO KEY UPDATE, the lock an update of the row's other columns takes: it keeps other writers of the
# request out, but not the foreign-key checks of rows that refer to it (KEY SHARE). A writer holding the
# audit chain's head inserts such rows (its audit events; in some transactions outbox rows) for whichever
# requests they concern; if it had to wait for this lock while the lock's holder waited for the head,
# PostgreSQL would abort one of them as a deadlock (tests/test_concurrency.py). Nothing that locks a
# request changes its key or deletes it.
_LOCK_ONE = select(FrRequest.id).where(_ONE).with_for_update(key_share=True)


def _locked(session: Session, request_id: int) -> bool:
    """Whether the request exists, its row now locked for this transaction."""
    return session.scalar(_LOCK_ONE, {"request_id": request_id}) is not None


def request_with_history(session: Session, request_id: int, lock: bool = False) -> FrRequest | None:
    """The request, its stages, their decisions and questions, and its comments, in three statements;
    `lock` first takes the row lock for an update (four)."""
    if lock and not _locked(session, request_id):
        return None
    return session.scalars(_WITH_HISTORY, {"request_id": request_id}).unique().one_or_none()


def requests_with_history(session: Session, request_ids: Sequence[int]) -> list[FrRequest]:
    """Several requests as request_with_history reads one (unlocked), in the order of `request_ids`,
    leaving out any that do not exist: three statements for them all, not three for each (a list in App
    Home; bench/NOTES.md item 39)."""
    if not request_ids:
        return []
    found = session.scalars(_MANY_WITH_HISTORY, {"request_ids": list(request_ids)}).unique()
    by_id = {request.id: request for request in found}
    return [by_id[request_id] for request_id in request_ids if request_id in by_id]


def stage_review(session: Session, stage_review_id: int) -> StageReview | None:
    """One stage review without its decisions and questions, which a stage's own columns (its channel,
    its message) do not need: `session.get` would load both collections, two queries more (touching them
    on the result raises)."""
    return session.get(StageReview, stage_review_id, options=_STAGE_ONLY)


_STAGE_ONLY = (raiseload(StageReview.decisions), raiseload(StageReview.info_requests))


def _built_for_review() -> Select[tuple[FrRequest]]:
    stages = joinedload(FrRequest.stages)
    return (
        select(FrRequest)
        .where(FrRequest.id == bindparam("request_id"))
        .options(
            stages.joinedload(StageReview.decisions),
            stages.raiseload(StageReview.info_requests),
            raiseload(FrRequest.comments),
        )
        .execution_options(populate_existing=True)
    )


# Built once: statements are immutable, and one that is reused also keeps its cache key, which SQLAlchemy
# otherwise works out afresh for every execution (building and keying it was a quarter of this read's CPU).
_FOR_REVIEW = _built_for_review()


def request_for_review(session: Session, request_id: int, lock: bool = False) -> FrRequest | None:
    """The request, its stages and their decisions: what authorising a reviewer's click and the decision
    and question modals read, and the writers that change only those (a decision, a withdrawal, a record
    of use), in one joined query (a request has a few stages with a few decisions each);
    request_with_history takes three. On the path of every reviewer click, where the selectin loaders'
    two extra queries cost half the click's CPU (bench/NOTES.md, item 24). `lock` first takes the row
    lock for an update: two statements (request_with_history's four). Questions and comments
    are not loaded (touching them on the result raises)."""
    if lock and not _locked(session, request_id):
        return None
    return session.scalars(_FOR_REVIEW, {"request_id": request_id}).unique().one_or_none()


# A stage awaiting its decision, whose request is then pending too (storage/models.py, PENDING_STAGE). The
# status is written into the SQL, not bound: a generic plan of a prepared statement cannot use the partial
# index of pending stages (ix_stage_reviews_pending_due) for a status it does not know (as bot/outbox.py's
# due query).
IS_PENDING_STAGE = StageReview.status == literal(StageStatus.PENDING, String, literal_execute=True)


def pending_by_stage(session: Session) -> list[tuple[str, int, datetime | None]]:
    """Pending stages counted by stage name, each with its oldest's start, in name order: the leads'
    figures in App Home and in the digest. From the stages alone, without joining their requests
    (bench/NOTES.md item 42)."""
    rows = session.execute(
        select(StageReview.stage_name, func.count(), func.min(StageReview.started_at))
        .where(IS_PENDING_STAGE)
        .group_by(StageReview.stage_name)
        .order_by(StageReview.stage_name)
    )
    return [(name, int(count), oldest) for name, count, oldest in rows]

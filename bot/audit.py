"""The tamper-evident audit trail: a hash chain over every audit event, with redactable free text.

Each event's `hash` is SHA-256 over a canonical serialisation of the event (seq, request_id, actor, action,
details, created_at) and the previous event's hash, so editing, deleting, inserting or reordering a row
breaks the chain at that row, and `verify_chain` names it.

Personal free text (justifications, rationales, questions…) is not chained in the clear: `append_event`
replaces it in `details` by a salted commitment `{"$sealed": sha256(salt || text)}` and keeps the text and
its salt in `audit_event_texts`. A retention purge deletes those rows (and says so in a chained event);
the chain still verifies, and every text still present must match its commitment. Without the salt a
commitment reveals nothing about a short text.

Appends are serialised: on PostgreSQL the single `audit_chain_head` row is locked FOR UPDATE in the same
transaction as the insert; SQLite already serialises writers with BEGIN IMMEDIATE (storage/db.py). That
lock is shared by every writer, so the workflow takes it last: `append_at_commit` seals an event when it
happens and `append_deferred` chains the transaction's events just before its commit.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import JSON, Connection, Engine, Text, bindparam, cast, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.forms import FREE_TEXT_FIELDS
from storage.canonical import canonical_json
from storage.db import READ_SNAPSHOT, kept_for_the_commit, transaction
from storage.models import AuditChainHead, AuditEvent, AuditEventText, utcnow
from storage.recordsets import PARAMETER, document, members, recordset

GENESIS_HASH = "0" * 64
HEAD_ID = 1
SEALED = "$sealed"
REMOVED_TEXT = "[removed under the retention policy]"
# Detail keys whose string values are personal free text, at any depth of `details`. A new event carrying
# typed text must use one of these keys (or add its key here) so that retention can remove the text.
SEALED_KEYS = frozenset(
    {
        *FREE_TEXT_FIELDS,
        "rationale",
        "conditions",
        "question",
        "answer",
        "hold_reason",
        "notes",
        "comment",
        "authority",
    }
)
VIEW_ACTION = "request_viewed"
PURGE_ACTION = "request_purged"
MAX_REPORTED_PROBLEMS = 100
STREAM_BATCH = 5000


class AuditChainError(Exception):
    """The chain cannot be appended to safely (its head is gone while events exist)."""


# --- Canonical form ---------------------------------------------------------------------------------


def canonical_time(moment: datetime) -> str:
    """UTC, microsecond precision, fixed width: the same instant always serialises the same way."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(
    seq: int,
    request_id: int | None,
    actor: str,
    action: str,
    details: dict[str, Any],
    created_at: datetime,
    prev_hash: str,
) -> str:
    record = {
        "seq": seq,
        "request_id": request_id,
        "actor": actor,
        "action": action,
        "details": details,
        "created_at": canonical_time(created_at),
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(record).encode("utf-8")).hexdigest()


def _serialised_around(
    request_id: int | None, actor: str, action: str, details_json: str, created_at: datetime
) -> tuple[str, str]:
    """serialised_event's text but for the two values the chain's head gives: the text before the previous
    hash, and the text between it and the sequence number (the number and a closing brace end it)."""
    request = "null" if request_id is None else str(int(request_id))
    return (
        f'{{"action":{canonical_json(action)},"actor":{canonical_json(actor)},'
        f'"created_at":"{canonical_time(created_at)}","details":{details_json},"prev_hash":',
        f',"request_id":{request},"seq":',
    )


def serialised_event(
    seq: int,
    request_id: int | None,
    actor: str,
    action: str,
    details_json: str,
    created_at: datetime,
    prev_hash: str,
) -> str:
    """canonical_json of the record `event_hash` hashes, built around details already in canonical text.

    The database stores JSON canonically (storage/canonical.py), so verification can use the stored text
    as it is; keys appear here in sorted order, exactly as canonical_json would put them.
    """
    before_prev, before_seq = _serialised_around(request_id, actor, action, details_json, created_at)
    return f"{before_prev}{canonical_json(prev_hash)}{before_seq}{int(seq)}}}"


def commitment(salt: str, text: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + text.encode("utf-8")).hexdigest()


# --- Sealing free text ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedText:
    path: str
    salt: str
    text: str


def seal(details: dict[str, Any]) -> tuple[dict[str, Any], list[SealedText]]:
    """Replace free text under SEALED_KEYS by commitments; return the chained details and the texts."""
    texts: list[SealedText] = []

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            result = {}
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                if key in SEALED_KEYS and isinstance(item, str) and item:
                    salt = secrets.token_hex(16)
                    texts.append(SealedText(where, salt, item))
                    result[key] = {SEALED: commitment(salt, item)}
                else:
                    result[key] = walk(item, where)
            return result
        if isinstance(value, list):
            return [walk(item, f"{path}.{index}") for index, item in enumerate(value)]
        return value

    return walk(details, ""), texts


def sealed_paths(details: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, commitment) of every sealed field in chained details."""
    if isinstance(details, dict):
        if len(details) == 1 and isinstance(details.get(SEALED), str):
            yield path, details[SEALED]
            return
        for key, item in details.items():
            yield from sealed_paths(item, f"{path}.{key}" if path else str(key))
    elif isinstance(details, list):
        for index, item in enumerate(details):
            yield from sealed_paths(item, f"{path}.{index}")


def unseal(details: Any, texts: dict[str, str], path: str = "") -> Any:
    """Details with each commitment replaced by its text, or by REMOVED_TEXT once purged."""
    if isinstance(details, dict):
        if len(details) == 1 and isinstance(details.get(SEALED), str):
            return texts.get(path, REMOVED_TEXT)
        return {
            key: unseal(item, texts, f"{path}.{key}" if path else str(key)) for key, item in details.items()
        }
    if isinstance(details, list):
        return [unseal(item, texts, f"{path}.{index}") for index, item in enumerate(details)]
    return details


# --- Appending --------------------------------------------------------------------------------------


HEAD = AuditChainHead.__table__
EVENTS = AuditEvent.__table__
TEXTS = AuditEventText.__table__


def _locked_head(session: Session) -> tuple[int, str]:
    """The chain head's sequence number and hash, its row locked to the end of the transaction."""
    query = select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == HEAD_ID).with_for_update()
    head = session.execute(query).first()
    if head is not None:
        return head.seq, head.hash
    # Try to start the chain first: a concurrent first append may have inserted the head (and events)
    # since our read, so "no head but events" is only a fault if our own insert of the head succeeds.
    try:
        with session.begin_nested():
            session.execute(insert(HEAD).values(id=HEAD_ID, seq=0, hash=GENESIS_HASH))
        started_here = True
    except IntegrityError:
        started_here = False  # another transaction started the chain first; lock its row below
    head = session.execute(query).first()
    assert head is not None
    if started_here and session.scalar(select(func.count()).select_from(EVENTS)):
        raise AuditChainError(
            "audit_chain_head is missing although audit events exist: run `fr-bot audit verify`"
        )
    return head.seq, head.hash


@dataclass(frozen=True)
class PreparedEvent:
    """An event sealed and ready to chain: all its work done except what needs the chain head."""

    actor: str
    action: str
    request_id: int | None
    at: datetime
    details: dict[str, Any]  # chained form: free text replaced by commitments
    texts: list[SealedText]
    # `details` in canonical text: what the chain hashes and the database stores, serialised once here.
    details_json: str = ""

    def __post_init__(self) -> None:
        if not self.details_json:
            object.__setattr__(self, "details_json", canonical_json(self.details))

    def with_plain(self, **values: str | int | None) -> PreparedEvent:
        """The event with details added that are not free text (nothing to seal), e.g. a reference only
        known at the end of the transaction: what is costly to prepare can be done before taking locks."""
        if SEALED_KEYS.intersection(values):
            raise ValueError(f"free text must be sealed: {sorted(SEALED_KEYS.intersection(values))}")
        return replace(self, details={**self.details, **values}, details_json="")


# How a sealed key appears in canonical JSON text: as a key, quoted and followed by a colon. Inside a
# string value the quotes would be escaped, so text without any of these has nothing to seal.
_SEALED_KEY_TEXTS = tuple(f'"{key}":' for key in SEALED_KEYS)


def prepare_event(
    actor: str, action: str, request_id: int | None, at: datetime, details: dict[str, Any]
) -> PreparedEvent:
    # Round-trip through JSON so what we hash is exactly what the database gives back later.
    text = canonical_json(details)
    plain = json.loads(text)
    if not any(key in text for key in _SEALED_KEY_TEXTS):  # most events: no free text to seal
        return PreparedEvent(actor, action, request_id, at, plain, [], text)
    chained, texts = seal(plain)
    return PreparedEvent(actor, action, request_id, at, chained, texts)


_EVENT_COLUMNS = ["seq", "request_id", "actor_id", "action", "details", "created_at", "prev_hash", "hash"]


def _insert_events(details: Any) -> Any:
    values = {name: bindparam(name) for name in _EVENT_COLUMNS if name != "details"}
    return insert(EVENTS).values({**values, "details": details})


# SQLite, or a batch that cannot go as JSON: an executemany, by dialect. The details go in as the canonical
# text the chain hashed (`PreparedEvent.details_json`), not as a dict for the JSON type to serialise again;
# a `json` column keeps the text as given, as SQLite's text does.
_INSERT_EVENT_ROWS = {
    "postgresql": _insert_events(cast(bindparam("details_json", type_=Text), JSON)),
    "sqlite": _insert_events(bindparam("details_json", type_=Text)),
}


_TEXT_COLUMNS = ["event_seq", "request_id", "path", "salt", "text"]


# The head moved to the batch's last event: alone (SQLite, or a batch that cannot go as JSON), or as the
# statement whose CTEs insert the batch (`_appending`).
_MOVE_HEAD = (
    update(HEAD).where(HEAD.c.id == HEAD_ID).values(seq=bindparam("head_seq"), hash=bindparam("head_hash"))
)


def _appending(with_texts: bool) -> Any:
    """PostgreSQL's append as one statement: the batch's events (and their sealed texts) inserted from JSON
    (storage/recordsets.py) by data-modifying CTEs of the head's update, which PostgreSQL runs to
    completion whether or not the update reads them. Under the head's lock that is one round trip where
    it took three, each a wait for the server and then for this process's GIL, which the other sweeps'
    threads hold while they build their rows (bench/NOTES.md item 51)."""
    events = insert(EVENTS).from_select(_EVENT_COLUMNS, select(recordset(EVENTS, _EVENT_COLUMNS)))
    statement = _MOVE_HEAD.add_cte(events.cte("new_events"))
    if with_texts:
        texts = insert(TEXTS).from_select(
            _TEXT_COLUMNS, select(recordset(TEXTS, _TEXT_COLUMNS, parameter="texts"))
        )
        statement = statement.add_cte(texts.cte("new_texts"))
    return statement


_APPEND = {False: _appending(False), True: _appending(True)}


class _Ahead(NamedTuple):
    """What an event's append can do before the chain's head is locked: everything but the sequence
    number and the hashes."""

    # serialised_event's text before the previous hash, and between it and the sequence number.
    before_prev: str
    before_seq: str
    # Its row's other columns, and each sealed text's, as JSON members (storage/recordsets.members);
    # None where the text holds a NUL, which PostgreSQL's JSON cannot take.
    row: str | None
    texts: list[str | None]


def _ahead(prepared: PreparedEvent, as_json: bool) -> _Ahead:
    before_prev, before_seq = _serialised_around(
        prepared.request_id, prepared.actor, prepared.action, prepared.details_json, prepared.at
    )
    if not as_json:
        return _Ahead(before_prev, before_seq, None, [])
    row = {
        "request_id": prepared.request_id,
        "actor_id": prepared.actor,
        "action": prepared.action,
        "created_at": prepared.at,
    }
    # The details as the canonical text the chain hashes (canonical_json's text of the same value, which
    # round trips: see prepare_event), not encoded again.
    texts = [
        members({"request_id": prepared.request_id, "path": text.path, "salt": text.salt, "text": text.text})
        for text in prepared.texts
    ]
    return _Ahead(before_prev, before_seq, members(row, {"details": prepared.details_json}), texts)


def append_events(session: Session, events: list[PreparedEvent]) -> None:
    """Chain prepared events, in order, inside the caller's transaction.

    The head row is locked from here to the commit, and every writer waits for it, so what does not need
    the head is done first: the session's pending changes are written, and each event's serialisation
    and row are written out but for the sequence number and hashes. Under the lock there is then one
    loop of hashing and, on PostgreSQL, one statement (`_appending`). Core statements, not the ORM's unit
    of work: every write transaction ends here (bench/NOTES.md).
    """
    if not events:
        return
    session.flush()
    as_json = session.get_bind().dialect.name == "postgresql"
    ahead = [_ahead(prepared, as_json) for prepared in events]
    as_json = as_json and all(a.row is not None and None not in a.texts for a in ahead)
    seq, prev_hash = _locked_head(session)
    head_seq = seq
    # Each event's previous hash as JSON text: the head's as canonical_json writes it, then hex digests.
    previous = [canonical_json(prev_hash)]
    hashes: list[str] = []
    for a in ahead:
        seq += 1
        serialised = f"{a.before_prev}{previous[-1]}{a.before_seq}{seq}}}"
        hashes.append(hashlib.sha256(serialised.encode("utf-8")).hexdigest())
        previous.append(f'"{hashes[-1]}"')
    # Inserted while holding the head lock, in seq order, so ids grow with seq (verify checks that too).
    if as_json:
        numbers = range(head_seq + 1, seq + 1)
        chained = zip(numbers, previous, hashes, ahead, strict=False)  # `previous` has one more
        rows = [f'"hash":"{digest}","prev_hash":{prev},"seq":{n},{a.row}' for n, prev, digest, a in chained]
        texts = [f'"event_seq":{n},{text}' for n, a in zip(numbers, ahead, strict=True) for text in a.texts]
        parameters = {PARAMETER: document(rows), "head_seq": seq, "head_hash": hashes[-1]}
        if texts:
            parameters["texts"] = document(texts)
        session.execute(_APPEND[bool(texts)], parameters)
        return
    _append_as_rows(session, events, head_seq, prev_hash, hashes)


def _append_as_rows(
    session: Session, events: list[PreparedEvent], head_seq: int, prev_hash: str, hashes: list[str]
) -> None:
    """SQLite's append, and PostgreSQL's for a batch that cannot go as JSON: the events and their texts as
    executemanys, then the head's update. The details go in as the canonical text the chain hashed
    (`PreparedEvent.details_json`), not as a dict for the JSON type to serialise again."""
    rows: list[dict[str, Any]] = []
    texts: list[dict[str, Any]] = []
    for seq, (prepared, digest) in enumerate(zip(events, hashes, strict=True), start=head_seq + 1):
        rows.append(
            {
                "seq": seq,
                "request_id": prepared.request_id,
                "actor_id": prepared.actor,
                "action": prepared.action,
                "details_json": prepared.details_json,
                "created_at": prepared.at,
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
        texts.extend(
            {
                "event_seq": seq,
                "request_id": prepared.request_id,
                "path": text.path,
                "salt": text.salt,
                "text": text.text,
            }
            for text in prepared.texts
        )
        prev_hash = digest
    session.execute(_INSERT_EVENT_ROWS[session.get_bind().dialect.name], rows)
    if texts:
        session.execute(insert(TEXTS), texts)
    session.execute(_MOVE_HEAD, {"head_seq": head_seq + len(hashes), "head_hash": prev_hash})


def append_event(
    session: Session,
    actor: str,
    action: str,
    request_id: int | None,
    at: datetime,
    details: dict[str, Any],
) -> None:
    """Add one event to the chain inside the caller's transaction."""
    append_events(session, [prepare_event(actor, action, request_id, at, details)])


# Events of a transaction waiting to be chained just before its commit (see `append_at_commit`).
DEFERRED_KEY = "frbot_audit_deferred"


def append_at_commit(session: Session, prepared: PreparedEvent) -> None:
    """Queue an event for `append_deferred`, which the caller runs as the last step of its transaction.

    The chain head is one row every writer locks: locking it last, right before the commit, keeps that
    database-wide queue as short as possible. For events nothing later in the transaction reads back.
    """
    session.info.setdefault(DEFERRED_KEY, []).append(prepared)


def append_deferred(session: Session) -> None:
    append_events(session, session.info.pop(DEFERRED_KEY, []))


# A transaction that queued events but never chained them would commit a change without its record.
kept_for_the_commit(
    DEFERRED_KEY, lambda: AuditChainError("audit events queued with append_at_commit were never chained")
)


def record_view(
    target: Session | sessionmaker[Session],
    actor: str,
    request_id: int,
    surface: str,
    at: datetime | None = None,
) -> None:
    """Log that `actor` saw the full details of a request on `surface` (s.62 DPA 2018 consultation log).

    Pass the caller's session to log within its transaction, or a session factory to commit on its own.
    Within a transaction, append after taking any row locks (as the workflow does): the chain head is
    locked last everywhere, so two transactions never wait on each other in opposite order.
    """
    moment = at or utcnow()
    if isinstance(target, Session):
        append_event(target, actor, VIEW_ACTION, request_id, moment, {"surface": surface})
        return
    with transaction(target) as session:
        append_event(session, actor, VIEW_ACTION, request_id, moment, {"surface": surface})


def texts_for(session: Session, seqs: Iterable[int]) -> dict[int, dict[str, tuple[str, str]]]:
    """The remaining free texts of the given events: {seq: {path: (salt, text)}}."""
    wanted = list(seqs)
    found: dict[int, dict[str, tuple[str, str]]] = {}
    for start in range(0, len(wanted), 1000):
        rows = session.execute(
            select(
                AuditEventText.event_seq, AuditEventText.path, AuditEventText.salt, AuditEventText.text
            ).where(AuditEventText.event_seq.in_(wanted[start : start + 1000]))
        )
        for seq, path, salt, text in rows:
            found.setdefault(seq, {})[path] = (salt, text)
    return found


# --- Verification -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    seq: int | None
    event_id: int | None
    kind: str  # edited | deleted | inserted | reordered | text_edited | text_deleted | text_inserted | head
    message: str

    def describe(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "chain"
        if self.event_id is not None:
            where += f" (event id {self.event_id})"
        return f"{where}: {self.kind}: {self.message}"


@dataclass
class Verification:
    events: int = 0
    texts_checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    last_hash: str = GENESIS_HASH
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, problem: Problem) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(problem)

    @property
    def first(self) -> Problem | None:
        """The first broken link of the chain itself, else the first problem with a free text."""
        return min(
            self.problems, key=lambda p: (p.kind.startswith("text_"), p.seq is None, p.seq or 0), default=None
        )


def _stream(connection: Connection, query: Any) -> Iterator[Any]:
    result = connection.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(query)
    for partition in result.partitions():
        yield from partition


def verify_chain(bind: Engine | Connection, anchors: dict[int, str] | None = None) -> Verification:
    """Walk the whole chain in seq order and report every broken link, first one first.

    `anchors` maps seq to a hash recorded outside the database (e.g. printed in a monthly report): a
    chain rewritten from scratch by someone who knows the algorithm still fails those.
    """
    if isinstance(bind, Engine):
        # One snapshot for the head and both streams, so events appended meanwhile are not mistaken for
        # insertions, and the bot keeps writing while we read.
        options: dict[str, Any] = {READ_SNAPSHOT: True}
        if bind.dialect.name == "postgresql":
            options["isolation_level"] = "REPEATABLE READ"
        with bind.connect().execution_options(**options) as connection:
            return verify_chain(connection, anchors)
    started = time.perf_counter()
    anchors = dict(anchors or {})
    report = Verification()
    head = bind.execute(
        select(AuditChainHead.seq, AuditChainHead.hash).where(AuditChainHead.id == HEAD_ID)
    ).first()
    head_seq = head.seq if head is not None else None
    events = _stream(
        bind,
        select(
            AuditEvent.seq,
            AuditEvent.id,
            AuditEvent.request_id,
            AuditEvent.actor_id,
            AuditEvent.action,
            cast(AuditEvent.details, Text),
            AuditEvent.created_at,
            AuditEvent.prev_hash,
            AuditEvent.hash,
        ).order_by(AuditEvent.seq),
    )
    texts = _stream(
        bind,
        select(
            AuditEventText.event_seq, AuditEventText.path, AuditEventText.salt, AuditEventText.text
        ).order_by(AuditEventText.event_seq, AuditEventText.path),
    )
    pending_text = next(texts, None)
    # A missing text is the purge's doing only if its request was purged after its event (a legal hold's
    # reason written after the purge is not removed by it). The purge events are verified below with the
    # rest of the chain.
    purged_at: dict[int, int] = {
        request_id: seq
        for request_id, seq in bind.execute(
            select(AuditEvent.request_id, func.max(AuditEvent.seq))
            .where(AuditEvent.action == PURGE_ACTION, AuditEvent.request_id.is_not(None))
            .group_by(AuditEvent.request_id)
        )
    }
    expected_seq, expected_prev, previous_id, flagged = 1, GENESIS_HASH, 0, False
    sha256 = hashlib.sha256
    for seq, event_id, request_id, actor, action, details_json, created_at, prev_hash, stored_hash in events:
        report.events += 1
        serialised = serialised_event(seq, request_id, actor, action, details_json, created_at, prev_hash)
        content_ok = sha256(serialised.encode("utf-8")).hexdigest() == stored_hash
        details: Any = None
        if not content_ok:
            # Stored in another JSON form (e.g. copied through jsonb)? Then compare the canonical form.
            details = _parse(details_json)
            content_ok = details is not None and stored_hash == event_hash(
                seq, request_id, actor, action, details, created_at, prev_hash
            )
        linked = prev_hash == expected_prev
        found = _link_problems(
            seq, event_id, content_ok, linked, expected_seq, previous_id, flagged, head_seq
        )
        for problem in found:
            report.add(problem)
        flagged = bool(found)
        if seq in anchors and anchors.pop(seq) != stored_hash:
            report.add(
                Problem(
                    seq, event_id, "edited", "its hash differs from the anchor recorded outside the database"
                )
            )
        # Free texts of this event.
        event_texts: dict[str, tuple[str, str]] = {}
        while pending_text is not None and pending_text[0] <= seq:
            text_seq, path, salt, text = pending_text
            if text_seq < seq:
                report.add(
                    Problem(
                        text_seq,
                        None,
                        "text_inserted",
                        f"free text '{path}' belongs to no event in the chain (was its event deleted?)",
                    )
                )
            else:
                event_texts[path] = (salt, text)
            pending_text = next(texts, None)
        if '"$sealed"' in details_json:
            if details is None:
                details = _parse(details_json)
            for path, committed in sealed_paths(details):
                stored = event_texts.pop(path, None)
                if stored is None:
                    purge = purged_at.get(request_id) if request_id is not None else None
                    if purge is None or purge < seq:
                        when = "its request was never purged" if purge is None else "after its purge"
                        report.add(
                            Problem(seq, event_id, "text_deleted", f"free text '{path}' was deleted ({when})")
                        )
                    continue
                report.texts_checked += 1
                if commitment(stored[0], stored[1]) != committed:
                    report.add(
                        Problem(
                            seq,
                            event_id,
                            "text_edited",
                            f"free text '{path}' does not match the commitment in the chain",
                        )
                    )
        for path in event_texts:
            report.add(
                Problem(seq, event_id, "text_inserted", f"free text '{path}' is not committed in the chain")
            )
        # Carry on from what the row claims, so each later break is reported on its own.
        expected_seq, expected_prev, previous_id = seq + 1, stored_hash, event_id
        report.last_hash = stored_hash
    while pending_text is not None:
        report.add(
            Problem(
                pending_text[0], None, "text_inserted", f"free text '{pending_text[1]}' belongs to no event"
            )
        )
        pending_text = next(texts, None)
    for seq in anchors:
        report.add(Problem(seq, None, "deleted", "an anchored event is no longer in the chain"))
    _check_head(head, report, expected_seq - 1)
    report.seconds = time.perf_counter() - started
    return report


def _parse(details_json: str) -> Any:
    try:
        return json.loads(details_json)
    except ValueError:
        return None


def _link_problems(
    seq: int,
    event_id: int,
    content_ok: bool,
    linked: bool,
    expected_seq: int,
    previous_id: int,
    previous_flagged: bool,
    head_seq: int | None,
) -> list[Problem]:
    """What is wrong with one row's place in the chain, named the way an auditor would say it."""
    if head_seq is not None and seq > head_seq:
        return [
            Problem(
                seq,
                event_id,
                "inserted",
                f"the event lies beyond the chain head (seq {head_seq}): "
                "it was added outside the application",
            )
        ]
    problems: list[Problem] = []
    if seq > expected_seq:
        missing = f"seq {expected_seq}" if seq == expected_seq + 1 else f"seq {expected_seq}–{seq - 1}"
        problems.append(
            Problem(
                seq,
                event_id,
                "deleted",
                f"{seq - expected_seq} event(s) missing before this one ({missing} deleted)",
            )
        )
    elif event_id <= previous_id:
        problems.append(
            Problem(
                seq,
                event_id,
                "reordered",
                f"event id {event_id} comes after event id {previous_id} (seq {expected_seq - 1}) in the "
                "chain: rows were reordered",
            )
        )
    elif not linked and not content_ok:
        problems.append(
            Problem(
                seq,
                event_id,
                "reordered",
                "neither its content nor its link to the previous event matches: the event was moved "
                "here from elsewhere in the chain (reordered), or inserted",
            )
        )
    elif not linked and not previous_flagged:
        # When the previous row is already reported, a broken link here is the other side of that break.
        problems.append(
            Problem(
                seq,
                event_id,
                "inserted",
                "its prev_hash does not match the previous event's hash: an event was inserted before "
                "it, or the previous event was rewritten together with its hash",
            )
        )
    if not content_ok and (linked or seq > expected_seq):
        problems.append(
            Problem(seq, event_id, "edited", "its content does not match its hash: the event was edited")
        )
    return problems


def _check_head(head: Any, report: Verification, last_seq: int) -> None:
    if head is None:
        if report.events:
            report.add(Problem(None, None, "head", "the chain head row is missing"))
        return
    report.head_seq, report.head_hash = head.seq, head.hash
    if head.seq > last_seq:
        report.add(
            Problem(
                last_seq + 1,
                None,
                "deleted",
                f"the chain head records seq {head.seq} but the last event is seq {last_seq}: "
                f"seq {last_seq + 1}–{head.seq} deleted from the end",
            )
        )
    elif head.seq == last_seq and head.hash != report.last_hash:
        report.add(Problem(last_seq, None, "edited", "the last event's hash differs from the chain head"))

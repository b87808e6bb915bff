"""Evidence: one request's whole timeline, streaming exports of the audit trail, per-request evidence packs.

Everything here reads the database; the callers (bot/cli.py) log each view with `bot.audit.record_view`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from bot import forms, pack_verifier
from bot.audit import (
    VIEW_ACTION,
    Verification,
    canonical_json,
    canonical_time,
    commitment,
    event_hash,
    sealed_paths,
    texts_for,
    unseal,
)
from bot.policy import (
    SERIOUSNESS_LABELS,
    SUBJECT_LABELS,
    URGENCY_LABELS,
    Policy,
    Seriousness,
    SubjectCategory,
    Urgency,
)
from storage.models import AuditEvent, AuditEventText, FrRequest
from storage.queries import request_with_history

EXPORT_COLUMNS = (
    "seq",
    "event_id",
    "created_at",
    "request_id",
    "reference",
    "actor",
    "action",
    "details",
    "prev_hash",
    "hash",
)
STREAM_BATCH = 2000


def find_request(session: Session, reference: str) -> FrRequest | None:
    request_id = session.scalar(select(FrRequest.id).where(FrRequest.reference == reference.strip().upper()))
    return request_with_history(session, request_id) if request_id is not None else None


def utc_text(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


# --- Parsing time ranges ----------------------------------------------------------------------------


def parse_moment(value: str, zone: ZoneInfo, end_of_day: bool = False) -> datetime:
    """A date (YYYY-MM-DD: midnight in the policy's zone, or the next midnight for an `until`) or an ISO
    date-time (the policy's zone unless it names one)."""
    value = value.strip()
    try:
        day = date.fromisoformat(value)
    except ValueError:
        moment = datetime.fromisoformat(value)
        return moment if moment.tzinfo else moment.replace(tzinfo=zone)
    if end_of_day:
        day += timedelta(days=1)
    return datetime.combine(day, time(0), tzinfo=zone)


# --- One request's timeline -------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineEvent:
    seq: int
    event_id: int
    created_at: datetime
    actor: str
    action: str
    details: dict[str, Any]  # as chained: free text replaced by commitments
    prev_hash: str
    hash: str
    texts: dict[str, tuple[str, str]]  # path: (salt, text) for the free texts still retained

    @property
    def readable(self) -> dict[str, Any]:
        return unseal(self.details, {path: text for path, (_salt, text) in self.texts.items()})


def request_events(session: Session, request_id: int) -> list[TimelineEvent]:
    rows = session.execute(
        select(
            AuditEvent.seq,
            AuditEvent.id,
            AuditEvent.created_at,
            AuditEvent.actor_id,
            AuditEvent.action,
            AuditEvent.details,
            AuditEvent.prev_hash,
            AuditEvent.hash,
        )
        .where(AuditEvent.request_id == request_id)
        .order_by(AuditEvent.seq)
    ).all()
    texts = texts_for(session, [row.seq for row in rows])
    return [TimelineEvent(*row, texts=texts.get(row.seq, {})) for row in rows]


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else canonical_json(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", "<br>")


def choice_label(labels: dict[Any, str], kind: Any, value: str) -> str:
    """The label of a stored choice; the stored value itself if the policy's vocabulary has moved on."""
    try:
        return labels[kind(value)]
    except (KeyError, ValueError):
        return value


def _labels(policy: Policy, request: FrRequest) -> list[tuple[str, str]]:
    tool = request.tool_snapshot
    register = f"{tool.get('name')} ({tool.get('category')}, {tool.get('status')}; {tool.get('jurisdiction')}"
    if tool.get("dpia_reference"):
        register += f"; DPIA {tool['dpia_reference']}"
    return [
        ("Status", request.status),
        ("Requester", request.requester_id),
        ("Tool (register entry when requested)", register + ")"),
        ("Policy version", request.policy_version),
        ("Route", request.route_name),
        ("Case reference", request.case_reference),
        ("Purpose", policy.label(policy.purposes, request.purpose)),
        (
            "Offence",
            f"{policy.label(policy.offence_categories, request.offence_category)}, "
            f"{choice_label(SERIOUSNESS_LABELS, Seriousness, request.offence_seriousness)}",
        ),
        (
            "Subject",
            choice_label(SUBJECT_LABELS, SubjectCategory, request.subject_category)
            + (" (child)" if request.subject_is_child else ""),
        ),
        ("Image source", policy.label(policy.image_provenance, request.image_source)),
        ("Urgency", choice_label(URGENCY_LABELS, Urgency, request.urgency)),
        ("Submitted", utc_text(request.created_at)),
        ("Decided", utc_text(request.decided_at)),
        ("Valid until", utc_text(request.valid_until)),
        ("Legal hold", f"yes: {request.legal_hold_reason}" if request.legal_hold else "no"),
        ("Details removed (retention)", utc_text(request.redacted_at) if request.redacted_at else "no"),
    ]


def differences_from_trail(request: FrRequest, events: list[TimelineEvent]) -> list[str]:
    """Where the request's rows say other than its audit trail. The timeline shows the justifications,
    rationales, conditions, questions and answers from the rows (fr_requests, decisions, info_requests),
    which are not append-only; the chain is, and keeps each of those texts. A pack must not present an
    edited row as the record while it says the chain is intact. Texts removed by a purge (from both) are
    not compared."""
    if request.redacted_at is not None:
        return []
    found: list[str] = []
    submitted = next((e for e in events if e.action == "request_submitted"), None)
    if submitted is not None:
        form = submitted.readable.get("form") or {}
        for field in forms.FREE_TEXT_FIELDS:
            if field in form and str(form[field] or "") != str(getattr(request, field, "") or ""):
                found.append(f"the request's {field} differs from its submission (seq {submitted.seq})")
    recorded = {
        (e.readable.get("stage"), e.actor, e.readable.get("outcome")): e
        for e in events
        if e.action == "decision_recorded"
    }
    asked: Counter[tuple[Any, ...]] = Counter()
    answered: Counter[tuple[Any, ...]] = Counter()
    for e in events:
        if e.action == "info_requested":
            asked[(e.readable.get("stage"), e.actor, e.readable.get("question"))] += 1
        elif e.action == "info_answered":
            details = e.readable
            answered[(details.get("stage"), details.get("question"), details.get("answer"))] += 1
    for stage in request.stages:
        for decision in stage.decisions:
            event = recorded.get((stage.stage_id, decision.approver_id, decision.outcome))
            if event is None:
                found.append(
                    f"the {decision.outcome} by {decision.approver_id} ({stage.stage_id}) has no event"
                )
                continue
            for field in ("rationale", "conditions"):
                if str(event.readable.get(field) or "") != str(getattr(decision, field) or ""):
                    found.append(
                        f"the {field} of the {decision.outcome} by {decision.approver_id} ({stage.stage_id}) "
                        f"differs from its event (seq {event.seq})"
                    )
        rows_asked = Counter((stage.stage_id, i.asked_by, i.question) for i in stage.info_requests)
        rows_answered = Counter(
            (stage.stage_id, i.question, i.answer) for i in stage.info_requests if i.answer is not None
        )
        trail_asked = Counter({key: n for key, n in asked.items() if key[0] == stage.stage_id})
        trail_answered = Counter({key: n for key, n in answered.items() if key[0] == stage.stage_id})
        if rows_asked != trail_asked or rows_answered != trail_answered:
            found.append(f"the questions or answers of the {stage.stage_id} stage differ from their events")
    return found


def timeline_markdown(
    request: FrRequest,
    events: list[TimelineEvent],
    policy: Policy,
    generated_by: str,
    now: datetime,
    differences: list[str] | None = None,
) -> str:
    """`differences`: `differences_from_trail`'s, when the caller has them already."""
    from bot import views  # the labels of the justification fields

    lines = [
        f"# {request.reference}: evidence timeline",
        "",
        f"Generated {utc_text(now)} by {generated_by}. Times are UTC.",
        "",
    ]
    if differences is None:
        differences = differences_from_trail(request, events)
    if differences:
        lines += [
            "**Warning: the record below differs from the audit trail** (the trail's texts are in the audit",
            "trail section and texts.jsonl; see verification.txt):",
            "",
            *(f"- {difference}" for difference in differences),
            "",
        ]
    lines += [
        "## Request",
        "",
        "| Field | Value |",
        "|---|---|",
        *(f"| {label} | {_cell(value)} |" for label, value in _labels(policy, request)),
        "",
        "## Justifications as submitted",
        "",
    ]
    if request.redacted_at is not None:
        lines += [f"Removed under the retention policy on {utc_text(request.redacted_at)}.", ""]
    else:
        justifications = list(views.JUSTIFICATIONS)
        if request.urgency_justification:
            justifications.append(("urgency_justification", forms.URGENCY_JUSTIFICATION.label))
        for attribute, label in justifications:
            lines += [f"**{label}**", "", _quote(getattr(request, attribute)), ""]
    lines += ["## Review stages", ""]
    for stage in request.stages:
        lines += [
            f"### {stage.position + 1}. {stage.stage_name}: {stage.status} "
            f"({len(stage.approvals)}/{stage.required_approvals} approvals)",
            "",
            f"Channel {stage.channel_id}; started {utc_text(stage.started_at)}; "
            f"completed {utc_text(stage.completed_at)}.",
            "",
        ]
        for decision in stage.decisions:
            verb = "Approved" if decision.outcome == "approve" else "Rejected"
            lines.append(
                f"- **{verb}** by {decision.approver_id} at {utc_text(decision.created_at)} "
                f"under policy version {decision.policy_version}"
                + (f"; reason code `{decision.reason_code}`" if decision.reason_code else "")
            )
            lines.append(f"  - Rationale: {_inline(decision.rationale)}")
            if decision.conditions:
                lines.append(f"  - Conditions: {_inline(decision.conditions)}")
        for info in stage.info_requests:
            lines.append(
                f"- **Question** by {info.asked_by} at {utc_text(info.created_at)}: {_inline(info.question)}"
            )
            if info.answer:
                lines.append(f"  - Answer at {utc_text(info.answered_at)}: {_inline(info.answer)}")
        lines.append("")
    trail = [e for e in events if e.action != VIEW_ACTION]
    views_log = [e for e in events if e.action == VIEW_ACTION]
    lines += [
        f"## Audit trail ({len(trail)} events)",
        "",
        "Reminders, escalations and post-use records appear here as the events that recorded them.",
        "",
        "| Seq | Time | Actor | Action | Details |",
        "|---|---|---|---|---|",
        *(
            f"| {e.seq} | {utc_text(e.created_at)} | {_cell(e.actor)} | {_cell(e.action)} "
            f"| {_cell(e.readable)} |"
            for e in trail
        ),
        "",
        f"## Access log ({len(views_log)} views)",
        "",
        "| Seq | Time | Who | Where |",
        "|---|---|---|---|",
        *(
            f"| {e.seq} | {utc_text(e.created_at)} | {_cell(e.actor)} "
            f"| {_cell(e.details.get('surface', ''))} |"
            for e in views_log
        ),
        "",
    ]
    return "\n".join(lines)


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" for line in (text or "—").splitlines() or ["—"])


def _inline(text: str) -> str:
    return " ".join((text or "—").split())


# --- Streaming export -------------------------------------------------------------------------------


def _stream(connection: Connection, query: Any) -> Iterator[Any]:
    if connection.dialect.name == "postgresql":
        # PostgreSQL plans a cursor for its first rows (cursor_tuple_fraction 0.1): for a time range it then
        # walks the whole chain in seq order instead of using the created_at index (0.3 s a day at a
        # million events, bench/RESULTS.md). An export reads every row it selects.
        # Through the driver: the connection may carry stream_results, which would wrap SET in a cursor.
        connection.connection.driver_connection.execute("SET LOCAL cursor_tuple_fraction = 1.0")
    result = connection.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(query)
    for partition in result.partitions():
        yield from partition


def export_events(
    connection: Connection, out: TextIO, since: datetime, until: datetime, fmt: str, with_text: bool = False
) -> int:
    """Write the events with since <= created_at < until in chain order; constant memory at any size.

    Without `with_text` free text stays as the chained commitments (fit for FOI disclosure); with it,
    texts still held are filled in and purged ones read REMOVED_TEXT.
    """
    if fmt not in ("csv", "jsonl"):
        raise ValueError(fmt)
    in_range = (AuditEvent.created_at >= since, AuditEvent.created_at < until)
    events = _stream(
        connection,
        select(
            AuditEvent.seq,
            AuditEvent.id,
            AuditEvent.created_at,
            AuditEvent.request_id,
            FrRequest.reference,
            AuditEvent.actor_id,
            AuditEvent.action,
            AuditEvent.details,
            AuditEvent.prev_hash,
            AuditEvent.hash,
        )
        .outerjoin(FrRequest, FrRequest.id == AuditEvent.request_id)
        .where(*in_range)
        .order_by(AuditEvent.seq),
    )
    texts: Iterator[Any] = iter(())
    if with_text:
        texts = _stream(
            connection,
            select(AuditEventText.event_seq, AuditEventText.path, AuditEventText.text)
            .where(AuditEventText.event_seq.in_(select(AuditEvent.seq).where(*in_range)))
            .order_by(AuditEventText.event_seq),
        )
    pending = next(texts, None)
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(EXPORT_COLUMNS)
    count = 0
    for seq, event_id, created_at, request_id, reference, actor, action, details, prev_hash, digest in events:
        if with_text:
            event_texts: dict[str, str] = {}
            while pending is not None and pending[0] <= seq:
                if pending[0] == seq:
                    event_texts[pending[1]] = pending[2]
                pending = next(texts, None)
            details = unseal(details, event_texts)
        values = (seq, event_id, canonical_time(created_at), request_id, reference, actor, action)
        if writer is not None:
            writer.writerow((*values, canonical_json(details), prev_hash, digest))
        else:
            out.write(
                canonical_json(dict(zip(EXPORT_COLUMNS, (*values, details, prev_hash, digest), strict=True)))
            )
            out.write("\n")
        count += 1
    return count


def requests_in_range(session: Session, since: datetime, until: datetime) -> list[int]:
    """The requests with audit events in the range."""
    return list(
        session.scalars(
            select(AuditEvent.request_id)
            .where(
                AuditEvent.created_at >= since,
                AuditEvent.created_at < until,
                AuditEvent.request_id.is_not(None),
            )
            .distinct()
        )
    )


# --- Evidence pack ----------------------------------------------------------------------------------


def write_pack(
    out_dir: Path,
    request: FrRequest,
    events: list[TimelineEvent],
    policy: Policy,
    chain: Verification,
    generated_by: str,
    now: datetime,
    differences: list[str] | None = None,
) -> list[Path]:
    """Write the timeline, the raw events and texts, their verification and a checker into `out_dir`.
    `differences`: `differences_from_trail`'s, when the caller has them already."""
    if differences is None:
        differences = differences_from_trail(request, events)
    out_dir.mkdir(parents=True, exist_ok=True)
    timeline = out_dir / "timeline.md"
    timeline.write_text(
        timeline_markdown(request, events, policy, generated_by, now, differences), encoding="utf-8"
    )
    raw = out_dir / "events.jsonl"
    texts = out_dir / "texts.jsonl"
    with raw.open("w", encoding="utf-8") as events_out:
        for event in events:
            events_out.write(
                canonical_json(
                    {
                        "seq": event.seq,
                        "event_id": event.event_id,
                        "request_id": request.id,
                        "actor": event.actor,
                        "action": event.action,
                        "details": event.details,
                        "created_at": canonical_time(event.created_at),
                        "prev_hash": event.prev_hash,
                        "hash": event.hash,
                    }
                )
                + "\n"
            )
    # Salts are needed to check a text against its commitment, so they go in the pack with the texts.
    with texts.open("w", encoding="utf-8") as texts_out:
        for event in events:
            for path, (salt, text) in sorted(event.texts.items()):
                texts_out.write(
                    canonical_json({"seq": event.seq, "path": path, "salt": salt, "text": text}) + "\n"
                )
    verification = out_dir / "verification.txt"
    verification.write_text(_verification_text(request, events, chain, now, differences), encoding="utf-8")
    # A standalone checker, so the pack can be verified without this software.
    verifier = out_dir / "verify_pack.py"
    verifier.write_text(Path(pack_verifier.__file__).read_text(encoding="utf-8"), encoding="utf-8")
    written = [timeline, raw, texts, verification, verifier]
    manifest = out_dir / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "reference": request.reference,
                "generated_at": canonical_time(now),
                "generated_by": generated_by,
                "files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in written},
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return [*written, manifest]


def _verification_text(
    request: FrRequest,
    events: list[TimelineEvent],
    chain: Verification,
    now: datetime,
    differences: list[str],
) -> str:
    lines = [
        f"Verification of the audit events of {request.reference}, {utc_text(now)}",
        "",
        "Each event: hash = SHA-256 of the canonical JSON (sorted keys, no whitespace, UTF-8) of",
        '{"seq","request_id","actor","action","details","created_at","prev_hash"}, created_at as',
        'YYYY-MM-DDTHH:MM:SS.ffffffZ. Free text in details is the commitment {"$sealed": hex}, where',
        "hex = SHA-256(salt || text) (salt hex-decoded, text UTF-8); texts.jsonl holds the texts still",
        "retained, with their salts.",
        "",
    ]
    failures = 0
    for event in events:
        recomputed = event_hash(
            event.seq, request.id, event.actor, event.action, event.details, event.created_at, event.prev_hash
        )
        status = "ok" if recomputed == event.hash else "HASH MISMATCH"
        committed = dict(sealed_paths(event.details))
        for path, (salt, text) in event.texts.items():
            if path not in committed or commitment(salt, text) != committed[path]:
                status += f"; TEXT '{path}' DOES NOT MATCH ITS COMMITMENT"
        removed = sorted(set(committed) - set(event.texts))
        if removed:
            status += f"; removed texts: {', '.join(removed)}"
        failures += "MISMATCH" in status or "DOES NOT MATCH" in status
        lines.append(f"seq {event.seq} {event.action}: {status}")
    lines += [
        "",
        f"Events of this request: {len(events)}, failing their own hash or commitments: {failures}",
        "",
        f"Whole chain at {utc_text(now)}: {chain.events} events, "
        f"head seq {chain.head_seq} hash {chain.head_hash}",
    ]
    if chain.ok:
        lines.append("Whole chain: INTACT (every link and every retained text checked)")
    else:
        first = chain.first.describe() if chain.first else ""
        lines.append(f"Whole chain: BROKEN ({chain.problem_count} problems); first: {first}")
        lines += [f"  {problem.describe()}" for problem in chain.problems]
    lines += ["", "The timeline's texts (from the request's rows) against the audit trail:"]
    if differences:
        lines += [f"  DIFFERS: {difference}" for difference in differences]
    else:
        lines.append("  consistent: every justification, rationale, condition, question and answer matches")
    return "\n".join(lines) + "\n"

"""The audit hash chain: appends chain correctly, and tampering straight in the database is found and named.

The attacker here has database access: they disable (PostgreSQL) or drop (SQLite) the append-only
triggers, then edit, delete, insert or reorder rows with plain SQL.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, Engine, select, text

from bot.audit import (
    GENESIS_HASH,
    REMOVED_TEXT,
    SEALED,
    Verification,
    append_event,
    canonical_json,
    event_hash,
    record_view,
    serialised_event,
    verify_chain,
)
from bot.forms import DecisionForm, check_request
from bot.workflow import Workflow
from storage.db import make_session_factory, transaction
from storage.models import AuditEvent, AuditEventText
from tests.conftest import valid_form_values

APPROVE = DecisionForm(
    rationale="Necessary and proportionate: the only lead left.", conditions="Delete in 30 days"
)


def populate(workflow: Workflow) -> int:
    """A realistic history: two requests, a question, a decision; returns the number of events."""
    first = workflow.submit(check_request(workflow.policy, valid_form_values()), "UOFFICER", "T0", "V1")
    workflow.request_info(first.request_id, 0, "USUP1", "Which exhibit is the still from?", "Q1")
    workflow.decide(first.request_id, 0, "USUP1", "approve", APPROVE)
    workflow.submit(check_request(workflow.policy, valid_form_values()), "UOFFICER2", "T0", "V2")
    with transaction(workflow.db) as session:
        return len(list(session.scalars(select(AuditEvent.id))))


@contextmanager
def attacker(engine: Engine) -> Iterator[Connection]:
    """A connection with the append-only triggers out of the way, as someone with database access would."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER audit_events_no_update"))
            conn.execute(text("DROP TRIGGER audit_events_no_delete"))
        yield conn
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_events ENABLE TRIGGER USER"))


def verify(engine: Engine) -> Verification:
    return verify_chain(engine)


def test_events_form_a_chain(workflow: Workflow, engine: Engine) -> None:
    count = populate(workflow)
    with transaction(workflow.db) as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    assert [e.seq for e in events] == list(range(1, count + 1))
    assert events[0].prev_hash == GENESIS_HASH
    for previous, event in itertools.pairwise(events):
        assert event.prev_hash == previous.hash
        assert event.id > previous.id
    for event in events:
        assert event.hash == event_hash(
            event.seq,
            event.request_id,
            event.actor_id,
            event.action,
            event.details,
            event.created_at,
            event.prev_hash,
        )
    result = verify(engine)
    assert result.ok, [p.describe() for p in result.problems]
    assert (result.events, result.head_seq, result.head_hash) == (count, count, events[-1].hash)
    assert result.texts_checked > 0


def test_free_text_is_sealed_out_of_the_chain(workflow: Workflow) -> None:
    populate(workflow)
    with transaction(workflow.db) as session:
        decision = session.scalars(select(AuditEvent).where(AuditEvent.action == "decision_recorded")).one()
        texts = {
            t.path: t
            for t in session.scalars(select(AuditEventText).where(AuditEventText.event_seq == decision.seq))
        }
    assert decision.details["outcome"] == "approve"
    assert set(decision.details["rationale"]) == {SEALED}
    assert APPROVE.rationale not in json.dumps(decision.details)
    assert texts["rationale"].text == APPROVE.rationale
    assert texts["conditions"].text == APPROVE.conditions


def test_stored_json_is_canonical_so_verify_can_hash_it_as_stored(workflow: Workflow, engine: Engine) -> None:
    populate(workflow)
    with engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT seq, CAST(details AS TEXT) FROM audit_events")).all())
    with transaction(workflow.db) as session:
        for event in session.scalars(select(AuditEvent)):
            raw_text = stored[event.seq]
            assert raw_text == canonical_json(event.details)  # the text as stored, not re-serialised
            fast = serialised_event(
                event.seq,
                event.request_id,
                event.actor_id,
                event.action,
                raw_text,
                event.created_at,
                event.prev_hash,
            )
            record = {
                "seq": event.seq,
                "request_id": event.request_id,
                "actor": event.actor_id,
                "action": event.action,
                "details": event.details,
                "created_at": event.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "prev_hash": event.prev_hash,
            }
            assert fast == canonical_json(record)


def test_edited_event_is_named(workflow: Workflow, engine: Engine) -> None:
    populate(workflow)
    with attacker(engine) as conn:
        conn.execute(text("UPDATE audit_events SET actor_id = 'UEVIL' WHERE seq = 3"))
    result = verify(engine)
    assert not result.ok
    assert result.first is not None
    assert (result.first.seq, result.first.kind) == (3, "edited")
    assert result.problem_count == 1


def test_edited_details_are_named(workflow: Workflow, engine: Engine) -> None:
    count = populate(workflow)
    with attacker(engine) as conn:
        seq = conn.execute(
            text("SELECT seq FROM audit_events WHERE action = 'decision_recorded'")
        ).scalar_one()
        conn.execute(
            text("UPDATE audit_events SET details = :d WHERE seq = :s"),
            {"d": json.dumps({"outcome": "reject", "stage": "supervisor"}), "s": seq},
        )
    result = verify(engine)
    assert result.first is not None and (result.first.seq, result.first.kind) == (seq, "edited")
    assert seq < count


def test_edit_with_recomputed_hash_breaks_the_next_link(workflow: Workflow, engine: Engine) -> None:
    """Someone who knows the algorithm rewrites a row and its hash: the next row no longer links to it."""
    populate(workflow)
    with transaction(workflow.db) as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.seq == 2)).one()
    forged = event_hash(
        2, event.request_id, "UEVIL", event.action, event.details, event.created_at, event.prev_hash
    )
    with attacker(engine) as conn:
        conn.execute(
            text("UPDATE audit_events SET actor_id = 'UEVIL', hash = :h WHERE seq = 2"), {"h": forged}
        )
    result = verify(engine)
    assert result.first is not None
    assert (result.first.seq, result.first.kind) == (3, "inserted")
    assert "previous event was rewritten" in result.first.message


def test_deleted_event_is_named(workflow: Workflow, engine: Engine) -> None:
    populate(workflow)
    with attacker(engine) as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq = 4"))
    result = verify(engine)
    assert result.first is not None
    assert (result.first.seq, result.first.kind) == (5, "deleted")
    assert "seq 4 deleted" in result.first.message


def test_deleted_first_and_last_events_are_named(workflow: Workflow, engine: Engine) -> None:
    count = populate(workflow)
    with attacker(engine) as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq = 1"))
        conn.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": count})
    result = verify(engine)
    kinds = {(p.seq, p.kind) for p in result.problems}
    assert (2, "deleted") in kinds
    assert (count, "deleted") in kinds  # only the chain head still knows about it
    assert result.first is not None and result.first.seq == 2


def test_inserted_event_is_named(workflow: Workflow, engine: Engine) -> None:
    count = populate(workflow)
    with transaction(workflow.db) as session:
        last = session.scalars(select(AuditEvent).where(AuditEvent.seq == count)).one()
    created = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    forged = event_hash(count + 1, None, "UEVIL", "request_approved", {}, created, last.hash)
    with attacker(engine) as conn:
        conn.execute(
            text(
                "INSERT INTO audit_events (seq, actor_id, action, details, created_at, prev_hash, hash) "
                "VALUES (:seq, 'UEVIL', 'request_approved', '{}', :created, :prev, :hash)"
            ),
            {"seq": count + 1, "created": created, "prev": last.hash, "hash": forged},
        )
    result = verify(engine)
    assert result.first is not None
    assert (result.first.seq, result.first.kind) == (count + 1, "inserted")


def test_event_inserted_in_the_middle_is_named(workflow: Workflow, engine: Engine) -> None:
    populate(workflow)
    with attacker(engine) as conn:
        conn.execute(text("UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 3"))
        conn.execute(text("UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1000"))
        conn.execute(
            text(
                "INSERT INTO audit_events (seq, actor_id, action, details, created_at, prev_hash, hash) "
                "VALUES (3, 'UEVIL', 'request_approved', '{}', :created, :prev, :hash)"
            ),
            {"created": datetime(2026, 3, 2, 10, 0, tzinfo=UTC), "prev": "0" * 64, "hash": "1" * 64},
        )
    result = verify(engine)
    assert result.first is not None and result.first.seq == 3
    assert "inserted" in result.first.message


def test_reordered_events_are_named(workflow: Workflow, engine: Engine) -> None:
    populate(workflow)
    with attacker(engine) as conn:  # swap the positions of seq 2 and seq 5
        conn.execute(text("UPDATE audit_events SET seq = -2 WHERE seq = 2"))
        conn.execute(text("UPDATE audit_events SET seq = 2 WHERE seq = 5"))
        conn.execute(text("UPDATE audit_events SET seq = 5 WHERE seq = -2"))
    result = verify(engine)
    assert result.first is not None
    assert (result.first.seq, result.first.kind) == (2, "reordered")
    assert any(p.seq == 5 and p.kind == "reordered" for p in result.problems)


def test_edited_free_text_is_named(workflow: Workflow, engine: Engine) -> None:
    populate(workflow)
    with engine.begin() as conn:
        seq = conn.execute(
            text("SELECT event_seq FROM audit_event_texts WHERE path = 'rationale'")
        ).scalar_one()
        conn.execute(
            text("UPDATE audit_event_texts SET text = 'Not necessary at all.' WHERE path = 'rationale'")
        )
    result = verify(engine)
    assert result.first is not None
    assert (result.first.seq, result.first.kind) == (seq, "text_edited")


def delete_kept_text(engine: Engine, path: str) -> int:
    """Delete the one kept free text at `path` behind the bot's back; the seq of its event."""
    with engine.begin() as conn:
        seq = conn.execute(
            text("SELECT event_seq FROM audit_event_texts WHERE path = :path"), {"path": path}
        ).scalar_one()
        conn.execute(text("DELETE FROM audit_event_texts WHERE path = :path"), {"path": path})
    return int(seq)


def test_free_text_deleted_outside_a_purge_is_named(workflow: Workflow, engine: Engine) -> None:
    populate(workflow)
    seq = delete_kept_text(engine, "question")
    result = verify(engine)
    assert result.first is not None
    assert (result.first.seq, result.first.kind) == (seq, "text_deleted")
    # Every deleted text of the request is reported, not only its first.
    delete_kept_text(engine, "rationale")
    assert [p.kind for p in verify(engine).problems] == ["text_deleted", "text_deleted"]


def test_anchor_catches_a_chain_rebuilt_from_scratch(workflow: Workflow, engine: Engine) -> None:
    populate(workflow)
    anchor = verify(engine)
    assert verify_chain(engine, {anchor.head_seq: anchor.head_hash}).ok
    assert not verify_chain(engine, {anchor.head_seq: "f" * 64}).ok


def test_record_view_joins_the_chain(workflow: Workflow, engine: Engine) -> None:
    populate(workflow)
    record_view(workflow.db, "UREADER", 1, "app_home")
    with transaction(workflow.db) as session:
        record_view(session, "UREADER2", 1, "status_command")
        views = list(session.scalars(select(AuditEvent).where(AuditEvent.action == "request_viewed")))
    assert [(v.actor_id, v.details["surface"]) for v in views] == [
        ("UREADER", "app_home"),
        ("UREADER2", "status_command"),
    ]
    assert verify(engine).ok


def test_concurrent_appends_never_share_a_predecessor(workflow: Workflow, engine: Engine) -> None:
    """Many threads append at once: the head lock (PostgreSQL) or BEGIN IMMEDIATE (SQLite) keeps one chain."""
    db = make_session_factory(engine)
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        try:
            for index in range(10):
                with transaction(db) as session:
                    append_event(
                        session,
                        f"U{number}",
                        "request_viewed",
                        None,
                        datetime.now(UTC),
                        {"surface": str(index)},
                    )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    result = verify(engine)
    assert result.ok, [p.describe() for p in result.problems]
    assert result.events == 60


def test_purged_texts_show_as_removed(workflow: Workflow) -> None:
    from bot.evidence import request_events

    populate(workflow)
    with transaction(workflow.db) as session:
        session.execute(AuditEventText.__table__.delete().where(AuditEventText.request_id == 1))
        events = request_events(session, 1)
    submitted = next(e for e in events if e.action == "request_submitted")
    assert submitted.readable["form"]["necessity"] == REMOVED_TEXT
    assert submitted.readable["form"]["case_reference"] == "CRIM/123456/26"


def test_appending_without_a_head_but_with_events_refuses(workflow: Workflow, engine: Engine) -> None:
    from bot.audit import AuditChainError

    populate(workflow)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_chain_head"))
    with pytest.raises(AuditChainError), transaction(workflow.db) as session:
        append_event(session, "U1", "request_viewed", None, datetime.now(UTC), {})
    result = verify(engine)
    assert any(p.kind == "head" for p in result.problems)


def test_reformatted_but_equal_json_still_verifies(workflow: Workflow, engine: Engine) -> None:
    """Stored JSON in another layout (e.g. after a dump and restore through jsonb) is the same record."""
    populate(workflow)
    with attacker(engine) as conn:
        conn.execute(
            text("UPDATE audit_events SET details = :d WHERE seq = 2"),
            {"d": '{ "stages": ["supervisor"],  "route": "default" }'},
        )
    result = verify(engine)
    assert result.ok, [p.describe() for p in result.problems]


def test_verification_reads_a_snapshot_without_holding_writers_off(
    workflow: Workflow, engine: Engine
) -> None:
    from storage.db import READ_SNAPSHOT

    count = populate(workflow)
    options: dict[str, object] = {READ_SNAPSHOT: True}
    if engine.dialect.name == "postgresql":
        options["isolation_level"] = "REPEATABLE READ"
    with engine.connect().execution_options(**options) as reader:
        assert reader.execute(text("SELECT COUNT(*) FROM audit_events")).scalar_one() == count
        record_view(workflow.db, "UREADER", 1, "app_home")  # commits while the reader is open
        assert reader.execute(text("SELECT COUNT(*) FROM audit_events")).scalar_one() == count
        result = verify_chain(reader)
    assert result.ok and result.events == count
    assert verify(engine).events == count + 1


def test_a_deleted_chain_head_stops_appends_instead_of_restarting_the_chain(workflow: Workflow) -> None:
    from bot.audit import AuditChainError

    form = check_request(workflow.policy, valid_form_values())
    workflow.submit(form, "UOFFICER", "T0TEST", "V1")
    with transaction(workflow.db) as session:
        session.execute(text("DELETE FROM audit_chain_head"))
    with pytest.raises(AuditChainError, match="missing although audit events exist"):
        workflow.submit(form, "UOFFICER", "T0TEST", "V2")

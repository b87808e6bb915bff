"""Scale of history: the scheduler's sweeps, the digest, App Home and audit export over a large database.

    .venv/bin/python -m bench.scale --url postgresql+psycopg://postgres@127.0.0.1:5432/frbot_benchbig

For each size (default 100,000 and 1,000,000 stored requests) the database's public schema is dropped,
migrated and filled by set-based SQL (`INSERT … SELECT generate_series`, no ORM): a mix of approved,
rejected, withdrawn and expired requests with their stage reviews, decisions and audit events, and the
same 10,000 pending requests with pending stage reviews at every size (100 of them overdue, a few
approvals about to expire). So what changes between sizes is only the history, and the SQL statement
count (counted by a `before_cursor_execute` listener) must stay the same: a count that grows with the
table is an N+1 loop, a time that grows is a missing index.

The audit events are not a valid hash chain (their hashes are placeholders): nothing measured here
verifies the chain; bench/audit_verify.py measures verification on a real chain.

Give it a throwaway PostgreSQL database: its public schema is dropped, and each run of the first sweep
works on a copy of it (`<name>_sweep`, created from it as a template and dropped after), made from the
server's `postgres` database; the runs by a process that has swept before share one copy, put back
after each run (`SweepUndo`, which needs a superuser, as the benchmark's database user is).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, event, make_url, text

from bench.fixtures import bench_policy, bench_workflow
from bench.output import write_results
from bot.cli import freeze_start_up_objects
from bot.evidence import export_events
from bot.home import HomePublisher
from bot.policy import LoadedPolicy
from bot.sweeps import MOST_AT_ONCE, SWEEPS, SweepReport, digest_summary, run_sweeps
from storage.db import make_engine, make_session_factory, recreate_schema, transaction

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)  # an hour after the 08:00 digest (London is on UTC)
PENDING = 10_000
OVERDUE_EVERY = 100  # one pending review in this many is past its due time
REPEATS = 5

# Request ids 1..n; the newest 2 * PENDING alternate pending and decided, so recent days hold decisions,
# approvals still valid (some expiring within hours) and pending reviews whatever the size.
SEED_REQUESTS = """
INSERT INTO fr_requests (
    id, reference, submission_key, team_id, requester_id, status, tool_id, tool_snapshot, case_reference,
    purpose, purpose_detail, offence_category, offence_seriousness, subject_category, subject_is_child,
    image_source, image_authority, necessity, alternatives, proportionality, collateral_intrusion, equality,
    urgency, urgency_justification, route_name, policy_version, current_stage, created_at, updated_at,
    decided_at, valid_until, closed_at, legal_hold)
SELECT i, 'FR-' || lpad(i::text, 9, '0'), 'V' || i, 'T0BENCH', 'UOFF' || (i % 3000), status,
    'force-rfr', '{"id":"force-rfr","name":"Force RFR"}'::json, 'CRIM/123456/26', 'investigation',
    'Identify the suspect in a street robbery caught on CCTV.', 'violence', 'serious', 'suspect', false,
    'cctv', 'Seized under s.19 PACE, exhibit JS/1', 'House-to-house and CCTV trawl have not identified them.',
    'Circulated internally, no identification after two weeks.', 'Serious violence; one image only.',
    'Bystanders cropped out.', 'Results treated as intelligence only.',
    CASE WHEN i % 20 = 0 THEN 'urgent' ELSE 'routine' END, '',
    CASE WHEN i % 4 = 0 THEN 'Two stages' ELSE 'Default' END, 'bench',
    CASE WHEN status = 'pending' THEN (CASE WHEN i % 8 = 0 THEN 1 ELSE 0 END) END,
    created, created,
    CASE WHEN status <> 'pending' THEN created + interval '2 hours' END,
    CASE WHEN status IN ('approved', 'expired') THEN created + interval '74 hours' END,
    CASE WHEN status = 'approved' AND created + interval '74 hours' <= :now
        THEN created + interval '3 days' END,
    false
FROM (
    SELECT i, :now - (:n - i) * interval '1 minute' - interval '1 hour' AS created,
        CASE WHEN i > :n - 2 * :p AND i % 2 = 0 THEN 'pending'
             WHEN i % 10 < 6 THEN 'approved' WHEN i % 10 < 8 THEN 'rejected'
             WHEN i % 10 = 8 THEN 'withdrawn' ELSE 'expired' END AS status
    FROM generate_series(1, :n) AS i
) AS s
"""

# Every request has a supervisor stage; one in four also an authoriser stage (the "Two stages" route).
SEED_STAGES = """
INSERT INTO stage_reviews (id, request_id, position, stage_id, stage_name, channel_id, required_approvals,
    status, started_at, completed_at, message_channel, message_ts, due_at, next_check_at)
SELECT row_number() OVER (ORDER BY r.id, p.position), r.id, p.position,
    CASE p.position WHEN 0 THEN 'supervisor' ELSE 'authoriser' END,
    CASE p.position WHEN 0 THEN 'Supervisor review' ELSE 'Authorising officer' END,
    CASE p.position WHEN 0 THEN 'C0SUPER' ELSE 'C0AUTH' END,
    CASE p.position WHEN 0 THEN 1 ELSE 2 END,
    CASE
        WHEN r.status = 'pending' AND p.position = r.current_stage THEN 'pending'
        WHEN r.status = 'pending' AND p.position > r.current_stage THEN 'waiting'
        WHEN r.status = 'pending' THEN 'approved'
        WHEN r.status IN ('approved', 'expired') THEN 'approved'
        WHEN r.status = 'rejected' AND p.position = 0 THEN 'rejected'
        ELSE 'cancelled' END,
    r.created_at,
    CASE WHEN r.status <> 'pending' THEN r.decided_at END,
    CASE WHEN p.position = 0 OR r.status <> 'pending' THEN 'C0SUPER' END,
    CASE WHEN p.position = 0 OR r.status <> 'pending' THEN '1700000000.' || lpad(r.id::text, 6, '0') END,
    CASE WHEN r.status = 'pending' AND r.id % :overdue_every = 0 THEN :now - interval '1 hour'
         WHEN r.status = 'pending' THEN :now + interval '1 day' + (r.id % 1000) * interval '1 minute'
         ELSE r.created_at + interval '3 days' END,
    NULL
FROM fr_requests AS r
CROSS JOIN (VALUES (0), (1)) AS p (position)
WHERE p.position = 0 OR r.id % 4 = 0
"""

SEED_DECISIONS = """
INSERT INTO decisions (request_id, stage_review_id, approver_id, outcome, rationale, conditions,
    policy_version, created_at)
SELECT s.request_id, s.id, a.approver,
    CASE WHEN s.status = 'approved' THEN 'approve' ELSE 'reject' END,
    'Necessary and proportionate for this investigation.', '', 'bench',
    coalesce(s.completed_at, s.started_at + interval '1 hour')
FROM stage_reviews AS s
JOIN (VALUES ('supervisor', 'USUP1'), ('authoriser', 'UAUTH1'), ('authoriser', 'UAUTH2'))
    AS a (stage, approver)
    ON a.stage = s.stage_id
WHERE s.status IN ('approved', 'rejected') AND NOT (s.status = 'rejected' AND a.approver = 'UAUTH2')
"""

# One event when each request was submitted and one when it was decided, in time order.
SEED_EVENTS = """
INSERT INTO audit_events (id, seq, request_id, actor_id, action, details, created_at, prev_hash, hash)
SELECT n, n, request_id, actor_id, action, '{}'::json, at, repeat('0', 64), md5(n::text) || md5(action)
FROM (
    SELECT row_number() OVER (ORDER BY at, request_id, action) AS n, * FROM (
        SELECT id AS request_id, requester_id AS actor_id, 'request_submitted' AS action, created_at AS at
        FROM fr_requests
        UNION ALL
        SELECT id, 'USUP1', 'request_' || status, decided_at FROM fr_requests WHERE decided_at IS NOT NULL
    ) AS e
) AS numbered
"""


@dataclass
class Measured:
    seconds: list[float] = field(default_factory=list)
    statements: list[int] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000

    @property
    def statement_count(self) -> int:
        return max(self.statements)


class EventCounter:
    """Counts an engine's events, from any thread (the sweeps run at once on PostgreSQL): by default the
    statements it sends; with "connect", the connections its pool opens."""

    def __init__(self, engine: Engine, on: str = "before_cursor_execute") -> None:
        self.count = 0
        self._lock = threading.Lock()
        event.listen(engine, on, self._seen)

    def _seen(self, *_args: Any) -> None:
        with self._lock:
            self.count += 1

    @contextmanager
    def measure(self, into: Measured) -> Iterator[None]:
        before = self.count
        started = time.perf_counter()
        yield
        into.seconds.append(time.perf_counter() - started)
        into.statements.append(self.count - before)


class NullSink(io.TextIOBase):
    def __init__(self) -> None:
        self.chars = 0

    def write(self, data: str) -> int:
        self.chars += len(data)
        return len(data)


def seed(url: str, size: int) -> dict[str, float]:
    recreate_schema(url)
    engine = make_engine(url)
    timings: dict[str, float] = {}
    params = {"n": size, "p": PENDING, "now": NOW, "overdue_every": OVERDUE_EVERY}
    with engine.begin() as conn:
        for name, statement in (
            ("requests", SEED_REQUESTS),
            ("stage reviews", SEED_STAGES),
            ("decisions", SEED_DECISIONS),
            ("audit events", SEED_EVENTS),
        ):
            started = time.perf_counter()
            conn.execute(text(statement), params)
            timings[name] = time.perf_counter() - started
        conn.execute(text("UPDATE audit_chain_head SET seq = (SELECT max(seq) FROM audit_events)"))
        for table in ("fr_requests", "stage_reviews", "decisions", "audit_events"):
            conn.execute(
                text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return timings


def table_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table: int(conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
            for table in ("fr_requests", "stage_reviews", "decisions", "audit_events")
        } | {
            "pending requests": int(
                conn.scalar(text("SELECT count(*) FROM fr_requests WHERE status = 'pending'")) or 0
            ),
            "pending reviews overdue": int(
                conn.scalar(
                    text("SELECT count(*) FROM stage_reviews WHERE status = 'pending' AND due_at <= :now"),
                    {"now": NOW},
                )
                or 0
            ),
        }


def _copy_url(url: str) -> URL:
    """Where `seeded_copy` puts its copy: the same name for every copy of one seeded database."""
    seeded = make_url(url)
    return seeded.set(database=f"{seeded.database}_sweep")


@contextmanager
def seeded_copy(url: str) -> Iterator[str]:
    """A copy of the seeded database (`CREATE DATABASE … TEMPLATE`), dropped afterwards: the first sweep
    changes what is due, so each of its runs needs the seeded state again."""
    seeded = make_url(url)
    copy = _copy_url(url)
    maintenance = make_engine(seeded.set(database="postgres").render_as_string(hide_password=False))
    with maintenance.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{copy.database}"'))
        conn.execute(text(f'CREATE DATABASE "{copy.database}" TEMPLATE "{seeded.database}"'))
        # Written out before the sweep starts, or the copy's writes go on beside the sweep, whose commits
        # wait on them. (PostgreSQL 15 copies through its buffers, which leaves the copy's pages cached
        # as a running server has its recent rows; copied as files, they were read from disk.)
        conn.execute(text("CHECKPOINT"))
    os.sync()
    try:
        yield copy.render_as_string(hide_password=False)
    finally:
        with maintenance.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{copy.database}"'))
        maintenance.dispose()


def first_sweeps(url: str, results: dict[str, Measured]) -> None:
    """The first sweep has work: reminders and escalations for the overdue reviews, expiry warnings and
    the day's digest (an hour late, so the sweep's catch-up sends it). Timed as the scheduler runs it,
    `run_sweeps`, whose sweeps (and reviewer channels) run at once on PostgreSQL, each on its own
    connection. Each run on a fresh copy of the seeded database, by a new engine in this process (new
    connections, statements compiled afresh: SQLAlchemy's statement cache is the engine's; the process's
    other caches, Python's own included, are warm)."""
    loaded = bench_policy()
    for _ in range(REPEATS):
        with seeded_copy(url) as copy:
            engine = make_engine(copy)
            counter = EventCounter(engine)
            db = make_session_factory(engine)
            _connect(engine)
            with counter.measure(results[FIRST_SWEEP]):
                report = run_sweeps(db, loaded.policy, lambda: NOW)
            engine.dispose()
    print(f"  first sweep queued: {report}")
    _swept_before(url, loaded, results)


def _swept_before(url: str, loaded: LoadedPolicy, results: dict[str, Measured]) -> None:
    """The same sweep with work due, by a process that has swept such work before, as a running
    scheduler has: one engine whose pooled connections are kept throughout, so the statements are
    compiled (SQLAlchemy's cache), the server processes have read the tables' catalogs and psycopg has
    prepared what it ran five times. One copy of the seeded database serves every run: after each run
    `SweepUndo` puts back what the sweep wrote (checked, not trusted), so each run finds the same work
    due. A copy per run would need new connections each time (a server process serves one database),
    whose catalog reads and planning the first run already measures (item 47). Then each sweep alone,
    in turn, as SQLite runs them: what the whole is made of."""
    with seeded_copy(url) as copy:
        engine = make_engine(copy)
        counter = EventCounter(engine)
        connections = EventCounter(engine, "connect")
        db = make_session_factory(engine)
        undo = SweepUndo(copy, engine)
        policy = loaded.policy
        queued = None
        for run in range(REPEATS + 1):
            if run == 0:
                run_sweeps(db, policy, lambda: NOW)
                opened = connections.count
            else:
                with counter.measure(results[FIRST_SWEEP_WARM]):
                    report = run_sweeps(db, policy, lambda: NOW)
                # Each run had the same work due, on the connections the first run opened.
                assert queued in (None, str(report)), f"run {run} queued {report}, not {queued}"
                queued = str(report)
            undo.undo()
        for _ in range(REPEATS):
            report = SweepReport()
            for name, sweep in zip(SWEEP_PARTS, SWEEPS, strict=True):
                with counter.measure(results[name]):
                    sweep(db, policy, lambda: NOW, report)
            assert str(report) == queued, f"the sweeps in turn queued {report}, not {queued}"
            undo.undo()
        assert connections.count == opened, "the pool opened a new connection"
        undo.dispose()
        engine.dispose()


# What a sweep writes (bot/sweeps.py): rows it adds to these tables (and updates: a notice's announced_at),
# the chain head, and the pending stages' next_check_at (and due_at, which it backfills where missing).
_ADDED_TO = ("audit_event_texts", "audit_events", "scheduled_notices", "outbox", "digests")
_UPDATED = ("stage_reviews", "audit_chain_head", "scheduled_notices", "outbox", "digests")
# Every write of a statement, its data-modifying CTEs' too (the audit chain's append is the head's update
# with the events' insert in a CTE); not a row lock's FOR UPDATE, nor an upsert's DO UPDATE.
_WRITE = re.compile(
    r"\b(?:(INSERT)\s+INTO|(?<!FOR )(?<!KEY )(?<!DO )(UPDATE)|(DELETE)\s+FROM)\s+\"?(\w+)", re.IGNORECASE
)
_PENDING_STAGES = "SELECT id, due_at, next_check_at FROM stage_reviews WHERE status = 'pending' ORDER BY id"


class SweepUndo:
    """Puts a database back as it was when this was made, after a sweep: the rows the sweep added are
    deleted (the audit tables' append-only triggers off for this transaction: `session_replication_role`
    is a superuser's setting, as the benchmark's database user is), the chain head and the pending stages'
    times restored, the dead rows vacuumed (statistics left as the seeding analysed them) and everything
    written out, as `seeded_copy` does. Then every table's row count, the chain head and the pending
    stages are compared with what they were: a write the list above misses fails the benchmark."""

    def __init__(self, url: str, sweeping: Engine) -> None:
        self.engine = make_engine(url)
        self.before = self._state()
        self.writes: set[tuple[str, str]] = set()
        event.listen(sweeping, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        for insert, update, delete, table in _WRITE.findall(" ".join(statement.split())):
            self.writes.add(((insert or update or delete).upper(), table))

    def _state(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            tables = conn.scalars(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
            ).all()
            return {
                "rows": {
                    table: conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar() for table in tables
                },
                "last_ids": {
                    table: conn.execute(text(f'SELECT coalesce(max(id), 0) FROM "{table}"')).scalar()
                    for table in _ADDED_TO
                },
                "head": conn.execute(text("SELECT id, seq, hash FROM audit_chain_head ORDER BY id")).all(),
                "pending": conn.execute(text(_PENDING_STAGES)).all(),
            }

    def undo(self) -> None:
        allowed = {("INSERT", table) for table in _ADDED_TO} | {("UPDATE", table) for table in _UPDATED}
        assert self.writes <= allowed, (
            f"the sweep wrote what SweepUndo does not undo: {self.writes - allowed}"
        )
        before = self.before
        with self.engine.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            for table in _ADDED_TO:
                conn.execute(
                    text(f'DELETE FROM "{table}" WHERE id > :last'), {"last": before["last_ids"][table]}
                )
            conn.execute(
                text("UPDATE audit_chain_head SET seq = :seq, hash = :hash WHERE id = :id"),
                [{"id": id_, "seq": seq, "hash": hash_} for id_, seq, hash_ in before["head"]],
            )
            conn.execute(
                text(f"CREATE TEMPORARY TABLE pending_before ON COMMIT DROP AS {_PENDING_STAGES} LIMIT 0")
            )
            conn.execute(
                text("INSERT INTO pending_before VALUES (:id, :due_at, :next_check_at)"),
                [row._asdict() for row in before["pending"]],
            )
            conn.execute(
                text(
                    "UPDATE stage_reviews AS s SET due_at = b.due_at, next_check_at = b.next_check_at "
                    "FROM pending_before AS b WHERE s.id = b.id "
                    "AND (s.due_at, s.next_check_at) IS DISTINCT FROM (b.due_at, b.next_check_at)"
                )
            )
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM {', '.join(('stage_reviews', 'audit_chain_head', *_ADDED_TO))}"))
            conn.execute(text("CHECKPOINT"))
        os.sync()
        after = self._state()
        assert after == before, "the sweep wrote something SweepUndo does not put back"

    def dispose(self) -> None:
        self.engine.dispose()


# The most connections a sweep holds at once: the other sweeps' and the reviewer channels' (bot/sweeps.py).
SWEEP_CONNECTIONS = len(SWEEPS) - 1 + MOST_AT_ONCE


def _connect(engine: Engine) -> None:
    """Open the pool's connections before the timed sweep, as a running scheduler has them: as many as
    the sweep holds at once."""
    with ExitStack() as held:
        for conn in [held.enter_context(engine.connect()) for _ in range(SWEEP_CONNECTIONS)]:
            conn.execute(text("SELECT 1"))


def measure(url: str) -> dict[str, Measured]:
    loaded = bench_policy()
    results: dict[str, Measured] = {name: Measured() for name in MEASURES}
    # As the bot's processes do before they serve: otherwise a full collection walking start-up's objects
    # (50-70 ms) lands in whichever timed run it falls in.
    freeze_start_up_objects()
    first_sweeps(url, results)
    engine = make_engine(url)
    counter = EventCounter(engine)
    workflow = bench_workflow(engine, clock=lambda: NOW)
    db = workflow.db
    home = HomePublisher(workflow, client=None)  # type: ignore[arg-type]  # view_for never calls Slack

    run_sweeps(db, loaded.policy, lambda: NOW)  # the first sweep's work, so what follows is steady state
    checks: dict[str, Callable[[], object]] = {
        "sweep, steady state (nothing new due)": lambda: run_sweeps(db, loaded.policy, lambda: NOW),
        "digest summary": lambda: _digest(db, loaded),
        "App Home, approver": lambda: home.view_for("USUP1"),
        "App Home, lead": lambda: home.view_for("ULEAD1"),
        "audit export, one day": lambda: _export(engine),
    }
    for _ in range(REPEATS):
        for name, check in checks.items():
            with counter.measure(results[name]):
                check()
    engine.dispose()
    return results


FIRST_SWEEP = "sweep, first run (work due)"
FIRST_SWEEP_WARM = "sweep, work due, by a process that has swept before"
# bot.sweeps.SWEEPS, by name: what the sweep with work due is made of, each run alone.
SWEEP_PARTS = (
    "work due, alone: reviews (reminders, escalations)",
    "work due, alone: approvals (expiry warnings)",
    "work due, alone: the digest's catch-up",
)
MEASURES = (
    FIRST_SWEEP,
    FIRST_SWEEP_WARM,
    *SWEEP_PARTS,
    "sweep, steady state (nothing new due)",
    "digest summary",
    "App Home, approver",
    "App Home, lead",
    "audit export, one day",
)


def _digest(db: Any, loaded: Any) -> None:
    with transaction(db, read_only=True) as session:
        digest_summary(session, loaded.policy, NOW - timedelta(days=1), NOW - timedelta(hours=1), NOW)


def _export(engine: Engine) -> None:
    with engine.connect() as conn:
        export_events(conn, NullSink(), NOW - timedelta(days=1), NOW, "jsonl", True)


def report(url: str, sizes: list[int]) -> tuple[str, dict[str, Any]]:
    data: dict[str, Any] = {}
    for size in sizes:
        print(f"seeding {size:,} requests …")
        started = time.perf_counter()
        timings = seed(url, size)
        seeded = time.perf_counter() - started
        engine = make_engine(url)
        counts = table_counts(engine)
        engine.dispose()
        print(f"  seeded in {seeded:.0f}s: {counts}")
        results = measure(url)
        data[str(size)] = {
            "seed_seconds": seeded,
            "seed_steps": timings,
            "rows": counts,
            "results": {
                name: {"median_ms": m.median_ms, "statements": m.statement_count, "all_ms": m.seconds}
                for name, m in results.items()
            },
        }
        for name, m in results.items():
            print(f"  {name}: {m.median_ms:.1f} ms, {m.statement_count} statements")
    return render(data, sizes), data


def render(data: dict[str, Any], sizes: list[int]) -> str:
    header = " | ".join(f"{size:,}: ms | {size:,}: SQL statements" for size in sizes)
    lines = [
        "### Scale of history, PostgreSQL",
        "",
        f"{PENDING:,} pending requests at every size (the same reviews overdue); only the history "
        f"grows. Median of {REPEATS} runs. The sweep with work due is timed as the scheduler runs it "
        "(`run_sweeps`: on PostgreSQL its three sweeps, and the reviewer channels, at once, each on its "
        "own connection), on a fresh "
        "copy of the seeded database each, by a new engine in the benchmark's process (new connections to a "
        "database no server process has read yet, its statements compiled for the first time: SQLAlchemy's "
        "cache is the engine's; the process's other caches are warm, so a freshly started one may take "
        "longer), "
        "and by one that has swept such work before (its pool's connections kept throughout, as a running "
        "scheduler's are; the copy put back after each run), which also times each sweep alone, in turn. "
        "The process's start-up objects are frozen for the garbage collector, as the bot's are.",
        "",
        "| rows | " + " | ".join(f"{size:,}" for size in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for table in data[str(sizes[0])]["rows"]:
        lines.append(f"| {table} | " + " | ".join(f"{data[str(s)]['rows'][table]:,}" for s in sizes) + " |")
    lines.append(
        "| seeding time (s) | " + " | ".join(f"{data[str(s)]['seed_seconds']:.0f}" for s in sizes) + " |"
    )
    lines += ["", f"| operation | {header} |", "|---|" + "---:|---:|" * len(sizes)]
    for name in MEASURES:
        cells = []
        for size in sizes:
            result = data[str(size)]["results"][name]
            cells += [f"{result['median_ms']:.1f}", str(result["statements"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", required=True, help="a throwaway PostgreSQL database (its schema is dropped)"
    )
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated request counts")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "scale.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    section, data = report(args.url, sizes)
    write_results(Path(args.out), section, data)
    print(section)


if __name__ == "__main__":
    main()

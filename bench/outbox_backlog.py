"""The outbox dispatcher's due query with a backlog held by Slack's one-post-a-second limit.

    .venv/bin/python -m bench.outbox_backlog --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/x

A burst of submissions to one reviewers' channel leaves a backlog: each request's reviewer post waits for
the channel's next second, and its DM and App Home wait behind that post. For each backlog size the
database is migrated afresh and filled by set-based SQL: that many requests, each with a sent modal update
(history) and three pending rows (the reviewer post, keyed to the one channel; a DM, keyed to one of 50
officers; App Home, without a key). The statistics are taken while those rows are still marked sent, as
they were just before the burst, and then the rows are marked pending. The query then runs as the
dispatcher runs it, repeatedly on one pooled connection (so PostgreSQL settles on a prepared statement's
generic plan after five runs): once with no key held (the first query of a pass) and once with the busy
channel held (the query after it). What the query returns is checked: the channel's first post, and
nothing behind a request's pending post (bench/NOTES.md item 30).

Give it a throwaway PostgreSQL database: its public schema is dropped. SQLite runs in a temporary file.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    Integer,
    String,
    bindparam,
    column,
    func,
    insert,
    literal,
    select,
    table,
    text,
    true,
    update,
)

from bench.fixtures import bench_workflow
from bench.output import write_results
from bot import outbox
from bot.forms import check_request
from storage.db import make_engine, make_session_factory, recreate_schema, transaction
from storage.models import FrRequest, OutboxMessage, OutboxStatus, UTCDateTime
from tests.conftest import valid_form_values

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
CHANNEL_KEY = "post:C0SUPER"
OFFICERS = 50
# (kind, its pace key as SQL over the request id `r`), in the order a request's rows are written.
PENDING_KINDS = (
    ("post_review", f"'{CHANNEL_KEY}'"),
    ("dm", f"'post:UOFF' || CAST(r.id % {OFFICERS} AS VARCHAR)"),
    ("publish_home", "NULL"),
)


def seed(url: str, requests: int) -> Engine:
    """A migrated database with `requests` requests and their backlog, statistics taken before it."""
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    recreate_schema(url)
    engine = make_engine(url)
    workflow = bench_workflow(engine, clock=lambda: NOW)
    loaded = workflow.loaded
    template = workflow.submit(check_request(loaded.policy, valid_form_values()), "UOFF0", "T0", "V0")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM outbox"))
        # Copies of the one real request: only ids, references and submission keys differ.
        numbers = select(literal(1, Integer).label("i")).cte("numbers", recursive=True)
        numbers = numbers.union_all(select(numbers.c.i + 1).where(numbers.c.i < requests - 1))
        copied = [c for c in FrRequest.__table__.columns if c.name != "id"]
        varied = {
            "reference": literal("FR-B-", String) + numbers.c.i.cast(String),
            "submission_key": literal("VB", String) + numbers.c.i.cast(String),
        }
        source = (
            select(*[varied.get(c.name, c) for c in copied])
            .select_from(FrRequest.__table__)
            .join(numbers, true())
            .where(FrRequest.__table__.c.id == template.request_id)
        )
        conn.execute(insert(FrRequest.__table__).from_select(copied, source))
        for kind, key in (("update_modal", "NULL"), *PENDING_KINDS):
            conn.execute(
                text(
                    "INSERT INTO outbox (request_id, kind, payload, status, attempts, next_attempt_at,"
                    " created_at, doubtful_attempts, pace_key)"
                    f" SELECT r.id, :kind, CAST('{{}}' AS JSON), 'sent', 1, :now, :now, 0, {key}"
                    " FROM fr_requests r ORDER BY r.id"
                ).bindparams(bindparam("now", type_=UTCDateTime())),
                {"kind": kind, "now": NOW},
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"))
    backlog = table("outbox", column("kind", String), column("status", String))
    with engine.begin() as conn:
        conn.execute(
            update(backlog)
            .where(backlog.c.kind.in_([kind for kind, _key in PENDING_KINDS]))
            .values(status=OutboxStatus.PENDING)
        )
    return engine


def measure(engine: Engine, repeats: int) -> dict[str, Any]:
    db = make_session_factory(engine)
    params: dict[str, Any] = {"now": NOW, "batch": 200}
    held = {**params, "held": [CHANNEL_KEY]}
    timings: dict[str, list[float]] = {"nothing held": [], "the channel held": []}
    returned: dict[str, list[Any]] = {}  # each query's rows, from its last run
    for index in range(repeats + 5):  # the first five settle the plan and are not counted
        for name, statement, values in (
            ("nothing held", outbox._DUE, params),
            ("the channel held", outbox._DUE_HOLDING, held),
        ):
            started = time.perf_counter()
            with transaction(db, read_only=True) as session:
                rows = session.execute(statement, values).all()
            if index >= 5:
                timings[name].append(time.perf_counter() - started)
            returned[name] = rows
    with transaction(db, read_only=True) as session:
        pending = session.scalar(
            select(OutboxMessage.id)
            .where(OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.pace_key == CHANNEL_KEY)
            .order_by(OutboxMessage.id)
            .limit(1)
        )
        pending_rows = select(func.count()).where(OutboxMessage.status == OutboxStatus.PENDING)
        count = session.scalar(pending_rows.select_from(OutboxMessage))
    # Only the channel's first post is due: every DM and App Home waits behind its request's post.
    assert [row.id for row in returned["nothing held"]] == [pending], returned
    assert returned["the channel held"] == [], returned
    engine.dispose()
    return {"pending rows": count} | {name: statistics.median(t) * 1000 for name, t in timings.items()}


def render(results: dict[str, dict[str, dict[str, Any]]], repeats: int) -> str:
    lines = [
        "### The outbox's due query with a backlog held by one channel (bench/outbox_backlog.py)",
        "",
        f"Median ms of {repeats} runs after five that settle the plan; statistics taken before the burst.",
        "",
        "| backend | requests waiting | pending rows | nothing held: ms | the channel held: ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for backend, sizes in results.items():
        for requests, row in sizes.items():
            lines.append(
                f"| {backend} | {int(requests):,} | {row['pending rows']:,} | {row['nothing held']:.1f} | "
                f"{row['the channel held']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres-url", required=True, help="a throwaway PostgreSQL database")
    parser.add_argument("--sizes", default="1000,5000,20000", help="comma-separated requests waiting")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "outbox_backlog.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="frbot-backlog-"))
    urls = {"PostgreSQL": args.postgres_url, "SQLite": f"sqlite:///{workdir / 'backlog.db'}"}
    results: dict[str, dict[str, dict[str, Any]]] = {backend: {} for backend in urls}
    for backend, url in urls.items():
        for requests in sizes:
            results[backend][str(requests)] = measure(seed(url, requests), args.repeats)
            print(backend, requests, results[backend][str(requests)], flush=True)
    section = render(results, args.repeats)
    write_results(Path(args.out), section, results)
    print(section)


if __name__ == "__main__":
    main()

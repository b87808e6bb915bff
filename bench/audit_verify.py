"""Benchmark: verify and export a large audit chain.

    .venv/bin/python bench/audit_verify.py --events 1000000                       # SQLite in a temp dir
    .venv/bin/python bench/audit_verify.py --events 1000000 --url postgresql+psycopg://…/frbot_bench

Fills the audit tables with N chained events (one in ten with a sealed free text, as decisions have)
by bulk insert, then times `verify_chain` and a streaming JSON-lines export, and reports the export's peak
memory (max RSS of a child process) for N and for N/10: constant-memory streaming shows as equal peaks.
The PostgreSQL database's public schema is dropped and recreated: give it a throwaway database.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from bot.audit import GENESIS_HASH, HEAD_ID, event_hash, seal, verify_chain
from bot.evidence import export_events
from storage.canonical import canonical_json
from storage.db import make_engine, recreate_schema

BATCH = 20_000


def generate(count: int):
    """Yield (event row, text rows) batches with correct hashes."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    previous = GENESIS_HASH
    events, texts = [], []
    for seq in range(1, count + 1):
        at = start + timedelta(seconds=seq * 7)
        if seq % 10 == 0:
            action, details = "decision_recorded", {"outcome": "approve", "rationale": f"Reason number {seq}"}
        else:
            action, details = "request_viewed", {"surface": "app_home"}
        chained, sealed = seal(details)
        digest = event_hash(seq, None, "UREVIEWER1", action, chained, at, previous)
        events.append((seq, seq, "UREVIEWER1", action, canonical_json(chained), at, previous, digest))
        texts += [(seq, t.path, t.salt, t.text) for t in sealed]
        previous = digest
        if len(events) == BATCH:
            yield events, texts, previous
            events, texts = [], []
    if events:
        yield events, texts, previous


def fill(engine: Engine, count: int) -> None:
    last = GENESIS_HASH
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        postgres = engine.dialect.name == "postgresql"
        for events, texts, newest in generate(count):
            last = newest
            if postgres:
                with cursor.copy(
                    "COPY audit_events (id, seq, actor_id, action, details, created_at, prev_hash, hash) "
                    "FROM STDIN"
                ) as copy:
                    for row in events:
                        copy.write_row(row)
                with cursor.copy("COPY audit_event_texts (event_seq, path, salt, text) FROM STDIN") as copy:
                    for row in texts:
                        copy.write_row(row)
            else:
                cursor.executemany(
                    "INSERT INTO audit_events "
                    "(id, seq, actor_id, action, details, created_at, prev_hash, hash) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(*row[:5], row[5].strftime("%Y-%m-%d %H:%M:%S.%f"), *row[6:]) for row in events],
                )
                cursor.executemany(
                    "INSERT INTO audit_event_texts (event_seq, path, salt, text) VALUES (?, ?, ?, ?)", texts
                )
        # The migration created the head at seq 0.
        cursor.execute(
            "UPDATE audit_chain_head SET seq = %s, hash = %s WHERE id = %s"
            if postgres
            else "UPDATE audit_chain_head SET seq = ?, hash = ? WHERE id = ?",
            (count, last, HEAD_ID),
        )
        raw.commit()
    finally:
        raw.close()


class CountingSink(io.TextIOBase):
    def __init__(self) -> None:
        self.chars = 0

    def write(self, data: str) -> int:
        self.chars += len(data)
        return len(data)


def _export_child(url: str, until_seq: int, queue: multiprocessing.Queue) -> None:
    engine = make_engine(url)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    sink = CountingSink()
    began = time.perf_counter()
    with engine.connect() as conn:
        rows = export_events(conn, sink, start, start + timedelta(seconds=until_seq * 7 + 1), "jsonl", True)
    seconds = time.perf_counter() - began
    queue.put((rows, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, sink.chars))


def export_in_child(url: str, until_seq: int) -> tuple[int, float, float, int]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    child = multiprocessing.get_context("fork").Process(target=_export_child, args=(url, until_seq, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--url", help="database URL (default: SQLite in a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.url or f"sqlite:///{Path(folder) / 'bench.db'}"
        recreate_schema(url)
        engine = make_engine(url)
        began = time.perf_counter()
        fill(engine, args.events)
        print(
            f"{engine.dialect.name}: inserted {args.events:,} chained events "
            f"in {time.perf_counter() - began:.1f}s"
        )
        result = verify_chain(engine)
        assert result.ok, [p.describe() for p in result.problems]
        print(
            f"verify: {result.events:,} events, {result.texts_checked:,} texts in {result.seconds:.2f}s "
            f"({result.events / result.seconds:,.0f} events/s)"
        )
        engine.dispose()
        for share in (args.events // 10, args.events):
            rows, seconds, peak_mb, chars = export_in_child(url, share)
            print(
                f"export jsonl with text: {rows:,} rows ({chars / 1e6:,.0f} MB) in {seconds:.1f}s, "
                f"peak RSS of the exporting process {peak_mb:,.0f} MB"
            )


if __name__ == "__main__":
    main()

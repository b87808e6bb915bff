"""Run every benchmark and write bench/RESULTS.md.

    .venv/bin/python -m bench --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/frbot_benchbig

Each benchmark runs as its own process (so one's memory and threads do not disturb the next) and leaves
its section in bench/out/ (git-ignored); RESULTS.md gathers them with the machine, the versions, the
numbers measured before the fixes (bench/baseline/) and the notes (bench/NOTES.md). The PostgreSQL
database's public schema is dropped: give it a throwaway one. About an hour and a half on two
AMD EPYC cores (84 minutes in round twenty-nine), most of it the ack-latency runs with think time (15 s
per request kind, user count and app, by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import text

from storage.db import make_engine

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
OUT = BENCH / "out"
BEFORE_NOTE = (
    'The section marked "before the outbox due query fix" is round nine\'s full run on PostgreSQL, on '
    "round nine's machine (an AMD EPYC, two cores; item 30). "
    'The sections marked "before the Core writes and the batched intake" are round six\'s full run, on '
    "that round's faster machine (its p99 ratios are to that run's own bare apps). "
    'The sections marked "before answering from the receiving thread" are round five\'s full run, on that '
    "round's machine (its bare app answered with Bolt's defaults; the p99 ratios there are to that app). "
    'The sections marked "before the frozen start-up objects" are run A of round four, on that round\'s '
    "machine. "
    'The section marked "before the submission receipts" is round three\'s final think-time run, on that '
    'round\'s slower machine. The sections marked "before the late locks" ran with this benchmark on '
    'round two\'s machine. The older ones, "before the fixes", ran on an earlier machine (Intel Xeon, '
    "2 CPUs) with the earlier ack-latency benchmark: Slack stand-in in the load generator's process, "
    "payload building timed, no think time."
)
PACKAGES = (
    "slack-bolt",
    "slack-sdk",
    "waitress",
    "SQLAlchemy",
    "psycopg",
    "alembic",
    "pydantic",
    "APScheduler",
)


def machine(postgres_url: str) -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    engine = make_engine(postgres_url)
    with engine.connect() as conn:
        server = conn.scalar(text("SHOW server_version"))
    engine.dispose()
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in PACKAGES)
    return [
        f"- Gathered: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {os.cpu_count()} CPUs ({cpu}), {mem_kib / 1024 / 1024:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}; shared by the bot, the bare apps, the load generator, "
        "the Slack stand-in and PostgreSQL",
        f"- Python {platform.python_version()}; PostgreSQL {server} (local, default settings); SQLite "
        f"{__import__('sqlite3').sqlite_version}",
        f"- Packages: {versions}",
    ]


def code_version() -> str:
    """The commit the bot's code is at, and "+changes" when its files differ from it: what a benchmark
    that ends now ran (each benchmark starts its processes afresh, so it runs the code as it was then)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        except OSError:  # no git on this machine
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "bot", "handlers", "storage", "bench/*.py")
    return commit + ("+changes" if changed else "")


def run(args: list[str]) -> float:
    started = time.perf_counter()
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", *args], cwd=ROOT, check=True)
    return time.perf_counter() - started


def merged(name: str, fresh: dict[str, Any]) -> dict[str, Any]:
    """This run's entries over those of earlier runs, kept in bench/out/NAME: a benchmark skipped this
    time keeps its entry from the run whose section is gathered."""
    path = OUT / name
    entries = {**(json.loads(path.read_text()) if path.exists() else {}), **fresh}
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return entries


def section(name: str) -> str:
    path = OUT / name
    return path.read_text() if path.exists() else f"(missing: {name})\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres-url", required=True, help="a throwaway PostgreSQL database")
    parser.add_argument(
        "--requests", type=int, default=100, help="ack latency, saturation: requests per kind and level"
    )
    parser.add_argument(
        "--duration", type=float, default=15.0, help="ack latency, think time: seconds per kind and level"
    )
    parser.add_argument("--sizes", default="100000,1000000", help="scale: request counts")
    parser.add_argument(
        "--skip", default="", help="comma-separated: ack,throughput,scale,backlog,outcome,audit"
    )
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    url = args.postgres_url
    durations: dict[str, float] = {}
    finished: dict[str, str] = {}  # when each benchmark run this time ended, not when RESULTS.md is gathered
    commits: dict[str, str] = {}  # the code each ran: sections gathered from earlier runs may be older

    def ran(name: str, seconds: float) -> None:
        durations[name] = seconds
        finished[name] = f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
        commits[name] = code_version()

    if "ack" not in skip:
        ack = ["bench.ack_latency", "--requests", str(args.requests), "--duration", str(args.duration)]
        ran("ack latency, SQLite", run(ack))
        ran("ack latency, PostgreSQL", run([*ack, "--database-url", url]))
        ran("ack latency, PostgreSQL, with a worker", run([*ack, "--database-url", url, "--worker"]))
    if "throughput" not in skip:
        ran("throughput", run(["bench.throughput", "--postgres-url", url]))
    if "scale" not in skip:
        ran("scale", run(["bench.scale", "--url", url, "--sizes", args.sizes]))
    if "backlog" not in skip:
        ran("outbox backlog", run(["bench.outbox_backlog", "--postgres-url", url]))
    if "outcome" not in skip:
        ran("outcome delay", run(["bench.outcome_delay", "--postgres-url", url]))
    if "audit" not in skip:
        audit_out = OUT / "audit_verify.txt"
        started = time.perf_counter()
        # Written aside and moved in once complete: a failed run keeps the last complete section.
        partial = audit_out.with_suffix(".partial")
        with partial.open("w") as sink:
            subprocess.run(
                [sys.executable, "-m", "bench.audit_verify", "--events", "200000", "--url", url],
                cwd=ROOT,
                check=True,
                stdout=sink,
            )
        os.replace(partial, audit_out)
        ran("audit chain, 200,000 events", time.perf_counter() - started)

    durations = merged("durations.json", durations)
    finished = merged("finished.json", finished)
    commits = merged("commits.json", commits)
    current = code_version()
    audit_lines = section("audit_verify.txt").strip()
    parts = [
        "# Benchmark results",
        "",
        "Written by `python -m bench` (bench/__main__.py). Each section below is the latest run of its "
        'benchmark (see "Benchmark durations"; one skipped with `--skip` keeps its last section).',
        "",
        "## Machine and versions",
        "",
        *machine(url),
        "- Benchmark durations: " + ", ".join(f"{k} {v:.0f}s" for k, v in durations.items()),
        *(["- Finished (UTC): " + ", ".join(f"{k} {v}" for k, v in finished.items())] if finished else []),
        *(
            [
                f"- Code each ran (the code now: {current}): "
                + ", ".join(
                    f"{k} {v}" + ("" if v == current else " (earlier code)") for k, v in commits.items()
                )
            ]
            if commits
            else []
        ),
        "",
        (BENCH / "NOTES.md").read_text().strip(),
        "",
        "## After the fixes (each benchmark's latest run: see the code each ran, above)",
        "",
        section("ack_latency_sqlite.md"),
        "",
        section("ack_latency_postgresql.md"),
        "",
        section("ack_latency_postgresql_worker.md"),
        "",
        section("throughput.md"),
        "",
        section("scale.md"),
        "",
        section("outbox_backlog.md"),
        "",
        section("outcome_delay.md"),
        "",
        "### Audit chain (bench/audit_verify.py, PostgreSQL, 200,000 chained events)",
        "",
        "```",
        audit_lines,
        "```",
        "",
        "## Before (newest first)",
        "",
        BEFORE_NOTE,
        "",
    ]
    baselines = (BENCH / "baseline").glob("*.md")
    rounds = (
        "before_due_query",
        "before_core_writes",
        "before_answer_thread",
        "before_freeze",
        "before_receipts",
        "before_late_locks",
        "before_fixes",
    )  # newest first
    newest_first = sorted(
        baselines,
        key=lambda path: (next((i for i, r in enumerate(rounds) if r in path.name), len(rounds)), path.name),
    )
    for baseline in newest_first:
        parts += [baseline.read_text().strip(), ""]
    (BENCH / "RESULTS.md").write_text("\n".join(parts).rstrip() + "\n")
    print(f"wrote {BENCH / 'RESULTS.md'}")


if __name__ == "__main__":
    main()

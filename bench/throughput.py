"""Throughput of the service layer: completed submissions and decisions per second, SQLite and PostgreSQL.

    .venv/bin/python -m bench.throughput [--postgres-url URL] [--requests N]

Each submission validates the 17-field form and commits the request, its stage reviews, its audit event
and the outbox rows that announce it; each decision locks the request, checks the approver's authority,
and commits the decision, the stage's outcome, the audit event and the outbox rows. Both run in the
workflow (bot/workflow.py) from 1 and 10 threads, without HTTP: bench/ack_latency.py measures submissions
over HTTP. The PostgreSQL database's public schema is dropped: give it a throwaway one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.fixtures import bench_workflow
from bench.output import write_results
from bot.forms import DecisionForm, check_request
from bot.workflow import Decided
from storage.db import make_engine, recreate_schema
from tests.conftest import valid_form_values

ROOT = Path(__file__).resolve().parents[1]
THREADS = (1, 10)
APPROVE = DecisionForm(rationale="Necessary and proportionate: serious offence, no other way found.")


def run(url: str, requests: int) -> dict[str, dict[int, float]]:
    recreate_schema(url)
    engine = make_engine(url)
    workflow = bench_workflow(engine)
    loaded = workflow.loaded
    rates: dict[str, dict[int, float]] = {"submissions": {}, "decisions": {}}
    for threads in THREADS:
        prefix = f"t{threads}"

        def submit(index: int, prefix: str = prefix) -> int:
            form = check_request(loaded.policy, valid_form_values())  # validation is part of the cost
            return workflow.submit(form, f"UOFF{index % 50}", "T0BENCH", f"{prefix}-{index}").request_id

        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            ids = list(pool.map(submit, range(requests)))
        rates["submissions"][threads] = requests / (time.perf_counter() - started)

        def decide(request_id: int) -> None:
            result = workflow.decide(request_id, 0, "USUP1", "approve", APPROVE)
            if not isinstance(result, Decided):
                raise RuntimeError(f"decision refused: {result}")

        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(decide, ids))
        rates["decisions"][threads] = requests / (time.perf_counter() - started)
    engine.dispose()
    return rates


def render(results: dict[str, Any], requests: int) -> str:
    lines = [
        f"### Throughput of the workflow ({requests} submissions then {requests} decisions per thread count)",
        "",
        "| backend | threads | submissions/s | decisions/s |",
        "|---|---:|---:|---:|",
    ]
    for backend, rates in results.items():
        for threads in THREADS:
            lines.append(
                f"| {backend} | {threads} | {rates['submissions'][threads]:.0f} | "
                f"{rates['decisions'][threads]:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres-url", help="a throwaway PostgreSQL database (its schema is dropped)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "throughput.md"))
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        results["SQLite"] = run(f"sqlite:///{Path(folder) / 'throughput.db'}", args.requests)
    if args.postgres_url:
        results["PostgreSQL"] = run(args.postgres_url, args.requests)
    section = render(results, args.requests)
    write_results(Path(args.out), section, results)
    print(section)


if __name__ == "__main__":
    main()

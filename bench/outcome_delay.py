"""How long after a form is saved its modal shows the outcome.

    .venv/bin/python -m bench.outcome_delay --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/x

A reviewer's decision, a question and the everyday forms are answered "received" and saved just after
(handlers/views.py). The save's transaction queues the modal's update with the outcome, due
MODAL_UPDATE_DELAY (1 s) later: Slack shows the answer first, and an update sent sooner could land before
it and be overwritten. The outbox dispatcher sends it. This measures, on the real clock, the time from
each save's commit to the Slack stand-in's receipt of that modal's `views.update`, with the bot's workflow
and dispatcher (its default poll, 1 s) in this process and the stand-in over HTTP.

Reviewers' comments (the ack benchmark's stand-in for the everyday forms) are saved at random moments, with
exponential gaps of a given mean, on a few pending requests: one now and then (a quiet bot), a steady
stream, and a burst (whose reviewer-message refreshes Slack's rate limit holds back). The floor is
MODAL_UPDATE_DELAY itself; what is above it is the dispatcher's (bench/NOTES.md item 67).

Give it a throwaway PostgreSQL database: its public schema is dropped. SQLite runs in a temporary file.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.ack_latency import percentile
from bench.fixtures import bench_policy, bench_workflow
from bench.output import write_results
from bot import views
from bot.forms import check_request
from bot.intake import modal_updater
from bot.outbox import OutboxDispatcher, dispatcher_client
from bot.workflow import MODAL_UPDATE, MODAL_UPDATE_DELAY
from storage.db import make_engine, make_session_factory, recreate_schema, transaction
from storage.models import OutboxMessage, OutboxStatus
from tests.conftest import valid_form_values
from tests.slackstub import SlackStub

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "outcome_delay"
REVIEWER = "USUP1"  # a member of the test policy's first stage
REQUESTS = 5
# (load, mean seconds between saves, saves)
LOADS = (("one now and then", 1.5, 30), ("a steady stream", 0.25, 120), ("a burst", 0.03, 300))
SETTLE_SECONDS = 60.0


@dataclass
class Passes:
    """The dispatcher's passes, counted: each is one due query or more (bot/outbox.py `run_once`)."""

    count: int = 0

    def counting(self, run_once: Callable[[], int]) -> Callable[[], int]:
        def counted() -> int:
            self.count += 1
            return run_once()

        return counted


def measure(url: str, seed: int) -> dict[str, dict[str, Any]]:
    """Each load's delays (seconds from a save's commit to its modal's update) and the dispatcher's passes
    while it ran, on the database at `url`."""
    recreate_schema(url)
    engine = make_engine(url)
    measured: dict[str, dict[str, Any]] = {}
    try:
        with SlackStub(specs_dir=None) as stub:
            client = dispatcher_client(stub.client(), timeout=5)
            senders = {"publish_home": lambda payload: None, MODAL_UPDATE: modal_updater(client)}
            dispatcher_db = make_session_factory(engine)
            # The bot's default poll (bot/config.py outbox_poll_seconds).
            dispatcher = OutboxDispatcher(dispatcher_db, client, bench_policy().policy, senders=senders)
            workflow = bench_workflow(engine, on_outbox=dispatcher.wake)
            passes = Passes()
            dispatcher.run_once = passes.counting(dispatcher.run_once)  # type: ignore[method-assign]
            form = check_request(workflow.policy, valid_form_values())
            request_ids = [
                workflow.submit(form, f"UOFF{i}", "T0TEST", f"VREQ{i}").request_id for i in range(REQUESTS)
            ]
            dispatcher.start()
            try:
                _settle(dispatcher_db)  # the requests' own posts (one a second into the one channel)
                rng = random.Random(seed)
                # The burst last: the refreshes of the reviewers' messages it queues drain for minutes at
                # Slack's pace (the modals' updates are not held behind them).
                for load, gap, count in LOADS:
                    before = passes.count
                    delays = _saves(stub, workflow, request_ids, load, gap, count, rng)
                    measured[load] = {"delays": delays, "passes": passes.count - before}
            finally:
                dispatcher.stop()
    finally:
        engine.dispose()
    return measured


def _saves(
    stub: SlackStub,
    workflow: Any,
    request_ids: list[int],
    load: str,
    gap: float,
    count: int,
    rng: random.Random,
) -> list[float]:
    """`count` comments at exponential gaps of mean `gap`, each from its own opened modal; the delay of
    each modal's update after its save's commit."""
    modals = []
    for i in range(count):
        request = workflow.load(request_ids[i % len(request_ids)])
        opened = stub.client().views_open(
            trigger_id=stub.issue_trigger_id(REVIEWER),
            view=views.comment_modal(request, workflow.policy, workflow.clock()),
        )
        modals.append((request.id, str(opened["view"]["id"])))
    saved: dict[str, float] = {}
    for i, (request_id, view_id) in enumerate(modals):
        time.sleep(rng.expovariate(1 / gap))
        workflow.comment(request_id, REVIEWER, f"Comment {i} ({load})", f"K-{load}-{i}", view_id)
        saved[view_id] = time.time()
    shown: dict[str, float] = {}
    deadline = time.monotonic() + SETTLE_SECONDS
    while len(shown) < len(saved) and time.monotonic() < deadline:
        for call in stub.calls_to("views.update"):
            view_id = call.args.get("view_id")
            if view_id in saved and view_id not in shown:
                shown[view_id] = call.at
        time.sleep(0.05)
    if len(shown) < len(saved):
        raise RuntimeError(f"{load}: {len(saved) - len(shown)} modals never shown their outcome")
    return [shown[view_id] - saved[view_id] for view_id in saved]


def _settle(db: Any) -> None:
    """Until nothing is pending but what Slack's pace holds back for more than a minute."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        with transaction(db, read_only=True) as session:
            pending = session.scalar(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.status == OutboxStatus.PENDING)
            )
        if not pending:
            return
        time.sleep(0.2)


def section(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    floor = MODAL_UPDATE_DELAY.total_seconds()
    lines = [
        "### A saved form's outcome in its modal (bench/outcome_delay.py)",
        "",
        "Seconds from a comment's save (its commit) to the Slack stand-in's receipt of its modal's "
        f"`views.update` with the outcome; the update is due {floor:.1f} s after the save "
        "(`MODAL_UPDATE_DELAY`), the dispatcher polls every second. Comments at exponential gaps of the "
        "given mean, on five pending requests; real clock, stand-in over HTTP. The dispatcher's passes from "
        "the first save to the last update, per save (each pass runs the due query once or more).",
        "",
        "| backend | load | mean gap s | saves | min | p50 | p99 | max | p50 / p99 above the due time | "
        "passes per save |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    gaps = {load: gap for load, gap, _ in LOADS}
    for backend, loads in results.items():
        for load, measured in loads.items():
            delays = measured["delays"]
            p50, p99 = statistics.median(delays), percentile(delays, 0.99)
            lines.append(
                f"| {backend} | {load} | {gaps[load]:.2f} | {len(delays)} | {min(delays):.3f} | "
                f"{p50:.3f} | {p99:.3f} | {max(delays):.3f} | {p50 - floor:.3f} / {p99 - floor:.3f} | "
                f"{measured['passes'] / len(delays):.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres-url", help="a throwaway PostgreSQL database (omit: SQLite only)")
    parser.add_argument("--seed", type=int, default=67)
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the section and its numbers")
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        results["SQLite"] = measure(f"sqlite:///{folder}/outcome.db", args.seed)
    if args.postgres_url:
        results["PostgreSQL"] = measure(args.postgres_url, args.seed)
    text = section(results)
    print(text)
    write_results(args.out, text, results)


if __name__ == "__main__":
    main()

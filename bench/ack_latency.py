"""Ack latency of the bot against a bare Bolt app on the same server stack, under two load models.

Both run as real processes under waitress behind the same WSGI wrapper and answer real signed Slack requests
over HTTP from 1, 10 and 50 concurrent simulated users. The bot does its real work (it validates a
submission before acknowledging it, then stores the form and records it as a request; it opens a modal after
acknowledging a command or a click); the bare app only acknowledges, answering from the thread that
received the request as the bot does. Our latency is reported as a ratio to that floor, and to a second
bare app with Bolt's default `process_before_response=False` (bench/bare_app.py), as a bare Bolt app is
usually written. The forms (submissions, decisions, comments) are also run against a third, the floor that
stores each form (one insert into the bot's database, committed) before answering: what an answer that
waits for the write costs (a submission's answer did until round twelve: bench/NOTES.md, item 32; a
decision's until round thirty-two, item 63; a comment's until round thirty-three, item 65).

A reviewer's decision (the decision modal's submission) is answered "received" once its form passes its
checks, and recorded just after, under the request's row lock; the modal then shows whether it was
recorded or refused. Each decision needs a request still pending at its first stage, so when decisions are
measured the benchmark first records enough of them (`seed_pending`, before the bot starts; their
announcements marked sent, so no backlog of posts runs beside the levels), and every decision the bot
answers approves a different one: after the run, every one answered must be recorded and none refused
(`check_recorded`). A reviewer's comment, standing for the everyday forms, is answered and saved the same
way, on those requests in turn; every one answered must be recorded (`check_recorded`), as must every
submission answered, as a request beside the seeded ones: an answer whose form was then not saved is
not a fast ack. The bare apps get
the same payloads and only acknowledge them.

- **Think time** (the target's model): each user waits a random think time, uniform THINK_SECONDS,
  before each request (and before its first, so users do not start in step), and the level runs for
  `--duration` seconds (at least `--min-samples` requests). The largest level runs `--rounds` times,
  bot and bare apps taking turns each time, and its samples are pooled: on a shared two-core machine one
  stall decides the p99 of a single 15 s run (the floor's own p99 ranged 12-40 ms between runs), and
  taking turns keeps a drift in the machine's speed from landing on one app only.
- **Saturation** (capacity): closed loop, no think time: each user sends again as soon as it is answered,
  `--requests` requests per level. Latency is then users / throughput (Little's law): it measures
  capacity, not the latency a user sees at a given load.

The Slack stand-in runs in its own process (bench/stub_process.py). Each time is the HTTP round trip
only (SlackDriver.last_elapsed): building and signing the payload is not counted. Before every level the
benchmark waits until the bot is idle (its outbox sent), so one level's Slack calls do not land in the
next level or in the bare apps' runs. Bot and bare apps take turns level by level.

Run: python -m bench.ack_latency [--database-url URL] [--requests N] [--duration S]
(writes bench/out/ack_latency_<backend>.md; `python -m bench` gathers it into bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from bench import output
from bench.fixtures import bench_workflow
from bench.stub_process import RemoteStub
from bot import forms, views
from bot.config import Settings
from bot.forms import check_request
from bot.workflow import Submission
from storage.db import make_engine, make_session_factory, recreate_schema, transaction
from storage.models import AuditEvent, Comment, Decision, FrRequest, OutboxMessage, OutboxStatus, utcnow
from tests.botprocess import (
    SIGNING_SECRET,
    BackgroundProcess,
    BotProcess,
    child_processes,
    free_port,
    is_follow_up_process,
)
from tests.conftest import GROUPS, TEST_POLICY, slack_state, valid_form_values
from tests.slackstub import SlackDriver

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 10, 50)
# A comment stands for the everyday forms, answered "received" and saved just after as a decision is.
KINDS = ("command", "submission", "click", "decision", "comment")
# "bare": only acks, answering in the receiving thread like the bot (the floor); "defaults": the same with
# Bolt's default process_before_response=False, as a bare Bolt app is usually written; "stored": the floor
# that stores each submitted form (one insert, committed) before answering, run for the forms only
# (STORED_KINDS).
APPS = ("bot", "bare", "defaults", "stored")
BARE_FLAGS = {"bare": (), "defaults": ("--bolt-defaults",), "stored": ("--store",)}
STORED_KINDS = ("submission", "decision", "comment")  # the forms the "stored" floor keeps
MODELS = ("think", "saturation")
# A person in Slack reads, types or decides between requests; 0.5-1.5 s (mean 1 s) is far busier than
# any real officer or reviewer, so 50 such users offer about 50 requests/s of one kind: a stress test
# with realistic (open-ended, staggered) arrivals rather than back-to-back requests.
THINK_SECONDS = (0.5, 1.5)
APPROVER = "USUP1"
RATIONALE = "Necessary and proportionate: a serious offence, and no other way to identify the suspect."
COMMENT = "Spoke to the OIC: the still is from exhibit JS/1, taken from the shop's CCTV."
COMMENTED_REQUESTS = 200  # seeded pending requests the comments go round, when no decisions are run
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def ratio_interval(ours: list[float], floor: list[float], resamples: int = 1000) -> tuple[float, float]:
    """A 95 % bootstrap interval of p99(ours) / p99(floor): both sample sets drawn again with replacement,
    the ratio's 2.5th and 97.5th percentiles over `resamples` draws (seeded, so a rerun of the same
    samples prints the same interval). It treats answers as independent draws, so it shows how far the
    ratio moves with which answers happened to be slow, not how the machine drifts between runs."""
    draw = random.Random(0)
    ratios = sorted(
        percentile(draw.choices(ours, k=len(ours)), 0.99)
        / percentile(draw.choices(floor, k=len(floor)), 0.99)
        for _ in range(resamples)
    )
    return ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def send(driver: SlackDriver, kind: str, user: str, target: dict[str, Any]) -> float:
    """One request as Slack sends it; returns the HTTP round trip (payload building not counted)."""
    if kind == "command":
        status, body = driver.slash_command("/fr-request", "", user)
    elif kind == "submission":
        view = {"type": "modal", "callback_id": "fr_request_submit", "blocks": target["blocks"]}
        status, body = driver.view_submission(user, view, slack_state(valid_form_values()))
    elif kind in ("decision", "comment"):
        view, block_id, typed, metadata = _reviewer_form(kind, target)
        status, body = driver.view_submission(
            APPROVER, view, {block_id: {forms.ACTION_ID: typed}}, private_metadata=metadata
        )
        _check_taken(kind, body)
    else:
        status, body = driver.block_action(
            APPROVER, "review_approve", target["value"], message=target["message"]
        )
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body}")
    return driver.last_elapsed


def _reviewer_form(kind: str, target: dict[str, Any]) -> tuple[dict[str, Any], str, str, str]:
    """A reviewer's decision or comment form, what is typed in it, and its private_metadata: the request
    it acts on, the next one each time."""
    if kind == "decision":
        decided = views.ReviewContext(request_id=target["next_pending"](), position=0, action="approve")
        return target["decision_view"], forms.RATIONALE.block_id, RATIONALE, decided.model_dump_json()
    on = views.ItemContext(request_id=target["comment_on"]())
    return target["comment_view"], forms.COMMENT.block_id, COMMENT, on.model_dump_json()


def _check_taken(kind: str, body: Any) -> None:
    """The bot answers a form "received" (bare apps nothing); one its checks refused is not what is
    measured."""
    refused = isinstance(body, dict) and body.get("response_action") == "errors"
    if refused or "Not recorded" in json.dumps(body):
        raise RuntimeError(f"{kind} refused: {body}")


def pending_needed(args: argparse.Namespace, models: list[str], levels: list[int]) -> int:
    """Enough pending requests for every decision the bot may answer: at most a request per think time
    (its mean, with a second's margin at each end) per user and round, `--requests` a saturated level."""
    mean_think = sum(THINK_SECONDS) / 2
    needed = 0
    if "think" in models:
        for users in levels:
            rounds = args.rounds if users == max(levels) else 1
            needed += rounds * max(args.min_samples, int(users * (args.duration + 2) / mean_think))
    if "saturation" in models:
        needed += args.requests * len(levels)
    return int(needed * 1.2) + 50


def seed_pending(database_url: str, count: int) -> tuple[list[int], dict[str, Any]]:
    """`count` requests pending at their first stage (the supervisors', whose approver the decisions come
    from), from 500 officers, recorded through the workflow as the bot records them, and the decision
    modal as the bot draws it for the first. Their announcements are marked sent: posted one a second to
    one channel they would be a backlog beside every level."""
    engine = make_engine(database_url)
    workflow = bench_workflow(engine)
    loaded = workflow.loaded
    form = check_request(loaded.policy, valid_form_values())
    ids: list[int] = []
    for start in range(0, count, 200):
        batch = [
            Submission(form, f"UOFF{index % 500:03d}", "T0BENCH", f"VSEED{index}")
            for index in range(start, min(count, start + 200))
        ]
        for submitted in workflow.submit_all(batch):
            if submitted.stage_names[0] != "Supervisor review":
                raise RuntimeError(f"seeded request first goes to {submitted.stage_names[0]}")
            ids.append(submitted.request_id)
    with transaction(workflow.db) as session:
        session.execute(update(OutboxMessage).values(status=OutboxStatus.SENT, sent_at=utcnow()))
    first = workflow.load(ids[0])
    assert first is not None
    context = views.ReviewContext(request_id=first.id, position=0, action="approve")
    view = views.decision_modal(first, loaded.policy, context, utcnow())
    engine.dispose()
    return ids, view


def decision_targets(pending: list[int], view: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the decision level sends: the decision modal (`view`), and for the bot the next pending request
    each time (each decided once); for the bare apps, which only acknowledge, always the first."""
    queue = iter(pending)
    queue_lock = threading.Lock()

    def next_pending() -> int:
        with queue_lock:
            found = next(queue, None)
        if found is None:
            raise RuntimeError("every seeded request is decided: seed more (pending_needed)")
        return found

    return {"decision_view": view, "next_pending": next_pending}, {
        "decision_view": view,
        "next_pending": lambda: pending[0],
    }


def comment_target(pending: list[int]) -> dict[str, Any]:
    """What the comment level sends: a reviewer's comment form, on the seeded pending requests in turn
    (each comment is a new modal: its id, the comment's submission key, is new each time)."""
    turn = itertools.cycle(pending)
    turn_lock = threading.Lock()

    def comment_on() -> int:
        with turn_lock:
            return next(turn)

    view = {
        "type": "modal",
        "callback_id": views.COMMENT_CALLBACK,
        "blocks": [views.text_input(forms.COMMENT)],
    }
    return {"comment_view": view, "comment_on": comment_on}


def run_level(
    url: str,
    stub: RemoteStub,
    kind: str,
    users: int,
    target: dict[str, Any],
    *,
    model: str,
    requests: int,
    duration: float,
    min_samples: int,
) -> tuple[list[float], float]:
    """Latencies of one load level, and its wall time."""
    samples: list[float] = []
    budget = iter(range(requests))  # closed loop: the users share `requests` requests
    budget_lock = threading.Lock()
    started = time.perf_counter()
    deadline = started + duration

    def more() -> bool:
        if model == "think":
            return time.perf_counter() < deadline or len(samples) < min_samples
        with budget_lock:
            return next(budget, None) is not None

    def user_loop(index: int) -> None:
        driver = SlackDriver(url, SIGNING_SECRET, stub=stub)  # type: ignore[arg-type]  # its own last_elapsed
        rng = random.Random(index)
        user = f"UBENCH{index:04d}"
        if model == "think":
            time.sleep(rng.uniform(0, THINK_SECONDS[1]))
        while more():
            samples.append(send(driver, kind, user, target))
            if model == "think":
                time.sleep(rng.uniform(*THINK_SECONDS))

    with ThreadPoolExecutor(max_workers=users) as pool:
        list(pool.map(user_loop, range(users)))
    return samples, time.perf_counter() - started


def child_memory(pid: int, when: str) -> dict[str, int]:
    """The resident memory of the bot's child processes: its follow-up process and the resource tracker
    that Python's multiprocessing starts beside it."""
    found = {}
    for child in child_processes(pid):
        what = "follow-up process" if is_follow_up_process(child) else "multiprocessing resource tracker"
        with contextlib.suppress(OSError):
            found[f"bot's {what} {when}"] = rss_kib(child)
    return found


def cpu_ticks(pid: int) -> int:
    """The CPU of a process and its children: the bot's work after its answers counts as the bot's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = int(fields[11]) + int(fields[12])  # utime + stime
    return own + sum(cpu_ticks(child) for child in child_processes(pid))


def runqueue_wait_ns(pid: int) -> int:
    """How long the process's answering threads (those at niceness 0: the bot lowers its background
    threads) have waited for a CPU while runnable (schedstat), in ns: the part of an answer's time that
    the kernel, not the process, decides."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that has just ended
            if int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]) == 0:
                total += int((task / "schedstat").read_text().split()[1])
    return total


def settle(pids: list[int], timeout: float = 60.0) -> None:
    """Wait until the servers' CPU is quiet, so the next level starts clean (a channel's posts paced at one
    a second may still be waiting: the bot sends them as the next level runs, as it would with Slack)."""
    deadline = time.monotonic() + timeout
    before = [cpu_ticks(pid) for pid in pids]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = [cpu_ticks(pid) for pid in pids]
        if all(b - a <= 2 for a, b in zip(before, now, strict=True)):  # under 4 % of a core
            return
        before = now


def wait_healthy(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--requests", type=int, default=100, help="saturation: requests per kind and level")
    parser.add_argument("--duration", type=float, default=15.0, help="think time: seconds per kind and level")
    parser.add_argument("--min-samples", type=int, default=30, help="think time: fewest requests per level")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: think,saturation")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: " + ",".join(KINDS))
    parser.add_argument("--users", default=",".join(map(str, CONCURRENCY)), help="comma-separated levels")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="think time: rounds of the largest level, the apps taking turns each round; samples pooled",
    )
    parser.add_argument(
        "--bot-env", action="append", default=[], help="KEY=VALUE for the bot process (repeatable)"
    )
    parser.add_argument(
        "--worker",
        action="store_true",
        help="the bot answers with `run --no-worker` and a `worker` process records and sends (PostgreSQL)",
    )
    args = parser.parse_args()
    bot_env = _bot_env(args)
    models = [m for m in MODELS if m in args.models.split(",")]
    kinds = [k for k in KINDS if k in args.kinds.split(",")]
    levels = [int(u) for u in args.users.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="frbot-bench-"))
    policy = workdir / "policy.yml"
    policy.write_text(TEST_POLICY)
    database_url = args.database_url or f"sqlite:///{workdir / 'bench.db'}"
    recreate_schema(database_url)  # PostgreSQL: a throwaway database, its schema dropped
    seeded = pending_needed(args, models, levels) if "decision" in kinds else 0
    if "comment" in kinds:
        seeded = max(seeded, COMMENTED_REQUESTS)
    pending, decision_view = seed_pending(database_url, seeded) if seeded else ([], {})
    # results[model][app][kind][users] = latencies in seconds
    results: dict[str, Any] = {m: {app: {k: {} for k in KINDS} for app in APPS} for m in models}
    rates: dict[str, dict[int, float]] = {}  # bot submissions/s per model and level
    cpu: dict[str, Any] = {m: {k: {} for k in KINDS} for m in models}  # bot CPU ms per request
    # waits[model][kind][users][app] = [ns its server's threads waited for a CPU during the level, answers]
    waits: dict[str, Any] = {m: {k: {} for k in KINDS} for m in models}
    # round_ratios[model][kind][users]: each round's bot p99 / floor p99, where a level runs in rounds
    round_ratios: dict[str, Any] = {m: {k: {} for k in KINDS} for m in models}
    memory: dict[str, int] = {}
    refused: Counter[str] = Counter()  # "method: error" -> how many of the bot's calls the stand-in refused

    with RemoteStub({group: sorted(members) for group, members in GROUPS.items()}) as stub:
        bot = BotProcess(
            database_url, policy, stub.base_url, workdir, FRBOT_LOG_LEVEL="WARNING", **bot_env
        ).start(args=("--no-worker",) if args.worker else ())
        worker = (
            BackgroundProcess(
                database_url,
                policy,
                stub.base_url,
                workdir,
                command="worker",
                **{"FRBOT_LOG_LEVEL": "WARNING", "FRBOT_SCHEDULER_ENABLED": "false", **bot_env},
            ).start()
            if args.worker
            else None
        )
        stub.report_landings_to(bot.url)  # as Slack would: one event per post, handled by the bot
        env = {**bot.env, "PYTHONPATH": str(ROOT)}
        ports = {app: free_port() for app in BARE_FLAGS}
        bares = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.bare_app", str(port), *BARE_FLAGS[app]],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for app, port in ports.items()
        ]
        try:
            for port in ports.values():
                wait_healthy(port)
            assert bot.process is not None
            memory["bot idle"] = rss_kib(bot.process.pid)
            memory.update(child_memory(bot.process.pid, "idle"))
            urls = {
                "bot": bot.url,
                **{app: f"http://127.0.0.1:{port}/slack/events" for app, port in ports.items()},
            }
            pids = {"bot": bot.process.pid, **{app: p.pid for app, p in zip(ports, bares, strict=True)}}
            # One real request whose reviewer message the button clicks target.
            setup = SlackDriver(bot.url, SIGNING_SECRET, stub=stub)  # type: ignore[arg-type]
            setup.slash_command("/fr-request", "", "UOFFICER")
            form = stub.opened_view()
            setup.view_submission("UOFFICER", form, slack_state(valid_form_values()))
            message = stub.posted_message("C0SUPER")
            value = next(
                e["value"]
                for b in message["blocks"]
                if b["type"] == "actions"
                for e in b["elements"]
                if e["action_id"] == "review_approve"
            )
            target = {"blocks": form["blocks"], "message": message, "value": value}
            floor_target = target
            if pending:
                for_bot, for_floor = decision_targets(pending, decision_view)
                target, floor_target = {**target, **for_bot}, {**target, **for_floor}
                comments = comment_target(pending)
                target, floor_target = {**target, **comments}, {**floor_target, **comments}
            bots = [bot.process.pid] + ([worker.process.pid] if worker and worker.process else [])
            servers = [*bots, *(process.pid for process in bares)]
            for model in models:
                for kind in kinds:
                    for users in levels:
                        rounds = args.rounds if model == "think" and users == max(levels) else 1
                        ticks = [0] * len(bots)
                        elapsed_total = 0.0
                        for _round in range(rounds):
                            ours: dict[str, list[float]] = {}
                            for app in APPS:
                                if app == "stored" and kind not in STORED_KINDS:
                                    continue  # it differs from the floor only in forms it stores
                                settle(servers)
                                stub.clear()
                                ticks_before = [cpu_ticks(pid) for pid in bots]
                                waited_before = runqueue_wait_ns(pids[app])
                                samples, elapsed = run_level(
                                    urls[app],
                                    stub,
                                    kind,
                                    users,
                                    target if app == "bot" else floor_target,
                                    model=model,
                                    requests=args.requests,
                                    duration=args.duration,
                                    min_samples=args.min_samples,
                                )
                                waited = waits[model][kind].setdefault(users, {}).setdefault(app, [0, 0])
                                waited[0] += runqueue_wait_ns(pids[app]) - waited_before
                                waited[1] += len(samples)
                                ours[app] = samples
                                results[model][app][kind].setdefault(users, []).extend(samples)
                                if app == "bot":
                                    # The bot's CPU for the level and for the Slack calls it left queued.
                                    settle(bots)
                                    refused.update(stub.refused_calls())
                                    ticks = [
                                        total + cpu_ticks(pid) - before
                                        for total, pid, before in zip(ticks, bots, ticks_before, strict=True)
                                    ]
                                    elapsed_total += elapsed
                                print(f"{model} {kind} {users} {app}: n={len(samples)}", flush=True)
                            if rounds > 1:
                                ratio = percentile(ours["bot"], 0.99) / percentile(ours["bare"], 0.99)
                                round_ratios[model][kind].setdefault(users, []).append(ratio)
                        answered = len(results[model]["bot"][kind][users])
                        cpu[model][kind][users] = [t * 1000 / CLOCK_TICKS / answered for t in ticks]
                        if kind == "submission":
                            rates.setdefault(model, {})[users] = answered / elapsed_total
                        if model == "saturation" and users == max(levels):
                            memory[f"bot after {kind} load"] = rss_kib(bot.process.pid)
                            memory.update(child_memory(bot.process.pid, f"after {kind} load"))
        finally:
            for process in bares:
                process.terminate()
                process.wait(10)
            bot.stop()
            if worker is not None:
                worker.stop()
        late = stub.late_acks

    answered = {
        kind: sum(len(samples) for model in models for samples in results[model]["bot"][kind].values())
        for kind in kinds
        if kind in RECORDED_AS
    }
    # Requests there before the levels: the seeded ones and the one the setup submitted.
    check_recorded(database_url, answered, requests_before=len(pending) + 1)
    print(json.dumps({"memory_kib": memory, "late_acks": late, "refused_calls": refused}, indent=2))
    write_results(results, rates, cpu, waits, round_ratios, memory, late, refused, database_url, args)


# The row each answered form of these kinds leaves once it is recorded.
RECORDED_AS: dict[str, type[FrRequest] | type[Decision] | type[Comment]] = {
    "submission": FrRequest,
    "decision": Decision,
    "comment": Comment,
}


def check_recorded(database_url: str, answered: dict[str, int], requests_before: int) -> None:
    """Every form the bot answered "received" (`answered`, by kind) was recorded once the bot stopped (a
    clean stop finishes what it answered): each submission a request beside `requests_before`, each
    decision and comment its row; and none refused: each decision went to a different pending request.
    An answer whose form was then not saved would otherwise count as a fast ack."""
    if not answered:
        return
    expected = {
        kind: count + (requests_before if kind == "submission" else 0) for kind, count in answered.items()
    }
    engine = make_engine(database_url)
    try:
        with transaction(make_session_factory(engine), read_only=True) as session:
            recorded = {
                kind: session.scalar(select(func.count()).select_from(RECORDED_AS[kind])) for kind in answered
            }
            refused = session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "action_refused")
            )
    finally:
        engine.dispose()
    if recorded != expected or refused:
        raise RuntimeError(
            f"answered {answered}, expected {expected}, recorded {recorded}, {refused} refused"
        )


def stored_floor_table(results: dict[str, Any]) -> list[str]:
    """The forms against the floor that stores each form before answering (`bare_app.py --store`): what
    the one durable write costs an answer that waits for it (the bot stores a request's form, and records
    a decision or a comment, just after its answer)."""
    rows = [
        (kind, users, samples)
        for kind in STORED_KINDS
        for users, samples in sorted(results["stored"][kind].items())
    ]
    if not rows:
        return []
    lines = [
        "",
        "Against a bare app that stores the submitted form before answering (`bench/bare_app.py --store`: "
        "one insert into the bot's database, committed, then the ack):",
        "",
        "| request | users | stored-floor p50 ms | stored-floor p99 ms | stored-floor max ms | "
        "its p99 ratio to the floor | bot p99 ms | bot p99 ratio to it |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, users, samples in rows:
        p99 = percentile(samples, 0.99)
        floor_p99 = percentile(results["bare"][kind][users], 0.99)
        bot_p99 = percentile(results["bot"][kind][users], 0.99)
        lines.append(
            f"| {kind} | {users} | {statistics.median(samples) * 1000:.1f} | {p99 * 1000:.1f} | "
            f"{max(samples) * 1000:.1f} | {p99 / floor_p99:.2f} | {bot_p99 * 1000:.1f} | "
            f"{bot_p99 / p99:.2f} |"
        )
    return lines


def _bot_env(args: argparse.Namespace) -> dict[str, str]:
    """The bot as deployed: tests/botprocess.py gives the test suite's bot a fast outbox poll (0.2 s) so that
    tests wait less; deployed, it polls at the default, and each poll is a due query (bench/NOTES.md
    item 37). --bot-env can still set it."""
    deployed = {"FRBOT_OUTBOX_POLL_SECONDS": str(Settings.model_fields["outbox_poll_seconds"].default)}
    return {**deployed, **dict(item.split("=", 1) for item in args.bot_env)}


def write_results(
    results: dict[str, Any],
    rates: dict[str, dict[int, float]],
    cpu: dict[str, Any],
    waits: dict[str, Any],
    round_ratios: dict[str, Any],
    memory: dict[str, int],
    late_acks: int,
    refused: dict[str, int],
    url: str,
    args: argparse.Namespace,
) -> None:
    backend = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    lo, hi = THINK_SECONDS
    titles = {
        "think": f"think time uniform {lo}–{hi} s, {args.duration:.0f} s per level (at least "
        f"{args.min_samples} requests)"
        + (
            f"; the {max(int(u) for u in args.users.split(','))}-user level {args.rounds} times, "
            "the apps taking turns each time, samples pooled (its p99 ratio per round in the last column)"
            if args.rounds > 1
            else ""
        ),
        "saturation": f"saturation: closed loop, no think time, {args.requests} requests per level",
    }
    deployment = ", answering process (`run --no-worker`) and a worker process" if args.worker else ""
    settings = ", ".join(f"`{key}={value}`" for key, value in sorted(_bot_env(args).items()))
    lines = [f"### Ack latency over real HTTP, {backend}{deployment}", "", f"Bot settings: {settings}.", ""]
    for model in results:
        per_round = model == "think" and args.rounds > 1  # the largest level ran in rounds
        lines += [
            f"#### {titles[model]}",
            "",
            "| request | users | n | bot p50 ms | bot p99 ms | bot max ms | bare p50 ms | bare p99 ms | "
            "bare max ms | p99 ratio | its 95 % interval | Bolt-defaults bare p50 / p99 ms | "
            "p99 ratio to it | bot CPU ms/request |"
            + (" worker CPU ms/request |" if args.worker else "")
            + " waited for a CPU µs/answer, bot / bare |"
            + (" p99 ratio per round |" if per_round else ""),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            + ("---:|" if args.worker else "")
            + ("---:|" if per_round else ""),
        ]
        for kind in KINDS:
            for users in sorted(results[model]["bot"][kind]):  # the levels run (`--users`)
                ours, floor = results[model]["bot"][kind][users], results[model]["bare"][kind][users]
                usual = results[model]["defaults"][kind][users]
                p99, floor_p99, usual_p99 = (percentile(s, 0.99) for s in (ours, floor, usual))
                low, high = ratio_interval(ours, floor)
                lines.append(
                    f"| {kind} | {users} | {len(ours)} | {statistics.median(ours) * 1000:.1f} | "
                    f"{p99 * 1000:.1f} | {max(ours) * 1000:.1f} | {statistics.median(floor) * 1000:.1f} | "
                    f"{floor_p99 * 1000:.1f} | {max(floor) * 1000:.1f} | {p99 / floor_p99:.2f} | "
                    f"{low:.2f}–{high:.2f} | "
                    f"{statistics.median(usual) * 1000:.1f} / {usual_p99 * 1000:.1f} | "
                    f"{p99 / usual_p99:.2f} |"
                    + "".join(f" {value:.1f} |" for value in cpu[model][kind][users])
                    + " "
                    + " / ".join(
                        f"{waited / max(answers, 1) / 1000:.0f}"
                        for waited, answers in (waits[model][kind][users][app] for app in ("bot", "bare"))
                    )
                    + " |"
                    + (
                        " " + " / ".join(f"{r:.2f}" for r in round_ratios[model][kind].get(users, [])) + " |"
                        if per_round
                        else ""
                    )
                )
        lines += stored_floor_table(results[model])
        if model in rates and model == "saturation":  # under think time the rate is only the users' pace
            lines += [
                "",
                "Bot submissions acknowledged per second (each validated, answered, then stored): "
                + ", ".join(f"{users} users: {value:.0f}/s" for users, value in rates[model].items()),
            ]
        lines.append("")
    lines += [
        f"Acks later than 3 s: {late_acks}. "
        "The bot's Slack calls that Slack would have refused (an expired trigger_id is a modal opened "
        "too late): "
        + (", ".join(f"{k} ×{v}" for k, v in sorted(refused.items())) or "none")
        + ". Resident memory (KiB): "
        + ", ".join(f"{k}: {v}" for k, v in memory.items()),
        "",
    ]
    section = "\n".join(lines)
    print(section)
    out = ROOT / "bench" / "out" / f"ack_latency_{backend.lower()}{'_worker' if args.worker else ''}.md"
    # The raw samples, in the order they completed, for looking at stalls.
    data = {
        "results": results,
        "rates": rates,
        "cpu_ms_per_request": cpu,
        "p99_ratio_per_round": round_ratios,
        "memory_kib": memory,
        "late_acks": late_acks,
        "refused_calls": refused,
    }
    output.write_results(out, section, data, indent=None)


if __name__ == "__main__":
    main()

"""Ack latency and throughput of the bot against a bare Bolt app on the same server stack.

Both run as real processes under waitress behind the same WSGI wrapper and answer real signed Slack requests
over HTTP, sent by 1, 10 and 50 concurrent simulated users. The bot does its real work (it validates the
form and commits the request before acknowledging a submission; it opens a modal after acknowledging a
command or a click); the bare app only acknowledges. Our latency is reported as a ratio to that floor.

Run: python -m bench.ack_latency [--database-url URL] [--requests N]
(writes bench/out/ack_latency_<backend>.md; `python -m bench` gathers it into bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from storage.db import recreate_schema
from tests.botprocess import SIGNING_SECRET, BotProcess, free_port
from tests.conftest import GROUPS, TEST_POLICY, slack_state, valid_form_values
from tests.slackstub import SlackDriver, SlackStub

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 10, 50)
APPROVER = "USUP1"


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def timed(call: Callable[[], tuple[int, object]]) -> float:
    started = time.perf_counter()
    status, body = call()
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body}")
    return elapsed


def run_load(
    driver: SlackDriver, kind: str, users: int, total: int, target: dict[str, object]
) -> list[float]:
    def one(index: int) -> float:
        user = f"UBENCH{index % users:04d}"
        if kind == "command":
            return timed(lambda: driver.slash_command("/fr-request", "", user))
        if kind == "submission":
            view = {"type": "modal", "callback_id": "fr_request_submit", "blocks": target["blocks"]}
            return timed(lambda: driver.view_submission(user, view, slack_state(valid_form_values())))
        return timed(
            lambda: driver.block_action(
                APPROVER, "review_approve", target["value"], message=target["message"]
            )
        )

    with ThreadPoolExecutor(max_workers=users) as pool:
        return list(pool.map(one, range(total)))


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
    parser.add_argument("--requests", type=int, default=200, help="requests per kind and concurrency level")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="frbot-bench-"))
    policy = workdir / "policy.yml"
    policy.write_text(TEST_POLICY)
    database_url = args.database_url or f"sqlite:///{workdir / 'bench.db'}"
    recreate_schema(database_url)  # PostgreSQL: a throwaway database, its schema dropped
    results: dict[str, dict[str, dict[int, list[float]]]] = {"bot": {}, "bare": {}}
    memory: dict[str, int] = {}

    with SlackStub(specs_dir=None) as stub:
        stub.latency = 0.0
        for group, members in GROUPS.items():
            stub.add_usergroup(group, sorted(members))
        bot = BotProcess(database_url, policy, stub.base_url, workdir, FRBOT_LOG_LEVEL="WARNING").start()
        bare_port = free_port()
        env = {**bot.env, "PYTHONPATH": str(ROOT)}
        bare = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_app", str(bare_port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(bare_port)
            assert bot.process is not None
            memory["bot idle"] = rss_kib(bot.process.pid)
            drivers = {
                "bot": SlackDriver(bot.url, SIGNING_SECRET, stub=stub),
                "bare": SlackDriver(f"http://127.0.0.1:{bare_port}/slack/events", SIGNING_SECRET, stub=stub),
            }
            # One real request whose reviewer message the button clicks target.
            bot_driver = drivers["bot"]
            bot_driver.slash_command("/fr-request", "", "UOFFICER")
            form = stub.wait_for("views.open").response["view"]
            bot_driver.view_submission("UOFFICER", form, slack_state(valid_form_values()))
            posted = stub.wait_for(
                lambda c: c.method == "chat.postMessage" and c.args.get("channel") == "C0SUPER"
            )
            message = stub.message(posted.response["channel"], posted.response["ts"])
            value = next(
                e["value"]
                for b in message["blocks"]
                if b["type"] == "actions"
                for e in b["elements"]
                if e["action_id"] == "review_approve"
            )
            target = {"blocks": form["blocks"], "message": message, "value": value}
            for name, driver in drivers.items():
                for kind in ("command", "submission", "click"):
                    results[name][kind] = {}
                    for users in CONCURRENCY:
                        stub.clear()
                        started = time.perf_counter()
                        samples = run_load(driver, kind, users, args.requests, target)
                        results[name][kind][users] = samples
                        if name == "bot" and kind == "submission":
                            elapsed = time.perf_counter() - started
                            results["bot"].setdefault("_throughput", {})[users] = [args.requests / elapsed]
                        if name == "bot" and users == max(CONCURRENCY):
                            memory[f"bot after {kind} load"] = rss_kib(bot.process.pid)
        finally:
            bare.terminate()
            bare.wait(10)
            bot.stop()

    print(json.dumps({"memory_kib": memory}, indent=2))
    write_results(results, memory, database_url, args.requests)


def write_results(
    results: dict[str, dict[str, dict[int, list[float]]]], memory: dict[str, int], url: str, requests: int
) -> None:
    backend = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    lines = [
        f"### Ack latency over real HTTP, {backend} ({requests} requests per kind and level)",
        "",
        "| request | users | bot p50 ms | bot p99 ms | bot max ms | bare p50 ms | bare p99 ms | p99 ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("command", "submission", "click"):
        for users in CONCURRENCY:
            ours, floor = results["bot"][kind][users], results["bare"][kind][users]
            p99, floor_p99 = percentile(ours, 0.99), percentile(floor, 0.99)
            lines.append(
                f"| {kind} | {users} | {statistics.median(ours) * 1000:.1f} | {p99 * 1000:.1f} | "
                f"{max(ours) * 1000:.1f} | {statistics.median(floor) * 1000:.1f} | {floor_p99 * 1000:.1f} | "
                f"{p99 / floor_p99:.2f} |"
            )
    throughput = results["bot"].get("_throughput", {})
    lines += [
        "",
        "Completed submissions per second (validated, committed, acknowledged): "
        + ", ".join(f"{users} users: {value[0]:.0f}/s" for users, value in throughput.items()),
    ]
    lines += ["", "Resident memory (KiB): " + ", ".join(f"{k}: {v}" for k, v in memory.items()), ""]
    section = "\n".join(lines)
    print(section)
    out = ROOT / "bench" / "out" / f"ack_latency_{backend.lower()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(section)
    # The raw samples, in the order they completed, for looking at stalls.
    out.with_suffix(".json").write_text(json.dumps({"results": results, "memory_kib": memory}))


if __name__ == "__main__":
    main()

"""Two real bot processes sharing one PostgreSQL database behave as one bot.

Each signed Slack request goes to one process or the other, as a round-robin load balancer would send
them: a request opened on one and submitted on the other works, two approvers deciding the same stage
through different processes at the same moment leave exactly one outcome, and every Slack message owed is
sent once although both processes' outbox dispatchers poll the same table.

PostgreSQL only: several processes sharing a SQLite file is not a supported deployment (README,
"Deploying several processes"). The `postgres_migrated` fixture skips without FRBOT_TEST_POSTGRES_URL and
fails instead when FRBOT_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot import views
from storage.db import make_engine
from storage.models import Decision, FrRequest, OutboxMessage, OutboxStatus
from tests.botprocess import SIGNING_SECRET, BackgroundProcess, BotProcess
from tests.conftest import TEST_POLICY, _truncate_postgres, slack_state, valid_form_values
from tests.e2e_support import _entry, buttons, outcome_of, reference_of, reviewer_message, view_sent
from tests.slackstub import SlackDriver, SlackStub


@pytest.fixture(scope="module")
def shared_url(postgres_migrated: str) -> str:
    _truncate_postgres(postgres_migrated)
    return postgres_migrated


@pytest.fixture(scope="module", params=["full processes", "answering processes and a worker"])
def bots(
    request: pytest.FixtureRequest,
    shared_url: str,
    stub: SlackStub,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[BotProcess]]:
    """Two processes answering Slack. Either each also records submissions and sends the outbox, or
    both run `--no-worker` and one `fr-bot worker` process does that for them (README, "Deploying
    several processes")."""
    workdir = tmp_path_factory.mktemp("bots")
    policy = workdir / "policy.yml"
    policy.write_text(TEST_POLICY)
    split = request.param == "answering processes and a worker"
    # Each process has its own port (BotProcess picks a free one) and its own log.
    processes = [
        BotProcess(shared_url, policy, stub.base_url, Path(workdir)).start(
            args=("--no-worker",) if split else ()
        )
        for _ in range(2)
    ]
    worker = (
        BackgroundProcess(
            shared_url,
            policy,
            stub.base_url,
            Path(workdir),
            command="worker",
            FRBOT_SCHEDULER_ENABLED="false",
        ).start()
        if split
        else None
    )
    yield processes
    for process in processes:
        code = process.stop()
        assert code == 0, f"bot did not exit cleanly ({code}):\n{process.log()}"
        assert "Traceback" not in process.log(), process.log()
        # In the split deployment only the worker records and sends: without it nothing would arrive.
        assert split == ("--no-worker: submissions are recorded" in process.log()), process.log()
    if worker is not None:
        assert worker.stop() == 0, worker.log()
        assert "Traceback" not in worker.log(), worker.log()


class RoundRobin:
    """Sends each request to the next process in turn, like a load balancer with no session affinity."""

    def __init__(self, bots: list[BotProcess], stub: SlackStub) -> None:
        self.drivers = [SlackDriver(bot.url, SIGNING_SECRET, stub=stub) for bot in bots]
        self._next = itertools.cycle(self.drivers)
        self._lock = threading.Lock()

    def next(self) -> SlackDriver:
        with self._lock:
            return next(self._next)


@pytest.fixture
def balancer(bots: list[BotProcess], stub: SlackStub) -> Iterator[RoundRobin]:
    stub.clear()
    stub.violations.clear()
    yield RoundRobin(bots, stub)
    stub.assert_no_violations()


def submit_request(balancer: RoundRobin, stub: SlackStub, officer: str) -> str:
    """Open the form through one process, submit it through the other; returns the reference."""
    trigger = stub.issue_trigger_id(officer)
    status, _ = balancer.next().slash_command("/fr-request", "", officer, trigger_id=trigger)
    assert status == 200
    opened = stub.wait_for(
        lambda c: c.method == "views.open" and c.ok and c.args.get("trigger_id") == trigger
    )
    view = opened.response["view"]
    assert view["callback_id"] == views.REQUEST_CALLBACK
    status, body = balancer.next().view_submission(officer, view, slack_state(valid_form_values()))
    assert status == 200 and body["response_action"] == "update", body
    return reference_of(outcome_of(stub, view, body))


def open_decision(
    driver: SlackDriver, stub: SlackStub, user: str, action: str, message: dict[str, Any]
) -> dict[str, Any]:
    stub.clear()
    status, _ = driver.block_action(user, action, message=message)
    assert status == 200
    opened = stub.wait_for("views.open")
    assert opened.ok, opened.describe()
    return opened.response["view"]


def decision_state(view: dict[str, Any], **fields: str) -> dict[str, Any]:
    from bot import forms

    return {block_id: {forms.ACTION_ID: _entry(view, block_id, value)} for block_id, value in fields.items()}


def wait_outbox_drained(url: str, timeout: float = 20.0) -> None:
    """Both dispatchers have sent everything owed (nothing pending in the shared outbox)."""
    engine = make_engine(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                left = conn.scalar(
                    select(func.count())
                    .select_from(OutboxMessage)
                    .where(OutboxMessage.status != OutboxStatus.SENT)
                )
            if left == 0:
                return
            time.sleep(0.1)
        raise AssertionError("the outbox did not drain")
    finally:
        engine.dispose()


def posts(stub: SlackStub, channel: str, needle: str) -> list[Any]:
    return [
        c
        for c in stub.calls_to("chat.postMessage")
        if c.ok and c.args.get("channel") == channel and needle in c.args.get("text", "")
    ]


def test_submitted_on_one_process_decided_on_the_other(
    balancer: RoundRobin, stub: SlackStub, shared_url: str
) -> None:
    officer = "UOFFMP1"
    reference = submit_request(balancer, stub, officer)
    message = reviewer_message(stub, "C0SUPER", reference)

    first, second = balancer.drivers
    view = open_decision(first, stub, "USUP1", views.APPROVE_ACTION, message)
    status, body = second.view_submission(
        "USUP1", view, decision_state(view, rationale="Necessary: no other route to identify the suspect.")
    )
    assert status == 200 and body["response_action"] == "update", body

    stub.wait_for(
        lambda c: c.method == "chat.update" and not buttons(stub.message(message["channel"], message["ts"]))
    )
    assert "Approved" in json.dumps(stub.message(message["channel"], message["ts"])["blocks"])
    wait_outbox_drained(shared_url)
    assert len(posts(stub, officer, "approved")) == 1


def test_same_stage_decided_through_both_processes_at_once_has_one_outcome(
    balancer: RoundRobin, stub: SlackStub, shared_url: str
) -> None:
    officer = "UOFFMP2"
    reference = submit_request(balancer, stub, officer)
    message = reviewer_message(stub, "C0SUPER", reference)
    first, second = balancer.drivers
    approve_view = open_decision(first, stub, "USUP1", views.APPROVE_ACTION, message)
    reject_view = open_decision(second, stub, "USUP2", views.REJECT_ACTION, message)
    stub.clear()

    barrier = threading.Barrier(2)
    answers: dict[str, tuple[int, Any]] = {}

    def submit(driver: SlackDriver, user: str, view: dict[str, Any], state: dict[str, Any]) -> None:
        barrier.wait()
        answers[user] = driver.view_submission(user, view, state)

    threads = [
        threading.Thread(
            target=submit,
            args=(
                first,
                "USUP1",
                approve_view,
                decision_state(approve_view, rationale="Serious, and no alternative."),
            ),
        ),
        threading.Thread(
            target=submit,
            args=(
                second,
                "USUP2",
                reject_view,
                decision_state(
                    reject_view,
                    rationale="CCTV enquiries with neighbours are not finished.",
                    reason_code="alternatives_not_exhausted",
                ),
            ),
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert {user: status for user, (status, _) in answers.items()} == {"USUP1": 200, "USUP2": 200}
    assert all("Decision received" in json.dumps(answer) for _, answer in answers.values())
    # Each is recorded just after its answer, by whichever process: one outcome, one refusal, each shown
    # in its reviewer's modal.
    titles = sorted(view_sent(stub, view["id"])["title"]["text"] for view in (approve_view, reject_view))
    assert titles == ["Decision recorded", "Not recorded"], titles

    engine = make_engine(shared_url)
    try:
        with engine.connect() as conn:
            request_id, status = conn.execute(
                select(FrRequest.id, FrRequest.status).where(FrRequest.reference == reference)
            ).one()
            outcomes = conn.execute(
                select(Decision.approver_id, Decision.outcome).where(Decision.request_id == request_id)
            ).all()
    finally:
        engine.dispose()
    assert len(outcomes) == 1, outcomes
    ((winner, outcome),) = outcomes
    assert status == {"approve": "approved", "reject": "rejected"}[outcome]

    wait_outbox_drained(shared_url)
    told = [
        c.args["text"] for c in stub.calls_to("chat.postMessage") if c.ok and c.args.get("channel") == officer
    ]
    assert len(told) == 1 and status in told[0], told
    settled = stub.message(message["channel"], message["ts"])
    assert buttons(settled) == [] and winner in json.dumps(settled["blocks"])


def test_every_message_owed_is_sent_once(balancer: RoundRobin, stub: SlackStub, shared_url: str) -> None:
    officers = [f"UOFFMP3{n}" for n in range(8)]
    references = [submit_request(balancer, stub, officer) for officer in officers]
    wait_outbox_drained(shared_url)
    for officer, reference in zip(officers, references, strict=True):
        assert len(posts(stub, "C0SUPER", reference)) == 1, reference
        assert len(posts(stub, officer, reference)) == 1, reference

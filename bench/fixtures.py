"""What the benchmarks run the bot's code with: the tests' policy and approver groups (tests/conftest.py),
and the workflow the bot builds from them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine

from bot.approvers import ApproverDirectory, StaticGroupSource
from bot.clock import utcnow
from bot.policy import LoadedPolicy, parse_policy
from bot.workflow import OutboxWake, Workflow, no_outbox
from storage.db import make_session_factory
from tests.conftest import GROUPS, TEST_POLICY


def bench_policy() -> LoadedPolicy:
    return parse_policy(TEST_POLICY, "bench-policy.yml")


def bench_workflow(
    engine: Engine, clock: Callable[[], datetime] = utcnow, on_outbox: OutboxWake = no_outbox
) -> Workflow:
    """A workflow on its own session factory of `engine`; its policy is `workflow.loaded`. `on_outbox`:
    told of the Slack messages each commit queued (the dispatcher's `wake` in the bot)."""
    directory = ApproverDirectory(StaticGroupSource({k: set(v) for k, v in GROUPS.items()}))
    return Workflow(make_session_factory(engine), bench_policy(), directory, clock=clock, on_outbox=on_outbox)

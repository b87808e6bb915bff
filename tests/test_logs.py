"""bot/logs.py: the logging every long-running process sets up before it serves."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk.web import base_client

from bot import logs, views
from bot.policy import LoadedPolicy
from tests.slackstub import SlackStub


class CountedView(dict[str, Any]):
    """A view that counts how often it is turned into text (sending it as JSON reads its items instead)."""

    reprs = 0

    def __repr__(self) -> str:
        type(self).reprs += 1
        return super().__repr__()


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root, client_log = logging.getLogger(), logging.getLogger(base_client.__name__)
    handlers, root_level, client_level = root.handlers[:], root.level, client_log.level
    yield
    root.handlers[:] = handlers
    root.setLevel(root_level)
    client_log.setLevel(client_level)


@pytest.mark.usefixtures("restored_logging")
@pytest.mark.parametrize(("level", "formatted"), [("INFO", False), ("DEBUG", True)])
def test_a_slack_call_is_written_out_for_the_log_only_at_debug(
    level: str, formatted: bool, policy: LoadedPolicy
) -> None:
    """slack_sdk formats each request (a whole modal or message) for a debug line unless its logger's own
    level says not to: the 17-field form written out for nothing on every modal the bot opened."""
    logs.configure(level, [])
    CountedView.reprs = 0
    view = CountedView(views.request_modal(policy.policy))
    with SlackStub() as stub:
        opened = stub.client().views_open(trigger_id=stub.issue_trigger_id(), view=view)
        assert opened["ok"]
        stub.assert_no_violations()
    assert (CountedView.reprs > 0) is formatted

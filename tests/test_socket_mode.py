"""Socket Mode with the real app: an envelope is acknowledged when its listener returns, before the Slack
calls that follow it (handlers/after_answer.py), as in HTTP mode."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from slack_sdk import WebClient
from slack_sdk.socket_mode.request import SocketModeRequest

from bot.app import create_app
from bot.policy import LoadedPolicy
from bot.server import CheckedSocketModeHandler
from bot.services import build_services
from tests.botprocess import BOT_TOKEN
from tests.slackstub import SlackStub


def test_an_envelope_is_acknowledged_before_the_modal_it_opens(
    database_url: str, policy: LoadedPolicy, stub: SlackStub
) -> None:
    services = build_services(database_url, policy, WebClient(token=BOT_TOKEN, base_url=stub.base_url))
    listeners = ThreadPoolExecutor(max_workers=4)
    app = create_app(services, signing_secret=None, verify_token=False, listener_executor=listeners)
    handler = CheckedSocketModeHandler(app, "xapp-1-test")
    acknowledged: list[str] = []
    socket = SimpleNamespace(
        send_socket_mode_response=lambda r: acknowledged.append(r.envelope_id),
        logger=logging.getLogger("socket-mode-test"),
    )
    command: dict[str, Any] = {
        "team_id": "T0TEST",
        "channel_id": "C0GENERAL",
        "user_id": "UOFFICER1",
        "command": "/fr-request",
        "text": "",
        "api_app_id": "A0TEST",
        "trigger_id": stub.issue_trigger_id("UOFFICER1"),
    }
    # Bolt checks the token with auth.test on the first request (done at start-up when token verification
    # is on, as in `fr-bot run`): a help command does that before the Slack calls slow down.
    handler.handle(socket, SocketModeRequest("slash_commands", "env-0", {**command, "text": "help"}))
    command["trigger_id"] = stub.issue_trigger_id("UOFFICER1")
    stub.clear()
    stub.latency = 2.0  # every Slack call takes 2 s
    try:
        handler.handle(socket, SocketModeRequest(type="slash_commands", envelope_id="env-1", payload=command))
        assert acknowledged == ["env-0", "env-1"]
        assert stub.calls_to("views.open") == [], "the acknowledgement waited for views.open"
        opened = stub.wait_for("views.open", timeout=30)
        assert opened.ok and opened.args["view"]["callback_id"] == "fr_request_submit"
    finally:
        stub.latency = 0.0
        listeners.shutdown(wait=True)
        services.close()

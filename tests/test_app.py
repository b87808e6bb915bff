"""The Bolt app's wiring: which listener a request reaches, and in what order Bolt asks them."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from slack_bolt import App, BoltRequest, BoltResponse
from slack_sdk import WebClient

from bot import views
from bot.app import MOST_FREQUENT_FIRST, create_app
from bot.policy import LoadedPolicy
from bot.services import build_services
from handlers.commands import COMMAND
from tests.botprocess import BOT_TOKEN

IDENTITY = {"ok": True, "team_id": "T0TEST", "user_id": "UBOT", "bot_id": "BBOT", "team": "t", "user": "b"}
USER = {"id": "U1", "team_id": "T0TEST"}


def _payloads() -> dict[str, dict[str, Any]]:
    """One request of every kind the app listens for, named; the ids are read off bot/views.py, so a new
    button or modal is included without being listed here."""
    names = [name for name in dir(views) if name.endswith(("_ACTION", "_CALLBACK"))]
    payloads: dict[str, dict[str, Any]] = {
        "command": {"command": COMMAND, "user_id": "U1", "trigger_id": "1.2.3", "text": ""},
        "app_home_opened": {
            "type": "event_callback",
            "event_id": "Ev1",
            "event": {"type": "app_home_opened", "user": "U1", "tab": "home"},
        },
        "message_metadata_posted": {
            "type": "event_callback",
            "event_id": "Ev2",
            "event": {"type": "message_metadata_posted", "channel_id": "C1", "message_ts": "1.2"},
        },
    }
    for name in names:
        value = getattr(views, name)
        if name.endswith("_ACTION"):
            action = {"action_id": value, "block_id": "b", "type": "button", "value": "1:0"}
            payloads[name] = {"type": "block_actions", "user": USER, "actions": [action]}
        else:
            view = {"id": "V1", "type": "modal", "callback_id": value, "state": {"values": {}}}
            payloads[name] = {"type": "view_submission", "user": USER, "view": view}
    return payloads


@pytest.fixture
def app(database_url: str, policy: LoadedPolicy) -> Iterator[App]:
    services = build_services(
        database_url, policy, WebClient(token=BOT_TOKEN, base_url="http://127.0.0.1:9/")
    )
    listeners = ThreadPoolExecutor(max_workers=1)
    try:
        yield create_app(services, signing_secret=None, listener_executor=listeners, identity=IDENTITY)
    finally:
        listeners.shutdown(wait=True)
        services.close()


def _matching(app: App, payload: dict[str, Any]) -> list[str]:
    request = BoltRequest(body=payload, mode="socket_mode")
    return [
        listener.ack_function.__name__
        for listener in app._listeners
        if listener.matches(req=request, resp=BoltResponse(status=200))
    ]


def test_every_request_reaches_one_listener_and_every_listener_is_reached(app: App) -> None:
    # Bolt runs the first listener that matches: with one match each, the order of the listeners
    # (bot/app.py, _most_frequent_first) changes how fast a request finds its listener, never which.
    reached: set[str] = set()
    for name, payload in _payloads().items():
        matching = _matching(app, payload)
        assert len(matching) == 1, f"{name} matches {matching}"
        reached.update(matching)
    assert reached == {listener.ack_function.__name__ for listener in app._listeners}


def test_the_most_frequent_requests_are_matched_first(app: App) -> None:
    first = [listener.ack_function.__name__ for listener in app._listeners[: len(MOST_FREQUENT_FIRST)]]
    assert first == list(MOST_FREQUENT_FIRST)
    assert _matching(app, _payloads()["REQUEST_CALLBACK"]) == ["request_submitted"]

"""Slack listeners, one module per kind, each with a `register(app, services)`.

Listeners are thin: parse the payload, call one workflow function, render its result.
"""

from __future__ import annotations

from slack_bolt import App

from bot.services import Services
from handlers import actions, commands, events, views


def register_all(app: App, services: Services) -> None:
    commands.register(app, services)
    actions.register(app, services)
    views.register(app, services)
    events.register(app, services)

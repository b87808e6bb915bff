"""Slack listeners, one module per kind, each with a `register(app, services[, after_answer])`.

Listeners are thin: parse the payload, call one workflow function, render its result. Whatever need not
come before Slack's answer is handed to `AfterAnswer` (handlers/after_answer.py).
"""

from __future__ import annotations

from slack_bolt import App

from bot.services import Services
from handlers import actions, commands, events, views
from handlers.after_answer import AfterAnswer


def register_all(app: App, services: Services, after_answer: AfterAnswer) -> None:
    commands.register(app, services, after_answer)
    actions.register(app, services, after_answer)
    views.register(app, services, after_answer)
    events.register(app, services, after_answer)

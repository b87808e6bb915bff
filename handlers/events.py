"""Events: App Home is rendered fresh from the database whenever someone opens it, and Slack's reports of
where the bot's own posts landed are recorded against the outbox (bot/copies.py)."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import App
from slack_sdk.errors import SlackApiError

from bot.copies import Landing, LandingOutcome, landing_from_event, record_landing
from bot.services import Services
from handlers.after_answer import AfterAnswer
from storage.db import DatabaseUnavailable

log = logging.getLogger(__name__)


def register(app: App, services: Services, after_answer: AfterAnswer) -> None:
    def publish_home(event: dict[str, Any]) -> None:
        try:
            services.home.opened(event["user"])
        except (SlackApiError, DatabaseUnavailable) as exc:
            log.warning("could not publish App Home for %s: %s", event["user"], exc)

    @app.event("app_home_opened")
    def home_opened(event: dict[str, Any]) -> None:
        # Bolt acknowledges the event when this returns; Slack's retries would only republish the same view.
        if event.get("tab", "home") == "home" and event.get("user"):
            after_answer("event_callback", publish_home, event)

    def record(landing: Landing) -> None:
        if services.dispatcher.note_landing(landing):
            return  # its send is under way here: recorded with the call's outcome
        try:
            outcome = record_landing(
                services.db, landing, services.workflow.clock, services.dispatcher.report_marks
            )
        except DatabaseUnavailable as exc:
            log.warning("could not record where outbox row %s landed: %s", landing.outbox_id, exc)
            return
        if outcome in (LandingOutcome.RECORDED, LandingOutcome.DUPLICATE):
            # A post adopted from the report frees its request's next row; a second copy is retired now.
            services.dispatcher.wake()

    @app.event("message_metadata_posted")
    def post_landed(body: dict[str, Any], event: dict[str, Any]) -> None:
        # Also runs for a retried delivery this process never saw: recording a landing twice is harmless.
        landing = landing_from_event(body, event)
        if landing is not None:
            after_answer("event_callback", record, landing)

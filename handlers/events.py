"""Events: App Home is rendered fresh from the database whenever someone opens it, and Slack's reports of
where the bot's own posts landed are recorded against the outbox (bot/copies.py)."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import App
from slack_sdk.errors import SlackApiError

from bot.copies import LandingOutcome, landing_from_event, record_landing
from bot.services import Services
from storage.db import DatabaseUnavailable

log = logging.getLogger(__name__)


def register(app: App, services: Services) -> None:
    @app.event("app_home_opened")
    def home_opened(event: dict[str, Any]) -> None:
        # Bolt acknowledges events before this runs; Slack retries would only republish the same view.
        if event.get("tab", "home") != "home" or not event.get("user"):
            return
        try:
            services.home.opened(event["user"])
        except (SlackApiError, DatabaseUnavailable) as exc:
            log.warning("could not publish App Home for %s: %s", event["user"], exc)

    @app.event("message_metadata_posted")
    def post_landed(body: dict[str, Any], event: dict[str, Any]) -> None:
        # Also runs for a retried delivery this process never saw: recording a landing twice is harmless.
        landing = landing_from_event(body, event)
        if landing is None:
            return
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

"""Events: App Home is rendered fresh from the database whenever someone opens it."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import App
from slack_sdk.errors import SlackApiError

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

"""`/fr-request`: open the request form (or show help)."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import views
from bot.services import Services

log = logging.getLogger(__name__)
COMMAND = "/fr-request"


def register(app: App, services: Services) -> None:
    policy = services.policy.policy

    @app.command(COMMAND)
    def fr_request(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        argument = str(body.get("text") or "").strip().lower()
        if argument in ("help", "?"):
            ack(text=views.HELP_TEXT)
            return
        if argument:
            ack(
                text=f"`{COMMAND}` takes no options except `help`. "
                f"Type `{COMMAND}` on its own to start a request."
            )
            return
        ack()  # first: the trigger_id is only good for 3 seconds from Slack's side
        try:
            client.views_open(trigger_id=body["trigger_id"], view=views.request_modal(policy))
        except SlackApiError as exc:
            error = exc.response.get("error")
            log.warning("could not open the request form: %s", error)
            _tell(client, body, "Slack did not open the form in time. Please type the command again.")


def _tell(client: WebClient, body: dict[str, Any], text: str) -> None:
    try:
        client.chat_postEphemeral(channel=body["channel_id"], user=body["user_id"], text=text)
    except (SlackApiError, KeyError) as exc:
        log.warning("could not tell the user: %s", exc)

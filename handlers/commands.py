"""`/fr-request [help | status FR-… | list]`."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot import views
from bot.services import Services
from bot.workflow import Refusal
from handlers.replies import open_view
from storage.db import DatabaseUnavailable

log = logging.getLogger(__name__)
COMMAND = "/fr-request"
USAGE = (
    f"`{COMMAND}` starts a request. `{COMMAND} status FR-2026-00042` shows one request's timeline, "
    f"`{COMMAND} list` your recent requests, `{COMMAND} help` how it works."
)
UNAVAILABLE = "The bot cannot reach its database just now. Nothing was changed; try again shortly."


def register(app: App, services: Services) -> None:
    workflow = services.workflow
    policy = services.policy.policy

    @app.command(COMMAND)
    def fr_request(ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        words = str(body.get("text") or "").split()
        verb = words[0].lower() if words else ""
        if verb in ("help", "?"):
            ack(text=views.HELP_TEXT + "\n" + USAGE)
            return
        if verb == "":
            ack()  # first: the trigger_id is only good for 3 seconds
            open_view(client, body, views.request_modal(policy))
            return
        if verb == "status" and len(words) == 2:
            ack()
            try:
                result = workflow.view_request(words[1].upper(), body["user_id"], "status_command")
            except DatabaseUnavailable:
                respond(text=UNAVAILABLE, response_type="ephemeral")
                return
            if isinstance(result, Refusal):
                respond(text=result.message, response_type="ephemeral")
                return
            blocks = views.request_details(result.request, result.events, policy, result.post_use)
            respond(text=f"FR request {result.request.reference}", blocks=blocks, response_type="ephemeral")
            return
        if verb == "list" and len(words) == 1:
            ack()
            try:
                mine = workflow.my_requests(body["user_id"])
            except DatabaseUnavailable:
                respond(text=UNAVAILABLE, response_type="ephemeral")
                return
            respond(
                text="Your FR requests", blocks=views.requests_list(mine, policy), response_type="ephemeral"
            )
            return
        ack(text=USAGE)

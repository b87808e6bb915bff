"""`/fr-request [help | status FR-… | list]`."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot import views
from bot.services import Services
from bot.workflow import Refusal
from handlers.after_answer import AfterAnswer
from handlers.replies import open_view
from storage.db import DatabaseUnavailable

log = logging.getLogger(__name__)
COMMAND = "/fr-request"
USAGE = (
    f"`{COMMAND}` starts a request. `{COMMAND} status FR-2026-00042` shows one request's timeline, "
    f"`{COMMAND} list` your recent requests, `{COMMAND} help` how it works."
)
UNAVAILABLE = "The bot cannot reach its database just now. Nothing was changed; try again shortly."


def register(app: App, services: Services, after_answer: AfterAnswer) -> None:
    workflow = services.workflow
    policy = services.policy.policy
    # The policy is fixed for the life of the process, and so is the blank form: built once, not on the
    # thread that answers each command (Slack only reads it; nothing here changes it).
    blank_form = views.request_modal(policy)

    def show_status(reference: str, user_id: str, respond: Respond) -> None:
        try:
            result = workflow.view_request(reference, user_id, "status_command")
        except DatabaseUnavailable:
            respond(text=UNAVAILABLE, response_type="ephemeral")
            return
        if isinstance(result, Refusal):
            respond(text=result.message, response_type="ephemeral")
            return
        blocks = views.request_details(
            result.request, result.events, policy, result.post_use, workflow.clock()
        )
        respond(text=f"FR request {result.request.reference}", blocks=blocks, response_type="ephemeral")

    def show_list(user_id: str, respond: Respond) -> None:
        try:
            mine = workflow.my_requests(user_id)
        except DatabaseUnavailable:
            respond(text=UNAVAILABLE, response_type="ephemeral")
            return
        respond(
            text="Your FR requests",
            blocks=views.requests_list(mine, policy, workflow.clock()),
            response_type="ephemeral",
        )

    @app.command(COMMAND)
    def fr_request(ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        words = str(body.get("text") or "").split()
        verb = words[0].lower() if words else ""
        if verb in ("help", "?"):
            ack(text=views.HELP_TEXT + "\n" + USAGE)
        elif verb == "":
            ack()  # the trigger_id is only good for 3 seconds: the modal opens just after the answer
            after_answer("command", open_view, client, body, blank_form)
        elif verb == "status" and len(words) == 2:
            ack()
            after_answer("command", show_status, words[1].upper(), body["user_id"], respond)
        elif verb == "list" and len(words) == 1:
            ack()
            after_answer("command", show_list, body["user_id"], respond)
        else:
            ack(text=USAGE)

"""Reviewer buttons on a request message: check who clicked, then open the matching modal."""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt import Ack, App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import views
from bot.copies import note_clicked_message
from bot.services import Services
from bot.workflow import Refusal
from storage.db import DatabaseUnavailable

log = logging.getLogger(__name__)
BUTTON_VALUE = re.compile(r"^(\d{1,18}):(\d{1,3})$")


def register(app: App, services: Services) -> None:
    workflow = services.workflow
    policy = services.policy.policy

    @app.action(re.compile(f"^({'|'.join(views.REVIEW_ACTIONS)})$"))
    def review_button(ack: Ack, body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
        ack()
        user_id = body["user"]["id"]
        kind = views.REVIEW_ACTIONS[action["action_id"]]
        match = BUTTON_VALUE.match(str(action.get("value", "")))
        if match is None:
            _ephemeral(client, body, user_id, "That button is not valid any more.")
            return
        request_id, position = int(match[1]), int(match[2])
        container = body.get("container") or {}
        try:
            # A click on a stray duplicate of the reviewer message retires that copy (bot/copies.py).
            if note_clicked_message(
                services.db, (request_id, position), container.get("channel_id"), container.get("message_ts")
            ):
                services.dispatcher.wake()
            refusal = workflow.authorise(request_id, position, user_id, kind)
            request = workflow.load(request_id) if refusal is None else None
        except DatabaseUnavailable:
            _ephemeral(
                client,
                body,
                user_id,
                "The bot cannot reach its database just now. Nothing was changed; try again shortly.",
            )
            return
        if refusal is not None or request is None:
            _ephemeral(
                client, body, user_id, (refusal or Refusal("gone", "That request no longer exists.")).message
            )
            return
        ctx = views.ReviewContext(
            request_id=request_id,
            position=position,
            action=kind,
            channel_id=container.get("channel_id"),
            message_ts=container.get("message_ts"),
        )
        view = (
            views.info_modal(request, policy, ctx)
            if kind == "request_info"
            else views.decision_modal(request, policy, ctx)
        )
        try:
            client.views_open(trigger_id=body["trigger_id"], view=view)
        except SlackApiError as exc:
            log.warning("could not open the %s form: %s", kind, exc.response.get("error"))
            _ephemeral(client, body, user_id, "Slack did not open the form in time. Please click again.")


def _ephemeral(client: WebClient, body: dict[str, Any], user_id: str, text: str) -> None:
    channel = (body.get("container") or {}).get("channel_id") or (body.get("channel") or {}).get("id")
    if not channel:
        return
    try:
        client.chat_postEphemeral(channel=channel, user=user_id, text=text)
    except SlackApiError as exc:
        log.warning("could not post an ephemeral reply: %s", exc.response.get("error"))

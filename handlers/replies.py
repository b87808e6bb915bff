"""Telling the person who clicked something, wherever they clicked it."""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import views
from handlers.after_answer import sent_again

log = logging.getLogger(__name__)


def tell(client: WebClient, body: dict[str, Any], text: str, title: str = "FR requests") -> None:
    """Ephemeral in the channel or DM clicked in; a small modal when the click came from App Home (or a
    modal). When neither can be shown (a trigger_id spent or expired, a channel the bot is not in, a DM
    between people), a message in the app's DM with the user: a click must not go unanswered."""
    user_id = (body.get("user") or {}).get("id") or body.get("user_id")
    container = body.get("container") or {}
    channel = container.get("channel_id") or (body.get("channel") or {}).get("id") or body.get("channel_id")
    if container.get("type") == "view" and body.get("trigger_id"):
        try:
            client.views_open(trigger_id=body["trigger_id"], view=views.notice_modal(title, views.esc(text)))
            return
        except SlackApiError as exc:
            log.warning("could not show a notice: %s; sending it as a DM", exc.response.get("error"))
    if channel and user_id:
        try:
            client.chat_postEphemeral(channel=channel, user=user_id, text=text)
            return
        except SlackApiError as exc:  # a channel the bot is not in, or a DM between people
            log.warning("could not reply in %s: %s; sending it as a DM", channel, exc.response.get("error"))
    if user_id:
        try:
            client.chat_postMessage(channel=user_id, text=text)
        except SlackApiError as exc:
            log.warning("could not tell the user: %s", exc.response.get("error"))


def open_view(client: WebClient, body: dict[str, Any], view: dict[str, Any]) -> None:
    try:
        client.views_open(trigger_id=body["trigger_id"], view=view)
    except SlackApiError as exc:
        error = exc.response.get("error")
        if sent_again() and error == "exchanged_trigger_id":  # its first run, in a process that died, used it
            log.info("a form not opened again after a follow-up process died: it was opened before")
            return
        log.warning("could not open a form: %s", exc.response.get("error"))
        tell(client, {**body, "trigger_id": None}, "Slack did not open the form in time. Please try again.")

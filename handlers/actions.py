"""Buttons: reviewers' decisions and comments, officers' withdraw / answer / outcome / re-request, App Home.

Every listener acks first; after the answer it checks who clicked, then opens the matching modal or tells
them why not.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt import Ack, App
from slack_sdk import WebClient

from bot import views
from bot.copies import note_clicked_message
from bot.services import Services
from bot.workflow import Refusal
from handlers.after_answer import AfterAnswer
from handlers.replies import open_view, tell
from storage.db import DatabaseUnavailable
from storage.models import FrRequest, RequestStatus

log = logging.getLogger(__name__)
STAGE_VALUE = re.compile(r"^(\d{1,18}):(\d{1,3})$")
ID_VALUE = re.compile(r"^\d{1,18}$")
UNAVAILABLE = "The bot cannot reach its database just now. Nothing was changed; try again shortly."
STALE = "That button is not valid any more."


def _user(body: dict[str, Any]) -> str:
    return str(body["user"]["id"])


def _id(action: dict[str, Any]) -> int | None:
    value = str(action.get("value", ""))
    return int(value) if ID_VALUE.match(value) else None


def register(app: App, services: Services, after_answer: AfterAnswer) -> None:
    workflow = services.workflow
    policy = services.policy.policy

    def guarded(listener: Any) -> Any:
        """Ack at once, then run the listener after the answer; a database outage becomes a polite answer."""

        def work(body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
            try:
                listener(body, action, client)
            except DatabaseUnavailable:
                tell(client, body, UNAVAILABLE)

        def run(ack: Ack, body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
            ack()
            after_answer("block_actions", work, body, action, client)

        run.__name__ = listener.__name__
        return run

    @app.action(re.compile(f"^({'|'.join([*views.REVIEW_ACTIONS, views.COMMENT_ACTION])})$"))
    @guarded
    def review_button(body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
        user_id = _user(body)
        match = STAGE_VALUE.match(str(action.get("value", "")))
        if match is None:
            tell(client, body, STALE)
            return
        request_id, position = int(match[1]), int(match[2])
        container = body.get("container") or {}

        def note_copy(request: FrRequest | Refusal | None) -> None:
            # A click on a stray duplicate of the reviewer message retires that copy (bot/copies.py).
            stages = request.stages if isinstance(request, FrRequest) else []
            stage = stages[position] if position < len(stages) else None
            where = (container.get("channel_id"), container.get("message_ts"))
            if note_clicked_message(services.db, (request_id, position), *where, stage=stage):
                services.dispatcher.wake()

        if action["action_id"] == views.COMMENT_ACTION:
            request = workflow.load(request_id)
            note_copy(request)
            if request is None or user_id == request.requester_id or not workflow.may_view(request, user_id):
                tell(client, body, "Only this request's reviewers and leads can comment on it.")
                return
            open_view(client, body, views.comment_modal(request, policy, workflow.clock()))
            return
        kind = views.REVIEW_ACTIONS[action["action_id"]]
        request = workflow.authorised_request(request_id, position, user_id, kind)
        note_copy(request)
        if isinstance(request, Refusal):
            tell(client, body, request.message)
            return
        ctx = views.ReviewContext(
            request_id=request_id,
            position=position,
            action=kind,
            channel_id=container.get("channel_id"),
            message_ts=container.get("message_ts"),
        )
        if kind == "request_info":
            open_view(client, body, views.info_modal(request, policy, ctx, workflow.clock()))
        else:
            open_view(client, body, views.decision_modal(request, policy, ctx, workflow.clock()))

    @app.action(views.WITHDRAW_ACTION)
    @guarded
    def withdraw(body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
        request_id = _id(action)
        result = (
            workflow.withdraw(request_id, _user(body)) if request_id is not None else Refusal("bad", STALE)
        )
        if isinstance(result, Refusal):
            tell(client, body, result.message)

    @app.action(views.ANSWER_ACTION)
    @guarded
    def answer(body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
        info_id = _id(action)
        found = workflow.question(info_id) if info_id is not None else None
        if found is None:
            tell(client, body, STALE)
            return
        request, info = found
        if request.requester_id != _user(body):
            tell(client, body, "Only the officer who made the request can answer.")
        elif info.answer is not None:
            tell(client, body, "You have already answered this question.")
        elif request.status != RequestStatus.PENDING:
            tell(client, body, f"{request.reference} is already {request.status}.")
        else:
            open_view(client, body, views.answer_modal(request, info, policy, workflow.clock()))

    @app.action(views.RECORD_USE_ACTION)
    @guarded
    def record_use(body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
        request_id = _id(action)
        request = workflow.load(request_id) if request_id is not None else None
        if request is None or request.requester_id != _user(body):
            tell(client, body, "Only the officer who made the request records its use.")
        elif request.status != RequestStatus.APPROVED or request.closed_at is not None:
            tell(client, body, f"There is no open approval to record for {request.reference}.")
        else:
            open_view(client, body, views.post_use_modal(request, policy))

    @app.action(views.REREQUEST_ACTION)
    @guarded
    def rerequest(body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
        request = workflow.start_again_from(_id(action), _user(body))
        if isinstance(request, Refusal):
            tell(client, body, request.message)
            return
        metadata = views.ItemContext(previous_request_id=request.id).model_dump_json()
        open_view(client, body, views.request_modal(policy, views.initial_values(request), metadata))

    @app.action(views.DETAILS_ACTION)
    @guarded
    def details(body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
        request_id = _id(action)
        surface = "app_home" if (body.get("container") or {}).get("type") == "view" else "message"
        result = workflow.view_request(request_id, _user(body), surface) if request_id is not None else None
        if result is None or isinstance(result, Refusal):
            tell(client, body, result.message if result else STALE)
            return
        open_view(
            client,
            body,
            views.details_modal(result.request, result.events, policy, result.post_use, workflow.clock()),
        )

    @app.action(views.NEW_REQUEST_ACTION)
    @guarded
    def new_request(body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
        open_view(client, body, views.request_modal(policy))

    @app.action(views.DELEGATE_ACTION)
    @guarded
    def delegate(body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
        today = workflow.clock().astimezone(policy.zone).date()
        open_view(client, body, views.delegation_modal(today.isoformat()))

    @app.action(views.REVOKE_ACTION)
    @guarded
    def revoke(body: dict[str, Any], action: dict[str, Any], client: WebClient) -> None:
        delegation_id = _id(action)
        result = workflow.revoke_delegation(delegation_id, _user(body)) if delegation_id else None
        if result is None or isinstance(result, Refusal):
            tell(client, body, result.message if result else STALE)

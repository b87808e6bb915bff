"""Modal submissions: the officer's request, a reviewer's decision, a reviewer's question.

An officer's request is answered as soon as it passes its checks: the answer ("being saved") needs nothing
from the database, so Slack gets it within the time of a bare app's ack, and the form is stored just after
(`store_request`). If it cannot be stored, the modal is put back with the officer's answers and the reason.

A reviewer's decision is answered the same way ("received"; `record_decision`): recording it takes the
request's row lock and the audit chain's head, which under load can wait on other writers, and Slack's
3 seconds must not. Its outcome (recorded, refused as a duplicate, not allowed) is queued in the same
transaction and replaces the answer a moment later; if it cannot be recorded, the form comes back with the
reviewer's answers.

A question and the small everyday modals save before they acknowledge: their answer is the outcome, which
only the database can tell, and a database outage is shown in the modal instead of being lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from slack_bolt import Ack, App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import forms, views
from bot.services import Services
from bot.workflow import MODAL_UPDATE_DELAY, Refusal, Submission
from handlers.after_answer import AfterAnswer
from storage.db import DatabaseUnavailable

log = logging.getLogger(__name__)
NOT_SAVED = (
    "Not saved: the bot cannot reach its database just now. Your answers are kept; submit again in a minute."
)
NOT_STORED = (
    "Not saved: the bot could not store your request. Your answers are kept; submit again in a minute."
)
# Slack shows the answer's "being saved" view a moment after the answer; an update sent before that would
# be overwritten by it (the same wait as the "recorded" update's).
GIVE_BACK_DELAY_SECONDS = MODAL_UPDATE_DELAY.total_seconds()
DECISION_NOT_STORED = (
    "Not recorded: the bot could not record your decision. Your answers are kept; submit again in a minute."
)
DECISION_NOT_SAVED_CLOSED = views.not_recorded_text(
    "the bot could not save it just now. Please decide again from the request's message in a minute."
)
NOT_SAVED_CLOSED = (
    ":warning: Your FR request was *not saved*: the bot could not store it just now. Nothing was recorded "
    "and nobody was asked to review it. Please submit it again with `/fr-request` in a minute."
)


def register(app: App, services: Services, after_answer: AfterAnswer) -> None:
    register_everyday(app, services)
    workflow = services.workflow
    policy = services.policy.policy

    @app.view(views.REQUEST_CALLBACK)
    def request_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient) -> None:
        user_id = body["user"]["id"]
        raw = forms.read_state((view.get("state") or {}).get("values"))
        try:
            form = forms.check_request(policy, raw)
        except forms.FormErrors as exc:
            ack(response_action="errors", errors=exc.errors)
            after_answer("view_submission", _record_refusal, services, user_id, raw, exc.errors)
            return
        team_id = (body.get("team") or {}).get("id") or body["user"].get("team_id", "")
        ack(response_action="update", view=views.received_modal())
        # The modal's id is the submission key: the same modal stored twice is one receipt.
        submission = Submission(form, user_id, team_id, str(view["id"]), _item(view).previous_request_id)
        answered = AnsweredRequest(submission, raw, view.get("private_metadata") or "")
        after_answer("view_submission", store_request, services, client, answered)

    @app.view(views.DECISION_CALLBACK)
    def decision_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient) -> None:
        ctx = _context(view)
        if ctx is None or ctx.action not in ("approve", "reject"):
            ack(
                response_action="update",
                view=views.notice_modal("Not recorded", "This form is not valid any more."),
            )
            return
        fields = (forms.RATIONALE.block_id, forms.CONDITIONS.block_id, forms.REASON_CODE.block_id)
        raw = forms.read_fields((view.get("state") or {}).get("values"), fields)
        try:
            form = forms.check_decision(raw, ctx.action)
        except forms.FormErrors as exc:
            ack(response_action="errors", errors=exc.errors)
            return
        ack(response_action="update", view=views.decision_received_modal())
        title = str((view.get("title") or {}).get("text") or "Decision")
        answered = AnsweredDecision(ctx, body["user"]["id"], form, raw, str(view["id"]), title)
        after_answer("view_submission", record_decision, services, client, answered)

    @app.view(views.INFO_CALLBACK)
    def question_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        ctx = _context(view)
        if ctx is None or ctx.action != "request_info":
            ack(
                response_action="update",
                view=views.notice_modal("Not sent", "This form is not valid any more."),
            )
            return
        raw = forms.read_fields((view.get("state") or {}).get("values"), (forms.QUESTION.block_id,))
        try:
            question = forms.check_question(raw)
        except forms.FormErrors as exc:
            ack(response_action="errors", errors=exc.errors)
            return
        try:
            result = workflow.request_info(
                ctx.request_id, ctx.position, body["user"]["id"], question, str(view["id"])
            )
        except DatabaseUnavailable as exc:
            log.error("question not saved: %s", exc)
            ack(response_action="errors", errors={forms.QUESTION.block_id: NOT_SAVED})
            return
        if isinstance(result, Refusal):
            ack(response_action="update", view=views.notice_modal("Not sent", views.esc(result.message)))
            return
        ack(
            response_action="update",
            view=views.notice_modal(
                "Question sent",
                f":grey_question: Your question on *{result.reference}* is recorded and sent to the officer.",
            ),
        )


@dataclass(frozen=True)
class AnsweredRequest:
    """A checked request form, answered and not yet stored; its submission key is the modal's id."""

    submission: Submission
    raw: dict[str, str]  # the officer's answers as typed, to put back in the modal if it cannot be stored
    metadata: str  # the modal's private_metadata (ItemContext), kept when the modal is put back


def store_request(services: Services, client: WebClient, answered: AnsweredRequest) -> None:
    """Store an answered request form as a receipt; the intake records it as a request (bot/intake.py).

    If the database cannot take it, the officer gets the form back with their answers (or, if they closed
    the modal, a direct message), so nothing they typed is taken as saved when it is not.
    """
    submission = answered.submission
    try:
        receipt = services.workflow.receive(
            submission.form,
            submission.requester_id,
            submission.team_id,
            submission.submission_key,
            previous_request_id=submission.previous_request_id,
            view_id=submission.submission_key,
        )
    except DatabaseUnavailable as exc:
        log.error("request not saved: %s", exc)
        _give_back(services, client, answered)
        return
    except Exception as exc:  # a defect: the officer must not be left believing it is saved
        log.error("request not saved: %s", type(exc).__name__)  # the type only: errors can quote the form
        _give_back(services, client, answered, NOT_STORED)
        raise
    services.intake.received(receipt)


@dataclass(frozen=True)
class AnsweredDecision:
    """A reviewer's checked decision form, answered "received" and not yet recorded."""

    context: views.ReviewContext
    reviewer_id: str
    form: forms.DecisionForm
    raw: dict[str, str]  # the reviewer's answers as typed, to put back in the modal if it cannot be recorded
    view_id: str
    title: str  # the modal's title, which names the request


def record_decision(services: Services, client: WebClient, answered: AnsweredDecision) -> None:
    """Record an answered decision; the same transaction queues the modal's update with the outcome
    (`Workflow.decide`). If the database cannot take it, the reviewer gets the form back with their
    answers (or, if they closed the modal, a direct message), so it is never taken as recorded."""
    ctx = answered.context
    try:
        services.workflow.decide(
            ctx.request_id, ctx.position, answered.reviewer_id, ctx.action, answered.form, answered.view_id
        )
    except DatabaseUnavailable as exc:
        log.error("decision not saved: %s", exc)
        _give_back_decision(client, answered, NOT_SAVED)
    except Exception as exc:  # a defect: the reviewer must not be left believing it is recorded
        log.error("decision not saved: %s", type(exc).__name__)  # the type only: errors can quote the form
        _give_back_decision(client, answered, DECISION_NOT_STORED)
        raise


def _give_back_decision(client: WebClient, answered: AnsweredDecision, reason: str) -> None:
    time.sleep(GIVE_BACK_DELAY_SECONDS)
    form = views.decision_given_back(answered.context, answered.title, answered.raw, reason)
    _put_back(client, answered.view_id, form, answered.reviewer_id, DECISION_NOT_SAVED_CLOSED)


def _give_back(
    services: Services, client: WebClient, answered: AnsweredRequest, reason: str = NOT_SAVED
) -> None:
    time.sleep(GIVE_BACK_DELAY_SECONDS)
    form = views.request_modal(
        services.policy.policy, initial=answered.raw, metadata=answered.metadata, notice=reason
    )
    submission = answered.submission
    _put_back(client, submission.submission_key, form, submission.requester_id, NOT_SAVED_CLOSED)


def _put_back(client: WebClient, view_id: str, form: dict[str, Any], user_id: str, if_closed: str) -> None:
    """Show a form that was not saved again in its modal, or tell its author so if they closed it."""
    try:
        client.views_update(view_id=view_id, view=form)
        return
    except SlackApiError as exc:
        log.warning("could not give the form back: %s", exc.response.get("error"))
    try:
        client.chat_postMessage(channel=user_id, text=if_closed)
    except SlackApiError as exc:
        log.warning("could not tell the user their form was not saved: %s", exc.response.get("error"))


def _context(view: dict[str, Any]) -> views.ReviewContext | None:
    try:
        return views.ReviewContext.model_validate_json(view.get("private_metadata") or "")
    except ValidationError:
        return None


def _record_refusal(services: Services, user_id: str, raw: dict[str, str], errors: dict[str, str]) -> None:
    try:
        services.workflow.record_refused_submission(user_id, raw.get(forms.TOOL.block_id, ""), errors)
    except DatabaseUnavailable as exc:
        log.error("could not record a refused submission: %s", exc)


def _item(view: dict[str, Any]) -> views.ItemContext:
    try:
        return views.ItemContext.model_validate_json(view.get("private_metadata") or "{}")
    except ValidationError:
        return views.ItemContext()


def _state(view: dict[str, Any]) -> Any:
    return (view.get("state") or {}).get("values")


def _finish(ack: Ack, result: Any, title: str, text: str) -> None:
    """Close the modal with a confirmation, or show why the action was refused."""
    if isinstance(result, Refusal):
        ack(response_action="update", view=views.not_recorded_modal(result.message))
    else:
        ack(response_action="update", view=views.notice_modal(title, text))


def _small_modal(
    ack: Ack,
    view: dict[str, Any],
    block_ids: tuple[str, ...],
    check: Callable[[dict[str, str]], Any],
    target: object | None,
    save: Callable[[Any], Any],
    done: Callable[[Any], tuple[str, str]],
) -> None:
    """What every small modal does: check its fields, check what it acts on, save, then confirm or explain.

    `done` turns the checked value into the confirmation's title and text.
    """
    try:
        value = check(forms.read_fields(_state(view), block_ids))
    except forms.FormErrors as exc:
        ack(response_action="errors", errors=exc.errors)
        return
    if target is None:
        stale = views.notice_modal("Not recorded", "This form is not valid any more.")
        ack(response_action="update", view=stale)
        return
    try:
        result = save(value)
    except DatabaseUnavailable as exc:
        log.error("not saved: %s", exc)
        ack(response_action="errors", errors={block_ids[0]: NOT_SAVED})
        return
    _finish(ack, result, *done(value))


def register_everyday(app: App, services: Services) -> None:
    workflow = services.workflow
    policy = services.policy.policy

    @app.view(views.ANSWER_CALLBACK)
    def answer_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        info_id, user_id = _item(view).info_id, body["user"]["id"]
        _small_modal(
            ack,
            view,
            (forms.ANSWER.block_id,),
            forms.check_answer,
            info_id,
            lambda answer: workflow.answer_info(info_id, user_id, answer),  # type: ignore[arg-type]
            lambda _: (
                "Answer sent",
                ":speech_balloon: Your answer is recorded and the reviewers have been told.",
            ),
        )

    @app.view(views.COMMENT_CALLBACK)
    def comment_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        request_id, user_id = _item(view).request_id, body["user"]["id"]
        _small_modal(
            ack,
            view,
            (forms.COMMENT.block_id,),
            forms.check_comment,
            request_id,
            lambda text: workflow.comment(request_id, user_id, text, str(view["id"])),  # type: ignore[arg-type]
            lambda _: ("Comment added", ":memo: Your comment is in the request's timeline."),
        )

    @app.view(views.POST_USE_CALLBACK)
    def post_use_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        request_id, user_id = _item(view).request_id, body["user"]["id"]
        fields = (
            forms.SEARCH_RUN.block_id,
            forms.SEARCH_RESULT.block_id,
            forms.HANDLING.block_id,
            forms.HANDLING_AUTHORITY.block_id,
            forms.POST_USE_NOTES.block_id,
        )
        _small_modal(
            ack,
            view,
            fields,
            forms.check_post_use,
            request_id,
            lambda form: workflow.record_post_use(request_id, user_id, form),  # type: ignore[arg-type]
            lambda _: (
                "Outcome recorded",
                ":white_check_mark: The outcome is recorded and the request is closed.",
            ),
        )

    @app.view(views.DELEGATE_CALLBACK)
    def delegation_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        user_id = body["user"]["id"]
        today = workflow.clock().astimezone(policy.zone).date()
        _small_modal(
            ack,
            view,
            (forms.DEPUTY.block_id, forms.STARTS_ON.block_id, forms.ENDS_ON.block_id),
            lambda raw: forms.check_delegation(raw, user_id, today),
            user_id,
            lambda form: workflow.delegate(user_id, form),
            lambda form: (
                "Deputy named",
                f":busts_in_silhouette: {views.user(form.deputy_id)} may decide in your place from "
                f"{form.starts_on:%d %b %Y} to {form.ends_on:%d %b %Y}.",
            ),
        )

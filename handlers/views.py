"""Modal submissions: the officer's request, a reviewer's decision, a reviewer's question.

An officer's request is answered as soon as it passes its checks: the answer ("being saved") needs nothing
from the database, so Slack gets it within the time of a bare app's ack, and the form is stored just after
(`store_request`). If it cannot be stored, the modal is put back with the officer's answers and the reason.

A reviewer's decision is answered the same way ("received"; `record_decision`): recording it takes the
request's row lock and the audit chain's head, which under load can wait on other writers, and Slack's
3 seconds must not. Its outcome (recorded, refused as a duplicate, not allowed) is queued in the same
transaction and replaces the answer a moment later; if it cannot be recorded, the form comes back as it was
submitted (the request's summary included), with the reviewer's answers filled in.

A reviewer's question and the everyday forms (an officer's answer, a comment, the search's outcome, a
deputy) are answered the same way (`save_form`): "received", then saved, the outcome queued with it; if they
cannot be saved, the form comes back as it was submitted, with the answers filled in. No listener here waits
for the database, or for Slack, before it answers.
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
from bot.workflow import MODAL_UPDATE_DELAY, Submission
from handlers.after_answer import AfterAnswer, sent_again
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
DECIDE_AGAIN = "Please decide again from the request's message in a minute."
FORM_NOT_STORED = "Not saved: the bot could not save this. Your answers are kept; submit again in a minute."
NOT_SAVED_CLOSED = (
    ":warning: Your FR request was *not saved*: the bot could not store it just now. Nothing was recorded "
    "and nobody was asked to review it. Please submit it again with `/fr-request` in a minute."
)


def register(app: App, services: Services, after_answer: AfterAnswer) -> None:
    register_everyday(app, services, after_answer)
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
        answered = AnsweredForm(body["user"]["id"], view, raw, "decision", DECIDE_AGAIN)
        after_answer("view_submission", record_decision, services, client, answered, ctx, form)

    @app.view(views.INFO_CALLBACK)
    def question_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient) -> None:
        form = SmallForm.of(ack, body, view, client, "question", after_answer)
        ctx = _context(view)
        asking = ctx if ctx is not None and ctx.action == "request_info" else None

        def ask(question: str) -> object:
            assert asking is not None
            view_id = str(view["id"])  # also the question's submission key: the same modal is one question
            return workflow.request_info(
                asking.request_id, asking.position, form.user_id, question, view_id, view_id
            )

        _small_modal(form, (forms.QUESTION.block_id,), forms.check_question, asking, ask)


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
class AnsweredForm:
    """A reviewer's decision or question, or an everyday form: checked, answered "received" and not yet
    saved."""

    user_id: str
    view: dict[str, Any]  # the submitted modal, put back with the answers if the form cannot be saved
    raw: dict[str, str]  # the answers as typed
    what: str  # names the form to its author: "decision", "comment"…
    again: str = "Please try again in a minute."  # to its author if they closed the modal and it was lost


def record_decision(
    services: Services,
    client: WebClient,
    answered: AnsweredForm,
    ctx: views.ReviewContext,
    form: forms.DecisionForm,
) -> None:
    """Record an answered decision (`save_form`); the same transaction queues the modal's update with the
    outcome (`Workflow.decide`), so the reviewer is shown what the database holds."""
    save_form(
        client,
        answered,
        lambda: services.workflow.decide(
            ctx.request_id,
            ctx.position,
            answered.user_id,
            ctx.action,
            form,
            str(answered.view["id"]),
            again=sent_again(),
        ),
        DECISION_NOT_STORED,
    )


def save_form(
    client: WebClient,
    answered: AnsweredForm,
    save: Callable[[], object],
    not_stored: str = FORM_NOT_STORED,
) -> None:
    """Save an answered form (`save` queues the modal's update with the outcome in its transaction,
    `Workflow._show`). If the database cannot take it, or a defect stops it (`not_stored`, and raised),
    the form comes back with the answers, or, if the modal was closed, a direct message says it was not
    recorded: nobody is left believing it is."""
    try:
        save()
    except DatabaseUnavailable as exc:
        log.error("%s not saved: %s", answered.what, exc)
        _give_back_form(client, answered, NOT_SAVED)
    except Exception as exc:
        # The type only: errors can quote the form.
        log.error("%s not saved: %s", answered.what, type(exc).__name__)
        _give_back_form(client, answered, not_stored)
        raise


def _give_back_form(client: WebClient, answered: AnsweredForm, reason: str) -> None:
    time.sleep(GIVE_BACK_DELAY_SECONDS)
    form = views.given_back(answered.view, answered.raw, reason)
    closed = views.not_recorded_text(f"the bot could not save it just now. {answered.again}", answered.what)
    _put_back(client, str(answered.view["id"]), form, answered.user_id, closed)


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


@dataclass(frozen=True)
class SmallForm:
    """One submission of a question's or an everyday modal: what its listener was given."""

    ack: Ack
    view: dict[str, Any]
    user_id: str
    what: str  # names the form to its author: "question", "comment"…
    after_answer: AfterAnswer
    client: WebClient

    @classmethod
    def of(
        cls,
        ack: Ack,
        body: dict[str, Any],
        view: dict[str, Any],
        client: WebClient,
        what: str,
        after_answer: AfterAnswer,
    ) -> SmallForm:
        return cls(ack, view, body["user"]["id"], what, after_answer, client)


def _small_modal(
    form: SmallForm,
    block_ids: tuple[str, ...],
    check: Callable[[dict[str, str]], Any],
    target: object | None,
    save: Callable[[Any], object],
) -> None:
    """What every small modal does: check its fields and that it still names something to act on (no
    database), answer "received", then save the checked value after the answer (`save_form`)."""
    raw = forms.read_fields(_state(form.view), block_ids)
    try:
        value = check(raw)
    except forms.FormErrors as exc:
        form.ack(response_action="errors", errors=exc.errors)
        return
    if target is None:
        stale = views.notice_modal("Not recorded", "This form is not valid any more.")
        form.ack(response_action="update", view=stale)
        return
    form.ack(response_action="update", view=views.form_received_modal(form.what))
    answered = AnsweredForm(form.user_id, form.view, raw, form.what)
    form.after_answer("view_submission", save_form, form.client, answered, lambda: save(value))


def register_everyday(app: App, services: Services, after_answer: AfterAnswer) -> None:
    workflow = services.workflow
    policy = services.policy.policy

    @app.view(views.ANSWER_CALLBACK)
    def answer_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient) -> None:
        form = SmallForm.of(ack, body, view, client, "answer", after_answer)
        info_id = _item(view).info_id
        _small_modal(
            form,
            (forms.ANSWER.block_id,),
            forms.check_answer,
            info_id,
            lambda answer: workflow.answer_info(info_id, form.user_id, answer, str(view["id"]), sent_again()),  # type: ignore[arg-type]
        )

    @app.view(views.COMMENT_CALLBACK)
    def comment_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient) -> None:
        form = SmallForm.of(ack, body, view, client, "comment", after_answer)
        request_id, view_id = _item(view).request_id, str(view["id"])
        _small_modal(
            form,
            (forms.COMMENT.block_id,),
            forms.check_comment,
            request_id,
            lambda text: workflow.comment(request_id, form.user_id, text, view_id, view_id),  # type: ignore[arg-type]
        )

    @app.view(views.POST_USE_CALLBACK)
    def post_use_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient) -> None:
        form = SmallForm.of(ack, body, view, client, views.POST_USE_NAME, after_answer)
        request_id = _item(view).request_id
        fields = (
            forms.SEARCH_RUN.block_id,
            forms.SEARCH_RESULT.block_id,
            forms.HANDLING.block_id,
            forms.HANDLING_AUTHORITY.block_id,
            forms.POST_USE_NOTES.block_id,
        )
        _small_modal(
            form,
            fields,
            forms.check_post_use,
            request_id,
            lambda checked: workflow.record_post_use(  # type: ignore[arg-type]
                request_id, form.user_id, checked, str(view["id"]), sent_again()
            ),
        )

    @app.view(views.DELEGATE_CALLBACK)
    def delegation_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient) -> None:
        form = SmallForm.of(ack, body, view, client, "delegation", after_answer)
        # As of the moment the answering process read (a follow-up process runs this listener again).
        today = after_answer.as_of(workflow.clock).astimezone(policy.zone).date()
        _small_modal(
            form,
            (forms.DEPUTY.block_id, forms.STARTS_ON.block_id, forms.ENDS_ON.block_id),
            lambda raw: forms.check_delegation(raw, form.user_id, today),
            form.user_id,
            lambda checked: workflow.delegate(form.user_id, checked, str(view["id"])),
        )

"""Every Block Kit view and message the bot sends is built here, from database rows and the policy.

User-typed text only ever reaches mrkdwn through `esc()`, and every text object is clipped to Slack's
limits, so the longest allowed input still renders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from bot import forms
from bot.mrkdwn import clip, escape
from bot.policy import (
    CATEGORY_LABELS,
    SERIOUSNESS_LABELS,
    SUBJECT_LABELS,
    URGENCY_LABELS,
    Policy,
    Seriousness,
    SubjectCategory,
    ToolCategory,
    Urgency,
)
from storage.models import (
    Delegation,
    FrRequest,
    InfoRequest,
    PostUseRecord,
    RequestStatus,
    StageReview,
    StageStatus,
)

Block = dict[str, Any]
TEXT_LIMIT = 3000
FIELD_LIMIT = 2000
HEADER_LIMIT = 150
TITLE_LIMIT = 24
MESSAGE_BLOCK_LIMIT = 50

REQUEST_CALLBACK = "fr_request_submit"
DECISION_CALLBACK = "fr_decision_submit"
INFO_CALLBACK = "fr_info_submit"
APPROVE_ACTION = "review_approve"
REJECT_ACTION = "review_reject"
INFO_ACTION = "review_info"
REVIEW_ACTIONS = {APPROVE_ACTION: "approve", REJECT_ACTION: "reject", INFO_ACTION: "request_info"}
COMMENT_ACTION = "review_comment"
WITHDRAW_ACTION = "request_withdraw"
ANSWER_ACTION = "info_answer"
RECORD_USE_ACTION = "post_use_record"
REREQUEST_ACTION = "request_again"
DETAILS_ACTION = "request_details"
NEW_REQUEST_ACTION = "request_new"
DELEGATE_ACTION = "delegation_new"
REVOKE_ACTION = "delegation_revoke"
ANSWER_CALLBACK = "fr_answer_submit"
COMMENT_CALLBACK = "fr_comment_submit"
POST_USE_CALLBACK = "fr_post_use_submit"
DELEGATE_CALLBACK = "fr_delegate_submit"

STATUS_BADGES = {
    RequestStatus.PENDING: ":hourglass_flowing_sand: Pending",
    RequestStatus.APPROVED: ":white_check_mark: Approved",
    RequestStatus.REJECTED: ":no_entry: Rejected",
    RequestStatus.WITHDRAWN: ":leftwards_arrow_with_hook: Withdrawn",
    RequestStatus.EXPIRED: ":clock3: Expired",
}
JUSTIFICATIONS = (
    ("purpose_detail", forms.PURPOSE_DETAIL.label),
    ("necessity", forms.NECESSITY.label),
    ("alternatives", forms.ALTERNATIVES.label),
    ("proportionality", forms.PROPORTIONALITY.label),
    ("collateral_intrusion", forms.COLLATERAL.label),
    ("equality", forms.EQUALITY.label),
    ("image_authority", forms.IMAGE_AUTHORITY.label),
)


class ReviewContext(BaseModel):
    """Carried in a reviewer modal's private_metadata, so the submission knows what it decides."""

    model_config = ConfigDict(frozen=True)

    request_id: int
    position: int
    action: str  # approve | reject | request_info
    channel_id: str | None = None
    message_ts: str | None = None


# --- Small builders ------------------------------------------------------------------------------


def plain(text: str, limit: int = TEXT_LIMIT) -> dict[str, Any]:
    return {"type": "plain_text", "text": clip(text, limit) or " ", "emoji": True}


def mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": clip(text, TEXT_LIMIT) or " "}


def esc(text: str, limit: int = TEXT_LIMIT) -> str:
    """Escape user text for mrkdwn and clip it so the escaped form fits `limit`."""
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    low, high = 0, len(text)
    while low < high:  # longest raw prefix whose escaped form fits with the ellipsis
        middle = (low + high + 1) // 2
        if len(escape(text[:middle])) + 1 <= limit:
            low = middle
        else:
            high = middle - 1
    return escape(text[:low]) + "…"


def section(text: str) -> Block:
    return {"type": "section", "text": mrkdwn(text)}


def fields_section(pairs: list[tuple[str, str]]) -> Block:
    """Up to 10 label/value fields; values must already be escaped."""
    return {
        "type": "section",
        "fields": [mrkdwn(clip(f"*{label}*\n{value}", FIELD_LIMIT)) for label, value in pairs[:10]],
    }


def context(text: str) -> Block:
    return {"type": "context", "elements": [mrkdwn(text)]}


def header(text: str) -> Block:
    return {"type": "header", "text": plain(text, HEADER_LIMIT)}


def when(moment: datetime | None, policy: Policy) -> str:
    """A time Slack shows in each reader's own zone, with the policy's zone as fallback text."""
    if moment is None:
        return "—"
    local = moment.astimezone(policy.zone)
    fallback = local.strftime("%d %b %Y %H:%M %Z")
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def user(user_id: str) -> str:
    # IDs come from Slack's payloads, never from typed text; still refuse anything but an ID shape.
    return f"<@{user_id}>" if user_id.isalnum() else esc(user_id)


def modal(
    title: str, blocks: list[Block], callback_id: str, metadata: str = "", submit: str | None = None
) -> dict[str, Any]:
    view: dict[str, Any] = {
        "type": "modal",
        "callback_id": callback_id,
        "title": plain(title, TITLE_LIMIT),
        "close": plain("Close" if submit is None else "Cancel", TITLE_LIMIT),
        "blocks": blocks,
        "private_metadata": metadata,
    }
    if submit is not None:
        view["submit"] = plain(submit, TITLE_LIMIT)
    return view


def notice_modal(title: str, text: str) -> dict[str, Any]:
    """A closing screen for a modal: shown with response_action update."""
    return {
        "type": "modal",
        "title": plain(title, TITLE_LIMIT),
        "close": plain("Close", TITLE_LIMIT),
        "blocks": [section(text)],
    }


def received_modal() -> dict[str, Any]:
    """The officer's modal once the form passed its checks; `recorded_modal` replaces it a moment later,
    or the form comes back with the officer's answers if it could not be stored (handlers/views.py)."""
    return notice_modal(
        "Request received",
        ":hourglass_flowing_sand: Your request passed its checks and is being saved and recorded. Its "
        "reference appears here and in a direct message in a moment: until it does, it is not recorded. "
        "Do not run the search until it is approved.",
    )


def recorded_modal(reference: str, stage_names: tuple[str, ...]) -> dict[str, Any]:
    route = " → ".join(stage_names)
    return notice_modal(
        "Request recorded",
        f":inbox_tray: *{esc(reference)}* is recorded and on its way to *{esc(route)}*. "
        "You will get a direct message at each decision. Do not run the search until it is approved.",
    )


def _option(value: str, label: str) -> dict[str, Any]:
    return {"text": plain(label, 75), "value": value}


def _input(
    field: forms.TextField | forms.SelectField, element: dict[str, Any], optional: bool = False
) -> Block:
    block: Block = {
        "type": "input",
        "block_id": field.block_id,
        "label": plain(field.label, 2000),
        "element": element,
        "optional": optional,
    }
    if field.hint:
        block["hint"] = plain(field.hint, 2000)
    return block


def text_input(field: forms.TextField, initial: str | None = None) -> Block:
    element: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": forms.ACTION_ID,
        "multiline": field.multiline,
        "max_length": field.max_length,
    }
    if initial:
        element["initial_value"] = initial[: field.max_length]
    return _input(field, element, optional=field.optional)


def select_input(
    field: forms.SelectField, choices: list[tuple[str, str]], initial: str | None = None
) -> Block:
    options = [_option(value, label) for value, label in choices[:100]]
    element: dict[str, Any] = {
        "type": "radio_buttons" if field.radio else "static_select",
        "action_id": forms.ACTION_ID,
        "options": options,
    }
    if not field.radio:
        element["placeholder"] = plain("Choose…", 150)
    chosen = next((option for option in options if option["value"] == initial), None)
    if chosen is not None:
        element["initial_option"] = chosen
    return _input(field, element)


# --- The officer's request modal --------------------------------------------------------------------


def request_modal(
    policy: Policy, initial: dict[str, str] | None = None, metadata: str = "", notice: str = ""
) -> dict[str, Any]:
    """The officer's form; `initial` fills it in (an edited resubmission, or a form given back with
    `notice` saying why it was not saved)."""
    initial = initial or {}
    blocks: list[Block] = [section(f":warning: *{esc(notice)}*")] if notice else []
    blocks.append(
        section(
            "Every use of an FR search tool needs a recorded, reasoned and authorised decision. "
            "Answer each question for *this* case. Do not paste or attach any image."
        )
    )
    if policy.own_process:
        redirected = ", ".join(CATEGORY_LABELS[ToolCategory(c)] for c in policy.own_process)
        blocks.append(
            context(f"{esc(redirected)} have their own authorisation process and are not requested here.")
        )
    for field in forms.FIELD_ORDER:
        value = initial.get(field.block_id)
        if isinstance(field, forms.SelectField):
            blocks.append(select_input(field, forms.select_choices(policy, field), value))
        else:
            blocks.append(text_input(field, value))
    return modal("FR search request", blocks, REQUEST_CALLBACK, metadata, submit="Submit")


# --- What reviewers see ------------------------------------------------------------------------------


def _label(policy: Policy, request: FrRequest) -> dict[str, str]:
    return {
        "purpose": policy.label(policy.purposes, request.purpose),
        "offence": policy.label(policy.offence_categories, request.offence_category),
        "seriousness": SERIOUSNESS_LABELS[Seriousness(request.offence_seriousness)].split(" (")[0],
        "subject": SUBJECT_LABELS[SubjectCategory(request.subject_category)],
        "urgency": URGENCY_LABELS[Urgency(request.urgency)],
        "source": policy.label(policy.image_provenance, request.image_source),
    }


def _tool_line(request: FrRequest) -> str:
    tool = request.tool_snapshot
    return f"{esc(tool['name'], 200)} ({tool['status']})"


def _status_line(request: FrRequest, policy: Policy, now: datetime) -> str:
    badge = STATUS_BADGES.get(request.status, request.status)
    if request.status == RequestStatus.PENDING and request.current is not None:
        stage = request.current
        where = f"stage {stage.position + 1} of {len(request.stages)}"
        return f"{badge}: awaiting *{esc(stage.stage_name)}* ({where})"
    if request.status == RequestStatus.APPROVED and request.closed_at is not None:
        return f"{badge}: the search's outcome is recorded, closed {when(request.closed_at, policy)}"
    if request.status == RequestStatus.APPROVED:
        valid_until = request.valid_until
        if valid_until is not None and valid_until <= now:
            # Past its time the approval no longer allows a search: "valid until" a past time read as if
            # it still did.
            return f"{badge}, ran out {when(valid_until, policy)}: a search now needs a new request"
        return f"{badge}: valid until {when(valid_until, policy)}"
    return f"{badge} {when(request.decided_at, policy)}"


def summary_fields(request: FrRequest, policy: Policy) -> Block:
    labels = _label(policy, request)
    child = " (child)" if request.subject_is_child else ""
    return fields_section(
        [
            ("Tool", _tool_line(request)),
            ("Urgency", esc(labels["urgency"])),
            ("Requester", user(request.requester_id)),
            ("Case reference", esc(request.case_reference)),
            ("Purpose", esc(labels["purpose"])),
            ("Subject", esc(labels["subject"]) + child),
            ("Offence", f"{esc(labels['offence'])}, {esc(labels['seriousness'].lower())}"),
            ("Image source", esc(labels["source"])),
            ("Submitted", when(request.created_at, policy)),
            ("Route", esc(" → ".join(s.stage_name for s in request.stages))),
        ]
    )


def _decision_line(stage: StageReview, policy: Policy) -> list[str]:
    """A stage's decisions and questions, oldest first, so a clipped history loses the oldest."""
    entries: list[tuple[datetime, str]] = []
    for decision in stage.decisions:
        verb = ":white_check_mark: Approved" if decision.outcome == "approve" else ":no_entry: Rejected"
        line = f"{verb} by {user(decision.approver_id)} {when(decision.created_at, policy)}"
        if decision.on_behalf_of:
            line += f" as deputy for {user(decision.on_behalf_of)}"
        if decision.reason_code:
            line += f" · {esc(forms.REASON_CODES.get(decision.reason_code, decision.reason_code))}"
        line += f"\n> {esc(decision.rationale, 900)}"
        if decision.conditions:
            line += f"\n> _Conditions:_ {esc(decision.conditions, 500)}"
        entries.append((decision.created_at, line))
    for info in stage.info_requests:
        asked = f":grey_question: {user(info.asked_by)} asked {when(info.created_at, policy)}"
        line = f"{asked}\n> {esc(info.question, 500)}"
        if info.answer is not None:
            line += f"\n:speech_balloon: Answered {when(info.answered_at, policy)}\n> {esc(info.answer, 900)}"
        entries.append((info.created_at, line))
    return [line for _, line in sorted(entries, key=lambda entry: entry[0])]


STAGE_BADGES = {
    StageStatus.WAITING: "waiting",
    StageStatus.PENDING: "awaiting decision",
    StageStatus.APPROVED: "approved",
    StageStatus.REJECTED: "rejected",
    StageStatus.CANCELLED: "not reached",
}


def pack(lines: list[str], limit: int = TEXT_LIMIT) -> list[str]:
    """Join lines into as few texts as fit `limit` each; each line is already short enough on its own."""
    packed: list[str] = []
    for line in lines:
        line = clip(line, limit)
        if packed and len(packed[-1]) + 1 + len(line) <= limit:
            packed[-1] += "\n" + line
        else:
            packed.append(line)
    return packed


def stage_history(request: FrRequest, policy: Policy) -> list[Block]:
    lines: list[str] = []
    for stage in request.stages:
        count = f"{len(stage.approvals)}/{stage.required_approvals} approvals"
        badge = STAGE_BADGES.get(stage.status, stage.status)
        lines.append(f"*{stage.position + 1}. {esc(stage.stage_name)}*: {badge} ({count})")
        lines.extend(_decision_line(stage, policy))
    for comment in request.comments:
        lines.append(
            f":memo: {user(comment.author_id)} commented {when(comment.created_at, policy)}"
            f"\n> {esc(comment.text, 900)}"
        )
    return [section(text) for text in pack(lines)]


def review_actions(request: FrRequest, stage: StageReview) -> Block:
    value = f"{request.id}:{stage.position}"
    return {
        "type": "actions",
        "block_id": f"review:{value}",
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE_ACTION,
                "text": plain("Approve", 75),
                "style": "primary",
                "value": value,
            },
            {
                "type": "button",
                "action_id": REJECT_ACTION,
                "text": plain("Reject", 75),
                "style": "danger",
                "value": value,
            },
            {"type": "button", "action_id": INFO_ACTION, "text": plain("Request info", 75), "value": value},
            {"type": "button", "action_id": COMMENT_ACTION, "text": plain("Comment", 75), "value": value},
        ],
    }


def review_message(request: FrRequest, stage: StageReview, policy: Policy, now: datetime) -> dict[str, Any]:
    """The message in one stage's reviewer channel; buttons only while that stage awaits decisions."""
    blocks: list[Block] = [
        header(f"FR search request {request.reference}"),
        section(_status_line(request, policy, now)),
        summary_fields(request, policy),
    ]
    if request.status == RequestStatus.PENDING and stage.status == StageStatus.PENDING and stage.due_at:
        waiting = policy.review_deadlines.pause_while_awaiting_officer and any(
            info.answer is None for info in stage.info_requests
        )
        if waiting:  # no reminder goes and the due time moves on by the wait (README): not overdue
            blocks.append(context(":pause_button: Clock stopped: waiting for the officer's answer"))
        else:
            blocks.append(context(due_text(stage.due_at, policy, now)))
    if request.urgency_justification and request.redacted_at is None:
        blocks.append(
            section(f"*{forms.URGENCY_JUSTIFICATION.label}*\n{esc(request.urgency_justification, 2900)}")
        )
    if request.redacted_at is not None:
        blocks.append(redacted_notice(request, policy))
    else:
        for attribute, label in JUSTIFICATIONS:
            blocks.append(section(f"*{label}*\n{esc(getattr(request, attribute), 2900)}"))
    tool = request.tool_snapshot
    category = CATEGORY_LABELS[ToolCategory(tool["category"])]
    register = f"Register: {esc(category)}, jurisdiction {esc(tool['jurisdiction'])}"
    if tool.get("dpia_reference"):
        register += f", DPIA {esc(tool['dpia_reference'])}"
    blocks.append(context(register + f" · policy version {esc(request.policy_version)}"))
    blocks.append({"type": "divider"})
    live = request.status == RequestStatus.PENDING and request.current_stage == stage.position
    room = MESSAGE_BLOCK_LIMIT - len(blocks) - 1
    history = stage_history(request, policy)
    if len(history) > room:
        # Keep the newest entries (the current stage and latest decisions); drop the oldest.
        history = [
            context(
                "Older entries are left out here to fit Slack's message size; the database holds them all."
            ),
            *history[-(room - 1) :],
        ]
    blocks.extend(history)
    if live and stage.status == StageStatus.PENDING:
        blocks.append(review_actions(request, stage))
    title = f"FR request {request.reference} ({URGENCY_LABELS[Urgency(request.urgency)]})"
    text = f"{title} awaits {stage.stage_name}" if live else f"{title}: {request.status}"
    return {"channel": stage.channel_id, "text": clip(escape(text), 300), "blocks": blocks}


def request_summary(request: FrRequest, policy: Policy, now: datetime) -> list[Block]:
    """The short form of a request shown at the top of reviewer modals."""
    return [section(_status_line(request, policy, now)), summary_fields(request, policy)]


def decision_modal(request: FrRequest, policy: Policy, ctx: ReviewContext, now: datetime) -> dict[str, Any]:
    blocks = [*request_summary(request, policy, now), *_decision_inputs(ctx)]
    verb = _decision_verb(ctx)
    return modal(f"{verb} {request.reference}", blocks, DECISION_CALLBACK, ctx.model_dump_json(), submit=verb)


def _decision_inputs(ctx: ReviewContext) -> list[Block]:
    blocks: list[Block] = []
    if ctx.action == "reject":
        blocks.append(select_input(forms.REASON_CODE, list(forms.REASON_CODES.items())))
    blocks.append(text_input(forms.RATIONALE))
    if ctx.action == "approve":
        blocks.append(text_input(forms.CONDITIONS))
    return blocks


def _decision_verb(ctx: ReviewContext) -> str:
    return "Approve" if ctx.action == "approve" else "Reject"


def form_received_modal(what: str) -> dict[str, Any]:
    """A reviewer's decision, a question or an everyday form (`what`: "decision", "comment"…) once it
    passed its checks; the outcome replaces it a moment later (queued with it, bot/workflow.py), or the
    form comes back if it could not be saved (handlers/views.py)."""
    return notice_modal(
        f"{what.capitalize()} received",
        f":hourglass_flowing_sand: Your {what} passed its checks and is being recorded. The outcome "
        "appears here in a moment: until it does, it is not recorded.",
    )


def decision_received_modal() -> dict[str, Any]:
    return form_received_modal("decision")


def decision_outcome_modal(
    reference: str, outcome: str, stage_name: str, approvals: int, required: int
) -> dict[str, Any]:
    """What the reviewer's modal shows once their decision is recorded."""
    if outcome == "reject":
        text = f":no_entry: Your rejection of *{esc(reference)}* is recorded. The officer has been told."
    else:
        text = (
            f":white_check_mark: Your approval of *{esc(reference)}* at *{esc(stage_name)}* "
            f"is recorded ({approvals} of {required} needed)."
        )
    return notice_modal("Decision recorded", text)


def not_recorded_modal(message: str) -> dict[str, Any]:
    """An action that was refused (`Refusal.message`: a decision already made, on one's own request, a
    request no longer open…): nothing of it was recorded but the refusal."""
    return notice_modal("Not recorded", esc(message))


def not_recorded_text(message: str, what: str = "decision") -> str:
    """A decision (or question, comment…: `what`) that was not recorded (`message` says why), as a direct
    message, for someone who closed the modal before it could show it."""
    return f":warning: Your {what} was *not recorded*: {esc(message)}"


# What a question's or an everyday form's modal shows once it is recorded (queued with it, bot/workflow.py).


def question_sent_modal(reference: str) -> dict[str, Any]:
    return notice_modal(
        "Question sent",
        f":grey_question: Your question on *{esc(reference)}* is recorded and sent to the officer.",
    )


def answer_sent_modal() -> dict[str, Any]:
    return notice_modal(
        "Answer sent", ":speech_balloon: Your answer is recorded and the reviewers have been told."
    )


def comment_added_modal() -> dict[str, Any]:
    return notice_modal("Comment added", ":memo: Your comment is in the request's timeline.")


# The post-use form's name to its author ("Search outcome received", "Your search outcome was not recorded").
POST_USE_NAME = "search outcome"


def post_use_recorded_modal() -> dict[str, Any]:
    return notice_modal(
        "Search outcome recorded",
        ":white_check_mark: The search's outcome is recorded and the request is closed.",
    )


def deputy_named_modal(deputy_id: str, starts_on: date, ends_on: date) -> dict[str, Any]:
    return notice_modal(
        "Deputy named",
        f":busts_in_silhouette: {user(deputy_id)} may decide in your place from "
        f"{starts_on:%d %b %Y} to {ends_on:%d %b %Y}.",
    )


GIVEN_BACK_NOTICE = "given_back_notice"
# The parts of a submitted view that views.update takes back (Slack adds id, state, hash… to it).
_VIEW_KEYS = ("type", "callback_id", "title", "close", "submit", "private_metadata")


def given_back(submitted: dict[str, Any], answers: dict[str, str], notice: str) -> dict[str, Any]:
    """A reviewer's decision or question, or an everyday form, that could not be saved, put back as it was
    submitted (the request's summary included) with the user's `answers` filled in and `notice` saying
    why (handlers/views.py). Built from the submitted view, not from the database, which may be what
    failed. The "received" answer replaced the form, so Slack kept none of what was typed: each input
    gets its answer as its initial value."""
    blocks = [
        _answered(block, answers.get(str(block.get("block_id"))))
        for block in submitted.get("blocks") or []
        if block.get("block_id") != GIVEN_BACK_NOTICE
    ]
    view = {key: submitted[key] for key in _VIEW_KEYS if key in submitted}
    view["blocks"] = [{**section(f":warning: *{esc(notice)}*"), "block_id": GIVEN_BACK_NOTICE}, *blocks]
    return view


# What an input element shows as already given: cleared from a box left empty, or a form given back a
# second time would bring back what the person had deleted (from the first give-back's initial value).
_INITIAL_KEYS = ("initial_value", "initial_option", "initial_date", "initial_user")


def _answered(block: Block, answer: str | None) -> Block:
    if block.get("type") != "input":
        return block
    element = {key: value for key, value in block["element"].items() if key not in _INITIAL_KEYS}
    if not answer:
        return {**block, "element": element}
    kind = element.get("type")
    if kind == "plain_text_input":
        element["initial_value"] = answer[: element.get("max_length") or 3000]
    elif kind in ("static_select", "radio_buttons"):
        chosen = next((o for o in element.get("options") or [] if o.get("value") == answer), None)
        if chosen is not None:
            element["initial_option"] = chosen
    elif kind == "datepicker":
        element["initial_date"] = answer
    elif kind == "users_select":
        element["initial_user"] = answer
    return {**block, "element": element}


def info_modal(request: FrRequest, policy: Policy, ctx: ReviewContext, now: datetime) -> dict[str, Any]:
    blocks = [*request_summary(request, policy, now), text_input(forms.QUESTION)]
    return modal(
        f"Ask about {request.reference}", blocks, INFO_CALLBACK, ctx.model_dump_json(), submit="Send"
    )


# --- Direct messages to the officer ---------------------------------------------------------------


def _dm(request: FrRequest, text: str, blocks: list[Block]) -> dict[str, Any]:
    # The notification text is parsed as mrkdwn too; stage and tool names come from the policy file.
    return {"user": request.requester_id, "text": clip(escape(text), 300), "blocks": blocks}


def submitted_dm(request: FrRequest, policy: Policy) -> dict[str, Any]:
    route = " → ".join(s.stage_name for s in request.stages)
    return _dm(
        request,
        f"Your FR request {request.reference} is recorded and with {request.stages[0].stage_name}.",
        [
            section(
                f":inbox_tray: Your FR search request *{request.reference}* is recorded. "
                f"Do not run the search until it is approved."
            ),
            section(f"*Route:* {esc(route)}"),
            summary_fields(request, policy),
            *_first_due(request, policy),
            context("You will get a message here at each decision."),
            actions(
                f"officer:{request.id}",
                button("Withdraw", WITHDRAW_ACTION, str(request.id), confirm=WITHDRAW_CONFIRM),
                button("Details", DETAILS_ACTION, str(request.id)),
            ),
        ],
    )


def decision_dm(
    request: FrRequest,
    stage: StageReview,
    approver: str,
    outcome: str,
    form: forms.DecisionForm,
    policy: Policy,
) -> dict[str, Any]:
    reference = request.reference
    if outcome == "reject":
        reason = forms.REASON_CODES.get(form.reason_code or "", "")
        text = f"Your FR request {reference} was rejected at {stage.stage_name}."
        lead = (
            f":no_entry: *{reference}* was rejected at *{esc(stage.stage_name)}* by {user(approver)}: "
            f"{esc(reason)}."
        )
    elif request.status == RequestStatus.APPROVED:
        text = f"Your FR request {reference} is approved."
        lead = (
            f":white_check_mark: *{reference}* is approved. You may run the search with "
            f"{esc(request.tool_snapshot['name'], 200)} until {when(request.valid_until, policy)}."
        )
    elif stage.status == StageStatus.APPROVED and request.current is not None:
        text = f"Your FR request {reference} passed {stage.stage_name}."
        lead = (
            f":arrow_right: *{reference}* was approved at *{esc(stage.stage_name)}* by {user(approver)} "
            f"and is now with *{esc(request.current.stage_name)}*."
        )
    else:
        text = f"Your FR request {reference} has an approval at {stage.stage_name}."
        lead = (
            f":heavy_check_mark: {user(approver)} approved *{reference}* at *{esc(stage.stage_name)}* "
            f"({len(stage.approvals)} of {stage.required_approvals} approvals needed)."
        )
    blocks = [section(lead), section(f"*Rationale*\n{esc(form.rationale, 2900)}")]
    if request.status == RequestStatus.PENDING and request.current is not None and request.current.due_at:
        blocks.append(
            context(f"{esc(request.current.stage_name)}: {due_text(request.current.due_at, policy)}")
        )
    if request.status == RequestStatus.APPROVED:
        # The approval holds every stage's conditions, not only the last decision's.
        given = [(s.stage_name, d.conditions) for s in request.stages for d in s.approvals if d.conditions]
        if given:  # a section each, so that none is cut to fit the others
            blocks.append(section("*Conditions you must follow*"))
            blocks += [section(f"*{esc(name, 75)}*: {esc(text, 2800)}") for name, text in given]
    elif form.conditions:
        blocks.append(section(f"*Conditions you must follow*\n{esc(form.conditions, 2900)}"))
    follow_up = officer_buttons(request, request.updated_at)
    if follow_up is not None:
        blocks.append(follow_up)
    return _dm(request, text, blocks)


def info_requested_dm(request: FrRequest, stage: StageReview, info: InfoRequest) -> dict[str, Any]:
    return _dm(
        request,
        f"A reviewer has a question about your FR request {request.reference}.",
        [
            section(
                f":grey_question: {user(info.asked_by)} (*{esc(stage.stage_name)}*) asks about "
                f"*{request.reference}*:"
            ),
            section(f"> {esc(info.question, 2900)}"),
            actions(f"answer:{info.id}", button("Answer", ANSWER_ACTION, str(info.id), style="primary")),
            context("Your answer is added to the request; the reviewers are told and the review goes on."),
        ],
    )


HELP_TEXT = (
    "*/fr-request* opens the form to ask for authority to run a facial recognition search.\n"
    "Every request records the tool, the case, the lawful purpose, and why the search is necessary, "
    "proportionate and fair. It then goes to the reviewers the force policy names; you get a direct "
    "message at each decision. Do not run a search before it is approved, and never attach an image."
)


# --- Retention --------------------------------------------------------------------------------------


def redacted_dm(request: FrRequest, policy: Policy) -> dict[str, Any]:
    """What an officer's earlier DMs about a purged request are edited down to."""
    return {
        "text": f"Details of FR request {request.reference} were removed under the retention policy.",
        "blocks": [redacted_notice(request, policy)],
    }


def redacted_notice(request: FrRequest, policy: Policy) -> Block:
    """Shown in place of a purged request's free text (bot/retention.py)."""
    return section(
        f":wastebasket: Details removed under the retention policy on {when(request.redacted_at, policy)}. "
        "The decision record (who decided, when, and the outcome) is kept."
    )


# --- Everyday flows: buttons, DMs, modals, timeline, App Home -------------------------------------------

WITHDRAW_CONFIRM = {
    "title": plain("Withdraw this request?", 100),
    "text": plain("The reviewers are told and the request is closed. You can start a new one later.", 300),
    "confirm": plain("Withdraw", 30),
    "deny": plain("Keep it", 30),
}
HOME_BLOCK_LIMIT = 100
MODAL_BLOCK_LIMIT = 100


def button(
    text: str, action_id: str, value: str, style: str | None = None, confirm: dict[str, Any] | None = None
) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": plain(text, 75),
        "value": value,
    }
    if style:
        element["style"] = style
    if confirm:
        element["confirm"] = confirm
    return element


def actions(block_id: str, *elements: dict[str, Any]) -> Block:
    return {"type": "actions", "block_id": block_id[:255], "elements": list(elements)}


def officer_buttons(request: FrRequest, now: datetime) -> Block | None:
    """What the officer can do next with their request, as buttons (None when nothing is left to do)."""
    rid = str(request.id)
    elements: list[dict[str, Any]] = []
    if request.status == RequestStatus.PENDING:
        elements.append(button("Withdraw", WITHDRAW_ACTION, rid, confirm=WITHDRAW_CONFIRM))
    if request.status == RequestStatus.APPROVED and request.closed_at is None:
        elements.append(button("Record search outcome", RECORD_USE_ACTION, rid, style="primary"))
    ended = (
        request.status == RequestStatus.APPROVED
        and request.valid_until is not None
        and request.valid_until <= now
    )
    if request.status in (RequestStatus.REJECTED, RequestStatus.WITHDRAWN, RequestStatus.EXPIRED) or ended:
        elements.append(button("Re-request", REREQUEST_ACTION, rid))
    if not elements:
        return None
    elements.append(button("Details", DETAILS_ACTION, rid))
    return actions(f"officer:{request.id}", *elements)


def initial_values(request: FrRequest) -> dict[str, str]:
    """A stored request as the request modal's initial values, for starting again from it; a purged one's
    removed free text is left blank for the officer to write again, not offered as the removal marker."""
    purged = forms.FREE_TEXT_FIELDS if request.redacted_at is not None else ()
    values = {
        field.block_id: str(getattr(request, field.block_id, "") or "")
        for field in forms.FIELD_ORDER
        if field.block_id not in purged
    }
    values[forms.TOOL.block_id] = request.tool_id
    values[forms.SUBJECT_CHILD.block_id] = "yes" if request.subject_is_child else "no"
    return values


def withdrawn_dm(request: FrRequest) -> dict[str, Any]:
    blocks = [
        section(
            f":leftwards_arrow_with_hook: You withdrew *{request.reference}*. The reviewers have been told."
        )
    ]
    follow_up = officer_buttons(request, request.updated_at)
    if follow_up is not None:
        blocks.append(follow_up)
    return _dm(request, f"You withdrew FR request {request.reference}.", blocks)


def answer_note(request: FrRequest, info: InfoRequest) -> dict[str, Any]:
    """A threaded note under the reviewer message when the officer answers a question."""
    return {
        "text": clip(f"The officer answered a question on {request.reference}.", 300),
        "blocks": [
            section(
                f":speech_balloon: {user(request.requester_id)} answered the question on "
                f"*{request.reference}*:"
            ),
            section(f"*Question*\n> {esc(info.question, 1400)}\n*Answer*\n> {esc(info.answer or '', 1400)}"),
        ],
    }


class ItemContext(BaseModel):
    """private_metadata of the smaller modals: which request (or question, or delegation) they act on."""

    model_config = ConfigDict(frozen=True)

    request_id: int | None = None
    info_id: int | None = None
    previous_request_id: int | None = None
    channel_id: str | None = None


def answer_modal(request: FrRequest, info: InfoRequest, policy: Policy, now: datetime) -> dict[str, Any]:
    blocks = [
        *request_summary(request, policy, now),
        section(f"*{user(info.asked_by)} asked*\n> {esc(info.question, 2800)}"),
        text_input(forms.ANSWER),
    ]
    metadata = ItemContext(request_id=request.id, info_id=info.id).model_dump_json()
    return modal(f"Answer {request.reference}", blocks, ANSWER_CALLBACK, metadata, submit="Send")


def comment_modal(request: FrRequest, policy: Policy, now: datetime) -> dict[str, Any]:
    blocks = [*request_summary(request, policy, now), text_input(forms.COMMENT)]
    metadata = ItemContext(request_id=request.id).model_dump_json()
    return modal(f"Comment {request.reference}", blocks, COMMENT_CALLBACK, metadata, submit="Add")


def post_use_modal(request: FrRequest, policy: Policy) -> dict[str, Any]:
    blocks = [
        section(
            f"Record what happened with *{request.reference}*. A possible match is intelligence only: "
            "it must be corroborated before any action is taken on it."
        ),
        select_input(forms.SEARCH_RUN, list(forms.YES_NO.items())),
        {**select_input(forms.SEARCH_RESULT, list(forms.SEARCH_RESULTS.items())), "optional": True},
        select_input(forms.HANDLING, list(forms.HANDLING_CHOICES.items())),
        text_input(forms.HANDLING_AUTHORITY),
        text_input(forms.POST_USE_NOTES),
    ]
    metadata = ItemContext(request_id=request.id).model_dump_json()
    return modal(f"Outcome {request.reference}", blocks, POST_USE_CALLBACK, metadata, submit="Record")


def delegation_modal(today: str) -> dict[str, Any]:
    def date_input(field: forms.SelectField) -> Block:
        element = {"type": "datepicker", "action_id": forms.ACTION_ID, "initial_date": today}
        return _input(field, element)

    deputy = _input(forms.DEPUTY, {"type": "users_select", "action_id": forms.ACTION_ID})
    blocks = [
        section(
            "Name a deputy who may decide in your place while you are away. Every decision they take "
            "is recorded as taken by them as your deputy. They can never decide their own requests."
        ),
        deputy,
        date_input(forms.STARTS_ON),
        date_input(forms.ENDS_ON),
    ]
    return modal("Delegate approvals", blocks, DELEGATE_CALLBACK, "", submit="Delegate")


RESULT_LABELS = {"not_run": "no result", **forms.SEARCH_RESULTS}


class TimelineEvent(Protocol):
    """What the timeline reads of an audit event (bot.workflow.TimelineEntry, with its text unsealed)."""

    actor_id: str
    action: str
    details: dict[str, Any]
    created_at: datetime


# Timeline: audit events told as a case file, in order.


def _stage_name(request: FrRequest, stage_id: Any) -> str:
    return next((s.stage_name for s in request.stages if s.stage_id == stage_id), str(stage_id or ""))


def timeline_line(event: TimelineEvent, request: FrRequest, policy: Policy) -> str:
    d = event.details or {}
    who = user(event.actor_id) if event.actor_id != "system" else "The bot"
    stage = esc(_stage_name(request, d.get("stage")))
    action = event.action
    if action == "request_submitted":
        tool = esc(request.tool_snapshot["name"], 200)
        text = f"{who} submitted the request ({tool}, case {esc(request.case_reference)})"
    elif action == "request_routed":
        names = [_stage_name(request, s) for s in d.get("stages", [])]
        text = f"Routed by rule *{esc(str(d.get('route', '')))}* to {esc(' → '.join(names))}"
    elif action == "decision_recorded":
        verb = "approved" if d.get("outcome") == "approve" else "rejected"
        text = f"{who} {verb} at *{stage}*"
        if d.get("on_behalf_of"):
            text += f" as deputy for {user(str(d['on_behalf_of']))}"
        if d.get("reason_code"):
            text += f" ({esc(forms.REASON_CODES.get(str(d['reason_code']), str(d['reason_code'])))})"
        text += f": {esc(str(d.get('rationale', '')), 600)}"
        if d.get("conditions"):
            text += f" _Conditions:_ {esc(str(d['conditions']), 400)}"
    elif action == "stage_approved":
        text = f"*{stage}* stage complete"
    elif action == "stage_started":
        text = f"Sent to *{stage}*"
    elif action in ("request_approved", "request_rejected", "request_withdrawn"):
        text = f"{who if action == 'request_withdrawn' else 'Request'} {action.removeprefix('request_')}"
        if d.get("valid_until"):
            try:  # shown in each reader's zone, as every other time
                text += f", valid until {when(datetime.fromisoformat(str(d['valid_until'])), policy)}"
            except ValueError:
                text += f", valid until {esc(str(d['valid_until']), 40)}"
    elif action == "request_rerequested":
        text = f"{who} started this request again from {esc(str(d.get('previous', '')))}"
    elif action == "info_requested":
        text = f"{who} asked (*{stage}*): {esc(str(d.get('question', '')), 600)}"
    elif action == "info_answered":
        text = f"{who} answered: {esc(str(d.get('answer', '')), 600)}"
    elif action == "comment_added":
        text = f"{who} commented: {esc(str(d.get('comment', '')), 600)}"
    elif action == "post_use_recorded":
        result = {"not_run": "search not run", **forms.SEARCH_RESULTS}.get(str(d.get("result")), "")
        text = (
            f"{who} recorded the outcome: {esc(result)}; image and results {esc(str(d.get('handling', '')))}"
        )
    elif action == "request_viewed":
        text = f"{who} viewed the details ({esc(str(d.get('surface', '')))})"
    elif action == "action_refused":
        why = esc(str(d.get("message", d.get("reason", ""))), 300)
        text = f"{who} was refused ({esc(str(d.get('attempted', '')))}): {why}"
    else:
        text = f"{who}: {esc(action.replace('_', ' '))}"
    return f"{when(event.created_at, policy)} · {text}"


def request_details(
    request: FrRequest,
    events: Sequence[TimelineEvent],
    policy: Policy,
    post_use: PostUseRecord | None,
    now: datetime,
) -> list[Block]:
    """The whole case file of one request: summary, the justifications, then every event in order."""
    blocks: list[Block] = [
        header(f"FR search request {request.reference}"),
        section(_status_line(request, policy, now)),
        summary_fields(request, policy),
    ]
    if request.urgency_justification:
        blocks.append(
            section(f"*{forms.URGENCY_JUSTIFICATION.label}*\n{esc(request.urgency_justification, 2900)}")
        )
    for attribute, label in JUSTIFICATIONS:
        blocks.append(section(f"*{label}*\n{esc(getattr(request, attribute), 2900)}"))
    if post_use is not None:
        blocks.append(
            section(
                f"*Search outcome*: {'run' if post_use.search_run else 'not run'}; "
                f"{esc(RESULT_LABELS.get(post_use.result, post_use.result))}; "
                f"image and results {esc(post_use.handling)}: {esc(post_use.authority, 1500)}"
            )
        )
    blocks.append(header("Timeline"))
    timeline = [section(text) for text in pack([timeline_line(e, request, policy) for e in events])]
    room = MESSAGE_BLOCK_LIMIT - len(blocks)
    if len(timeline) > room:
        timeline = [
            *timeline[: room - 1],
            context(
                f"{len(timeline) - room + 1} more entries: "
                f"ask an admin for `fr-bot audit show {request.reference}`."
            ),
        ]
    return blocks + timeline


def details_modal(
    request: FrRequest,
    events: Sequence[TimelineEvent],
    policy: Policy,
    post_use: PostUseRecord | None,
    now: datetime,
) -> dict[str, Any]:
    blocks = request_details(request, events, policy, post_use, now)
    return modal(request.reference, blocks, "fr_details", "")


def requests_list(requests: list[FrRequest], policy: Policy, now: datetime) -> list[Block]:
    if not requests:
        return [section("You have no FR requests yet. Type `/fr-request` to start one.")]
    lines = [_request_line(r, policy, now) for r in requests]
    heading = "*Your FR requests*: those still open first, then the most recent"
    return [section(heading), *[section(t) for t in pack(lines)]]


def _request_line(request: FrRequest, policy: Policy, now: datetime) -> str:
    tool = esc(request.tool_snapshot["name"], 100)
    status = _status_line(request, policy, now)
    current = request.current if request.status == RequestStatus.PENDING else None
    if current is not None and any(info.answer is None for info in current.info_requests):
        # The review waits for the officer: say so where they look for what to do next.
        status += (
            "\n:grey_question: A reviewer's question waits for your answer (its DM has the Answer button)"
        )
    return f"*{request.reference}* · {tool} · case {esc(request.case_reference)}\n{status}"


def home_view(
    user_id: str,
    mine: list[FrRequest],
    awaiting: list[tuple[FrRequest, StageReview]],
    delegations: list[Delegation],
    policy: Policy,
    overview: Any | None,
    now: datetime,
) -> dict[str, Any]:
    """App Home: the user's requests, what awaits their decision, delegations, and for leads an overview."""
    blocks: list[Block] = [
        header("FR search requests"),
        actions(
            "home:top",
            button("New request", NEW_REQUEST_ACTION, "new", style="primary"),
            button("Delegate my approvals", DELEGATE_ACTION, "new"),
        ),
        header("Awaiting my decision"),
    ]
    if not awaiting:
        blocks.append(context("Nothing is waiting for you."))
    for request, stage in awaiting:
        blocks.append(
            section(
                f"*{request.reference}* · {esc(request.tool_snapshot['name'], 100)} · "
                f"{esc(URGENCY_LABELS[Urgency(request.urgency)])} · from {user(request.requester_id)}\n"
                f"*{esc(stage.stage_name)}* since {when(stage.started_at, policy)}"
            )
        )
        review = review_actions(request, stage)
        review["elements"].append(button("Details", DETAILS_ACTION, str(request.id)))
        blocks.append(review)
    blocks.append(header("My requests"))
    if not mine:
        blocks.append(context("You have no FR requests yet."))
    for request in mine:
        blocks.append(section(_request_line(request, policy, now)))
        follow_up = officer_buttons(request, now) or actions(
            f"officer:{request.id}", button("Details", DETAILS_ACTION, str(request.id))
        )
        blocks.append(follow_up)
    if delegations:
        blocks.append(header("Delegations"))
        for delegation in delegations:
            if delegation.approver_id == user_id:
                text = f"{user(delegation.deputy_id)} is your deputy"
            else:
                text = f"You are deputy for {user(delegation.approver_id)}"
            text += f" from {delegation.starts_on:%d %b %Y} to {delegation.ends_on:%d %b %Y}"
            block = section(text)
            if delegation.approver_id == user_id:
                block["accessory"] = button("Revoke", REVOKE_ACTION, str(delegation.id))
            blocks.append(block)
    if overview is not None:
        blocks.append(header("Overview (leads)"))
        pending = [
            (f"Pending: {name}", f"{count} (oldest since {when(oldest, policy)})")
            for name, count, oldest in overview.pending_by_stage
        ] or [("Pending", "none")]
        decided = ", ".join(f"{count} {status}" for status, count in sorted(overview.decided_today.items()))
        blocks.append(
            fields_section(
                [(esc(label), value) for label, value in pending[:9]] + [("Decided today", decided or "none")]
            )
        )
    if len(blocks) > HOME_BLOCK_LIMIT:
        blocks = [
            *blocks[: HOME_BLOCK_LIMIT - 1],
            context("More items are left out; see `/fr-request list`."),
        ]
    return {"type": "home", "blocks": blocks}


# --- Deadlines, reminders, escalations and the leads' digest (bot/sweeps.py) ----------------------------


def age(span: timedelta) -> str:
    """A short human length of time: "45 min", "3 h 20 min", "2 d 4 h"."""
    minutes = max(0, int(span.total_seconds() // 60))
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min"


def due_text(due_at: datetime, policy: Policy, now: datetime | None = None) -> str:
    """The due line on reviewer messages and DMs; marked overdue once `now` is past it."""
    if now is not None and now >= due_at:
        return f":warning: *Overdue*: a decision was due {when(due_at, policy)} ({age(now - due_at)} ago)"
    return f":stopwatch: Decision due by {when(due_at, policy)}"


def _first_due(request: FrRequest, policy: Policy) -> list[Block]:
    first = request.stages[0] if request.stages else None
    if first is None or first.due_at is None:
        return []
    return [context(f"{esc(first.stage_name)}: {due_text(first.due_at, policy)}")]


def mention(approver_id: str) -> str:
    """Mention a user (U…/W…) or a user group (S…); anything else is shown as escaped text."""
    if not approver_id.isalnum():
        return esc(approver_id)
    if approver_id.startswith("S"):
        return f"<!subteam^{approver_id}>"
    return f"<@{approver_id}>"


def message_link(permalink: str | None, channel: str | None, ts: str | None) -> str | None:
    """A link to a Slack message: the permalink Slack gave, else the archive URL Slack redirects."""
    if permalink:
        return permalink
    if channel and ts:
        return f"https://slack.com/archives/{channel}/p{ts.replace('.', '')}"
    return None


def linked(reference: str, link: str | None) -> str:
    # References are generated by the bot (FR-2026-00042); links come from Slack or the archive format.
    return f"<{link}|{reference}>" if link and "|" not in link and ">" not in link else f"*{esc(reference)}*"


Item = TypeVar("Item")


def capped(items: Sequence[Item], limit: int, line: Callable[[Item], str]) -> list[str]:
    """A line for each of the first `limit` items, then "and N more" for the rest. Lines past the limit
    are never shown, so never built: a backlog's reminder lists hundreds of reviews and shows ten."""
    lines = [line(item) for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"_…and {len(items) - limit} more_")
    return lines


@dataclass(frozen=True)
class OverdueItem:
    """One overdue review, as reminders and escalations show it."""

    reference: str
    urgency: str
    stage_name: str
    due_at: datetime
    link: str | None
    approvers: tuple[str, ...]
    reminders_sent: int = 0


def _urgency_label(urgency: str) -> str:
    try:
        return URGENCY_LABELS[Urgency(urgency)]
    except ValueError:
        return urgency


def _overdue_line(item: OverdueItem, policy: Policy, now: datetime) -> str:
    return (
        f"• {linked(item.reference, item.link)} · {esc(item.stage_name)} · {_urgency_label(item.urgency)}"
        f" · due {when(item.due_at, policy)} ({age(now - item.due_at)} overdue)"
    )


def _mentions(items: list[OverdueItem]) -> str:
    seen: list[str] = []
    for item in items:
        seen.extend(a for a in item.approvers if a not in seen)
    return " ".join(mention(a) for a in seen)


def reminder_message(
    channel: str, items: list[OverdueItem], policy: Policy, now: datetime, sequence: int = 0
) -> dict[str, Any]:
    """A reminder in a reviewer channel: threaded under the request for one review, one consolidated
    message listing them all when several in the channel are overdue at once."""
    if len(items) == 1:
        item = items[0]
        number = f"Reminder {sequence + 1}" if sequence else "Reminder"
        text = f"{number}: {item.reference} is overdue for {item.stage_name}"
        blocks = [
            section(
                f":alarm_clock: *{number}*: the *{esc(item.stage_name)}* decision on "
                f"{linked(item.reference, item.link)} ({_urgency_label(item.urgency)}) was due "
                f"{when(item.due_at, policy)}, {age(now - item.due_at)} ago."
            ),
            section(f"{_mentions(items)} please approve, reject or ask for information."),
        ]
        return {"channel": channel, "text": clip(escape(text), 300), "blocks": blocks}
    limit = policy.digest.list_limit
    lines = capped(items, limit, lambda item: _overdue_line(item, policy, now))
    blocks = [
        header(f"⏰ {len(items)} overdue FR reviews"),
        *[section(text) for text in pack(lines)],
        section(f"{_mentions(items)} please decide these reviews; each link opens the request."),
    ]
    text = f"Reminder: {len(items)} FR reviews in this channel are overdue"
    return {"channel": channel, "text": text, "blocks": blocks[:MESSAGE_BLOCK_LIMIT]}


def escalation_message(
    channel: str, items: list[OverdueItem], policy: Policy, now: datetime
) -> dict[str, Any]:
    """The leads' channel is told of reviews still undecided after the reminders."""
    limit = policy.digest.list_limit
    lines = capped(
        items,
        limit,
        lambda item: (
            _overdue_line(item, policy, now)
            + (f" · {item.reminders_sent} reminder{'s' if item.reminders_sent != 1 else ''} sent")
            + f" · approvers {' '.join(mention(a) for a in item.approvers)}"
        ),
    )
    title = (
        f"Escalated: {items[0].reference} is overdue at {items[0].stage_name}"
        if len(items) == 1
        else f"Escalated: {len(items)} overdue FR reviews"
    )
    blocks = [
        header(f"🚨 {title}"),
        *[section(text) for text in pack(lines)],
        context("Reviews escalate after the policy's number of reminders or multiple of the deadline."),
    ]
    return {"channel": channel, "text": clip(escape(title), 300), "blocks": blocks[:MESSAGE_BLOCK_LIMIT]}


def expiry_warning_dm(request: FrRequest, policy: Policy, now: datetime) -> dict[str, Any]:
    assert request.valid_until is not None
    left = age(request.valid_until - now)
    return _dm(
        request,
        f"Your FR approval {request.reference} expires in {left}.",
        [
            section(
                f":hourglass: The approval for *{request.reference}* "
                f"({esc(request.tool_snapshot['name'], 200)}) expires {when(request.valid_until, policy)}, "
                f"in {left}."
            ),
            context("After that the search may not be run without a new request."),
        ],
    )


def post_use_reminder_dm(request: FrRequest, days: int, now: datetime) -> dict[str, Any]:
    """The daily nudge after an approval ends until the officer records what the search did."""
    blocks = [
        section(
            f":clipboard: The approval for *{request.reference}* has ended. Record whether you ran the "
            "search, what it returned and what happened to the probe image and results: the request stays "
            "open until you do."
        )
    ]
    follow_up = officer_buttons(request, now)
    if follow_up is not None:
        blocks.append(follow_up)
    if days:
        blocks.append(context(f"Reminder {days + 1}: this goes on daily until the outcome is recorded."))
    return _dm(request, f"Record the outcome of FR request {request.reference}.", blocks)


@dataclass(frozen=True)
class RatificationItem:
    reference: str
    urgency: str
    decided_at: datetime
    approvers: tuple[str, ...]
    link: str | None


def ratification_message(channel: str, items: list[RatificationItem], policy: Policy) -> dict[str, Any]:
    """Urgent approvals given by a single stage, which the leads must now ratify."""
    limit = policy.digest.list_limit
    lines = capped(
        items,
        limit,
        lambda item: (
            f"• {linked(item.reference, item.link)} · {_urgency_label(item.urgency)} · approved "
            f"{when(item.decided_at, policy)} by {' '.join(user(a) for a in item.approvers) or '—'}"
        ),
    )
    count = len(items)
    title = f"{count} urgent FR approval{'s' if count != 1 else ''} to ratify"
    blocks = [
        header(f"📝 {title}"),
        section(
            "These were approved on an urgent route by a single stage; the policy asks the leads to "
            "ratify them afterwards."
        ),
        *[section(text) for text in pack(lines)],
    ]
    return {"channel": channel, "text": title, "blocks": blocks[:MESSAGE_BLOCK_LIMIT]}


def _hours(value: float | None) -> str:
    return "—" if value is None else age(timedelta(hours=value))


def digest_message(channel: str, summary: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """The leads' daily digest, rendered from the summary the digest sweep stored."""
    limit = policy.digest.list_limit
    counts = summary["counts"]
    decision = summary["decision_hours"]
    day = datetime.fromisoformat(summary["period_end"]).astimezone(policy.zone)
    since = datetime.fromisoformat(summary["period_start"])
    overdue, pending = summary["overdue"], summary["pending"]
    pending_total = sum(p["count"] for p in pending)
    blocks: list[Block] = [
        header(f"FR requests digest, {day.strftime('%a %d %b %Y')}"),
        context(f"Since {when(since, policy)}. Times show in your own time zone."),
        fields_section(
            [
                ("Submitted", str(counts["submitted"])),
                ("Approved", str(counts["approved"])),
                ("Rejected", str(counts["rejected"])),
                ("Withdrawn", str(counts["withdrawn"])),
                ("Expired", str(counts["expired"])),
                ("Pending reviews", str(pending_total)),
                ("Overdue", str(len(overdue))),
                ("Prohibited-tool requests", str(len(summary["prohibited"]))),
                ("Median time to decision", _hours(decision["median"])),
                ("90th percentile", _hours(decision["p90"])),
            ]
        ),
    ]
    quiet = pending_total == 0 and not any(counts.values()) and not summary["prohibited"]
    if pending_total == 0:
        text = ":white_check_mark: Nothing pending." + (
            " Nothing new since the last digest." if quiet else ""
        )
        blocks.append(section(text))
    else:
        lines = capped(
            pending,
            limit,
            lambda p: (
                f"• *{esc(p['stage'])}*: {p['count']} pending, "
                f"oldest {age(timedelta(hours=p['oldest_hours']))}"
            ),
        )
        blocks.append(section("*Pending reviews by stage*\n" + "\n".join(lines)))
    if overdue:
        lines = capped(
            overdue,
            limit,
            lambda o: (
                f"• {linked(o['reference'], o['link'])} · {esc(o['stage'])} · "
                f"{_urgency_label(o['urgency'])} · due {when(datetime.fromisoformat(o['due_at']), policy)}"
            ),
        )
        blocks.extend(section(t) for t in pack(["*Overdue*", *lines]))
    if summary["prohibited"]:
        lines = capped(
            summary["prohibited"],
            limit,
            lambda p: (
                f"• {user(p['requester'])} asked to use {esc(p['tool'], 200)} "
                f"{when(datetime.fromisoformat(p['at']), policy)}"
            ),
        )
        blocks.extend(section(t) for t in pack(["*Requests for prohibited tools (refused)*", *lines]))
    if summary["expiring"]:
        lines = capped(
            summary["expiring"],
            limit,
            lambda e: (
                f"• {linked(e['reference'], e['link'])} · valid until "
                f"{when(datetime.fromisoformat(e['valid_until']), policy)}"
            ),
        )
        hours = policy.digest.expiring_within_hours
        title = f"*Approvals expiring within {age(timedelta(hours=hours))}*"
        blocks.extend(section(t) for t in pack([title, *lines]))
    missed = [date.fromisoformat(d).strftime("%a %d %b") for d in summary.get("missed_dates", [])]
    if missed:
        blocks.append(
            context(
                f":warning: No digest was sent for {esc(', '.join(missed))}: the bot was not running at the "
                "time. This digest covers that period too."
            )
        )
    blocks.append(
        context("A digest is posted every day, even when nothing is pending, so silence means a fault.")
    )
    text = (
        f"FR digest: {counts['submitted']} submitted, {pending_total} pending, {len(overdue)} overdue"
        if not quiet
        else "FR digest: nothing pending"
    )
    return {"channel": channel, "text": text, "blocks": blocks[:MESSAGE_BLOCK_LIMIT]}


# --- Reliability: a second copy of a post (bot/landing.py) -----------------------------------------


def retired_copy_message(reference: str, live_link: str | None) -> dict[str, Any]:
    """A second copy of a post, made when a send was cut off and repeated, cut down to a pointer at the
    copy the bot keeps: no buttons, and no status that could go stale."""
    where = f"the live {linked(reference, live_link)} message" if live_link else "the other copy"
    text = (
        f":information_source: Duplicate: this message about {esc(reference)} was posted twice after an "
        f"interruption. Use {where}; this copy is no longer updated."
    )
    return {"text": f"Duplicate message about {reference}", "blocks": [section(text)]}

"""Every Block Kit view and message the bot sends is built here, from database rows and the policy.

User-typed text only ever reaches mrkdwn through `esc()`, and every text object is clipped to Slack's
limits, so the longest allowed input still renders.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

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
from storage.models import FrRequest, RequestStatus, StageReview, StageStatus

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
    policy: Policy, initial: dict[str, str] | None = None, metadata: str = ""
) -> dict[str, Any]:
    initial = initial or {}
    blocks: list[Block] = [
        section(
            "Every use of an FR search tool needs a recorded, reasoned and authorised decision. "
            "Answer each question for *this* case. Do not paste or attach any image."
        )
    ]
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


def _status_line(request: FrRequest, policy: Policy) -> str:
    badge = STATUS_BADGES.get(request.status, request.status)
    if request.status == RequestStatus.PENDING and request.current is not None:
        stage = request.current
        where = f"stage {stage.position + 1} of {len(request.stages)}"
        return f"{badge}: awaiting *{esc(stage.stage_name)}* ({where})"
    if request.status == RequestStatus.APPROVED:
        return f"{badge}: valid until {when(request.valid_until, policy)}"
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
    lines = []
    for decision in stage.decisions:
        verb = ":white_check_mark: Approved" if decision.outcome == "approve" else ":no_entry: Rejected"
        line = f"{verb} by {user(decision.approver_id)} {when(decision.created_at, policy)}"
        if decision.reason_code:
            line += f" · {esc(forms.REASON_CODES.get(decision.reason_code, decision.reason_code))}"
        line += f"\n> {esc(decision.rationale, 900)}"
        if decision.conditions:
            line += f"\n> _Conditions:_ {esc(decision.conditions, 500)}"
        lines.append(line)
    for info in stage.info_requests:
        lines.append(
            f":grey_question: {user(info.asked_by)} asked {when(info.created_at, policy)}"
            f"\n> {esc(info.question, 500)}"
        )
    return lines


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
        ],
    }


def review_message(request: FrRequest, stage: StageReview, policy: Policy) -> dict[str, Any]:
    """The message in one stage's reviewer channel; buttons only while that stage awaits decisions."""
    blocks: list[Block] = [
        header(f"FR search request {request.reference}"),
        section(_status_line(request, policy)),
        summary_fields(request, policy),
    ]
    if request.urgency_justification:
        blocks.append(
            section(f"*{forms.URGENCY_JUSTIFICATION.label}*\n{esc(request.urgency_justification, 2900)}")
        )
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
        history = [
            *history[: room - 1],
            context(
                "Older entries are left out here to fit Slack's message size; the database holds them all."
            ),
        ]
    blocks.extend(history)
    if live and stage.status == StageStatus.PENDING:
        blocks.append(review_actions(request, stage))
    title = f"FR request {request.reference} ({URGENCY_LABELS[Urgency(request.urgency)]})"
    text = f"{title} awaits {stage.stage_name}" if live else f"{title}: {request.status}"
    return {"channel": stage.channel_id, "text": clip(escape(text), 300), "blocks": blocks}


def request_summary(request: FrRequest, policy: Policy) -> list[Block]:
    """The short form of a request shown at the top of reviewer modals."""
    return [section(_status_line(request, policy)), summary_fields(request, policy)]


def decision_modal(request: FrRequest, policy: Policy, ctx: ReviewContext) -> dict[str, Any]:
    blocks = request_summary(request, policy)
    if ctx.action == "reject":
        blocks.append(select_input(forms.REASON_CODE, list(forms.REASON_CODES.items())))
    blocks.append(text_input(forms.RATIONALE))
    if ctx.action == "approve":
        blocks.append(text_input(forms.CONDITIONS))
    verb = "Approve" if ctx.action == "approve" else "Reject"
    return modal(f"{verb} {request.reference}", blocks, DECISION_CALLBACK, ctx.model_dump_json(), submit=verb)


def info_modal(request: FrRequest, policy: Policy, ctx: ReviewContext) -> dict[str, Any]:
    blocks = [*request_summary(request, policy), text_input(forms.QUESTION)]
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
            context("You will get a message here at each decision."),
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
    if form.conditions:
        blocks.append(section(f"*Conditions you must follow*\n{esc(form.conditions, 2900)}"))
    return _dm(request, text, blocks)


def info_requested_dm(request: FrRequest, stage: StageReview, asker: str, question: str) -> dict[str, Any]:
    return _dm(
        request,
        f"A reviewer has a question about your FR request {request.reference}.",
        [
            section(
                f":grey_question: {user(asker)} (*{esc(stage.stage_name)}*) asks about *{request.reference}*:"
            ),
            section(f"> {esc(question, 2900)}"),
            context("Reply to the reviewer; the review stays open meanwhile."),
        ],
    )


HELP_TEXT = (
    "*/fr-request* opens the form to ask for authority to run a facial recognition search.\n"
    "Every request records the tool, the case, the lawful purpose, and why the search is necessary, "
    "proportionate and fair. It then goes to the reviewers the force policy names; you get a direct "
    "message at each decision. Do not run a search before it is approved, and never attach an image."
)


# --- Reliability: a stray copy of a reviewer message (bot/copies.py) ----------------------------------


def retired_copy_message(request: FrRequest, stage: StageReview, policy: Policy) -> dict[str, Any]:
    """The request as it stands, without buttons, saying that decisions are taken on the other copy."""
    message = review_message(request, stage, policy)
    blocks = [block for block in message["blocks"] if block.get("type") != "actions"]
    blocks = blocks[: MESSAGE_BLOCK_LIMIT - 1]
    blocks.append(
        context(
            ":information_source: A second copy of this message was posted after an interruption. "
            "This one is no longer updated: use the other copy in this channel."
        )
    )
    return {**message, "blocks": blocks}

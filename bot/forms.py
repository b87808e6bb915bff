"""The request form: its fields, parsing Slack's `view.state.values`, and the policy's objective checks.

Field definitions live here once; the modal in `bot.views` is built from them and the parser reads them,
so a field cannot be shown under one block id and read under another. Errors are keyed by block id, as
Slack's `response_action: errors` expects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from bot.mrkdwn import clip, strip_control
from bot.policy import (
    NO_OFFENCE_SUBJECTS,
    SERIOUSNESS_LABELS,
    SERIOUSNESS_RANK,
    SUBJECT_LABELS,
    URGENCY_LABELS,
    Policy,
    Seriousness,
    SubjectCategory,
    ToolStatus,
    Urgency,
)

ERROR_LIMIT = 250  # keep inline errors readable under the field


@dataclass(frozen=True)
class TextField:
    block_id: str
    label: str
    hint: str
    max_length: int
    multiline: bool = True
    justification: bool = True  # subject to the policy's minimum length
    optional: bool = False


@dataclass(frozen=True)
class SelectField:
    block_id: str
    label: str
    hint: str
    radio: bool = False


TOOL = SelectField("tool", "FR tool", "Only tools in the force register can be requested.")
CASE_REFERENCE = TextField(
    "case_reference", "Case / crime reference", "", 64, multiline=False, justification=False
)
PURPOSE = SelectField("purpose", "Law-enforcement purpose", "DPA 2018 s.31")
PURPOSE_DETAIL = TextField(
    "purpose_detail", "What the search is for", "The question the search should answer for this case.", 1500
)
OFFENCE_CATEGORY = SelectField("offence_category", "Offence category", "")
SERIOUSNESS = SelectField("offence_seriousness", "Offence seriousness", "")
SUBJECT_CATEGORY = SelectField("subject_category", "Subject category", "Who is in the probe image.")
SUBJECT_CHILD = SelectField("subject_is_child", "Is the subject, or may they be, under 18?", "", radio=True)
IMAGE_SOURCE = SelectField(
    "image_source", "Where the probe image came from", "A reference only: never attach or paste the image."
)
IMAGE_AUTHORITY = TextField(
    "image_authority",
    "Image provenance: authority and exhibit reference",
    "Under what authority the image was obtained, and its exhibit or system reference.",
    500,
    justification=False,
)
NECESSITY = TextField(
    "necessity", "Necessity: why FR, and why now", "ECHR Art. 8 and DPA s.35: strictly necessary.", 2000
)
ALTERNATIVES = TextField(
    "alternatives",
    "Less intrusive alternatives tried",
    "What was tried or considered, and why it was not enough.",
    2000,
)
PROPORTIONALITY = TextField(
    "proportionality", "Proportionality", "Why the intrusion is justified by what is at stake.", 2000
)
COLLATERAL = TextField(
    "collateral_intrusion",
    "Collateral intrusion",
    "Others who may be affected (people in the image, matches returned) and how it is limited.",
    2000,
)
EQUALITY = TextField(
    "equality",
    "Equality considerations",
    "Public Sector Equality Duty: known demographic bias of FR and how results will be treated.",
    2000,
)
URGENCY = SelectField(
    "urgency", "Urgency", "Urgent and threat-to-life requests need a justification.", radio=True
)
URGENCY_JUSTIFICATION = TextField(
    "urgency_justification",
    "Urgency justification",
    "Required for urgent and threat-to-life requests.",
    1000,
    justification=False,
    optional=True,
)

TEXT_FIELDS = (
    CASE_REFERENCE,
    PURPOSE_DETAIL,
    IMAGE_AUTHORITY,
    NECESSITY,
    ALTERNATIVES,
    PROPORTIONALITY,
    COLLATERAL,
    EQUALITY,
    URGENCY_JUSTIFICATION,
)
# The officer's typed free text (personal data a retention purge removes); the case reference is an ID.
FREE_TEXT_FIELDS = tuple(field.block_id for field in TEXT_FIELDS if field is not CASE_REFERENCE)
# The order the officer sees them.
FIELD_ORDER = (
    TOOL,
    CASE_REFERENCE,
    PURPOSE,
    PURPOSE_DETAIL,
    OFFENCE_CATEGORY,
    SERIOUSNESS,
    SUBJECT_CATEGORY,
    SUBJECT_CHILD,
    IMAGE_SOURCE,
    IMAGE_AUTHORITY,
    NECESSITY,
    ALTERNATIVES,
    PROPORTIONALITY,
    COLLATERAL,
    EQUALITY,
    URGENCY,
    URGENCY_JUSTIFICATION,
)
ACTION_ID = "value"  # every input element uses the same action id; the block id names the field
CHILD_CHOICES = {"yes": "Yes, or possibly", "no": "No"}


def select_choices(policy: Policy, field: SelectField) -> list[tuple[str, str]]:
    """(value, label) pairs for a select field, straight from the policy where the policy owns them."""
    if field is TOOL:
        return [(t.id, _tool_label(t.name, t.status)) for t in policy.tools]
    if field is PURPOSE:
        return [(c.id, c.label) for c in policy.purposes]
    if field is OFFENCE_CATEGORY:
        return [(c.id, c.label) for c in policy.offence_categories]
    if field is SERIOUSNESS:
        return [(s.value, SERIOUSNESS_LABELS[s]) for s in reversed(Seriousness)]
    if field is SUBJECT_CATEGORY:
        return [(s.value, SUBJECT_LABELS[s]) for s in SubjectCategory]
    if field is SUBJECT_CHILD:
        return list(CHILD_CHOICES.items())
    if field is IMAGE_SOURCE:
        return [(c.id, c.label) for c in policy.image_provenance]
    if field is URGENCY:
        return [(u.value, URGENCY_LABELS[u]) for u in Urgency]
    raise KeyError(field.block_id)


def _tool_label(name: str, status: ToolStatus) -> str:
    suffix = {
        ToolStatus.APPROVED: "",
        ToolStatus.RESTRICTED: " (restricted)",
        ToolStatus.PROHIBITED: " (prohibited)",
    }
    return clip(name + suffix[status], 75)


class RequestForm(BaseModel):
    """What the officer submitted, after parsing and checking. Field names match the block ids."""

    model_config = ConfigDict(frozen=True)

    tool: str
    case_reference: str
    purpose: str
    purpose_detail: str
    offence_category: str
    offence_seriousness: Seriousness
    subject_category: SubjectCategory
    subject_is_child: bool
    image_source: str
    image_authority: str
    necessity: str
    alternatives: str
    proportionality: str
    collateral_intrusion: str
    equality: str
    urgency: Urgency
    urgency_justification: str = ""

    def initial_values(self) -> dict[str, str]:
        """The values as the modal shows them, for pre-filling a new request from this one."""
        values = self.model_dump(mode="json")
        values["subject_is_child"] = "yes" if self.subject_is_child else "no"
        return {key: str(value) for key, value in values.items()}


class FormErrors(Exception):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = {key: clip(message, ERROR_LIMIT) for key, message in errors.items()}


def read_state(state_values: Any) -> dict[str, str]:
    """Pull each request field's raw value out of Slack's `view.state.values`, tolerating bad payloads."""
    return read_fields(state_values, tuple(field.block_id for field in FIELD_ORDER))


def clean_text(value: str) -> str:
    """Strip invisible control characters and surrounding space; keep the officer's line breaks."""
    return strip_control(value).strip()


def tool_barred(policy: Policy, tool_id: str) -> str | None:
    """Why the policy in force bars a search with the tool (it is not in the register, it is prohibited,
    or its kind is authorised under a process of its own), or None: checked when a request is made and
    again when it is approved, as the register may have changed meanwhile."""
    tool = policy.tool(tool_id)
    if tool is None:
        return "That tool is no longer in the force's register."
    if tool.status is ToolStatus.PROHIBITED:
        return f"{tool.name} is prohibited in this force. {tool.note}".strip()
    if tool.category in policy.own_process:
        return policy.own_process[tool.category]
    return None


# A reasoned answer has at least this many different words (of two letters or more): "n/a n/a n/a …" or
# forty x's reach any minimum length and say nothing (Bridges: the criteria must be objective).
MIN_DISTINCT_WORDS = 4
_WORD = re.compile(r"[^\W_]{2,}")


def shortfall(text: str, minimum: int) -> Literal["short", "filler"] | None:
    """How a typed reason falls short of a reasoned answer, or None. Its length is counted with runs of
    spaces and line breaks as one space, so blank lines do not make up the minimum; enough characters in
    too few distinct words ("n/a n/a ...", a row of x's) is filler."""
    spread = " ".join(text.split())
    if len(spread) < minimum:
        return "short"
    if len(set(_WORD.findall(spread.lower()))) < MIN_DISTINCT_WORDS:
        return "filler"
    return None


def justification_problem(text: str, minimum: int) -> str | None:
    """Why a justification is not a reasoned answer, in the words the form shows, or None."""
    match shortfall(text, minimum):
        case "short":
            return f"Give a reasoned answer of at least {minimum} characters specific to this case."
        case "filler":
            return "Give a reasoned answer in words, specific to this case, not filler."
    return None


def _no_repeated_answers(values: dict[str, Any], errors: dict[str, str]) -> None:
    """Each justification answers its own question: one pasted into several boxes answers none of the
    others. The later box is marked, naming the one it repeats."""
    seen: dict[str, TextField] = {}
    for field in TEXT_FIELDS:
        text = values.get(field.block_id)
        if not field.justification or not text or field.block_id in errors:
            continue
        key = " ".join(text.lower().split())
        if key in seen:
            errors[field.block_id] = (
                f"This repeats your answer to '{seen[key].label}': say what is specific to this question."
            )
        else:
            seen[key] = field


def check_request(policy: Policy, raw: dict[str, str]) -> RequestForm:
    """Apply the policy's objective criteria; raise FormErrors naming each failing field."""
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}

    for field in FIELD_ORDER:
        if isinstance(field, SelectField):
            allowed = {value for value, _ in select_choices(policy, field)}
            chosen = raw.get(field.block_id, "")
            if chosen not in allowed:
                errors[field.block_id] = "Choose one of the options."
            else:
                values[field.block_id] = chosen
            continue
        text = clean_text(raw.get(field.block_id, ""))
        if len(text) > field.max_length:
            errors[field.block_id] = f"Keep this to {field.max_length} characters (now {len(text)})."
        elif not text and not field.optional:
            errors[field.block_id] = "This is required."
        elif field.justification and text:
            problem = justification_problem(text, policy.min_justification_length)
            if problem is not None:
                errors[field.block_id] = problem
        values[field.block_id] = text
    _no_repeated_answers(values, errors)

    reference = values.get("case_reference", "").upper()
    values["case_reference"] = reference
    if "case_reference" not in errors and not re.fullmatch(policy.case_reference.pattern, reference):
        errors["case_reference"] = (
            f"Not a valid case reference; expected a form like {policy.case_reference.example}."
        )

    tool = policy.tool(values.get("tool", ""))
    if tool is not None:
        barred = tool_barred(policy, tool.id)
        if barred is not None:
            errors["tool"] = barred
        subject = values.get("subject_category")
        seriousness = values.get("offence_seriousness")
        if tool.allowed_subjects is not None and subject and subject not in tool.allowed_subjects:
            allowed = ", ".join(SUBJECT_LABELS[s].lower() for s in tool.allowed_subjects)
            errors.setdefault("subject_category", f"{tool.name} may only be used for: {allowed}.")
        if (
            tool.min_seriousness is not None
            and seriousness
            and subject not in tool.seriousness_exempt_subjects
            and SERIOUSNESS_RANK[Seriousness(seriousness)] < SERIOUSNESS_RANK[tool.min_seriousness]
        ):
            errors.setdefault(
                "offence_seriousness",
                f"{tool.name} may only be used for offences of at least "
                f"{SERIOUSNESS_LABELS[tool.min_seriousness].split(' (')[0].lower()} seriousness.",
            )

    if (
        values.get("offence_seriousness") == Seriousness.NOT_APPLICABLE
        and values.get("subject_category") not in NO_OFFENCE_SUBJECTS
    ):
        errors.setdefault(
            "offence_seriousness", "'No offence' is only for missing persons and unidentified deceased."
        )

    urgent = values.get("urgency") in (Urgency.URGENT, Urgency.THREAT_TO_LIFE)
    shortest_urgency_reason = max(1, min(policy.min_justification_length, 20))
    too_short = len(values.get("urgency_justification", "")) < shortest_urgency_reason
    if urgent and too_short and "urgency_justification" not in errors:
        errors["urgency_justification"] = "Explain why this cannot wait for routine review."

    if errors:
        raise FormErrors(errors)
    values["subject_is_child"] = values["subject_is_child"] == "yes"
    return RequestForm.model_validate(values)


# --- The reviewer's decision and request-for-information forms -------------------------------------

REASON_CODES = {
    "not_necessary": "Not necessary",
    "not_proportionate": "Not proportionate",
    "alternatives_not_exhausted": "Less intrusive alternatives not exhausted",
    "insufficient_information": "Insufficient information",
    "tool_not_appropriate": "Tool not appropriate",
    "no_lawful_basis": "No lawful basis",
    "other": "Other (explain in the rationale)",
}
RATIONALE = TextField("rationale", "Rationale", "Recorded in the audit trail and shown to the officer.", 2000)
CONDITIONS = TextField(
    "conditions",
    "Conditions (optional)",
    "E.g. limits on retention or on how results may be used.",
    1000,
    justification=False,
    optional=True,
)
REASON_CODE = SelectField("reason_code", "Reason", "")
QUESTION = TextField(
    "question", "What do you need to know?", "Sent to the officer; recorded.", 1000, justification=False
)
MIN_RATIONALE = 20


class DecisionForm(BaseModel):
    model_config = ConfigDict(frozen=True)

    rationale: str
    conditions: str = ""
    reason_code: str | None = None


def check_decision(raw: dict[str, str], outcome: str) -> DecisionForm:
    errors: dict[str, str] = {}
    rationale = clean_text(raw.get(RATIONALE.block_id, ""))
    conditions = clean_text(raw.get(CONDITIONS.block_id, "")) if outcome == "approve" else ""
    reason = raw.get(REASON_CODE.block_id) if outcome == "reject" else None
    # Shown to the officer and kept in the audit trail as the decision's reasons: words, not filler.
    problem = shortfall(rationale, MIN_RATIONALE)
    if problem == "short":
        errors[RATIONALE.block_id] = f"Record your reasons in at least {MIN_RATIONALE} characters."
    elif problem == "filler":
        errors[RATIONALE.block_id] = "Record your reasons in words, not filler."
    elif len(rationale) > RATIONALE.max_length:
        errors[RATIONALE.block_id] = f"Keep this to {RATIONALE.max_length} characters."
    if len(conditions) > CONDITIONS.max_length:
        errors[CONDITIONS.block_id] = f"Keep this to {CONDITIONS.max_length} characters."
    if outcome == "reject" and reason not in REASON_CODES:
        errors[REASON_CODE.block_id] = "Choose a reason."
    if errors:
        raise FormErrors(errors)
    return DecisionForm(rationale=rationale, conditions=conditions, reason_code=reason)


def check_question(raw: dict[str, str]) -> str:
    question = clean_text(raw.get(QUESTION.block_id, ""))
    if len(question) < 10:
        raise FormErrors({QUESTION.block_id: "Ask a question of at least 10 characters."})
    if len(question) > QUESTION.max_length:
        raise FormErrors({QUESTION.block_id: f"Keep this to {QUESTION.max_length} characters."})
    return question


def read_fields(state_values: Any, block_ids: tuple[str, ...]) -> dict[str, str]:
    """Each named block's selected option value or typed value; missing or malformed blocks are skipped."""
    raw: dict[str, str] = {}
    if not isinstance(state_values, dict):
        return raw
    for block_id in block_ids:
        block = state_values.get(block_id)
        element = block.get(ACTION_ID) if isinstance(block, dict) else None
        if not isinstance(element, dict):
            continue
        option = element.get("selected_option")
        if isinstance(option, dict) and isinstance(option.get("value"), str):
            raw[block_id] = option["value"]
            continue
        # Whichever key this element type reports its value under (text, user picker, date picker).
        for key in ("value", "selected_user", "selected_date"):
            if isinstance(element.get(key), str):
                raw[block_id] = element[key]
                break
    return raw


# --- The officer's answer, the reviewer's comment, the post-use record, delegation ---------------------

ANSWER = TextField(
    "answer",
    "Your answer",
    "Added to the request's record; the question stays as asked.",
    2000,
    justification=False,
)
COMMENT = TextField(
    "comment", "Comment", "Shown in the request's timeline; does not decide.", 1000, justification=False
)
SEARCH_RUN = SelectField("search_run", "Did you run the search?", "", radio=True)
SEARCH_RESULT = SelectField(
    "search_result",
    "What did it return?",
    "A possible match is intelligence only and must be corroborated.",
    radio=True,
)
HANDLING = SelectField("handling", "Probe image and results", "", radio=True)
HANDLING_AUTHORITY = TextField(
    "handling_authority",
    "Deleted when, or retained under what authority",
    "E.g. 'Deleted from the tool and local storage on 3 March' or "
    "'Retained as exhibit JS/4 under MoPI group 2'.",
    500,
    justification=False,
)
POST_USE_NOTES = TextField("post_use_notes", "Notes (optional)", "", 1000, justification=False, optional=True)
DEPUTY = SelectField("deputy", "Deputy", "They may decide in your place in this date range only.")
STARTS_ON = SelectField("starts_on", "From", "")
ENDS_ON = SelectField("ends_on", "Until (inclusive)", "")

YES_NO = {"yes": "Yes", "no": "No"}
SEARCH_RESULTS = {
    "no_match": "No match",
    "possible_match": "Possible match (intelligence only, to be corroborated)",
}
HANDLING_CHOICES = {"deleted": "Deleted", "retained": "Retained"}
MAX_DELEGATION_DAYS = 90


class PostUseForm(BaseModel):
    model_config = ConfigDict(frozen=True)

    search_run: bool
    result: str  # not_run | no_match | possible_match
    handling: str  # deleted | retained
    authority: str
    notes: str = ""


class DelegationForm(BaseModel):
    model_config = ConfigDict(frozen=True)

    deputy_id: str
    starts_on: date
    ends_on: date


def _bounded_text(raw: dict[str, str], field: TextField, minimum: int, errors: dict[str, str]) -> str:
    text = clean_text(raw.get(field.block_id, ""))
    if len(text) > field.max_length:
        errors[field.block_id] = f"Keep this to {field.max_length} characters."
    elif len(text) < minimum and not (field.optional and not text):
        errors[field.block_id] = (
            f"Write at least {minimum} characters." if minimum > 1 else "This is required."
        )
    return text


def _one_text(raw: dict[str, str], field: TextField, minimum: int) -> str:
    errors: dict[str, str] = {}
    text = _bounded_text(raw, field, minimum, errors)
    if errors:
        raise FormErrors(errors)
    return text


def check_answer(raw: dict[str, str]) -> str:
    return _one_text(raw, ANSWER, 2)


def check_comment(raw: dict[str, str]) -> str:
    return _one_text(raw, COMMENT, 2)


def check_post_use(raw: dict[str, str]) -> PostUseForm:
    errors: dict[str, str] = {}
    run = raw.get(SEARCH_RUN.block_id)
    if run not in YES_NO:
        errors[SEARCH_RUN.block_id] = "Choose one."
    result = raw.get(SEARCH_RESULT.block_id) if run == "yes" else "not_run"
    if run == "yes" and result not in SEARCH_RESULTS:
        errors[SEARCH_RESULT.block_id] = "Say what the search returned."
    handling = raw.get(HANDLING.block_id)
    if handling not in HANDLING_CHOICES:
        errors[HANDLING.block_id] = "Choose one."
    authority = _bounded_text(raw, HANDLING_AUTHORITY, 10, errors)
    notes = _bounded_text(raw, POST_USE_NOTES, 0, errors)
    if errors:
        raise FormErrors(errors)
    return PostUseForm(
        search_run=run == "yes", result=str(result), handling=str(handling), authority=authority, notes=notes
    )


def check_delegation(raw: dict[str, str], approver_id: str, today: date) -> DelegationForm:
    errors: dict[str, str] = {}
    deputy = raw.get(DEPUTY.block_id, "")
    if not re.fullmatch(r"[UW][A-Z0-9]{2,}", deputy):
        errors[DEPUTY.block_id] = "Choose a person."
    elif deputy == approver_id:
        errors[DEPUTY.block_id] = "Choose someone other than yourself."
    dates: dict[str, date] = {}
    for field in (STARTS_ON, ENDS_ON):
        try:
            dates[field.block_id] = date.fromisoformat(raw.get(field.block_id, ""))
        except ValueError:
            errors[field.block_id] = "Choose a date."
    starts, ends = dates.get(STARTS_ON.block_id), dates.get(ENDS_ON.block_id)
    if starts is not None and starts < today:
        errors[STARTS_ON.block_id] = "A delegation cannot start in the past."
    if starts is not None and ends is not None:
        if ends < starts:
            errors[ENDS_ON.block_id] = "The end must be on or after the start."
        elif (ends - starts).days >= MAX_DELEGATION_DAYS:
            errors[ENDS_ON.block_id] = f"Delegate for at most {MAX_DELEGATION_DAYS} days at a time."
    if errors:
        raise FormErrors(errors)
    assert starts is not None and ends is not None
    return DelegationForm(deputy_id=deputy, starts_on=starts, ends_on=ends)

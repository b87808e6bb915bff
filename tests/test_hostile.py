"""Property-based tests: arbitrary, hostile and maximum-length input never breaks the bot's parsers and never
produces a message or modal Slack would refuse.

- The form parser (`read_state`, `check_request`, the decision and question checks) raises nothing but
  FormErrors for any JSON-shaped state.
- The policy loader raises nothing but PolicyError for any text, and for the test policy with any part
  replaced by arbitrary data.
- Every renderer, fed arbitrary unicode at the stored maximum lengths, gives Block Kit that passes the
  schema in the Slack specs (the stand-in's validator), within Slack's limits, with typed text unable to
  mention, ping or link.
"""

from __future__ import annotations

import contextlib
import copy
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import forms, views
from bot.forms import DecisionForm, FormErrors
from bot.policy import LoadedPolicy, Policy, PolicyError, Seriousness, SubjectCategory, Urgency, parse_policy
from storage.models import Decision, FrRequest, InfoRequest, RequestStatus, StageReview, StageStatus
from tests.conftest import TEST_POLICY, specs_dir
from tests.slackstub.specs import BlockKit, load_specs

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
POLICY = parse_policy(TEST_POLICY, "test-policy.yml").policy

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40)
json_like = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=20,
)
HOSTILE = [
    "<!channel>",
    "<!here>",
    "<!everyone>",
    "@channel",
    "@here",
    "<@U0BOSS>",
    "<#C0SECRET>",
    "<https://evil.example|click here>",
    "<mailto:a@b.c|mail>",
    "&amp;",
    "&",
    "<",
    ">",
    "*bold*",
    "_it_",
    "~s~",
    "`code`",
    "```",
    "> quote",
    "\x00",
    "\x07",
    "\x1b[31m",
    "\u202e",
    "\u200b",
    "\ufeff",
    "\n",
    "é",
    "👮",
    "𝕏",
]
hostile_text = st.lists(st.sampled_from(HOSTILE) | st.text(max_size=8), max_size=12).map("".join)


def sized_text(limit: int) -> st.SearchStrategy[str]:
    """Any unicode, often at exactly the limit, often hostile."""
    # Exactly-`limit` strings are built by repeating a short arbitrary piece: as hostile, far less data.
    return st.one_of(
        st.text(max_size=min(limit, 60)),
        st.text(min_size=1, max_size=12).map(lambda piece: (piece * limit)[:limit]),
        hostile_text.map(lambda text: text[:limit]),
        st.lists(st.sampled_from(HOSTILE), min_size=1, max_size=6).map(
            lambda parts: ("".join(parts) * limit)[:limit]
        ),
    )


@pytest.fixture(scope="module")
def block_kit() -> BlockKit:
    return load_specs(specs_dir()).block_kit


# --- The form parser ------------------------------------------------------------------------------


def slackish_state() -> st.SearchStrategy[Any]:
    """Arbitrary JSON, and dictionaries shaped like view.state.values with arbitrary leaves."""
    entry = st.fixed_dictionaries(
        {},
        optional={
            "type": json_like,
            "value": json_like | sized_text(3000),
            "selected_option": json_like | st.fixed_dictionaries({"value": json_like | st.text(max_size=30)}),
        },
    )
    block_ids = st.sampled_from([f.block_id for f in forms.FIELD_ORDER] + ["rationale", "question", "x"])
    shaped = st.dictionaries(
        block_ids, st.dictionaries(st.just(forms.ACTION_ID) | st.text(max_size=5), entry)
    )
    return json_like | shaped


@SETTINGS
@given(state=slackish_state())
def test_form_parser_raises_only_form_errors(state: Any) -> None:
    raw = forms.read_state(state)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items())
    try:
        form = forms.check_request(POLICY, raw)
    except FormErrors as exc:
        assert exc.errors and all(len(message) <= forms.ERROR_LIMIT for message in exc.errors.values())
        assert set(exc.errors) <= {f.block_id for f in forms.FIELD_ORDER}
    else:
        assert POLICY.tool(form.tool) is not None
    decision_raw = forms.read_fields(
        state, (forms.RATIONALE.block_id, forms.CONDITIONS.block_id, "reason_code")
    )
    for outcome in ("approve", "reject"):
        with contextlib.suppress(FormErrors):
            forms.check_decision(decision_raw, outcome)
    with contextlib.suppress(FormErrors):
        forms.check_question(forms.read_fields(state, (forms.QUESTION.block_id,)))


# --- The policy loader ----------------------------------------------------------------------------


@SETTINGS
@given(text=st.text(max_size=400) | hostile_text)
def test_policy_loader_raises_only_policy_error_for_any_text(text: str) -> None:
    try:
        loaded = parse_policy(text, "fuzz.yml")
    except PolicyError as exc:
        assert str(exc).startswith("fuzz.yml")
    else:
        assert isinstance(loaded, LoadedPolicy)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


BASE = yaml.safe_load(TEST_POLICY)
PATHS = _paths(BASE)


@SETTINGS
@given(path=st.sampled_from(PATHS), replacement=json_like | sized_text(300), delete=st.booleans())
def test_policy_loader_raises_only_policy_error_for_any_mapping(
    path: tuple[Any, ...], replacement: Any, delete: bool
) -> None:
    data = copy.deepcopy(BASE)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    try:
        loaded = parse_policy(yaml.safe_dump(data, allow_unicode=True), "fuzz.yml")
    except PolicyError as exc:
        assert str(exc).startswith("fuzz.yml")
    else:
        assert loaded.policy.stages and loaded.policy.tools


# --- Renderers ------------------------------------------------------------------------------------

MOMENT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@st.composite
def requests(draw: st.DrawFn) -> FrRequest:
    """A stored request as the views read it, with every typed field arbitrary and up to its limit."""
    policy: Policy = POLICY
    text = {field.block_id: draw(sized_text(field.max_length)) for field in forms.TEXT_FIELDS}
    tool = draw(st.sampled_from(policy.tools))
    snapshot = tool.model_dump(mode="json")
    snapshot["name"] = draw(sized_text(100))
    snapshot["jurisdiction"] = draw(sized_text(100))
    snapshot["dpia_reference"] = draw(st.none() | sized_text(64))
    stage_count = draw(st.integers(1, 3))
    status = draw(st.sampled_from([RequestStatus.PENDING, RequestStatus.APPROVED, RequestStatus.REJECTED]))
    current = draw(st.integers(0, stage_count - 1)) if status == RequestStatus.PENDING else None
    request = FrRequest(
        id=draw(st.integers(1, 10**12)),
        reference=f"FR-2026-{draw(st.integers(1, 99999)):05d}",
        requester_id="UOFFICER",
        status=status,
        tool_id=tool.id,
        tool_snapshot=snapshot,
        purpose=draw(st.sampled_from([p.id for p in policy.purposes])),
        offence_category=draw(st.sampled_from([c.id for c in policy.offence_categories])),
        offence_seriousness=draw(st.sampled_from(list(Seriousness))).value,
        subject_category=draw(st.sampled_from(list(SubjectCategory))).value,
        subject_is_child=draw(st.booleans()),
        image_source=draw(st.sampled_from([p.id for p in policy.image_provenance])),
        urgency=draw(st.sampled_from(list(Urgency))).value,
        route_name=draw(sized_text(100)),
        policy_version="0123456789abcdef",
        current_stage=current,
        created_at=MOMENT,
        updated_at=MOMENT,  # as a stored request has it: the officer's DMs are drawn as of then
        decided_at=None if status == RequestStatus.PENDING else MOMENT,
        valid_until=MOMENT + timedelta(hours=72) if status == RequestStatus.APPROVED else None,
        **text,
    )
    for position in range(stage_count):
        stage = StageReview(
            id=position + 1,
            position=position,
            stage_id=f"stage{position}",
            stage_name=draw(sized_text(100)),
            channel_id="C0SUPER",
            required_approvals=draw(st.integers(1, 5)),
            status=StageStatus.PENDING if position == current else StageStatus.APPROVED,
        )
        for n in range(draw(st.integers(0, 4))):
            stage.decisions.append(
                Decision(
                    approver_id=f"UAPPROVER{n}",
                    outcome=draw(st.sampled_from(["approve", "reject"])),
                    rationale=draw(sized_text(forms.RATIONALE.max_length)),
                    conditions=draw(sized_text(forms.CONDITIONS.max_length)),
                    reason_code=draw(st.none() | st.sampled_from(sorted(forms.REASON_CODES))),
                    policy_version="0123456789abcdef",
                    created_at=MOMENT,
                )
            )
        for _ in range(draw(st.integers(0, 30))):  # many questions push against the 50-block limit
            stage.info_requests.append(
                InfoRequest(
                    asked_by="UASKER", question=draw(sized_text(forms.QUESTION.max_length)), created_at=MOMENT
                )
            )
        request.stages.append(stage)
    return request


ALLOWED_MARKUP = re.compile(r"<(@U[A-Z0-9]+|!date\^\d+\^[^|>]*\|[^>]*)>")


def mrkdwn_texts(value: Any) -> list[str]:
    """Every text Slack parses for markup: mrkdwn text objects (plain_text is shown literally)."""
    if isinstance(value, dict):
        if value.get("type") == "mrkdwn" and isinstance(value.get("text"), str):
            return [value["text"]]
        return [text for child in value.values() for text in mrkdwn_texts(child)]
    if isinstance(value, list):
        return [text for child in value for text in mrkdwn_texts(child)]
    return []


def assert_no_forged_markup(rendered: dict[str, Any]) -> None:
    """Typed text cannot mention, ping or link: the only <…> markup is the bot's own user and date tags."""
    texts = mrkdwn_texts(rendered)
    if isinstance(rendered.get("text"), str):
        texts.append(rendered["text"])  # a message's notification text is parsed as mrkdwn too
    for text in texts:
        mentioned = set(re.findall(r"<@(U[A-Z0-9]+)>", text))
        assert mentioned <= {"UOFFICER", "UASKER", "USUP1"} | {f"UAPPROVER{n}" for n in range(4)}, text
        leftover = ALLOWED_MARKUP.sub("", text)
        for forged in ("<!", "<#", "<@", "<http", "<mailto"):
            assert forged not in leftover, (forged, text)
        assert not re.search(r"(?<![\w\u2060])@(channel|here|everyone)\b", leftover), text


def assert_valid_message(block_kit: BlockKit, message: dict[str, Any]) -> None:
    assert 0 < len(message["text"]) <= 4000
    assert block_kit.message_block_errors(message["blocks"]) == []
    assert len(message["blocks"]) <= views.MESSAGE_BLOCK_LIMIT
    assert_no_forged_markup(message)


def assert_valid_modal(block_kit: BlockKit, view: dict[str, Any]) -> None:
    assert block_kit.view_errors(view, "modal") == []
    assert len(view.get("private_metadata", "")) <= 3000
    assert_no_forged_markup(view)


@SETTINGS
@given(request=requests())
def test_reviewer_messages_are_valid_block_kit(block_kit: BlockKit, request: FrRequest) -> None:
    for stage in request.stages:
        assert_valid_message(block_kit, views.review_message(request, stage, POLICY, MOMENT))


@SETTINGS
@given(
    request=requests(),
    rationale=sized_text(forms.RATIONALE.max_length),
    conditions=sized_text(forms.CONDITIONS.max_length),
    question=sized_text(forms.QUESTION.max_length),
    outcome=st.sampled_from(["approve", "reject"]),
)
def test_direct_messages_are_valid_block_kit(
    block_kit: BlockKit, request: FrRequest, rationale: str, conditions: str, question: str, outcome: str
) -> None:
    stage = request.stages[0]
    form = DecisionForm(rationale=rationale or "x", conditions=conditions, reason_code="other")
    assert_valid_message(block_kit, views.submitted_dm(request, POLICY))
    assert_valid_message(block_kit, views.decision_dm(request, stage, "USUP1", outcome, form, POLICY))
    info = InfoRequest(id=1, asked_by="USUP1", question=question or "x")
    assert_valid_message(block_kit, views.info_requested_dm(request, stage, info))


@SETTINGS
@given(request=requests(), action=st.sampled_from(["approve", "reject", "request_info"]))
def test_reviewer_modals_are_valid_block_kit(block_kit: BlockKit, request: FrRequest, action: str) -> None:
    ctx = views.ReviewContext(
        request_id=request.id, position=0, action=action, channel_id="C0SUPER", message_ts="1.2"
    )
    view = (
        views.info_modal(request, POLICY, ctx, MOMENT)
        if action == "request_info"
        else views.decision_modal(request, POLICY, ctx, MOMENT)
    )
    assert_valid_modal(block_kit, view)
    assert views.ReviewContext.model_validate_json(view["private_metadata"]) == ctx


@SETTINGS
@given(
    initial=st.dictionaries(st.sampled_from([f.block_id for f in forms.FIELD_ORDER]), sized_text(3000)),
    title=sized_text(100),
    text=sized_text(3000),
)
def test_request_and_notice_modals_are_valid_block_kit(
    block_kit: BlockKit, initial: dict[str, str], title: str, text: str
) -> None:
    assert_valid_modal(block_kit, views.request_modal(POLICY, initial))
    notice = views.notice_modal(title, views.esc(text))
    assert block_kit.view_errors(notice, "modal") == []
    assert_no_forged_markup(notice)

"""Every Block Kit view and message the bot builds is accepted by Slack, even for the longest, nastiest input.

The contract is Slack's Block Kit JSON Schema from the shared specs folder (FRBOT_SLACK_SPECS); without
it these tests skip. Requests, stages, decisions, questions, answers, comments, post-use records,
delegations and audit events come from running the real workflow and loading the rows back, so the views
see exactly what production renders.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from sqlalchemy import select

from bot import forms, views
from bot.forms import (
    DecisionForm,
    DelegationForm,
    check_answer,
    check_comment,
    check_decision,
    check_post_use,
    check_question,
    check_request,
    clean_text,
)
from bot.home import HomePublisher
from bot.mrkdwn import KEEP, ZWJ, escape, strip_control
from bot.policy import LoadedPolicy
from bot.workflow import MODAL_UPDATE, Decided, Refusal, RequestView, Workflow
from storage.db import transaction
from storage.models import FrRequest, InfoRequest, OutboxMessage, RequestStatus, StageStatus
from tests.conftest import FakeClock, specs_dir, valid_form_values

REQUESTER = "UOFFICER"
DEPUTY = "UDEPUTY"
LEAD = "ULEAD1"  # a lead in the test policy
ACTORS = {REQUESTER, DEPUTY, LEAD, "USUP1", "USUP2", "UAUTH1", "UAUTH2", "UDPO1", "UNOBODY"}

# Everything Slack would treat as markup, plus emoji and astral-plane characters. No format characters
# (Cf), so clean_text keeps the full length and each field really is at its max_length when stored.
EVIL = (
    "&<>*_~` <!channel> <!here> <@U123> <#C123> <https://evil.example|click> @channel @here @everyone "
    "&amp; &lt;b&gt; *bold* _it_ ~del~ `code` > quote\n😀 𝕏 𝄞 🇬🇧 "
)
FORBIDDEN_IN_MRKDWN = ("<!channel>", "<!here>", "<!everyone>", "<@U123>", "<#C123>", "<https://evil")
# The only `<…>` sequences the bot itself may put in mrkdwn: Slack dates and mentions of real user IDs.
BOT_MARKUP = re.compile(r"<!date\^\d+\^\{date_short_pretty\} \{time\}\|[^<>|]+>|<@([UW][A-Z0-9]+)>")
BARE_AMPERSAND = re.compile(r"&(?!amp;|lt;|gt;)")
BROADCAST = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)


def longest(length: int, tag: str = "") -> str:
    """Text of exactly `length` characters (after the form's cleaning) made of Slack markup, after `tag`
    (so that each box of a form holds its own answer)."""
    text = (tag + EVIL * (length // len(EVIL) + 1))[: length - 1] + "!"
    assert len(clean_text(text)) == length
    return text


# --- The Block Kit contract -------------------------------------------------------------------------


class BlockKit:
    """Validators for Slack's Block Kit schema: messages (the root) and views (its `$defs`)."""

    def __init__(self, root: dict[str, Any]) -> None:
        Draft202012Validator.check_schema(root)
        self.root = root
        self.registry: Registry = Registry().with_resource(root["$id"], Resource.from_contents(root))
        self.message = Draft202012Validator(root, registry=self.registry)
        self.modal = self.validator("modal_view")
        self.home = self.validator("home_view")

    def validator(self, definition: str) -> Draft202012Validator:
        """A validator for one `$defs` entry, by a small schema that refers into the root."""
        reference = {"$ref": f"{self.root['$id']}#/$defs/{definition}"}
        return Draft202012Validator(reference, registry=self.registry)

    def explain(self, validator: Draft202012Validator, instance: Any) -> str:
        """Blocks are a oneOf union, so re-check each block against its own type for a useful message."""
        lines = []
        blocks = instance if isinstance(instance, list) else instance.get("blocks", [])
        for index, block in enumerate(blocks):
            definition = f"{block.get('type')}_block"
            if definition in self.root["$defs"]:
                error = best_match(self.validator(definition).iter_errors(block))
                if error is not None:
                    where = "/".join(str(part) for part in error.absolute_path)
                    lines.append(f"block {index} ({block['type']}) {where}: {error.message[:300]}")
        fallback = [e.message[:300] for e in validator.iter_errors(instance)][:5]
        return "\n".join(lines or fallback)


@pytest.fixture(scope="session")
def block_kit() -> BlockKit:
    path = specs_dir() / "block-kit" / "slack-block-kit.schema.json"
    return BlockKit(json.loads(path.read_text(encoding="utf-8")))


def mrkdwn_texts(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if node.get("type") == "mrkdwn" and isinstance(node.get("text"), str):
            yield node["text"]
        for value in node.values():
            yield from mrkdwn_texts(value)
    elif isinstance(node, list):
        for item in node:
            yield from mrkdwn_texts(item)


def assert_safe_mrkdwn(text: str) -> None:
    """No user-typed markup survives: only the bot's own dates and mentions of known users."""
    for forbidden in FORBIDDEN_IN_MRKDWN:
        assert forbidden not in text, f"unescaped {forbidden!r} in {text[:200]!r}"
    for match in BOT_MARKUP.finditer(text):
        assert match.group(1) is None or match.group(1) in ACTORS, match.group(0)
    rest = re.sub(r"(?m)^> ", "", BOT_MARKUP.sub("", text))  # the bot quotes user text with "> "
    assert "<" not in rest and ">" not in rest, rest[:300]
    assert not BARE_AMPERSAND.search(text), text[:300]
    assert not BROADCAST.search(text), text[:300]


def block_ids_are_unique(blocks: list[dict[str, Any]]) -> None:
    ids = [block["block_id"] for block in blocks if "block_id" in block]
    assert len(ids) == len(set(ids)), ids


def check_blocks(block_kit: BlockKit, blocks: list[dict[str, Any]]) -> None:
    """Blocks for a message (chat.postMessage, an ephemeral reply or a thread note)."""
    assert block_kit.message.is_valid(blocks), block_kit.explain(block_kit.message, blocks)
    assert len(blocks) <= views.MESSAGE_BLOCK_LIMIT  # the schema allows 100; messages take 50
    block_ids_are_unique(blocks)
    for text in mrkdwn_texts(blocks):
        assert_safe_mrkdwn(text)


def check_message(block_kit: BlockKit, message: dict[str, Any]) -> None:
    check_blocks(block_kit, message["blocks"])
    # The fallback text shows in notifications and is parsed as mrkdwn too.
    assert isinstance(message["text"], str) and 0 < len(message["text"]) <= 4000
    assert_safe_mrkdwn(message["text"])


def check_home(block_kit: BlockKit, view: dict[str, Any]) -> None:
    assert block_kit.home.is_valid(view), block_kit.explain(block_kit.home, view)
    block_ids_are_unique(view["blocks"])
    for text in mrkdwn_texts(view["blocks"]):
        assert_safe_mrkdwn(text)


def check_modal(block_kit: BlockKit, view: dict[str, Any]) -> None:
    assert block_kit.modal.is_valid(view), block_kit.explain(block_kit.modal, view)
    block_ids_are_unique(view["blocks"])
    for text in mrkdwn_texts(view["blocks"]):
        assert_safe_mrkdwn(text)
    for block in view["blocks"]:
        element = block.get("element", {})
        if "initial_value" in element:
            assert len(element["initial_value"]) <= element["max_length"]
        if "initial_option" in element:
            assert element["initial_option"] in element["options"]
    assert len(view.get("private_metadata", "")) <= 3000


# --- Realistic rows, from the real workflow -------------------------------------------------------

LONG_APPROVAL_ANSWERS = {
    "rationale": longest(forms.RATIONALE.max_length),
    "conditions": longest(forms.CONDITIONS.max_length),
}
LONG_APPROVAL = check_decision(LONG_APPROVAL_ANSWERS, "approve")
LONG_REJECTION_ANSWERS = {
    "rationale": longest(forms.RATIONALE.max_length),
    "reason_code": "alternatives_not_exhausted",
}
LONG_REJECTION = check_decision(LONG_REJECTION_ANSWERS, "reject")
LONG_QUESTION = check_question({"question": longest(forms.QUESTION.max_length)})
LONG_ANSWER = check_answer({"answer": longest(forms.ANSWER.max_length)})
LONG_COMMENT = check_comment({"comment": longest(forms.COMMENT.max_length)})
LONG_POST_USE_ANSWERS = {
    "search_run": "yes",
    "search_result": "possible_match",
    "handling": "retained",
    "handling_authority": longest(forms.HANDLING_AUTHORITY.max_length),
    "post_use_notes": longest(forms.POST_USE_NOTES.max_length),
}
LONG_POST_USE = check_post_use(LONG_POST_USE_ANSWERS)
SHORT_APPROVAL = DecisionForm(rationale="Necessary and proportionate for this case.")
GIVEN_BACK_ANSWERS = {
    "review/approve": LONG_APPROVAL_ANSWERS,
    "review/reject": LONG_REJECTION_ANSWERS,
    "review/request_info": {"question": LONG_QUESTION},
    "answer": {"answer": LONG_ANSWER},
    "comment": {"comment": LONG_COMMENT},
    "post_use": LONG_POST_USE_ANSWERS,
    "delegation": {"deputy": DEPUTY, "starts_on": "2026-03-02", "ends_on": "2026-03-09"},
}


def longest_form_values(**overrides: str) -> dict[str, str]:
    values = valid_form_values(
        tool="engine-a",  # an online engine: three stages, the second needing two approvals
        case_reference="abcdef/12345678/26",  # the longest the test policy's pattern allows
        subject_is_child="yes",
        urgency="threat_to_life",
    )
    for text_field in forms.TEXT_FIELDS:
        if text_field is not forms.CASE_REFERENCE:
            values[text_field.block_id] = longest(text_field.max_length, f"{text_field.block_id}: ")
    values.update(overrides)
    return values


@dataclass
class Rendered:
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # text + blocks (+ channel/user)
    blocks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # ephemeral replies
    modals: dict[str, dict[str, Any]] = field(default_factory=dict)
    homes: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshots: dict[str, FrRequest] = field(default_factory=dict)
    views: dict[str, RequestView] = field(default_factory=dict)


def _decide(workflow: Workflow, rid: int, position: int, user: str, outcome: str, form: DecisionForm) -> None:
    # From a modal, as a reviewer decides: the outcome's update of it is queued (and rendered) too.
    result = workflow.decide(rid, position, user, outcome, form, view_id=f"V-{rid}-{position}-{user}")
    assert isinstance(result, Decided), result


def _ask(
    workflow: Workflow, rid: int, position: int, user: str, key: str, question: str = LONG_QUESTION
) -> None:
    result = workflow.request_info(rid, position, user, question, key, f"V-{key}")
    assert not isinstance(result, Refusal), result


def _load(workflow: Workflow, rid: int) -> FrRequest:
    request = workflow.load(rid)
    assert request is not None
    return request


def _view(workflow: Workflow, rid: int, user: str) -> RequestView:
    view = workflow.view_request(rid, user, "test")
    assert isinstance(view, RequestView), view
    return view


def _questions(request: FrRequest) -> list[InfoRequest]:
    return [info for stage in request.stages for info in stage.info_requests]


_SCENARIOS: dict[str, Rendered] = {}


@pytest.fixture
def rendered(
    request: pytest.FixtureRequest, workflow: Workflow, clock: FakeClock, policy: LoadedPolicy
) -> Rendered:
    """Three requests taken through every state, each view rendered from the rows as they then stood.

    Rendering the longest input is slow-ish (escaping and clipping ~20 texts of up to 2000 characters per
    message), so the scenario runs once per database backend and the tests share its read-only results.
    """
    backend = request.node.callspec.params["database_url"]
    if backend not in _SCENARIOS:
        _SCENARIOS[backend] = _run_scenario(workflow, clock, policy)
    return _SCENARIOS[backend]


def _run_scenario(workflow: Workflow, clock: FakeClock, policy: LoadedPolicy) -> Rendered:
    p = policy.policy
    out = Rendered()
    homes = HomePublisher(workflow, client=None)  # type: ignore[arg-type]  # view_for never calls Slack
    today = clock.now.astimezone(p.zone).date()
    form = check_request(p, longest_form_values())

    def review_messages(state: str, request: FrRequest) -> None:
        out.snapshots[state] = request
        for stage in request.stages:
            out.messages[f"review/{state}/stage{stage.position}"] = views.review_message(
                request, stage, p, clock.now
            )

    def decided(label: str, rid: int, position: int, user: str, outcome: str, decision: DecisionForm) -> None:
        clock.advance(minutes=7)
        _decide(workflow, rid, position, user, outcome, decision)
        request = _load(workflow, rid)
        stage = request.stages[position]
        out.messages[f"decision_dm/{label}"] = views.decision_dm(request, stage, user, outcome, decision, p)

    def asked(rid: int, position: int, user: str, key: str) -> None:
        clock.advance(minutes=3)
        _ask(workflow, rid, position, user, key)
        request = _load(workflow, rid)
        stage = request.stages[position]
        out.messages[f"info_dm/{key}"] = views.info_requested_dm(request, stage, stage.info_requests[-1])

    def home(state: str, *users: str) -> None:
        for user_id in users:
            out.homes[f"{state}/{user_id}"] = homes.view_for(user_id)

    # An authorising officer away for the week names a deputy.
    delegation = DelegationForm(deputy_id=DEPUTY, starts_on=today, ends_on=today)
    delegated = workflow.delegate("UAUTH2", delegation, "V-delegation")
    assert not isinstance(delegated, Refusal), delegated
    out.modals["delegation"] = views.delegation_modal(today.isoformat())

    # Request 1: questions, an answer, a comment, a refusal, a deputy's decision; approved; use recorded.
    rid = workflow.submit(form, REQUESTER, "T0TEST", "V-approved").request_id
    request = _load(workflow, rid)
    out.messages["submitted_dm"] = views.submitted_dm(request, p)
    review_messages("new", request)
    home("new", REQUESTER, "USUP1", LEAD)
    asked(rid, 0, "USUP1", "Q1")
    asked(rid, 0, "USUP2", "Q2")
    first_question = _questions(_load(workflow, rid))[0]
    assert not isinstance(
        workflow.answer_info(first_question.id, REQUESTER, LONG_ANSWER, "V-answer"), Refusal
    )
    found = workflow.question(first_question.id)
    assert found is not None
    out.messages["answer_note"] = views.answer_note(*found)
    assert not isinstance(workflow.comment(rid, "USUP2", LONG_COMMENT, "C1", "V-comment"), Refusal)
    assert isinstance(workflow.authorise(rid, 0, "UNOBODY", "approve"), Refusal)  # on the timeline
    decided("passed_stage", rid, 0, "USUP1", "approve", LONG_APPROVAL)
    asked(rid, 1, "UAUTH1", "Q3")
    decided("one_of_two_approvals", rid, 1, "UAUTH1", "approve", LONG_APPROVAL)
    request = _load(workflow, rid)
    review_messages("pending", request)
    home("pending", REQUESTER, "UAUTH2", DEPUTY, LEAD)
    unanswered = next(info for info in _questions(request) if info.answer is None)
    out.modals["answer"] = views.answer_modal(request, unanswered, p, clock.now)
    out.modals["comment"] = views.comment_modal(request, p, clock.now)
    for action in ("approve", "reject", "request_info"):
        ctx = views.ReviewContext(
            request_id=rid, position=1, action=action, channel_id="C0AUTH", message_ts="1767000000.000100"
        )
        build = views.info_modal if action == "request_info" else views.decision_modal
        out.modals[f"review/{action}"] = build(request, p, ctx, clock.now)
    for what in ("decision", "question", "answer", "comment", views.POST_USE_NAME, "delegation"):
        out.modals[f"received/{what}"] = views.form_received_modal(what)
    assert isinstance(workflow.decide(rid, 1, REQUESTER, "approve", SHORT_APPROVAL, "V-own"), Refusal)
    decided("passed_second_stage", rid, 1, DEPUTY, "approve", SHORT_APPROVAL)  # for UAUTH2
    asked(rid, 2, "UDPO1", "Q4")
    decided("approved", rid, 2, "UDPO1", "approve", LONG_APPROVAL)
    request = _load(workflow, rid)
    review_messages("approved", request)
    out.modals["post_use"] = views.post_use_modal(request, p)
    assert not isinstance(workflow.record_post_use(rid, REQUESTER, LONG_POST_USE, "V-post-use"), Refusal)
    out.views["approved"] = _view(workflow, rid, LEAD)

    # Request 2: rejected at the second stage.
    rejected_id = workflow.submit(form, REQUESTER, "T0TEST", "V-rejected").request_id
    decided("passed_for_rejection", rejected_id, 0, "USUP2", "approve", LONG_APPROVAL)
    asked(rejected_id, 1, "UAUTH1", "Q5")
    decided("rejected", rejected_id, 1, "UAUTH1", "reject", LONG_REJECTION)
    rejected = _load(workflow, rejected_id)
    review_messages("rejected", rejected)
    out.views["rejected"] = _view(workflow, rejected_id, REQUESTER)

    # Request 3: started again from the rejected one, then withdrawn.
    again = views.initial_values(rejected)
    out.modals["request/again"] = views.request_modal(p, again)
    again_id = workflow.submit(
        check_request(p, again), REQUESTER, "T0TEST", "V-again", rejected_id
    ).request_id
    assert not isinstance(workflow.withdraw(again_id, REQUESTER), Refusal)
    withdrawn = _load(workflow, again_id)
    out.messages["withdrawn_dm"] = views.withdrawn_dm(withdrawn)
    review_messages("withdrawn", withdrawn)
    out.views["withdrawn"] = _view(workflow, again_id, REQUESTER)

    for name, view in out.views.items():
        out.blocks[f"details/{name}"] = views.request_details(
            view.request, view.events, p, view.post_use, clock.now
        )
        out.modals[f"details/{name}"] = views.details_modal(
            view.request, view.events, p, view.post_use, clock.now
        )
    out.blocks["list/mine"] = views.requests_list(workflow.my_requests(REQUESTER), p, clock.now)
    out.blocks["list/none"] = views.requests_list([], p, clock.now)
    home("end", REQUESTER, "UAUTH2", DEPUTY, LEAD, "USUP1")
    # The decisions, the question and the everyday forms given back, the database having failed, with the
    # longest answers.
    for name, answers in GIVEN_BACK_ANSWERS.items():
        submitted = {**out.modals[name], "id": "V0GIVEN", "state": {"values": {}}, "hash": "1.a"}
        out.modals[f"{name}/given_back"] = views.given_back(submitted, answers, "Not saved: " + "x" * 300)
    # What the modals showed a moment after their answers: each request's reference, each decision's,
    # question's and everyday form's outcome, the refusal.
    with transaction(workflow.db, read_only=True) as session:
        updates = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == MODAL_UPDATE)).all()
        for row in updates:
            out.modals[f"update/{row.payload['view_id']}"] = row.payload["view"]
    return out


# --- Everything validates ----------------------------------------------------------------------------

EXPECTED_MESSAGES = {
    "submitted_dm",
    "answer_note",
    "withdrawn_dm",
    *(f"info_dm/Q{n}" for n in range(1, 6)),
    *(
        f"decision_dm/{name}"
        for name in (
            "passed_stage",
            "one_of_two_approvals",
            "passed_second_stage",
            "approved",
            "passed_for_rejection",
            "rejected",
        )
    ),
    *(
        f"review/{state}/stage{n}"
        for state in ("new", "pending", "approved", "rejected", "withdrawn")
        for n in range(3)
    ),
}


def test_every_message_validates(rendered: Rendered, block_kit: BlockKit) -> None:
    assert set(rendered.messages) == EXPECTED_MESSAGES
    for name, message in rendered.messages.items():
        try:
            check_message(block_kit, message)
            if name.startswith("review/"):
                assert message["channel"] in ("C0SUPER", "C0AUTH", "C0DPO")
            elif name != "answer_note":  # a thread note: the outbox adds the channel and thread
                assert message["user"] == REQUESTER
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_every_reply_validates(rendered: Rendered, block_kit: BlockKit) -> None:
    assert set(rendered.blocks) == {
        "details/approved",
        "details/rejected",
        "details/withdrawn",
        "list/mine",
        "list/none",
    }
    for name, blocks in rendered.blocks.items():
        try:
            check_blocks(block_kit, blocks)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_every_modal_validates(rendered: Rendered, block_kit: BlockKit) -> None:
    updates = [view["title"]["text"] for name, view in rendered.modals.items() if name.startswith("update/")]
    # Six decisions, one refusal; five questions, an answer, a comment, the search's outcome, a deputy.
    everyday = ["Answer sent", "Comment added", "Deputy named", "Search outcome recorded"]
    assert sorted(updates) == sorted(
        ["Decision recorded"] * 6 + ["Not recorded"] + ["Question sent"] * 5 + everyday
    )
    assert len(rendered.modals) == 17 + len(GIVEN_BACK_ANSWERS) + len(updates)
    for name, view in rendered.modals.items():
        try:
            check_modal(block_kit, view)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_every_home_validates(rendered: Rendered, block_kit: BlockKit) -> None:
    assert len(rendered.homes) == 12
    for name, view in rendered.homes.items():
        try:
            check_home(block_kit, view)
            assert len(view["blocks"]) <= views.HOME_BLOCK_LIMIT
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


# --- The states and what they show ------------------------------------------------------------------


def test_the_scenario_reached_the_states_it_meant_to(rendered: Rendered) -> None:
    snapshots = rendered.snapshots
    assert [s.status for s in snapshots["pending"].stages] == [
        StageStatus.APPROVED,
        StageStatus.PENDING,
        StageStatus.WAITING,
    ]
    assert len(snapshots["pending"].stages[0].info_requests) == 2
    assert len(snapshots["pending"].stages[1].decisions) == 1
    assert len(snapshots["pending"].comments) == 1
    assert snapshots["approved"].status == RequestStatus.APPROVED
    assert [len(s.decisions) for s in snapshots["approved"].stages] == [1, 2, 1]
    assert snapshots["approved"].stages[1].decisions[1].on_behalf_of == "UAUTH2"
    assert snapshots["rejected"].status == RequestStatus.REJECTED
    assert [s.status for s in snapshots["rejected"].stages] == [
        StageStatus.APPROVED,
        StageStatus.REJECTED,
        StageStatus.CANCELLED,
    ]
    assert snapshots["withdrawn"].status == RequestStatus.WITHDRAWN
    assert snapshots["withdrawn"].previous_request_id == snapshots["rejected"].id
    assert rendered.views["approved"].post_use is not None


def _actions(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [block for block in blocks if block["type"] == "actions"]


def _action_ids(blocks: list[dict[str, Any]]) -> list[str]:
    return [element["action_id"] for block in _actions(blocks) for element in block["elements"]]


def _body(blocks: list[dict[str, Any]]) -> str:
    return "\n".join(mrkdwn_texts(blocks))


def test_review_buttons_only_on_the_stage_awaiting_decisions(rendered: Rendered) -> None:
    messages = rendered.messages
    live = [*views.REVIEW_ACTIONS, views.COMMENT_ACTION]
    assert _action_ids(messages["review/pending/stage1"]["blocks"]) == live
    assert _action_ids(messages["review/new/stage0"]["blocks"]) == live
    for name, message in messages.items():
        if name.startswith("review/") and name not in ("review/pending/stage1", "review/new/stage0"):
            assert not _actions(message["blocks"]), name


def test_officer_buttons_follow_the_request(rendered: Rendered) -> None:
    messages = rendered.messages
    assert _action_ids(messages["submitted_dm"]["blocks"]) == [views.WITHDRAW_ACTION, views.DETAILS_ACTION]
    assert _action_ids(messages["info_dm/Q1"]["blocks"]) == [views.ANSWER_ACTION]
    # Rendered after the final approval, before the use was recorded.
    assert _action_ids(messages["decision_dm/approved"]["blocks"]) == [
        views.RECORD_USE_ACTION,
        views.DETAILS_ACTION,
    ]
    assert _action_ids(messages["decision_dm/rejected"]["blocks"]) == [
        views.REREQUEST_ACTION,
        views.DETAILS_ACTION,
    ]
    assert _action_ids(messages["withdrawn_dm"]["blocks"]) == [views.REREQUEST_ACTION, views.DETAILS_ACTION]
    assert _action_ids(messages["decision_dm/one_of_two_approvals"]["blocks"]) == [
        views.WITHDRAW_ACTION,
        views.DETAILS_ACTION,
    ]


def test_user_text_is_shown_escaped_and_clipped(rendered: Rendered) -> None:
    blocks = rendered.messages["review/pending/stage1"]["blocks"]
    texts = list(mrkdwn_texts(blocks))
    body = "\n".join(texts)
    assert (
        "&lt;!channel&gt;" in body
        and "&lt;@U123&gt;" in body
        and "&lt;https://evil.example|click&gt;" in body
    )
    assert "𝕏" in body and "😀" in body
    assert f"@{ZWJ}channel" in body
    necessity = next(t for t in texts if t.startswith(f"*{forms.NECESSITY.label}*"))
    assert necessity.endswith("…")  # 2000 characters escape to far more than fit; the cut is marked
    assert "ABCDEF/12345678/26" in body  # the case reference, upper-cased by the form
    assert "(child)" in body
    assert f"*{forms.URGENCY_JUSTIFICATION.label}*" in body


def test_history_lists_decisions_questions_answers_and_comments(rendered: Rendered) -> None:
    body = _body(rendered.messages["review/approved/stage2"]["blocks"])
    assert body.count(":white_check_mark: Approved by") == 4
    assert f"Approved by <@{DEPUTY}>" in body and "as deputy for <@UAUTH2>" in body
    assert body.count(":grey_question:") == 4
    assert body.count(":speech_balloon: Answered") == 1
    assert body.count(":memo: <@USUP2> commented") == 1
    assert body.count("_Conditions:_") == 3  # the deputy's short approval had none
    rejected = _body(rendered.messages["review/rejected/stage1"]["blocks"])
    assert ":no_entry: Rejected by <@UAUTH1>" in rejected
    assert forms.REASON_CODES["alternatives_not_exhausted"] in rejected
    assert "not reached" in rejected


def test_decision_dm_branches(rendered: Rendered) -> None:
    messages = rendered.messages
    assert "passed Supervisor review" in messages["decision_dm/passed_stage"]["text"]
    assert "has an approval at Authorising officer" in messages["decision_dm/one_of_two_approvals"]["text"]
    assert "passed Authorising officer" in messages["decision_dm/passed_second_stage"]["text"]
    assert "is approved" in messages["decision_dm/approved"]["text"]
    assert "was rejected at Authorising officer" in messages["decision_dm/rejected"]["text"]
    assert "Conditions you must follow" in _body(messages["decision_dm/approved"]["blocks"])
    assert "Conditions" not in _body(messages["decision_dm/rejected"]["blocks"])
    assert "Conditions" not in _body(messages["decision_dm/passed_second_stage"]["blocks"])


def test_message_fallback_texts(rendered: Rendered) -> None:
    assert rendered.messages["review/pending/stage1"]["text"].endswith("awaits Authorising officer")
    assert rendered.messages["review/rejected/stage0"]["text"].endswith(": rejected")
    assert rendered.messages["review/withdrawn/stage0"]["text"].endswith(": withdrawn")


def test_timeline_tells_the_whole_story(rendered: Rendered) -> None:
    body = _body(rendered.blocks["details/approved"])
    for phrase in (
        "<@UOFFICER> submitted the request (Engine A, case ABCDEF/12345678/26)",
        "Routed by rule *Online engines* to Supervisor review → Authorising officer → Data protection",
        "<@USUP1> asked (*Supervisor review*)",
        "<@UOFFICER> answered: ",
        "<@USUP2> commented: ",
        "<@UNOBODY> was refused (approve)",
        "<@USUP1> approved at *Supervisor review*",
        f"<@{DEPUTY}> approved at *Authorising officer* as deputy for <@UAUTH2>",
        "*Supervisor review* stage complete",
        "Sent to *Authorising officer*",
        "Request approved, valid until <!date^",  # in each reader's zone, not a UTC text
        "<@UOFFICER> recorded the outcome: Possible match",
        f"<@{LEAD}> viewed the details (test)",
        "*Search outcome*: run;",
    ):
        assert phrase in body, phrase
    rejected = _body(rendered.blocks["details/rejected"])
    assert (
        "<@UAUTH1> rejected at *Authorising officer* (Less intrusive alternatives not exhausted)" in rejected
    )
    withdrawn = _body(rendered.blocks["details/withdrawn"])
    rejected_reference = rendered.snapshots["rejected"].reference
    assert f"<@UOFFICER> started this request again from {rejected_reference}" in withdrawn
    assert "<@UOFFICER> withdrawn" in withdrawn


def test_case_file_includes_the_urgency_justification(rendered: Rendered) -> None:
    body = _body(rendered.blocks["details/approved"])
    assert f"*{forms.URGENCY_JUSTIFICATION.label}*" in body


def test_request_lists(rendered: Rendered) -> None:
    mine = _body(rendered.blocks["list/mine"])
    for state in ("approved", "rejected", "withdrawn"):
        assert f"*{rendered.snapshots[state].reference}*" in mine
    assert "no FR requests yet" in _body(rendered.blocks["list/none"])


def test_homes(rendered: Rendered) -> None:
    homes = rendered.homes
    pending = rendered.snapshots["pending"]
    # The deputy and the remaining authoriser both see the request awaiting them, with review buttons.
    for user_id in ("UAUTH2", DEPUTY):
        blocks = homes[f"pending/{user_id}"]["blocks"]
        assert f"*{pending.reference}*" in _body(blocks)
        assert views.APPROVE_ACTION in _action_ids(blocks)
    assert "Nothing is waiting for you." in json.dumps(homes["end/USUP1"])
    revoke = [
        b
        for b in homes["end/UAUTH2"]["blocks"]
        if b.get("accessory", {}).get("action_id") == views.REVOKE_ACTION
    ]
    assert len(revoke) == 1 and f"<@{DEPUTY}> is your deputy" in revoke[0]["text"]["text"]
    assert "You are deputy for <@UAUTH2>" in _body(homes[f"end/{DEPUTY}"]["blocks"])
    assert "Overview (leads)" in json.dumps(homes[f"pending/{LEAD}"])
    assert "Overview (leads)" not in json.dumps(homes[f"pending/{REQUESTER}"])
    assert _body(homes[f"end/{REQUESTER}"]["blocks"]).count("FR-2026-") >= 3


# --- Modals -----------------------------------------------------------------------------------------


def _inputs(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {block["block_id"]: block["element"] for block in view["blocks"] if block["type"] == "input"}


def test_reviewer_modals(rendered: Rendered) -> None:
    modals = rendered.modals
    reference = rendered.snapshots["pending"].reference
    assert list(_inputs(modals["review/approve"])) == ["rationale", "conditions"]
    assert list(_inputs(modals["review/reject"])) == ["reason_code", "rationale"]
    assert list(_inputs(modals["review/request_info"])) == ["question"]
    ctx = views.ReviewContext.model_validate_json(modals["review/approve"]["private_metadata"])
    assert (ctx.position, ctx.action) == (1, "approve")
    assert modals["review/approve"]["title"]["text"] == f"Approve {reference}"
    assert modals["review/request_info"]["title"]["text"] == f"Ask about {reference}"
    assert list(_inputs(modals["comment"])) == ["comment"]


def test_officer_modals(rendered: Rendered) -> None:
    modals = rendered.modals
    assert list(_inputs(modals["answer"])) == ["answer"]
    assert "&lt;!channel&gt;" in _body(modals["answer"]["blocks"])  # the question, escaped
    assert list(_inputs(modals["post_use"])) == [
        "search_run",
        "search_result",
        "handling",
        "handling_authority",
        "post_use_notes",
    ]
    assert list(_inputs(modals["delegation"])) == ["deputy", "starts_on", "ends_on"]
    again = _inputs(modals["request/again"])
    rejected = rendered.snapshots["rejected"]
    assert again["necessity"]["initial_value"] == rejected.necessity  # plain text: shown exactly as typed
    assert again["tool"]["initial_option"]["value"] == "engine-a"
    assert again["subject_is_child"]["initial_option"]["value"] == "yes"
    assert modals["details/approved"]["title"]["text"] == rendered.snapshots["approved"].reference


def test_empty_request_modal(policy: LoadedPolicy, block_kit: BlockKit) -> None:
    view = views.request_modal(policy.policy)
    check_modal(block_kit, view)
    inputs = _inputs(view)
    assert list(inputs) == [f.block_id for f in forms.FIELD_ORDER]
    assert not any("initial_value" in e or "initial_option" in e for e in inputs.values())
    assert view["callback_id"] == views.REQUEST_CALLBACK


def test_prefilled_request_modal_with_the_longest_input(policy: LoadedPolicy, block_kit: BlockKit) -> None:
    form = check_request(policy.policy, longest_form_values())
    view = views.request_modal(policy.policy, form.initial_values(), metadata="x" * 3000)
    check_modal(block_kit, view)
    elements = _inputs(view)
    assert elements["necessity"]["initial_value"] == form.necessity
    assert elements["case_reference"]["initial_value"] == "ABCDEF/12345678/26"
    assert elements["tool"]["initial_option"]["value"] == "engine-a"
    assert elements["subject_is_child"]["initial_option"]["value"] == "yes"
    assert elements["urgency"]["initial_option"]["value"] == "threat_to_life"
    assert elements["offence_seriousness"]["initial_option"]["value"] == "serious"


def test_request_modal_ignores_unknown_initial_values(policy: LoadedPolicy, block_kit: BlockKit) -> None:
    view = views.request_modal(policy.policy, {"tool": "gone", "urgency": "never", "necessity": "x" * 9000})
    check_modal(block_kit, view)
    elements = _inputs(view)
    assert "initial_option" not in elements["tool"]
    assert len(elements["necessity"]["initial_value"]) == forms.NECESSITY.max_length


@pytest.mark.parametrize(
    ("title", "text"),
    [
        ("Request recorded", "Your request *FR-2026-00001* is recorded."),
        ("A title far longer than Slack's twenty-four characters", "y" * 5000),
        ("", ""),
    ],
)
def test_notice_modal(block_kit: BlockKit, title: str, text: str) -> None:
    view = views.notice_modal(title, text)
    check_modal(block_kit, view)
    assert len(view["title"]["text"]) <= views.TITLE_LIMIT


# --- A history too long for one message -----------------------------------------------------------

MANY_QUESTIONS = 200  # about five 500-character questions fill a section: this overflows 50 blocks


_LONG_HISTORIES: dict[str, RequestView] = {}


@pytest.fixture
def long_history(
    request: pytest.FixtureRequest, workflow: Workflow, policy: LoadedPolicy, clock: FakeClock
) -> RequestView:
    """One request with 200 questions; built once per backend (read-only), like `rendered`."""
    backend = request.node.callspec.params["database_url"]
    if backend not in _LONG_HISTORIES:
        _LONG_HISTORIES[backend] = _build_long_history(workflow, policy, clock)
    return _LONG_HISTORIES[backend]


def _build_long_history(workflow: Workflow, policy: LoadedPolicy, clock: FakeClock) -> RequestView:
    form = check_request(policy.policy, longest_form_values())
    rid = workflow.submit(form, REQUESTER, "T0TEST", "V-long").request_id
    question = ("Which exhibit is the still from, and who seized it? " * 10)[:500]
    for number in range(MANY_QUESTIONS):
        clock.advance(minutes=1)
        _ask(workflow, rid, 0, "USUP1", f"QL{number}", question)
    clock.advance(minutes=1)
    _decide(workflow, rid, 0, "USUP2", "approve", SHORT_APPROVAL)
    return _view(workflow, rid, REQUESTER)


def test_long_history_still_fits_one_message(
    long_history: RequestView, policy: LoadedPolicy, block_kit: BlockKit
) -> None:
    request = long_history.request
    message = views.review_message(request, request.stages[1], policy.policy, request.updated_at)
    check_message(block_kit, message)
    assert len(message["blocks"]) == views.MESSAGE_BLOCK_LIMIT
    assert _actions(message["blocks"])  # the reviewers can still decide
    assert "left out" in json.dumps(message["blocks"])
    details = views.request_details(
        request, long_history.events, policy.policy, long_history.post_use, request.updated_at
    )
    check_blocks(block_kit, details)
    assert len(details) == views.MESSAGE_BLOCK_LIMIT
    assert "more entries" in details[-1]["elements"][0]["text"]
    check_modal(
        block_kit, views.details_modal(request, long_history.events, policy.policy, None, request.updated_at)
    )


def test_long_history_keeps_the_newest_entries(long_history: RequestView, policy: LoadedPolicy) -> None:
    request = long_history.request
    message = views.review_message(request, request.stages[1], policy.policy, request.updated_at)
    body = _body(message["blocks"])
    assert "*2. Authorising officer*: awaiting decision" in body
    assert ":white_check_mark: Approved by <@USUP2>" in body


# --- Property tests ----------------------------------------------------------------------------------

MARKUP_PIECES = st.sampled_from(
    ["&", "<", ">", "*", "_", "~", "`", "@channel", "@here", "<!channel>", "<@U123>", "<#C123>",
     "<https://evil.example|click>", "&amp;", "&lt;", "😀", "𝕏", "\n", " ", "\u202e", "\x00", "é"]
)  # fmt: skip


def user_text(max_size: int) -> st.SearchStrategy[str]:
    """Arbitrary unicode, Slack markup, and text repeated to exactly max_size characters."""
    mixed = st.lists(st.one_of(MARKUP_PIECES, st.text(max_size=8)), max_size=60).map("".join)
    return st.one_of(
        st.text(max_size=max_size),
        mixed.map(lambda text: text[:max_size]),
        st.text(min_size=1, max_size=12).map(lambda seed: (seed * max_size)[:max_size]),
        st.lists(MARKUP_PIECES, min_size=1, max_size=10).map(lambda p: ("".join(p) * max_size)[:max_size]),
    )


@settings(max_examples=40, deadline=None, database=None)
@given(text=user_text(3000), limit=st.sampled_from([75, 200, 500, 900, 2900, 3000]))
def test_esc_output_is_inert_and_fits(text: str, limit: int) -> None:
    out = views.esc(text, limit)
    assert "<" not in out and ">" not in out
    assert not BARE_AMPERSAND.search(out)
    assert not BROADCAST.search(out)
    assert len(out) <= limit
    for match in re.finditer(r"[*_~`]", out):  # formatting characters print as typed, never format
        assert out[match.start() - 1] == ZWJ and out[match.end()] == ZWJ, out
    full = escape(text)
    if len(full) <= limit:
        assert out == full
    else:
        assert out.endswith("…")
        assert len(out) >= limit - 8  # clipped where it had to be, not far before


@pytest.mark.parametrize("text", ["@channel_", "@here_x", "@everyone*", "@CHANNEL~", "@here`"])
def test_broadcast_words_stay_inert_next_to_formatting_characters(text: str) -> None:
    """Wrapping `_` in joiners makes a word boundary after the broadcast word: it must still be broken."""
    out = views.esc(text)
    assert not BROADCAST.search(out), out
    assert out.startswith("@" + ZWJ)
    assert out.replace(ZWJ, "") == text  # still prints as typed


@pytest.mark.parametrize("limit", [200, 500, 900, 2900, 3000])
@pytest.mark.parametrize("piece", ["&", "*", "@here ", "<!channel>", "𝕏", "a"])
def test_esc_at_the_longest_input(limit: int, piece: str) -> None:
    text = (piece * 3000)[:3000]
    out = views.esc(text, limit)
    assert len(out) <= limit
    assert "<" not in out and not BARE_AMPERSAND.search(out) and not BROADCAST.search(out)


def test_messages_with_arbitrary_texts(workflow: Workflow, policy: LoadedPolicy, block_kit: BlockKit) -> None:
    p = policy.policy
    form = check_request(p, valid_form_values(tool="engine-a"))
    rid = workflow.submit(form, REQUESTER, "T0TEST", "V-prop").request_id
    _ask(workflow, rid, 0, "USUP1", "QP1", "Which exhibit is the still from?")
    info_id = _questions(_load(workflow, rid))[0].id
    assert not isinstance(
        workflow.answer_info(info_id, REQUESTER, "Exhibit JS/1, seized by PC 123."), Refusal
    )
    assert not isinstance(workflow.comment(rid, "USUP2", "Check the exhibit log first.", "CP1"), Refusal)
    _decide(workflow, rid, 0, "USUP1", "approve", SHORT_APPROVAL)
    _decide(workflow, rid, 1, "UAUTH1", "approve", SHORT_APPROVAL)
    request = _load(workflow, rid)  # detached: the texts below are set on the loaded objects only
    info = request.stages[0].info_requests[0]
    justification_fields = [f for f in forms.TEXT_FIELDS if f is not forms.CASE_REFERENCE]

    @settings(max_examples=40, deadline=None, database=None)
    @given(
        texts=st.fixed_dictionaries({f.block_id: user_text(f.max_length) for f in justification_fields}),
        case_reference=user_text(forms.CASE_REFERENCE.max_length),
        rationale=user_text(forms.RATIONALE.max_length),
        conditions=user_text(forms.CONDITIONS.max_length),
        question=user_text(forms.QUESTION.max_length),
        answer=user_text(forms.ANSWER.max_length),
        comment=user_text(forms.COMMENT.max_length),
    )
    def check(
        texts: dict[str, str],
        case_reference: str,
        rationale: str,
        conditions: str,
        question: str,
        answer: str,
        comment: str,
    ) -> None:
        for name, value in texts.items():
            setattr(request, name, value)
        request.case_reference = case_reference
        request.stages[0].decisions[0].rationale = rationale
        request.stages[0].decisions[0].conditions = conditions
        info.question, info.answer = question, answer
        request.comments[0].text = comment
        # The live stage's message holds everything: summary, every text, the whole history and buttons.
        message = views.review_message(request, request.stages[1], p, request.updated_at)
        assert _actions(message["blocks"])
        check_message(block_kit, message)
        decision = DecisionForm(rationale=rationale, conditions=conditions)
        check_message(
            block_kit, views.decision_dm(request, request.stages[1], "UAUTH1", "approve", decision, p)
        )
        check_message(block_kit, views.info_requested_dm(request, request.stages[0], info))
        check_message(block_kit, views.answer_note(request, info))

    check()


def _strip_control_by_category(text: str) -> str:
    """strip_control's rule, a character at a time (how it reads any text that is not all ASCII)."""
    return "".join(
        ch for ch in text if ch in KEEP or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")
    )


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text(st.characters(max_codepoint=127)) | st.text())
def test_strip_control_drops_the_same_characters_in_ascii_and_other_text(text: str) -> None:
    assert strip_control(text) == _strip_control_by_category(text)


def test_strip_control_drops_every_ascii_control_but_tab_and_line_feed() -> None:
    every_ascii = "".join(map(chr, range(128)))
    assert strip_control(every_ascii) == _strip_control_by_category(every_ascii)
    assert strip_control(every_ascii) == "\t\n" + "".join(map(chr, range(32, 127)))


def test_a_capped_list_builds_only_the_lines_it_shows() -> None:
    """A backlog's reminder or escalation lists hundreds of reviews and shows `list_limit` of them: the
    rest are counted, never rendered."""
    built: list[int] = []

    def line(n: int) -> str:
        built.append(n)
        return f"• {n}"

    assert views.capped(list(range(250)), 3, line) == ["• 0", "• 1", "• 2", "_…and 247 more_"]
    assert built == [0, 1, 2]
    assert views.capped([7, 8], 3, line) == ["• 7", "• 8"]
    assert views.capped([], 3, line) == []


def test_a_form_given_back_has_each_answer_and_one_notice(rendered: Rendered) -> None:
    for name, answers in GIVEN_BACK_ANSWERS.items():
        form, given = rendered.modals[name], rendered.modals[f"{name}/given_back"]
        assert {k: given[k] for k in form} == {**form, "blocks": given["blocks"]}, name  # only blocks differ
        assert given["blocks"][0]["block_id"] == views.GIVEN_BACK_NOTICE
        others = [b for b in given["blocks"][1:] if b["type"] != "input"]
        assert others == [b for b in form["blocks"] if b["type"] != "input"], name  # what the form showed
        shown = {}
        for block in given["blocks"]:
            if block["type"] == "input":
                element = block["element"]
                chosen = element.get("initial_option") or {}
                shown[block["block_id"]] = (
                    element.get("initial_value")
                    or chosen.get("value")
                    or element.get("initial_date")
                    or element.get("initial_user")
                )
        assert shown == answers, name
        # Given back twice (a second outage): still one notice.
        again = views.given_back({**given, "id": "V0GIVEN"}, answers, "Not saved again")
        notices = [b for b in again["blocks"] if b.get("block_id") == views.GIVEN_BACK_NOTICE]
        assert len(notices) == 1 and "Not saved again" in json.dumps(notices)
        # A box the person emptied before the second try comes back empty, not with the first answer.
        emptied = sorted(answers)[0]
        fewer = {key: value for key, value in answers.items() if key != emptied}
        third = views.given_back({**given, "id": "V0GIVEN"}, fewer, "Not saved again")
        element = next(b["element"] for b in third["blocks"] if b.get("block_id") == emptied)
        assert not {"initial_value", "initial_option", "initial_date", "initial_user"} & set(element), name

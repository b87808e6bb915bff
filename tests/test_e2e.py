"""End to end: the real bot as an HTTP server, driven by signed Slack requests, talking to the Slack stand-in.

Each backend (SQLite, PostgreSQL) gets one bot process for the module; tests use distinct users and
requests so they do not depend on each other. With FRBOT_SLACK_SPECS set, the stand-in checks every Web API
call, message and view against Slack's published contracts, and any violation fails the test.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from bot import forms, views
from tests.botprocess import SIGNING_SECRET, BotProcess
from tests.conftest import GROUPS, TEST_POLICY, _truncate_postgres, slack_state, valid_form_values
from tests.slackstub import SlackDriver, SlackStub

OFFICER = "UOFFICER1"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path_factory.mktemp("e2e") / "fr-bot.db"
        shutil.copy(template, path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_migrated")
    _truncate_postgres(url)
    return url


@pytest.fixture(scope="module")
def stub() -> Iterator[SlackStub]:
    with SlackStub() as running:
        for group, members in GROUPS.items():
            running.add_usergroup(group, sorted(members))
        yield running


@pytest.fixture(scope="module")
def bot(backend_url: str, stub: SlackStub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BotProcess]:
    workdir = tmp_path_factory.mktemp("bot")
    policy = workdir / "policy.yml"
    policy.write_text(TEST_POLICY)
    process = BotProcess(backend_url, policy, stub.base_url, workdir).start()
    yield process
    code = process.stop()
    assert code == 0, f"bot did not exit cleanly ({code}):\n{process.log()}"
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture
def slack(bot: BotProcess, stub: SlackStub) -> Iterator[SlackDriver]:
    stub.clear()
    stub.violations.clear()
    yield SlackDriver(bot.url, SIGNING_SECRET, stub=stub)
    stub.assert_no_violations()


# --- Steps a person takes ------------------------------------------------------------------------


def open_form(slack: SlackDriver, stub: SlackStub, user: str) -> dict[str, Any]:
    status, body = slack.slash_command("/fr-request", "", user)
    assert status == 200, body
    call = stub.wait_for(
        lambda c: (
            c.method == "views.open" and c.ok and c.response["view"]["callback_id"] == views.REQUEST_CALLBACK
        )
    )
    return call.response["view"]


def submit_form(slack: SlackDriver, view: dict[str, Any], user: str, **overrides: str) -> tuple[int, Any]:
    return slack.view_submission(user, view, slack_state(valid_form_values(**overrides)))


def reviewer_message(stub: SlackStub, channel: str, reference: str) -> dict[str, Any]:
    """The current state of the request's message in a reviewer channel, once posted."""
    call = stub.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.ok
            and c.args.get("channel") == channel
            and reference in c.args.get("text", "")
        )
    )
    return stub.message(call.response["channel"], call.response["ts"])


def reference_of(body: Any) -> str:
    text = json.dumps(body)
    start = text.index("FR-20")
    return text[start : start + len("FR-2026-00000")]


def buttons(message: dict[str, Any]) -> list[str]:
    return [
        element["action_id"]
        for block in message.get("blocks", [])
        if block["type"] == "actions"
        for element in block["elements"]
    ]


def click(slack: SlackDriver, user: str, action_id: str, message: dict[str, Any]) -> None:
    status, _ = slack.block_action(user, action_id, message=message)
    assert status == 200


def decide(
    slack: SlackDriver, stub: SlackStub, user: str, action_id: str, message: dict[str, Any], **fields: str
) -> tuple[int, Any]:
    stub.clear()
    click(slack, user, action_id, message)
    opened = stub.wait_for("views.open")
    assert opened.ok, opened.describe()
    view = opened.response["view"]
    state = {block_id: {forms.ACTION_ID: _entry(view, block_id, value)} for block_id, value in fields.items()}
    return slack.view_submission(user, view, state)


def _entry(view: dict[str, Any], block_id: str, value: str) -> dict[str, Any]:
    block = next(b for b in view["blocks"] if b.get("block_id") == block_id)
    kind = block["element"]["type"]
    if kind == "static_select":
        return {
            "type": kind,
            "selected_option": {"value": value, "text": {"type": "plain_text", "text": value}},
        }
    return {"type": kind, "value": value}


def dms_to(stub: SlackStub, user: str) -> list[str]:
    return [
        c.args.get("text", "")
        for c in stub.calls_to("chat.postMessage")
        if c.args.get("channel") == user and c.ok
    ]


# --- The tests ---------------------------------------------------------------------------------------


def test_bad_signature_is_refused(bot: BotProcess) -> None:
    body = b"command=%2Ffr-request&user_id=U1&trigger_id=1.2.3"
    request = urllib.request.Request(
        bot.url,
        data=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": "1700000000",
            "X-Slack-Signature": "v0=" + "0" * 64,
        },
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401


def test_stale_signature_is_refused(slack: SlackDriver) -> None:
    status, _ = slack.post(
        b"command=%2Ffr-request", "application/x-www-form-urlencoded", timestamp=1_600_000_000
    )
    assert status == 401


def test_help_answers_ephemerally(slack: SlackDriver) -> None:
    status, body = slack.slash_command("/fr-request", "help", OFFICER)
    assert status == 200
    assert "authority to run a facial recognition search" in json.dumps(body)


def test_officer_fixes_invalid_form_then_request_is_routed(slack: SlackDriver, stub: SlackStub) -> None:
    view = open_form(slack, stub, OFFICER)
    assert [b.get("block_id") for b in view["blocks"] if b["type"] == "input"] == [
        f.block_id for f in forms.FIELD_ORDER
    ]
    status, body = submit_form(
        slack, view, OFFICER, case_reference="not a ref", necessity="because", urgency="urgent"
    )
    assert status == 200
    assert body["response_action"] == "errors"
    assert set(body["errors"]) == {"case_reference", "necessity", "urgency_justification"}
    assert not stub.calls_to("chat.postMessage")  # nothing stored, nothing announced

    submitted_view = slack._full_view(view, slack_state(valid_form_values()))
    status, body = submit_form(slack, view, OFFICER)
    assert status == 200 and body["response_action"] == "update"
    reference = reference_of(body)
    message = reviewer_message(stub, "C0SUPER", reference)
    assert buttons(message) == [views.APPROVE_ACTION, views.REJECT_ACTION, views.INFO_ACTION]
    stub.wait_for(lambda c: c.method == "chat.postMessage" and c.args.get("channel") == OFFICER)
    assert any(reference in text for text in dms_to(stub, OFFICER))

    # The same modal delivered again (double click racing the first answer) creates no second request.
    again = SlackDriver(slack.url, SIGNING_SECRET)
    status, body = again.view_submission(OFFICER, submitted_view, slack_state(valid_form_values()))
    assert status == 200 and reference_of(body) == reference
    assert len([c for c in stub.calls_to("chat.postMessage") if reference in c.args.get("text", "")]) == 2


def test_prohibited_tool_is_refused_with_the_register_note(slack: SlackDriver, stub: SlackStub) -> None:
    view = open_form(slack, stub, OFFICER)
    status, body = submit_form(slack, view, OFFICER, tool="engine-b")
    assert status == 200
    assert body["response_action"] == "errors"
    assert "insurmountable" in body["errors"]["tool"]


def test_stranger_and_requester_are_refused_then_approver_approves(
    slack: SlackDriver, stub: SlackStub
) -> None:
    officer = "UOFFICER2"
    view = open_form(slack, stub, officer)
    _, body = submit_form(slack, view, officer)
    reference = reference_of(body)
    message = reviewer_message(stub, "C0SUPER", reference)

    for intruder in ("USTRANGER", officer):
        stub.clear()
        click(slack, intruder, views.APPROVE_ACTION, message)
        refusal = stub.wait_for("chat.postEphemeral")
        assert refusal.args["user"] == intruder
        assert not stub.calls_to("views.open")

    status, body = decide(
        slack,
        stub,
        "USUP3",
        views.APPROVE_ACTION,
        message,
        rationale="Necessary: no other route to identify.",
    )
    assert status == 200 and body["response_action"] == "update", body
    update = stub.wait_for(lambda c: c.method == "chat.update" and c.ok)
    current = stub.message(update.args["channel"], update.args["ts"])
    assert buttons(current) == []
    rendered = json.dumps(current["blocks"])
    assert "Approved" in rendered and "USUP3" in rendered
    stub.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.args.get("channel") == officer
            and "approved" in c.args.get("text", "")
        )
    )


def test_multi_stage_route_with_reject_reason(slack: SlackDriver, stub: SlackStub) -> None:
    officer = "UOFFICER3"
    view = open_form(slack, stub, officer)
    _, body = submit_form(slack, view, officer, tool="engine-a")
    reference = reference_of(body)
    first = reviewer_message(stub, "C0SUPER", reference)
    decide(
        slack,
        stub,
        "USUP1",
        views.APPROVE_ACTION,
        first,
        rationale="Serious offence and no alternative left.",
    )
    second = reviewer_message(stub, "C0AUTH", reference)

    # The rationale is required and a rejection needs a reason code: errors land on those fields.
    _, body = decide(slack, stub, "UAUTH1", views.REJECT_ACTION, second, rationale="no")
    assert body["response_action"] == "errors"
    assert set(body["errors"]) == {"rationale", "reason_code"}

    _status, body = decide(
        slack,
        stub,
        "UAUTH1",
        views.REJECT_ACTION,
        second,
        rationale="CCTV enquiries with neighbours are not finished.",
        reason_code="alternatives_not_exhausted",
    )
    assert body["response_action"] == "update"
    # Wait for the updates that show the rejection: the approval's own refresh may still arrive late.
    for channel in ("C0AUTH", "C0SUPER"):
        stub.wait_for(
            lambda c, channel=channel: (
                c.method == "chat.update"
                and c.ok
                and c.args["channel"] == channel
                and "Rejected" in json.dumps(c.args.get("blocks"))
            )
        )
    for channel, ts in ((first["channel"], first["ts"]), (second["channel"], second["ts"])):
        assert buttons(stub.message(channel, ts)) == []
        assert "Rejected" in json.dumps(stub.message(channel, ts)["blocks"])
    stub.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.args.get("channel") == officer
            and "rejected" in c.args.get("text", "")
        )
    )


def test_request_info_tells_the_officer(slack: SlackDriver, stub: SlackStub) -> None:
    officer = "UOFFICER4"
    view = open_form(slack, stub, officer)
    _, body = submit_form(slack, view, officer)
    message = reviewer_message(stub, "C0SUPER", reference_of(body))
    _status, body = decide(
        slack, stub, "USUP2", views.INFO_ACTION, message, question="Which exhibit is the still from?"
    )
    assert body["response_action"] == "update"
    dm = stub.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.args.get("channel") == officer
            and "question" in c.args.get("text", "")
        )
    )
    assert "Which exhibit" in json.dumps(dm.args["blocks"])

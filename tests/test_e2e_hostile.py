"""Forged, malformed and replayed requests against the real bot process: each gets a 4xx or a polite answer,
never a 500, never a traceback in the log, and never a second request, decision or notification."""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot import forms, views
from bot.policy import parse_policy
from storage.db import make_engine, make_session_factory, transaction
from storage.models import AuditEvent, Decision, FrRequest
from tests.botprocess import SIGNING_SECRET, BotProcess
from tests.conftest import TEST_POLICY, slack_state, valid_form_values
from tests.e2e_support import reviewer_message, submitted_reference, view_sent
from tests.slackstub import SlackDriver, SlackStub, sign_request

TEAM, APP = "T0TEST", "A0TEST"


# The shared end-to-end bot (tests/e2e_support.py), with these settings for this module.
BOT_ENV = {
    "FRBOT_ALLOWED_TEAM_ID": TEAM,
    "FRBOT_ALLOWED_APP_ID": APP,
    "FRBOT_LOG_LEVEL": "DEBUG",  # the most talkative level must still keep secrets out
}


@pytest.fixture
def db(backend_url: str) -> Iterator[Any]:
    engine = make_engine(backend_url)
    yield make_session_factory(engine)
    engine.dispose()


def raw_post(url: str, body: bytes, content_type: str, signed: bool = True, **headers: str) -> int:
    sent = {"Content-Type": content_type, **headers}
    if signed:
        sent.update(sign_request(SIGNING_SECRET, body))
    request = urllib.request.Request(url, data=body, headers=sent, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def count(db: Any, model: Any, *where: Any) -> int:
    with transaction(db) as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def request_view() -> dict[str, Any]:
    return views.request_modal(parse_policy(TEST_POLICY).policy)


def submit(slack: SlackDriver, user: str, view: dict[str, Any] | None = None) -> tuple[int, Any]:
    return slack.view_submission(user, view or request_view(), slack_state(valid_form_values()))


# --- Malformed ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"payload=%7Bnot+json", "application/x-www-form-urlencoded", {400}),
        (b"payload=%5B1%2C2%5D", "application/x-www-form-urlencoded", {400}),
        (b"payload=%22text%22", "application/x-www-form-urlencoded", {400}),
        (b"payload=%7B%7D", "application/x-www-form-urlencoded", {400, 404}),
        (b"{not json", "application/json", {400}),
        (b"[]", "application/json", {400}),
        (b"", "application/x-www-form-urlencoded", {400, 404}),
        (b"command=%2Ffr-request", "application/x-www-form-urlencoded", {400}),
        (b"\xff\xfe\x00garbage", "application/x-www-form-urlencoded", {400, 401}),
        (b"<xml/>", "text/xml", {415}),
        (b"payload=%7B%7D", "multipart/form-data; boundary=x", {415}),
    ],
)
def test_malformed_bodies_get_a_4xx(
    slack: SlackDriver, body: bytes, content_type: str, expected: set[int]
) -> None:
    assert raw_post(slack.url, body, content_type) in expected


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "view_submission"},  # no user, no view
        {"type": "view_submission", "user": {"id": "U1"}, "view": {"callback_id": views.REQUEST_CALLBACK}},
        {"type": "view_submission", "user": "U1", "view": {"callback_id": views.DECISION_CALLBACK, "id": 1}},
        {"type": "view_submission", "user": {"id": "U1"}, "view": []},
        {"type": "block_actions", "user": {"id": "U1"}, "actions": [{"action_id": views.APPROVE_ACTION}]},
        {"type": "block_actions", "user": {"id": "U1"}, "actions": "approve"},
        {"type": "block_actions", "actions": [{"action_id": views.APPROVE_ACTION, "value": "1:0"}]},
        {"type": "shortcut", "callback_id": "nope", "user": {"id": "U1"}},
        {
            "type": "view_submission",
            "user": {"id": "U1"},
            "view": {"id": "V1", "callback_id": "unknown_form"},
        },
    ],
)
def test_payloads_missing_fields_or_unknown_ids_get_a_4xx_or_polite_answer(
    slack: SlackDriver, payload: dict[str, Any]
) -> None:
    payload = {"team": {"id": TEAM}, "api_app_id": APP, **payload}
    status, body = slack.post_payload(payload)
    assert status in (200, 400, 404), (status, body)
    if status == 200 and isinstance(body, dict) and body.get("response_action") == "update":
        assert "not valid" in json.dumps(body)


def test_unknown_action_id_and_bad_button_value(slack: SlackDriver, stub: SlackStub) -> None:
    message = {"channel": "C0SUPER", "ts": "1.2", "blocks": []}
    status, _ = slack.block_action("USUP1", "review_delete_everything", "1:0", message=message)
    assert status == 404
    status, _ = slack.block_action("USUP1", views.APPROVE_ACTION, "1:0; DROP TABLE", message=message)
    assert status == 200
    assert "not valid" in stub.wait_for("chat.postEphemeral").args["text"]


def test_decision_form_with_forged_metadata_is_refused(slack: SlackDriver, db: Any) -> None:
    form = {
        "type": "modal",
        "callback_id": views.DECISION_CALLBACK,
        "title": {"type": "plain_text", "text": "Decide"},
        "blocks": [],
    }
    for metadata in ("", "{", '{"request_id": "x"}', json.dumps({"request_id": 1, "position": 0})):
        status, body = slack.view_submission("USUP1", form, {}, private_metadata=metadata)
        assert status == 200
        assert body["response_action"] in ("update", "errors")
    assert count(db, Decision) == 0


def test_oversized_body_is_refused_with_413(slack: SlackDriver) -> None:
    # The server answers as soon as it sees the length, so send the headers and read the answer (a client
    # still uploading would see the connection close under it).
    url = urllib.parse.urlsplit(slack.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as connection:
        connection.sendall(
            f"POST {url.path} HTTP/1.1\r\nHost: {url.hostname}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1100000\r\n\r\n"
            "payload=".encode()
        )
        status_line = connection.makefile("rb").readline().decode()
    assert status_line.split()[1] == "413", status_line


def test_unsigned_stale_and_replayed_requests_are_refused(slack: SlackDriver) -> None:
    body = b"command=%2Ffr-request&text=help&user_id=U1&team_id=T0TEST&api_app_id=A0TEST"
    assert raw_post(slack.url, body, "application/x-www-form-urlencoded", signed=False) == 401
    stale = sign_request(SIGNING_SECRET, body, timestamp=int(time.time()) - 6 * 60)
    assert raw_post(slack.url, body, "application/x-www-form-urlencoded", signed=False, **stale) == 401
    other_secret = sign_request("another-apps-secret-0123", body)
    assert raw_post(slack.url, body, "application/x-www-form-urlencoded", signed=False, **other_secret) == 401


@pytest.mark.parametrize(("team", "app"), [("T0OTHER", APP), (TEAM, "A0OTHER")])
def test_valid_signature_for_another_workspace_or_app_is_refused(
    bot: BotProcess, stub: SlackStub, db: Any, team: str, app: str
) -> None:
    stub.clear()
    forged = SlackDriver(bot.url, SIGNING_SECRET, stub=stub, team_id=team, api_app_id=app)
    status, _ = forged.slash_command("/fr-request", "", "UOFFICER1")
    assert status == 403
    before = count(db, FrRequest)
    status, _ = forged.view_submission("UOFFICER1", request_view(), slack_state(valid_form_values()))
    assert status == 403
    assert count(db, FrRequest) == before
    assert not stub.calls_to("views.open")


# --- Replays and double submissions -------------------------------------------------------------------


def test_modal_submitted_twice_and_retried_creates_one_request_and_one_notification(
    slack: SlackDriver, stub: SlackStub, db: Any
) -> None:
    view = request_view()
    full = slack._full_view(view, {})
    first = submit(slack, "UOFFICER7", full)
    again = submit(slack, "UOFFICER7", full)
    assert first[0] == again[0] == 200
    assert "Request received" in json.dumps(first[1]) and "Request received" in json.dumps(again[1])
    reference = submitted_reference(stub, "UOFFICER7")
    body = ("payload=" + urllib.parse.quote(json.dumps(_submission(full, "UOFFICER7")))).encode()
    retried = raw_post(slack.url, body, "application/x-www-form-urlencoded", **{"X-Slack-Retry-Num": "1"})
    assert retried == 200
    assert count(db, FrRequest, FrRequest.submission_key == full["id"]) == 1
    stub.wait_for(lambda c: c.method == "chat.postMessage" and c.args.get("channel") == "UOFFICER7")
    time.sleep(1.0)  # give a wrongly queued duplicate the time to go out
    posts = [c for c in stub.calls_to("chat.postMessage") if reference in c.args.get("text", "")]
    assert sorted(c.args["channel"] for c in posts) == ["C0SUPER", "UOFFICER7"]


def _submission(view: dict[str, Any], user: str) -> dict[str, Any]:
    view = dict(view, state={"values": slack_state(valid_form_values())})
    return {
        "type": "view_submission",
        "team": {"id": TEAM, "domain": "example"},
        "user": {"id": user, "team_id": TEAM},
        "api_app_id": APP,
        "view": view,
    }


def test_double_clicked_decision_records_one_decision(slack: SlackDriver, stub: SlackStub, db: Any) -> None:
    submit(slack, "UOFFICER8")
    reference = submitted_reference(stub, "UOFFICER8")
    message = reviewer_message(stub, "C0SUPER", reference)
    opened = []
    for _ in range(2):  # two clicks open two forms
        stub.clear()
        slack.block_action("USUP1", views.APPROVE_ACTION, message=message)
        opened.append(stub.wait_for("views.open").response["view"])
    rationale = {
        forms.RATIONALE.block_id: {
            forms.ACTION_ID: {"type": "plain_text_input", "value": "Necessary and proportionate here."}
        }
    }
    answers = [slack.view_submission("USUP1", view, rationale) for view in opened]
    assert [status for status, _ in answers] == [200, 200]
    assert all("Decision received" in json.dumps(answer) for _, answer in answers)

    # Both are recorded just after their answers, in either order: one decision, one refusal. The second
    # form replaced the first in Slack, so the first one's update may find it gone (a refusal then goes
    # as a direct message): what each outcome says is read from the update the bot sent.
    titles = sorted(view_sent(stub, view["id"])["title"]["text"] for view in opened)
    assert titles == ["Decision recorded", "Not recorded"], titles  # "FR-… is already approved"
    with transaction(db) as session:
        request = session.scalars(select(FrRequest).where(FrRequest.reference == reference)).one()
        decisions = session.scalars(select(Decision).where(Decision.request_id == request.id)).all()
        actions = list(session.scalars(select(AuditEvent.action).where(AuditEvent.request_id == request.id)))
    assert len(decisions) == 1
    assert actions.count("decision_recorded") == 1
    refused = [a for a in actions if a == "action_refused"]
    assert len(refused) == 1  # the second submission, on record
    stub.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.args.get("channel") == "UOFFICER8"
            and "approved" in c.args.get("text", "")
        )
    )
    time.sleep(1.0)
    decision_dms = [
        c
        for c in stub.calls_to("chat.postMessage")
        if c.args.get("channel") == "UOFFICER8" and "approved" in c.args.get("text", "")
    ]
    assert len(decision_dms) == 1


def test_refusals_are_audited_with_who_and_why(slack: SlackDriver, stub: SlackStub, db: Any) -> None:
    submit(slack, "UOFFICER9")
    reference = submitted_reference(stub, "UOFFICER9")
    message = reviewer_message(stub, "C0SUPER", reference)
    for user in ("USTRANGER", "UOFFICER9"):
        slack.block_action(user, views.APPROVE_ACTION, message=message)
    stub.wait_for(lambda c: c.method == "chat.postEphemeral" and c.args["user"] == "UOFFICER9")
    with transaction(db) as session:
        refused = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "action_refused").order_by(AuditEvent.id)
        ).all()
    reasons = {(e.actor_id, e.details["reason"]) for e in refused}
    assert {("USTRANGER", "not_approver"), ("UOFFICER9", "own_request")} <= reasons


def test_typed_text_cannot_ping_mention_or_forge_links(slack: SlackDriver, stub: SlackStub) -> None:
    hostile = (
        "<!channel> <!here> @channel <@U0BOSS> <#C0SECRET> <https://evil.example|click> & *b* \x07\u202e"
    )
    values = valid_form_values(
        purpose_detail=hostile + " identify the robbery suspect",
        necessity=hostile + " nothing else has worked so far",
    )
    status, body = slack.view_submission("UOFFICER10", request_view(), slack_state(values))
    assert status == 200 and body["response_action"] == "update", body
    reference = submitted_reference(stub, "UOFFICER10")
    post = stub.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.ok
            and reference in c.args.get("text", "")
            and c.args["channel"] == "C0SUPER"
        )
    )
    rendered = json.dumps(post.args["blocks"])
    for forbidden in ("<!channel>", "<!here>", "<@U0BOSS>", "<#C0SECRET>", "<https://evil", "\\u0007"):
        assert forbidden not in rendered
    assert "@channel" not in rendered.replace("@\\u2060channel", "")


def test_cli_errors_do_not_echo_secrets(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.botprocess import ROOT

    secret = "xapp-1-SUPERSECRETVALUE"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "FRBOT_MODE": "socket",
        "FRBOT_SLACK_BOT_TOKEN": secret,
        "FRBOT_SLACK_APP_TOKEN": "xoxb-NOTANAPPTOKEN",
        "FRBOT_DATABASE_URL": "postgresql+psycopg://frbot:Pa55w0rdSecret@127.0.0.1:1/frbot",
    }
    for argv in (["run"], ["outbox", "list"], ["migrate"]):
        done = subprocess.run(
            [sys.executable, "-m", "bot.cli", *argv], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        output = done.stdout + done.stderr
        assert done.returncode == 2, output
        assert "SUPERSECRETVALUE" not in output and "NOTANAPPTOKEN" not in output
        assert "Pa55w0rdSecret" not in output and "Traceback" not in output

"""Tests of the local Slack stand-in (tests/slackstub), over real HTTP with slack_sdk and slack_bolt."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler, ServerErrorRetryHandler
from slack_sdk.signature import SignatureVerifier

from tests.slackstub import SlackDriver, SlackStub, sign_request, specs_dir_from_env, verify_signature

SPECS = specs_dir_from_env()
needs_specs = pytest.mark.skipif(
    SPECS is None,
    reason="FRBOT_SLACK_SPECS not set: point it at the slack-specs folder to run contract checks",
)

SECTION = {"type": "section", "text": {"type": "mrkdwn", "text": "*Request* FR-1"}}
MODAL = {
    "type": "modal",
    "callback_id": "fr_request",
    "title": {"type": "plain_text", "text": "New FR request"},
    "submit": {"type": "plain_text", "text": "Submit"},
    "blocks": [
        {
            "type": "input",
            "block_id": "reason",
            "label": {"type": "plain_text", "text": "Reason"},
            "element": {"type": "plain_text_input", "action_id": "reason_input"},
        }
    ],
}
HOME = {"type": "home", "blocks": [SECTION]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def api_error(excinfo: pytest.ExceptionInfo[SlackApiError]) -> dict[str, Any]:
    return excinfo.value.response.data  # type: ignore[return-value]


@pytest.fixture
def stub() -> Iterator[SlackStub]:
    if SPECS is None:
        pytest.skip("FRBOT_SLACK_SPECS not set: the contract-checking stub needs the slack-specs folder")
    with SlackStub(SPECS) as running:
        yield running


@pytest.fixture
def client(stub: SlackStub) -> WebClient:
    return stub.client()


def raw_post(stub: SlackStub, method: str, body: bytes, content_type: str, **headers: str) -> dict[str, Any]:
    request = urllib.request.Request(
        stub.base_url + method, data=body, headers={"Content-Type": content_type, **headers}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


# --- lifecycle, auth ---------------------------------------------------------------------------------


def test_works_without_specs_and_validates_nothing() -> None:
    with SlackStub(specs_dir=None) as stub:
        assert stub.base_url.startswith("http://127.0.0.1:") and stub.base_url.endswith("/api/")
        response = stub.client().chat_postMessage(channel="C1", text="x", blocks=[{"type": "nonsense"}])
        assert response["ok"] and stub.violations == []
        assert stub.client().views_publish(user_id="U1", view={"type": "home", "blocks": []})["ok"]


def test_stop_releases_the_port() -> None:
    stub = SlackStub(specs_dir=None).start()
    url = stub.base_url
    stub.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "auth.test", data=b"", timeout=1)


@needs_specs
def test_auth_test(client: WebClient) -> None:
    data = client.auth_test().data
    assert data == data | {"ok": True, "team_id": "T0TEST", "user_id": "UBOT", "bot_id": "B0TEST"}
    assert data["url"] == "https://example.slack.com/" and data["team"] and data["user"]


@needs_specs
def test_bad_or_missing_token(stub: SlackStub) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        WebClient(token="xoxb-wrong", base_url=stub.base_url).auth_test()
    assert api_error(excinfo)["error"] == "invalid_auth"
    # Slack answers not_authed when no token is sent at all (auth.test's documented example).
    assert raw_post(stub, "auth.test", b"", "application/x-www-form-urlencoded")["error"] == "not_authed"
    # The token may also travel as a form field.
    assert raw_post(stub, "auth.test", b"token=xoxb-test-token", "application/x-www-form-urlencoded")["ok"]
    assert stub.violations == []  # auth problems are not shape violations


# --- argument validation -----------------------------------------------------------------------------


@needs_specs
def test_unknown_method(client: WebClient, stub: SlackStub) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        client.api_call("chat.scheduleMessage", json={"channel": "C1", "text": "x", "post_at": 1})
    assert api_error(excinfo)["error"] == "unknown_method"
    assert [v.error for v in stub.violations] == ["unknown_method"]


@needs_specs
def test_missing_required_argument(client: WebClient, stub: SlackStub) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        client.api_call("chat.postMessage", json={"text": "no channel"})
    data = api_error(excinfo)
    assert data["error"] == "invalid_arguments"
    assert any("missing required field: channel" in m for m in data["response_metadata"]["messages"])
    with pytest.raises(AssertionError, match="missing required field: channel"):
        stub.assert_no_violations()


@needs_specs
def test_type_mismatch_and_form_coercion(client: WebClient, stub: SlackStub) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        client.api_call("chat.postMessage", data={"channel": "C1", "text": "x", "unfurl_links": "maybe"})
    assert api_error(excinfo)["error"] == "invalid_arguments"
    assert "unfurl_links" in api_error(excinfo)["response_metadata"]["messages"][0]
    stub.clear()
    # Form-encoded values are text: "1"/"true" are booleans, "2" an integer, blocks JSON-encoded text.
    client.api_call(
        "chat.postMessage",
        data={"channel": "C1", "text": "x", "unfurl_links": "1", "blocks": json.dumps([SECTION])},
    )
    call = stub.calls_to("chat.postMessage")[0]
    assert call.args["unfurl_links"] is True and call.args["blocks"] == [SECTION]
    assert client.conversations_members(channel="C1", limit=1)["ok"]
    assert stub.calls_to("conversations.members")[0].args["limit"] == 1
    stub.assert_no_violations()


@needs_specs
def test_specs_dir_defaults_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SlackStub().specs is not None
    monkeypatch.delenv("FRBOT_SLACK_SPECS")
    assert SlackStub().specs is None


@needs_specs
def test_form_encoded_view_and_bad_json(client: WebClient, stub: SlackStub) -> None:
    assert client.api_call("views.publish", data={"user_id": "U1", "view": json.dumps(HOME)})["ok"]
    assert stub.home_views["U1"]["blocks"][0]["text"] == SECTION["text"]
    with pytest.raises(SlackApiError) as excinfo:
        client.api_call("views.publish", data={"user_id": "U1", "view": "{not json"})
    assert api_error(excinfo)["error"] == "invalid_arguments"
    with pytest.raises(SlackApiError) as excinfo:
        client.api_call("chat.postMessage", data={"channel": "C1", "text": "x", "blocks": "[oops"})
    assert api_error(excinfo)["error"] == "invalid_blocks_format"
    assert [v.error for v in stub.violations] == ["invalid_arguments", "invalid_blocks_format"]


@needs_specs
def test_discriminated_oneof_agrees_with_plain_jsonschema() -> None:
    """The stub picks oneOf branches by `type` for speed; it must give the same verdicts as jsonschema."""
    from jsonschema import Draft202012Validator

    assert SPECS is not None
    schema = json.loads((SPECS / "block-kit" / "slack-block-kit.schema.json").read_text())
    plain = Draft202012Validator(schema)
    block_kit = SlackStub(SPECS).specs.block_kit  # type: ignore[union-attr]
    button = {"type": "button", "action_id": "b", "text": {"type": "plain_text", "text": "Go"}}
    cases = [
        [SECTION],
        [{"type": "section", "fields": [{"type": "mrkdwn", "text": "a"}] * 11}],
        [{"type": "section", "text": {"type": "plain_text", "text": "x"}, "accessory": button}],
        [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "x"},
                "accessory": dict(button, type="buttn"),
            }
        ],
        [{"type": "actions", "elements": [button, dict(button, style="secondary")]}],
        [{"type": "context", "elements": [{"type": "mrkdwn", "text": "x"}, {"type": "image"}]}],
        [{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}],
        [{"type": "divider", "block_id": ""}],
        [{"type": "no_such_block"}],
        [{"text": "no type"}],
        MODAL["blocks"],
    ]
    for blocks in cases:
        ours = block_kit.message_block_errors(blocks)
        assert bool(ours) == bool(list(plain.iter_errors(blocks))), (blocks, ours)


@needs_specs
def test_json_body_to_form_only_method_is_a_violation(client: WebClient, stub: SlackStub) -> None:
    # users.info does not take JSON bodies: real Slack would ignore the body and miss `user`.
    with pytest.raises(SlackApiError):
        client.api_call("users.info", json={"user": "U1"})
    assert stub.violations and "does not accept JSON" in stub.violations[0].messages[0]


# --- messages ----------------------------------------------------------------------------------------


@needs_specs
def test_post_message_stores_message_with_increasing_ts(client: WebClient, stub: SlackStub) -> None:
    first = client.chat_postMessage(channel="C1", text="one", blocks=[SECTION])
    second = client.chat_postMessage(channel="C1", text="two", thread_ts=first["ts"])
    assert first["channel"] == "C1" and float(second["ts"]) > float(first["ts"])
    assert first["message"]["text"] == "one" and first["message"]["bot_id"] == "B0TEST"
    stored = stub.message("C1", first["ts"])
    assert stored["blocks"][0]["text"] == SECTION["text"] and stored["blocks"][0]["block_id"]
    assert stored["reply_count"] == 1 and stub.messages[("C1", second["ts"])]["thread_ts"] == first["ts"]
    stub.assert_no_violations()


@needs_specs
def test_post_to_user_id_is_a_dm(client: WebClient, stub: SlackStub) -> None:
    response = client.chat_postMessage(channel="U123", text="hi")
    assert response["channel"] == "DU123" and ("DU123", response["ts"]) in stub.messages
    assert client.conversations_open(users="U123")["channel"]["id"] == "DU123"


@needs_specs
def test_channel_errors_are_not_violations(client: WebClient, stub: SlackStub) -> None:
    stub.unknown_channels.add("C404")
    stub.not_in_channel.add("CPRIVATE")
    for channel, error in [
        ("C404", "channel_not_found"),
        ("CPRIVATE", "not_in_channel"),
        ("#x", "channel_not_found"),
    ]:
        with pytest.raises(SlackApiError) as excinfo:
            client.chat_postMessage(channel=channel, text="x")
        assert api_error(excinfo)["error"] == error
    stub.assert_no_violations()


@needs_specs
def test_no_text(client: WebClient, stub: SlackStub) -> None:
    with (
        pytest.raises(SlackApiError) as excinfo,
        pytest.warns(UserWarning, match="`text` argument is missing"),
    ):
        client.chat_postMessage(channel="C1")
    assert api_error(excinfo)["error"] == "no_text"
    assert [v.error for v in stub.violations] == ["no_text"]


@needs_specs
def test_invalid_blocks_rejected(client: WebClient, stub: SlackStub) -> None:
    bad_header = {"type": "header", "text": {"type": "mrkdwn", "text": "headers are plain_text only"}}
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_postMessage(channel="C1", text="x", blocks=[SECTION, bad_header])
    data = api_error(excinfo)
    assert data["error"] == "invalid_blocks"
    assert any("/blocks/1/text/type" in m for m in data["response_metadata"]["messages"]), data
    assert stub.messages == {}
    assert stub.violations[0].method == "chat.postMessage" and stub.violations[0].error == "invalid_blocks"
    with pytest.raises(AssertionError, match="invalid_blocks"):
        stub.assert_no_violations()


@needs_specs
def test_more_than_50_blocks_rejected(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_postMessage(channel="C1", text="x", blocks=[{"type": "divider"}] * 51)
    assert api_error(excinfo)["error"] == "invalid_blocks"
    assert "50" in api_error(excinfo)["response_metadata"]["messages"][0]
    assert client.chat_postMessage(channel="C1", text="x", blocks=[{"type": "divider"}] * 50)["ok"]


@needs_specs
def test_update_replaces_and_keeps_history(client: WebClient, stub: SlackStub) -> None:
    ts = client.chat_postMessage(channel="C1", text="pending", blocks=[SECTION])["ts"]
    updated = client.chat_update(channel="C1", ts=ts, text="approved")
    assert updated["text"] == "approved" and updated["message"]["blocks"]  # absent blocks are kept
    client.chat_update(channel="C1", ts=ts, text="plain", blocks=[])  # [] removes them
    assert "blocks" not in stub.message("C1", ts) and stub.message("C1", ts)["text"] == "plain"
    assert [v["text"] for v in stub.message_versions[("C1", ts)]] == ["pending", "approved", "plain"]
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_update(channel="C1", ts="1.000001", text="x")
    assert api_error(excinfo)["error"] == "message_not_found"
    user_ts = stub.add_message("C1", "a user's message", user="U1")
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_update(channel="C1", ts=user_ts, text="x")
    assert api_error(excinfo)["error"] == "cant_update_message"
    stub.assert_no_violations()


@needs_specs
def test_ephemeral_and_permalink(client: WebClient, stub: SlackStub) -> None:
    response = client.chat_postEphemeral(channel="C1", user="U1", text="only you")
    assert response["message_ts"] and stub.ephemeral_messages[0]["user"] == "U1"
    ts = client.chat_postMessage(channel="C1", text="x")["ts"]
    permalink = client.chat_getPermalink(channel="C1", message_ts=ts)["permalink"]
    assert permalink == f"https://example.slack.com/archives/C1/p{ts.replace('.', '')}"


# --- conversations, users, usergroups ---------------------------------------------------------------


@needs_specs
def test_conversations(client: WebClient, stub: SlackStub) -> None:
    assert client.conversations_info(channel="C1")["channel"]["id"] == "C1"
    assert client.conversations_info(channel="DU1")["channel"]["is_im"] is True
    stub.channel_members["C1"] = ["U1", "U2", "U3"]
    first = client.conversations_members(channel="C1", limit=2)
    assert first["members"] == ["U1", "U2"]
    rest = client.conversations_members(
        channel="C1", limit=2, cursor=first["response_metadata"]["next_cursor"]
    )
    assert rest["members"] == ["U3"] and rest["response_metadata"]["next_cursor"] == ""
    opened = client.conversations_open(users="U1", return_im=True)["channel"]
    assert opened["id"] == "DU1" and opened["user"] == "U1"
    stub.assert_no_violations()


@needs_specs
def test_users_info(client: WebClient, stub: SlackStub) -> None:
    user = client.users_info(user="U777")["user"]
    assert user == user | {"id": "U777", "tz": "Europe/London", "is_bot": False} and user["name"]
    stub.users["U1"] = {"real_name": "Alice Analyst", "tz": "America/New_York"}
    assert client.users_info(user="U1")["user"]["real_name"] == "Alice Analyst"
    with pytest.raises(SlackApiError) as excinfo:
        client.users_info(user="C1")
    assert api_error(excinfo)["error"] == "user_not_found"


@needs_specs
def test_usergroups(client: WebClient, stub: SlackStub) -> None:
    stub.usergroups["S0APPROVERS"] = ["U1", "U2"]
    stub.add_usergroup("S0ADMINS", ["U9"], handle="fr-admins")
    assert client.usergroups_users_list(usergroup="S0APPROVERS")["users"] == ["U1", "U2"]
    groups = client.usergroups_list(include_users=True)["usergroups"]
    assert {g["id"]: g["users"] for g in groups} == {"S0APPROVERS": ["U1", "U2"], "S0ADMINS": ["U9"]}
    assert [g["handle"] for g in groups if g["id"] == "S0ADMINS"] == ["fr-admins"]
    with pytest.raises(SlackApiError) as excinfo:
        client.usergroups_users_list(usergroup="S0NOPE")
    assert api_error(excinfo)["error"] == "no_such_subteam"
    stub.assert_no_violations()


# --- views -------------------------------------------------------------------------------------------


@needs_specs
def test_views_open_with_trigger(client: WebClient, stub: SlackStub) -> None:
    trigger = stub.issue_trigger_id(user_id="U1")
    view = client.views_open(trigger_id=trigger, view=MODAL)["view"]
    assert view["id"].startswith("V") and view["hash"] and view["team_id"] == "T0TEST"
    assert view["callback_id"] == "fr_request" and view["state"] == {"values": {}}
    assert stub.views[view["id"]].user_id == "U1" and stub.open_modal_stack("U1")[0].id == view["id"]
    with pytest.raises(SlackApiError) as excinfo:
        client.views_open(trigger_id=trigger, view=MODAL)
    assert api_error(excinfo)["error"] == "exchanged_trigger_id"
    with pytest.raises(SlackApiError) as excinfo:
        client.views_open(trigger_id="1.2.made-up", view=MODAL)
    assert api_error(excinfo)["error"] == "invalid_trigger_id"
    stub.assert_no_violations()


@needs_specs
def test_expired_trigger() -> None:
    clock = FakeClock()
    with SlackStub(SPECS, clock=clock, trigger_ttl=3.0) as stub:
        trigger = stub.issue_trigger_id(user_id="U1")
        clock.now += 3.5
        with pytest.raises(SlackApiError) as excinfo:
            stub.client().views_open(trigger_id=trigger, view=MODAL)
        assert api_error(excinfo)["error"] == "expired_trigger_id"
        stub.assert_no_violations()


@needs_specs
def test_invalid_modal_is_rejected(client: WebClient, stub: SlackStub) -> None:
    long_title = dict(MODAL, title={"type": "plain_text", "text": "A title longer than 24 chars"})
    no_submit = {k: v for k, v in MODAL.items() if k != "submit"}  # input blocks need a submit button
    for view in (long_title, no_submit):
        with pytest.raises(SlackApiError) as excinfo:
            client.views_open(trigger_id=stub.issue_trigger_id("U1"), view=view)
        assert api_error(excinfo)["error"] == "invalid_arguments"
        assert api_error(excinfo)["response_metadata"]["messages"]
    assert len(stub.violations) == 2 and stub.views == {}


@needs_specs
def test_views_push_and_update(client: WebClient, stub: SlackStub) -> None:
    root = client.views_open(trigger_id=stub.issue_trigger_id("U1"), view=MODAL)["view"]
    pushed = client.views_push(trigger_id=stub.issue_trigger_id("U1"), view=MODAL)["view"]
    assert pushed["root_view_id"] == root["id"] and pushed["previous_view_id"] == root["id"]
    changed = dict(MODAL, title={"type": "plain_text", "text": "Updated"})
    updated = client.views_update(view_id=root["id"], hash=root["hash"], view=changed)["view"]
    assert updated["id"] == root["id"] and updated["hash"] != root["hash"]
    assert (
        stub.views[root["id"]].view["title"]["text"] == "Updated"
        and len(stub.views[root["id"]].versions) == 2
    )
    with pytest.raises(SlackApiError) as excinfo:
        client.views_update(view_id=root["id"], hash=root["hash"], view=changed)  # stale hash
    assert api_error(excinfo)["error"] == "hash_conflict"
    with pytest.raises(SlackApiError) as excinfo:
        client.views_update(view_id="VNOPE", view=changed)
    assert api_error(excinfo)["error"] == "not_found"
    stub.assert_no_violations()


@needs_specs
def test_views_publish(client: WebClient, stub: SlackStub) -> None:
    first = client.views_publish(user_id="U1", view=HOME)["view"]
    assert stub.home_views["U1"]["id"] == first["id"] and first["type"] == "home"
    with pytest.raises(SlackApiError) as excinfo:
        client.views_publish(user_id="U1", view={"type": "home", "blocks": [{"type": "section"}]})
    assert api_error(excinfo)["error"] == "invalid_arguments"
    assert [v.method for v in stub.violations] == ["views.publish"]


# --- fault injection ---------------------------------------------------------------------------------


@needs_specs
def test_rate_limit_honoured_by_slack_sdk_retry_handler(stub: SlackStub) -> None:
    client = stub.client(retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)])
    fault = stub.fail_next("chat.postMessage", retry_after=0)
    assert client.chat_postMessage(channel="C1", text="eventually")["ok"]
    attempts = stub.calls_to("chat.postMessage")
    assert [(c.status, c.injected) for c in attempts] == [(429, True), (200, False)]
    assert attempts[0].error == "ratelimited" and fault.remaining == 0 and stub.pending_faults == []


@needs_specs
def test_rate_limit_without_retry_handler_surfaces(stub: SlackStub) -> None:
    stub.fail_next("*", retry_after=7)
    with pytest.raises(SlackApiError) as excinfo:
        WebClient(token=stub.bot_token, base_url=stub.base_url, retry_handlers=[]).auth_test()
    assert excinfo.value.response.status_code == 429
    assert excinfo.value.response.headers["Retry-After"] == "7"


@needs_specs
def test_server_error_and_slack_level_error(stub: SlackStub) -> None:
    stub.fail_next("chat.postMessage", status=503)
    retrying = stub.client(retry_handlers=[ServerErrorRetryHandler(max_retry_count=1)])
    assert retrying.chat_postMessage(channel="C1", text="x")["ok"]
    assert [c.status for c in stub.calls_to("chat.postMessage")] == [503, 200]
    stub.fail_next("chat.postMessage", error="is_archived", count=2)
    for _ in range(2):
        with pytest.raises(SlackApiError) as excinfo:
            stub.client().chat_postMessage(channel="C1", text="x")
        assert excinfo.value.response.status_code == 200 and api_error(excinfo)["error"] == "is_archived"
    assert stub.client().chat_postMessage(channel="C1", text="x")["ok"]
    stub.assert_no_violations()


@needs_specs
def test_latency(client: WebClient, stub: SlackStub) -> None:
    stub.latency = 0.2
    started = time.monotonic()
    client.auth_test()
    assert time.monotonic() - started >= 0.2


# --- waiting -----------------------------------------------------------------------------------------


@needs_specs
def test_wait_for(client: WebClient, stub: SlackStub) -> None:
    timer = threading.Timer(0.1, lambda: client.chat_postMessage(channel="C2", text="later"))
    timer.start()
    call = stub.wait_for(lambda c: c.method == "chat.postMessage" and c.args["channel"] == "C2")
    assert call.ok and call.response["channel"] == "C2"
    assert stub.wait_for("chat.postMessage", timeout=0.1) is call
    with pytest.raises(AssertionError, match=r"views\.open.*calls seen:\n.*chat\.postMessage"):
        stub.wait_for("views.open", timeout=0.2)
    stub.clear()
    assert len(stub.calls) == 0


# --- signing & driver --------------------------------------------------------------------------------

SECRET = "test-signing-secret"


def test_sign_request_matches_slack_sdk_verifier() -> None:
    body = b"command=%2Ffr&text=hello"
    headers = sign_request(SECRET, body, timestamp=1_700_000_000)
    verifier = SignatureVerifier(SECRET, clock=type("C", (), {"now": lambda self: 1_700_000_010})())
    assert verifier.is_valid(body, headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"])
    assert verify_signature(SECRET, body, 1_700_000_000, headers["X-Slack-Signature"])
    assert not verify_signature("other", body, 1_700_000_000, headers["X-Slack-Signature"])


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in bot endpoint that checks signatures and echoes what it received."""

    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        valid = SignatureVerifier(SECRET).is_valid(
            body, self.headers["X-Slack-Request-Timestamp"], self.headers["X-Slack-Signature"]
        )
        self.received.append({"body": body, "content_type": self.headers["Content-Type"], "valid": valid})
        data = json.dumps({"valid": valid}).encode()
        self.send_response(200 if valid else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_driver_signs_and_shapes_requests_without_stub() -> None:
    handler = type("Handler", (_Recorder,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        driver = SlackDriver(f"http://127.0.0.1:{server.server_address[1]}/slack/events", SECRET)
        assert driver.slash_command("/fr", "new", "U1") == (200, {"valid": True})
        form = dict(urllib.parse.parse_qsl(handler.received[0]["body"].decode()))
        assert form["command"] == "/fr" and form["user_id"] == "U1" and form["channel_id"] == "C0GENERAL"
        assert form["trigger_id"].count(".") == 2 and form["response_url"].startswith(
            "https://hooks.slack.com/"
        )
        driver.view_submission("U1", MODAL, {"reason": {"reason_input": "case 42"}})
        payload = json.loads(dict(urllib.parse.parse_qsl(handler.received[1]["body"].decode()))["payload"])
        assert payload["type"] == "view_submission" and payload["user"]["id"] == "U1"
        assert payload["view"]["state"]["values"] == {
            "reason": {"reason_input": {"type": "plain_text_input", "value": "case 42"}}
        }
        select = {
            "type": "static_select",
            "action_id": "pick",
            "options": [{"text": {"type": "plain_text", "text": "Engine A"}, "value": "engine-a"}],
        }
        message = {
            "ts": "1700000000.000100",
            "channel": "C9",
            "text": "x",
            "blocks": [{"type": "actions", "block_id": "tools", "elements": [select]}],
        }
        driver.block_action("U2", "pick", "engine-a", message=message)
        payload = json.loads(dict(urllib.parse.parse_qsl(handler.received[2]["body"].decode()))["payload"])
        assert payload["container"] == {
            "type": "message",
            "message_ts": "1700000000.000100",
            "channel_id": "C9",
            "is_ephemeral": False,
        }
        assert (
            payload["actions"][0]["block_id"] == "tools" and payload["actions"][0]["type"] == "static_select"
        )
        assert payload["actions"][0]["selected_option"]["text"]["text"] == "Engine A"
        assert "channel" not in payload["message"] and payload["channel"]["id"] == "C9"
        assert SlackDriver(driver.url, "wrong-secret").slash_command("/fr", "", "U1")[0] == 401
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def bolt_url(stub: SlackStub) -> Iterator[str]:
    """A small Bolt app wired to the stub, served over HTTP like the real bot will be."""
    from slack_bolt import App, BoltRequest

    app = App(signing_secret=SECRET, client=stub.client())

    @app.command("/fr")
    def open_modal(ack: Any, body: dict[str, Any], client: WebClient) -> None:
        ack()
        client.views_open(trigger_id=body["trigger_id"], view=MODAL)

    @app.view("fr_request")
    def submitted(ack: Any, body: dict[str, Any], view: dict[str, Any], client: WebClient) -> None:
        reason = view["state"]["values"]["reason"]["reason_input"]["value"]
        if not reason:
            ack(response_action="errors", errors={"reason": "Please give a reason"})
            return
        ack()
        client.chat_postMessage(
            channel="C0REQUESTS",
            text=f"Request: {reason}",
            blocks=[
                SECTION,
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "action_id": "approve",
                            "value": "FR-1",
                            "text": {"type": "plain_text", "text": "Approve"},
                        }
                    ],
                },
            ],
        )

    @app.action("approve")
    def approve(ack: Any, body: dict[str, Any], respond: Any) -> None:
        ack()
        respond(
            replace_original=True, text=f"Approved {body['actions'][0]['value']} by <@{body['user']['id']}>"
        )

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            response = app.dispatch(BoltRequest(body=body, headers=dict(self.headers.items())))
            data = (response.body or "").encode()
            self.send_response(response.status)
            for name, values in response.headers.items():
                for value in values:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/slack/events"
    server.shutdown()
    server.server_close()


@needs_specs
def test_driver_end_to_end_with_bolt(stub: SlackStub, bolt_url: str) -> None:
    driver = SlackDriver(bolt_url, SECRET, stub=stub)
    status, _ = driver.slash_command("/fr", "new", "U1")
    assert status == 200
    opened = stub.wait_for("views.open")
    assert opened.ok, opened.describe()
    view = opened.response["view"]

    # An empty input: the bot answers with response_action=errors; the modal stays open.
    status, body = driver.view_submission("U1", view, {})
    assert status == 200 and body["response_action"] == "errors"
    assert stub.open_modal_stack("U1")

    status, body = driver.view_submission("U1", view, {"reason": {"reason_input": "case 42"}})
    assert status == 200 and not stub.open_modal_stack("U1")  # a plain ack closes the modal
    posted = stub.wait_for("chat.postMessage")
    assert posted.ok, posted.describe()
    message = stub.message("C0REQUESTS", posted.response["ts"])

    status, _ = driver.block_action("U2", "approve", message=message)
    assert status == 200
    responded = stub.wait_for("response_url")
    assert responded.ok and stub.message("C0REQUESTS", message["ts"])["text"] == "Approved FR-1 by <@U2>"
    assert "blocks" not in stub.message("C0REQUESTS", message["ts"])  # replace_original replaces everything
    stub.assert_no_violations()


@needs_specs
def test_response_url(stub: SlackStub) -> None:
    ts = stub.client().chat_postMessage(channel="C1", text="original", blocks=[SECTION])["ts"]
    url = stub.issue_response_url("actions", channel_id="C1", user_id="U1", message_ts=ts)

    def post(payload: dict[str, Any]) -> int:
        request = urllib.request.Request(
            url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert post({"text": "just for you"}) == 200
    assert stub.ephemeral_messages[-1] == {
        "channel": "C1",
        "user": "U1",
        "ts": stub.ephemeral_messages[-1]["ts"],
        "text": "just for you",
    }
    assert post({"response_type": "in_channel", "text": "for everyone"}) == 200
    assert [m["text"] for m in stub.messages.values()] == ["original", "for everyone"]
    assert post({"replace_original": True, "blocks": [{"type": "header"}]}) == 400  # header needs text
    assert [v.method for v in stub.violations] == ["response_url"]
    stub.fail_next("response_url", status=500)
    assert post({"delete_original": True}) == 500
    assert post({"delete_original": True}) == 200 and ("C1", ts) not in stub.messages


@needs_specs
def test_bad_view_submission_response_is_a_violation(stub: SlackStub) -> None:
    view = stub.client().views_open(trigger_id=stub.issue_trigger_id("U1"), view=MODAL)["view"]
    stub.apply_view_response(view["id"], 200, {"response_action": "errors", "errors": {"nope": "x"}})
    stub.apply_view_response(view["id"], 200, {"response_action": "update", "view": {"type": "modal"}})
    assert [v.method for v in stub.violations] == ["view_submission.response"] * 2
    stub.apply_view_response(view["id"], 200, {"response_action": "clear"})
    assert stub.open_modal_stack("U1") == []

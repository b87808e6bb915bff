"""The request gate without a server: body and payload checks, redelivered events, Socket Mode envelopes."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote_plus, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_bolt import App, BoltResponse
from slack_bolt.request.internals import parse_body
from slack_sdk.socket_mode.request import SocketModeRequest

from bot.guard import (
    EventDeduplicator,
    MalformedRequest,
    form_fields,
    quiet_errors,
    read_body,
    shape_problem,
    unquote_form,
)
from bot.server import CheckedSocketModeHandler
from handlers.after_answer import AfterAnswer

FORM = "application/x-www-form-urlencoded"
SUBMISSION = {
    "type": "view_submission",
    "user": {"id": "U1"},
    "view": {"id": "V1", "type": "modal", "callback_id": "fr_request_submit", "state": {"values": {}}},
}


def form_body(**fields: str) -> bytes:
    return urlencode(fields).encode()


@pytest.mark.parametrize(
    ("content_type", "body", "problem"),
    [
        (FORM, form_body(payload=json.dumps(SUBMISSION)), None),
        (FORM, form_body(command="/fr-request", user_id="U1", trigger_id="1.2.3"), None),
        ("application/json", json.dumps({"type": "url_verification", "challenge": "x"}).encode(), None),
        (FORM, form_body(payload="{not json"), "payload is not a JSON object"),
        (FORM, form_body(command="/fr-request"), "missing user_id, trigger_id"),
        (FORM, b"\xff\xfe", "body is not UTF-8"),
        ("application/json", b"[1]", "body is not a JSON object"),
        (FORM, b"", "unknown payload"),
        (FORM, b"payload", "body is not form-encoded"),
        (FORM, b"{not json", "body is not a JSON object"),  # Bolt reads a body starting with { as JSON
    ],
)
def test_read_body_refuses_what_bolt_cannot_read(content_type: str, body: bytes, problem: str | None) -> None:
    try:
        read_body(content_type, body)
    except MalformedRequest as refused:
        assert str(refused) == problem
    else:
        assert problem is None


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (FORM, form_body(payload=json.dumps(SUBMISSION))),
        (FORM, form_body(command="/fr-request", user_id="U1", trigger_id="1.2.3", text="a b&c=d")),
        ("application/json", json.dumps({"type": "url_verification", "challenge": "x"}).encode()),
    ],
)
def test_read_body_gives_what_bolt_would_parse(content_type: str, body: bytes) -> None:
    # Bolt is handed this payload instead of parsing the body itself (bot/server.py ParsedRequest).
    text, payload = read_body(content_type, body)
    assert text == body.decode()
    assert payload == parse_body(text, content_type)


# Characters that the fast decoder must hand to urllib or decode as urllib does: escapes' own characters,
# line breaks, non-ASCII (and an emoji joined by U+200D), and the start of a broken escape.
AWKWARD = st.sampled_from(
    ["%", "=", "+", " ", "&", "\r\n", "\n", "é", "👨\u200d👩", "%4", "%zz", "%%41", "%2b"]
)
# No lone surrogates: text from a body's UTF-8 never holds one, and quote() cannot encode one (invalid
# bytes are the next test's).
TEXT = st.lists(st.one_of(st.characters(exclude_categories=("Cs",)), AWKWARD), max_size=40).map("".join)


def _both(text: str) -> tuple[object, object]:
    def urllib_reads() -> object:
        try:
            return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text)))
        except ValueError:
            return "refused"

    def ours() -> object:
        try:
            return form_fields(text)
        except MalformedRequest:
            return "refused"

    return ours(), urllib_reads()


@settings(max_examples=400, deadline=None)
@given(TEXT, st.sampled_from(["plus", "percent", "lower", "raw"]))
def test_form_decoding_reads_what_urllib_reads(raw: str, how: str) -> None:
    encoded = {
        "plus": quote_plus(raw),
        "percent": quote(raw, safe=""),
        "lower": quote_plus(raw).lower(),  # lowercase hex digits are escapes too
        "raw": raw,  # unencoded and broken escapes: urllib's reading is the rule
    }[how]
    assert unquote_form(encoded) == unquote_plus(encoded)
    ours, urllib_reads = _both(f"payload={encoded}&x={encoded}")
    assert ours == urllib_reads
    ours, urllib_reads = _both(encoded)
    assert ours == urllib_reads


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=30))
def test_form_decoding_replaces_bytes_that_are_not_utf8_as_urllib_does(raw: bytes) -> None:
    encoded = quote_plus(raw)
    assert unquote_form(encoded) == unquote_plus(encoded)


@pytest.mark.parametrize(
    "payload",
    [
        {**SUBMISSION, "user": None},
        {**SUBMISSION, "view": {**SUBMISSION["view"], "type": None}},
        {**SUBMISSION, "view": {**SUBMISSION["view"], "state": "x"}},
        {**SUBMISSION, "view": {**SUBMISSION["view"], "private_metadata": {"a": 1}}},
        {"type": "block_actions", "user": {"id": "U1"}, "actions": []},
        {"type": "block_actions", "user": {"id": "U1"}, "actions": [{"value": "1:0"}]},
        {"type": "event_callback", "event": {"type": "app_home_opened"}},
        {"type": "event_callback", "event_id": "Ev1", "event": "x"},
        {"type": 7},
    ],
)
def test_shape_problem_names_what_is_missing(payload: dict[str, Any]) -> None:
    assert shape_problem(payload) is not None


def test_redelivered_event_is_acknowledged_not_run_again() -> None:
    dedupe = EventDeduplicator(size=2)
    runs: list[str] = []

    def deliver(event_id: str, retry: str | None = None) -> Any:
        headers = {"x-slack-retry-num": [retry]} if retry else {}
        body = {"type": "event_callback", "event_id": event_id, "event": {"type": "app_home_opened"}}
        request = SimpleNamespace(headers=headers, body=body)
        return dedupe.process(req=request, resp=BoltResponse(status=200), next=lambda: runs.append(event_id))

    deliver("Ev1")
    response = deliver("Ev1", retry="1")
    assert isinstance(response, BoltResponse) and response.status == 200
    deliver("Ev2")
    deliver("Ev3")
    deliver("Ev1", retry="2")  # forgotten after 2 newer events: a retry this process never ran is run
    assert runs == ["Ev1", "Ev2", "Ev3", "Ev1"]
    action = SimpleNamespace(headers={}, body={"type": "block_actions"})
    dedupe.process(req=action, resp=BoltResponse(status=200), next=lambda: runs.append("action"))
    assert runs[-1] == "action"  # interactions are not deduplicated here (the database keys do that)


def test_listener_errors_are_one_line(caplog: pytest.LogCaptureFixture) -> None:
    try:
        {}["user"]
    except KeyError as exc:
        error = exc
    with caplog.at_level(logging.ERROR):
        response = quiet_errors(error, {"type": "view_submission"}, logging.getLogger("test"))
    assert response.status == 400
    assert caplog.records[0].exc_info is None
    assert "view_submission request: KeyError at test_guard.py" in caplog.text


def test_work_after_the_answer_runs_and_its_failures_are_one_line(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    def fails(user: str) -> None:
        done.append(user)
        raise KeyError("user")

    executor = ThreadPoolExecutor(max_workers=2)
    after_answer = AfterAnswer(executor)
    with caplog.at_level(logging.ERROR):
        after_answer("block_actions", done.append, "U1")
        after_answer("block_actions", fails, "U2")
        executor.shutdown(wait=True)  # what bot/cli.py does at shutdown: the work is finished first
    assert sorted(done) == ["U1", "U2"]
    assert [r.exc_info for r in caplog.records] == [None]  # no traceback: it may hold the payload
    assert "block_actions request: KeyError at test_guard.py" in caplog.text


def test_socket_mode_drops_malformed_envelopes_before_bolt(monkeypatch: pytest.MonkeyPatch) -> None:
    app = App(token="xoxb-x", signing_secret="s", token_verification_enabled=False)
    handler = CheckedSocketModeHandler(app, "xapp-1-test")
    passed: list[str] = []
    monkeypatch.setattr(
        "slack_bolt.adapter.socket_mode.SocketModeHandler.handle",
        lambda self, client, req: passed.append(req.envelope_id),
    )
    acked: list[str] = []
    client = SimpleNamespace(send_socket_mode_response=lambda response: acked.append(response.envelope_id))
    broken = SocketModeRequest(type="interactive", envelope_id="bad", payload={"type": "view_submission"})
    handler.handle(client, broken)
    handler.handle(client, SocketModeRequest(type="interactive", envelope_id="good", payload=SUBMISSION))
    assert acked == ["bad"] and passed == ["good"]


@pytest.mark.parametrize("timestamp", ["²", "1" * 5000, "", "12a", " 1700000000"])
def test_a_request_with_an_odd_timestamp_is_refused_as_unsigned(timestamp: str) -> None:
    """ "²" passes str.isdigit() and five thousand digits overflow int(): either reached slack_sdk's int()
    and was answered 500 with a traceback, where anything unsigned is answered 401."""
    from bot.server import wsgi_app
    from tests.conftest import signed_environ

    app = App(signing_secret="secret", token="xoxb-test", token_verification_enabled=False)
    environ = signed_environ(
        "secret", "command=%2Ffr-request&user_id=U1", "application/x-www-form-urlencoded"
    )
    environ["HTTP_X_SLACK_REQUEST_TIMESTAMP"] = timestamp
    statuses: list[str] = []
    b"".join(wsgi_app(app, "secret")(environ, lambda status, _headers: statuses.append(status)))
    assert [status.split()[0] for status in statuses] == ["401"]


def test_a_stop_asked_for_while_starting_ends_socket_mode_before_it_connects() -> None:
    """SIGTERM while the bot was starting (Slack's auth.test, the background work) set the start's event,
    which Socket Mode never looked at: it connected and ran on until the supervisor killed it."""
    import threading

    from bot.server import serve_socket

    stopping = threading.Event()
    stopping.set()
    done = threading.Event()
    worker = threading.Thread(  # a daemon: should the stop be missed, the test fails instead of hanging
        target=lambda: (serve_socket(None, "xapp-unused", stopping), done.set()),  # type: ignore[arg-type]
        daemon=True,
    )
    worker.start()
    assert done.wait(5), "serve_socket went on although the stop came first"

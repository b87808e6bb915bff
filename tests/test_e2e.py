"""End to end: the real bot as an HTTP server, driven by signed Slack requests, talking to the Slack stand-in.

Each backend (SQLite, PostgreSQL) gets one bot process for the module; tests use distinct users and
requests so they do not depend on each other. With FRBOT_SLACK_SPECS set, the stand-in checks every Web API
call, message and view against Slack's published contracts, and any violation fails the test.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot import forms, views
from tests.botprocess import SIGNING_SECRET, BotProcess, follow_up_processes
from tests.conftest import linux_only, slack_state, valid_form_values
from tests.e2e_support import (
    buttons,
    click,
    decide,
    dms_to,
    open_form,
    outcome_of,
    reference_of,
    reviewer_message,
    submit_form,
    wait_for_message,
)
from tests.slackstub import SlackDriver, SlackStub

OFFICER = "UOFFICER1"


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


def test_answers_do_not_wait_for_the_slack_calls_that_follow_them(
    slack: SlackDriver, stub: SlackStub
) -> None:
    """The receiving thread answers as soon as the listener acks (handlers/after_answer.py): a command, a
    click, a status reply and an App Home visit are answered while the Slack call each leads to is still
    waiting at the stand-in, and every one of those calls is then made."""
    officer = "UOFFICER7"
    _, body = submit_form(slack, open_form(slack, stub, officer), officer)
    reference = reference_of(body)
    message = reviewer_message(stub, "C0SUPER", reference)
    requests: list[tuple[str, Callable[[], tuple[int, Any]]]] = [
        ("views.open", lambda: slack.slash_command("/fr-request", "", officer)),
        ("views.open", lambda: slack.block_action("USUP1", views.APPROVE_ACTION, message=message)),
        ("response_url", lambda: slack.slash_command("/fr-request", f"status {reference}", officer)),
        ("views.publish", lambda: slack.event({"type": "app_home_opened", "user": officer, "tab": "home"})),
    ]
    stub.latency = 2.0  # every Slack call the bot makes now takes 2 s
    try:
        for method, send in requests:
            stub.clear()
            status, _ = send()
            assert status == 200
            assert stub.calls_to(method) == [], f"the answer waited for {method}"
            assert stub.wait_for(method, timeout=30).ok
    finally:
        stub.latency = 0.0


def thread_niceness(pid: int) -> dict[int, int]:
    """Each thread of a process and its niceness, from /proc (field 19 of a task's stat)."""
    niceness = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            niceness[int(task.name)] = int(fields[16])
    return niceness


@linux_only
def test_the_work_after_answers_runs_at_a_lower_cpu_priority_than_the_answers(
    slack: SlackDriver, stub: SlackStub, bot: BotProcess
) -> None:
    """The outbox dispatcher, the intake and the threads doing the work after an answer (here opening a
    modal) run at FRBOT_BACKGROUND_NICENESS (19); the main thread and the threads answering Slack at 0.
    On PostgreSQL that work is in the follow-up process (bot/follow_up.py), all of it at 19."""
    assert bot.process is not None
    open_form(slack, stub, "UOFFICER8")  # its modal is opened by a listener thread, after the answer
    answering = thread_niceness(bot.process.pid)
    assert answering[bot.process.pid] == 0
    if bot.env["FRBOT_DATABASE_URL"].startswith("postgresql"):
        assert set(answering.values()) == {0}, answering
        (follow_up,) = follow_up_processes(bot.process.pid)
        background = thread_niceness(follow_up)
        assert set(background.values()) == {19}, background
        assert len(background) >= 4, background  # its main thread, the dispatcher, the intake, a listener
        return
    assert set(answering.values()) == {0, 19}
    lowered = sum(1 for value in answering.values() if value == 19)
    assert lowered >= 3, answering  # the dispatcher, the intake, a listener thread
    assert len(answering) - lowered > 1, answering  # the main thread and the HTTP threads


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
    assert buttons(message) == [
        views.APPROVE_ACTION,
        views.REJECT_ACTION,
        views.INFO_ACTION,
        views.COMMENT_ACTION,
    ]
    stub.wait_for(lambda c: c.method == "chat.postMessage" and c.args.get("channel") == OFFICER)
    assert any(reference in text for text in dms_to(stub, OFFICER))

    # The same modal delivered again (double click racing the first answer) creates no second request.
    again = SlackDriver(slack.url, SIGNING_SECRET)
    status, body = again.view_submission(OFFICER, submitted_view, slack_state(valid_form_values()))
    assert status == 200 and reference_of(outcome_of(stub, submitted_view, body)) == reference
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
    current = wait_for_message(stub, message["channel"], message["ts"], lambda m: not buttons(m))
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
    for channel, ts in ((first["channel"], first["ts"]), (second["channel"], second["ts"])):
        settled = wait_for_message(stub, channel, ts, lambda m: "Rejected" in json.dumps(m["blocks"]))
        assert buttons(settled) == []
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
    assert body["view"]["title"]["text"] == "Question sent"
    dm = stub.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.args.get("channel") == officer
            and "question" in c.args.get("text", "")
        )
    )
    assert "Which exhibit" in json.dumps(dm.args["blocks"])

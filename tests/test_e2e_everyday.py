"""End to end, the everyday flows: withdraw, the answer loop, status and list, App Home, post-use record,
re-request and delegation, each driven through the real bot with signed Slack requests."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

from bot import forms, views
from tests.e2e_support import (
    buttons,
    decide,
    open_form,
    outcome_of,
    posted_message,
    reference_of,
    reviewer_message,
    submit_form,
    wait_for_message,
)
from tests.slackstub import SlackDriver, SlackStub

APPROVAL = "Necessary and proportionate: no other route to identify."


def submitted(
    slack: SlackDriver, stub: SlackStub, officer: str, **overrides: str
) -> tuple[str, dict[str, Any]]:
    view = open_form(slack, stub, officer)
    _, body = submit_form(slack, view, officer, **overrides)
    reference = reference_of(body)
    return reference, reviewer_message(stub, "C0SUPER", reference)


def latest_dm(stub: SlackStub, officer: str, contains: str) -> dict[str, Any]:
    """The officer's DM whose fallback text contains `contains`, as Slack stores it."""
    return posted_message(stub, officer, contains)


def press(slack: SlackDriver, stub: SlackStub, user: str, action_id: str, message: dict[str, Any]) -> None:
    stub.clear()
    status, _ = slack.block_action(user, action_id, message=message)
    assert status == 200


def test_officer_withdraws_from_the_dm(slack: SlackDriver, stub: SlackStub) -> None:
    officer = "UWITHDRAW"
    reference, message = submitted(slack, stub, officer)
    dm = latest_dm(stub, officer, reference)
    assert views.WITHDRAW_ACTION in buttons(dm)
    press(slack, stub, "USTRANGER", views.WITHDRAW_ACTION, dm)  # someone else's click is refused
    assert stub.wait_for("chat.postEphemeral").args["user"] == "USTRANGER"
    press(slack, stub, officer, views.WITHDRAW_ACTION, dm)
    settled = wait_for_message(stub, message["channel"], message["ts"], lambda m: not buttons(m))
    assert "Withdrawn" in json.dumps(settled["blocks"])
    assert views.REREQUEST_ACTION in buttons(latest_dm(stub, officer, "withdrew"))


def test_answer_loop_reaches_the_reviewers(slack: SlackDriver, stub: SlackStub) -> None:
    officer = "UANSWER"
    reference, message = submitted(slack, stub, officer)
    _, asked = decide(
        slack, stub, "USUP2", views.INFO_ACTION, message, question="Which exhibit is the still from?"
    )
    assert title(asked) == "Question sent" and reference in json.dumps(asked)
    question_dm = latest_dm(stub, officer, "question")
    press(slack, stub, officer, views.ANSWER_ACTION, question_dm)
    opened = stub.wait_for("views.open")
    assert opened.ok and opened.response["view"]["callback_id"] == views.ANSWER_CALLBACK
    view = opened.response["view"]
    typed = {"answer": {forms.ACTION_ID: {"type": "plain_text_input", "value": "JS/1"}}}
    status, body = slack.view_submission(officer, view, typed)
    assert status == 200 and title(body) == "Answer received"  # answered before it is saved
    assert title(outcome_of(stub, view, body)) == "Answer sent"
    thread = stub.wait_for(
        lambda c: c.method == "chat.postMessage" and c.args.get("thread_ts") == message["ts"]
    )
    assert "JS/1" in json.dumps(thread.args["blocks"])
    settled = wait_for_message(stub, message["channel"], message["ts"], lambda m: "Answered" in json.dumps(m))
    assert views.APPROVE_ACTION in buttons(settled)  # the review goes on


def test_status_is_for_involved_people_only_and_list_shows_mine(slack: SlackDriver, stub: SlackStub) -> None:
    officer = "USTATUS"
    reference, _ = submitted(slack, stub, officer)
    for user, expected in ((officer, "Timeline"), ("USUP1", "Timeline"), ("USTRANGER", "not one of yours")):
        stub.clear()
        status, _ = slack.slash_command("/fr-request", f"status {reference.lower()}", user)
        assert status == 200
        reply = stub.wait_for("response_url")
        assert expected in json.dumps(reply.args), user
    stub.clear()
    slack.slash_command("/fr-request", "list", officer)
    assert reference in json.dumps(stub.wait_for("response_url").args)


def test_app_home_shows_work_and_decides_from_there(slack: SlackDriver, stub: SlackStub) -> None:
    officer = "UHOME"
    slack.event({"type": "app_home_opened", "user": officer, "channel": "DUHOME", "tab": "home"})
    reference, message = submitted(slack, stub, officer)
    stub.clear()
    slack.event({"type": "app_home_opened", "user": "USUP1", "channel": "DUSUP1", "tab": "home"})
    published = stub.wait_for(lambda c: c.method == "views.publish" and c.args.get("user_id") == "USUP1")
    home = stub.home_views["USUP1"]
    assert reference in json.dumps(home)
    assert views.APPROVE_ACTION in buttons(home)
    assert published.ok
    stub.clear()
    # Other tests' requests may be waiting too: press the Approve under this request's entry.
    blocks = home["blocks"]
    entry = next(i for i, b in enumerate(blocks) if reference in json.dumps(b) and b["type"] == "section")
    row = blocks[entry + 1]
    value = next(e["value"] for e in row["elements"] if e["action_id"] == views.APPROVE_ACTION)
    status, _ = slack.block_action("USUP1", views.APPROVE_ACTION, value, block_id=row["block_id"], view=home)
    assert status == 200
    opened = stub.wait_for("views.open")
    assert opened.response["view"]["callback_id"] == views.DECISION_CALLBACK
    slack.view_submission(
        "USUP1",
        opened.response["view"],
        {"rationale": {forms.ACTION_ID: {"type": "plain_text_input", "value": APPROVAL}}},
    )
    wait_for_message(stub, message["channel"], message["ts"], lambda m: not buttons(m))
    # The officer's home (they have opened it before) is refreshed after the decision without reopening it.
    stub.wait_for(
        lambda c: (
            c.method == "views.publish"
            and c.args.get("user_id") == officer
            and views.RECORD_USE_ACTION in buttons(stub.home_views[officer])
        )
    )


def test_post_use_record_after_approval(slack: SlackDriver, stub: SlackStub) -> None:
    officer = "UPOSTUSE"
    reference, message = submitted(slack, stub, officer)
    decide(slack, stub, "USUP1", views.APPROVE_ACTION, message, rationale=APPROVAL)
    approved = latest_dm(stub, officer, "is approved")
    press(slack, stub, officer, views.RECORD_USE_ACTION, approved)
    view = stub.wait_for("views.open").response["view"]
    status, body = slack.view_submission(
        officer,
        view,
        {
            "search_run": {forms.ACTION_ID: _option("radio_buttons", "yes")},
            "search_result": {forms.ACTION_ID: _option("radio_buttons", "possible_match")},
            "handling": {forms.ACTION_ID: _option("radio_buttons", "deleted")},
            "handling_authority": {
                forms.ACTION_ID: {"type": "plain_text_input", "value": "Deleted 3 March 2026"}
            },
        },
    )
    assert status == 200 and title(outcome_of(stub, view, body)) == "Search outcome recorded", body
    stub.clear()
    slack.slash_command("/fr-request", f"status {reference}", officer)
    assert "possible match" in json.dumps(stub.wait_for("response_url").args).lower()


def test_rerequest_after_rejection_is_prefilled(slack: SlackDriver, stub: SlackStub) -> None:
    officer = "UREREQ"
    reference, message = submitted(slack, stub, officer)
    decide(
        slack,
        stub,
        "USUP1",
        views.REJECT_ACTION,
        message,
        rationale="Alternatives have not been exhausted yet.",
        reason_code="alternatives_not_exhausted",
    )
    rejected = latest_dm(stub, officer, "rejected")
    press(slack, stub, officer, views.REREQUEST_ACTION, rejected)
    view = stub.wait_for("views.open").response["view"]
    necessity = next(b for b in view["blocks"] if b.get("block_id") == "necessity")
    assert necessity["element"]["initial_value"].startswith("House-to-house")
    status, body = slack.view_submission(officer, view, {})
    assert status == 200 and body["response_action"] == "update", body
    assert reference_of(outcome_of(stub, view, body)) != reference


def test_deputy_named_in_app_home_decides_as_deputy(slack: SlackDriver, stub: SlackStub) -> None:
    today = date.today()
    stub.clear()
    slack.block_action(
        "USUP2",
        views.DELEGATE_ACTION,
        view={
            "type": "home",
            "blocks": [
                views.actions("home:top", views.button("Delegate my approvals", views.DELEGATE_ACTION, "new"))
            ],
        },
    )
    view = stub.wait_for("views.open").response["view"]
    status, body = slack.view_submission(
        "USUP2",
        view,
        {
            "deputy": {forms.ACTION_ID: {"type": "users_select", "selected_user": "UDEPUTYX"}},
            "starts_on": {forms.ACTION_ID: {"type": "datepicker", "selected_date": today.isoformat()}},
            "ends_on": {
                forms.ACTION_ID: {
                    "type": "datepicker",
                    "selected_date": (today + timedelta(days=2)).isoformat(),
                }
            },
        },
    )
    named = outcome_of(stub, view, body)
    assert status == 200 and title(named) == "Deputy named" and "<@UDEPUTYX>" in json.dumps(named), body
    _, message = submitted(slack, stub, "UDELEG")
    decide(slack, stub, "UDEPUTYX", views.APPROVE_ACTION, message, rationale=APPROVAL)
    settled = wait_for_message(stub, message["channel"], message["ts"], lambda m: not buttons(m))
    assert "as deputy for" in json.dumps(settled["blocks"])


def test_reviewer_comments_from_the_request_message(slack: SlackDriver, stub: SlackStub) -> None:
    reference, message = submitted(slack, stub, "UCOMMENT")
    press(slack, stub, "USUP1", views.COMMENT_ACTION, message)
    view = stub.wait_for("views.open").response["view"]
    assert view["callback_id"] == views.COMMENT_CALLBACK
    text = "Spoke to the OIC: the still is from exhibit JS/1."
    status, body = slack.view_submission(
        "USUP1", view, {"comment": {forms.ACTION_ID: {"type": "plain_text_input", "value": text}}}
    )
    assert status == 200 and title(outcome_of(stub, view, body)) == "Comment added"
    stub.clear()
    slack.slash_command("/fr-request", f"status {reference}", "USUP1")
    assert "exhibit JS/1" in json.dumps(stub.wait_for("response_url").args)


def title(answer: dict[str, Any]) -> str:
    return str(answer["view"]["title"]["text"])


def _option(kind: str, value: str) -> dict[str, Any]:
    return {"type": kind, "selected_option": {"value": value, "text": {"type": "plain_text", "text": value}}}

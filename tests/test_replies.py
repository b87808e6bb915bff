"""Telling the person who clicked: wherever the click came from, they get an answer."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import pytest

from bot import views
from handlers.after_answer import AfterAnswer, judged_as_of
from handlers.replies import open_view, tell
from tests.slackstub import SlackStub


@pytest.fixture
def stub() -> Iterator[SlackStub]:
    with SlackStub() as running:
        yield running
    running.assert_no_violations()


def _home_click(stub: SlackStub, user: str, trigger_id: str) -> dict[str, Any]:
    """A button clicked in App Home: a view container, no channel anywhere in the payload."""
    return {
        "type": "block_actions",
        "user": {"id": user},
        "trigger_id": trigger_id,
        "container": {"type": "view", "view_id": "VHOME1"},
        "view": {"id": "VHOME1", "type": "home"},
    }


def _dms_to(stub: SlackStub, user: str) -> list[str]:
    return [c.args["text"] for c in stub.calls_to("chat.postMessage") if c.ok and c.args["channel"] == user]


def test_a_form_that_slack_did_not_open_from_app_home_is_explained_in_a_dm(stub: SlackStub) -> None:
    """The trigger_id had expired (a slow hand-over): there is no channel for an ephemeral reply, and the
    click used to go unanswered."""
    client = stub.client()
    body = _home_click(stub, "UOFFICER", "123.456.expired")
    open_view(client, body, views.notice_modal("A form", "text"))
    assert not [c for c in stub.calls_to("views.open") if c.ok]
    assert _dms_to(stub, "UOFFICER") == ["Slack did not open the form in time. Please try again."]


def test_an_app_home_click_is_answered_in_a_modal_while_its_trigger_lives(stub: SlackStub) -> None:
    client = stub.client()
    body = _home_click(stub, "UOFFICER", stub.issue_trigger_id("UOFFICER"))
    tell(client, body, "That request is not one of yours, or does not exist.")
    assert [c for c in stub.calls_to("views.open") if c.ok]
    assert _dms_to(stub, "UOFFICER") == []
    # The same trigger again (spent): the notice goes as a DM instead.
    tell(client, body, "Second notice.")
    assert _dms_to(stub, "UOFFICER") == ["Second notice."]


def test_a_form_sent_again_to_a_new_follow_up_process_is_not_reported_unopened(stub: SlackStub) -> None:
    """Its first run, in a follow-up process that died before saying it was done, may have opened it: the
    spent trigger_id of the run sent again is nobody's business (bot/follow_up.py)."""
    client = stub.client()
    body = _home_click(stub, "UOFFICER", stub.issue_trigger_id("UOFFICER"))
    client.views_open(
        trigger_id=body["trigger_id"], view=views.notice_modal("A form", "text")
    )  # the first run
    with ThreadPoolExecutor(max_workers=1) as pool:
        after_answer = AfterAnswer(pool)
        for again in (True, False):
            with judged_as_of(None, again) as started:
                after_answer("command", open_view, client, body, views.notice_modal("A form", "text"))
            assert not wait(started, timeout=10).not_done
        assert _dms_to(stub, "UOFFICER") == ["Slack did not open the form in time. Please try again."]  # once
        # A trigger that expired (the dead process never opened the form): told, sent again or not.
        expired = _home_click(stub, "UOFFICER", "123.456.expired")
        with judged_as_of(None, True) as started:
            after_answer("command", open_view, client, expired, views.notice_modal("A form", "text"))
        assert not wait(started, timeout=10).not_done
    assert len(_dms_to(stub, "UOFFICER")) == 2


def test_a_command_whose_form_did_not_open_in_a_channel_without_the_bot_is_explained_in_a_dm(
    stub: SlackStub,
) -> None:
    """/fr-request typed in a channel the bot is not in: the ephemeral reply is refused there too, and the
    officer was told nothing at all."""
    stub.not_in_channel.add("C0OTHER")
    body = {"user_id": "UOFFICER", "channel_id": "C0OTHER", "trigger_id": "1.2.expired"}
    open_view(stub.client(), body, views.notice_modal("A form", "text"))
    assert _dms_to(stub, "UOFFICER") == ["Slack did not open the form in time. Please try again."]

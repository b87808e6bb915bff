"""The outbox dispatcher against the Slack stand-in over real HTTP: outages, rate limits, dead letters,
cut-off sends and pacing. Time is the test's FakeClock (the pacer reads it too), except in the burst test,
which runs the dispatcher thread for real against a stand-in that rate-limits like Slack."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from bot import cli, follow_up, views
from bot.copies import (
    METADATA_EVENT_TYPE,
    Landing,
    LandingOutcome,
    landing_from_event,
    note_clicked_message,
    post_metadata,
    record_landing,
)
from bot.forms import DecisionForm, RequestForm, check_request
from bot.intake import modal_updater
from bot.outbox import (
    DUE_MARGIN_SECONDS,
    PASS_GRACE_SECONDS,
    UNRECOGNISED_TRIES,
    OutboxDispatcher,
    Sent,
    dispatcher_client,
    list_outbox,
    retry_outbox,
)
from bot.pacing import Pacer, Rate, SlackLimits, post_key
from bot.workflow import MODAL_UPDATE, MODAL_UPDATE_DELAY, OutboxWake, Workflow, enqueue
from storage.db import transaction
from storage.models import AuditEvent, DirectMessage, OutboxMessage, OutboxStatus, StageReview, utcnow
from tests.conftest import FakeClock, statements_run, valid_form_values
from tests.plans import plan_of
from tests.slackstub import DROP, RecordedCall, SlackStub

APPROVE = DecisionForm(rationale="Necessary and proportionate for this robbery.")


@pytest.fixture
def stub() -> Iterator[SlackStub]:
    with SlackStub() as running:
        yield running
    running.assert_no_violations()


def make_dispatcher(
    workflow: Workflow, stub: SlackStub, clock: FakeClock, limits: SlackLimits | None = None
) -> OutboxDispatcher:
    pacer = Pacer(limits, monotonic=lambda: clock.now.timestamp())
    client = dispatcher_client(stub.client(), timeout=5)
    # App Home refreshes are delivered by bot.home in the bot; here they only need to leave the queue.
    senders = {"publish_home": lambda payload: None}
    return OutboxDispatcher(
        workflow.db, client, workflow.policy, clock=clock, pacer=pacer, lease_seconds=30, senders=senders
    )


def submit(workflow: Workflow, key: str, **overrides: str) -> int:
    form = check_request(workflow.policy, valid_form_values(**overrides))
    return workflow.submit(form, "UOFFICER", "T0TEST", key).request_id


def rows(workflow: Workflow) -> list[OutboxMessage]:
    with transaction(workflow.db) as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def drain(dispatcher: OutboxDispatcher, clock: FakeClock, step: float = 2.0, passes: int = 400) -> None:
    """Run passes, moving the clock on, until nothing is pending."""
    for _ in range(passes):
        dispatcher.run_once()
        if all(row.status != OutboxStatus.PENDING for row in rows_of(dispatcher)):
            return
        clock.advance(seconds=step)
    raise AssertionError("outbox did not drain")


def rows_of(dispatcher: OutboxDispatcher) -> list[OutboxMessage]:
    with transaction(dispatcher.db) as session:
        return list(session.scalars(select(OutboxMessage)))


def delivered(stub: SlackStub) -> list[RecordedCall]:
    """Successful posts, in the order Slack accepted them."""
    return [c for c in stub.calls_to("chat.postMessage") if c.ok]


def outbox_id(call: RecordedCall) -> int:
    return int(call.args["metadata"]["event_payload"]["outbox_id"])


def test_outage_of_minutes_loses_nothing_duplicates_nothing_keeps_order(
    workflow: Workflow, stub: SlackStub, clock: FakeClock
) -> None:
    dispatcher = make_dispatcher(workflow, stub, clock)
    requests = [submit(workflow, f"V{n}", tool="engine-a") for n in range(3)]
    # Slack is down: first nothing answers at all, then it answers 503, then it rate-limits.
    dispatcher.client.base_url = "http://127.0.0.1:9/api/"
    for _ in range(5):
        dispatcher.run_once()
        clock.advance(seconds=30)
    assert all(row.status == OutboxStatus.PENDING and row.attempts > 0 for row in rows(workflow)[:1])
    dispatcher.client.base_url = stub.base_url
    stub.fail_next("*", status=DROP, count=5)  # then connections are accepted and dropped unanswered
    stub.fail_next("*", status=503, count=10)
    stub.fail_next("*", retry_after=3, count=5)
    for _ in range(10):
        dispatcher.run_once()
        clock.advance(seconds=20)
    # Decisions keep happening during the outage.
    for request_id in requests[:2]:
        workflow.decide(request_id, 0, "USUP1", "approve", APPROVE)
    drain(dispatcher, clock)

    assert not stub.pending_faults
    assert {row.status for row in rows(workflow)} == {OutboxStatus.SENT}
    ids = [outbox_id(call) for call in delivered(stub)]
    expected = [row.id for row in rows(workflow) if row.kind in ("dm", "post_review")]
    assert sorted(ids) == expected  # every post once, none twice
    by_request: dict[int, list[int]] = defaultdict(list)
    for call in delivered(stub):
        by_request[call.args["metadata"]["event_payload"]["request_id"]].append(outbox_id(call))
    assert all(sent == sorted(sent) for sent in by_request.values())  # in order per request
    with transaction(workflow.db) as session:
        posted = session.scalars(select(StageReview).where(StageReview.message_ts.is_not(None))).all()
        assert {s.request_id for s in posted} == set(requests)
    for stage in posted:  # reviewer messages show the database's state
        message = stub.message(stage.message_channel, stage.message_ts)
        has_buttons = any(block["type"] == "actions" for block in message["blocks"])
        assert has_buttons == (stage.status == "pending")


def test_after_an_outage_the_first_success_ends_every_backoff(
    workflow: Workflow, stub: SlackStub, clock: FakeClock
) -> None:
    unpaced = SlackLimits(post_per_channel=Rate(0.001, burst=100))  # pacing is not what this tests
    dispatcher = make_dispatcher(workflow, stub, clock, unpaced)
    for n in range(3):
        submit(workflow, f"V{n}")
    first, backing_off, rate_limited = (row for row in rows(workflow) if row.kind == "post_review")
    later = clock.now + timedelta(minutes=5)
    with transaction(workflow.db) as session:  # as an outage leaves them: failed, waiting
        for row, error in ((backing_off, "internal_error"), (rate_limited, "rate limited")):
            stored = session.get(OutboxMessage, row.id)
            stored.attempts, stored.last_error, stored.next_attempt_at = 5, error, later
    stub.fail_next("chat.postMessage", status=503)  # still down for the first try
    dispatcher.run_once()
    clock.advance(seconds=2)
    dispatcher.run_once()  # the first row goes through: Slack is back
    status = {row.id: row.status for row in rows(workflow)}
    assert status[first.id] == status[backing_off.id] == OutboxStatus.SENT  # due at once, not in 5 minutes
    assert status[rate_limited.id] == OutboxStatus.PENDING  # Slack's Retry-After still holds


def test_rate_limit_honours_retry_after_and_holds_the_channel(
    workflow: Workflow, stub: SlackStub, clock: FakeClock
) -> None:
    dispatcher = make_dispatcher(workflow, stub, clock)
    submit(workflow, "V1")
    stub.fail_next("chat.postMessage", retry_after=7)
    dispatcher.run_once()
    review = rows(workflow)[0]
    assert review.status == OutboxStatus.PENDING and review.last_error == "rate limited"
    assert (review.next_attempt_at - clock.now).total_seconds() == pytest.approx(7)
    assert dispatcher.pacer.ready_in([post_key("C0SUPER")]) == pytest.approx(7)
    clock.advance(seconds=6)
    dispatcher.run_once()
    assert len(delivered(stub)) <= 1  # at most the DM, to another channel
    clock.advance(seconds=2)
    drain(dispatcher, clock)
    assert [c.args["channel"] for c in delivered(stub)].count("C0SUPER") == 1


def test_permanent_error_is_dead_lettered_with_advice_then_replayed(
    workflow: Workflow,
    stub: SlackStub,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dispatcher = make_dispatcher(workflow, stub, clock)
    stub.not_in_channel.add("C0SUPER")
    request_id = submit(workflow, "V1")
    with caplog.at_level(logging.ERROR, logger="bot.outbox"):
        drain(dispatcher, clock)
    review, dm, _home = rows(workflow)
    assert review.status == OutboxStatus.DEAD and dm.status == OutboxStatus.SENT  # the DM is not held up
    assert "/invite @FR Request Bot" in (review.last_error or "")
    assert f"fr-bot outbox retry {review.id}" in caplog.text and "C0SUPER" in caplog.text

    monkeypatch.setenv("FRBOT_DATABASE_URL", database_url)
    assert cli.main(["outbox", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"{review.id:>6}  dead" in listing and "C0SUPER" in listing and "not_in_channel" in listing
    assert cli.main(["outbox", "retry", str(dm.id)]) == cli.EXIT_CONFIG  # sent rows are not replayed
    assert f"not dead or not found: {dm.id}" in capsys.readouterr().err

    stub.not_in_channel.clear()  # the admin invited the bot
    assert cli.main(["outbox", "retry", "--all-dead", "--actor", "UADMIN"]) == 0
    assert f"requeued 1 message(s): {review.id}" in capsys.readouterr().out
    clock.now = utcnow()  # the command stamps the replay with the wall clock
    drain(dispatcher, clock)
    assert rows(workflow)[0].status == OutboxStatus.SENT
    assert list_outbox(workflow.db, "dead") == []
    assert [c.args["channel"] for c in delivered(stub)] == ["UOFFICER", "C0SUPER"]
    with transaction(workflow.db) as session:
        replay = session.scalars(select(AuditEvent).where(AuditEvent.action == "outbox_retried")).one()
    assert replay.request_id == request_id and replay.actor_id == "UADMIN"
    assert replay.details["outbox_id"] == review.id


def _approved_after_its_review_was_posted(
    workflow: Workflow, stub: SlackStub, clock: FakeClock, dispatcher: OutboxDispatcher
) -> int:
    """A request whose reviewer message is posted, then approved: the decision queues the reviewer
    message's refresh, then the officer's DM, in that order (the DM waits for the refresh)."""
    request_id = submit(workflow, "V1")
    drain(dispatcher, clock)
    workflow.decide(request_id, 0, "USUP1", "approve", APPROVE)
    kinds = [row.kind for row in rows(workflow) if row.status == OutboxStatus.PENDING]
    assert kinds.index("refresh_reviews") < kinds.index("dm")
    return request_id


def _officer_told_of_approval(stub: SlackStub) -> bool:
    return any(
        "approved" in c.args["text"].lower() for c in delivered(stub) if c.args["channel"] == "UOFFICER"
    )


@pytest.mark.parametrize("error", ["is_inactive", "a_code_slack_added_later"])
def test_an_edit_slack_will_never_take_does_not_hold_back_the_officers_dm(
    workflow: Workflow, stub: SlackStub, clock: FakeClock, error: str
) -> None:
    """The reviewer channel was archived (`is_inactive` for chat.update), or Slack answers with an error
    code the bot does not know: either way the refresh is not retried for ever with the officer's
    decision DM waiting behind it. A known one is passed over at once (the message cannot be edited), an
    unknown one dead-lettered after UNRECOGNISED_TRIES tries."""
    dispatcher = make_dispatcher(workflow, stub, clock)
    _approved_after_its_review_was_posted(workflow, stub, clock, dispatcher)
    stub.fail_next("chat.update", error=error, count=1000)
    drain(dispatcher, clock, step=60)
    assert _officer_told_of_approval(stub)
    refresh = next(row for row in rows(workflow) if row.kind == "refresh_reviews")
    tries = len([c for c in stub.calls_to("chat.update") if not c.ok])
    if error == "is_inactive":
        assert (refresh.status, tries) == (OutboxStatus.SENT, 1)
    else:
        assert (refresh.status, tries) == (OutboxStatus.DEAD, UNRECOGNISED_TRIES)
        assert error in (refresh.last_error or "")


def test_an_unknown_error_is_dead_lettered_after_that_many_in_a_row_not_after_other_retries(
    workflow: Workflow, stub: SlackStub, clock: FakeClock
) -> None:
    """A row retried through rate limits and an outage first: its first unknown error dead-lettered it,
    the tries of the other failures counting towards the unknown error's."""
    dispatcher = make_dispatcher(workflow, stub, clock)
    _approved_after_its_review_was_posted(workflow, stub, clock, dispatcher)
    stub.fail_next("chat.update", status=503, count=UNRECOGNISED_TRIES)
    stub.fail_next("chat.update", error="a_code_slack_added_later", count=1000)
    drain(dispatcher, clock, step=600)
    refresh = next(row for row in rows(workflow) if row.kind == "refresh_reviews")
    unknown = [
        c for c in stub.calls_to("chat.update") if c.response.get("error") == "a_code_slack_added_later"
    ]
    assert refresh.status == OutboxStatus.DEAD and len(unknown) == UNRECOGNISED_TRIES


def test_slacks_temporary_errors_are_retried_until_slack_takes_them(
    workflow: Workflow, stub: SlackStub, clock: FakeClock
) -> None:
    dispatcher = make_dispatcher(workflow, stub, clock)
    _approved_after_its_review_was_posted(workflow, stub, clock, dispatcher)
    stub.fail_next("chat.update", error="internal_error", count=UNRECOGNISED_TRIES * 2)
    drain(dispatcher, clock, step=600)
    refresh = next(row for row in rows(workflow) if row.kind == "refresh_reviews")
    assert refresh.status == OutboxStatus.SENT and refresh.attempts == UNRECOGNISED_TRIES * 2 + 1
    assert _officer_told_of_approval(stub)


def test_a_refresh_passes_over_a_deleted_reviewer_message_and_edits_the_rest(
    workflow: Workflow, stub: SlackStub, clock: FakeClock
) -> None:
    """Two stages posted; the first stage's message was deleted in Slack. The refresh edits the second
    (one message_not_found made the whole row dead, the second message left showing its buttons)."""
    dispatcher = make_dispatcher(workflow, stub, clock)
    request_id = submit(workflow, "V1", tool="engine-a")
    drain(dispatcher, clock)
    workflow.decide(request_id, 0, "USUP1", "approve", APPROVE)
    drain(dispatcher, clock)
    with transaction(workflow.db) as session:
        posted = session.scalars(
            select(StageReview).where(StageReview.message_ts.is_not(None)).order_by(StageReview.position)
        ).all()
        first, second = [(stage.message_channel, stage.message_ts) for stage in posted]
    del stub.messages[first]
    stub.clear()
    workflow.withdraw(request_id, "UOFFICER")
    drain(dispatcher, clock)
    refresh = [row for row in rows(workflow) if row.kind == "refresh_reviews"][-1]
    assert refresh.status == OutboxStatus.SENT
    edited = [(c.args["channel"], c.args["ts"]) for c in stub.calls_to("chat.update") if c.ok]
    assert second in edited
    assert "withdrawn" in stub.messages[second]["text"].lower()


def test_replay_of_nothing_and_listing_pending(workflow: Workflow, stub: SlackStub) -> None:
    assert retry_outbox(workflow.db, all_dead=True) == []
    submit(workflow, "V1")
    pending = list_outbox(workflow.db, "pending")
    assert [(e.kind, e.target) for e in pending] == [
        ("post_review", "C0SUPER"),
        ("dm", "UOFFICER"),
        ("publish_home", "App Home"),
    ]
    assert list_outbox(workflow.db, "all") == pending


def test_send_cut_off_by_a_crash_is_redone_after_the_lease(
    workflow: Workflow, stub: SlackStub, clock: FakeClock
) -> None:
    first = make_dispatcher(workflow, stub, clock)
    request_id = submit(workflow, "V1")
    drain(first, clock)
    workflow.decide(request_id, 0, "USUP1", "approve", APPROVE)
    refresh = next(row for row in rows(workflow) if row.kind == "refresh_reviews")
    # A dispatcher claims the refresh and dies before recording anything.
    assert first._claim(refresh.id) is not None
    second = make_dispatcher(workflow, stub, clock)
    assert second.run_once() == 0  # the lease still holds the row (and the rows behind it)
    clock.advance(seconds=31)
    drain(second, clock)
    redone = next(row for row in rows(workflow) if row.id == refresh.id)
    assert redone.status == OutboxStatus.SENT and redone.doubtful_attempts == 1
    assert redone.attempt_started_at is None
    update = stub.wait_for("chat.update")
    assert "Approved" in str(stub.message(update.args["channel"], update.args["ts"])["blocks"])


def test_post_review_of_a_stage_already_posted_edits_instead_of_posting(
    workflow: Workflow, stub: SlackStub, clock: FakeClock
) -> None:
    dispatcher = make_dispatcher(workflow, stub, clock)
    submit(workflow, "V1")
    drain(dispatcher, clock)
    review = rows(workflow)[0]
    with transaction(workflow.db) as session:  # as if the row was posted but not marked before a crash
        session.get(OutboxMessage, review.id).status = OutboxStatus.PENDING
    drain(dispatcher, clock)
    assert [c.args["channel"] for c in delivered(stub)].count("C0SUPER") == 1
    assert stub.calls_to("chat.update")[0].ok


def test_a_click_on_a_stray_copy_retires_it(workflow: Workflow, stub: SlackStub, clock: FakeClock) -> None:
    dispatcher = make_dispatcher(workflow, stub, clock)
    request_id = submit(workflow, "V1")
    drain(dispatcher, clock)
    with transaction(workflow.db) as session:
        stage = session.scalars(select(StageReview).where(StageReview.request_id == request_id)).one()
    canonical = stub.message(stage.message_channel, stage.message_ts)
    # The copy a cut-off send left behind: the same message, posted by the bot, at another ts.
    stray_ts = stub.add_message(
        "C0SUPER", canonical["text"], user=stub.bot_user_id, blocks=canonical["blocks"]
    )
    assert not note_clicked_message(workflow.db, (request_id, 0), stage.message_channel, stage.message_ts)
    assert not note_clicked_message(workflow.db, (request_id, 0), "C0ELSEWHERE", stray_ts)
    assert note_clicked_message(workflow.db, (request_id, 0), "C0SUPER", stray_ts, clock=clock)
    drain(dispatcher, clock)
    stray = stub.message("C0SUPER", stray_ts)
    assert not any(block["type"] == "actions" for block in stray["blocks"])
    assert "Duplicate" in str(stray["blocks"])
    assert f"/archives/{stage.message_channel}/p{stage.message_ts.replace('.', '')}" in str(stray["blocks"])
    assert any(
        block["type"] == "actions"
        for block in stub.message(stage.message_channel, stage.message_ts)["blocks"]
    )


# --- Where posts landed (bot/copies.py): Slack's message_metadata_posted events ------------------------


def post_cut_off(first: OutboxDispatcher, stub: SlackStub, row_id: int, channel: str) -> str:
    """A dispatcher claims the row, Slack accepts its post, and the process dies before hearing back."""
    row = first._claim(row_id)
    assert row is not None
    posted = stub.client().chat_postMessage(
        channel=channel, text="the cut-off copy", metadata=post_metadata(row)
    )
    return str(posted["ts"])


def slack_reports_landings(workflow: Workflow, stub: SlackStub, clock: FakeClock) -> None:
    """Earlier posts, each reported by Slack's event: this deployment is subscribed to the reports."""
    dispatcher = make_dispatcher(workflow, stub, clock)
    submit(workflow, "V0")
    drain(dispatcher, clock)
    for row in rows(workflow):
        if row.posted_ts is not None:
            landing = Landing(row.id, row.posted_channel, row.posted_ts)
            assert record_landing(workflow.db, landing, clock) is LandingOutcome.KNOWN


def posts_of(stub: SlackStub, row_id: int) -> list[RecordedCall]:
    return [call for call in delivered(stub) if outbox_id(call) == row_id]


def test_a_post_cut_off_by_a_crash_waits_for_slack_to_report_it_and_is_never_posted_twice(
    workflow: Workflow, stub: SlackStub, clock: FakeClock
) -> None:
    slack_reports_landings(workflow, stub, clock)
    first = make_dispatcher(workflow, stub, clock)
    request_id = submit(workflow, "V1")
    review = next(row for row in rows(workflow) if row.kind == "post_review" and row.posted_ts is None)
    cut_off_ts = post_cut_off(first, stub, review.id, "C0SUPER")
    second = make_dispatcher(workflow, stub, clock)
    clock.advance(seconds=31)  # the dead dispatcher's lease runs out
    second.run_once()
    clock.advance(seconds=30)  # still inside the landing wait (75 s from the cut-off send)
    second.run_once()
    assert len(posts_of(stub, review.id)) == 1  # nothing posted again yet
    waiting = next(row for row in rows(workflow) if row.id == review.id)
    assert waiting.status == OutboxStatus.PENDING and waiting.doubtful_attempts == 1

    # Slack's event reports where the cut-off post landed: the row is delivered, the stage knows its message.
    landing = Landing(review.id, "C0SUPER", cut_off_ts)
    assert record_landing(workflow.db, landing, clock) is LandingOutcome.RECORDED
    assert record_landing(workflow.db, landing, clock) is LandingOutcome.KNOWN  # a retried event
    adopted = next(row for row in rows(workflow) if row.id == review.id)
    assert (adopted.status, adopted.posted_channel, adopted.posted_ts) == (
        OutboxStatus.SENT,
        "C0SUPER",
        cut_off_ts,
    )
    assert adopted.attempt_started_at is None
    clock.advance(seconds=120)
    drain(second, clock)
    assert len(posts_of(stub, review.id)) == 1  # never posted twice

    # The adopted message is the one kept up to date: a decision edits it.
    workflow.decide(request_id, 0, "USUP1", "approve", APPROVE)
    drain(second, clock)
    message = stub.message("C0SUPER", cut_off_ts)
    assert "Approved" in str(message["blocks"]) and not any(b["type"] == "actions" for b in message["blocks"])


def test_a_dispatcher_with_an_older_list_does_not_post_a_row_another_has_put_off(
    workflow: Workflow, stub: SlackStub, clock: FakeClock
) -> None:
    """Two dispatchers list the same cut-off post; one finds it cut off and puts it off until Slack can
    report where it landed; the other, reaching it later from its list, claimed it (the claim did not ask
    whether the row was due) and posted it a second time at once."""
    slack_reports_landings(workflow, stub, clock)
    first = make_dispatcher(workflow, stub, clock)
    submit(workflow, "V1")
    review = next(row for row in rows(workflow) if row.kind == "post_review" and row.posted_ts is None)
    post_cut_off(first, stub, review.id, "C0SUPER")
    second, third = make_dispatcher(workflow, stub, clock), make_dispatcher(workflow, stub, clock)
    clock.advance(seconds=31)  # the dead dispatcher's lease runs out
    listed = [row_id for row_id, _ in third._due(set())]
    assert review.id in listed
    second.run_once()  # finds it cut off: waits for its landing report
    assert third._claim(review.id) is None
    assert len(posts_of(stub, review.id)) == 1


@pytest.mark.parametrize("reports", ["arrive for other posts", "never arrive"])
def test_a_crash_cut_off_post_is_sent_again_when_slack_does_not_report_it(
    workflow: Workflow, stub: SlackStub, clock: FakeClock, reports: str
) -> None:
    """No report of this post: after the landing wait (or, where Slack never reports landings, after the
    lease) the post goes out again and says so; a report of the first copy coming later still retires it."""
    if reports == "arrive for other posts":
        slack_reports_landings(workflow, stub, clock)
    first = make_dispatcher(workflow, stub, clock)
    submit(workflow, "V1")
    review = next(row for row in rows(workflow) if row.kind == "post_review" and row.posted_ts is None)
    cut_off_ts = post_cut_off(first, stub, review.id, "C0SUPER")
    second = make_dispatcher(workflow, stub, clock)
    clock.advance(seconds=31)  # the lease has run out
    second.run_once()
    assert len(posts_of(stub, review.id)) == (1 if reports == "arrive for other posts" else 2)
    clock.advance(seconds=45)  # and the landing wait
    drain(second, clock)
    copies = posts_of(stub, review.id)
    assert len(copies) == 2
    live_ts = copies[1].response["ts"]
    assert "Sent again after an interruption" in str(copies[1].args["blocks"])
    sent = next(row for row in rows(workflow) if row.id == review.id)
    assert (sent.status, sent.posted_ts, sent.doubtful_attempts) == (OutboxStatus.SENT, live_ts, 1)

    assert record_landing(workflow.db, Landing(review.id, "C0SUPER", live_ts), clock) is LandingOutcome.KNOWN
    late = Landing(review.id, "C0SUPER", cut_off_ts)
    assert record_landing(workflow.db, late, clock) is LandingOutcome.DUPLICATE
    drain(second, clock)
    retired = stub.message("C0SUPER", cut_off_ts)
    assert "Duplicate" in str(retired["blocks"]) and live_ts.replace(".", "") in str(retired["blocks"])
    assert any(b["type"] == "actions" for b in stub.message("C0SUPER", live_ts)["blocks"])
    with transaction(workflow.db) as session:
        stage = session.get(StageReview, review.payload["stage_review_id"])
        assert stage.message_ts == live_ts


def test_a_dm_reported_before_slack_answers_is_recorded_once(
    workflow: Workflow, stub: SlackStub, clock: FakeClock
) -> None:
    """The event can beat Slack's answer to the call that posted the message: one landing, one DM record,
    and a failure seen afterwards (a 5xx after posting) does not make the row go out again."""
    dispatcher = make_dispatcher(workflow, stub, clock)
    submit(workflow, "V1")
    dm = next(row for row in rows(workflow) if row.kind == "dm")
    assert dispatcher._claim(dm.id) is not None
    posted = stub.client().chat_postMessage(channel="UOFFICER", text="receipt", metadata=post_metadata(dm))
    landing = Landing(dm.id, posted["channel"], posted["ts"])
    assert record_landing(workflow.db, landing, clock) is LandingOutcome.RECORDED
    dispatcher._finish(dm.id, OutboxStatus.PENDING, error="HTTP 503", retry_in=1.0, doubtful=True)
    row = next(row for row in rows(workflow) if row.id == dm.id)
    assert row.status == OutboxStatus.SENT and row.attempt_started_at is None and row.claimed_until is None
    assert record_landing(workflow.db, landing, clock) is LandingOutcome.KNOWN
    with transaction(workflow.db) as session:
        recorded = session.scalars(select(DirectMessage)).all()
        assert [(m.channel, m.ts) for m in recorded] == [(posted["channel"], posted["ts"])]
    drain(dispatcher, clock)
    assert len(posts_of(stub, dm.id)) == 1


def test_a_late_report_of_a_second_dm_marks_that_copy_as_a_duplicate(
    workflow: Workflow, stub: SlackStub, clock: FakeClock
) -> None:
    dispatcher = make_dispatcher(workflow, stub, clock)
    submit(workflow, "V1")
    drain(dispatcher, clock)
    dm = next(row for row in rows(workflow) if row.kind == "dm")
    copy = stub.client().chat_postMessage(channel="UOFFICER", text="receipt", metadata=post_metadata(dm))
    outcome = record_landing(workflow.db, Landing(dm.id, copy["channel"], copy["ts"]), clock)
    assert outcome is LandingOutcome.DUPLICATE
    drain(dispatcher, clock)
    retired = stub.message(copy["channel"], copy["ts"])
    assert "Duplicate" in retired["text"] and dm.posted_ts.replace(".", "") in str(retired["blocks"])
    assert record_landing(workflow.db, Landing(10_000, "C0SUPER", "1.2"), clock) is LandingOutcome.UNKNOWN


def test_only_this_apps_well_formed_reports_count() -> None:
    body = {"api_app_id": "A0OURS"}
    event = {
        "type": "message_metadata_posted",
        "app_id": "A0OURS",
        "channel_id": "C0SUPER",
        "message_ts": "1700000000.000100",
        "metadata": {"event_type": METADATA_EVENT_TYPE, "event_payload": {"outbox_id": 7}},
    }
    assert landing_from_event(body, event) == Landing(7, "C0SUPER", "1700000000.000100")
    assert landing_from_event(body, {**event, "app_id": "A0OTHER"}) is None  # another app's post
    assert landing_from_event({}, event) is None
    other_type = {**event, "metadata": {"event_type": "task_created", "event_payload": {"outbox_id": 7}}}
    assert landing_from_event(body, other_type) is None
    for broken in (
        {"message_ts": "<!channel>"},
        {"channel_id": "C0|evil"},
        {"metadata": {"event_type": METADATA_EVENT_TYPE, "event_payload": {"outbox_id": "7"}}},
        {"metadata": {"event_type": METADATA_EVENT_TYPE, "event_payload": {"outbox_id": True}}},
        {"metadata": {"event_type": METADATA_EVENT_TYPE, "event_payload": None}},
        {"metadata": "fr_bot_outbox"},
    ):
        assert landing_from_event(body, {**event, **broken}) is None, broken


def test_pacer_spaces_posts_per_channel_and_honours_holds() -> None:
    now = [0.0]
    limits = SlackLimits(post_per_channel=Rate(1.0), update=Rate(1.2, burst=2))
    pacer = Pacer(limits, monotonic=lambda: now[0])
    busy, other = post_key("C1"), post_key("C2")
    assert pacer.ready_in([busy]) == 0
    pacer.take([busy])
    assert pacer.ready_in([busy]) == pytest.approx(1.0)
    assert pacer.ready_in([other]) == 0  # another channel is not held up
    now[0] = 1.0
    assert pacer.ready_in([busy]) == 0
    pacer.hold(busy, 30)
    assert pacer.ready_in([busy]) == pytest.approx(30)
    pacer.take(["update"], count=2)
    assert pacer.ready_in(["update"]) == pytest.approx(1.2)


def test_pacer_gives_no_credit_for_a_moment_read_before_another_callers() -> None:
    """A dispatcher thread that read the clock, then waited for the lock behind another that had taken a
    slot since, set the bucket's last refill back to its earlier moment: the time between was counted
    twice, and the next call went that much early."""
    moments = iter([1.0, 0.5, 1.0])  # the second caller's moment is older than the first's
    pacer = Pacer(SlackLimits(post_per_channel=Rate(1.0)), monotonic=lambda: next(moments))
    busy = post_key("C1")
    pacer.take([busy])
    pacer.take([busy])
    assert pacer.ready_in([busy]) == pytest.approx(2.0)  # two slots taken at 1.0, none earned since


def test_burst_of_200_to_one_channel_is_paced_not_rejected(workflow: Workflow, stub: SlackStub) -> None:
    # Slack's 1 message per second per channel, scaled down 40x so the test is quick: the stand-in
    # refuses more than one post per 20 ms per channel (burst 2); the bot paces to one per 25 ms.
    stub.channel_rate_limit = (0.02, 2)
    limits = SlackLimits(post_per_channel=Rate(0.025))
    pacer = Pacer(limits)
    client = dispatcher_client(stub.client(), timeout=5)
    dispatcher = OutboxDispatcher(workflow.db, client, workflow.policy, pacer=pacer, poll_seconds=0.05)
    block = [{"type": "section", "text": {"type": "mrkdwn", "text": "burst"}}]
    with transaction(workflow.db) as session:
        for n in range(200):
            enqueue(session, "dm", {"user": "UBURST", "text": f"n{n}", "blocks": block}, None, utcnow())
        enqueue(session, "dm", {"user": "UOTHER", "text": "other", "blocks": block}, None, utcnow())

    def all_sent(call: RecordedCall) -> bool:
        return len(delivered(stub)) == 201

    dispatcher.start()
    try:
        stub.wait_for(all_sent, timeout=60)
    finally:
        dispatcher.stop()
    posts = stub.calls_to("chat.postMessage")
    assert [c.status for c in posts if not c.ok] == []  # not one 429
    texts = [c.args["text"] for c in posts]
    assert texts.index("other") < 3  # the other channel went out at once, not after the burst
    assert [t for t in texts if t != "other"] == [f"n{n}" for n in range(200)]
    with transaction(workflow.db) as session:
        unsent = session.scalar(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status != OutboxStatus.SENT)
        )
    assert unsent == 0


def test_a_row_that_posts_nothing_is_claimed_and_closed_in_one_statement_each(
    workflow: Workflow, stub: SlackStub, clock: FakeClock, engine: Engine
) -> None:
    """The usual claim and the outcome of an edit or a publish are one statement each (bench/NOTES.md,
    item 26): no BEGIN, read, write and COMMIT per Slack call on the dispatcher's path."""
    dispatcher = make_dispatcher(workflow, stub, clock)
    submit(workflow, "V1")
    home = next(row for row in rows(workflow) if row.kind == "publish_home")
    with statements_run(engine) as sent:
        claimed = dispatcher._claim(home.id)
        assert claimed is not None and claimed.payload == home.payload
        assert dispatcher._claim(home.id) is None  # leased: a second dispatcher gets nothing
        dispatcher._finish(home.id, OutboxStatus.SENT, sent=Sent())
    normalised = (" ".join(statement.split()).upper() for statement in sent)
    statements = [s for s in normalised if "OUTBOX" in s]  # not SQLite's BEGIN IMMEDIATE before a write
    claim, outcome = statements[0], statements[-1]
    assert claim.startswith("UPDATE OUTBOX") and "RETURNING" in claim
    assert outcome.startswith("UPDATE OUTBOX") and "RETURNING" not in outcome
    # Claimed once, refused once (the usual statement, then the longer path's conditional update), closed.
    assert [s.split()[0] for s in statements] == ["UPDATE", "UPDATE", "UPDATE", "UPDATE"], statements
    done = next(row for row in rows(workflow) if row.id == home.id)
    assert done.status == OutboxStatus.SENT and done.attempts == 1 and done.sent_at == clock.now
    assert done.claimed_until is None and done.attempt_started_at is None and done.doubtful_attempts == 0


def _due_query_plan(engine: Engine, dispatcher: OutboxDispatcher) -> str:
    """The plan the database uses for the dispatcher's due query as the dispatcher sends it."""
    return plan_of(engine, lambda: dispatcher._due(set()), lambda statement: "GROUP BY" in statement)


def test_the_due_query_finds_each_requests_first_pending_row_once_whatever_the_statistics(
    workflow: Workflow, stub: SlackStub, clock: FakeClock, engine: Engine
) -> None:
    """A row goes only as its request's first pending row. The query finds those rows once per pass; when
    it asked for each pending row whether an earlier one was pending, PostgreSQL's generic plan scanned
    every pending row for each (bench/NOTES.md item 30: 0.1-0.4 s a pass at a few thousand rows held by
    one busy channel). The statistics are taken while nothing is pending, as before a burst, so the
    planner expects few pending rows."""
    dispatcher = make_dispatcher(workflow, stub, clock)
    for index in range(40):
        submit(workflow, f"VPLAN{index}")
    with transaction(workflow.db) as session:
        session.query(OutboxMessage).update({"status": OutboxStatus.SENT})
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    with transaction(workflow.db) as session:
        session.query(OutboxMessage).update({"status": OutboxStatus.PENDING})

    plan = _due_query_plan(engine, dispatcher)
    if engine.dialect.name == "sqlite":
        assert "CORRELATED" not in plan, plan  # the request's first rows: a list built once
    else:
        assert "hashed SubPlan" in plan, plan  # built once into a hash table, not run per row
        assert "ix_outbox_pending_request" in plan, plan

    due = dispatcher._due(set())  # the plan answers as before: each key's first row, in id order
    first_of_each_request: dict[int | None, int] = {}
    first_of_each_key: dict[str, int] = {}
    for row in rows(workflow):  # in id order
        if first_of_each_request.setdefault(row.request_id, row.id) == row.id:
            first_of_each_key.setdefault(row.pace_key or f"row:{row.id}", row.id)
    assert [row_id for row_id, _key in due] == sorted(first_of_each_key.values())[: dispatcher.batch_size]


def test_a_pass_whose_due_rows_all_wait_for_their_pace_asks_the_database_once(
    workflow: Workflow, stub: SlackStub, clock: FakeClock, engine: Engine
) -> None:
    """Under a burst into one channel every due row waits for that channel's next second: asking again
    with the channel held could only find nothing (bench/NOTES.md item 36)."""
    dispatcher = make_dispatcher(workflow, stub, clock)
    for index in range(3):
        submit(workflow, f"VHELD{index}")
    dispatcher.run_once()  # the first request's messages; its post takes the reviewers' channel's second
    assert len(delivered(stub)) == 2  # the reviewers' post and the officer's DM
    with statements_run(engine) as sent:
        assert dispatcher.run_once() == 0
    assert sum("GROUP BY" in statement for statement in sent) == 1
    clock.advance(seconds=1)
    with statements_run(engine) as sent:
        assert dispatcher.run_once() > 0  # the channel's next second: the second request's post goes
    assert sum("GROUP BY" in statement for statement in sent) > 1


def test_rows_queued_while_their_channel_waits_are_sent_when_it_is_free_without_a_pass_before(
    workflow: Workflow, stub: SlackStub, engine: Engine
) -> None:
    """A submission's rows wake the dispatcher; if the reviewers' channel has just had its post, the pass
    waits until the channel is free (not for the next poll, a minute away here) and none runs before."""
    limits = SlackLimits(post_per_channel=Rate(2.0))
    client = dispatcher_client(stub.client(), timeout=5)
    dispatcher = OutboxDispatcher(
        workflow.db,
        client,
        workflow.policy,
        pacer=Pacer(limits),
        poll_seconds=60,
        senders={"publish_home": lambda payload: None},
    )
    recording = Workflow(workflow.db, workflow.loaded, workflow.approvers, on_outbox=dispatcher.wake)
    dispatcher.start()
    try:
        submit(recording, "VWAKE1")
        stub.wait_for(lambda call: len(delivered(stub)) == 2, timeout=10)  # post and DM, at once
        posted_at = time.monotonic()
        while any(row.status == OutboxStatus.PENDING for row in rows(recording)):
            time.sleep(0.01)
        time.sleep(0.3)  # the pass that finds nothing more, then the dispatcher sleeps
        with statements_run(engine) as sent:
            submit(recording, "VWAKE2")  # its post must wait for the channel's next 2 s
            time.sleep(0.5)
        assert not [statement for statement in sent if "GROUP BY" in statement]
        stub.wait_for(lambda call: len(delivered(stub)) == 4, timeout=10)
        assert time.monotonic() - posted_at < 30  # at the channel's next slot, not at the next poll
    finally:
        dispatcher.stop()
    posted = [outbox_id(call) for call in delivered(stub)]
    assert posted == sorted(posted)


def test_a_pass_waits_for_a_pace_keys_release_not_for_the_grace_of_rows_due_later(
    workflow: Workflow, stub: SlackStub
) -> None:
    """Told of a due row whose key is held, the dispatcher passes when the key is free: its row has waited
    its turn. Told of a row due later, it passes when the row falls due, plus PASS_GRACE_SECONDS in which a
    pass for other rows may serve it (bench/NOTES.md items 67, 69)."""
    pacer = Pacer()
    client = dispatcher_client(stub.client(), timeout=5)
    dispatcher = OutboxDispatcher(workflow.db, client, workflow.policy, poll_seconds=60, pacer=pacer)
    waits: list[float] = []
    wait = dispatcher._wake.wait

    def recorded(timeout: float | None = None) -> bool:
        waits.append(timeout if timeout is not None else float("inf"))
        return wait(timeout)

    dispatcher._wake.wait = recorded  # type: ignore[method-assign]
    key = post_key("C0SUPER")
    pacer.hold(key, 0.2)
    release = pacer.ready_in([key])
    dispatcher.wake([{"request_id": None, "pace_key": key, "next_attempt_at": utcnow()}])
    dispatcher._sleep(60)
    assert 0 < waits[0] <= release  # the release, with no grace

    waits.clear()
    later = utcnow() + timedelta(seconds=0.2)
    dispatcher.wake([{"request_id": None, "pace_key": None, "next_attempt_at": later}])
    dispatcher._sleep(60)
    assert 0.2 < waits[0] <= 0.2 + DUE_MARGIN_SECONDS + PASS_GRACE_SECONDS


def _notice(channel: str, text: str) -> dict[str, Any]:
    return {
        "channel": channel,
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
    }


def test_a_pass_that_sends_only_rows_of_no_request_asks_the_database_once(
    workflow: Workflow, stub: SlackStub, clock: FakeClock, engine: Engine
) -> None:
    """A row of no request (a scheduler notice, a modal update) lets no other row go when it is sent, so
    the pass does not ask again for what it has just sent (bench/NOTES.md item 37); a row of a request
    may let its request's next row go, and then the pass asks again."""
    dispatcher = make_dispatcher(workflow, stub, clock)
    with transaction(workflow.db) as session:
        for channel in ("C0AUTH", "C0DPO", "C0LEADS"):  # not the reviewers' channel, used below
            enqueue(session, "channel_post", _notice(channel, f"notice for {channel}"), None, clock.now)
    with statements_run(engine) as sent:
        assert dispatcher.run_once() == 3
    assert sum("GROUP BY" in statement for statement in sent) == 1
    assert len(delivered(stub)) == 3

    submit(workflow, "VAGAIN")  # its post, then its DM and App Home, each behind the one before
    with statements_run(engine) as sent:
        assert dispatcher.run_once() == 3
    assert sum("GROUP BY" in statement for statement in sent) > 1


def test_the_dispatcher_sleeps_after_a_pass_that_sent_what_was_due(
    workflow: Workflow, stub: SlackStub, engine: Engine
) -> None:
    """After a pass the dispatcher waits for a wake, a pace key or the poll: it does not pass again at once
    only to find nothing (bench/NOTES.md item 37)."""
    client = dispatcher_client(stub.client(), timeout=5)
    dispatcher = OutboxDispatcher(workflow.db, client, workflow.policy, poll_seconds=60)
    first_pass_done = threading.Event()
    run_once = dispatcher.run_once

    def passes() -> int:
        handled = run_once()
        first_pass_done.set()
        return handled

    dispatcher.run_once = passes  # type: ignore[method-assign]
    dispatcher.start()
    try:
        # The first pass, which finds nothing, is over before counting starts (on a slow machine a fixed
        # sleep could let its query into the count).
        assert first_pass_done.wait(10)
        with statements_run(engine) as sent:
            with transaction(workflow.db) as session:
                enqueue(session, "channel_post", _notice("C0LEADS", "a digest"), None, utcnow())
            dispatcher.wake()
            stub.wait_for(lambda call: len(delivered(stub)) == 1, timeout=10)
            time.sleep(0.5)
        assert sum("GROUP BY" in statement for statement in sent) == 1
    finally:
        dispatcher.stop()


@contextmanager
def answering_process_wake(sending: OutboxDispatcher) -> Iterator[OutboxWake]:
    """The wake of an answering process whose outbox a follow-up process sends (bot/follow_up.py): its
    own dispatcher, never started, forwards what it is told down a real pipe to `sending`'s."""
    ours, theirs = multiprocessing.Pipe()
    answering = OutboxDispatcher(sending.db, sending.client, sending.policy)
    answering.wake_elsewhere = lambda queued: ours.send((follow_up.WAKE_OUTBOX, queued))
    serving = threading.Thread(target=follow_up._serve, args=(theirs, None, sending.wake), daemon=True)
    serving.start()
    try:
        yield answering.wake
    finally:
        ours.send((follow_up.STOP, None))
        serving.join(5)


@pytest.mark.parametrize("where", ["here", "answering process"])
def test_a_row_due_later_is_sent_when_it_falls_due_not_at_the_next_poll(
    workflow: Workflow, stub: SlackStub, form: RequestForm, where: str
) -> None:
    """A modal's outcome is queued due a second after its save (MODAL_UPDATE_DELAY, so that Slack shows
    the "received" answer first): the save's commit tells the dispatcher when, and it passes then, not at
    its next poll after that, a poll away (bench/NOTES.md item 67). The poll here is a minute: only the
    commit's wake can send the update within the test's wait. On the real clock, as the bot runs.
    `answering process`: the save ran where the answers are given (the follow-up process could not take
    it), and the dispatcher sending the outbox is another process's, told through the pipe."""
    client = dispatcher_client(stub.client(), timeout=5)
    senders = {"publish_home": lambda payload: None, MODAL_UPDATE: modal_updater(client)}
    dispatcher = OutboxDispatcher(workflow.db, client, workflow.policy, poll_seconds=60, senders=senders)
    with contextlib.ExitStack() as stack:
        wake = dispatcher.wake if where == "here" else stack.enter_context(answering_process_wake(dispatcher))
        _show_comment_outcome(workflow, stub, form, dispatcher, wake)


def _show_comment_outcome(
    workflow: Workflow, stub: SlackStub, form: RequestForm, dispatcher: OutboxDispatcher, wake: OutboxWake
) -> None:
    real = Workflow(workflow.db, workflow.loaded, workflow.approvers, on_outbox=wake)
    request_id = real.submit(form, "UOFFICER", "T0TEST", "VDUE").request_id
    request = real.load(request_id)
    assert request is not None
    opened = stub.client().views_open(
        trigger_id=stub.issue_trigger_id("USUP1"),
        view=views.comment_modal(request, workflow.policy, real.clock()),
    )
    view_id = opened["view"]["id"]
    dispatcher.start()
    try:
        stub.wait_for("chat.postMessage", timeout=10)  # the first pass sent the request's post
        saved_at = time.monotonic()
        real.comment(request_id, "USUP1", "Spoke to the OIC.", "VCOMMENT", view_id)
        update = stub.wait_for(
            lambda call: call.method == "views.update" and call.args.get("view_id") == view_id, timeout=10
        )
        shown_after = time.monotonic() - saved_at
    finally:
        dispatcher.stop()
    assert update.ok and update.args["view"]["title"]["text"] == "Comment added"
    assert MODAL_UPDATE_DELAY.total_seconds() <= shown_after < 10


def test_a_stage_post_reads_each_of_its_requests_collections_once(
    workflow: Workflow, stub: SlackStub, clock: FakeClock, engine: Engine
) -> None:
    """The reviewer message is drawn from the request with its history, read once; the stage's own
    columns (its channel, where its message landed) are read without the stage's decisions and questions,
    which loading the stage on its own would add (bench/NOTES.md item 37)."""
    dispatcher = make_dispatcher(workflow, stub, clock)
    submit(workflow, "VREADS")
    with statements_run(engine) as sent:
        assert dispatcher.run_once() == 3  # the reviewers' post, the officer's DM, App Home
    normalised = [" ".join(statement.split()).upper() for statement in sent]
    assert sum("JOIN DECISIONS" in s or "FROM DECISIONS" in s for s in normalised) == 1, normalised
    assert sum("FROM INFO_REQUESTS" in s for s in normalised) == 1, normalised
    assert sum("FROM COMMENTS" in s for s in normalised) == 1, normalised
    with transaction(workflow.db) as session:
        stage = session.scalars(select(StageReview).where(StageReview.position == 0)).one()
    assert stage.message_ts == delivered(stub)[0].response["ts"]

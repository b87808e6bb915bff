"""A reviewer's decision is answered once its form passes its checks and recorded just after
(handlers/views.py `record_decision`): recorded or refused, the same transaction queues the modal's update
with the outcome (sent by the outbox, bot/intake.py `modal_updater`); not recorded, the reviewer gets the
form back as it was submitted with their answers, or a direct message if they closed it. Against the Slack
stand-in over HTTP."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import func, select

from bot import forms, views
from bot.forms import RequestForm, check_decision
from bot.policy import LoadedPolicy
from bot.services import Services
from bot.workflow import MODAL_UPDATE_DELAY, Workflow
from handlers import views as view_handlers
from handlers.views import DECIDE_AGAIN, AnsweredForm, record_decision
from storage.db import DatabaseUnavailable, transaction
from storage.models import AuditEvent, Decision, OutboxMessage
from tests.conftest import FakeClock, queued_modal_updates, send_modal_updates
from tests.slackstub import SlackStub

OFFICER = "UOFFICER"
REVIEWER = "USUP1"  # a member of the first stage's group
RATIONALE = "Serious offence; CCTV and witness enquiries are exhausted."
REASON = "alternatives_not_exhausted"

pytestmark = pytest.mark.usefixtures("no_give_back_delay")


@dataclass
class Deciding:
    """`record_decision` with the test's workflow and stand-in, on one pending request."""

    workflow: Workflow
    policy: LoadedPolicy
    stub: SlackStub
    monkeypatch: pytest.MonkeyPatch
    request_id: int

    def answers(self, action: str) -> dict[str, str]:
        if action == "approve":
            return {forms.RATIONALE.block_id: RATIONALE, forms.CONDITIONS.block_id: "Only the one still."}
        return {forms.RATIONALE.block_id: RATIONALE, forms.REASON_CODE.block_id: REASON}

    def open_form(self, action: str = "approve", user: str = REVIEWER) -> dict[str, Any]:
        """The reviewer's decision modal, opened in the stand-in, as Slack holds it."""
        request = self.workflow.load(self.request_id)
        assert request is not None
        ctx = self.context(action)
        trigger = self.stub.issue_trigger_id(user)
        opened = self.stub.client().views_open(
            trigger_id=trigger,
            view=views.decision_modal(request, self.policy.policy, ctx, self.workflow.clock()),
        )
        return dict(opened["view"])

    def context(self, action: str) -> views.ReviewContext:
        return views.ReviewContext(request_id=self.request_id, position=0, action=action)

    def record(self, view: dict[str, Any], action: str = "approve", user: str = REVIEWER) -> None:
        """The listener's work after its answer, for `view` submitted with this action's answers."""
        answers = self.answers(action)
        form = check_decision(answers, action)
        answered = AnsweredForm(user, view, answers, "decision", DECIDE_AGAIN)
        services = cast(Services, SimpleNamespace(workflow=self.workflow, policy=self.policy))
        record_decision(services, self.stub.client(), answered, self.context(action), form)

    def fail_with(self, error: Exception) -> None:
        def decide(*_args: Any, **_kwargs: Any) -> None:
            raise error

        self.monkeypatch.setattr(self.workflow, "decide", decide)

    def modal_updates(self) -> list[OutboxMessage]:
        return queued_modal_updates(self.workflow.db)

    def send_modal_updates(self) -> None:
        send_modal_updates(self.workflow.db, self.stub.client())

    def decisions(self) -> int:
        with transaction(self.workflow.db, read_only=True) as session:
            return int(session.scalar(select(func.count()).select_from(Decision)) or 0)

    def shown(self, view_id: str) -> dict[str, Any]:
        return self.stub.views[view_id].view


@pytest.fixture
def deciding(
    workflow: Workflow,
    policy: LoadedPolicy,
    form: RequestForm,
    stub: SlackStub,
    monkeypatch: pytest.MonkeyPatch,
) -> Deciding:
    request_id = workflow.submit(form, OFFICER, "T0TEST", "VREQUEST").request_id
    return Deciding(workflow, policy, stub, monkeypatch, request_id)


def test_a_recorded_decision_shows_its_outcome_in_the_modal_a_moment_later(
    deciding: Deciding, clock: FakeClock
) -> None:
    view = deciding.open_form()
    view_id = view["id"]
    deciding.record(view)

    assert deciding.decisions() == 1
    [row] = deciding.modal_updates()
    # Queued with the decision, due once Slack has shown the "received" answer, tied to no request's order.
    assert row.next_attempt_at == clock.now + MODAL_UPDATE_DELAY and row.request_id is None
    assert row.payload["view_id"] == view_id and "if_closed" not in row.payload
    deciding.send_modal_updates()
    shown = deciding.shown(view_id)
    assert shown["title"]["text"] == "Decision recorded" and "is recorded (1 of 1 needed)" in json.dumps(
        shown
    )
    deciding.stub.assert_no_violations()


def test_a_refused_decision_is_shown_and_a_closed_modal_gets_it_as_a_message(deciding: Deciding) -> None:
    deciding.record(deciding.open_form())
    # The same reviewer again, from a second form (a double click): refused, and on record as refused.
    second = deciding.open_form()
    second_id = second["id"]
    deciding.record(second)
    deciding.record({**second, "id": "VCLOSED"})  # a form whose modal the reviewer has closed meanwhile

    assert deciding.decisions() == 1
    with transaction(deciding.workflow.db, read_only=True) as session:
        refused = session.scalars(
            select(AuditEvent.action).where(AuditEvent.action == "action_refused")
        ).all()
    assert len(refused) == 2
    deciding.stub.clear()
    deciding.send_modal_updates()
    shown = deciding.shown(second_id)
    assert shown["title"]["text"] == "Not recorded" and "already" in json.dumps(shown)
    assert deciding.stub.calls_to("views.update")[-1].response["error"] == "not_found"
    [told] = deciding.stub.calls_to("chat.postMessage")
    assert told.ok and told.args["channel"] == REVIEWER and "*not recorded*" in told.args["text"]
    deciding.stub.assert_no_violations()


@pytest.mark.parametrize("action", ["approve", "reject"])
def test_a_decision_the_database_cannot_take_comes_back_with_the_answers(
    deciding: Deciding, action: str
) -> None:
    deciding.fail_with(DatabaseUnavailable("locked"))
    view = deciding.open_form(action)
    deciding.record(view, action)

    assert deciding.decisions() == 0 and deciding.modal_updates() == []
    shown = deciding.shown(view["id"])
    assert shown["callback_id"] == views.DECISION_CALLBACK and shown["submit"]["text"] == action.title()
    assert shown["title"] == view["title"]  # which names the request
    # What the form showed is shown again: the request's summary the reviewer decides on.
    assert [b for b in shown["blocks"] if b["type"] != "input"][1:] == [
        b for b in view["blocks"] if b["type"] != "input"
    ]
    assert view_handlers.NOT_SAVED in json.dumps(shown)
    assert views.ReviewContext.model_validate_json(shown["private_metadata"]) == deciding.context(action)
    initial = {
        block["block_id"]: block["element"].get("initial_value") or block["element"].get("initial_option")
        for block in shown["blocks"]
        if block["type"] == "input"
    }
    assert initial[forms.RATIONALE.block_id] == RATIONALE
    if action == "reject":
        assert initial[forms.REASON_CODE.block_id]["value"] == REASON
    else:
        assert initial[forms.CONDITIONS.block_id] == "Only the one still."
    deciding.stub.assert_no_violations()


def test_a_closed_modal_is_told_by_direct_message_that_the_decision_was_not_saved(deciding: Deciding) -> None:
    deciding.fail_with(DatabaseUnavailable("down"))
    closed = {**deciding.open_form(), "id": "VCLOSED"}
    deciding.stub.clear()  # the stand-in serves the whole session: only this test's calls
    deciding.record(closed)
    assert deciding.stub.calls_to("views.update")[-1].response["error"] == "not_found"
    told = deciding.stub.wait_for("chat.postMessage")
    assert told.ok and told.args["channel"] == REVIEWER and "*not recorded*" in told.args["text"]
    assert DECIDE_AGAIN in told.args["text"]


def test_an_unexpected_error_gives_the_decision_back_and_is_raised(deciding: Deciding) -> None:
    deciding.fail_with(RuntimeError("crim/123456/26 in an error"))
    view = deciding.open_form()
    with pytest.raises(RuntimeError):  # AfterAnswer logs it as a listener failure (bot/guard.py)
        deciding.record(view)
    assert view_handlers.DECISION_NOT_STORED in json.dumps(deciding.shown(view["id"]))

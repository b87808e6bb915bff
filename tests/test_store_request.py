"""An officer's request is answered once it passes its checks and stored just after (handlers/views.py
`store_request`): stored, it goes to the intake; not stored, the officer gets the form back with their
answers, or a direct message if they closed it. Against the Slack stand-in over HTTP."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest

from bot import forms, views
from bot.forms import RequestForm
from bot.policy import LoadedPolicy
from bot.services import Services
from bot.workflow import Submission, Workflow
from handlers import views as view_handlers
from handlers.views import AnsweredRequest, store_request
from storage.db import DatabaseUnavailable, transaction
from storage.models import SubmissionReceipt
from tests.conftest import valid_form_values
from tests.slackstub import SlackStub

OFFICER = "UOFFICER"


class Intake:
    """The intake's one entry point, noting what it was handed."""

    def __init__(self) -> None:
        self.handed: list[int] = []

    def received(self, receipt_id: int) -> None:
        self.handed.append(receipt_id)


pytestmark = pytest.mark.usefixtures("no_give_back_delay")


@dataclass
class Storing:
    """`store_request` with the test's workflow, policy and stand-in; `fail_with` makes storing fail."""

    workflow: Workflow
    policy: LoadedPolicy
    form: RequestForm
    stub: SlackStub
    monkeypatch: pytest.MonkeyPatch
    intake: Intake = field(default_factory=Intake)

    def store(self, view_id: str) -> None:
        services = cast(
            Services, SimpleNamespace(workflow=self.workflow, policy=self.policy, intake=self.intake)
        )
        submission = Submission(self.form, OFFICER, "T0TEST", view_id)
        store_request(services, self.stub.client(), AnsweredRequest(submission, valid_form_values(), ""))

    def fail_with(self, error: Exception) -> None:
        def receive(*_args: Any, **_kwargs: Any) -> int:
            raise error

        self.monkeypatch.setattr(self.workflow, "receive", receive)

    def open_form(self) -> str:
        trigger = self.stub.issue_trigger_id(OFFICER)
        opened = self.stub.client().views_open(
            trigger_id=trigger, view=views.request_modal(self.policy.policy)
        )
        return str(opened["view"]["id"])

    def shown(self, view_id: str) -> dict[str, Any]:
        return self.stub.views[view_id].view


@pytest.fixture
def storing(
    workflow: Workflow,
    policy: LoadedPolicy,
    form: RequestForm,
    stub: SlackStub,
    monkeypatch: pytest.MonkeyPatch,
) -> Storing:
    return Storing(workflow, policy, form, stub, monkeypatch)


def test_a_stored_form_goes_to_the_intake_once(storing: Storing) -> None:
    storing.store("VSTORED")
    storing.store("VSTORED")  # the same modal again
    with transaction(storing.workflow.db) as session:
        receipts = session.query(SubmissionReceipt).all()
        assert [(r.submission_key, r.requester_id, r.view_id) for r in receipts] == [
            ("VSTORED", OFFICER, "VSTORED")
        ]
        assert storing.intake.handed == [receipts[0].id, receipts[0].id]  # recording is idempotent
    assert storing.stub.calls_to("views.update") == [] and storing.stub.calls_to("chat.postMessage") == []


def test_a_form_the_database_cannot_take_comes_back_with_the_answers(storing: Storing) -> None:
    storing.fail_with(DatabaseUnavailable("locked"))
    view_id = storing.open_form()
    storing.store(view_id)

    assert storing.intake.handed == []
    shown = storing.shown(view_id)
    assert shown["callback_id"] == views.REQUEST_CALLBACK and shown.get("submit")
    assert view_handlers.NOT_SAVED in json.dumps(shown)
    initial = {
        block["block_id"]: block["element"].get("initial_value") or block["element"].get("initial_option")
        for block in shown["blocks"]
        if block["type"] == "input"
    }
    for text_field in (forms.CASE_REFERENCE, forms.NECESSITY, forms.PROPORTIONALITY):
        assert initial[text_field.block_id] == valid_form_values()[text_field.block_id]
    assert initial[forms.TOOL.block_id]["value"] == valid_form_values()[forms.TOOL.block_id]
    storing.stub.assert_no_violations()


def test_a_closed_modal_gets_a_direct_message_instead(storing: Storing) -> None:
    storing.fail_with(DatabaseUnavailable("down"))
    storing.store("VCLOSED")
    assert storing.stub.calls_to("views.update")[-1].response["error"] == "not_found"
    told = storing.stub.wait_for("chat.postMessage")
    assert told.ok and told.args["channel"] == OFFICER and "not saved" in told.args["text"]


def test_an_unexpected_error_gives_the_form_back_and_is_raised(storing: Storing) -> None:
    storing.fail_with(RuntimeError("crim/123456/26 in an error"))
    view_id = storing.open_form()
    with pytest.raises(RuntimeError):  # AfterAnswer logs it as a listener failure (bot/guard.py)
        storing.store(view_id)
    assert view_handlers.NOT_STORED in json.dumps(storing.shown(view_id))

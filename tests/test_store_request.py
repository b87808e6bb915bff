"""An officer's request is answered once it passes its checks and stored just after (handlers/views.py
`store_request`): stored, it goes to the intake; not stored, the officer gets the form back with their
answers, or a direct message if they closed it. Against the Slack stand-in over HTTP."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

import pytest

from bot import forms, views
from bot.forms import RequestForm
from bot.policy import LoadedPolicy
from bot.services import Services
from bot.workflow import Workflow
from handlers import views as view_handlers
from handlers.views import Submission, store_request
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


@pytest.fixture(autouse=True)
def no_give_back_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(view_handlers, "GIVE_BACK_DELAY_SECONDS", 0.0)


def services_for(workflow: Workflow, policy: LoadedPolicy, intake: Intake) -> Services:
    return cast(Services, SimpleNamespace(workflow=workflow, policy=policy, intake=intake))


def opened_form(stub: SlackStub, policy: LoadedPolicy) -> str:
    trigger = stub.issue_trigger_id(OFFICER)
    opened = stub.client().views_open(trigger_id=trigger, view=views.request_modal(policy.policy))
    return str(opened["view"]["id"])


def submission(form: RequestForm, view_id: str) -> Submission:
    return Submission(
        form=form,
        raw=valid_form_values(),
        user_id=OFFICER,
        team_id="T0TEST",
        view_id=view_id,
        metadata="",
        previous_request_id=None,
    )


def failing_receive(error: Exception) -> Any:
    def receive(*_args: Any, **_kwargs: Any) -> int:
        raise error

    return receive


def test_a_stored_form_goes_to_the_intake_once(
    workflow: Workflow, policy: LoadedPolicy, form: RequestForm, stub: SlackStub
) -> None:
    intake = Intake()
    services = services_for(workflow, policy, intake)
    store_request(services, stub.client(), submission(form, "VSTORED"))
    store_request(services, stub.client(), submission(form, "VSTORED"))  # the same modal again
    with transaction(workflow.db) as session:
        receipts = session.query(SubmissionReceipt).all()
        assert [(r.submission_key, r.requester_id, r.view_id) for r in receipts] == [
            ("VSTORED", OFFICER, "VSTORED")
        ]
        assert intake.handed == [receipts[0].id, receipts[0].id]  # recording is idempotent
    assert stub.calls_to("views.update") == [] and stub.calls_to("chat.postMessage") == []


def test_a_form_the_database_cannot_take_comes_back_with_the_answers(
    workflow: Workflow,
    policy: LoadedPolicy,
    form: RequestForm,
    stub: SlackStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workflow, "receive", failing_receive(DatabaseUnavailable("locked")))
    intake = Intake()
    view_id = opened_form(stub, policy)
    store_request(services_for(workflow, policy, intake), stub.client(), submission(form, view_id))

    assert intake.handed == []
    shown = stub.views[view_id].view
    assert shown["callback_id"] == views.REQUEST_CALLBACK and shown.get("submit")
    assert view_handlers.NOT_SAVED in json.dumps(shown)
    initial = {
        block["block_id"]: block["element"].get("initial_value") or block["element"].get("initial_option")
        for block in shown["blocks"]
        if block["type"] == "input"
    }
    for field in (forms.CASE_REFERENCE, forms.NECESSITY, forms.PROPORTIONALITY):
        assert initial[field.block_id] == valid_form_values()[field.block_id]
    assert initial[forms.TOOL.block_id]["value"] == valid_form_values()[forms.TOOL.block_id]
    stub.assert_no_violations()


def test_a_closed_modal_gets_a_direct_message_instead(
    workflow: Workflow,
    policy: LoadedPolicy,
    form: RequestForm,
    stub: SlackStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workflow, "receive", failing_receive(DatabaseUnavailable("down")))
    store_request(services_for(workflow, policy, Intake()), stub.client(), submission(form, "VCLOSED"))
    assert stub.calls_to("views.update")[-1].response["error"] == "not_found"
    told = stub.wait_for("chat.postMessage")
    assert told.ok and told.args["channel"] == OFFICER and "not saved" in told.args["text"]


def test_an_unexpected_error_gives_the_form_back_and_is_raised(
    workflow: Workflow,
    policy: LoadedPolicy,
    form: RequestForm,
    stub: SlackStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workflow, "receive", failing_receive(RuntimeError("crim/123456/26 in an error")))
    view_id = opened_form(stub, policy)
    with pytest.raises(RuntimeError):  # AfterAnswer logs it as a listener failure (bot/guard.py)
        store_request(services_for(workflow, policy, Intake()), stub.client(), submission(form, view_id))
    assert view_handlers.NOT_STORED in json.dumps(stub.views[view_id].view)

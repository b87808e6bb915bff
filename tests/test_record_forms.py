"""A reviewer's question and the everyday forms (an officer's answer, a comment, the search's outcome, a
deputy) are answered "received" once they pass their checks and saved just after (handlers/views.py
`save_form`): recorded or refused, the same transaction queues the modal's update with the outcome (sent by
the outbox, bot/intake.py `modal_updater`); not saved, the form comes back as it was submitted with the
answers filled in, or a direct message goes to someone who closed it. Against the Slack stand-in over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot import forms, views
from bot.approvers import ApproverDirectory, ApproverLookupFailed
from bot.forms import RequestForm
from bot.policy import LoadedPolicy
from bot.workflow import MODAL_UPDATE_DELAY, Refusal, Workflow
from handlers import views as view_handlers
from handlers.views import AnsweredForm, save_form
from storage.db import DatabaseUnavailable, transaction
from storage.models import AuditEvent, OutboxMessage, RequestStatus
from tests.conftest import FakeClock, queued_modal_updates, send_modal_updates
from tests.slackstub import SlackStub

OFFICER = "UOFFICER"
REVIEWER = "USUP1"
DEPUTY = "UDEPUTY"
APPROVAL = forms.check_decision({forms.RATIONALE.block_id: "Necessary and proportionate here."}, "approve")

pytestmark = pytest.mark.usefixtures("no_give_back_delay")


@dataclass(frozen=True)
class Kind:
    """One of the forms: who submits it, the answers typed, the modal it is typed in, how it is saved."""

    what: str
    user: str
    answers: dict[str, str]
    modal: Callable[[Workflow, LoadedPolicy, int], dict[str, Any]]
    save: Callable[[Workflow, int, dict[str, str], str], object]
    recorded: str  # the outcome modal's title


def _question(workflow: Workflow, request_id: int) -> int:
    asked = workflow.request_info(request_id, 0, REVIEWER, "Which exhibit is the still from?", "VASK")
    assert not isinstance(asked, Refusal)
    request = workflow.load(request_id)
    assert request is not None
    return request.stages[0].info_requests[-1].id


def _approved(workflow: Workflow, request_id: int) -> None:
    """Approve every stage of the request's route, as many approvers as each needs."""
    for position, approver in ((0, "USUP1"), (1, "UAUTH1"), (1, "UAUTH2"), (2, "UDPO1")):
        if _loaded(workflow, request_id).status == RequestStatus.APPROVED:
            return
        assert not isinstance(workflow.decide(request_id, position, approver, "approve", APPROVAL), Refusal)


def _loaded(workflow: Workflow, request_id: int) -> Any:
    request = workflow.load(request_id)
    assert request is not None
    return request


def _ctx(request_id: int) -> views.ReviewContext:
    return views.ReviewContext(request_id=request_id, position=0, action="request_info")


def _answer_modal(workflow: Workflow, policy: LoadedPolicy, request_id: int) -> dict[str, Any]:
    info_id = _question(workflow, request_id)
    request = _loaded(workflow, request_id)
    info = next(i for s in request.stages for i in s.info_requests if i.id == info_id)
    return views.answer_modal(request, info, policy.policy, workflow.clock())


def _post_use_modal(workflow: Workflow, policy: LoadedPolicy, request_id: int) -> dict[str, Any]:
    _approved(workflow, request_id)
    return views.post_use_modal(_loaded(workflow, request_id), policy.policy)


TODAY = date(2026, 3, 2)  # the test clock's day
KINDS = [
    Kind(
        "question",
        REVIEWER,
        {forms.QUESTION.block_id: "Which exhibit is the still from?"},
        lambda w, p, rid: views.info_modal(_loaded(w, rid), p.policy, _ctx(rid), w.clock()),
        lambda w, rid, raw, view_id: w.request_info(
            rid, 0, REVIEWER, forms.check_question(raw), view_id, view_id
        ),
        "Question sent",
    ),
    Kind(
        "answer",
        OFFICER,
        {forms.ANSWER.block_id: "JS/1, the CCTV still from the shop."},
        _answer_modal,
        lambda w, rid, raw, view_id: w.answer_info(
            _loaded(w, rid).stages[0].info_requests[-1].id, OFFICER, forms.check_answer(raw), view_id
        ),
        "Answer sent",
    ),
    Kind(
        "comment",
        REVIEWER,
        {forms.COMMENT.block_id: "Spoke to the OIC: the still is from exhibit JS/1."},
        lambda w, p, rid: views.comment_modal(_loaded(w, rid), p.policy, w.clock()),
        lambda w, rid, raw, view_id: w.comment(rid, REVIEWER, forms.check_comment(raw), view_id, view_id),
        "Comment added",
    ),
    Kind(
        views.POST_USE_NAME,
        OFFICER,
        {
            forms.SEARCH_RUN.block_id: "yes",
            forms.SEARCH_RESULT.block_id: "possible_match",
            forms.HANDLING.block_id: "deleted",
            forms.HANDLING_AUTHORITY.block_id: "Deleted on 3 March 2026 under the force's retention rule.",
        },
        _post_use_modal,
        lambda w, rid, raw, view_id: w.record_post_use(rid, OFFICER, forms.check_post_use(raw), view_id),
        "Search outcome recorded",
    ),
    Kind(
        "delegation",
        REVIEWER,
        {
            forms.DEPUTY.block_id: DEPUTY,
            forms.STARTS_ON.block_id: TODAY.isoformat(),
            forms.ENDS_ON.block_id: (TODAY + timedelta(days=4)).isoformat(),
        },
        lambda w, p, rid: views.delegation_modal(TODAY.isoformat()),
        lambda w, rid, raw, view_id: w.delegate(
            REVIEWER, forms.check_delegation(raw, REVIEWER, TODAY), view_id
        ),
        "Deputy named",
    ),
]


@dataclass
class Saving:
    """`save_form` with the test's workflow and stand-in, on one pending request."""

    workflow: Workflow
    policy: LoadedPolicy
    stub: SlackStub
    request_id: int

    def open_form(self, kind: Kind) -> dict[str, Any]:
        """The form's modal, opened in the stand-in, as Slack holds it (and sends it back on submit)."""
        trigger = self.stub.issue_trigger_id(kind.user)
        modal = kind.modal(self.workflow, self.policy, self.request_id)
        return dict(self.stub.client().views_open(trigger_id=trigger, view=modal)["view"])

    def save(self, kind: Kind, view: dict[str, Any], save: Callable[[], object] | None = None) -> None:
        answered = AnsweredForm(kind.user, view, kind.answers, kind.what)
        view_id = str(view["id"])
        save_form(
            self.stub.client(),
            answered,
            save or (lambda: kind.save(self.workflow, self.request_id, kind.answers, view_id)),
        )

    def modal_updates(self) -> list[OutboxMessage]:
        return queued_modal_updates(self.workflow.db)

    def send_modal_updates(self) -> None:
        send_modal_updates(self.workflow.db, self.stub.client())

    def shown(self, view_id: str) -> dict[str, Any]:
        return self.stub.views[view_id].view


@pytest.fixture
def saving(workflow: Workflow, policy: LoadedPolicy, form: RequestForm, stub: SlackStub) -> Saving:
    request_id = workflow.submit(form, OFFICER, "T0TEST", "VREQUEST").request_id
    return Saving(workflow, policy, stub, request_id)


def _fails_with(error: Exception) -> Callable[[], object]:
    def save() -> object:
        raise error

    return save


@pytest.mark.parametrize("kind", KINDS, ids=[k.what for k in KINDS])
def test_a_saved_form_shows_its_outcome_in_the_modal_a_moment_later(
    saving: Saving, kind: Kind, clock: FakeClock
) -> None:
    view = saving.open_form(kind)
    saving.stub.clear()
    saving.save(kind, view)

    [row] = saving.modal_updates()
    # Queued with what it records, due once Slack has shown the "received" answer.
    assert row.next_attempt_at == clock.now + MODAL_UPDATE_DELAY and row.request_id is None
    assert row.payload["view_id"] == view["id"] and "if_closed" not in row.payload
    saving.send_modal_updates()
    assert saving.shown(view["id"])["title"]["text"] == kind.recorded
    saving.stub.assert_no_violations()


@pytest.mark.parametrize("kind", KINDS, ids=[k.what for k in KINDS])
def test_a_form_the_database_cannot_take_comes_back_as_submitted_with_the_answers(
    saving: Saving, kind: Kind
) -> None:
    view = saving.open_form(kind)
    saving.save(kind, view, _fails_with(DatabaseUnavailable("locked")))

    assert saving.modal_updates() == []
    shown = saving.shown(view["id"])
    for key in ("callback_id", "title", "submit", "private_metadata"):
        assert shown[key] == view[key], key  # the same form, acting on the same thing
    assert view_handlers.NOT_SAVED in json.dumps(shown["blocks"][0])
    for block in shown["blocks"]:
        if block["type"] == "input" and block["block_id"] in kind.answers:
            element = block["element"]
            initial = (
                element.get("initial_value")
                or (element.get("initial_option") or {}).get("value")
                or element.get("initial_date")
                or element.get("initial_user")
            )
            assert initial == kind.answers[block["block_id"]], block["block_id"]
    saving.stub.assert_no_violations()


def test_a_closed_modal_is_told_by_direct_message_that_the_form_was_not_saved(saving: Saving) -> None:
    kind = KINDS[2]  # a comment
    closed = {**saving.open_form(kind), "id": "VCLOSED"}
    saving.stub.clear()  # the stand-in serves the whole session: only this test's calls
    saving.save(kind, closed, _fails_with(DatabaseUnavailable("down")))
    assert saving.stub.calls_to("views.update")[-1].response["error"] == "not_found"
    told = saving.stub.wait_for("chat.postMessage")
    assert told.ok and told.args["channel"] == REVIEWER
    assert "Your comment was *not recorded*: the bot could not save it just now" in told.args["text"]


def test_an_unexpected_error_gives_the_form_back_and_is_raised(saving: Saving) -> None:
    kind = KINDS[0]
    view = saving.open_form(kind)
    with pytest.raises(RuntimeError):  # AfterAnswer logs it as a listener failure (bot/guard.py)
        saving.save(kind, view, _fails_with(RuntimeError("crim/123456/26 in an error")))
    assert view_handlers.FORM_NOT_STORED in json.dumps(saving.shown(view["id"]))


def test_a_refused_form_is_shown_and_a_closed_modal_gets_it_as_a_message(saving: Saving) -> None:
    comment = KINDS[2]
    view = saving.open_form(comment)
    # Someone who is neither a reviewer nor a lead: refused, and on record as refused.
    stranger = saving.workflow.comment(
        saving.request_id, "USTRANGER", "Hello", str(view["id"]), str(view["id"])
    )
    assert isinstance(stranger, Refusal)
    saving.workflow.comment(saving.request_id, "USTRANGER", "Hello", "VCLOSED", "VCLOSED")
    with transaction(saving.workflow.db, read_only=True) as session:
        refused = session.scalars(select(AuditEvent.id).where(AuditEvent.action == "action_refused")).all()
    assert len(refused) == 2
    saving.stub.clear()
    saving.send_modal_updates()
    shown = saving.shown(view["id"])
    assert shown["title"]["text"] == "Not recorded" and "reviewers and leads" in json.dumps(shown)
    [told] = saving.stub.calls_to("chat.postMessage")
    assert told.args["channel"] == "USTRANGER" and "Your comment was *not recorded*" in told.args["text"]
    saving.stub.assert_no_violations()


class _FailingGroups:
    """A user group source that fails, noting whether the workflow's write transaction was open when asked."""

    def __init__(self, workflow: Workflow, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open_writes: list[int] = []
        self.asked_during_write: list[bool] = []
        write = workflow._write

        @contextmanager
        def tracked() -> Iterator[Any]:
            self.open_writes.append(1)
            try:
                with write() as session:
                    yield session
            finally:
                self.open_writes.pop()

        monkeypatch.setattr(workflow, "_write", tracked)

    def members(self, group_id: str) -> frozenset[str]:
        self.asked_during_write.append(bool(self.open_writes))
        raise ApproverLookupFailed(f"usergroups.users.list {group_id}: ratelimited")


def test_a_delegation_asks_slack_for_approvers_outside_its_transaction_and_shows_a_failure(
    saving: Saving, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups = _FailingGroups(saving.workflow, monkeypatch)
    monkeypatch.setattr(saving.workflow, "approvers", ApproverDirectory(groups))
    delegation = KINDS[4]
    user = "UNOTNAMED"  # named in no stage: only a group lookup can tell
    raw = delegation.answers
    result = saving.workflow.delegate(user, forms.check_delegation(raw, user, TODAY), "VDELEGATE")
    assert isinstance(result, Refusal) and result.code == "approvers_unavailable"
    assert groups.asked_during_write == [False]  # no write lock held while Slack answers
    [row] = saving.modal_updates()
    assert row.payload["view"]["title"]["text"] == "Not recorded" and "Slack could not" in json.dumps(
        row.payload
    )

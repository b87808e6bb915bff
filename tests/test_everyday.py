"""The everyday flows in the workflow core: withdraw, answer, comment, post-use, delegation, viewing."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from typing import Any

from sqlalchemy import func, select

from bot import views
from bot.approvers import ApproverDirectory
from bot.forms import DecisionForm, DelegationForm, PostUseForm
from bot.policy import LoadedPolicy, parse_policy
from bot.workflow import Decided, Refusal, RequestView, Workflow
from storage.db import transaction
from storage.models import AppHomeViewer, AuditEvent, OutboxMessage, RequestStatus, StageStatus
from tests.conftest import GROUPS, TEST_POLICY, FakeClock
from tests.test_workflow import APPROVE, REJECT, audit_actions, submit

URGENT = "A named victim has been threatened with a knife tonight."
POST_USE = PostUseForm(
    search_run=True, result="possible_match", handling="retained", authority="Exhibit JS/4, MoPI group 2"
)


def test_requester_withdraws_a_pending_request(workflow: Workflow) -> None:
    result = submit(workflow, tool="engine-a")
    stranger = workflow.withdraw(result.request_id, "USUP1")
    assert isinstance(stranger, Refusal) and stranger.code == "not_requester"
    done = workflow.withdraw(result.request_id, "UOFFICER")
    assert not isinstance(done, Refusal)
    request = workflow.load(result.request_id)
    assert request is not None and request.status == RequestStatus.WITHDRAWN
    assert {s.status for s in request.stages} == {StageStatus.CANCELLED}
    again = workflow.withdraw(result.request_id, "UOFFICER")
    assert isinstance(again, Refusal) and again.code == "request_closed"
    late = workflow.decide(result.request_id, 0, "USUP1", "approve", APPROVE)
    assert isinstance(late, Refusal) and late.code == "request_closed"
    assert "request_withdrawn" in audit_actions(workflow, result.request_id)


def test_answer_is_added_and_the_question_kept(workflow: Workflow) -> None:
    result = submit(workflow)
    workflow.request_info(result.request_id, 0, "USUP1", "Which exhibit is the still from?", "VQ1")
    request = workflow.load(result.request_id)
    assert request is not None
    info = request.stages[0].info_requests[0]
    refused = workflow.answer_info(info.id, "USUP2", "I will answer for them")
    assert isinstance(refused, Refusal) and refused.code == "not_requester"
    assert not isinstance(workflow.answer_info(info.id, "UOFFICER", "Exhibit JS/1, camera 3"), Refusal)
    twice = workflow.answer_info(info.id, "UOFFICER", "Changed my mind")
    assert isinstance(twice, Refusal) and twice.code == "already_answered"
    request = workflow.load(result.request_id)
    assert request is not None
    info = request.stages[0].info_requests[0]
    assert (info.question, info.answer) == ("Which exhibit is the still from?", "Exhibit JS/1, camera 3")
    # The review goes on: the stage is still pending and can be decided.
    assert isinstance(workflow.decide(result.request_id, 0, "USUP1", "approve", APPROVE), Decided)


def test_reviewers_comment_but_strangers_and_requester_cannot(workflow: Workflow) -> None:
    result = submit(workflow)
    assert isinstance(workflow.comment(result.request_id, "USTRANGER", "hello", "VC0"), Refusal)
    assert isinstance(workflow.comment(result.request_id, "UOFFICER", "my own note", "VC1"), Refusal)
    assert not isinstance(
        workflow.comment(result.request_id, "USUP2", "Checked the exhibit log.", "VC2"), Refusal
    )
    workflow.comment(result.request_id, "USUP2", "Checked the exhibit log.", "VC2")  # resubmitted modal
    request = workflow.load(result.request_id)
    assert request is not None
    assert [c.text for c in request.comments] == ["Checked the exhibit log."]
    assert request.status == RequestStatus.PENDING  # a comment decides nothing


def test_post_use_record_closes_an_approved_request(workflow: Workflow) -> None:
    result = submit(workflow)
    early = workflow.record_post_use(result.request_id, "UOFFICER", POST_USE)
    assert isinstance(early, Refusal) and early.code == "not_approved"
    workflow.decide(result.request_id, 0, "USUP1", "approve", APPROVE)
    other = workflow.record_post_use(result.request_id, "USUP1", POST_USE)
    assert isinstance(other, Refusal) and other.code == "not_requester"
    assert not isinstance(workflow.record_post_use(result.request_id, "UOFFICER", POST_USE), Refusal)
    again = workflow.record_post_use(result.request_id, "UOFFICER", POST_USE)
    assert isinstance(again, Refusal) and again.code == "already_recorded"
    request = workflow.load(result.request_id)
    assert request is not None and request.closed_at is not None
    assert views.officer_buttons(request, workflow.clock()) is None  # nothing left for the officer to do


def test_deputy_decides_only_inside_the_range_and_is_recorded_as_deputy(
    workflow: Workflow, clock: FakeClock
) -> None:
    today = clock.now.date()
    form = DelegationForm(
        deputy_id="UDEPUTY", starts_on=today.replace(day=today.day + 1), ends_on=date(2026, 3, 5)
    )
    assert isinstance(workflow.delegate("UNOBODY", form), Refusal)  # not an approver: cannot delegate
    assert not isinstance(workflow.delegate("USUP1", form), Refusal)
    result = submit(workflow)
    early = workflow.authorise(result.request_id, 0, "UDEPUTY", "approve")
    assert isinstance(early, Refusal) and early.code == "not_approver"
    clock.advance(days=1)
    assert workflow.authorise(result.request_id, 0, "UDEPUTY", "approve") is None
    assert [s.stage_id for _, s in workflow.awaiting_decision("UDEPUTY")] == ["supervisor"]
    decided = workflow.decide(result.request_id, 0, "UDEPUTY", "approve", APPROVE)
    assert isinstance(decided, Decided)
    request = workflow.load(result.request_id)
    assert request is not None
    decision = request.stages[0].decisions[0]
    assert (decision.approver_id, decision.on_behalf_of) == ("UDEPUTY", "USUP1")
    clock.advance(days=5)
    later = submit(workflow, key="V2")
    expired = workflow.authorise(later.request_id, 0, "UDEPUTY", "approve")
    assert isinstance(expired, Refusal) and expired.code == "not_approver"


def test_delegation_never_lets_the_requester_decide_their_own_request(
    workflow: Workflow, clock: FakeClock
) -> None:
    today = clock.now.date()
    workflow.delegate("USUP1", DelegationForm(deputy_id="UOFFICER", starts_on=today, ends_on=today))
    result = submit(workflow)
    own = workflow.decide(result.request_id, 0, "UOFFICER", "approve", APPROVE)
    assert isinstance(own, Refusal) and own.code == "own_request"
    # A supervisor who delegated to someone cannot have that deputy decide the supervisor's own request.
    workflow.delegate("USUP2", DelegationForm(deputy_id="UDEPUTY2", starts_on=today, ends_on=today))
    theirs = submit(workflow, key="V2", requester="USUP2")
    via_deputy = workflow.decide(theirs.request_id, 0, "UDEPUTY2", "approve", APPROVE)
    assert isinstance(via_deputy, Refusal) and via_deputy.code == "not_approver"


def _last_home_refresh(workflow: Workflow) -> dict[str, Any]:
    with transaction(workflow.db) as session:
        return session.scalars(
            select(OutboxMessage.payload)
            .where(OutboxMessage.kind == "publish_home")
            .order_by(OutboxMessage.id.desc())
            .limit(1)
        ).one()


def test_app_home_is_refreshed_for_the_approvers_of_a_stage_a_change_closed(workflow: Workflow) -> None:
    """Their "Awaiting my decision" lists showed it: once decided, or withdrawn, it must leave them (the
    refresh went to the officer and the deciders of the stage current after the change only)."""
    decided = submit(workflow)
    workflow.decide(decided.request_id, 0, "USUP1", "approve", APPROVE)
    refresh = _last_home_refresh(workflow)
    assert refresh["principals"] == ["USUP1", "USUP2", "S0SUPERS"]
    assert refresh["users"] == ["UOFFICER", "USUP1"]
    withdrawn = submit(workflow, key="V2", tool="engine-a")
    workflow.withdraw(withdrawn.request_id, "UOFFICER")
    assert _last_home_refresh(workflow)["principals"] == ["USUP1", "USUP2", "S0SUPERS"]


def test_a_deputys_app_home_is_refreshed_with_their_principals(workflow: Workflow, clock: FakeClock) -> None:
    """Their "Awaiting my decision" lists the principal's stages: a decision by another approver must
    take the request off it, as it does for the principal."""
    from bot.home import HomePublisher
    from tests.slackstub import SlackStub

    today = clock.now.date()
    workflow.delegate("USUP1", DelegationForm(deputy_id="UDEPUTY", starts_on=today, ends_on=today))
    result = submit(workflow)
    with SlackStub() as stub:
        home = HomePublisher(workflow, stub.client())
        home.opened("UDEPUTY")
        stub.clear()
        workflow.decide(result.request_id, 0, "USUP2", "approve", APPROVE)
        home.publish_for(_last_home_refresh(workflow))
        published = [c.args["user_id"] for c in stub.calls_to("views.publish") if c.ok]
        assert published == ["UDEPUTY"]
        stub.assert_no_violations()


def test_app_home_opened_twice_at_once_is_shown_both_times(workflow: Workflow, clock: FakeClock) -> None:
    """Two opens at once by someone new to App Home (two devices, a retried event): each read "no row
    yet" and each inserted one; on PostgreSQL the second waited for the first's key, then failed on it with
    an IntegrityError, and its home tab was never published. Here the first open is a transaction that has
    inserted the row and not yet committed."""
    from bot.home import HomePublisher
    from tests.slackstub import SlackStub

    with SlackStub() as stub:
        home = HomePublisher(workflow, stub.client())
        errors: list[BaseException] = []

        def open_home() -> None:
            try:
                home.opened("UNEWVIEWER")
            except BaseException as exc:  # reported below, on the test's thread
                errors.append(exc)

        with transaction(workflow.db) as first:
            first.add(AppHomeViewer(user_id="UNEWVIEWER", last_opened_at=clock.now))
            first.flush()
            second = threading.Thread(target=open_home)
            second.start()
            time.sleep(0.3)  # the second open reads, then waits for the first's key (or SQLite's lock)
        second.join(10)
        assert not second.is_alive() and errors == []
        assert [c.args["user_id"] for c in stub.calls_to("views.publish") if c.ok] == ["UNEWVIEWER"]
    with transaction(workflow.db) as session:
        assert session.scalar(select(func.count()).select_from(AppHomeViewer)) == 1


def test_awaiting_decision_looks_past_the_stages_the_user_has_decided(workflow: Workflow) -> None:
    """The authorisers' stage needs two approvals: the 30 oldest, approved by UAUTH1, wait for a second
    approver; the 31st is still UAUTH1's to decide (the list read the 30 oldest and found nothing)."""
    ids = [
        submit(workflow, key=f"V{n}", urgency="threat_to_life", urgency_justification=URGENT).request_id
        for n in range(31)
    ]
    for request_id in ids[:30]:
        assert isinstance(workflow.decide(request_id, 0, "UAUTH1", "approve", APPROVE), Decided)
    assert [r.id for r, _ in workflow.awaiting_decision("UAUTH1")] == ids[30:]
    assert len(workflow.awaiting_decision("UAUTH2")) == 15  # the list's limit


def test_a_request_for_a_tool_the_policy_now_bars_can_be_rejected_but_not_approved(
    workflow: Workflow, policy: LoadedPolicy
) -> None:
    """Made while Force RFR was approved; the register then says it is prohibited, and the bot restarts
    with that policy. Its reviewers are refused the approval (at the click and at the decision), and may
    still reject it."""
    result = submit(workflow)
    barred = parse_policy(TEST_POLICY.replace("status: approved", "status: prohibited"), "policy.yml")
    later = Workflow(workflow.db, barred, workflow.approvers, clock=workflow.clock)
    clicked = later.authorised_request(result.request_id, 0, "USUP1", "approve")
    assert isinstance(clicked, Refusal) and clicked.code == "tool_barred"
    assert "Force RFR is prohibited in this force" in clicked.message
    refused = later.decide(result.request_id, 0, "USUP1", "approve", APPROVE)
    assert isinstance(refused, Refusal) and refused.code == "tool_barred"
    assert not isinstance(later.authorised_request(result.request_id, 0, "USUP1", "reject"), Refusal)
    rejected = later.decide(result.request_id, 0, "USUP1", "reject", REJECT)
    assert isinstance(rejected, Decided)
    request = later.load(result.request_id)
    assert request is not None and request.status == RequestStatus.REJECTED
    assert audit_actions(workflow, result.request_id).count("action_refused") == 2


def test_a_deputy_of_two_approvers_acts_for_the_one_who_has_not_decided(
    workflow: Workflow, clock: FakeClock
) -> None:
    """The authorisers' stage needs two approvals. UAUTH1 and UAUTH2 both name UDEPUTY; once UAUTH1 has
    approved himself, the deputy acts for UAUTH2, and only once."""
    today = clock.now.date()
    for approver in ("UAUTH1", "UAUTH2"):
        form = DelegationForm(deputy_id="UDEPUTY", starts_on=today, ends_on=today)
        assert not isinstance(workflow.delegate(approver, form), Refusal)
    result = submit(workflow, urgency="threat_to_life", urgency_justification=URGENT)
    assert isinstance(workflow.decide(result.request_id, 0, "UAUTH1", "approve", APPROVE), Decided)
    assert [s.stage_id for _, s in workflow.awaiting_decision("UDEPUTY")] == ["authoriser"]
    decided = workflow.decide(result.request_id, 0, "UDEPUTY", "approve", APPROVE)
    assert isinstance(decided, Decided)
    request = workflow.load(result.request_id)
    assert request is not None and request.status == RequestStatus.APPROVED
    deciders = [(d.approver_id, d.on_behalf_of) for d in request.stages[0].decisions]
    assert deciders == [("UAUTH1", None), ("UDEPUTY", "UAUTH2")]


def test_an_approver_who_gave_the_first_of_two_approvals_may_still_ask_the_officer(
    workflow: Workflow,
) -> None:
    """The question is accepted from them (request_info); the button that opens its form refused them as
    having decided already."""
    result = submit(workflow, urgency="threat_to_life", urgency_justification=URGENT)
    assert isinstance(workflow.decide(result.request_id, 0, "UAUTH1", "approve", APPROVE), Decided)
    asked = workflow.authorised_request(result.request_id, 0, "UAUTH1", "request_info")
    assert not isinstance(asked, Refusal)
    again = workflow.authorised_request(result.request_id, 0, "UAUTH1", "approve")
    assert isinstance(again, Refusal) and again.code == "already_decided"


def test_a_deputy_who_gave_the_first_of_two_approvals_may_still_ask_and_is_told_they_decided(
    workflow: Workflow, clock: FakeClock
) -> None:
    """The deputy's principal is among those who decided, so the delegation found nobody left to stand
    for: 'not an approver', and the question refused."""
    today = clock.now.date()
    workflow.delegate("UAUTH1", DelegationForm(deputy_id="UDEPUTY", starts_on=today, ends_on=today))
    result = submit(workflow, urgency="threat_to_life", urgency_justification=URGENT)
    assert isinstance(workflow.decide(result.request_id, 0, "UDEPUTY", "approve", APPROVE), Decided)
    assert not isinstance(
        workflow.authorised_request(result.request_id, 0, "UDEPUTY", "request_info"), Refusal
    )
    again = workflow.authorised_request(result.request_id, 0, "UDEPUTY", "approve")
    assert isinstance(again, Refusal) and again.code == "already_decided"


def test_a_deputy_decides_once_on_a_stage_whoever_they_stand_in_for(
    workflow: Workflow, clock: FakeClock
) -> None:
    today = clock.now.date()
    for approver in ("UAUTH1", "UAUTH2"):
        workflow.delegate(approver, DelegationForm(deputy_id="UDEPUTY", starts_on=today, ends_on=today))
    result = submit(workflow, urgency="threat_to_life", urgency_justification=URGENT)
    assert isinstance(workflow.decide(result.request_id, 0, "UDEPUTY", "approve", APPROVE), Decided)
    again = workflow.decide(result.request_id, 0, "UDEPUTY", "approve", APPROVE)
    assert isinstance(again, Refusal) and again.code == "already_decided"


def test_a_deputy_sees_and_comments_on_the_requests_they_may_decide(
    workflow: Workflow, clock: FakeClock
) -> None:
    """Their "Awaiting my decision" list offers Details and Comment: both work while the delegation runs."""
    today = clock.now.date()
    workflow.delegate("USUP1", DelegationForm(deputy_id="UDEPUTY", starts_on=today, ends_on=today))
    result = submit(workflow)
    assert [r.id for r, _ in workflow.awaiting_decision("UDEPUTY")] == [result.request_id]
    assert isinstance(workflow.view_request(result.reference, "UDEPUTY", "app_home"), RequestView)
    assert not isinstance(
        workflow.comment(result.request_id, "UDEPUTY", "Exhibit log checked.", "VC1"), Refusal
    )
    stranger = workflow.view_request(result.reference, "USTRANGER", "app_home")
    assert isinstance(stranger, Refusal)
    clock.advance(days=1)  # the delegation has ended
    ended = workflow.view_request(result.reference, "UDEPUTY", "app_home")
    assert isinstance(ended, Refusal) and ended.code == "not_yours"


def test_starting_again_from_a_request_is_a_logged_view_of_it(workflow: Workflow) -> None:
    """The Re-request form is filled with the request's justifications: a look at its details like the
    Details button's, on record (it was not)."""
    result = submit(workflow)
    other = workflow.start_again_from(result.request_id, "USUP1")
    assert isinstance(other, Refusal) and other.code == "not_yours"
    assert isinstance(workflow.start_again_from(None, "UOFFICER"), Refusal)
    again = workflow.start_again_from(result.request_id, "UOFFICER")
    assert not isinstance(again, Refusal) and again.id == result.request_id
    with transaction(workflow.db) as session:
        looks = session.execute(
            select(AuditEvent.actor_id, AuditEvent.details).where(AuditEvent.action == "request_viewed")
        ).all()
    assert [(actor, details["surface"]) for actor, details in looks] == [("UOFFICER", "rerequest")]


class _SlowSlack:
    """A user group's members, from a Slack that answers when told to."""

    def __init__(self) -> None:
        self.asked, self.answer = threading.Event(), threading.Event()

    def members(self, group_id: str) -> frozenset[str]:
        self.asked.set()
        assert self.answer.wait(10)
        return frozenset(GROUPS.get(group_id, set()))


def test_whether_someone_may_look_is_asked_before_the_write_that_records_the_look(
    workflow: Workflow,
) -> None:
    """Whether a stranger may see a request can be a question to Slack (a user group's members). On SQLite
    it was asked inside the write that records the look, holding the process's one writer lock: every
    other write (an officer's form) waited behind Slack, and gave up after two seconds."""
    result = submit(workflow)
    slack = _SlowSlack()
    slow = Workflow(workflow.db, workflow.loaded, ApproverDirectory(slack), clock=workflow.clock)
    with ThreadPoolExecutor(max_workers=1) as pool:
        looking = pool.submit(slow.view_request, result.reference, "USTRANGER", "status_command")
        assert slack.asked.wait(5)
        try:
            # A write while Slack is being asked: it raised "database is locked" after two seconds
            # when the look's write held SQLite's writer lock.
            submit(workflow, key="V2")
            assert not looking.done()
        finally:
            slack.answer.set()
        assert isinstance(looking.result(timeout=10), Refusal)


def test_a_decision_asks_slack_for_its_approvers_before_it_takes_the_write_lock(workflow: Workflow) -> None:
    """A member of a user group decides once the group's cache has expired: the question to Slack was
    asked inside the decision's write, and an officer's form waited behind it (two seconds, then 'Not
    saved')."""
    result = submit(workflow)
    slack = _SlowSlack()
    slow = Workflow(workflow.db, workflow.loaded, ApproverDirectory(slack), clock=workflow.clock)
    with ThreadPoolExecutor(max_workers=1) as pool:
        deciding = pool.submit(slow.decide, result.request_id, 0, "USUP3", "approve", APPROVE)
        assert slack.asked.wait(5)
        try:
            submit(workflow, key="V2")
            assert not deciding.done()
        finally:
            slack.answer.set()
        assert isinstance(deciding.result(timeout=10), Decided)


def test_a_form_run_again_is_shown_as_recorded_and_recorded_once(
    workflow: Workflow, clock: FakeClock
) -> None:
    """A follow-up process that dies after saving a form, before it says so, has the form run again by the
    next (bot/follow_up.py, `again`): a decision was then refused as decided and its modal told 'Not
    recorded', a delegation made twice, an answer and a record of use refused."""
    result = submit(workflow)
    request_id = result.request_id
    for again in (False, True):
        decided = workflow.decide(request_id, 0, "USUP1", "approve", APPROVE, "VDECIDE", again=again)
        assert isinstance(decided, Decided) and decided.outcome == "approve"
    today = clock.now.date()
    form = DelegationForm(deputy_id="UDEPUTY", starts_on=today, ends_on=today)
    first, again = (workflow.delegate("USUP2", form, view_id="VDELEGATE") for _ in range(2))
    assert not isinstance(first, Refusal) and again == first
    for again in (False, True):
        assert not isinstance(
            workflow.record_post_use(request_id, "UOFFICER", POST_USE, "VUSE", again), Refusal
        )
    other = submit(workflow, key="V2")
    workflow.request_info(other.request_id, 0, "USUP1", "Which exhibit is the still from?", "VQ1")
    request = workflow.load(other.request_id)
    assert request is not None
    info = request.stages[0].info_requests[0]
    for again in (False, True):
        assert not isinstance(
            workflow.answer_info(info.id, "UOFFICER", "Exhibit JS/1", "VANSWER", again), Refusal
        )
    # Not the same answer, or not a run again (a second form): refused as before.
    assert isinstance(workflow.answer_info(info.id, "UOFFICER", "Something else", again=True), Refusal)
    assert isinstance(workflow.answer_info(info.id, "UOFFICER", "Exhibit JS/1"), Refusal)
    actions = audit_actions(workflow)
    assert actions.count("action_refused") == 2
    for action in ("decision_recorded", "delegation_created", "post_use_recorded", "info_answered"):
        assert actions.count(action) == 1, action
    with transaction(workflow.db) as session:
        updates = session.scalars(
            select(OutboxMessage.payload)
            .where(OutboxMessage.kind == "update_modal")
            .order_by(OutboxMessage.id)
        ).all()
    assert all("Not recorded" not in json.dumps(payload) for payload in updates)


def test_the_approval_dm_holds_the_conditions_of_every_stage(workflow: Workflow) -> None:
    """Supervisor review approves on a condition, the later stages without: the final 'approved' DM showed
    only the last decision's conditions (none), and the officer was not told what they must follow."""
    result = submit(workflow, tool="engine-a")  # supervisor, two authorisers, data protection
    conditional = DecisionForm(
        rationale=APPROVE.rationale, conditions="Custody images only; delete in 30 days"
    )
    workflow.decide(result.request_id, 0, "USUP1", "approve", conditional)
    for position, approver in ((1, "UAUTH1"), (1, "UAUTH2"), (2, "UDPO1")):
        assert isinstance(workflow.decide(result.request_id, position, approver, "approve", APPROVE), Decided)
    with transaction(workflow.db) as session:
        last_dm = session.scalars(
            select(OutboxMessage.payload)
            .where(OutboxMessage.kind == "dm")
            .order_by(OutboxMessage.id.desc())
            .limit(1)
        ).one()
    body = json.dumps(last_dm)
    assert "is approved" in last_dm["text"]
    assert "Conditions you must follow" in body and "Custody images only; delete in 30 days" in body
    assert "Supervisor review" in body  # whose condition it is


def test_a_closed_approval_says_its_outcome_is_recorded_not_valid_until(workflow: Workflow) -> None:
    result = submit(workflow)
    workflow.decide(result.request_id, 0, "USUP1", "approve", APPROVE)
    workflow.record_post_use(result.request_id, "UOFFICER", POST_USE)
    request = workflow.load(result.request_id)
    assert request is not None
    listed = json.dumps(views.requests_list([request], workflow.policy, workflow.clock()))
    assert "outcome is recorded" in listed and "valid until" not in listed


def test_an_approval_past_its_time_says_it_ran_out_not_valid_until(
    workflow: Workflow, clock: FakeClock
) -> None:
    """The list, Details and the reviewer message said "Approved: valid until <a past time>" once the
    approval had run out with no outcome recorded, which read as if the search could still be run."""
    result = submit(workflow)
    workflow.decide(result.request_id, 0, "USUP1", "approve", APPROVE)
    request = workflow.load(result.request_id)
    assert request is not None and request.valid_until is not None
    still_valid = json.dumps(views.requests_list([request], workflow.policy, clock.now))
    assert "valid until" in still_valid and "ran out" not in still_valid
    clock.now = request.valid_until + timedelta(minutes=1)
    view = workflow.view_request(request.reference, "UOFFICER", "test")
    assert not isinstance(view, Refusal)
    for blocks in (
        views.requests_list([request], workflow.policy, clock.now),
        views.request_details(view.request, view.events, workflow.policy, view.post_use, clock.now),
        views.review_message(request, request.stages[0], workflow.policy, clock.now)["blocks"],
    ):
        shown = json.dumps(blocks)
        assert "Approved, ran out <!date^" in shown and "a search now needs a new request" in shown
        assert "Approved: valid until" not in shown


def test_my_requests_lists_the_open_ones_first_and_a_question_waiting_for_me(workflow: Workflow) -> None:
    """An approval waiting for its outcome was pushed off the ten-long list by newer requests; nothing in
    the list said a question waited for the officer's answer (the review's clock stops meanwhile)."""
    approved = submit(workflow, key="V0")
    workflow.decide(approved.request_id, 0, "USUP1", "approve", APPROVE)
    newer = [submit(workflow, key=f"V{n}") for n in range(1, 12)]
    for result in newer:
        workflow.withdraw(result.request_id, "UOFFICER")
    asked = submit(workflow, key="V12")
    workflow.request_info(asked.request_id, 0, "USUP1", "Which exhibit is the still from?", "VQ1")
    mine = workflow.my_requests("UOFFICER")
    assert [r.id for r in mine[:2]] == [asked.request_id, approved.request_id] and len(mine) == 10
    listed = json.dumps(views.requests_list(mine, workflow.policy, workflow.clock()))
    assert listed.count("question waits for your answer") == 1


def test_only_involved_people_see_a_request_and_every_look_is_logged(workflow: Workflow) -> None:
    result = submit(workflow)
    for viewer in ("UOFFICER", "USUP3", "ULEAD1"):  # requester, group approver, lead
        seen = workflow.view_request(result.reference, viewer, "status_command")
        assert isinstance(seen, RequestView), viewer
        assert [e.action for e in seen.events][:2] == ["request_submitted", "request_routed"]
    stranger = workflow.view_request(result.reference, "USTRANGER", "status_command")
    missing = workflow.view_request("FR-2026-99999", "USTRANGER", "status_command")
    assert isinstance(stranger, Refusal) and isinstance(missing, Refusal)
    assert stranger.message == missing.message  # no hint whether a reference exists
    with transaction(workflow.db) as session:
        viewed = session.scalars(
            select(AuditEvent.actor_id).where(AuditEvent.action == "request_viewed")
        ).all()
    assert sorted(viewed) == ["ULEAD1", "UOFFICER", "USUP3"]


def test_rerequest_links_to_the_earlier_request(workflow: Workflow) -> None:
    from bot.forms import check_request

    first = submit(workflow)
    workflow.withdraw(first.request_id, "UOFFICER")
    earlier = workflow.load(first.request_id)
    assert earlier is not None
    form = check_request(workflow.policy, views.initial_values(earlier))
    second = workflow.submit(form, "UOFFICER", "T0TEST", "V-again", previous_request_id=first.request_id)
    request = workflow.load(second.request_id)
    assert request is not None and request.previous_request_id == first.request_id
    assert request.necessity == earlier.necessity
    assert "request_rerequested" in audit_actions(workflow, second.request_id)
    # Someone else's request cannot be the origin of a re-request.
    third = workflow.submit(form, "UOTHER", "T0TEST", "V-other", previous_request_id=first.request_id)
    other = workflow.load(third.request_id)
    assert other is not None and other.previous_request_id is None


def test_lists_for_app_home(workflow: Workflow) -> None:
    mine = submit(workflow)
    online = submit(workflow, key="V2", tool="engine-a")
    assert [r.id for r in workflow.my_requests("UOFFICER")] == [online.request_id, mine.request_id]
    awaiting = workflow.awaiting_decision("USUP1")
    assert {r.id for r, _ in awaiting} == {mine.request_id, online.request_id}
    assert workflow.awaiting_decision("UOFFICER") == []
    workflow.decide(online.request_id, 0, "USUP1", "approve", APPROVE)
    assert [r.id for r, _ in workflow.awaiting_decision("USUP1")] == [mine.request_id]
    assert [r.id for r, _ in workflow.awaiting_decision("UAUTH1")] == [online.request_id]
    overview = workflow.overview()
    assert {name: count for name, count, _ in overview.pending_by_stage} == {
        "Authorising officer": 1,
        "Supervisor review": 1,
    }
    assert workflow.is_lead("ULEAD1") and not workflow.is_lead("USUP1")


def test_timeline_shows_the_sealed_free_text(workflow: Workflow) -> None:
    result = submit(workflow)
    workflow.request_info(result.request_id, 0, "USUP1", "Which exhibit is the still from?", "VQ1")
    seen = workflow.view_request(result.request_id, "UOFFICER", "details")
    assert isinstance(seen, RequestView)
    lines = [views.timeline_line(event, seen.request, workflow.policy) for event in seen.events]
    assert any("Which exhibit is the still from?" in line for line in lines)
    assert not any("$sealed" in line for line in lines)


def test_threads_that_miss_a_group_together_ask_slack_once() -> None:
    """Each asked Slack (a Tier 2 method) and each could be rate-limited; now the first asks and the
    others take its answer."""
    calls: list[str] = []
    release = threading.Event()

    class Slack:
        def members(self, group_id: str) -> frozenset[str]:
            calls.append(group_id)
            assert release.wait(5)
            return frozenset({"USUP3"})

    directory = ApproverDirectory(Slack())
    with ThreadPoolExecutor(max_workers=4) as pool:
        asked = [pool.submit(directory.members, ("S0SUPERS",)) for _ in range(4)]
        time.sleep(0.2)  # all four waiting on the one look-up
        release.set()
        assert all(future.result(timeout=5) == {"USUP3"} for future in asked)
    assert calls == ["S0SUPERS"]

"""A reviewer's click reads the request once and writes only to record a refusal."""

from __future__ import annotations

from sqlalchemy import Engine

from bot import views
from bot.workflow import Refusal, Workflow
from storage.models import FrRequest
from tests.conftest import statements_run
from tests.test_workflow import APPROVE, audit_actions, submit


def test_approver_gets_the_request_without_an_audit_write(workflow: Workflow) -> None:
    result = submit(workflow)
    before = audit_actions(workflow, result.request_id)
    request = workflow.authorised_request(result.request_id, 0, "USUP1", "approve")
    assert isinstance(request, FrRequest)
    assert request.reference == result.reference and request.current is not None
    assert audit_actions(workflow, result.request_id) == before


def test_refusals_are_recorded_as_before(workflow: Workflow) -> None:
    result = submit(workflow)
    stranger = workflow.authorised_request(result.request_id, 0, "USTRANGER", "approve")
    own = workflow.authorised_request(result.request_id, 0, "UOFFICER", "reject")
    assert isinstance(stranger, Refusal) and isinstance(own, Refusal) and own.code == "own_request"
    assert audit_actions(workflow, result.request_id)[-2:] == ["action_refused", "action_refused"]

    workflow.decide(result.request_id, 0, "USUP1", "approve", APPROVE)
    closed = workflow.authorised_request(result.request_id, 0, "USUP2", "approve")
    assert isinstance(closed, Refusal) and closed.code == "request_closed"
    missing = workflow.authorised_request(999_999, 0, "USUP2", "approve")
    assert isinstance(missing, Refusal) and missing.code == "unknown_request"
    assert audit_actions(workflow)[-1] == "action_refused"


def test_a_click_reads_the_request_its_stages_and_decisions_in_one_query(
    workflow: Workflow, engine: Engine
) -> None:
    """Questions and comments are not read on the path of every click; the modals do not show them."""
    result = submit(workflow)
    workflow.request_info(result.request_id, 0, "USUP1", "Which camera took the image?", "V-INFO")
    with statements_run(engine) as statements:
        request = workflow.authorised_request(result.request_id, 0, "USUP2", "approve")
    assert isinstance(request, FrRequest)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1, statements
    context = views.ReviewContext(request_id=request.id, position=0, action="approve")
    assert views.decision_modal(request, workflow.policy, context, workflow.clock())["type"] == "modal"
    context = views.ReviewContext(request_id=request.id, position=0, action="request_info")
    assert views.info_modal(request, workflow.policy, context, workflow.clock())["type"] == "modal"

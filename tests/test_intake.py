"""Submissions are stored just after the officer's modal is answered (tests/test_store_request.py) and
recorded as requests by the intake (bot/intake.py): nothing stored is lost, nothing is recorded twice."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from bot import views
from bot.audit import verify_chain
from bot.forms import RequestForm
from bot.intake import IntakeWorker, modal_updater
from bot.workflow import MODAL_UPDATE, MODAL_UPDATE_DELAY, Submission, Submitted, Workflow
from storage.db import DatabaseUnavailable, transaction
from storage.models import AuditEvent, FrRequest, OutboxMessage, SubmissionReceipt
from tests.conftest import FakeClock
from tests.slackstub import SlackStub


def receipt_of(workflow: Workflow, receipt_id: int) -> SubmissionReceipt:
    with transaction(workflow.db) as session:
        receipt = session.get(SubmissionReceipt, receipt_id)
        assert receipt is not None
        return receipt


def count(workflow: Workflow, model: Any) -> int:
    with transaction(workflow.db) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_a_receipt_becomes_one_request_and_keeps_no_form_text(
    workflow: Workflow, form: RequestForm, clock: FakeClock
) -> None:
    receipt_id = workflow.receive(form, "UOFFICER", "T0TEST", "V1", view_id="V1")
    assert count(workflow, FrRequest) == 0  # stored, not yet a request
    assert receipt_of(workflow, receipt_id).form is not None

    recorded = workflow.record_receipt(receipt_id)
    again = workflow.record_receipt(receipt_id)  # e.g. a second process found it too

    assert recorded is not None and recorded.created and recorded.reference.startswith("FR-")
    assert again is not None and not again.created and again.reference == recorded.reference
    assert count(workflow, FrRequest) == 1
    receipt = receipt_of(workflow, receipt_id)
    assert receipt.form is None and receipt.request_id == recorded.request_id
    assert receipt.recorded_at is not None
    with transaction(workflow.db) as session:
        events = session.scalars(
            select(AuditEvent.action).where(AuditEvent.request_id == recorded.request_id)
        )
        assert list(events).count("request_submitted") == 1
        update = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == MODAL_UPDATE)).one()
    # The officer's modal is shown the reference, a moment after Slack has shown the answer.
    assert update.payload["view_id"] == "V1" and recorded.reference in str(update.payload["view"])
    assert update.next_attempt_at == receipt.recorded_at + MODAL_UPDATE_DELAY
    assert update.request_id is None  # a closed modal holds up none of the request's messages


def test_the_same_modal_stored_twice_is_one_receipt(workflow: Workflow, form: RequestForm) -> None:
    first = workflow.receive(form, "UOFFICER", "T0TEST", "V2", view_id="V2")
    second = workflow.receive(form, "UOFFICER", "T0TEST", "V2", view_id="V2")
    assert first == second and count(workflow, SubmissionReceipt) == 1


def test_a_receipt_left_by_a_dead_process_is_recorded_at_start(workflow: Workflow, form: RequestForm) -> None:
    receipt_id = workflow.receive(form, "UOFFICER", "T0TEST", "V3", view_id="V3")  # then the process died
    worker = IntakeWorker(workflow, poll_seconds=0.05)
    worker.start()
    try:
        deadline = 100
        while receipt_of(workflow, receipt_id).recorded_at is None and deadline:
            deadline -= 1
            worker._stop.wait(0.05)
    finally:
        worker.stop()
    assert receipt_of(workflow, receipt_id).recorded_at is not None and count(workflow, FrRequest) == 1


def wait_recorded(workflow: Workflow, receipt_id: int, worker: IntakeWorker) -> bool:
    for _ in range(100):
        if receipt_of(workflow, receipt_id).recorded_at is not None:
            return True
        worker._stop.wait(0.05)
    return False


def test_a_worker_process_records_what_another_process_just_stored(
    workflow: Workflow, form: RequestForm
) -> None:
    """`fr-bot worker`: the answering process (`run --no-worker`) only stores; the worker's scan takes
    every receipt, however new, not only those left for `orphan_after`."""
    worker = IntakeWorker(workflow, poll_seconds=0.05, orphan_after_seconds=3600, records_all=True)
    worker.start()
    try:
        worker._stop.wait(0.1)  # its first scan found nothing
        receipt_id = workflow.receive(form, "UOFFICER", "T0TEST", "V5", view_id="V5")  # elsewhere
        assert wait_recorded(workflow, receipt_id, worker)
    finally:
        worker.stop()
    assert count(workflow, FrRequest) == 1


def test_a_process_that_does_not_record_leaves_receipts_to_the_worker(
    workflow: Workflow, form: RequestForm
) -> None:
    answering_only = IntakeWorker(workflow)  # `run --no-worker`: never started
    receipt_id = workflow.receive(form, "UOFFICER", "T0TEST", "V6", view_id="V6")
    answering_only.received(receipt_id)
    assert answering_only._queue.empty()  # nothing piles up in a process that will not record it
    assert receipt_of(workflow, receipt_id).recorded_at is None and count(workflow, FrRequest) == 0


def test_a_receipt_is_kept_and_retried_while_the_database_fails(
    workflow: Workflow, form: RequestForm, monkeypatch: pytest.MonkeyPatch
) -> None:
    receipt_id = workflow.receive(form, "UOFFICER", "T0TEST", "V4", view_id="V4")
    worker = IntakeWorker(workflow)
    real = workflow.submit_all

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise DatabaseUnavailable("connection refused")

    monkeypatch.setattr(workflow, "submit_all", unavailable)
    assert worker.record(receipt_id) is None
    receipt = receipt_of(workflow, receipt_id)
    assert (
        receipt.recorded_at is None
        and receipt.attempts == 1
        and "connection refused" in str(receipt.last_error)
    )
    assert receipt_id in worker._retry_at  # tried again after a backoff
    # A scan leaves it to its backoff, so failing receipts cannot fill every batch and starve the rest.
    assert worker._scan_orphans(everything=True) == 0 and receipt_of(workflow, receipt_id).attempts == 1

    monkeypatch.setattr(workflow, "submit_all", real)
    recorded = worker.record(receipt_id)
    assert recorded is not None and recorded.created and receipt_id not in worker._retry_at
    assert receipt_of(workflow, receipt_id).last_error is None


def test_modal_update_skips_a_closed_modal(stub: SlackStub) -> None:
    update = modal_updater(stub.client())
    # The officer closed the modal: Slack answers not_found and there is nothing left to do.
    update({"view_id": "VCLOSED", "view": views.recorded_modal("FR-2026-00001", ("Supervisor",))})
    assert stub.calls_to("views.update")[-1].response["error"] == "not_found"


def test_receipts_recorded_together_are_what_each_would_be_on_its_own(
    workflow: Workflow, form: RequestForm, engine: Engine
) -> None:
    earlier = workflow.submit(form, "UOFFICER", "T0TEST", "V0")
    first = workflow.receive(form, "UOFFICER", "T0TEST", "V1", view_id="V1")
    workflow.record_receipt(first)  # already recorded: the batch reports it, records nothing again
    fresh = [workflow.receive(form, f"UOFF{n}", "T0TEST", f"V{n}", view_id=f"V{n}") for n in range(2, 6)]
    rerequest = workflow.receive(
        form, "UOFFICER", "T0TEST", "V6", previous_request_id=earlier.request_id, view_id="V6"
    )
    recorded = workflow.record_receipts([first, *fresh, rerequest, 999])
    assert 999 not in recorded and [r.created for r in recorded.values()] == [False] + [True] * 5
    assert workflow.record_receipts([first, *fresh, rerequest]) == {
        receipt_id: replace(submitted, created=False) for receipt_id, submitted in recorded.items()
    }
    # References follow the receipts' order, with no gap, continuing from the earlier ones.
    numbers = [int(recorded[r].reference.rsplit("-", 1)[1]) for r in (first, *fresh, rerequest)]
    assert numbers == list(range(2, 8))
    assert count(workflow, FrRequest) == 7
    with transaction(workflow.db) as session:
        for receipt_id in (*fresh, rerequest):
            receipt = session.get(SubmissionReceipt, receipt_id)
            assert receipt is not None and receipt.form is None
            assert receipt.request_id == recorded[receipt_id].request_id
            request = session.get(FrRequest, receipt.request_id)
            assert request is not None and [s.stage_name for s in request.stages] == ["Supervisor review"]
            assert request.stages[0].due_at is not None
            kinds = session.scalars(
                select(OutboxMessage.kind)
                .where(OutboxMessage.request_id == request.id)
                .order_by(OutboxMessage.id)
            )
            assert list(kinds) == ["post_review", "dm", "publish_home"]
            dm = session.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.request_id == request.id, OutboxMessage.kind == "dm"
                )
            ).one()
            assert request.reference in dm.payload["text"]
            actions = session.scalars(
                select(AuditEvent.action).where(AuditEvent.request_id == request.id).order_by(AuditEvent.seq)
            )
            expected = ["request_submitted", "request_routed"]
            assert list(actions) == expected + (["request_rerequested"] if receipt_id == rerequest else [])
        again = session.get(FrRequest, recorded[rerequest].request_id)
        assert again is not None and again.previous_request_id == earlier.request_id
        updates = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == MODAL_UPDATE))
        assert sorted(u.payload["view_id"] for u in updates) == sorted(f"V{n}" for n in range(1, 7))
    assert verify_chain(engine).ok


def test_a_batch_that_fails_is_recorded_one_receipt_at_a_time(
    workflow: Workflow, form: RequestForm, monkeypatch: pytest.MonkeyPatch
) -> None:
    receipts = [workflow.receive(form, "UOFFICER", "T0TEST", f"V{n}", view_id=f"V{n}") for n in range(3)]
    real = workflow.submit_all

    def only_one_at_a_time(submissions: list[Submission]) -> list[Submitted]:
        if len(submissions) > 1:
            raise RuntimeError("a batch failed")
        return real(submissions)

    monkeypatch.setattr(workflow, "submit_all", only_one_at_a_time)
    IntakeWorker(workflow).record_batch(receipts)
    assert count(workflow, FrRequest) == 3
    assert all(receipt_of(workflow, r).recorded_at is not None for r in receipts)

"""Wire the pieces together: database, policy, Slack client, workflow and outbox dispatcher."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from slack_sdk import WebClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from bot.approvers import ApproverDirectory, SlackGroupSource
from bot.home import HomePublisher
from bot.intake import IntakeWorker, modal_updater
from bot.outbox import OutboxDispatcher, dispatcher_client
from bot.policy import LoadedPolicy
from bot.workflow import MODAL_UPDATE, Workflow
from storage.db import make_engine, make_session_factory
from storage.models import utcnow


@dataclass
class Services:
    engine: Engine
    db: sessionmaker[Session]
    policy: LoadedPolicy
    client: WebClient
    workflow: Workflow
    dispatcher: OutboxDispatcher
    home: HomePublisher
    intake: IntakeWorker

    def close(self) -> None:
        self.intake.stop()  # first: what it records queues outbox rows
        self.dispatcher.stop()
        self.engine.dispose()


def build_services(
    database_url: str,
    policy: LoadedPolicy,
    client: WebClient,
    clock: Callable[[], datetime] = utcnow,
    outbox_poll_seconds: float = 1.0,
    approver_cache_seconds: float = 60.0,
    outbox_lease_seconds: float = 30.0,
    outbox_landing_wait_seconds: float = 75.0,
    records_all_receipts: bool = False,
) -> Services:
    engine = make_engine(database_url)
    db = make_session_factory(engine)
    dispatcher = OutboxDispatcher(
        db,
        # Each Slack call must end well within the lease, or another dispatcher could take the row.
        dispatcher_client(client, timeout=min(10.0, outbox_lease_seconds / 4)),
        policy.policy,
        clock=clock,
        poll_seconds=outbox_poll_seconds,
        lease_seconds=outbox_lease_seconds,
        landing_wait_seconds=outbox_landing_wait_seconds,
    )
    approvers = ApproverDirectory(SlackGroupSource(client), ttl_seconds=approver_cache_seconds)
    workflow = Workflow(db, policy, approvers, clock=clock, on_outbox=dispatcher.wake)
    home = HomePublisher(workflow, dispatcher.client)  # no blind retries, like every outbox send
    dispatcher.senders["publish_home"] = home.publish_for
    dispatcher.senders[MODAL_UPDATE] = modal_updater(dispatcher.client)
    intake = (
        # A worker process records what the answering processes stored, polling as often as the outbox.
        IntakeWorker(workflow, clock=clock, poll_seconds=outbox_poll_seconds, records_all=True)
        if records_all_receipts
        else IntakeWorker(workflow, clock=clock)
    )
    return Services(engine, db, policy, client, workflow, dispatcher, home, intake)

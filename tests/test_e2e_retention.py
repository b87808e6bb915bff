"""End to end: a retention purge rewrites the request's Slack messages through the running bot's outbox.

The real bot runs as an HTTP server against the Slack stand-in; the purge runs as the scheduler would call
it, against the same database.
"""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select

from bot import retention, views
from bot.audit import verify_chain
from bot.policy import parse_policy
from storage.db import make_engine, make_session_factory, transaction
from storage.models import FrRequest
from tests.conftest import TEST_POLICY
from tests.e2e_support import decide, open_form, reference_of, reviewer_message, submit_form
from tests.slackstub import SlackDriver, SlackStub


def test_purge_replaces_the_details_in_slack(slack: SlackDriver, stub: SlackStub, backend_url: str) -> None:
    # One stand-in serves both backends in this module: a different officer each, so their DMs are apart.
    officer = "UOFFICER9S" if backend_url.startswith("sqlite") else "UOFFICER9P"
    view = open_form(slack, stub, officer)
    _, body = submit_form(slack, view, officer)
    reference = reference_of(body)
    message = reviewer_message(stub, "C0SUPER", reference)
    assert "Identify the suspect" in json.dumps(message["blocks"])
    decide(
        slack,
        stub,
        "USUP2",
        views.REJECT_ACTION,
        message,
        rationale="CCTV enquiries with neighbours are not finished.",
        reason_code="alternatives_not_exhausted",
    )
    stub.wait_for(lambda c: c.method == "chat.update" and c.ok and c.args["channel"] == "C0SUPER")

    engine = make_engine(backend_url)
    try:
        db = make_session_factory(engine)
        policy = parse_policy(TEST_POLICY).policy
        # A year passes: the decision is moved back rather than the clock on, so the outbox row the purge
        # queues is due now for the running bot too.
        with transaction(db) as session:
            request = session.scalars(select(FrRequest).where(FrRequest.reference == reference)).one()
            request.decided_at = request.decided_at - timedelta(days=366)
        stub.clear()
        purged = retention.purge(db, policy)
        assert reference in [p.reference for p in purged]
        update = stub.wait_for(
            lambda c: (
                c.method == "chat.update"
                and c.ok
                and c.args["ts"] == message["ts"]
                and "retention policy" in json.dumps(c.args.get("blocks"))
            )
        )
        current = json.dumps(stub.message(update.args["channel"], update.args["ts"])["blocks"])
        assert "Details removed under the retention policy" in current
        assert "Identify the suspect" not in current
        assert "CCTV enquiries with neighbours" not in current
        # The officer's DMs (submitted, rejected with its rationale) are edited down to the notice too.
        dm_channel = "D" + officer
        dms = [ts for (channel, ts) in stub.messages if channel == dm_channel]
        assert len(dms) == 2
        for ts in dms:
            stub.wait_for(
                lambda c, ts=ts: (
                    c.method == "chat.update"
                    and c.ok
                    and c.args["ts"] == ts
                    and c.args["channel"] == dm_channel
                )
            )
            edited = json.dumps(stub.message(dm_channel, ts))
            assert "retention policy" in edited and "CCTV enquiries with neighbours" not in edited
        assert verify_chain(engine).ok
    finally:
        engine.dispose()

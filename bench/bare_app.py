"""Bare Bolt apps that only acknowledge, served exactly like the bot (waitress, same WSGI wrapper).

`python -m bench.bare_app PORT` answers in the thread that received the request, as the bot does
(`process_before_response=True`): the floor the ack-latency benchmark compares the bot against.
`python -m bench.bare_app PORT --bolt-defaults` keeps Bolt's default (the listener runs on another thread
and the answer leaves at the receiving thread's next 10 ms poll), as a bare Bolt app is usually written.
`python -m bench.bare_app PORT --store` is the floor that also keeps what it is sent: it stores each
submitted form, a request's or a decision's (one insert, committed), in the bot's database
(FRBOT_DATABASE_URL, the bot's engine settings, written as the bot writes its form) before it answers: the
least any app can do whose answer tells an officer the request is saved (the bot's answer says "being
saved" and stores just after) or a reviewer that the decision is recorded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App
from slack_sdk import WebClient
from sqlalchemy import JSON, Column, MetaData, Table, insert

from bot.server import serve_http
from storage.db import make_engine, make_session_factory, transaction
from storage.models import BigId

BARE_FORMS = Table(
    "bench_bare_forms",
    MetaData(),
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("state", JSON, nullable=False),
)


def storing_listener(url: str) -> Callable[[Ack, dict[str, Any]], None]:
    engine = make_engine(url)
    BARE_FORMS.metadata.create_all(engine)
    sessions = make_session_factory(engine)
    statement = insert(BARE_FORMS).returning(BARE_FORMS.c.id)

    def stored(ack: Ack, view: dict[str, Any]) -> None:
        # As the bot stores its form: one statement, on PostgreSQL without BEGIN and COMMIT.
        with transaction(sessions, single_statement=True) as session:
            session.execute(statement, {"state": view["state"]}).scalar_one()
        ack()

    return stored


def main() -> None:
    flags = sys.argv[2:]
    client = WebClient(token=os.environ["FRBOT_SLACK_BOT_TOKEN"], base_url=os.environ["FRBOT_SLACK_API_URL"])
    app = App(
        client=client,
        signing_secret=os.environ["FRBOT_SLACK_SIGNING_SECRET"],
        token_verification_enabled=False,
        process_before_response="--bolt-defaults" not in flags,
    )
    app.command("/fr-request")(lambda ack: ack())
    # The request form, the reviewer's decision form and comment form (bench/ack_latency.py's kinds).
    for callback_id in ("fr_request_submit", "fr_decision_submit", "fr_comment_submit"):
        if "--store" in flags:
            app.view(callback_id)(storing_listener(os.environ["FRBOT_DATABASE_URL"]))
        else:
            app.view(callback_id)(lambda ack: ack())
    app.action("review_approve")(lambda ack: ack())
    serve_http(app, "127.0.0.1", int(sys.argv[1]), int(os.environ.get("FRBOT_HTTP_THREADS", "16")))


if __name__ == "__main__":
    main()

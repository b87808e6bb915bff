"""A bare Bolt app that only acknowledges, served exactly like the bot (waitress, same WSGI wrapper).

`python -m bench.bare_app PORT` answers in the thread that received the request, as the bot does
(`process_before_response=True`): the floor the ack-latency benchmark compares the bot against.
`python -m bench.bare_app PORT --bolt-defaults` keeps Bolt's default (the listener runs on another thread
and the answer leaves at the receiving thread's next 10 ms poll), as a bare Bolt app is usually written.
"""

from __future__ import annotations

import os
import sys

from slack_bolt import App
from slack_sdk import WebClient

from bot.server import serve_http


def main() -> None:
    client = WebClient(token=os.environ["FRBOT_SLACK_BOT_TOKEN"], base_url=os.environ["FRBOT_SLACK_API_URL"])
    app = App(
        client=client,
        signing_secret=os.environ["FRBOT_SLACK_SIGNING_SECRET"],
        token_verification_enabled=False,
        process_before_response="--bolt-defaults" not in sys.argv[2:],
    )
    app.command("/fr-request")(lambda ack: ack())
    app.view("fr_request_submit")(lambda ack: ack())
    app.action("review_approve")(lambda ack: ack())
    serve_http(app, "127.0.0.1", int(sys.argv[1]), int(os.environ.get("FRBOT_HTTP_THREADS", "16")))


if __name__ == "__main__":
    main()

"""The Bolt app: Slack-facing wiring only. Listeners live in `handlers/`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from slack_bolt import App, BoltResponse
from slack_bolt.middleware.authorization import SingleTeamAuthorization
from slack_sdk.web import SlackResponse

from bot import guard
from bot.services import Services
from handlers import register_all
from handlers.after_answer import AfterAnswer, HandOver

log = logging.getLogger(__name__)


def create_app(
    services: Services,
    signing_secret: str | None,
    allowed_team_id: str | None = None,
    allowed_app_id: str | None = None,
    verify_token: bool = True,
    listener_executor: Executor | None = None,
    hand_over: HandOver | None = None,
    identity: dict[str, Any] | None = None,
) -> App:
    """`identity`: the bot's auth.test answer, when another process has already asked Slack for it (the
    follow-up process, bot/follow_up.py): Bolt takes it instead of asking Slack, now or at a request."""
    # Bolt's own default pool of 5 would queue work behind slow Slack calls under load.
    executor = listener_executor or ThreadPoolExecutor(max_workers=32, thread_name_prefix="listener")
    app = App(
        client=services.client,
        signing_secret=signing_secret,
        token_verification_enabled=verify_token and identity is None,
        # The thread that received the request runs the listener and answers when it returns; listeners
        # ack and hand what follows to AfterAnswer (handlers/after_answer.py says why).
        process_before_response=True,
        # Slack reports where the bot's own posts landed (message_metadata_posted, handlers/events.py):
        # Bolt would drop those as "self events".
        ignoring_self_events_enabled=False,
        # Bolt's default reply to an unmatched request is a bare 404, which is what Slack needs.
        raise_error_for_unhandled_request=False,
        listener_executor=executor,
    )

    @app.middleware
    def only_our_workspace(
        body: dict[str, Any], next: Callable[[], BoltResponse], logger: logging.Logger
    ) -> Any:
        """Refuse payloads signed with our secret but addressed to another workspace or app."""
        team = body.get("team_id") or (body.get("team") or {}).get("id")
        app_id = body.get("api_app_id")
        if (allowed_team_id and team and team != allowed_team_id) or (
            allowed_app_id and app_id and app_id != allowed_app_id
        ):
            logger.warning("refused a request for workspace %s / app %s", team, app_id)
            return BoltResponse(status=403, body="")
        return next()

    if identity is not None:
        _take_identity(app, identity)
    app.middleware(guard.EventDeduplicator().middleware)
    app.error(guard.quiet_errors)
    # The same pool: shutdown waits for work still running after its answer (bot/cli.py).
    after_answer = AfterAnswer(executor, hand_over)

    if hand_over is not None:

        @app.middleware
        def remember_the_payload(body: dict[str, Any], next: Callable[[], BoltResponse]) -> Any:
            # The listener then runs on this thread (process_before_response): what it hands to
            # AfterAnswer is handed over to the follow-up process as this payload (bot/follow_up.py).
            after_answer.remember(body)
            return next()

    register_all(app, services, after_answer)
    return app


def _take_identity(app: App, identity: dict[str, Any]) -> None:
    # Without it Bolt would call auth.test at the first request, and while Slack is down every request
    # would fail before its listener, the ones that only store a form included.
    answer = SlackResponse(
        client=app.client,
        http_verb="POST",
        api_url=f"{app.client.base_url}auth.test",
        req_args={},
        data=identity,
        headers={},
        status_code=200,
    )
    for middleware in app._middleware_list:  # Bolt has no public way to hand it the answer
        if isinstance(middleware, SingleTeamAuthorization):
            middleware.auth_test_result = answer

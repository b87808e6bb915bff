"""The Bolt app: Slack-facing wiring only. Listeners live in `handlers/`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.middleware import Middleware
from slack_bolt.middleware.authorization import SingleTeamAuthorization
from slack_sdk.web import SlackResponse

from bot import guard
from bot.services import Services
from handlers import register_all
from handlers.after_answer import AfterAnswer, HandOver, ReceivedText

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

    def only_our_workspace(body: dict[str, Any], next: Callable[[], BoltResponse]) -> BoltResponse | None:
        """Refuse payloads signed with our secret but addressed to another workspace or app."""
        team = body.get("team_id") or (body.get("team") or {}).get("id")
        app_id = body.get("api_app_id")
        if (allowed_team_id and team and team != allowed_team_id) or (
            allowed_app_id and app_id and app_id != allowed_app_id
        ):
            log.warning("refused a request for workspace %s / app %s", team, app_id)
            return BoltResponse(status=403, body="")
        return next()

    app.middleware(PlainMiddleware(only_our_workspace))
    if identity is not None:
        _take_identity(app, identity)
    app.middleware(guard.EventDeduplicator())
    app.error(guard.quiet_errors)
    # The same pool: shutdown waits for work still running after its answer (bot/cli.py).
    after_answer = AfterAnswer(executor, hand_over)

    if hand_over is not None:
        app.middleware(RememberTheRequest(after_answer))

    register_all(app, services, after_answer)
    _most_frequent_first(app)
    return app


# The listeners of the requests Slack sends most, in that order: Slack's reports of where posts landed
# (one per post), officers' submissions and commands, reviewers' clicks, App Home.
MOST_FREQUENT_FIRST = ("post_landed", "request_submitted", "fr_request", "review_button", "home_opened")


def _most_frequent_first(app: App) -> None:
    """Bolt asks each listener in turn whether a request is its own, and each question costs about 10 µs
    (it builds every argument a listener could take): an officer's submission was the fifteenth listener
    asked. The most frequent requests are now matched first (bench/NOTES.md, item 35). Nothing else
    changes with the order, as no request matches two listeners (tests/test_app.py). Bolt has no public
    way to order its listeners."""
    rank = {name: position for position, name in enumerate(MOST_FREQUENT_FIRST)}

    def position(listener: Any) -> int:
        function = getattr(listener, "ack_function", None)
        return rank.get(getattr(function, "__name__", ""), len(rank))

    app._listeners.sort(key=position)  # stable: the others keep their order


class PlainMiddleware(Middleware):
    """A middleware function of (payload, next) that Bolt calls as it is. Given to `app.middleware` as a
    plain function, it would be handed every argument a middleware could take, built anew for each
    request (bench/NOTES.md, item 35)."""

    def __init__(
        self, function: Callable[[dict[str, Any], Callable[[], BoltResponse]], BoltResponse | None]
    ) -> None:
        self.function = function

    def process(
        self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]
    ) -> BoltResponse | None:
        return self.function(req.body, next)


class RememberTheRequest(Middleware):
    """Tells AfterAnswer the request about to reach its listener, which then runs on this thread
    (process_before_response): what the listener hands to AfterAnswer is handed over to the follow-up
    process as this request (bot/follow_up.py), as its body arrived when bot/server.py kept it."""

    def __init__(self, after_answer: AfterAnswer) -> None:
        self.after_answer = after_answer

    def process(
        self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]
    ) -> BoltResponse | None:
        received = ReceivedText(req.content_type or "", req.raw_body) if req.raw_body else None
        self.after_answer.remember(req.body, received)
        return next()


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

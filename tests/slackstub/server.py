"""A local stand-in for the Slack Web API: a real HTTP server the bot talks to through slack_sdk."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from .specs import (
    JSON_ENCODED_ARGS,
    MESSAGE_BLOCK_LIMIT,
    ArgumentError,
    Specs,
    load_specs,
    specs_dir_from_env,
)

if TYPE_CHECKING:
    from slack_sdk import WebClient

Json = dict[str, Any]
MessageKey = tuple[str, str]  # (channel id, ts)
DROP = -1  # fail_next(status=DROP): close the connection without answering, like a broken proxy


class _FromEnv:
    def __repr__(self) -> str:
        return "<from $FRBOT_SLACK_SPECS>"


FROM_ENV: Any = _FromEnv()


# --- records ------------------------------------------------------------------------------------------


@dataclass
class RecordedCall:
    """One request the stub answered. `args` are the parsed arguments (token removed, JSON-encoded
    arguments decoded, booleans/integers coerced when the specs are loaded)."""

    method: str
    args: Json
    response: Json
    status: int = 200
    http_method: str = "POST"
    content_type: str = ""
    injected: bool = False  # answered by fail_next(), not by the method's behaviour
    at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.response.get("ok") is True

    @property
    def error(self) -> str | None:
        return None if self.ok else self.response.get("error")

    def describe(self) -> str:
        outcome = "ok" if self.ok else f"error={self.error!r}"
        if self.status != 200:
            outcome += f" (HTTP {self.status})"
        args = json.dumps(self.args, default=str)
        return f"{self.method}({args if len(args) <= 160 else args[:157] + '...'}) -> {outcome}"


@dataclass(frozen=True)
class Violation:
    """Something the bot sent that Slack would reject for its shape (not because of the workspace state)."""

    method: str
    error: str
    messages: tuple[str, ...]
    args: Json

    def __str__(self) -> str:
        details = "; ".join(self.messages)
        return f"{self.method}: {self.error}" + (f" — {details}" if details else "")


@dataclass
class Fault:
    """A pending injected failure; `remaining` counts down as calls consume it."""

    method: str  # "*" matches every method
    error: str
    status: int
    retry_after: int | None
    remaining: int

    def response(self) -> tuple[int, dict[str, str], Json]:
        headers = {}
        if self.status == 429 and self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return self.status, headers, {"ok": False, "error": self.error}


@dataclass
class OpenView:
    """A modal (or home tab) view as Slack currently holds it; `versions` is every state it has had."""

    view: Json
    user_id: str
    versions: list[Json] = field(default_factory=list)
    closed: bool = False

    @property
    def id(self) -> str:
        return self.view["id"]


@dataclass
class _Trigger:
    user_id: str
    issued_at: float
    used: bool = False


class CallLog(list[RecordedCall]):
    """The list of recorded calls. Server threads only append (under `cond`, which also wakes wait_for);
    list reads are atomic in CPython, and iterating a snapshot() avoids seeing a call arrive mid-loop."""

    def __init__(self) -> None:
        super().__init__()
        self.cond = threading.Condition()

    def append(self, call: RecordedCall) -> None:
        with self.cond:
            super().append(call)
            self.cond.notify_all()

    def clear(self) -> None:
        with self.cond:
            super().clear()

    def snapshot(self) -> list[RecordedCall]:
        with self.cond:
            return list(self)


class SlackError(Exception):
    """A Slack-level error answer; `violation` marks errors caused by what the bot sent, not by the state."""

    def __init__(
        self, error: str, messages: Sequence[str] = (), *, violation: bool = False, status: int = 200
    ) -> None:
        super().__init__(error)
        self.error = error
        self.messages = list(messages)
        self.violation = violation
        self.status = status

    def response(self) -> Json:
        body: Json = {"ok": False, "error": self.error}
        if self.messages:
            body["response_metadata"] = {"messages": self.messages}
        if self.error == "invalid_blocks":
            body["errors"] = self.messages  # Slack repeats block errors at top level.
        return body


def _violation(error: str, *messages: str) -> SlackError:
    return SlackError(error, messages, violation=True)


def default_user(user_id: str, team_id: str) -> Json:
    """users.info-shaped user generated from its id, so any id the tests invent resolves to someone."""
    name = f"user_{user_id.lower()}"
    real_name = f"User {user_id}"
    return {
        "id": user_id,
        "team_id": team_id,
        "name": name,
        "deleted": False,
        "color": "9f69e7",
        "real_name": real_name,
        "tz": "Europe/London",
        "tz_label": "Greenwich Mean Time",
        "tz_offset": 0,
        "profile": {
            "real_name": real_name,
            "real_name_normalized": real_name,
            "display_name": name,
            "display_name_normalized": name,
            "email": f"{name}@example.com",
            "status_text": "",
            "status_emoji": "",
            "team": team_id,
        },
        "is_admin": False,
        "is_owner": False,
        "is_primary_owner": False,
        "is_restricted": False,
        "is_ultra_restricted": False,
        "is_bot": False,
        "is_app_user": False,
        "updated": 1700000000,
        "has_2fa": False,
    }


def _is_user_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) > 1 and value[0] in "UW" and value[1:].isalnum()


def _is_conversation_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) > 1 and value[0] in "CGD" and value[1:].isalnum()


def _public(message: Json) -> Json:
    """Stored messages carry `channel` for the tests' convenience; Slack's message objects do not."""
    return {k: v for k, v in message.items() if k != "channel"}


# --- the stub -----------------------------------------------------------------------------------------


class SlackStub:
    """Local Slack Web API. Use as a context manager or call start()/stop(); point slack_sdk at `base_url`.

    State the tests may read or set directly: `messages`, `ephemeral_messages`, `views`, `home_views`,
    `users`, `channels`, `channel_members`, `usergroups`, `unknown_channels`, `not_in_channel`, `latency`.
    Everything the bot sent that Slack would reject for its shape lands in `violations`.
    """

    def __init__(
        self,
        specs_dir: Path | None = FROM_ENV,
        *,
        bot_token: str = "xoxb-test-token",
        team_id: str = "T0TEST",
        team_domain: str = "example",
        bot_user_id: str = "UBOT",
        bot_id: str = "B0TEST",
        app_id: str = "A0TEST",
        trigger_ttl: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        ts_start: int = 1_700_000_000,
    ) -> None:
        if specs_dir is FROM_ENV:
            specs_dir = specs_dir_from_env()
        self.specs: Specs | None = load_specs(specs_dir) if specs_dir is not None else None
        self.bot_token = bot_token
        self.team_id = team_id
        self.team_domain = team_domain
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.trigger_ttl = trigger_ttl
        self.clock = clock  # injectable so trigger expiry can be tested without sleeping
        self.latency: float = 0.0

        self.calls = CallLog()
        self.violations: list[Violation] = []
        self.messages: dict[MessageKey, Json] = {}
        self.message_versions: dict[MessageKey, list[Json]] = {}
        self.ephemeral_messages: list[Json] = []
        self.views: dict[str, OpenView] = {}
        self.home_views: dict[str, Json] = {}
        self.users: dict[str, Json] = {}  # user id -> fields overriding default_user()
        self.channels: dict[str, Json] = {}  # channel id -> fields overriding the generated channel
        self.channel_members: dict[str, list[str]] = {}
        self.usergroups: dict[str, list[str]] = {}
        self.usergroup_info: dict[str, Json] = {}  # group id -> fields overriding the generated group
        self.unknown_channels: set[str] = set()
        self.not_in_channel: set[str] = set()
        # Optional Slack-like pace for chat.postMessage: (seconds per message, burst) per channel; faster
        # posts get HTTP 429 with Retry-After, as Slack answers them. None: no limit.
        self.channel_rate_limit: tuple[float, int] | None = None
        # Events API: with an `event_sink` (e.g. SlackDriver.deliver, which returns True when the app
        # answered 200), posts whose metadata type is in `metadata_subscriptions` are reported as Slack
        # does, by a message_metadata_posted event, sent from another thread; an undelivered event is sent
        # again after each of `event_retry_delays` (Slack: at once, after one minute, after five minutes).
        self.event_sink: Callable[[Json, str, int], bool] | None = None
        self.metadata_subscriptions: set[str] = set()
        self.event_retry_delays: tuple[float, ...] = (0.0, 60.0, 300.0)
        self.event_deliveries: list[tuple[str, int, bool]] = []  # (event_id, retry number, delivered)
        self.received: Counter[str] = Counter()  # API calls per method, counted as they arrive
        self._channel_buckets: dict[str, tuple[float, float]] = {}  # channel -> (tokens, updated)

        self._lock = threading.RLock()
        self._rng = random.Random(0x51AC)  # deterministic ids make failures reproducible
        self._ts_start = ts_start
        self._ts_counter = 0
        self._triggers: dict[str, _Trigger] = {}
        self._faults: list[Fault] = []
        self._modal_stacks: dict[str, list[str]] = {}  # user id -> open view ids, root first
        self._response_urls: dict[str, Json] = {}
        self._opened_dms: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._handlers: dict[str, Callable[[Json], Json]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "conversations.open": self._conversations_open,
            "conversations.info": self._conversations_info,
            "conversations.members": self._conversations_members,
            "users.info": self._users_info,
            "usergroups.list": self._usergroups_list,
            "usergroups.users.list": self._usergroups_users_list,
            "views.open": self._views_open,
            "views.push": self._views_push,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
        }

    # --- lifecycle ---

    def start(self) -> SlackStub:
        if self._server is not None:
            return self
        handler = type("Handler", (_RequestHandler,), {"stub": self})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="slackstub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SlackStub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        if self._server is None:
            raise RuntimeError("SlackStub is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def base_url(self) -> str:
        """Web API base URL for slack_sdk.WebClient(base_url=...); ends with a slash as slack_sdk expects."""
        return f"{self.root_url}api/"

    def client(self, **kwargs: Any) -> WebClient:
        from slack_sdk import WebClient

        kwargs.setdefault("token", self.bot_token)
        return WebClient(base_url=self.base_url, **kwargs)

    # --- inspection helpers ---

    def calls_to(self, method: str) -> list[RecordedCall]:
        return [c for c in self.calls.snapshot() if c.method == method]

    def clear(self) -> None:
        """Forget recorded calls and violations (the workspace state stays)."""
        self.calls.clear()
        with self._lock:
            self.violations.clear()

    def wait_for(
        self, predicate_or_method: str | Callable[[RecordedCall], bool], timeout: float = 5.0
    ) -> RecordedCall:
        """Return the first recorded call (past or future) that matches, waiting up to `timeout` seconds."""
        if isinstance(predicate_or_method, str):
            wanted = predicate_or_method

            def match(call: RecordedCall) -> bool:
                return call.method == wanted

            what = f"a call to {wanted}"
        else:
            match = predicate_or_method
            what = f"a call matching {getattr(match, '__name__', repr(match))}"
        deadline = time.monotonic() + timeout
        with self.calls.cond:
            while True:
                for call in self.calls.snapshot():
                    if match(call):
                        return call
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.calls.cond.wait(remaining)
        seen = "\n  ".join(c.describe() for c in self.calls.snapshot()) or "(none)"
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; calls seen:\n  {seen}")

    def assert_no_violations(self) -> None:
        with self._lock:
            found = list(self.violations)
        if found:
            listing = "\n  ".join(str(v) for v in found)
            raise AssertionError(f"the bot sent {len(found)} request(s) Slack would reject:\n  {listing}")

    def message(self, channel: str, ts: str) -> Json:
        """Current state of a stored message (KeyError if there is none)."""
        return self.messages[(channel, ts)]

    def user_profile(self, user_id: str) -> Json:
        user = default_user(user_id, self.team_id)
        if user_id == self.bot_user_id:
            user.update(name="frbot", real_name="FR Request Bot", is_bot=True, is_app_user=False)
        user.update(self.users.get(user_id, {}))
        return user

    # --- seeding & fault injection ---

    def add_message(
        self,
        channel: str,
        text: str = "",
        *,
        user: str = "U0USER",
        blocks: list[Json] | None = None,
        thread_ts: str | None = None,
    ) -> str:
        """Put a message into the workspace (e.g. a user's message the bot will act on); returns its ts."""
        with self._lock:
            ts = self._next_ts()
            message: Json = {"type": "message", "user": user, "text": text, "ts": ts, "team": self.team_id}
            if blocks:
                message["blocks"] = self._with_block_ids(blocks)
            if thread_ts:
                message["thread_ts"] = thread_ts
            self._store_message(channel, message)
            return ts

    def add_usergroup(
        self, group_id: str, users: list[str], *, handle: str | None = None, name: str | None = None
    ) -> None:
        with self._lock:
            self.usergroups[group_id] = list(users)
            info = self.usergroup_info.setdefault(group_id, {})
            if handle is not None:
                info["handle"] = handle
            if name is not None:
                info["name"] = name

    def fail_next(
        self,
        method: str,
        error: str | None = None,
        status: int | None = None,
        retry_after: int | None = 1,
        count: int = 1,
    ) -> Fault:
        """Make the next `count` calls to `method` fail before their behaviour runs (and unvalidated).

        `method` is a Web API method, "*" for any of them, or "response_url" for posts to response URLs.
        - fail_next(m) / fail_next(m, retry_after=0): HTTP 429 with Retry-After and error "ratelimited";
        - fail_next(m, status=503): HTTP 503 with error "internal_error" (any status >= 500 works);
        - fail_next(m, error="channel_not_found"): HTTP 200, {"ok": false, "error": ...};
        - fail_next(m, status=DROP): the connection is closed without an answer (nothing is done).
        Returns the Fault; its `remaining` shows how many calls it still has to hit.
        """
        if status == DROP:
            fault = Fault(method=method, error="dropped", status=DROP, retry_after=None, remaining=count)
            with self._lock:
                self._faults.append(fault)
            return fault
        if status is None:
            status = 429 if error in (None, "ratelimited") else 200
        if error is None:
            error = "ratelimited" if status == 429 else "internal_error"
        if status != 200 and status != 429 and status < 500:
            raise ValueError("status must be 200 (Slack-level error), 429 or >= 500")
        fault = Fault(method=method, error=error, status=status, retry_after=retry_after, remaining=count)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> list[Fault]:
        with self._lock:
            return [f for f in self._faults if f.remaining > 0]

    # --- interactivity support (used by SlackDriver) ---

    def issue_trigger_id(self, user_id: str = "U0USER") -> str:
        """A trigger_id as Slack would put in an interaction payload for `user_id`; valid for trigger_ttl."""
        with self._lock:
            rng = self._rng
            trigger = (
                f"{rng.randrange(10**10, 10**11)}.{rng.randrange(10**9, 10**10)}.{rng.getrandbits(128):032x}"
            )
            self._triggers[trigger] = _Trigger(user_id=user_id, issued_at=self.clock())
            return trigger

    def issue_response_url(
        self,
        kind: str = "commands",
        *,
        channel_id: str | None = None,
        user_id: str | None = None,
        message_ts: str | None = None,
    ) -> str:
        """A response_url served by this stub; posts to it are recorded as calls to "response_url"."""
        with self._lock:
            token = f"{self._rng.getrandbits(96):024x}"
            self._response_urls[token] = {"channel": channel_id, "user": user_id, "message_ts": message_ts}
            return f"{self.root_url}hooks/{kind}/{self.team_id}/{self._rng.randrange(10**12)}/{token}"

    def open_modal_stack(self, user_id: str) -> list[OpenView]:
        with self._lock:
            return [self.views[v] for v in self._modal_stacks.get(user_id, [])]

    def close_view(self, view_id: str, *, whole_stack: bool = False) -> None:
        """What Slack does when a modal is submitted without response_action (or closed by the user)."""
        with self._lock:
            opened = self.views.get(view_id)
            if opened is None:
                return
            stack = self._modal_stacks.get(opened.user_id, [])
            doomed = list(stack) if whole_stack else [view_id]
            for vid in doomed:
                self.views[vid].closed = True
                if vid in stack:
                    stack.remove(vid)

    def apply_view_response(self, view_id: str, status: int, body: Any) -> None:
        """Apply the bot's answer to a view_submission (response_action) the way Slack would."""
        method = "view_submission.response"
        with self._lock:
            opened = self.views.get(view_id)
            if opened is None or status != 200:
                return
            if body in ("", None) or (isinstance(body, dict) and not body.get("response_action")):
                self.close_view(view_id)
                return
            action = body.get("response_action") if isinstance(body, dict) else None
            try:
                if action == "clear":
                    self.close_view(view_id, whole_stack=True)
                elif action == "errors":
                    self._check_response_errors(opened.view, body.get("errors"))
                elif action in ("update", "push"):
                    view = body.get("view")
                    self._check_view(view, "modal")
                    if action == "update":
                        self._replace_view(opened, view)
                    else:
                        self._push_view(opened.user_id, view)
                else:
                    raise _violation("invalid_arguments", f"[ERROR] unknown response_action {action!r}")
            except SlackError as exc:
                if exc.violation:
                    self._record_violation(method, exc, body if isinstance(body, dict) else {"body": body})

    # --- HTTP entry points (called from the server threads) ---

    def handle_api(
        self, method: str, http_method: str, headers: dict[str, str], query: str, body: bytes
    ) -> tuple[int, dict[str, str], Json]:
        with self._lock:
            self.received[method] += 1  # counted on arrival, before `latency`: the call is under way
        if self.latency:
            time.sleep(self.latency)
        args, kind, parse_error = _parse_args(headers.get("content-type", ""), query, body)
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else args.pop("token", None)
        args.pop("token", None)
        call = RecordedCall(method=method, args=args, response={}, http_method=http_method, content_type=kind)

        fault = self._take_fault(method)
        if fault is not None:
            status, extra_headers, response = fault.response()
            call.response, call.status, call.injected = response, status, True
            self.calls.append(call)
            return status, extra_headers, response

        retry_after = self._rate_limited(method, args)
        if retry_after is not None:
            call.response, call.status = {"ok": False, "error": "ratelimited"}, 429
            self.calls.append(call)
            return 429, {"Retry-After": str(retry_after)}, call.response

        try:
            with self._lock:
                call.args = args = self._prepare(method, args, token, kind, parse_error)
                response = {"ok": True, **self._handlers[method](args)}
        except SlackError as exc:
            response = exc.response()
            call.status = exc.status
            if exc.violation:
                self._record_violation(method, exc, args)
        except Exception as exc:  # a stub bug must fail the test, not hang the bot
            response = {"ok": False, "error": "internal_error"}
            call.status = 500
            self._record_violation(
                method, _violation("stub_internal_error", f"{type(exc).__name__}: {exc}"), args
            )
        call.response = response
        self.calls.append(call)
        return call.status, {}, response

    def handle_response_url(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Json]:
        if self.latency:
            time.sleep(self.latency)
        args, kind, parse_error = _parse_args(headers.get("content-type", ""), "", body)
        if "payload" in args and isinstance(args["payload"], str):
            args = _loads_or_none(args["payload"]) or {}
        args = {k: v for k, v in args.items() if k != "token"}
        call = RecordedCall(method="response_url", args=args, response={}, content_type=kind)
        fault = self._take_fault("response_url")
        if fault is not None:
            call.status, _, call.response = fault.response()
            call.injected = True
            self.calls.append(call)
            return call.status, call.response
        try:
            with self._lock:
                if parse_error:
                    raise _violation("invalid_payload", parse_error)
                context = self._response_urls.get(path.rstrip("/").rsplit("/", 1)[-1])
                if context is None:
                    raise SlackError("no_service", status=404)
                self._respond(context, args)
            response: Json = {"ok": True}
        except SlackError as exc:
            response, call.status = exc.response(), (exc.status if exc.status != 200 else 400)
            if exc.violation:
                self._record_violation("response_url", exc, args)
        call.response = response
        self.calls.append(call)
        return call.status, response

    # --- request pipeline ---

    def _prepare(
        self, method: str, args: Json, token: str | None, kind: str, parse_error: str | None
    ) -> Json:
        spec = self.specs.method(method) if self.specs else None
        if self.specs is not None and spec is None:
            raise _violation("unknown_method", f"[ERROR] {method} is not in the Slack specs the bot may call")
        if method not in self._handlers:
            raise _violation("unknown_method", f"[ERROR] the stub does not implement {method}")
        if parse_error:
            raise _violation(
                "invalid_json" if kind == "json" else "invalid_form_data", f"[ERROR] {parse_error}"
            )
        if not token:
            raise SlackError("not_authed")  # what Slack answers when no token is sent at all
        if token != self.bot_token:
            raise SlackError("invalid_auth")
        if spec is not None and kind == "json" and not spec.json_input_supported:
            # Slack ignores JSON bodies for these methods, so every argument would silently go missing.
            raise _violation(
                "invalid_arguments",
                f"[ERROR] {method} does not accept JSON bodies; send form or query arguments",
            )
        if isinstance(args.get("blocks"), str):
            parsed = _loads_or_none(args["blocks"])
            if not isinstance(parsed, list):
                raise _violation("invalid_blocks_format", "[ERROR] `blocks` must be a JSON-encoded array")
            args["blocks"] = parsed
        if spec is not None:
            try:
                return spec.coerce_args(args)
            except ArgumentError as exc:
                raise _violation("invalid_arguments", *exc.messages) from None
        # No specs: still decode JSON-encoded arguments so behaviour does not depend on the transport.
        return {
            k: (_loads_or_none(v) if k in JSON_ENCODED_ARGS and isinstance(v, str) else v)
            for k, v in args.items()
        }

    def _rate_limited(self, method: str, args: Json) -> int | None:
        """Retry-After seconds when this post would exceed `channel_rate_limit`, else None (and count it)."""
        if self.channel_rate_limit is None or method != "chat.postMessage":
            return None
        interval, burst = self.channel_rate_limit
        channel = str(args.get("channel", ""))
        channel = "D" + channel if _is_user_id(channel) else channel
        now = time.monotonic()
        with self._lock:
            tokens, updated = self._channel_buckets.get(channel, (float(burst), now))
            tokens = min(float(burst), tokens + (now - updated) / interval)
            if tokens < 1.0:
                self._channel_buckets[channel] = (tokens, now)
                return max(1, int(-(-((1.0 - tokens) * interval) // 1)))
            self._channel_buckets[channel] = (tokens - 1.0, now)
            return None

    def _take_fault(self, method: str) -> Fault | None:
        # "*" means any Web API method; response_url posts are only hit when named explicitly.
        accepted = (method,) if method == "response_url" else (method, "*")
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.method in accepted:
                    fault.remaining -= 1
                    return fault
        return None

    def _record_violation(self, method: str, exc: SlackError, args: Json) -> None:
        self.record_violation(method, exc.error, *exc.messages, args=args)

    def record_violation(self, source: str, error: str, *messages: str, args: Json | None = None) -> None:
        """Add a violation found outside the Web API (e.g. by SlackDriver: a late acknowledgement)."""
        with self._lock:
            self.violations.append(Violation(source, error, messages, copy.deepcopy(args or {})))

    # --- shared behaviour ---

    def _next_ts(self) -> str:
        self._ts_counter += 100
        n = self._ts_counter
        return f"{self._ts_start + n // 1_000_000}.{n % 1_000_000:06d}"

    def _new_id(self, prefix: str, length: int = 10) -> str:
        alphabet = string.ascii_uppercase + string.digits
        return prefix + "".join(self._rng.choice(alphabet) for _ in range(length))

    def _with_block_ids(self, blocks: list[Json]) -> list[Json]:
        # Slack fills in a block_id for every block that has none, and interaction payloads carry it.
        out = copy.deepcopy(blocks)
        for block in out:
            if isinstance(block, dict) and "block_id" not in block:
                block["block_id"] = "".join(
                    self._rng.choice(string.ascii_letters + string.digits) for _ in range(5)
                )
        return out

    def _check_blocks(self, blocks: Any, prefix: str = "/blocks") -> list[Json] | None:
        """Validate message blocks; None/[] mean "no blocks" (chat.update uses [] to remove them)."""
        if blocks is None or blocks == []:
            return None
        if not isinstance(blocks, list):
            raise _violation("invalid_blocks_format", "[ERROR] `blocks` must be an array")
        if self.specs is not None:
            errors = self.specs.block_kit.message_block_errors(blocks, prefix)
        elif len(blocks) > MESSAGE_BLOCK_LIMIT:
            errors = [f"[ERROR] no more than {MESSAGE_BLOCK_LIMIT} items allowed [json-pointer:{prefix}]"]
        else:
            errors = []
        if errors:
            raise _violation("invalid_blocks", *errors)
        return blocks

    def _check_view(self, view: Any, surface: str) -> Json:
        if not isinstance(view, dict):
            raise _violation("invalid_arguments", "[ERROR] `view` must be a JSON object [json-pointer:/view]")
        if self.specs is not None:
            errors = self.specs.block_kit.view_errors(view, surface)
            if errors:
                raise _violation("invalid_arguments", *errors)
        return view

    def _check_message_content(self, args: Json, *, require: bool = True) -> None:
        has_text = bool(args.get("text"))
        has_blocks = bool(args.get("blocks"))
        if args.get("markdown_text") and (has_text or has_blocks):
            raise _violation(
                "markdown_text_conflict", "[ERROR] markdown_text cannot be combined with text/blocks"
            )
        if require and not (has_text or has_blocks or args.get("attachments") or args.get("markdown_text")):
            raise _violation("no_text", "[ERROR] provide text, blocks, attachments or markdown_text")

    def _channel_for_post(self, channel: str) -> str:
        """Resolve chat.postMessage's `channel`: a user id means the DM with that user."""
        if channel in self.unknown_channels:
            raise SlackError("channel_not_found")
        if _is_user_id(channel):
            channel = "D" + channel
        if not _is_conversation_id(channel) or channel in self.unknown_channels:
            raise SlackError("channel_not_found")
        if channel in self.not_in_channel:
            raise SlackError("not_in_channel")
        return channel

    def _known_channel(self, channel: str) -> str:
        if not _is_conversation_id(channel) or channel in self.unknown_channels:
            raise SlackError("channel_not_found")
        return channel

    def _store_message(self, channel: str, message: Json) -> None:
        key = (channel, message["ts"])
        stored = {**message, "channel": channel}
        self.messages[key] = stored
        self.message_versions[key] = [copy.deepcopy(stored)]
        parent_ts = message.get("thread_ts")
        parent = self.messages.get((channel, parent_ts)) if parent_ts else None
        if parent is not None and parent_ts != message["ts"]:
            parent["thread_ts"] = parent_ts
            parent["reply_count"] = parent.get("reply_count", 0) + 1
            parent["latest_reply"] = message["ts"]

    def _bot_message(self, args: Json, ts: str) -> Json:
        message: Json = {
            "user": self.bot_user_id,
            "type": "message",
            "ts": ts,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "text": args.get("text") or "",
            "team": self.team_id,
            "bot_profile": {
                "id": self.bot_id,
                "app_id": self.app_id,
                "name": "frbot",
                "team_id": self.team_id,
            },
        }
        for key in ("attachments", "metadata", "thread_ts"):
            if args.get(key):
                message[key] = copy.deepcopy(args[key])
        if args.get("blocks"):
            message["blocks"] = self._with_block_ids(args["blocks"])
        return message

    def _update_message(self, key: MessageKey, args: Json) -> Json:
        stored = self.messages[key]
        if args.get("text") is not None:
            stored["text"] = args["text"]
        # Slack keeps blocks/attachments/metadata that are not sent and removes them when sent empty.
        for field_name in ("blocks", "attachments", "metadata"):
            if field_name not in args or args[field_name] is None:
                continue
            if args[field_name] in ([], {}):
                stored.pop(field_name, None)
            else:
                new = args[field_name]
                stored[field_name] = (
                    self._with_block_ids(new) if field_name == "blocks" else copy.deepcopy(new)
                )
        stored["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        self.message_versions.setdefault(key, []).append(copy.deepcopy(stored))
        return stored

    # --- views ---

    def _exchange_trigger(self, trigger_id: Any) -> str:
        trigger = self._triggers.get(trigger_id) if isinstance(trigger_id, str) else None
        if trigger is None:
            raise SlackError("invalid_trigger_id")
        if trigger.used:
            raise SlackError("exchanged_trigger_id")
        if self.clock() - trigger.issued_at > self.trigger_ttl:
            raise SlackError("expired_trigger_id")
        trigger.used = True
        return trigger.user_id

    def _new_hash(self) -> str:
        return f"{int(time.time())}.{self._rng.getrandbits(32):08x}"

    def _materialise_view(self, view: Json, view_id: str, root_view_id: str, previous: str | None) -> Json:
        """The view as Slack returns it: the bot's fields over Slack's defaults, plus Slack-owned fields."""
        out: Json = {
            "id": view_id,
            "team_id": self.team_id,
            "type": "modal",
            "blocks": [],
            "private_metadata": "",
            "callback_id": "",
            "title": None,
            "close": None,
            "submit": None,
            "clear_on_close": False,
            "notify_on_close": False,
            "external_id": "",
        }
        out.update(copy.deepcopy(view))
        out["blocks"] = self._with_block_ids(out.get("blocks") or [])
        out.update(
            id=view_id,
            team_id=self.team_id,
            state={"values": {}},
            hash=self._new_hash(),
            previous_view_id=previous,
            root_view_id=root_view_id,
            app_id=self.app_id,
            app_installed_team_id=self.team_id,
            bot_id=self.bot_id,
        )
        return out

    def _check_external_id(self, view: Json, except_id: str | None = None) -> None:
        external_id = view.get("external_id")
        if not external_id:
            return
        for opened in self.views.values():
            if not opened.closed and opened.id != except_id and opened.view.get("external_id") == external_id:
                raise SlackError("duplicate_external_id")

    def _open_view(self, user_id: str, view: Json) -> Json:
        self._check_external_id(view)
        for vid in self._modal_stacks.get(user_id, []):
            self.views[vid].closed = True  # a new views.open replaces whatever modal the user had
        view_id = self._new_id("V")
        stored = self._materialise_view(view, view_id, view_id, None)
        self.views[view_id] = OpenView(view=stored, user_id=user_id, versions=[copy.deepcopy(stored)])
        self._modal_stacks[user_id] = [view_id]
        return stored

    def _push_view(self, user_id: str, view: Json) -> Json:
        stack = self._modal_stacks.get(user_id) or []
        if not stack:
            raise SlackError("not_found")  # nothing to push onto
        if len(stack) >= 3:
            raise SlackError("push_limit_reached")  # Slack keeps at most 3 views in a stack
        self._check_external_id(view)
        view_id = self._new_id("V")
        stored = self._materialise_view(view, view_id, stack[0], stack[-1])
        self.views[view_id] = OpenView(view=stored, user_id=user_id, versions=[copy.deepcopy(stored)])
        stack.append(view_id)
        return stored

    def _replace_view(self, opened: OpenView, view: Json) -> Json:
        self._check_external_id(view, except_id=opened.id)
        old = opened.view
        stored = self._materialise_view(view, old["id"], old["root_view_id"], old.get("previous_view_id"))
        opened.view = stored
        opened.versions.append(copy.deepcopy(stored))
        if stored["type"] == "home":
            self.home_views[opened.user_id] = stored
        return stored

    def _check_response_errors(self, view: Json, errors: Any) -> None:
        if not isinstance(errors, dict) or not errors:
            raise _violation(
                "invalid_arguments", "[ERROR] response_action errors needs a non-empty `errors` object"
            )
        inputs = {b.get("block_id") for b in view.get("blocks", []) if b.get("type") == "input"}
        unknown = sorted(set(errors) - inputs)
        if unknown:
            raise _violation(
                "invalid_arguments", f"[ERROR] errors name blocks that are not input blocks: {unknown}"
            )

    def _respond(self, context: Json, payload: Json) -> None:
        channel, original_ts = context.get("channel"), context.get("message_ts")
        original = (channel, original_ts) if channel and original_ts else None
        if _flag(payload.get("delete_original")):
            if original and original in self.messages:
                del self.messages[original]
            return
        self._check_message_content(payload)
        self._check_blocks(payload.get("blocks"))
        if _flag(payload.get("replace_original")) and original and original in self.messages:
            # Unlike chat.update, replace_original replaces the whole message: absent blocks are dropped.
            self._update_message(original, {"blocks": [], "attachments": [], **payload})
        elif payload.get("response_type") == "in_channel" and channel:
            ts = self._next_ts()
            self._store_message(channel, self._bot_message(payload, ts))
        else:
            ts = self._next_ts()
            self.ephemeral_messages.append(
                {
                    "channel": channel,
                    "user": context.get("user"),
                    "ts": ts,
                    **{
                        k: copy.deepcopy(v)
                        for k, v in payload.items()
                        if k in ("text", "blocks", "attachments")
                    },
                }
            )

    # --- methods ---

    def _auth_test(self, args: Json) -> Json:
        return {
            "url": f"https://{self.team_domain}.slack.com/",
            "team": "Test Workspace",
            "user": "frbot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, args: Json) -> Json:
        channel = self._channel_for_post(args["channel"])
        self._check_message_content(args)
        self._check_blocks(args.get("blocks"))
        ts = self._next_ts()
        message = self._bot_message(args, ts)
        self._store_message(channel, message)
        self._report_metadata(channel, message)
        return {"channel": channel, "ts": ts, "message": copy.deepcopy(message)}

    def _report_metadata(self, channel: str, message: Json) -> None:
        metadata = message.get("metadata")
        sink = self.event_sink
        if sink is None or not isinstance(metadata, dict):
            return
        if metadata.get("event_type") not in self.metadata_subscriptions:
            return
        event = self.landing_event(channel, message["ts"], metadata)
        event_id = f"Ev{self._rng.getrandbits(40):010X}"
        threading.Thread(target=self._deliver_event, args=(event, event_id), daemon=True).start()

    def landing_event(self, channel: str, ts: str, metadata: Json) -> Json:
        """The message_metadata_posted event Slack sends for the bot's post at (channel, ts)."""
        return {
            "type": "message_metadata_posted",
            "app_id": self.app_id,
            "bot_id": self.bot_id,
            "user_id": self.bot_user_id,
            "team_id": self.team_id,
            "channel_id": channel,
            "metadata": copy.deepcopy(metadata),
            "message_ts": ts,
            "event_ts": ts,
        }

    def _deliver_event(self, event: Json, event_id: str) -> None:
        for retry, delay in enumerate((0.0, *self.event_retry_delays)):
            time.sleep(delay)
            sink = self.event_sink  # looked up each time: a restarted app may listen elsewhere
            delivered = sink is not None and sink(event, event_id, retry)
            with self._lock:
                self.event_deliveries.append((event_id, retry, delivered))
            if delivered:
                return

    def _chat_update(self, args: Json) -> Json:
        channel = self._known_channel(args["channel"])
        key = (channel, args["ts"])
        self._check_message_content(args)
        self._check_blocks(args.get("blocks"))
        if key not in self.messages:
            raise SlackError("message_not_found")
        if self.messages[key].get("user") != self.bot_user_id:
            raise SlackError("cant_update_message")
        stored = self._update_message(key, args)
        return {
            "channel": channel,
            "ts": args["ts"],
            "text": stored.get("text", ""),
            "message": _public(stored),
        }

    def _chat_post_ephemeral(self, args: Json) -> Json:
        channel = self._channel_for_post(args["channel"])
        self._check_message_content(args)
        self._check_blocks(args.get("blocks"))
        if not _is_user_id(args["user"]):
            raise SlackError("user_not_in_channel")
        ts = self._next_ts()
        message = {
            k: copy.deepcopy(v)
            for k, v in args.items()
            if k in ("text", "blocks", "attachments", "thread_ts")
        }
        self.ephemeral_messages.append({"channel": channel, "user": args["user"], "ts": ts, **message})
        return {"message_ts": ts}

    def _chat_get_permalink(self, args: Json) -> Json:
        channel = self._known_channel(args["channel"])
        message = self.messages.get((channel, args["message_ts"]))
        if message is None:
            raise SlackError("message_not_found")
        ts = args["message_ts"]
        permalink = f"https://{self.team_domain}.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        thread_ts = message.get("thread_ts")
        if thread_ts and thread_ts != ts:
            permalink += f"?thread_ts={thread_ts}&cid={channel}"
        return {"channel": channel, "permalink": permalink}

    def _conversations_open(self, args: Json) -> Json:
        users = [u.strip() for u in (args.get("users") or "").split(",") if u.strip()]
        if args.get("channel"):
            channel_id = self._known_channel(args["channel"])
            user = channel_id[1:] if channel_id.startswith("D") else None
        elif not users:
            raise _violation("users_list_not_supplied", "[ERROR] pass `users` or `channel`")
        else:
            if len(users) > 8:
                raise SlackError("too_many_users")
            for user_id in users:
                if not _is_user_id(user_id):
                    raise SlackError("user_not_found")
            if len(users) == 1:
                channel_id, user = "D" + users[0], users[0]
            else:
                channel_id = "G" + hashlib.sha1(",".join(sorted(users)).encode()).hexdigest()[:10].upper()
                user = None
        already_open = channel_id in self._opened_dms
        self._opened_dms.add(channel_id)
        if not _flag(args.get("return_im")):
            return {"channel": {"id": channel_id}}
        channel: Json = {
            "id": channel_id,
            "created": 1700000000,
            "is_im": user is not None,
            "is_org_shared": False,
            "user": user,
            "last_read": "0000000000.000000",
            "latest": None,
            "unread_count": 0,
            "unread_count_display": 0,
            "is_open": True,
            "priority": 0,
        }
        extra = {"no_op": True, "already_open": True} if already_open else {}
        return {**extra, "channel": channel}

    def _conversation(self, channel: str) -> Json:
        if channel.startswith("D"):
            info: Json = {
                "id": channel,
                "created": 1700000000,
                "is_im": True,
                "is_org_shared": False,
                "user": channel[1:],
                "is_open": True,
                "priority": 0,
            }
        else:
            name = f"channel-{channel.lower()}"
            private = channel.startswith("G")
            info = {
                "id": channel,
                "name": name,
                "is_channel": not private,
                "is_group": private,
                "is_im": False,
                "is_mpim": False,
                "is_private": private,
                "created": 1700000000,
                "is_archived": False,
                "is_general": False,
                "unlinked": 0,
                "name_normalized": name,
                "is_shared": False,
                "is_org_shared": False,
                "is_ext_shared": False,
                "is_pending_ext_shared": False,
                "pending_shared": [],
                "context_team_id": self.team_id,
                "creator": "U0CREATOR",
                "shared_team_ids": [self.team_id],
                "is_member": channel not in self.not_in_channel,
                "topic": {"value": "", "creator": "", "last_set": 0},
                "purpose": {"value": "", "creator": "", "last_set": 0},
                "previous_names": [],
            }
        info.update(copy.deepcopy(self.channels.get(channel, {})))
        return info

    def _members(self, channel: str) -> list[str]:
        if channel in self.channel_members:
            return list(self.channel_members[channel])
        if channel.startswith("D"):
            return [channel[1:], self.bot_user_id]
        return [] if channel in self.not_in_channel else [self.bot_user_id]

    def _conversations_info(self, args: Json) -> Json:
        channel = self._known_channel(args["channel"])
        info = self._conversation(channel)
        if _flag(args.get("include_num_members")):
            info["num_members"] = len(self._members(channel))
        if _flag(args.get("include_locale")):
            info["locale"] = "en-GB"
        return {"channel": info}

    def _conversations_members(self, args: Json) -> Json:
        channel = self._known_channel(args["channel"])
        members = self._members(channel)
        limit = int(args.get("limit") or 100)
        if limit < 1 or limit > 1000:
            raise SlackError("invalid_limit")
        cursor = args.get("cursor") or ""
        try:
            start = int(cursor.removeprefix("offset:")) if cursor else 0
        except ValueError:
            raise SlackError("invalid_cursor") from None
        page = members[start : start + limit]
        next_cursor = f"offset:{start + limit}" if start + limit < len(members) else ""
        return {"members": page, "response_metadata": {"next_cursor": next_cursor}}

    def _users_info(self, args: Json) -> Json:
        if not _is_user_id(args["user"]):
            raise SlackError("user_not_found")
        user = self.user_profile(args["user"])
        if _flag(args.get("include_locale")):
            user.setdefault("locale", "en-GB")
        return {"user": user}

    def _usergroup(self, group_id: str, include_users: bool) -> Json:
        users = self.usergroups[group_id]
        handle = f"group-{group_id.lower()}"
        group: Json = {
            "id": group_id,
            "team_id": self.team_id,
            "is_usergroup": True,
            "name": handle,
            "description": "",
            "handle": handle,
            "is_external": False,
            "date_create": 1700000000,
            "date_update": 1700000000,
            "date_delete": 0,
            "auto_type": None,
            "created_by": "U0ADMIN",
            "updated_by": "U0ADMIN",
            "deleted_by": None,
            "prefs": {"channels": [], "groups": []},
            "user_count": str(len(users)),  # a string in Slack's documented example
        }
        group.update(copy.deepcopy(self.usergroup_info.get(group_id, {})))
        if include_users:
            group["users"] = list(users)
        return group

    def _usergroups_list(self, args: Json) -> Json:
        include_users = bool(_flag(args.get("include_users")))
        return {"usergroups": [self._usergroup(g, include_users) for g in self.usergroups]}

    def _usergroups_users_list(self, args: Json) -> Json:
        group = args["usergroup"]
        if group not in self.usergroups:
            raise SlackError("no_such_subteam")
        return {"users": list(self.usergroups[group])}

    def _trigger_arg(self, args: Json) -> Any:
        trigger = args.get("trigger_id") or args.get("interactivity_pointer")
        if not trigger:
            raise _violation(
                "invalid_arguments", "[ERROR] missing required field: trigger_id [json-pointer:/trigger_id]"
            )
        return trigger

    def _views_open(self, args: Json) -> Json:
        trigger = self._trigger_arg(args)
        view = self._check_view(args["view"], "modal")
        user_id = self._exchange_trigger(trigger)
        return {"view": copy.deepcopy(self._open_view(user_id, view))}

    def _views_push(self, args: Json) -> Json:
        trigger = self._trigger_arg(args)
        view = self._check_view(args["view"], "modal")
        user_id = self._exchange_trigger(trigger)
        return {"view": copy.deepcopy(self._push_view(user_id, view))}

    def _views_update(self, args: Json) -> Json:
        view_id, external_id = args.get("view_id"), args.get("external_id")
        if not view_id and not external_id:
            raise _violation("invalid_arguments", "[ERROR] either view_id or external_id is required")
        view = args["view"]
        surface = "home" if isinstance(view, dict) and view.get("type") == "home" else "modal"
        self._check_view(view, surface)
        opened = next(
            (
                v
                for v in self.views.values()
                if not v.closed and (v.id == view_id if view_id else v.view.get("external_id") == external_id)
            ),
            None,
        )
        if opened is None:
            raise SlackError("not_found")
        if args.get("hash") and args["hash"] != opened.view["hash"]:
            raise SlackError("hash_conflict")
        return {"view": copy.deepcopy(self._replace_view(opened, view))}

    def _views_publish(self, args: Json) -> Json:
        user_id = args["user_id"]
        if not _is_user_id(user_id):
            raise SlackError("invalid_arguments", ["[ERROR] invalid `user_id`"])
        view = self._check_view(args["view"], "home")
        current = self.home_views.get(user_id)
        if current is not None and args.get("hash") and args["hash"] != current["hash"]:
            raise SlackError("hash_conflict")
        if current is not None and current["id"] in self.views:
            return {"view": copy.deepcopy(self._replace_view(self.views[current["id"]], view))}
        view_id = self._new_id("V")
        stored = self._materialise_view(view, view_id, view_id, None)
        self.views[view_id] = OpenView(view=stored, user_id=user_id, versions=[copy.deepcopy(stored)])
        self.home_views[user_id] = stored
        return {"view": copy.deepcopy(stored)}


# --- HTTP plumbing ------------------------------------------------------------------------------------


def _flag(value: Any) -> bool:
    """Boolean argument as Slack reads it, also when the specs (and so coercion) are off."""
    return value is True or value == 1 or (isinstance(value, str) and value.lower() in ("1", "true"))


def _loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _parse_args(content_type: str, query: str, body: bytes) -> tuple[Json, str, str | None]:
    """Merge query-string and body arguments; returns (args, "json" | "form" | "query", parse error)."""
    args: Json = dict(parse_qsl(query, keep_blank_values=True))
    media = content_type.split(";", 1)[0].strip().lower()
    if not body:
        return args, "query" if args else "form", None
    if media == "application/json":
        try:
            parsed = json.loads(body.decode("utf-8"))
        except ValueError as exc:
            return args, "json", f"body is not valid JSON: {exc}"
        if not isinstance(parsed, dict):
            return args, "json", "JSON body must be an object"
        return {**args, **parsed}, "json", None
    if media in ("", "application/x-www-form-urlencoded"):
        args.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        return args, "form", None
    return args, "form", f"unsupported Content-Type {content_type!r}"


class _RequestHandler(BaseHTTPRequestHandler):
    stub: SlackStub
    server_version = "slackstub/1"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, verb: str) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        extra: dict[str, str] = {}
        if url.path.startswith("/api/"):
            method = url.path[len("/api/") :].strip("/")
            status, extra, payload = self.stub.handle_api(method, verb, headers, url.query, body)
            if status == DROP:
                self.close_connection = True
                return
        elif url.path.startswith("/hooks/") and verb == "POST":
            status, payload = self.stub.handle_response_url(url.path, headers, body)
        else:
            status, payload = 404, {"ok": False, "error": "not_found"}
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output readable; the CallLog is the log

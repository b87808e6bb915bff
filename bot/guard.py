"""The gate in front of the listeners: malformed, foreign and replayed requests stop here.

- `read_body` (HTTP mode) and `shape_problem` (both modes) refuse payloads Bolt cannot parse or that lack
  the fields the listeners read, before Bolt sees them: Bolt indexes into payloads unchecked and would
  answer a malformed one with a 500 and a traceback. In HTTP mode Bolt is then given the body as parsed
  here (bot/server.py), so what was checked is what the listeners read, and a large form is parsed once.
- `skip_redelivered_events` acknowledges Slack's retries of an event already taken (`X-Slack-Retry-Num`)
  without running it again; interactions are idempotent by the database's unique keys instead.
- `quiet_errors` logs a listener failure as one line, never a traceback full of payload.
"""

from __future__ import annotations

import binascii
import json
import logging
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

from slack_bolt import BoltRequest, BoltResponse
from slack_bolt.middleware import Middleware

log = logging.getLogger(__name__)
SEEN_EVENTS = 10_000  # Slack retries within minutes; this many event ids covers far more than that


class MalformedRequest(ValueError):
    """A body that cannot be a Slack request we handle; the message says why (no payload in it)."""


def read_body(content_type: str, body: bytes) -> tuple[str, dict[str, Any]]:
    """The body as text and as the payload the listeners get, parsed once, by Bolt's rules (JSON, or a
    form whose `payload` field holds JSON, or the form's fields for a slash command) but strictly: what
    Bolt would read wrongly or fail on raises MalformedRequest."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest("body is not UTF-8") from None
    if content_type.startswith("application/json") or text.startswith("{"):
        parsed = _json(text)
        if not isinstance(parsed, dict):
            raise MalformedRequest("body is not a JSON object")
    else:
        fields = form_fields(text)
        parsed = _json(fields["payload"]) if "payload" in fields else fields
        if not isinstance(parsed, dict):
            raise MalformedRequest("payload is not a JSON object")
    problem = shape_problem(parsed)
    if problem is not None:
        raise MalformedRequest(problem)
    return text, parsed


def form_fields(text: str) -> dict[str, str]:
    """A form-encoded body's fields, as `dict(parse_qsl(text, keep_blank_values=True,
    strict_parsing=True))` reads them (an empty body has none), but decoded in C where it can be."""
    if not text:
        return {}
    fields = {}
    for field in text.split("&"):
        name, equals, value = field.partition("=")
        if not equals:
            raise MalformedRequest("body is not form-encoded")
        fields[unquote_form(name)] = unquote_form(value)
    return fields


def unquote_form(text: str) -> str:
    """`urllib.parse.unquote_plus`, in C for what Slack sends. A submission's form arrives as about 20 kB
    of percent-encoded JSON, and urllib decodes it in a Python loop over every escape: about 0.5 ms, a
    quarter of the answering process's CPU for the request (bench/NOTES.md, item 35). Quoted-printable
    is the same escape with "=" for "%", which binascii decodes in C; anything that decoder would read
    differently (a raw "=" or line break, a non-ASCII character, a "%" that starts no escape) goes to
    urllib instead."""
    if "%" not in text:
        return text.replace("+", " ")
    if not text.isascii() or "=" in text or "\r" in text or "\n" in text:
        return unquote_plus(text)
    decoded = binascii.a2b_qp(text.replace("+", " ").replace("%", "="))
    # Each escape shortens the text by two characters; a "%" that starts none shortens it by less.
    if len(text) - len(decoded) != 2 * text.count("%"):
        return unquote_plus(text)
    return decoded.decode("utf-8", "replace")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _has_id(value: Any, key: str = "id") -> bool:
    return isinstance(value, dict) and isinstance(value.get(key), str) and bool(value[key])


def shape_problem(body: dict[str, Any]) -> str | None:
    """What a parsed payload lacks that Bolt or the listeners rely on (None when complete)."""
    kind = body.get("type")
    if kind in ("view_submission", "view_closed"):
        view = body.get("view")
        if not _has_id(body.get("user")):
            return "no user"
        if not (_has_id(view) and _has_id(view, "callback_id") and _has_id(view, "type")):
            return "no view id, type or callback_id"
        state, metadata = view.get("state") or {}, view.get("private_metadata") or ""
        if not isinstance(state, dict) or not isinstance(metadata, str):
            return "malformed view"
        return None
    if kind == "block_actions":
        actions = body.get("actions")
        if not _has_id(body.get("user")):
            return "no user"
        if not (isinstance(actions, list) and actions and all(_has_id(a, "action_id") for a in actions)):
            return "no actions"
        return None
    if kind == "event_callback":
        event = body.get("event")
        return None if _has_id(event, "type") and isinstance(body.get("event_id"), str) else "no event"
    if kind == "url_verification":
        return None
    if kind is None and "command" in body:
        missing = [key for key in ("command", "user_id", "trigger_id") if not body.get(key)]
        return f"missing {', '.join(missing)}" if missing else None
    if isinstance(kind, str) and _has_id(body.get("user")):
        return None  # other interaction types: no listener matches, Bolt answers 404
    return "unknown payload"


class EventDeduplicator(Middleware):
    """Remembers recent event ids so a retried delivery of an event already taken is only acknowledged.

    A `Middleware`, which Bolt calls as it is: a function given to `app.middleware` is handed every
    argument a middleware could take, built anew for each request (bench/NOTES.md, item 35)."""

    def __init__(self, size: int = SEEN_EVENTS) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def first_time(self, event_id: str) -> bool:
        with self._lock:
            if event_id in self._seen:
                self._seen.move_to_end(event_id)
                return False
            self._seen[event_id] = None
            if len(self._seen) > self._size:
                self._seen.popitem(last=False)
            return True

    def process(
        self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]
    ) -> BoltResponse | None:
        body = req.body
        if body.get("type") != "event_callback":
            return next()
        event_id = str(body.get("event_id", ""))
        if self.first_time(event_id):
            return next()  # first delivery, or a retry of one this process never saw: run it
        retry = (req.headers.get("x-slack-retry-num") or ["?"])[0]
        log.info("event %s delivered again (retry %s): acknowledged, not run twice", event_id, retry)
        return BoltResponse(status=200, body="")


def quiet_errors(error: Exception, body: dict[str, Any], logger: logging.Logger) -> BoltResponse:
    """A listener failed before answering: logged quietly, and Slack is told the request failed."""
    log_listener_failure(error, body.get("type") or "command")
    return BoltResponse(status=400, body="request could not be handled")


def log_listener_failure(error: Exception, kind: str) -> None:
    """One log line with where, no traceback or payload (which may hold user text)."""
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else ""
    log.error("listener failed for a %s request: %s%s", kind, type(error).__name__, where)

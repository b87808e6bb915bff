"""Serving the Bolt app: HTTP mode under waitress (a production WSGI server), or Socket Mode."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from slack_bolt import App, BoltRequest
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.wsgi.http_request import WsgiHttpRequest
from slack_bolt.adapter.wsgi.http_response import WsgiHttpResponse
from slack_sdk.signature import SignatureVerifier

from bot.foreground import ANSWERS
from bot.guard import MalformedRequest, read_body, shape_problem

log = logging.getLogger(__name__)
EVENTS_PATH = "/slack/events"
MAX_BODY_BYTES = 1_000_000  # Slack payloads are far smaller; anything larger is refused with 413


def wsgi_app(
    app: App, signing_secret: str | None = None, ready: Callable[[], str | None] | None = None
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """`ready` answers the readiness check: None when this process can serve, otherwise why not."""
    # Checked here as well as by Bolt so that an unsigned request is refused before its body is examined.
    verifier = SignatureVerifier(signing_secret) if signing_secret else None

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if path == "/healthz" and method == "GET":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        if path == "/readyz" and method == "GET":
            problem = ready() if ready is not None else None
            if problem is not None:
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [problem.encode()]
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ready"]
        if path == EVENTS_PATH and method == "POST":
            content_type = environ.get("CONTENT_TYPE", "")
            if not content_type.startswith(("application/x-www-form-urlencoded", "application/json")):
                start_response("415 Unsupported Media Type", [("Content-Type", "text/plain")])
                return [b"unsupported content type"]
            body = _read_body(environ)
            if verifier is not None and not _signed(
                verifier,
                body,
                environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", ""),
                environ.get("HTTP_X_SLACK_SIGNATURE", ""),
            ):
                start_response("401 Unauthorized", [("Content-Type", "text/plain")])
                return [b"invalid request signature"]
            try:
                text, payload = read_body(content_type, body)
            except MalformedRequest as problem:
                log.warning("refused a malformed request: %s", problem)
                start_response("400 Bad Request", [("Content-Type", "text/plain")])
                return [b"malformed request"]
            request = WsgiHttpRequest(environ)
            parsed = ParsedRequest(
                text, payload, request.query_string, request.get_headers(), verified=verifier is not None
            )
            with ANSWERS.answering():  # what follows answers waits meanwhile (bot/foreground.py)
                answer = app.dispatch(parsed)
            response = WsgiHttpResponse(status=answer.status, headers=answer.headers, body=answer.body)
            start_response(response.status, response.get_headers())
            return response.get_body()
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    return application


class ParsedRequest(BoltRequest):
    """An HTTP request whose body `read_body` has parsed and checked: Bolt takes the payload as it is
    instead of parsing the text again (a submission's form is the largest part of its CPU before the
    answer; bench/NOTES.md). Bolt accepts a parsed body only when building a Socket Mode request.

    `verified`: `wsgi_app` has checked the signature already, with the same secret and slack_sdk's same
    verifier. The request then stays a Socket Mode one for Bolt, the one thing that changes being that Bolt
    does not check it a second time (a hash over the whole body: item 35); otherwise it becomes an HTTP
    request and Bolt checks it."""

    def __init__(
        self, text: str, payload: dict[str, Any], query: str, headers: dict[str, Any], verified: bool
    ) -> None:
        super().__init__(body=payload, query=query, headers=headers, mode="socket_mode")
        self.raw_body = text
        if not verified:
            self.mode = "http"


# Slack's timestamps are Unix seconds: ten digits until the year 2286.
TIMESTAMP_DIGITS = 12


def _signed(verifier: SignatureVerifier, body: bytes, timestamp: str, signature: str) -> bool:
    # ASCII digits, and few: str.isdigit() takes "²", and a few thousand digits overflow int(), either
    # of which slack_sdk's int() raised on, answering an unsigned request 500 with a traceback.
    if (
        not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= TIMESTAMP_DIGITS)
        or not signature
    ):
        return False
    try:
        return bool(verifier.is_valid(body.decode("utf-8"), timestamp, signature))
    except UnicodeDecodeError:
        return False  # Slack signs UTF-8 text; anything else is not from Slack


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    # waitress has already refused anything over MAX_BODY_BYTES with 413
    return environ["wsgi.input"].read(min(max(length, 0), MAX_BODY_BYTES)) if length > 0 else b""


def on_termination(stop: Callable[[], None]) -> None:
    """Run `stop` on SIGTERM and SIGINT (only possible from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %s: finishing in-flight work and stopping", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def serve_http(
    app: App,
    host: str,
    port: int,
    threads: int,
    ready: Callable[[int], None] | None = None,
    drain_seconds: float = 20.0,
    signing_secret: str | None = None,
    stopping: threading.Event | None = None,
    ready_check: Callable[[], str | None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stopping` is set), then stop listening and let in-flight requests
    finish."""
    from waitress.server import create_server

    server = create_server(
        wsgi_app(app, signing_secret, ready_check),
        host=host,
        port=port,
        threads=threads,
        max_request_body_size=MAX_BODY_BYTES,
        ident="fr-bot",
        clear_untrusted_proxy_headers=True,
    )
    bound_port = server.effective_port  # type: ignore[union-attr]
    log.info("HTTP mode: listening on %s:%s%s", host, bound_port, EVENTS_PATH)
    stopping = stopping or threading.Event()
    on_termination(stopping.set)
    if ready:
        ready(int(bound_port))
    _run_until(server, stopping)
    _drain(server, drain_seconds)


def _poll(server: Any, timeout: float) -> None:
    server.asyncore.loop(timeout=timeout, map=server._map, use_poll=server.adj.asyncore_use_poll, count=1)


def _run_until(server: Any, stopping: threading.Event) -> None:
    # waitress's own run() loops until the process ends; polling here lets the signal handler only set a
    # flag, so shutdown happens in this thread at a point where no socket is half-handled.
    while not stopping.is_set():
        _poll(server, 0.2)


def _drain(server: Any, drain_seconds: float) -> None:
    from waitress import wasyncore
    from waitress.channel import HTTPChannel

    wasyncore.dispatcher.close(server)  # stop accepting; keep the trigger that wakes us for responses

    def busy() -> bool:
        return any(
            channel.requests or channel.total_outbufs_len
            for channel in list(server._map.values())
            if isinstance(channel, HTTPChannel)
        )

    deadline = time.monotonic() + drain_seconds
    while busy() and time.monotonic() < deadline:
        _poll(server, 0.05)
    if busy():
        log.warning("stopping with requests still in flight after %.0fs", drain_seconds)
    server.task_dispatcher.shutdown(timeout=1)
    with contextlib.suppress(OSError, ValueError):
        server.close()
    for channel in list(server._map.values()):
        with contextlib.suppress(OSError, ValueError):
            channel.close()


class CheckedSocketModeHandler(SocketModeHandler):
    """Socket Mode with the same payload checks as HTTP mode: a malformed envelope is acknowledged
    (so Slack does not redeliver it) and dropped before Bolt parses it."""

    def handle(self, client: Any, req: Any) -> None:
        if req.type in ("interactive", "slash_commands", "events_api"):
            payload = req.payload if isinstance(req.payload, dict) else {}
            problem = shape_problem(payload)
            if problem is not None:
                from slack_sdk.socket_mode.response import SocketModeResponse

                log.warning("refused a malformed Socket Mode %s: %s", req.type, problem)
                client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
                return
        super().handle(client, req)


def serve_socket(app: App, app_token: str, stopping: threading.Event | None = None) -> None:
    """Until SIGTERM or Ctrl-C. `stopping`: the caller's event, set by a signal that came while the bot
    was starting (it is then not connected at all)."""
    stopped = stopping if stopping is not None else threading.Event()
    on_termination(stopped.set)
    if stopped.is_set():
        return
    handler = CheckedSocketModeHandler(app, app_token)
    handler.connect()
    log.info("Socket Mode: connected to Slack")
    stopped.wait()
    handler.close()

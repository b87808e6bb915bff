"""The Slack stand-in (tests/slackstub) in a process of its own, for the ack-latency benchmark.

In the load generator's process its views.open, chat.postMessage and views.publish handling competed with
the simulated users for one GIL, and that wait was counted in the latency the users measured. Here the
stub runs in a child process; the benchmark talks to it over a pipe only to issue trigger ids and
response URLs (before a request is timed) and to read back what the bot sent during set-up.

`RemoteStub` offers what `SlackDriver(stub=...)` uses of a SlackStub.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import threading
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

from bot.copies import METADATA_EVENT_TYPE
from tests.botprocess import SIGNING_SECRET
from tests.slackstub import SlackDriver, SlackStub, default_user

Json = dict[str, Any]


def _serve(conn: Connection, usergroups: dict[str, list[str]]) -> None:
    # Slack's own housekeeping does not run on the bot's cores. The stand-in keeps every modal and message
    # of the run, and its full garbage collections grew to 100-375 ms of one of the machine's two cores,
    # every few seconds of a level in which the bot calls it (none in the bare apps' levels, which call
    # nothing): it collects between levels instead (`_clear`), where no answer is being timed.
    gc.disable()
    with SlackStub(specs_dir=None) as stub:
        stub.latency = 0.0
        for group, members in usergroups.items():
            stub.add_usergroup(group, members)
        conn.send(
            {
                "base_url": stub.base_url,
                "team_id": stub.team_id,
                "team_domain": stub.team_domain,
                "app_id": stub.app_id,
            }
        )
        commands: dict[str, Any] = {
            "issue_trigger_id": stub.issue_trigger_id,
            "issue_response_url": stub.issue_response_url,
            "clear": lambda: _clear(stub),
            "opened_view": lambda: stub.wait_for("views.open").response["view"],
            "posted_message": lambda channel: _posted_message(stub, channel),
            "call_counts": lambda: _call_counts(stub),
            "refused_calls": lambda: _refused_calls(stub),
            "report_landings_to": lambda url: _report_landings_to(stub, url),
        }
        while True:
            try:
                request = conn.recv()
            except EOFError:
                return
            if request is None:
                return
            name, args, kwargs = request
            try:
                conn.send((True, commands[name](*args, **kwargs)))
            except Exception as exc:  # reported to the caller, the stub keeps serving
                conn.send((False, f"{type(exc).__name__}: {exc}"))


def _clear(stub: SlackStub) -> None:
    """Between levels: forget the calls, and collect the garbage now rather than during the next level."""
    stub.clear()
    gc.collect()
    gc.freeze()


def _posted_message(stub: SlackStub, channel: str) -> Json:
    posted = stub.wait_for(lambda c: c.method == "chat.postMessage" and c.args.get("channel") == channel)
    return stub.message(posted.response["channel"], posted.response["ts"])


def _report_landings_to(stub: SlackStub, url: str) -> None:
    """As Slack does for an app subscribed as manifest.yml says: each post's landing is reported to it."""
    stub.metadata_subscriptions = {METADATA_EVENT_TYPE}
    stub.event_sink = SlackDriver(url, SIGNING_SECRET, stub=stub).deliver


def _call_counts(stub: SlackStub) -> dict[str, int]:
    return dict(Counter(call.method for call in stub.calls.snapshot()))


def _refused_calls(stub: SlackStub) -> dict[str, int]:
    """The bot's calls since the last clear() that Slack would have refused, by method and error."""
    return dict(
        Counter(
            f"{call.method}: {call.response.get('error', 'unknown')}"
            for call in stub.calls.snapshot()
            if not call.response.get("ok", False)
        )
    )


class RemoteStub:
    """A SlackStub running in a child process (spawned, so it shares nothing with the load generator)."""

    def __init__(self, usergroups: dict[str, list[str]]) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, usergroups), daemon=True)
        self._process.start()
        child.close()
        info = self._conn.recv()
        self.base_url: str = info["base_url"]
        self.team_id: str = info["team_id"]
        self.team_domain: str = info["team_domain"]
        self.app_id: str = info["app_id"]
        self.channels: dict[str, Json] = {}  # SlackDriver reads channel names here
        self.views: dict[str, Any] = {}  # ... and open modals: none are tracked on this side
        self.late_acks = 0  # answers slower than Slack's 3 seconds, counted by SlackDriver
        self._lock = threading.Lock()  # one pipe shared by every simulated user
        self._counting = threading.Lock()  # late_acks, from every simulated user's thread

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._conn.send((name, args, kwargs))
            ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"stub {name}: {value}")
        return value

    def issue_trigger_id(self, user_id: str = "U0USER") -> str:
        return str(self._call("issue_trigger_id", user_id))

    def issue_response_url(self, kind: str = "commands", **context: Any) -> str:
        return str(self._call("issue_response_url", kind, **context))

    def clear(self) -> None:
        self._call("clear")

    def opened_view(self) -> Json:
        """The first modal the bot opened since the last clear()."""
        return dict(self._call("opened_view"))

    def posted_message(self, channel: str) -> Json:
        """The first message the bot posted to `channel` since the last clear(), as it stands now."""
        return dict(self._call("posted_message", channel))

    def call_counts(self) -> dict[str, int]:
        return dict(self._call("call_counts"))

    def refused_calls(self) -> dict[str, int]:
        """Calls since the last clear() that Slack would refuse (expired_trigger_id: a modal opened late)."""
        return dict(self._call("refused_calls"))

    def report_landings_to(self, url: str) -> None:
        """Send the app at `url` Slack's message_metadata_posted events for its posts."""
        self._call("report_landings_to", url)

    def user_profile(self, user_id: str) -> Json:
        return default_user(user_id, self.team_id)

    def record_violation(self, source: str, error: str, *messages: str, **_: Any) -> None:
        with self._counting:  # the driver reports only acks later than 3 s here
            self.late_acks += 1

    def apply_view_response(self, view_id: str, status: int, body: Any) -> None:
        """The benchmark's submissions are of a copied form the stub does not track: nothing to apply."""

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)

    def __enter__(self) -> RemoteStub:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

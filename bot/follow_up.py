"""The follow-up process: what follows Slack's answers, in a process of its own.

`fr-bot run` in HTTP mode on PostgreSQL starts a second process, the follow-up process, and leaves itself
only the answers. The answering process verifies each request, runs its listener up to `ack()` and
answers; whatever the listener hands to `AfterAnswer` (opening a modal, a reviewer's click read, storing a
submitted form, App Home) is handed over here instead: the request's body, as it arrived, is sent down a
pipe, and this process parses it and runs the same listener again, whose work after the answer then runs
on this process's listener pool. The recording of submissions, the outbox and the scheduler run here too,
for the process that sends a modal's "recorded" update must be the one that stored its form.

Why: the work after an answer held the answering process's one GIL while the next answers waited for it
(bench/NOTES.md, items 33 and 34). In a process of its own, at background CPU priority, it holds no lock
an answer needs, and the kernel runs the answers first.

What a listener may do before handing work over: only what has no side effect (parse, check, ack), as it
runs twice, and both runs must judge alike: a check that reads the clock reads it through
`AfterAnswer.as_of`, which here gives the moment the answering process read (a deputy named from "today"
a moment before midnight is not refused here a moment after it). No listener writes before it answers:
a request, a decision, a question and the everyday forms are answered first and recorded here. Outbox
rows the answering process queues itself (work it ran there because this process could not take it) are
announced here (`wake_outbox`), with when they fall due.

This process tells the answering process when the work a request set going has ended (DONE). If this
process dies, the answering process starts another and sends it every request the dead one had not said
it was done with, in their order: those it had not read yet (in the pipe's buffer, or queued to send) and
those whose work it had not finished. So an officer answered "received" whose form the dead process had
not stored yet still has it stored; a request whose work had ended but whose DONE had not arrived runs
again, which the database's unique keys make harmless (a form, a decision, a question is keyed by its
modal). What a dead process had already started writing is rolled back by PostgreSQL, as in a crash of
a single process (a stored form is still recorded: by the next process's scan). Every follow-up process
runs with the answering process's policy, not the policy file as it may be now. If no new one starts,
the answering process stops, so its supervisor restarts both. SQLite keeps one process: two writers
would wait on its file lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from slack_bolt import BoltRequest

from bot.foreground import ANSWER_SLICE
from bot.guard import read_body
from bot.policy import LoadedPolicy
from handlers.after_answer import ReceivedText, judged_as_of

log = logging.getLogger(__name__)

# How long a new follow-up process may take to import, connect and say it is ready.
READY_SECONDS = 60.0
# How long the answering process waits at shutdown for the follow-up process to finish what it was given.
STOP_SECONDS = 90.0
# How often the sending thread, when idle, checks that the follow-up process is alive: the outbox and the
# scheduler run there, so a dead one is replaced although no request came to notice it.
WATCH_SECONDS = 1.0
# Messages down the pipe: (kind, payload).
REQUEST, WAKE_OUTBOX, STOP, READY = "request", "wake-outbox", "stop", "ready"
DONE = "done"  # from the follow-up process: (DONE, numbers of the requests whose work has ended)
# How long the follow-up process gathers ended requests before it says so: one message for many, so the
# answering process's GIL is woken a few times a second, not once for every request it answered. A
# request whose work ended within this of a crash runs again in the next process, which is harmless.
DONE_GATHER_SECONDS = 0.1
_SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of this one's threads or pools


class FollowUpUnavailable(Exception):
    """No follow-up process could be started."""


class FollowUpProcess:
    """The answering process's side: starts the follow-up process and sends it requests in order."""

    def __init__(
        self,
        overrides: dict[str, object],
        identity: dict[str, Any],
        policy: LoadedPolicy,
        on_failure: Callable[[], None],
    ) -> None:
        # The settings the answering process was given on its command line; the rest come from the
        # environment, which the follow-up process inherits.
        self._overrides = dict(overrides)
        self._identity = identity  # Slack's auth.test answer: a new follow-up process need not ask
        # The policy the answering process checks forms against: a follow-up process started later must
        # not read an edited policy file and judge the same form by other rules.
        self._policy = policy
        self._on_failure = on_failure  # stops the answering process when no follow-up process will start
        self._queue: queue.SimpleQueue[tuple[str, Any, Callable[[], None] | None]] = queue.SimpleQueue()
        self._process: Any = None
        self._connection: Connection | None = None
        self._thread: threading.Thread | None = None
        # Requests sent to the follow-up process that it has not said it is done with, by number, in the
        # order sent: a new process is sent them again if that one dies.
        self._numbers = itertools.count(1)
        self._unfinished: dict[int, tuple[str, Any]] = {}
        self._unfinished_lock = threading.Lock()

    def start(self) -> None:
        """Start the follow-up process and wait until it is ready (raises FollowUpUnavailable)."""
        self._spawn()
        self._thread = threading.Thread(target=self._send_loop, name="follow-up", daemon=True)
        self._thread.start()

    def hand_over(
        self,
        request: dict[str, Any] | ReceivedText,
        here: Callable[[], None],
        as_of: datetime | None = None,
    ) -> None:
        """AfterAnswer's hand-over: called on the answering thread, so it only queues."""
        self._queue.put((REQUEST, (request, as_of), here))

    def wake_outbox(self, queued: list[dict[str, Any]] | None = None) -> None:
        """This process queued outbox rows: the follow-up process's dispatcher is woken with what its own
        would be told (`OutboxDispatcher.wake`; `queued`: the rows' timing), so a row due later (a
        modal's outcome) goes when it falls due, not at the poll after."""
        self._queue.put((WAKE_OUTBOX, queued, None))

    def stop(self) -> None:
        """After the last answer: the follow-up process finishes what it was given, then exits."""
        if self._thread is None:
            return
        self._queue.put((STOP, None, None))
        self._thread.join(STOP_SECONDS)
        self._thread = None
        process = self._process
        if process is not None and process.is_alive():
            log.warning("follow-up process still busy after %.0fs: stopping it", STOP_SECONDS)
            process.kill()
            process.join(5)

    # --- The sending thread -----------------------------------------------------------------------

    def _send_loop(self) -> None:
        # At the answers' priority: its work is a few microseconds a request, and a modal's trigger_id
        # lives 3 s (the follow-up process itself runs at background priority).
        while True:
            try:
                kind, payload, here = self._queue.get(timeout=WATCH_SECONDS)
            except queue.Empty:
                if self._connection is not None and not self._process.is_alive():
                    self._replace("it exited")
                continue
            if kind == STOP:
                self._finish()
                return
            message: tuple[str, Any] = (kind, payload)
            number = None
            if kind == REQUEST:
                number = next(self._numbers)
                message = (REQUEST, (number, *payload, False))
                with self._unfinished_lock:
                    self._unfinished[number] = message
            if self._send(message, number is not None):
                continue
            if number is not None:
                with self._unfinished_lock:
                    self._unfinished.pop(number, None)
            if here is not None:
                here()  # no follow-up process: this process opens the modal rather than nobody

    def _send(self, message: tuple[str, Any], unfinished: bool = False) -> bool:
        """Send `message`, replacing a dead follow-up process once. `unfinished`: it is among the
        unfinished requests, which a replacement is sent (so it is not sent a second time here)."""
        for attempt in (1, 2):
            connection = self._connection
            try:
                if connection is None:
                    raise BrokenPipeError("no follow-up process")
                connection.send(message)
                return True
            except (OSError, ValueError) as exc:
                if attempt == 2 or not self._replace(str(exc)):
                    break
                if unfinished:
                    return True
        return False

    def _replace(self, reason: str) -> bool:
        """Start a follow-up process in place of a dead one and send it the requests the dead one had
        not finished; if none starts, stop the bot."""
        log.error("follow-up process gone (%s, exit code %s): starting another", reason, self._exit_code())
        try:
            self._spawn()
        except FollowUpUnavailable as problem:
            log.error("%s: stopping, so that the supervisor restarts the bot", problem)
            self._connection = None
            self._on_failure()
            return False
        with self._unfinished_lock:
            # Marked as sent again: a modal the dead process opened is not opened twice (sent_again).
            unfinished = [(kind, (*payload[:-1], True)) for kind, payload in self._unfinished.values()]
        if unfinished:
            log.warning("sending %d request(s) the dead follow-up process had not finished", len(unfinished))
        connection = self._connection
        try:
            for message in unfinished:
                assert connection is not None
                connection.send(message)
        except (OSError, ValueError) as exc:  # this one died too: the watch replaces it and sends them again
            log.error("the new follow-up process did not take them: %s", exc)
        return True

    def _read_done(self, connection: Connection) -> None:
        """The follow-up process's word that a request's work has ended, until its pipe closes."""
        while True:
            try:
                kind, numbers = connection.recv()
            except (EOFError, OSError):
                return
            if kind == DONE:
                with self._unfinished_lock:
                    for number in numbers:
                        self._unfinished.pop(number, None)

    def _finish(self) -> None:
        connection, process = self._connection, self._process
        if connection is not None:
            with contextlib.suppress(OSError, ValueError):
                connection.send((STOP, None))
        if process is not None:
            process.join(STOP_SECONDS)
        if connection is not None:
            connection.close()
        self._connection = None

    def _exit_code(self) -> int | None:
        process = self._process
        if process is None:
            return None
        process.join(1)
        return process.exitcode  # type: ignore[no-any-return]

    def _spawn(self) -> None:
        if self._connection is not None:
            self._connection.close()
        ours, theirs = _SPAWN.Pipe()
        process = _SPAWN.Process(
            target=follow_up_main,
            args=(theirs, self._overrides, self._identity, self._policy),
            name="fr-bot follow-up",
            daemon=False,  # a clean stop waits for it (stop)
        )
        process.start()
        theirs.close()  # only the child holds its end: a dead child is a broken pipe here at once
        try:
            if not ours.poll(READY_SECONDS):
                raise FollowUpUnavailable(f"the follow-up process was not ready within {READY_SECONDS:.0f}s")
            message = ours.recv()
        except (EOFError, OSError) as exc:
            process.join(5)
            raise FollowUpUnavailable(
                f"the follow-up process stopped while starting (exit code {process.exitcode}): see its log"
            ) from exc
        except FollowUpUnavailable:
            process.kill()
            raise
        if message != (READY, None):
            process.kill()
            raise FollowUpUnavailable(f"the follow-up process said {message!r} instead of ready")
        self._process, self._connection = process, ours
        threading.Thread(target=self._read_done, args=(ours,), name="follow-up-done", daemon=True).start()
        log.info("follow-up process %s ready: the work after each answer runs there", process.pid)


# --- The follow-up process's side ---------------------------------------------------------------------


def follow_up_main(
    connection: Connection, overrides: dict[str, object], identity: dict[str, Any], policy: LoadedPolicy
) -> None:
    """The follow-up process: the same services and listeners, fed from the pipe instead of HTTP."""
    _die_with_parent()
    # SIGTERM and Ctrl-C reach the whole process group: the answering process decides when this one stops
    # (STOP, after its last answer), so that nothing it answered is dropped.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from bot import cli
    from bot.config import load_settings

    settings = load_settings(**overrides)
    _lower_this_process(settings.background_niceness)
    # The answering process migrated the database, and its policy is the one in force.
    services = cli.bootstrap(settings, prepare_database=False, policy=policy)
    # The answering process checked the token (identity): Slack may be down by now.
    app, listeners = cli.build_app(services, settings, identity=identity)
    cli.freeze_start_up_objects()
    stop_background = cli.start_background_work(services, settings)
    connection.send((READY, None))
    try:
        _serve(connection, app, services.dispatcher.wake)
    finally:
        listeners.shutdown(wait=True)
        stop_background()
        services.close()
        log.info("follow-up process stopped")


def _serve(
    connection: Connection, app: Any, wake_outbox: Callable[[list[dict[str, Any]] | None], None]
) -> None:
    tell = _Teller(connection)
    while True:
        try:
            kind, payload = connection.recv()
        except (EOFError, OSError):
            log.warning("follow-up process: the answering process is gone; finishing what was received")
            return
        if kind == STOP:
            return
        if kind == WAKE_OUTBOX:
            wake_outbox(payload)
            continue
        number, request, as_of, again = payload
        started: list[Future[None]] = []
        try:
            body = _payload_of(request)
            # Answered already (and its signature checked) by the answering process: Bolt skips the
            # signature check for Socket Mode requests, and what ack() builds here is dropped. The
            # listener judges it as of the moment the answering process's did (handlers/after_answer.py).
            with judged_as_of(as_of, again) as started:
                app.dispatch(BoltRequest(body=body, mode="socket_mode"))
        except Exception:
            log.exception("follow-up process: a handed-over request failed")
        tell.done_when_ended(number, started)


class _Teller:
    """Tells the answering process when a request's work has ended (at once if it started none, else
    when the last of it ends), gathering the requests that end within DONE_GATHER_SECONDS into one
    message, sent from a thread of its own."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()
        self._ended: list[int] = []
        self._waiting = threading.Condition(self._lock)
        threading.Thread(target=self._send_loop, name="follow-up-done", daemon=True).start()

    def done_when_ended(self, number: int, started: list[Future[None]]) -> None:
        if not started:
            self._done(number)
            return
        left = [len(started)]

        def ended(_: Future[None]) -> None:
            with self._lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self._done(number)

        for future in started:
            future.add_done_callback(ended)

    def _done(self, number: int) -> None:
        with self._lock:
            self._ended.append(number)
            if len(self._ended) == 1:
                self._waiting.notify()

    def _send_loop(self) -> None:
        while True:
            with self._lock:
                while not self._ended:
                    self._waiting.wait()
            time.sleep(DONE_GATHER_SECONDS)  # gather what ends meanwhile
            with self._lock:
                ended, self._ended = self._ended, []
            try:
                self._connection.send((DONE, ended))
            except (OSError, ValueError):  # the answering process is gone
                return


def _payload_of(request: dict[str, Any] | ReceivedText) -> dict[str, Any]:
    """A handed-over request's payload: its body as it arrived is parsed here as the answering process
    parsed it (bot/guard.py), which checked it already."""
    if isinstance(request, ReceivedText):
        return read_body(request.content_type, request.text.encode("utf-8"))[1]
    return request


def _lower_this_process(niceness: int) -> None:
    # Before any thread starts: threads inherit their creator's niceness and time slice on Linux, and
    # this process inherited the answering process's short slice.
    ANSWER_SLICE.set_this_thread(0)
    with contextlib.suppress(OSError):
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, max(current, niceness))


def _die_with_parent() -> None:
    """A SIGKILL of the answering process takes this one with it, as it would a thread: a crash of the
    bot leaves no half of it running (Linux; elsewhere the closed pipe ends it)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)

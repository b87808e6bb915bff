"""storage/db.py: SQLite's writer queue puts answers to Slack first; PostgreSQL's single-statement writes and
pooled connections checked only after sitting idle; the migrations build the schema the models describe."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from psycopg import pq
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.orm import Session, sessionmaker

from bot.forms import check_request
from bot.workflow import Workflow
from storage import db
from storage.db import (
    Readiness,
    _WriterQueue,
    background_work,
    make_engine,
    make_session_factory,
    sqlite_writer_queue,
    transaction,
)
from storage.models import Base, SubmissionReceipt, utcnow
from tests.conftest import valid_form_values, wait_until


class Waiter(threading.Thread):
    """A writer that queues for `writers` and notes, in `order`, when it got its turn."""

    def __init__(self, writers: _WriterQueue, name: str, order: list[str], background: bool) -> None:
        super().__init__(name=name, daemon=True)
        self.writers, self.order, self.background = writers, order, background

    def run(self) -> None:
        with kind(self.background):
            assert self.writers.acquire(timeout=5)
            self.order.append(self.name)
            self.writers.release()


def kind(background: bool) -> contextlib.AbstractContextManager[None]:
    return background_work() if background else contextlib.nullcontext()


def start_queued(writers: _WriterQueue, thread: threading.Thread) -> threading.Thread:
    """Start `thread` and return once it waits in `writers` (the test holds the queue)."""
    before = writers.waiting()
    thread.start()
    wait_until(lambda: writers.waiting() > before, f"{thread.name} queues", timeout=5, every=0.005)
    return thread


def queue_up(writers: _WriterQueue, order: list[str], *waiters: tuple[str, bool]) -> list[Waiter]:
    """Start the waiters one by one, each queued before the next starts (the test holds the queue)."""
    return [start_queued(writers, Waiter(writers, name, order, background)) for name, background in waiters]


def test_a_writer_answering_slack_goes_before_background_writers_that_waited_longer() -> None:
    writers, order = _WriterQueue(), []
    assert writers.acquire(timeout=1)
    threads = queue_up(writers, order, ("intake", True), ("outbox", True), ("answer", False))
    writers.release()
    for thread in threads:
        thread.join(5)
    assert order[0] == "answer"
    assert sorted(order[1:]) == ["intake", "outbox"]


def test_background_writers_are_not_starved_by_a_stream_of_answers() -> None:
    writers, order = _WriterQueue(), []
    assert writers.acquire(timeout=1)
    answers = [(f"answer{i}", False) for i in range(_WriterQueue.URGENT_TURNS + 2)]
    threads = queue_up(writers, order, ("intake", True), *answers)
    writers.release()
    for thread in threads:
        thread.join(5)
    # The answers waiting go first, but only URGENT_TURNS of them before the background writer's turn.
    assert order.index("intake") == _WriterQueue.URGENT_TURNS
    assert len(order) == len(answers) + 1


def test_writers_of_a_kind_go_in_arrival_order_and_one_that_just_wrote_queues_again() -> None:
    """The bench's ten threads submitting back to back: with a plain lock the writer that had just
    finished could take it again before the woken waiters ran, and one waited 2 s ("database is locked")."""
    writers, order = _WriterQueue(), []
    assert writers.acquire(timeout=1)
    threads = queue_up(writers, order, *[(f"answer{i}", False) for i in range(5)])
    writers.release()
    assert writers.acquire(timeout=5)  # at the back of the line, behind the five
    order.append("again")
    writers.release()
    for thread in threads:
        thread.join(5)
    assert order == [f"answer{i}" for i in range(5)] + ["again"]


def test_a_writer_waiting_too_long_is_told_so() -> None:
    writers = _WriterQueue()
    assert writers.acquire(timeout=1)
    started = time.monotonic()
    with background_work():
        assert not writers.acquire(timeout=0.05)
    assert time.monotonic() - started >= 0.05
    writers.release()
    assert writers.acquire(timeout=0.05)  # a timed-out waiter left nothing behind
    writers.release()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_transactions_of_background_threads_wait_for_answers(engine: Engine) -> None:
    """The engine's writer queue knows the intake, outbox and scheduler threads by `background_work`."""
    factory = make_session_factory(engine)
    order: list[str] = []
    writers = sqlite_writer_queue(engine)

    def write(name: str, background: bool) -> threading.Thread:
        def run() -> None:
            with kind(background), transaction(factory) as session:
                session.execute(select(1))
                order.append(name)

        return start_queued(writers, threading.Thread(target=run, name=name, daemon=True))

    with transaction(factory) as session:
        session.execute(select(1))  # holds the writer: BEGIN IMMEDIATE
        threads = [write("intake", True), write("answer", False)]
    for thread in threads:
        thread.join(5)
    assert order == ["answer", "intake"]


def test_a_stored_form_is_one_statement_and_the_next_transaction_is_a_transaction_again(
    database_url: str, workflow: Workflow
) -> None:
    """On PostgreSQL the receipt is written without BEGIN/COMMIT; the pooled connection it used must not
    stay in autocommit, or a later transaction that fails would leave half its writes behind."""
    engine = make_engine(database_url, pool_size=1, max_overflow=0)  # the same connection every time
    try:
        factory = make_session_factory(engine)
        workflow.db = factory
        form = check_request(workflow.policy, valid_form_values())
        first = workflow.receive(form, "UOFFICER", "T0", "V1")
        assert workflow.receive(form, "UOFFICER", "T0", "V1") == first  # the same modal, the same receipt
        assert _keys_after_a_failed_write(factory, "V2") == ["V1"]
    finally:
        engine.dispose()


def test_a_read_that_needs_no_snapshot_opens_no_transaction_and_takes_no_writer(database_url: str) -> None:
    """A reviewer's click reads its request this way (it is authorised again when the decision is
    recorded): on PostgreSQL without BEGIN and COMMIT, on SQLite beside a writer, not behind it; the
    pooled connection it used is a transaction again afterwards."""
    engine = make_engine(database_url, pool_size=1, max_overflow=0)  # the same connection every time
    try:
        factory = make_session_factory(engine)
        if engine.dialect.name == "postgresql":
            with transaction(factory, read_only=True, single_statement=True) as session:
                assert session.execute(select(1)).scalar_one() == 1
                status = session.connection().connection.dbapi_connection.info.transaction_status
                assert status == pq.TransactionStatus.IDLE  # no transaction left open on the server
            assert _keys_after_a_failed_write(factory, "V1") == []
            return
        with transaction(factory) as writing:
            writing.add(SubmissionReceipt(**_receipt("V1")))
            writing.flush()  # holds the writer lock: a reader that wanted it would wait 2 s, then fail
            other = make_engine(database_url)
            try:
                with transaction(
                    make_session_factory(other), read_only=True, single_statement=True
                ) as session:
                    assert session.scalars(select(SubmissionReceipt.submission_key)).all() == []
            finally:
                other.dispose()
    finally:
        engine.dispose()


def _keys_after_a_failed_write(factory: sessionmaker[Session], key: str) -> list[str]:
    """The stored receipts' keys after a transaction that writes `key`'s receipt, then fails: on a pooled
    connection left in autocommit, that receipt would stay."""
    with pytest.raises(RuntimeError), transaction(factory) as session:
        session.add(SubmissionReceipt(**_receipt(key)))
        session.flush()
        raise RuntimeError("failed after its first write")
    with transaction(factory, read_only=True) as session:
        return list(session.scalars(select(SubmissionReceipt.submission_key)))


def _receipt(key: str) -> dict[str, Any]:
    return {
        "submission_key": key,
        "requester_id": "UOFFICER",
        "team_id": "T0",
        "form": {},
        "received_at": utcnow(),
        "attempts": 0,
    }


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_pooled_connection_is_checked_only_after_sitting_idle(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    pings: list[object] = []
    ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda conn: pings.append(conn) or ping(conn))
    try:
        with engine.connect() as conn:
            backend = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with engine.connect() as conn:  # in use a moment ago: no round trip to check it
            conn.execute(text("SELECT 1"))
        assert pings == []

        # A database restart kills idle connections; one idle long enough is checked and replaced.
        admin = make_engine(database_url)
        try:
            with admin.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
                conn.commit()
        finally:
            admin.dispose()
        monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
        with engine.connect() as conn:
            replaced = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        assert len(pings) == 1
        assert replaced != backend
    finally:
        engine.dispose()


def test_the_migrations_build_the_schema_the_models_describe(engine: Engine) -> None:
    """The code's queries are written against the models, the databases are built by the migrations:
    a table, column, type or index in one and not the other fails here (alembic does not compare a
    partial index's condition; tests/test_outbox.py checks that ix_outbox_pending_request is used)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_stage_reviews_leave_room_for_heap_only_updates_and_the_pending_index_covers_counts(
    postgres_migrated: str,
) -> None:
    """The sweep's claim of a review (its next check time) and the dispatcher's landing (its message) are
    heap-only updates only where the page has room for the new version, and the leads' counts of pending
    stages read the index of pending stages alone (migration 0013; bench/NOTES.md item 42). SQLite has
    neither setting."""
    engine = create_engine(postgres_migrated)
    try:
        with engine.connect() as conn:
            options = conn.scalar(text("SELECT reloptions FROM pg_class WHERE relname = 'stage_reviews'"))
            index = conn.scalar(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_stage_reviews_pending_due'")
            )
        assert options == ["fillfactor=90"]
        assert "(due_at, id) INCLUDE (stage_name, started_at) WHERE" in index
    finally:
        engine.dispose()


def test_readiness_says_whether_the_database_answers_and_asks_once_a_second(database_url: str) -> None:
    """`/readyz`'s check: None while the database answers, the driver's reason when it cannot be reached,
    and checks within a second of each other take the last answer instead of each costing a round trip."""
    seconds = [100.0]
    readiness = Readiness(database_url, monotonic=lambda: seconds[0])
    asked: list[str] = []
    event.listen(readiness.engine, "before_cursor_execute", lambda *args: asked.append(args[2]))
    assert readiness.problem() is None
    assert readiness.problem() is None
    assert asked == ["SELECT 1"]
    seconds[0] += Readiness.CACHE_SECONDS
    assert readiness.problem() is None
    assert asked == ["SELECT 1", "SELECT 1"]
    if database_url.startswith("postgresql"):
        # The socket gives up in seconds on a network gone after connecting (the server's statement
        # timeout cannot fire then), so a hung check does not outlast the outage by minutes.
        with readiness.engine.connect() as connection:
            settings = connection.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
        assert settings["tcp_user_timeout"] == "2000" and settings["keepalives_idle"] == "2", settings
    # Nothing listens on port 9 (discard): refused at once, well inside the connect timeout.
    problem = Readiness("postgresql+psycopg://postgres@127.0.0.1:9/nowhere").problem()
    assert problem is not None and problem.startswith("database unavailable (")


def test_a_readiness_check_that_hangs_holds_no_other_thread() -> None:
    """The check held a lock the others waited on: a database that took minutes to answer (a failover's
    half-open connection) held every server thread that a balancer's checks reached. Now the others take
    the last answer at once, and say the database is not answering once the check has run too long."""
    seconds = [100.0]
    readiness = Readiness("sqlite://", monotonic=lambda: seconds[0])
    assert readiness.problem() is None  # a first answer
    answering, release = threading.Event(), threading.Event()

    def hangs() -> str | None:
        answering.set()
        release.wait(10)
        return None

    readiness._check = hangs  # type: ignore[method-assign]
    seconds[0] += Readiness.CACHE_SECONDS
    stuck = threading.Thread(target=readiness.problem)
    stuck.start()
    assert answering.wait(10)
    assert readiness.problem() is None  # the last answer, without waiting
    seconds[0] += Readiness.HUNG_SECONDS + 1
    assert readiness.problem() == f"database unavailable (no answer in {Readiness.HUNG_SECONDS + 1:.0f} s)"
    release.set()
    stuck.join(10)
    assert not stuck.is_alive()


def test_readyz_answers_503_with_the_reason_and_healthz_stays_ok() -> None:
    from slack_bolt import App

    from bot.server import wsgi_app

    app = App(signing_secret="secret", token="xoxb-test", token_verification_enabled=False)
    problems: list[str | None] = ["database unavailable (OperationalError)", None]
    serve = wsgi_app(app, "secret", ready=lambda: problems.pop(0))

    def get(path: str) -> tuple[str, bytes]:
        statuses: list[str] = []
        environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
        body = b"".join(serve(environ, lambda status, _headers: statuses.append(status)))
        return statuses[0], body

    assert get("/readyz") == ("503 Service Unavailable", b"database unavailable (OperationalError)")
    assert get("/healthz") == ("200 OK", b"ok")
    assert get("/readyz") == ("200 OK", b"ready")

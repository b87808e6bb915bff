"""Engine, sessions and migrations for SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from storage.canonical import canonical_json

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
READ_ONLY_OPTION = "frbot_read_only"
# The audit chain's verifier asks for the same thing by this name: a read that holds no writer off.
READ_SNAPSHOT = READ_ONLY_OPTION
_HOLDS_WRITER = "frbot_holds_sqlite_writer"


_thread_kind = threading.local()


@contextmanager
def background_work() -> Iterator[None]:
    """Mark this thread's transactions as background work (recording receipts, sending the outbox,
    sweeps): on SQLite they let writers that answer Slack go first (see _WriterQueue)."""
    before = _in_background()
    _thread_kind.background = True
    try:
        yield
    finally:
        _thread_kind.background = before


def _in_background() -> bool:
    return getattr(_thread_kind, "background", False)


class _WriterQueue:
    """The SQLite writer lock of one process: one writer at a time, in arrival order, answers to Slack first.

    A submission's receipt, a decision, a question and the everyday forms are saved just after their answer
    (their modals say "received" until they are): these go first. The request's transaction, the outbox's
    outcomes and the sweeps can wait. Under load several background writers wait at once,
    and a plain lock would let an answer wait behind all of them; here it waits at most for the writer
    in progress and the answers queued before it. Each kind waits in arrival order (a plain lock lets the
    writer that just finished take it again before the woken waiters run, so one could wait out its 2 s).
    Background writers are not starved: after URGENT_TURNS answers in a row while one of them waits, it
    goes next.
    """

    URGENT_TURNS = 4

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._held = False
        self._urgent: deque[object] = deque()
        self._background: deque[object] = deque()
        self._urgent_in_a_row = 0

    def waiting(self) -> int:
        with self._changed:
            return len(self._urgent) + len(self._background)

    def acquire(self, timeout: float) -> bool:
        urgent = not _in_background()
        line = self._urgent if urgent else self._background
        ticket = object()
        deadline = time.monotonic() + timeout
        with self._changed:
            line.append(ticket)
            try:
                while self._held or not self._is_next(ticket, urgent):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._changed.wait(remaining)
                self._held = True
                if not urgent:
                    self._urgent_in_a_row = 0
                elif self._background:
                    self._urgent_in_a_row += 1  # counted only while background work waits
                return True
            finally:
                line.remove(ticket)
                if not self._held:
                    self._changed.notify_all()  # gave up at the head of a line: the next one may go

    def _is_next(self, ticket: object, urgent: bool) -> bool:
        background_owed = bool(self._background) and self._urgent_in_a_row >= self.URGENT_TURNS
        if urgent:
            return self._urgent[0] is ticket and not background_owed
        return self._background[0] is ticket and (not self._urgent or background_owed)

    def release(self) -> None:
        with self._changed:
            self._held = False
            self._changed.notify_all()


_sqlite_writers: weakref.WeakKeyDictionary[Engine, _WriterQueue] = weakref.WeakKeyDictionary()


def sqlite_writer_queue(engine: Engine) -> _WriterQueue:
    """The queue the writers of this SQLite engine wait in (for tests and diagnostics)."""
    return _sqlite_writers[engine]


class DatabaseUnavailable(Exception):
    """The database could not be reached or stayed locked; nothing was saved."""


# A pooled PostgreSQL connection idle longer than this is checked (one round trip) before it is used: a
# database restart leaves idle connections dead. One in use a moment ago is not: under load every check
# is a round trip on the path of an answer to Slack (see _ping_when_idle).
PING_AFTER_IDLE_SECONDS = 1.0

# Every form is saved just after its answer, and given back with its answers if it cannot be: waiting
# longer than this for a lock or a connection would keep the user looking at "received" for nothing.
# Short waits fail fast instead.
LOCK_WAIT_SECONDS = 2


class Readiness:
    """Whether this process can reach its database now, for a load balancer's readiness check.

    A process whose database is down still answers Slack (each user is told their form could not be
    saved), so liveness (`/healthz`) cannot tell a balancer to send requests elsewhere; this can.

    - The answer is kept for `CACHE_SECONDS`: checks from several balancers cost one round trip a second.
    - Each check opens a connection of its own (no pool), bounded by the connect and statement timeouts:
      a pool that is only busy does not make the process look down, and a pooled connection left
      half-open by a failover cannot hold the check for minutes.
    - One check at a time, and nobody waits for it: while it runs, others take the last answer, so a
      check that hangs holds one server thread, not every thread that answers Slack; once it has run
      longer than `HUNG_SECONDS`, they say the database is not answering.
    """

    CACHE_SECONDS = 1.0
    HUNG_SECONDS = 2.0 * LOCK_WAIT_SECONDS

    def __init__(self, url: str | URL, monotonic: Callable[[], float] = time.monotonic) -> None:
        url = make_url(url)
        if url.get_backend_name() == "sqlite":
            connect_args: dict[str, Any] = {"timeout": LOCK_WAIT_SECONDS, "check_same_thread": False}
        else:
            connect_args = {
                "connect_timeout": LOCK_WAIT_SECONDS,
                "options": f"-c statement_timeout={LOCK_WAIT_SECONDS * 1000}",
                # The statement timeout is the server's: a network gone after connecting would leave the
                # check waiting on the socket for the kernel's retransmissions (about 15 minutes), unable
                # to see the database come back meanwhile. The socket gives up in seconds instead.
                "tcp_user_timeout": LOCK_WAIT_SECONDS * 1000,
                "keepalives": 1,
                "keepalives_idle": LOCK_WAIT_SECONDS,
                "keepalives_interval": 1,
                "keepalives_count": 2,
            }
        self.engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
        self.monotonic = monotonic
        self._checking = threading.Lock()
        self._started: float | None = None  # when the check under way began
        self._checked_at: float | None = None
        self._problem: str | None = "database not checked yet"

    def problem(self) -> str | None:
        """None when the database answered a `SELECT 1`; otherwise why not, in one line."""
        now = self.monotonic()
        if self._checked_at is not None and now - self._checked_at < self.CACHE_SECONDS:
            return self._problem
        if not self._checking.acquire(blocking=False):
            started = self._started
            if started is not None and now - started > self.HUNG_SECONDS:
                return f"database unavailable (no answer in {now - started:.0f} s)"
            return self._problem
        try:
            self._started = now
            problem = self._check()
            self._problem, self._checked_at = problem, self.monotonic()
            return problem
        finally:
            self._started = None
            self._checking.release()

    def _check(self) -> str | None:
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except SQLAlchemyError as exc:  # the driver's error inside DBAPIError says more than SQLAlchemy's
            return f"database unavailable ({type(getattr(exc, 'orig', None) or exc).__name__})"
        return None


def make_engine(url: str, **kwargs: Any) -> Engine:
    # JSON columns are stored canonically, the form the audit chain hashes (storage/canonical.py).
    kwargs.setdefault("json_serializer", canonical_json)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": LOCK_WAIT_SECONDS}, **kwargs
        )
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_timeout", LOCK_WAIT_SECONDS)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("connect_timeout", LOCK_WAIT_SECONDS)
    connect_args.setdefault("options", f"-c lock_timeout={LOCK_WAIT_SECONDS * 1000}")
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Replace a pooled connection broken by a database restart, checking only connections that sat idle.

    SQLAlchemy's pool_pre_ping checks every checkout: a round trip before every transaction, and under load
    each round trip waits for the database's process and for this one's GIL. A connection checked in less
    than PING_AFTER_IDLE_SECONDS ago is used as it is; if the database went away in that second, the
    statement fails as any outage does (DatabaseUnavailable: the user is told "not saved") and SQLAlchemy
    discards the pool's connections, so the next transaction connects afresh.
    """

    @event.listens_for(engine.pool, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["frbot_idle_since"] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("frbot_idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return  # just connected, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError("pooled connection is broken") from exc  # the pool reconnects


def _configure_sqlite(engine: Engine) -> None:
    """Serialise writers with BEGIN IMMEDIATE so two transactions never deadlock on lock upgrade."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let us issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={LOCK_WAIT_SECONDS * 1000}")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    # Writers of this process queue here before BEGIN IMMEDIATE. SQLite's own busy handler makes a waiting
    # writer sleep and retry (1, 2, 5 … 100 ms apart), so under load a writer could sleep through many
    # commits and wait far longer than the queue ahead of it: the long tails of submissions. A waiter here
    # is woken as soon as the writer before it ends. Other processes still meet the busy handler.
    writer = _WriterQueue()
    _sqlite_writers[engine] = writer

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Readers need no write lock: only transactions that may write take it up front (WAL gives
        # readers a snapshot, so long reads such as verifying the audit chain do not hold writers off).
        if connection.get_execution_options().get(READ_ONLY_OPTION, False):
            connection.exec_driver_sql("BEGIN DEFERRED")
            return
        if not writer.acquire(timeout=LOCK_WAIT_SECONDS):
            raise OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked"))
        connection.info[_HOLDS_WRITER] = True
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _release(connection)
            raise

    def _release(holder: Any) -> None:
        try:
            info = holder.info
        except NotImplementedError:  # the engine's first connect, made outside the pool
            return
        if info.pop(_HOLDS_WRITER, False):
            writer.release()

    # Released once the transaction has ended in SQLite (after COMMIT or ROLLBACK, which is also how the
    # pool resets a returned connection), so the next writer's BEGIN IMMEDIATE does not meet it still busy.
    dialect = engine.dialect
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def _commit_then_release(dbapi_connection: Any) -> None:
        try:
            commit(dbapi_connection)
        finally:
            _release(dbapi_connection)

    def _rollback_then_release(dbapi_connection: Any) -> None:
        try:
            rollback(dbapi_connection)
        finally:
            _release(dbapi_connection)

    dialect.do_commit = _commit_then_release  # type: ignore[method-assign]
    dialect.do_rollback = _rollback_then_release  # type: ignore[method-assign]
    # A connection dropped without either (invalidated, or closed by its pool) gives the lock back too.
    event.listen(engine.pool, "checkin", lambda _dbapi, record: _release(record))
    event.listen(engine.pool, "invalidate", lambda _dbapi, record, _exc: _release(record))


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def dialect_of(factory: sessionmaker[Session]) -> str:
    """The name of the database a session factory's engine talks to: "postgresql" or "sqlite"."""
    return str(factory.kw["bind"].dialect.name)


def kept_for_the_commit(key: str, fault: Callable[[], Exception]) -> None:
    """Refuse to commit a transaction whose session still holds `session.info[key]`: work kept for the
    end of the transaction (rows to insert, events to chain) that the code keeping it must take and write
    before the commit, or the commit would go without it. A savepoint's release is not the commit."""

    def written_before_commit(session: Session) -> None:
        if session.info.get(key) and not session.in_nested_transaction():
            raise fault()

    event.listen(Session, "before_commit", written_before_commit)


@contextmanager
def transaction(
    factory: sessionmaker[Session], read_only: bool = False, single_statement: bool = False
) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error, map outages to DatabaseUnavailable.

    `read_only` lets SQLite readers run beside a writer instead of queueing for the write lock.
    `single_statement`: the unit is one statement, atomic by itself (or reads that share no snapshot: each
    is checked again where it counts), so on PostgreSQL it runs without BEGIN and COMMIT (two round trips
    fewer); on SQLite a write still queues for the writer lock like any write.
    """
    session = factory()
    try:
        options: dict[str, Any] = {READ_ONLY_OPTION: True} if read_only else {}
        if single_statement and session.get_bind().dialect.name == "postgresql":
            options["isolation_level"] = "AUTOCOMMIT"
        if options:
            session.connection(execution_options=options)
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        raise DatabaseUnavailable(_short(exc)) from exc
    except PoolTimeout as exc:  # every connection busy for LOCK_WAIT_SECONDS
        session.rollback()
        raise DatabaseUnavailable("no free database connection") from exc
    except DBAPIError as exc:
        session.rollback()
        if exc.connection_invalidated:
            raise DatabaseUnavailable(_short(exc)) from exc
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _short(exc: DBAPIError) -> str:
    return str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def recreate_schema(url: str) -> None:
    """Drop every table and migrate afresh. Only for throwaway test and benchmark databases."""
    if url.startswith("postgresql"):
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("DROP SCHEMA public CASCADE")
                conn.exec_driver_sql("CREATE SCHEMA public")
        finally:
            engine.dispose()
    migrate(url)


def migrate(url: str) -> None:
    """Bring the schema to the newest revision; safe to run on every start."""
    command.upgrade(alembic_config(url), "head")

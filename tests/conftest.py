"""Shared fixtures: one database per test on SQLite and on PostgreSQL, a test policy, the workflow.

PostgreSQL tests use the database named by FRBOT_TEST_POSTGRES_URL (CI creates a throwaway one). Without it
they skip, unless FRBOT_REQUIRE_POSTGRES=1 (set by CI), which turns that skip into a failure so a CI run
can never pass by silently skipping PostgreSQL.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import Engine, event, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from bot.approvers import ApproverDirectory, StaticGroupSource
from bot.forms import RequestForm
from bot.intake import modal_updater
from bot.policy import LoadedPolicy, parse_policy
from bot.server import EVENTS_PATH
from bot.workflow import MODAL_UPDATE, Workflow
from storage.db import make_engine, make_session_factory, migrate, recreate_schema, transaction
from storage.models import Base, OutboxMessage

POSTGRES_ENV = "FRBOT_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "FRBOT_REQUIRE_POSTGRES"
SPECS_ENV = "FRBOT_SLACK_SPECS"

TEST_POLICY = """
timezone: Europe/London
case_reference:
  pattern: '^[A-Z0-9]{2,6}/[0-9]{4,8}/[0-9]{2}$'
  example: CRIM/123456/26
min_justification_length: 20
offence_categories:
  - {id: violence, label: Violence against the person}
  - {id: missing, label: Missing person}
tools:
  - {id: force-rfr, name: Force RFR, category: force_retrospective, status: approved, jurisdiction: UK}
  - id: engine-a
    name: Engine A
    category: third_party_online
    status: restricted
    jurisdiction: Outside UK
    dpia_reference: DPIA-1
    min_seriousness: serious
  - {id: engine-b, name: Engine B, category: third_party_online, status: prohibited, jurisdiction: Outside UK,
     note: "High, if not insurmountable, bar to lawful use."}
  - {id: lfr, name: Live FR, category: live, status: restricted, jurisdiction: UK}
own_process:
  live: Live FR deployments are authorised under the LFR procedure, not here.
stages:
  - {id: supervisor, name: Supervisor review, channel: C0SUPER, approvers: [USUP1, USUP2, S0SUPERS]}
  - {id: authoriser, name: Authorising officer, channel: C0AUTH, approvers: [UAUTH1, UAUTH2, UAUTH3],
     required_approvals: 2}
  - {id: dpo, name: Data protection, channel: C0DPO, approvers: [UDPO1]}
routes:
  - name: Online engines
    when: {tool_category: [third_party_online]}
    stages: [supervisor, authoriser, dpo]
  - name: Threat to life
    when: {urgency: [threat_to_life]}
    stages: [authoriser]
default_route: [supervisor]
approval_validity_hours: {routine: 72, urgent: 24, threat_to_life: 6}
leads_channel: C0LEADS
leads: [ULEAD1]
"""

GROUPS = {"S0SUPERS": {"USUP3"}}


def valid_form_values(**overrides: str) -> dict[str, str]:
    """Raw modal values (as read from view.state) for a request that passes the test policy."""
    values = {
        "tool": "force-rfr",
        "case_reference": "crim/123456/26",
        "purpose": "investigation",
        "purpose_detail": "Identify the suspect in a street robbery caught on CCTV.",
        "offence_category": "violence",
        "offence_seriousness": "serious",
        "subject_category": "suspect",
        "subject_is_child": "no",
        "image_source": "cctv",
        "image_authority": "Seized under s.19 PACE, exhibit JS/1",
        "necessity": "House-to-house and CCTV trawl have not identified the suspect.",
        "alternatives": "Circulated internally, no identification after two weeks.",
        "proportionality": "Serious violence with injury; search limited to the one image.",
        "collateral_intrusion": "Only the suspect's face is cropped; bystanders removed.",
        "equality": "Results treated as intelligence only, corroborated before any action.",
        "urgency": "routine",
        "urgency_justification": "",
    }
    values.update(overrides)
    return values


def signed_environ(secret: str, body: str, content_type: str) -> dict[str, Any]:
    """The WSGI environ of a request Slack signed with `secret`, as waitress hands it to
    `bot.server.wsgi_app` (for tests that call the app in-process, without a server)."""
    timestamp = str(int(time.time()))
    raw = body.encode()
    return {
        "PATH_INFO": EVENTS_PATH,
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(raw)),
        "QUERY_STRING": "",
        "HTTP_X_SLACK_REQUEST_TIMESTAMP": timestamp,
        "HTTP_X_SLACK_SIGNATURE": SignatureVerifier(secret).generate_signature(
            timestamp=timestamp, body=body
        ),
        "wsgi.input": io.BytesIO(raw),
    }


def slack_state(values: dict[str, str]) -> dict[str, dict[str, dict[str, object]]]:
    """The same values in the shape Slack sends in view.state.values."""
    from bot import forms

    state: dict[str, dict[str, dict[str, object]]] = {}
    for field in forms.FIELD_ORDER:
        value = values.get(field.block_id)
        if isinstance(field, forms.SelectField):
            kind = "radio_buttons" if field.radio else "static_select"
            option = {"value": value, "text": {"type": "plain_text", "text": value}} if value else None
            state[field.block_id] = {forms.ACTION_ID: {"type": kind, "selected_option": option}}
        else:
            state[field.block_id] = {forms.ACTION_ID: {"type": "plain_text_input", "value": value or None}}
    return state


@pytest.fixture(scope="session")
def policy() -> LoadedPolicy:
    return parse_policy(TEST_POLICY, "test-policy.yml")


@pytest.fixture
def form(policy: LoadedPolicy) -> RequestForm:
    from bot.forms import check_request

    return check_request(policy.policy, valid_form_values())


# --- Databases -----------------------------------------------------------------------------------


def _postgres_url() -> str | None:
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
        pytest.fail(
            f"{REQUIRE_POSTGRES_ENV}=1 but {POSTGRES_ENV} is not set: PostgreSQL tests would be skipped"
        )
    pytest.skip(f"{POSTGRES_ENV} not set: PostgreSQL tests skipped (CI runs them)")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrate once; each test gets a copy, which is far quicker than migrating again."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_migrated() -> str:
    url = _postgres_url()
    assert url is not None
    try:
        recreate_schema(url)
    except OperationalError as exc:
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            raise
        pytest.skip(f"PostgreSQL at {POSTGRES_ENV} is not reachable: {exc}")
    return url


def _truncate_postgres(url: str) -> None:
    engine = make_engine(url)
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        # TRUNCATE does not fire the append-only audit triggers (they guard UPDATE and DELETE).
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path / "fr-bot.db"
        shutil.copy(template, path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("postgres_migrated")
    _truncate_postgres(url)
    yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@contextmanager
def statements_run(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements sent on `engine` inside the block, in order (to count a path's queries)."""
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", seen)


# Tests of per-thread CPU priority (bot/foreground.py BackgroundPriority): only Linux gives threads their own.
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="a thread's own niceness is Linux's"
)


def in_a_new_thread(work: Callable[[], Any]) -> Any:
    """What `work` returns when run in a thread of its own (a thread's niceness and slice are its own)."""
    seen: list[Any] = []
    worker = threading.Thread(target=lambda: seen.append(work()))
    worker.start()
    worker.join(timeout=10)
    return seen[0]


def _kernel_takes_a_thread_slice() -> bool:
    """Whether this kernel keeps a fair thread's own time slice (Linux 6.12+), tried in a throwaway
    thread."""
    from bot.foreground import ANSWER_SLICE

    def attempt() -> int | None:
        ANSWER_SLICE.set_this_thread(300)
        return ANSWER_SLICE.of_this_thread()

    return in_a_new_thread(attempt) == 300


needs_thread_slices = pytest.mark.skipif(
    not _kernel_takes_a_thread_slice(), reason="this kernel keeps no per-thread time slice (Linux 6.12+ does)"
)


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 90.0, every: float = 0.2) -> Any:
    """Poll `condition` until it holds and return its value; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)
    return value


class FakeClock:
    """A settable clock the workflow reads instead of the wall clock."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def workflow(engine: Engine, policy: LoadedPolicy, clock: FakeClock) -> Workflow:
    directory = ApproverDirectory(StaticGroupSource({k: set(v) for k, v in GROUPS.items()}))
    return Workflow(make_session_factory(engine), policy, directory, clock=clock)


@pytest.fixture
def no_give_back_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A form that could not be saved is given back at once (handlers/views.py waits a second in the bot,
    for Slack to show the answer first)."""
    from handlers import views as view_handlers

    monkeypatch.setattr(view_handlers, "GIVE_BACK_DELAY_SECONDS", 0.0)


def queued_modal_updates(db: sessionmaker[Session]) -> list[OutboxMessage]:
    """The modal updates the workflow queued ("received" modals' outcomes), in order."""
    with transaction(db, read_only=True) as session:
        query = select(OutboxMessage).where(OutboxMessage.kind == MODAL_UPDATE).order_by(OutboxMessage.id)
        return list(session.scalars(query))


def send_modal_updates(db: sessionmaker[Session], client: WebClient) -> None:
    """What the outbox does with the queued modal updates once due (bot/outbox.py runs the sender by kind)."""
    update = modal_updater(client)
    for row in queued_modal_updates(db):
        update(row.payload)


# The end-to-end fixtures (stand-in, bot process, driver), shared by every e2e test module.
from tests.e2e_support import backend_url, bot, slack, stub  # noqa: E402, F401


def specs_dir() -> Path:
    """The Slack contract folder, or skip with the reason."""
    value = os.environ.get(SPECS_ENV)
    if not value:
        pytest.skip(f"{SPECS_ENV} not set: point it at shared/slack-specs to check Slack's contracts")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"{SPECS_ENV}={value} is not a folder")
    return path

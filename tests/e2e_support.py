"""Shared by the end-to-end tests: the Slack stand-in, the real bot process, a signed-request driver, steps.

The fixtures are made available to every test module by tests/conftest.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bot import forms, views
from bot.copies import METADATA_EVENT_TYPE
from tests.botprocess import BOT_TOKEN, SIGNING_SECRET, BotProcess
from tests.conftest import GROUPS, TEST_POLICY, _truncate_postgres, slack_state, valid_form_values
from tests.slackstub import SlackDriver, SlackStub


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path_factory.mktemp("e2e") / "fr-bot.db"
        shutil.copy(template, path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_migrated")
    _truncate_postgres(url)
    return url


@pytest.fixture(scope="module")
def stub() -> Iterator[SlackStub]:
    with SlackStub() as running:
        for group, members in GROUPS.items():
            running.add_usergroup(group, sorted(members))
        running.metadata_subscriptions = {METADATA_EVENT_TYPE}  # as manifest.yml subscribes
        yield running


def report_landings_to(stub: SlackStub, bot: BotProcess | None) -> None:
    """Have the stand-in report where the bot's posts landed to this bot, as Slack's Events API does."""
    stub.event_sink = SlackDriver(bot.url, SIGNING_SECRET, stub=stub).deliver if bot is not None else None


@pytest.fixture(scope="module")
def bot(
    request: pytest.FixtureRequest,
    backend_url: str,
    stub: SlackStub,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BotProcess]:
    """The real bot for this module; a module may set BOT_ENV (extra FRBOT_* settings) for its bot."""
    workdir = tmp_path_factory.mktemp("bot")
    policy = workdir / "policy.yml"
    policy.write_text(TEST_POLICY)
    extra_env: dict[str, str] = getattr(request.module, "BOT_ENV", {})
    process = BotProcess(backend_url, policy, stub.base_url, workdir, **extra_env).start()
    report_landings_to(stub, process)
    yield process
    report_landings_to(stub, None)
    code = process.stop()
    log = process.log()
    assert code == 0, f"bot did not exit cleanly ({code}):\n{log}"
    assert "Traceback" not in log, log
    assert BOT_TOKEN not in log and SIGNING_SECRET not in log


@pytest.fixture
def slack(bot: BotProcess, stub: SlackStub) -> Iterator[SlackDriver]:
    stub.clear()
    stub.violations.clear()
    yield SlackDriver(bot.url, SIGNING_SECRET, stub=stub)
    stub.assert_no_violations()


# --- Steps a person takes ------------------------------------------------------------------------


def open_form(slack: SlackDriver, stub: SlackStub, user: str) -> dict[str, Any]:
    status, body = slack.slash_command("/fr-request", "", user)
    assert status == 200, body
    call = stub.wait_for(
        lambda c: (
            c.method == "views.open" and c.ok and c.response["view"]["callback_id"] == views.REQUEST_CALLBACK
        )
    )
    return call.response["view"]


def submit_form(slack: SlackDriver, view: dict[str, Any], user: str, **overrides: str) -> tuple[int, Any]:
    status, answer = slack.view_submission(user, view, slack_state(valid_form_values(**overrides)))
    assert slack.stub is not None
    return status, outcome_of(slack.stub, view, answer)


def outcome_of(stub: SlackStub, view: dict[str, Any], answer: Any) -> Any:
    """What a modal shows once its form is recorded or refused. The bot answers a valid form at once ("Request
    received", "Decision received", "Comment received"…), then updates the modal with the outcome
    (handlers/views.py, bot/intake.py): this is that update, as if the answer had carried it. Any other
    answer is returned as it is."""
    if not (isinstance(answer, dict) and answer.get("response_action") == "update"):
        return answer
    if not str(answer["view"]["title"]["text"]).endswith(" received"):
        return answer
    return {"response_action": "update", "view": view_sent(stub, view["id"], taken=True)}


def posted_message(stub: SlackStub, channel: str, contains: str) -> dict[str, Any]:
    """The current state of the bot's post to `channel` (a user id: the DM) whose fallback text contains
    `contains`, once posted."""
    call = stub.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.ok
            and c.args.get("channel") == channel
            and contains in c.args.get("text", "")
        )
    )
    return stub.message(call.response["channel"], call.response["ts"])


def reviewer_message(stub: SlackStub, channel: str, reference: str) -> dict[str, Any]:
    """The current state of the request's message in a reviewer channel, once posted."""
    return posted_message(stub, channel, reference)


def submitted_reference(stub: SlackStub, officer: str) -> str:
    """The reference of the officer's request, from the direct message that confirms it (for a form the
    stand-in never opened, whose modal the bot cannot update)."""
    call = stub.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.ok
            and c.args.get("channel") == officer
            and "FR-20" in c.args.get("text", "")
        ),
        timeout=15,
    )
    return reference_of(call.args.get("text", ""))


def reference_of(body: Any) -> str:
    text = json.dumps(body)
    start = text.index("FR-20")
    return text[start : start + len("FR-2026-00000")]


def buttons(message: dict[str, Any]) -> list[str]:
    return [
        element["action_id"]
        for block in message.get("blocks", [])
        if block["type"] == "actions"
        for element in block["elements"]
    ]


def click(slack: SlackDriver, user: str, action_id: str, message: dict[str, Any]) -> None:
    status, _ = slack.block_action(user, action_id, message=message)
    assert status == 200


def decide(
    slack: SlackDriver,
    stub: SlackStub,
    user: str,
    action_id: str,
    message: dict[str, Any],
    outcome: bool = True,
    **fields: str,
) -> tuple[int, Any]:
    """Click `action_id` on the request's message and submit the form it opens with `fields`; the answer,
    or with `outcome` what the modal shows once the decision (or question) is recorded (`outcome_of`)."""
    stub.clear()
    click(slack, user, action_id, message)
    opened = stub.wait_for("views.open")
    assert opened.ok, opened.describe()
    view = opened.response["view"]
    state = {block_id: {forms.ACTION_ID: _entry(view, block_id, value)} for block_id, value in fields.items()}
    status, answer = slack.view_submission(user, view, state)
    return status, outcome_of(stub, view, answer) if outcome else answer


def view_sent(stub: SlackStub, view_id: str, taken: bool = False, timeout: float = 15) -> dict[str, Any]:
    """The view of the bot's first views.update of the modal `view_id`; with `taken`, the first Slack took
    (an update of a modal that is gone is refused as not_found)."""
    call = stub.wait_for(
        lambda c: c.method == "views.update" and c.args.get("view_id") == view_id and (c.ok or not taken),
        timeout=timeout,
    )
    shown = call.args["view"]
    return json.loads(shown) if isinstance(shown, str) else shown


def _entry(view: dict[str, Any], block_id: str, value: str) -> dict[str, Any]:
    block = next(b for b in view["blocks"] if b.get("block_id") == block_id)
    kind = block["element"]["type"]
    if kind == "static_select":
        return {
            "type": kind,
            "selected_option": {"value": value, "text": {"type": "plain_text", "text": value}},
        }
    return {"type": kind, "value": value}


def wait_for_message(
    stub: SlackStub, channel: str, ts: str, condition: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The stored message once an update has made `condition` true (updates arrive asynchronously)."""
    stub.wait_for(lambda c: c.method == "chat.update" and condition(stub.message(channel, ts)))
    return stub.message(channel, ts)


def dms_to(stub: SlackStub, user: str) -> list[str]:
    return [
        c.args.get("text", "")
        for c in stub.calls_to("chat.postMessage")
        if c.args.get("channel") == user and c.ok
    ]

"""`fr-bot` as operators run it: every expected failure is one line naming the problem, exit 2, no traceback.

The main cases run the real CLI in a subprocess with FRBOT_* variables removed and a temporary working
folder, so neither the developer's environment nor a `.env` file can leak in. Variations that fail before
the bot configures logging or touches a database run `bot.cli.main` in process, which is much quicker.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import EXIT_CONFIG, main
from bot.config import SettingsError, load_settings
from bot.policy import load_policy

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_POLICY = ROOT / "policy.example.yml"
BOT_TOKEN = "xoxb-1111-2222-abcdefghijkl"
APP_TOKEN = "xapp-1-A111-2222-abcdef"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def fr_bot(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("FRBOT_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def config_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of an expected failure, checking the exit code and that no traceback shows."""
    assert result.returncode == EXIT_CONFIG, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fr-bot: ")
    return lines[0]


# --- The real command, in a subprocess --------------------------------------------------------------


def test_run_without_tokens_names_the_bot_token(tmp_path: Path) -> None:
    line = config_error(fr_bot(tmp_path, "run"))
    assert line == "fr-bot: FRBOT_SLACK_BOT_TOKEN is not set: see README.md, 'Create the Slack app'."


def test_run_with_a_token_of_the_wrong_kind(tmp_path: Path) -> None:
    user_token = "xoxp-user-token-123456"
    line = config_error(fr_bot(tmp_path, "run", FRBOT_SLACK_BOT_TOKEN=user_token))
    assert "FRBOT_SLACK_BOT_TOKEN must start with 'xoxb-'" in line
    assert user_token not in line  # the message never echoes a token


def test_http_mode_needs_the_signing_secret(tmp_path: Path) -> None:
    line = config_error(fr_bot(tmp_path, "run", FRBOT_MODE="http", FRBOT_SLACK_BOT_TOKEN=BOT_TOKEN))
    assert "FRBOT_SLACK_SIGNING_SECRET is not set" in line


def test_bad_http_port(tmp_path: Path) -> None:
    line = config_error(fr_bot(tmp_path, "run", FRBOT_HTTP_PORT="abc"))
    assert line.startswith("fr-bot: invalid setting FRBOT_HTTP_PORT: ")


@pytest.mark.parametrize("url", ["mysql://fr:pw@db/fr", "postgresql+psycopg2://fr:pw@db/fr"])
def test_bad_database_url_scheme(tmp_path: Path, url: str) -> None:
    """A driver the bot does not ship (psycopg2) is refused with one line, not a traceback at connect."""
    line = config_error(fr_bot(tmp_path, "migrate", FRBOT_DATABASE_URL=url))
    assert line.startswith("fr-bot: invalid setting FRBOT_DATABASE_URL: ")
    assert "sqlite:///" in line and "postgresql+psycopg://" in line


def test_missing_policy_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "config" / "fr-policy.yml"
    database = tmp_path / "never-created.db"
    line = config_error(
        fr_bot(
            tmp_path,
            "run",
            FRBOT_SLACK_BOT_TOKEN=BOT_TOKEN,
            FRBOT_SLACK_APP_TOKEN=APP_TOKEN,
            FRBOT_POLICY_FILE=str(missing),
            FRBOT_DATABASE_URL=f"sqlite:///{database}",
        )
    )
    assert line.startswith(f"fr-bot: {missing}: policy file not found")
    assert not database.exists()  # the policy is checked before the database is touched
    assert BOT_TOKEN not in line and APP_TOKEN not in line


def test_check_policy_accepts_the_example(tmp_path: Path) -> None:
    result = fr_bot(tmp_path, "check-policy", str(EXAMPLE_POLICY))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    version = load_policy(EXAMPLE_POLICY).version
    assert result.stdout == (
        f"{EXAMPLE_POLICY}: OK (version {version}): "
        "4 tools, 3 stages, 3 routing rules plus the default route\n"
    )


def test_migrate_creates_the_schema_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "data" / "fr-bot.db"
    path.parent.mkdir()
    url = f"sqlite:///{path}"
    for _ in range(2):
        result = fr_bot(tmp_path, "migrate", FRBOT_DATABASE_URL=url)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout == f"database at {url} is at the newest schema\n"
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert {"fr_requests", "stage_reviews", "decisions", "audit_events", "outbox"} <= tables
    assert len(versions) == 1


def test_migrate_error_names_the_setting_but_not_the_password(tmp_path: Path) -> None:
    # Nothing listens on port 1, so the connection is refused at once.
    url = "postgresql://frbot:s3cret-pw@127.0.0.1:1/frbot"
    line = config_error(fr_bot(tmp_path, "migrate", FRBOT_DATABASE_URL=url))
    assert line.startswith("fr-bot: FRBOT_DATABASE_URL: cannot open or migrate the database: ")
    assert "s3cret-pw" not in line


# --- Variations, in process ---------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in list(os.environ):
        if key.startswith("FRBOT_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no .env, and relative paths land here
    return tmp_path


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def only_error_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run_main(capsys, *argv)
    assert (code, out) == (EXIT_CONFIG, "")
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fr-bot: "), err
    return lines[0]


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FRBOT_SLACK_BOT_TOKEN": "   "}, "FRBOT_SLACK_BOT_TOKEN is not set"),
        ({"FRBOT_SLACK_BOT_TOKEN": APP_TOKEN}, "FRBOT_SLACK_BOT_TOKEN must start with 'xoxb-'"),
        ({"FRBOT_SLACK_BOT_TOKEN": BOT_TOKEN}, "FRBOT_SLACK_APP_TOKEN is not set"),
        ({"FRBOT_SLACK_BOT_TOKEN": BOT_TOKEN, "FRBOT_SLACK_APP_TOKEN": BOT_TOKEN},
         "FRBOT_SLACK_APP_TOKEN must start with 'xapp-'"),
        ({"FRBOT_HTTP_PORT": "70000"}, "FRBOT_HTTP_PORT"),
        ({"FRBOT_HTTP_PORT": "0"}, "FRBOT_HTTP_PORT"),
        ({"FRBOT_MODE": "websocket"}, "FRBOT_MODE"),
        ({"FRBOT_LOG_LEVEL": "LOUD"}, "FRBOT_LOG_LEVEL"),
        ({"FRBOT_SLACK_API_URL": "slack.com/api"}, "FRBOT_SLACK_API_URL"),
        ({"FRBOT_OUTBOX_POLL_SECONDS": "0"}, "FRBOT_OUTBOX_POLL_SECONDS"),
        ({"FRBOT_DATABASE_URL": "fr-bot.db"}, "FRBOT_DATABASE_URL"),
    ],
)  # fmt: skip
def test_run_settings_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    line = only_error_line(capsys, "run")
    assert message in line
    for name, value in env.items():
        if "TOKEN" in name:
            assert value not in line


@pytest.mark.usefixtures("clean_env")
def test_mode_and_port_options_override_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FRBOT_SLACK_BOT_TOKEN", BOT_TOKEN)
    assert "FRBOT_SLACK_SIGNING_SECRET is not set" in only_error_line(capsys, "run", "--mode", "http")
    assert "FRBOT_HTTP_PORT" in only_error_line(capsys, "run", "--mode", "http", "--port", "70000")


def test_check_policy_default_is_policy_yml_in_the_working_folder(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert only_error_line(capsys, "check-policy").startswith("fr-bot: policy.yml: policy file not found")
    (clean_env / "policy.yml").write_text(EXAMPLE_POLICY.read_text(encoding="utf-8"), encoding="utf-8")
    code, out, err = run_main(capsys, "check-policy")
    assert (code, err) == (0, "")
    assert out.startswith("policy.yml: OK (version ")


def test_check_policy_uses_the_policy_file_setting(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FRBOT_POLICY_FILE", str(EXAMPLE_POLICY))
    code, out, _err = run_main(capsys, "check-policy")
    assert code == 0
    assert out.startswith(f"{EXAMPLE_POLICY}: OK")


def test_check_policy_reports_the_problems(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = clean_env / "policy.yml"
    text = EXAMPLE_POLICY.read_text(encoding="utf-8")
    policy.write_text(
        text.replace("C0SUPERVISE", "supervisors").replace("timezone: Europe/London", "timezone: Mars")
    )
    code, out, err = run_main(capsys, "check-policy", "policy.yml")
    assert (code, out) == (EXIT_CONFIG, "")
    assert err.splitlines() == [
        "fr-bot: policy.yml: timezone: unknown timezone 'Mars' (use an IANA name such as Europe/London)",
        "policy.yml: stages.0.channel: 'supervisors' is not a Slack channel ID "
        "(C… or G…; copy it from the channel details)",
    ]
    policy.write_text(
        text.replace("default_route: [supervisor, authorising_officer]", "default_route: [boss]")
    )
    line = only_error_line(capsys, "check-policy", "policy.yml")
    assert line.startswith("fr-bot: policy.yml: default_route.0: unknown stage 'boss'")
    policy.write_text("timezone: Europe/London\ntools: [unclosed\n")
    line = only_error_line(capsys, "check-policy", "policy.yml")
    assert line.startswith("fr-bot: policy.yml: line 3, column 1: not valid YAML")


@pytest.mark.usefixtures("clean_env")
def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve"])
    assert exited.value.code == 2
    assert "usage: fr-bot" in capsys.readouterr().err


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://fr:pw@db:5432/fr", "postgresql+psycopg://fr:pw@db:5432/fr"),
        ("postgresql://fr:pw@db:5432/fr", "postgresql+psycopg://fr:pw@db:5432/fr"),
        ("postgresql+psycopg://fr@db/fr", "postgresql+psycopg://fr@db/fr"),
        ("sqlite:///fr-bot.db", "sqlite:///fr-bot.db"),
    ],
)
def test_database_urls_are_normalised_to_psycopg3(url: str, expected: str) -> None:
    assert load_settings(database_url=url).database_url == expected


def test_settings_read_the_environment_and_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("FRBOT_HTTP_PORT=8080\nFRBOT_MODE=http\n")
    assert (load_settings().mode, load_settings().http_port) == ("http", 8080)
    monkeypatch.setenv("FRBOT_HTTP_PORT", "9090")  # the environment wins over .env
    assert load_settings().http_port == 9090


@pytest.mark.usefixtures("clean_env")
def test_slack_api_url_gets_its_trailing_slash() -> None:
    assert load_settings().slack_api_url == "https://slack.com/api/"
    assert load_settings(slack_api_url="http://127.0.0.1:9/api").slack_api_url == "http://127.0.0.1:9/api/"


@pytest.mark.usefixtures("clean_env")
def test_complete_credentials_pass() -> None:
    load_settings(slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN).require_slack_credentials()
    load_settings(
        mode="http", slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET
    ).require_slack_credentials()
    with pytest.raises(SettingsError, match="FRBOT_SLACK_SIGNING_SECRET"):
        load_settings(
            mode="http", slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN
        ).require_slack_credentials()

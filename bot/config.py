"""Runtime settings, read from the environment and an optional `.env` file.

Every setting has the prefix ``FRBOT_`` so it cannot collide with other software on a shared host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.foreground import DEFAULT_ANSWER_SLICE_US, DEFAULT_BACKGROUND_NICENESS

DEFAULT_DATABASE_URL = "sqlite:///fr-bot.db"
DEFAULT_SLACK_API_URL = "https://slack.com/api/"


class SettingsError(Exception):
    """A setting is missing or malformed; the message names it and says what to do."""


# The database URL schemes the bot has drivers for (SQLite's is in Python; psycopg 3 is a dependency).
DATABASE_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql+psycopg")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FRBOT_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    slack_bot_token: SecretStr | None = Field(None, description="Bot token (xoxb-…) from OAuth & Permissions")
    slack_signing_secret: SecretStr | None = Field(None, description="Signing secret from Basic Information")
    slack_app_token: SecretStr | None = Field(None, description="App-level token (xapp-…) for Socket Mode")
    slack_api_url: str = Field(DEFAULT_SLACK_API_URL, description="Slack Web API base URL")
    database_url: str = Field(DEFAULT_DATABASE_URL, description="SQLAlchemy database URL")
    policy_file: Path = Field(Path("policy.yml"), description="Path of the admins' policy file")
    mode: Literal["socket", "http"] = "socket"
    http_host: str = "0.0.0.0"
    http_port: int = Field(3000, ge=1, le=65535)
    http_threads: int = Field(16, ge=1, le=256)
    # Refuse requests signed for another workspace or app even when the signature is valid.
    allowed_team_id: str | None = None
    allowed_app_id: str | None = None
    scheduler_enabled: bool = True
    # How often the scheduler looks for overdue reviews, expiring approvals and a due digest.
    scheduler_interval_seconds: float = Field(60.0, gt=0, le=3600)
    # How often a process looks for outbox rows to send and, in `fr-bot worker`, for submissions to record.
    outbox_poll_seconds: float = Field(1.0, gt=0, le=60)
    # False (`fr-bot run --no-worker`): this process answers Slack and stores submissions; `fr-bot worker`
    # processes record them and send the outbox, so the answering process's CPU goes to answers.
    worker_enabled: bool = True
    # HTTP mode: a second process does what follows the answers (opening modals, storing forms, recording,
    # the outbox, the scheduler), so the answering process's GIL is free for answers (bot/follow_up.py).
    # auto: on PostgreSQL only (SQLite's writes from two processes would wait on its file lock).
    follow_up_process: Literal["auto", "on", "off"] = "auto"
    # How long a dispatcher owns a row it is sending; a crashed dispatcher's row is retried after it.
    outbox_lease_seconds: float = Field(30.0, ge=2, le=3600)
    # A post cut off by a crash is sent again no sooner than this after the cut-off send began, so Slack's
    # event can first report whether it landed (Slack retries an undelivered event after one minute).
    outbox_landing_wait_seconds: float = Field(75.0, ge=0, le=3600)
    # The niceness (CPU priority, Linux) of the threads doing work that follows answers: the kernel runs
    # the threads answering Slack first when the cores are busy. 0 keeps them level (bot/foreground.py).
    background_niceness: int = Field(DEFAULT_BACKGROUND_NICENESS, ge=0, le=19)
    # The kernel's time slice, in microseconds, for the threads that answer Slack (Linux 6.12+): a short
    # one lets an answer preempt busy threads of other processes sooner. 0 keeps the kernel's default.
    answer_slice_us: int = Field(DEFAULT_ANSWER_SLICE_US, ge=0, le=100_000)
    # Members of approver user groups are re-read from Slack after this long.
    approver_cache_seconds: float = Field(60.0, ge=0, le=3600)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("slack_api_url")
    @classmethod
    def _api_url_ends_with_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value if value.endswith("/") else value + "/"

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        # Plain postgresql:// would pick psycopg2, which we do not ship. Rewrite before the scheme check:
        # checking first refused the common postgres:// form this rewrite is meant to accept.
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        # The scheme whole, driver included: postgresql+psycopg2:// (or +asyncpg) names a driver the bot
        # does not ship, which failed later, at the first connection, with a traceback.
        if value.split("://", 1)[0] not in DATABASE_SCHEMES:
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value

    def signing_secret(self) -> str | None:
        return self.slack_signing_secret.get_secret_value() if self.slack_signing_secret else None

    def require_slack_credentials(self) -> None:
        """Fail with one clear message when a token the chosen mode needs is missing or malformed."""
        checks: list[tuple[str, SecretStr | None, str | None]] = [
            ("FRBOT_SLACK_BOT_TOKEN", self.slack_bot_token, "xoxb-"),
        ]
        if self.mode == "socket":
            checks.append(("FRBOT_SLACK_APP_TOKEN", self.slack_app_token, "xapp-"))
        else:
            checks.append(("FRBOT_SLACK_SIGNING_SECRET", self.slack_signing_secret, None))
        for name, secret, prefix in checks:
            value = secret.get_secret_value().strip() if secret else ""
            if not value:
                raise SettingsError(f"{name} is not set: see README.md, 'Create the Slack app'.")
            if prefix and not value.startswith(prefix):
                raise SettingsError(f"{name} must start with '{prefix}' (got a value of another kind).")


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning pydantic's error into one line that names the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            problems.append(f"FRBOT_{field.upper()}: {error['msg']}")
        raise SettingsError("invalid setting " + "; ".join(problems)) from None

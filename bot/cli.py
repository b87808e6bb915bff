"""`fr-bot`: run the bot, migrate the database, check the policy file.

Every expected failure (missing token, malformed setting, bad policy, database down) ends with one line
that names the problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from slack_bolt.error import BoltError
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from sqlalchemy.exc import SQLAlchemyError

from bot import logs
from bot.config import Settings, SettingsError, load_settings
from bot.policy import PolicyError, load_policy
from storage.db import migrate

log = logging.getLogger("fr-bot")
EXIT_CONFIG = 2


class CliError(Exception):
    """A problem the operator must fix; printed as one line."""


def make_client(settings: Settings) -> WebClient:
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    client = WebClient(token=token, base_url=settings.slack_api_url, timeout=10)
    # Interactive calls (a modal must open within 3 s) must not sleep on long retries;
    # the outbox does its own retrying.
    client.retry_handlers = [
        ConnectionErrorRetryHandler(max_retry_count=1),
        RateLimitErrorRetryHandler(max_retry_count=1),
    ]
    return client


def _prepare_database(url: str) -> None:
    try:
        migrate(url)
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise CliError(f"FRBOT_DATABASE_URL: cannot open or migrate the database: {first}") from None


def cmd_run(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.mode:
        overrides["mode"] = args.mode
    if args.port:
        overrides["http_port"] = args.port
    if args.no_scheduler:
        overrides["scheduler_enabled"] = False
    settings = load_settings(**overrides)
    settings.require_slack_credentials()
    secrets = [
        s.get_secret_value()
        for s in (settings.slack_bot_token, settings.slack_app_token, settings.slack_signing_secret)
        if s
    ]
    logs.configure(settings.log_level, secrets)
    policy = load_policy(settings.policy_file)
    _prepare_database(settings.database_url)

    from bot.app import create_app
    from bot.server import serve_http, serve_socket
    from bot.services import build_services

    services = build_services(
        settings.database_url, policy, make_client(settings), outbox_poll_seconds=settings.outbox_poll_seconds
    )
    try:
        app = create_app(
            services,
            signing_secret=settings.slack_signing_secret.get_secret_value()
            if settings.slack_signing_secret
            else None,
            allowed_team_id=settings.allowed_team_id,
            allowed_app_id=settings.allowed_app_id,
            listener_threads=settings.http_threads * 2,
        )
    except BoltError as exc:
        services.close()
        raise CliError(f"FRBOT_SLACK_BOT_TOKEN: Slack refused the token ({exc})") from None
    services.dispatcher.start()
    log.info("policy %s (version %s) loaded; database ready", policy.path, policy.version)
    try:
        if settings.mode == "http":
            serve_http(app, settings.http_host, settings.http_port, settings.http_threads)
        else:
            assert settings.slack_app_token is not None
            serve_socket(app, settings.slack_app_token.get_secret_value())
    finally:
        services.close()
        log.info("stopped")
    return 0


def cmd_migrate(_args: argparse.Namespace) -> int:
    settings = load_settings()
    _prepare_database(settings.database_url)
    print(f"database at {_safe_url(settings.database_url)} is at the newest schema")
    return 0


def cmd_check_policy(args: argparse.Namespace) -> int:
    path = args.path or load_settings().policy_file
    loaded = load_policy(path)
    policy = loaded.policy
    print(
        f"{path}: OK (version {loaded.version}): {len(policy.tools)} tools, {len(policy.stages)} stages, "
        f"{len(policy.routes)} routing rules plus the default route"
    )
    return 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fr-bot", description="FR search request bot for Slack")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the bot (Socket Mode by default)")
    run.add_argument("--mode", choices=["socket", "http"], help="override FRBOT_MODE")
    run.add_argument("--port", type=int, help="override FRBOT_HTTP_PORT (HTTP mode)")
    run.add_argument("--no-scheduler", action="store_true", help="do not run reminders and digests here")
    run.set_defaults(func=cmd_run)

    commands.add_parser("migrate", help="create or upgrade the database schema").set_defaults(
        func=cmd_migrate
    )

    check = commands.add_parser("check-policy", help="validate a policy file and exit")
    check.add_argument("path", nargs="?", help="policy file (default: FRBOT_POLICY_FILE)")
    check.set_defaults(func=cmd_check_policy)

    # Audit trail, retention and oversight reports (bot/audit_cli.py).
    from bot import audit_cli

    audit_cli.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (SettingsError, PolicyError, CliError) as exc:
        print(f"fr-bot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`fr-bot`: run the bot, migrate the database, check the policy file.

Every expected failure (missing token, malformed setting, bad policy, database down) ends with one line
that names the problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from slack_bolt.error import BoltError
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from sqlalchemy.exc import SQLAlchemyError

from bot import logs
from bot.config import Settings, SettingsError, load_settings
from bot.policy import PolicyError, load_policy
from storage.db import migrate

if TYPE_CHECKING:
    from bot.scheduler import SweepScheduler
    from bot.services import Services

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
        settings.database_url,
        policy,
        make_client(settings),
        clock=_clock(),
        outbox_poll_seconds=settings.outbox_poll_seconds,
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
    scheduler = _start_scheduler(services, settings) if settings.scheduler_enabled else None
    log.info("policy %s (version %s) loaded; database ready", policy.path, policy.version)
    try:
        if settings.mode == "http":
            serve_http(app, settings.http_host, settings.http_port, settings.http_threads)
        else:
            assert settings.slack_app_token is not None
            serve_socket(app, settings.slack_app_token.get_secret_value())
    finally:
        if scheduler is not None:
            scheduler.stop()
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


# --- The scheduler: reminders, escalations and the leads' digest (bot/scheduler.py) ------------------------


def _start_scheduler(services: Services, settings: Settings) -> SweepScheduler:
    from bot.scheduler import SweepScheduler

    scheduler = SweepScheduler(
        services.db,
        services.policy.policy,
        clock=services.workflow.clock,
        interval_seconds=settings.scheduler_interval_seconds,
        on_outbox=services.dispatcher.wake,
    )
    scheduler.start()
    return scheduler


def _clock() -> Callable[[], datetime]:
    from bot.clock import system_clock

    try:
        return system_clock()
    except (OSError, ValueError) as exc:
        raise CliError(f"FRBOT_TEST_CLOCK_FILE: {exc}") from None


def cmd_scheduler(_args: argparse.Namespace) -> int:
    """A process that only runs the scheduler (and delivers the outbox), for deployments that want the
    timing work apart from the Slack-facing processes; those then run with `--no-scheduler`."""
    import threading

    from bot.server import on_termination
    from bot.services import build_services

    settings = load_settings()
    if not settings.slack_bot_token or not settings.slack_bot_token.get_secret_value().strip():
        raise SettingsError("FRBOT_SLACK_BOT_TOKEN is not set: see README.md, 'Create the Slack app'.")
    logs.configure(settings.log_level, [settings.slack_bot_token.get_secret_value()])
    policy = load_policy(settings.policy_file)
    _prepare_database(settings.database_url)
    services = build_services(
        settings.database_url,
        policy,
        make_client(settings),
        clock=_clock(),
        outbox_poll_seconds=settings.outbox_poll_seconds,
    )
    stopped = threading.Event()
    on_termination(stopped.set)
    services.dispatcher.start()
    scheduler = _start_scheduler(services, settings)
    log.info("scheduler-only process: policy %s (version %s)", policy.path, policy.version)
    try:
        stopped.wait()
    finally:
        scheduler.stop()
        services.close()
        log.info("stopped")
    return 0


def cmd_digest(args: argparse.Namespace) -> int:
    """Queue the leads' digest now if today's is due and not yet recorded (still once per day)."""
    from bot.scheduler import SweepScheduler
    from bot.services import build_services

    settings = load_settings()
    policy = load_policy(settings.policy_file)
    _prepare_database(settings.database_url)
    services = build_services(settings.database_url, policy, make_client(settings), clock=_clock())
    try:
        report = SweepScheduler(services.db, policy.policy, clock=services.workflow.clock).digest()
        if report is None:
            raise CliError("the digest could not be prepared; see the log")
        if report.digests_sent:
            services.dispatcher.run_once()
            print("digest sent")
        elif report.digests_missed:
            print("today's digest time is past the grace period: recorded as missed")
        else:
            print("nothing to send: today's digest is already recorded, or the policy has no leads_channel")
    finally:
        services.close()
    return 0


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

    commands.add_parser(
        "scheduler", help="run only the scheduler: reminders, escalations, digest (until SIGTERM)"
    ).set_defaults(func=cmd_scheduler)
    commands.add_parser(
        "digest", help="send today's leads' digest now if it is due and not yet sent"
    ).set_defaults(func=cmd_digest)

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

"""`fr-bot`: run the bot, migrate the database, check the policy file.

Every expected failure (missing token, malformed setting, bad policy, database down) ends with one line
that names the problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from slack_bolt.error import BoltError
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bot import logs
from bot.config import Settings, SettingsError, load_settings
from bot.foreground import ANSWER_SLICE, BACKGROUND
from bot.policy import LoadedPolicy, PolicyError, load_policy
from storage.db import Readiness, migrate

if TYPE_CHECKING:
    from slack_bolt import App

    from bot.follow_up import FollowUpProcess
    from bot.scheduler import SweepScheduler
    from bot.services import Services
    from handlers.after_answer import HandOver

log = logging.getLogger("fr-bot")
T = TypeVar("T")
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


def wait_for_slack(
    client: WebClient, sleep: Callable[[float], Any] = time.sleep, stopping: threading.Event | None = None
) -> dict[str, Any]:
    """Check the token with auth.test; while Slack is down or busy, wait and try again rather than exit.
    Returns Slack's answer (the bot's identity), or {} when stopped first."""
    delay = 1.0
    while stopping is None or not stopping.is_set():
        try:
            return dict(client.auth_test().data)  # type: ignore[arg-type]
        except SlackApiError as exc:
            status = exc.response.status_code
            if status != 429 and status < 500:
                error = exc.response.get("error")
                raise CliError(f"FRBOT_SLACK_BOT_TOKEN: Slack refused the token ({error})") from None
            reason = f"HTTP {status}"
        except (OSError, SlackClientError) as exc:
            reason = type(exc).__name__
        log.warning("Slack is not reachable (%s); trying again in %.0fs", reason, delay)
        sleep(delay)
        delay = min(delay * 2, 30.0)
    return {}


def _prepare_database(url: str) -> None:
    from alembic.util.exc import CommandError

    try:
        migrate(url)
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise CliError(f"FRBOT_DATABASE_URL: cannot open or migrate the database: {first}") from None
    except CommandError as exc:  # a revision this code does not know: the schema is newer (a rollback)
        raise CliError(
            f"FRBOT_DATABASE_URL: the database's schema is newer than this fr-bot ({exc}); "
            "run the version that migrated it"
        ) from None


def bootstrap(
    settings: Settings,
    records_all_receipts: bool = False,
    prepare_database: bool = True,
    policy: LoadedPolicy | None = None,
) -> Services:
    """What every long-running process does first: secret-safe logging, the policy (read from its file
    unless given), the schema, services."""
    from bot.services import build_services

    secrets = [
        s.get_secret_value()
        for s in (settings.slack_bot_token, settings.slack_app_token, settings.slack_signing_secret)
        if s
    ]
    logs.configure(settings.log_level, secrets)
    BACKGROUND.niceness = settings.background_niceness
    if policy is None:
        policy = load_policy(settings.policy_file)
    if prepare_database:
        _prepare_database(settings.database_url)
    return build_services(
        settings.database_url,
        policy,
        make_client(settings),
        clock=_clock(),
        outbox_poll_seconds=settings.outbox_poll_seconds,
        approver_cache_seconds=settings.approver_cache_seconds,
        outbox_lease_seconds=settings.outbox_lease_seconds,
        outbox_landing_wait_seconds=settings.outbox_landing_wait_seconds,
        records_all_receipts=records_all_receipts,
    )


def freeze_start_up_objects() -> None:
    """What start-up made (modules, SQLAlchemy's mappers and statements, the Bolt app, the policy) lives
    as long as the process. Frozen, the garbage collector no longer walks it in every full collection:
    each such walk held the GIL for 50-70 ms, stalling every answer in flight (bench/NOTES.md)."""
    gc.collect()
    gc.freeze()


def cmd_run(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.mode:
        overrides["mode"] = args.mode
    if args.port:
        overrides["http_port"] = args.port
    if args.no_scheduler:
        overrides["scheduler_enabled"] = False
    if args.no_worker:
        overrides["worker_enabled"] = False
    settings = load_settings(**overrides)
    settings.require_slack_credentials()
    # Before any thread or process starts, so that the server's threads inherit it; background threads
    # and the follow-up process go back to the kernel's slice (bot/foreground.py).
    if settings.answer_slice_us:
        ANSWER_SLICE.set_this_thread(settings.answer_slice_us)
    services = bootstrap(settings)
    policy = services.policy

    from bot.server import on_termination, serve_http, serve_socket

    stopping = threading.Event()  # SIGTERM while waiting for Slack is a clean stop too
    on_termination(stopping.set)
    try:
        identity = wait_for_slack(services.client, sleep=stopping.wait, stopping=stopping)
    except CliError:
        services.close()
        raise
    if stopping.is_set():
        services.close()
        log.info("stopped before Slack answered")
        return 0
    try:
        follow_up = _follow_up_process(settings, overrides, identity, policy, stopping)
    except CliError:
        services.close()
        raise
    try:
        app, listeners = build_app(
            services, settings, hand_over=follow_up.hand_over if follow_up is not None else None
        )
    except BoltError as exc:
        if follow_up is not None:
            follow_up.stop()
        services.close()
        raise CliError(f"FRBOT_SLACK_BOT_TOKEN: Slack refused the token ({exc})") from None
    freeze_start_up_objects()
    if follow_up is None:
        stop_background = start_background_work(services, settings)
    else:
        stop_background = follow_up.stop
        services.dispatcher.wake_elsewhere = follow_up.wake_outbox  # outbox rows of what this process writes
    log.info("policy %s (version %s) loaded; database ready", policy.path, policy.version)
    try:
        if settings.mode == "http":
            serve_http(
                app,
                settings.http_host,
                settings.http_port,
                settings.http_threads,
                signing_secret=settings.signing_secret(),
                stopping=stopping,
                ready_check=Readiness(services.engine.url).problem,
            )
        else:
            assert settings.slack_app_token is not None
            serve_socket(app, settings.slack_app_token.get_secret_value(), stopping)
    finally:
        # Shutdown order: no new requests (above), listeners finish their work after ack (in the
        # follow-up process, if there is one), then the dispatcher finishes the row it is sending; what
        # is left in the outbox goes out after restart.
        listeners.shutdown(wait=True)
        stop_background()
        services.close()
        log.info("stopped")
    return 0


def build_app(
    services: Services,
    settings: Settings,
    hand_over: HandOver | None = None,
    identity: dict[str, Any] | None = None,
) -> tuple[App, ThreadPoolExecutor]:
    """The Bolt app as the settings describe it, and its pool for the work after each answer (Bolt's
    default pool of 5 would queue that work behind slow Slack calls under load, and trigger_ids expire
    after 3 s). `hand_over` and `identity`: bot/app.py, `create_app`."""
    from bot.app import create_app

    listeners = ThreadPoolExecutor(max_workers=settings.http_threads * 2, thread_name_prefix="listener")
    app = create_app(
        services,
        signing_secret=settings.signing_secret(),
        allowed_team_id=settings.allowed_team_id,
        allowed_app_id=settings.allowed_app_id,
        listener_executor=listeners,
        hand_over=hand_over,
        identity=identity,
    )
    return app, listeners


def start_background_work(services: Services, settings: Settings) -> Callable[[], None]:
    """Start what follows the answers in this process (recording, the outbox, the scheduler, as the
    settings ask); returns what stops the scheduler (`Services.close` stops the other two)."""
    if settings.worker_enabled:
        services.dispatcher.start()
        services.intake.start()
    else:
        log.info("--no-worker: submissions are recorded and Slack messages sent by `fr-bot worker`")
        if settings.database_url.startswith("sqlite"):
            log.warning("--no-worker on SQLite: the worker's writes wait on SQLite's file lock; see README")
    if not settings.scheduler_enabled:
        return lambda: None
    return _start_scheduler(services, settings).stop


def _follow_up_process(
    settings: Settings,
    overrides: dict[str, object],
    identity: dict[str, Any],
    policy: LoadedPolicy,
    stopping: threading.Event,
) -> FollowUpProcess | None:
    """The follow-up process (bot/follow_up.py), when the settings ask for one; None: work in this one."""
    from bot.follow_up import FollowUpProcess, FollowUpUnavailable

    wanted = settings.follow_up_process
    if settings.mode != "http" or wanted == "off":
        return None
    if not settings.database_url.startswith("postgresql"):
        if wanted == "auto":
            return None
        log.warning(
            "follow-up process on SQLite: the two processes' writes wait on SQLite's file lock for each "
            "other; see README"
        )
    follow_up = FollowUpProcess(overrides, identity, policy, on_failure=stopping.set)
    try:
        follow_up.start()
    except FollowUpUnavailable as exc:
        raise CliError(f"FRBOT_FOLLOW_UP_PROCESS: {exc}") from None
    return follow_up


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


def cmd_outbox_list(args: argparse.Namespace) -> int:
    from bot.outbox import list_outbox

    entries = _with_database(lambda db: list_outbox(db, args.status))
    if not entries:
        print(f"no {args.status if args.status != 'all' else 'unsent'} outbox messages")
        return 0
    print(f"{'ID':>6}  {'STATUS':<7}  {'KIND':<15}  {'TO':<12}  {'REQUEST':>7}  {'TRIES':>5}  LAST ERROR")
    for e in entries:
        tries = f"{e.attempts}" + (f"/{e.doubtful_attempts}?" if e.doubtful_attempts else "")
        print(
            f"{e.id:>6}  {e.status:<7}  {e.kind:<15}  {e.target:<12}  {e.request_id or '-':>7}  "
            f"{tries:>5}  {e.last_error or ''}"
        )
    if any(e.status == "dead" for e in entries):
        print("Fix the cause named in LAST ERROR, then: fr-bot outbox retry ID (or --all-dead)")
    return 0


ACTOR_LIMIT = 32  # audit_events.actor_id


def operator_actor(args: argparse.Namespace) -> str:
    """Who runs an admin command, as the audit trail records them: `--actor`, or `cli:<login name>`.
    One too long to store is refused, not cut: two people whose names share 32 characters would be
    recorded as one."""
    import getpass

    if args.actor is None:
        actor = f"cli:{getpass.getuser()}"
        if len(actor) > ACTOR_LIMIT:
            raise CliError(
                f"the login name is too long to record as who ran this ({actor!r}, more than {ACTOR_LIMIT} "
                "characters): give --actor"
            )
        return actor
    if not args.actor.strip():  # an audit event must say who
        raise CliError("--actor: give a name, not a blank")
    if len(args.actor) > ACTOR_LIMIT:
        raise CliError(f"--actor: at most {ACTOR_LIMIT} characters ({args.actor!r} has {len(args.actor)})")
    return str(args.actor)


def add_actor_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--actor",
        help=f"who runs this, for the audit trail (default cli:<login>; at most {ACTOR_LIMIT} characters)",
    )


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    from bot.outbox import retry_outbox

    if not args.ids and not args.all_dead:
        raise CliError("outbox retry: give message IDs or --all-dead")
    actor = operator_actor(args)
    requeued = _with_database(lambda db: retry_outbox(db, args.ids, all_dead=args.all_dead, actor=actor))
    missing = sorted(set(args.ids) - set(requeued))
    if requeued:
        listed = ", ".join(map(str, requeued))
        print(f"requeued {len(requeued)} message(s): {listed}; the running bot sends them")
    if missing:
        raise CliError(f"outbox retry: not dead or not found: {', '.join(map(str, missing))}")
    if not requeued:
        print("no dead outbox messages")
    return 0


def _with_database(work: Callable[[sessionmaker[Session]], T]) -> T:
    from storage.db import DatabaseUnavailable, make_engine, make_session_factory

    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        return work(make_session_factory(engine))
    except (DatabaseUnavailable, SQLAlchemyError) as exc:
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise CliError(f"FRBOT_DATABASE_URL ({_safe_url(settings.database_url)}): {first}") from None
    finally:
        engine.dispose()


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
    return _run_background(
        "scheduler-only process", _background_settings(), records_receipts=False, scheduler=True
    )


def cmd_worker(args: argparse.Namespace) -> int:
    """A process that does what follows the answers: records stored submissions as requests, sends the
    outbox and (unless `--no-scheduler`) runs the scheduler. The Slack-facing processes then run with
    `--no-worker` and spend their CPU on answering (PostgreSQL; README, 'Deploying several processes')."""
    settings = _background_settings()
    scheduler = settings.scheduler_enabled and not args.no_scheduler
    return _run_background("worker process", settings, records_receipts=True, scheduler=scheduler)


def _background_settings() -> Settings:
    settings = load_settings()
    if not settings.slack_bot_token or not settings.slack_bot_token.get_secret_value().strip():
        raise SettingsError("FRBOT_SLACK_BOT_TOKEN is not set: see README.md, 'Create the Slack app'.")
    return settings


def _run_background(what: str, settings: Settings, records_receipts: bool, scheduler: bool) -> int:
    from bot.server import on_termination

    services = bootstrap(settings, records_all_receipts=records_receipts)
    policy = services.policy
    stopped = threading.Event()
    on_termination(stopped.set)
    freeze_start_up_objects()
    services.dispatcher.start()
    if records_receipts:
        services.intake.start()
    sweeps = _start_scheduler(services, settings) if scheduler else None
    log.info("%s: policy %s (version %s)", what, policy.path, policy.version)
    try:
        stopped.wait()
    finally:
        if sweeps is not None:
            sweeps.stop()
        services.close()
        log.info("stopped")
    return 0


def cmd_digest(args: argparse.Namespace) -> int:
    """Queue the leads' digest now if today's is due and not yet recorded (still once per day)."""
    from sqlalchemy import func, select

    from bot.pacing import post_key
    from bot.scheduler import SweepScheduler
    from storage.db import transaction
    from storage.models import OutboxMessage, OutboxStatus

    services = bootstrap(load_settings())  # secret-safe logging, as every command that talks to Slack
    policy = services.policy
    try:
        with transaction(services.db, read_only=True) as session:
            before = session.scalar(select(func.max(OutboxMessage.id))) or 0
        report = SweepScheduler(services.db, policy.policy, clock=services.workflow.clock).digest()
        if report is None:
            raise CliError("the digest could not be prepared; see the log")
        if report.digests_sent:
            services.dispatcher.run_once()
            with transaction(services.db, read_only=True) as session:
                queued = session.execute(  # the digest's post: the bot's other rows may be queued too
                    select(OutboxMessage.status, OutboxMessage.last_error).where(
                        OutboxMessage.id > before,
                        OutboxMessage.kind == "channel_post",
                        OutboxMessage.pace_key == post_key(str(policy.policy.leads_channel)),
                    )
                ).all()
            # Said as it is: Slack may have refused it (dead) or not taken it yet (the bot sends it).
            dead = [error for status, error in queued if status == OutboxStatus.DEAD]
            if dead:
                raise CliError(f"the digest was not sent: {dead[0]}; fix it, then `fr-bot outbox retry`")
            if any(status == OutboxStatus.PENDING for status, _ in queued):
                print(
                    "digest queued: Slack has not taken it yet; the bot sends it (see `fr-bot outbox list`)"
                )
            else:
                print("digest sent")
        elif report.digests_missed:
            print("today's digest time is past the grace period: recorded as missed")
        else:
            print("nothing to send: today's digest is already recorded, or the digest is turned off")
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
    run.add_argument(
        "--no-worker",
        action="store_true",
        help="only answer Slack: `fr-bot worker` records submissions and sends messages (PostgreSQL)",
    )
    run.set_defaults(func=cmd_run)

    commands.add_parser("migrate", help="create or upgrade the database schema").set_defaults(
        func=cmd_migrate
    )

    commands.add_parser(
        "scheduler", help="run only the scheduler: reminders, escalations, digest (until SIGTERM)"
    ).set_defaults(func=cmd_scheduler)
    worker = commands.add_parser(
        "worker", help="record submissions, send Slack messages and run the scheduler (until SIGTERM)"
    )
    worker.add_argument("--no-scheduler", action="store_true", help="do not run reminders and digests here")
    worker.set_defaults(func=cmd_worker)
    commands.add_parser(
        "digest", help="send today's leads' digest now if it is due and not yet sent"
    ).set_defaults(func=cmd_digest)
    outbox = commands.add_parser("outbox", help="list or replay Slack messages the bot still owes")
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True)
    listing = outbox_commands.add_parser("list", help="list dead (default), pending or all unsent messages")
    listing.add_argument("--status", choices=["dead", "pending", "all"], default="dead")
    listing.set_defaults(func=cmd_outbox_list)
    retry = outbox_commands.add_parser("retry", help="send dead messages again once the cause is fixed")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID")
    retry.add_argument("--all-dead", action="store_true", help="every dead message")
    add_actor_option(retry)
    retry.set_defaults(func=cmd_outbox_retry)

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

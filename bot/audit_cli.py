"""`fr-bot audit …`, `fr-bot retention …` and `fr-bot report`: the record, retention and oversight commands.

Every command that shows a request's details logs the view in the audit chain, with the operator's name
(`--actor`, default `cli:<login name>`).
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from bot import evidence, retention
from bot.audit import AuditChainError, append_event, record_view, verify_chain
from bot.policy import LoadedPolicy, load_policy
from storage.db import DatabaseUnavailable, make_engine, make_session_factory, transaction
from storage.models import utcnow

EXIT_BROKEN_CHAIN = 1


@dataclass
class Context:
    engine: Engine
    db: sessionmaker[Session]
    policy: LoadedPolicy


@contextmanager
def _context() -> Iterator[Context]:
    from bot.cli import _prepare_database
    from bot.config import load_settings

    settings = load_settings()
    policy = load_policy(settings.policy_file)
    _prepare_database(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        yield Context(engine, make_session_factory(engine), policy)
    finally:
        engine.dispose()


def _actor(args: argparse.Namespace) -> str:
    from bot.cli import operator_actor

    return operator_actor(args)


def _fail(message: str) -> Exception:
    from bot.cli import CliError

    return CliError(message)


def _reported(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Print an operator error as one line here: under `python -m bot.cli`, main() knows another CliError."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from bot.cli import EXIT_CONFIG, CliError

        try:
            return command(args)
        except CliError as exc:
            print(f"fr-bot: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except OSError as exc:  # an --out the command cannot write
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            print(f"fr-bot: cannot write{where}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_CONFIG
        except DatabaseUnavailable as exc:
            print(f"fr-bot: the database is unavailable ({exc}); try again", file=sys.stderr)
            return EXIT_CONFIG
        except AuditChainError as exc:  # nothing can be logged, so nothing is shown
            print(f"fr-bot: {exc}", file=sys.stderr)
            return EXIT_BROKEN_CHAIN

    return run


# --- audit ------------------------------------------------------------------------------------------


def _anchor(value: str) -> tuple[int, str]:
    match = re.fullmatch(r"(\d+):([0-9a-f]{64})", value.strip())
    if not match:
        raise argparse.ArgumentTypeError("expected SEQ:HASH, e.g. 1200:3f5c… (64 hex digits)")
    return int(match.group(1)), match.group(2)


def cmd_verify(args: argparse.Namespace) -> int:
    with _context() as ctx:
        result = verify_chain(ctx.engine, dict(args.anchor or []))
    rate = result.events / result.seconds if result.seconds else 0
    print(
        f"checked {result.events} events and {result.texts_checked} free texts in {result.seconds:.2f}s "
        f"({rate:,.0f} events/s); head seq {result.head_seq} hash {result.head_hash}"
    )
    if result.ok:
        print("audit chain intact")
        return 0
    first = result.first
    assert first is not None
    print(f"audit chain BROKEN: {result.problem_count} problem(s); first broken link: {first.describe()}")
    for problem in sorted(result.problems, key=lambda p: (p.seq is None, p.seq or 0)):
        print(f"  {problem.describe()}")
    if result.problem_count > len(result.problems):
        print(f"  … and {result.problem_count - len(result.problems)} more")
    return EXIT_BROKEN_CHAIN


def cmd_show(args: argparse.Namespace) -> int:
    actor = _actor(args)
    now = utcnow()
    with _context() as ctx, transaction(ctx.db) as session:
        request = evidence.find_request(session, args.reference)
        if request is None:
            raise _fail(f"no request {args.reference}")
        record_view(session, actor, request.id, "cli show", now)
        events = evidence.request_events(session, request.id)
        text = evidence.timeline_markdown(request, events, ctx.policy.policy, actor, now)
    sys.stdout.write(text)
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    actor = _actor(args)
    now = utcnow()
    with _context() as ctx:
        with transaction(ctx.db) as session:
            request = evidence.find_request(session, args.reference)
            if request is None:
                raise _fail(f"no request {args.reference}")
            record_view(session, actor, request.id, "cli pack", now)
        # Verified after the view is logged, so the pack's chain includes it.
        chain = verify_chain(ctx.engine)
        with transaction(ctx.db) as session:
            events = evidence.request_events(session, request.id)
        differences = evidence.differences_from_trail(request, events)
        written = evidence.write_pack(
            Path(args.out), request, events, ctx.policy.policy, chain, actor, now, differences
        )
    print(
        f"evidence pack for {request.reference} written to {args.out}: {', '.join(p.name for p in written)}"
    )
    if not chain.ok:
        print("warning: the audit chain is BROKEN; see verification.txt", file=sys.stderr)
    if differences:
        print(
            "warning: the request's record differs from its audit trail; see verification.txt",
            file=sys.stderr,
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    actor = _actor(args)
    with _context() as ctx:
        zone = ctx.policy.policy.zone
        try:
            since = evidence.parse_moment(args.since, zone)
            until = evidence.parse_moment(args.until, zone, end_of_day=True)
        except ValueError as exc:
            raise _fail(f"--since/--until: {exc} (use YYYY-MM-DD or an ISO date-time)") from None
        if args.out:  # an --out that cannot be written fails before any disclosure is logged
            with open(args.out, "a", encoding="utf-8"):  # not emptied until the export is logged
                pass
        # Logged before a row is written: an export cut short (a closed pipe, a failure, Ctrl-C) has
        # disclosed what it wrote by then, and the log must show it did.
        now = utcnow()
        with transaction(ctx.db) as session:
            append_event(
                session,
                actor,
                "audit_exported",
                None,
                now,
                {
                    "since": since.isoformat(),
                    "until": until.isoformat(),
                    "format": args.format,
                    "with_text": args.with_text,
                },
            )
            if args.with_text:
                # Free text is disclosed: each request in the range counts as viewed.
                for request_id in evidence.requests_in_range(session, since, until):
                    record_view(session, actor, request_id, "cli export", now)
        out = open(args.out, "w", encoding="utf-8", newline="") if args.out else sys.stdout  # noqa: SIM115
        try:
            with ctx.engine.connect() as connection:
                rows = evidence.export_events(connection, out, since, until, args.format, args.with_text)
        except BrokenPipeError:  # e.g. piped into `head`: the reader has what it wanted
            raise _fail("export stopped: the output was closed") from None
        finally:
            if args.out:
                out.close()
    print(f"exported {rows} events", file=sys.stderr)
    return 0


def _hold(args: argparse.Namespace, hold: bool) -> int:
    reference = args.reference.strip().upper()  # as `audit show` reads one
    actor = _actor(args)  # refused before the database is touched
    with _context() as ctx:
        try:
            changed = retention.set_legal_hold(ctx.db, reference, actor, args.reason, utcnow(), hold)
        except LookupError:
            raise _fail(f"no request {reference}") from None
        with transaction(ctx.db, read_only=True) as session:
            request = evidence.find_request(session, reference)
            purged = request.redacted_at if request is not None else None
    state = "placed on" if hold else "released from"
    print(f"{reference} {state} legal hold" if changed else f"{reference}: no change")
    if hold and purged is not None:
        # The hold keeps what is left; what the purge removed is gone already.
        print(f"note: its free text was already removed under the retention policy on {purged:%Y-%m-%d}")
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    return _hold(args, True)


def cmd_release(args: argparse.Namespace) -> int:
    return _hold(args, False)


# --- retention --------------------------------------------------------------------------------------


def cmd_retention_preview(args: argparse.Namespace) -> int:
    with _context() as ctx:
        try:
            as_of = evidence.parse_moment(args.as_of, ctx.policy.policy.zone) if args.as_of else utcnow()
        except ValueError as exc:
            raise _fail(f"--as-of: {exc} (use YYYY-MM-DD)") from None
        found = retention.preview(ctx.db, ctx.policy.policy, lambda: as_of)
    due = [c for c in found if not c.legal_hold]
    held = [c for c in found if c.legal_hold]
    print(f"as of {evidence.utc_text(as_of)}: {len(due)} request(s) would be purged, {len(held)} held")
    for candidate in found:
        mark = "HELD " if candidate.legal_hold else "purge"
        print(
            f"  {mark} {candidate.reference} {candidate.status}, "
            f"decided {evidence.utc_text(candidate.decided_at)}, due {evidence.utc_text(candidate.due_at)}"
        )
    return 0


def cmd_retention_purge(args: argparse.Namespace) -> int:
    actor = _actor(args)
    with _context() as ctx:
        purged = retention.purge(ctx.db, ctx.policy.policy, utcnow, actor=actor)
    print(f"purged {len(purged)} request(s)")
    for item in purged:
        print(
            f"  {item.reference}: {item.fields_redacted} fields redacted, "
            f"{item.texts_removed} audit texts removed"
        )
    return 0


# --- report -----------------------------------------------------------------------------------------


def _month(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d{4})-(\d{2})", value.strip())
    if not match or not 1 <= int(match.group(2)) <= 12 or not 1970 <= int(match.group(1)) <= 9998:
        raise argparse.ArgumentTypeError("expected YYYY-MM, e.g. 2026-03")
    return int(match.group(1)), int(match.group(2))


def cmd_report(args: argparse.Namespace) -> int:
    from bot import report

    year, month = args.month
    with _context() as ctx:  # the month in the policy's zone, as the report counts it
        today = utcnow().astimezone(ctx.policy.policy.zone)
    if (year, month) > (today.year, today.month):
        raise _fail(f"{year}-{month:02d} has not begun: a report covers a month that has")
    with _context() as ctx, transaction(ctx.db) as session:
        data = report.build(session, ctx.policy.policy, year, month, utcnow())
    written = report.write(data, Path(args.out))
    print(f"report for {year}-{month:02d} written: {', '.join(str(p) for p in written)}")
    return 0


# --- Parser -----------------------------------------------------------------------------------------


def register(commands: Any) -> None:
    from bot.cli import add_actor_option as actor_option

    audit = commands.add_parser("audit", help="the tamper-evident audit trail").add_subparsers(
        dest="audit_command", required=True
    )
    verify = audit.add_parser("verify", help="check the hash chain; exit 1 naming the first broken link")
    verify.add_argument(
        "--anchor",
        type=_anchor,
        action="append",
        metavar="SEQ:HASH",
        help="a head recorded outside the database",
    )
    verify.set_defaults(func=_reported(cmd_verify))

    show = audit.add_parser("show", help="print a request's whole timeline (logged as a view)")
    show.add_argument("reference")
    actor_option(show)
    show.set_defaults(func=_reported(cmd_show))

    export = audit.add_parser("export", help="stream audit events in a time range as CSV or JSON lines")
    export.add_argument("--since", required=True, help="YYYY-MM-DD or ISO date-time (policy time zone)")
    export.add_argument("--until", required=True, help="YYYY-MM-DD (inclusive) or ISO date-time (exclusive)")
    export.add_argument("--format", choices=["csv", "jsonl"], default="jsonl")
    export.add_argument("--out", help="file to write (default: standard output)")
    export.add_argument(
        "--with-text", action="store_true", help="include retained free text (logged as views)"
    )
    actor_option(export)
    export.set_defaults(func=_reported(cmd_export))

    pack = audit.add_parser("pack", help="write a request's evidence pack into a folder")
    pack.add_argument("reference")
    pack.add_argument("--out", required=True)
    actor_option(pack)
    pack.set_defaults(func=_reported(cmd_pack))

    for name, func, text in (
        ("hold", cmd_hold, "place a request on legal hold (never purged)"),
        ("release", cmd_release, "release a request's legal hold"),
    ):
        parser = audit.add_parser(name, help=text)
        parser.add_argument("reference")
        parser.add_argument("--reason", required=True)
        actor_option(parser)
        parser.set_defaults(func=_reported(func))

    keep = commands.add_parser("retention", help="the retention purge").add_subparsers(
        dest="retention_command", required=True
    )
    preview = keep.add_parser("preview", help="list what the next purge would touch")
    preview.add_argument("--as-of", help="preview the purge at a later date (YYYY-MM-DD)")
    preview.set_defaults(func=_reported(cmd_retention_preview))
    purge = keep.add_parser("purge", help="redact requests past their retention period now")
    actor_option(purge)
    purge.set_defaults(func=_reported(cmd_retention_purge))

    report = commands.add_parser("report", help="monthly oversight report (Markdown, CSV, PNG)")
    report.add_argument("--month", type=_month, required=True, help="YYYY-MM")
    report.add_argument("--out", default=".", help="folder to write into (default: current)")
    report.set_defaults(func=_reported(cmd_report))

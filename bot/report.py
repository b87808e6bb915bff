"""The monthly oversight report: volumes, decision times, reviewers' approval rates, prohibited-tool attempts.

Written as Markdown (to read), CSV (to analyse) and a PNG chart of weekly volumes and decision times. The
report also prints the audit chain's head: kept outside the database, it is an anchor that
`fr-bot audit verify --anchor SEQ:HASH` checks the chain against later.
"""

from __future__ import annotations

import csv
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.audit import GENESIS_HASH
from bot.evidence import choice_label
from bot.policy import SUBJECT_LABELS, URGENCY_LABELS, Policy, SubjectCategory, Urgency
from bot.sweeps import percentile
from storage.models import AuditChainHead, AuditEvent, Decision, FrRequest, RequestStatus, StageReview


@dataclass
class ReviewerStats:
    approvals: int = 0
    rejections: int = 0
    hours_to_decide: list[float] = field(default_factory=list)

    @property
    def decisions(self) -> int:
        return self.approvals + self.rejections

    @property
    def approval_rate(self) -> float:
        return self.approvals / self.decisions if self.decisions else 0.0


@dataclass
class Week:
    start: datetime
    requests: int = 0
    decision_hours: list[float] = field(default_factory=list)


@dataclass
class MonthReport:
    year: int
    month: int
    timezone: str
    generated_at: datetime
    requests: int = 0
    by_tool: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)
    by_subject: Counter[str] = field(default_factory=Counter)
    by_urgency: Counter[str] = field(default_factory=Counter)
    decision_hours: dict[str, list[float]] = field(default_factory=dict)  # by urgency
    reviewers: dict[str, ReviewerStats] = field(default_factory=dict)
    prohibited_attempts: Counter[str] = field(default_factory=Counter)
    prohibited_officers: int = 0
    # Approvals that ended by the report's generation without the officer recording what the search did.
    overdue_post_use: list[tuple[str, datetime]] = field(default_factory=list)
    weeks: list[Week] = field(default_factory=list)
    chain_seq: int = 0
    chain_hash: str = GENESIS_HASH

    @property
    def label(self) -> str:
        return f"{self.year}-{self.month:02d}"


def _hours(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() / 3600


def summary(values: list[float]) -> dict[str, float | int]:
    """Count, median, 90th percentile and mean of decision times in hours (0 when there are none)."""
    if not values:
        return {"count": 0, "median": 0.0, "p90": 0.0, "mean": 0.0}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "median": statistics.median(ordered),
        # Nearest rank, as the digest's: round() is to even, which took the 6th of 7 values, not the 7th.
        "p90": percentile(ordered, 0.9),
        "mean": statistics.fmean(ordered),
    }


def build(session: Session, policy: Policy, year: int, month: int, now: datetime) -> MonthReport:
    zone = policy.zone
    start = datetime(year, month, 1, tzinfo=zone)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=zone)
    report = MonthReport(year, month, policy.timezone, now)
    week_start = (start - timedelta(days=start.weekday())).replace(hour=0)
    while week_start < end:
        report.weeks.append(Week(week_start))
        week_start += timedelta(days=7)

    rows = session.execute(
        select(
            FrRequest.tool_snapshot,
            FrRequest.status,
            FrRequest.subject_category,
            FrRequest.urgency,
            FrRequest.created_at,
            FrRequest.decided_at,
        ).where(FrRequest.created_at >= start, FrRequest.created_at < end)
    )
    for tool, status, subject, urgency, created_at, decided_at in rows:
        report.requests += 1
        report.by_tool[str(tool.get("name", "?"))] += 1
        report.by_outcome[status] += 1
        report.by_subject[choice_label(SUBJECT_LABELS, SubjectCategory, subject)] += 1
        urgency_label = choice_label(URGENCY_LABELS, Urgency, urgency)
        report.by_urgency[urgency_label] += 1
        week = _week_of(report.weeks, created_at)
        week.requests += 1
        if decided_at is not None:
            hours = _hours(created_at, decided_at)
            report.decision_hours.setdefault(urgency_label, []).append(hours)
            week.decision_hours.append(hours)

    decisions = session.execute(
        select(Decision.approver_id, Decision.outcome, Decision.created_at, StageReview.started_at)
        .join(StageReview, StageReview.id == Decision.stage_review_id)
        .where(Decision.created_at >= start, Decision.created_at < end)
    )
    for approver, outcome, decided_at, started_at in decisions:
        stats = report.reviewers.setdefault(approver, ReviewerStats())
        if outcome == "approve":
            stats.approvals += 1
        else:
            stats.rejections += 1
        if started_at is not None:
            stats.hours_to_decide.append(_hours(started_at, decided_at))

    refused = session.execute(
        select(AuditEvent.actor_id, AuditEvent.details).where(
            AuditEvent.action == "submission_refused",
            AuditEvent.created_at >= start,
            AuditEvent.created_at < end,
        )
    )
    officers: set[str] = set()
    for actor, details in refused:
        if details.get("tool_status") == "prohibited":
            report.prohibited_attempts[str(details.get("tool_id", "?"))] += 1
            officers.add(actor)
    report.prohibited_officers = len(officers)

    overdue = session.execute(
        select(FrRequest.reference, FrRequest.valid_until)
        .where(
            FrRequest.status == RequestStatus.APPROVED,
            FrRequest.closed_at.is_(None),
            FrRequest.valid_until <= now,
            FrRequest.created_at < end,
        )
        .order_by(FrRequest.valid_until)
    )
    report.overdue_post_use = [(reference, valid_until) for reference, valid_until in overdue]

    head = session.get(AuditChainHead, 1)
    if head is not None:
        report.chain_seq, report.chain_hash = head.seq, head.hash
    return report


def _week_of(weeks: list[Week], moment: datetime) -> Week:
    chosen = weeks[0]
    for week in weeks:
        if week.start <= moment:
            chosen = week
    return chosen


# --- Output -----------------------------------------------------------------------------------------


def rows(report: MonthReport) -> list[tuple[str, str, str, float | int | str]]:
    """The report in long form: (section, key, metric, value); the CSV and the Markdown both use it."""
    out: list[tuple[str, str, str, float | int | str]] = [("total", "requests", "count", report.requests)]
    for section, counter in (
        ("tool", report.by_tool),
        ("outcome", report.by_outcome),
        ("subject", report.by_subject),
        ("urgency", report.by_urgency),
        ("prohibited_attempts", report.prohibited_attempts),
    ):
        out += [(section, key, "count", value) for key, value in sorted(counter.items())]
    out.append(("prohibited_attempts", "distinct officers", "count", report.prohibited_officers))
    out.append(("post_use", "overdue records", "count", len(report.overdue_post_use)))
    out += [
        ("post_use_overdue", ref, "approval_ended", ended.isoformat())
        for ref, ended in report.overdue_post_use
    ]
    all_hours = [h for values in report.decision_hours.values() for h in values]
    for key, values in [("all", all_hours), *sorted(report.decision_hours.items())]:
        out += [("decision_hours", key, metric, round(value, 2)) for metric, value in summary(values).items()]
    for reviewer, stats in sorted(report.reviewers.items()):
        out += [
            ("reviewer", reviewer, "decisions", stats.decisions),
            ("reviewer", reviewer, "approvals", stats.approvals),
            ("reviewer", reviewer, "rejections", stats.rejections),
            ("reviewer", reviewer, "approval_rate", round(stats.approval_rate, 3)),
            (
                "reviewer",
                reviewer,
                "median_hours_to_decide",
                round(summary(stats.hours_to_decide)["median"], 2),
            ),
        ]
    for week in report.weeks:
        key = week.start.date().isoformat()
        out.append(("week", key, "requests", week.requests))
        out.append(("week", key, "median_decision_hours", round(summary(week.decision_hours)["median"], 2)))
    out.append(("audit_chain", "head", "seq", report.chain_seq))
    out.append(("audit_chain", "head", "hash", report.chain_hash))
    return out


def markdown(report: MonthReport, chart_name: str) -> str:
    lines = [
        f"# FR search requests: oversight report {report.label}",
        "",
        f"Requests made in {report.label} ({report.timezone}); generated "
        f"{report.generated_at.astimezone(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        f"**{report.requests} requests.**",
        "",
    ]
    for title, counter in (
        ("By tool", report.by_tool),
        ("By outcome", report.by_outcome),
        ("By subject category", report.by_subject),
        ("By urgency", report.by_urgency),
    ):
        lines += [f"## {title}", "", "| | Requests |", "|---|---:|"]
        lines += [f"| {key} | {value} |" for key, value in counter.most_common()] or ["| none | 0 |"]
        lines.append("")
    lines += ["## Decision times (hours from request to final decision)", ""]
    lines += ["| Urgency | Decided | Median | 90th percentile | Mean |", "|---|---:|---:|---:|---:|"]
    all_hours = [h for values in report.decision_hours.values() for h in values]
    for key, values in [("All", all_hours), *sorted(report.decision_hours.items())]:
        s = summary(values)
        lines.append(f"| {key} | {s['count']} | {s['median']:.1f} | {s['p90']:.1f} | {s['mean']:.1f} |")
    lines += [
        "",
        "## Reviewers",
        "",
        "A reviewer who approves nearly everything, very quickly, may be rubber-stamping.",
        "",
        "| Reviewer | Decisions | Approved | Rejected | Approval rate | Median hours to decide |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for reviewer, stats in sorted(report.reviewers.items(), key=lambda item: -item[1].approval_rate):
        lines.append(
            f"| {reviewer} | {stats.decisions} | {stats.approvals} | {stats.rejections} | "
            f"{stats.approval_rate:.0%} | {summary(stats.hours_to_decide)['median']:.1f} |"
        )
    lines += [
        "",
        "## Attempts to use prohibited tools",
        "",
        f"{sum(report.prohibited_attempts.values())} attempts by {report.prohibited_officers} officer(s).",
        "",
    ]
    lines += [f"- {tool}: {count}" for tool, count in report.prohibited_attempts.most_common()]
    lines += [
        "",
        "## Overdue post-use records",
        "",
        f"{len(report.overdue_post_use)} approved request(s) whose approval has ended without a record of "
        "whether the search was run, what it returned and what happened to the image and results.",
        "",
    ]
    lines += [
        f"- {reference}: approval ended {ended.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        for reference, ended in report.overdue_post_use
    ]
    lines += [
        "",
        "## Weekly volumes and decision times",
        "",
        f"![Weekly volumes and decision times]({chart_name})",
        "",
        "| Week starting | Requests | Median decision hours |",
        "|---|---:|---:|",
        *(
            f"| {w.start.date().isoformat()} | {w.requests} | "
            + (f"{summary(w.decision_hours)['median']:.1f} |" if w.decision_hours else "— |")
            for w in report.weeks
        ),
        "",
        "## Audit chain anchor",
        "",
        f"At the time of this report the audit chain's head was seq {report.chain_seq}, hash "
        f"`{report.chain_hash}`. Keep this report: `fr-bot audit verify --anchor "
        f"{report.chain_seq}:{report.chain_hash}` proves later that the record up to here is unchanged.",
        "",
    ]
    return "\n".join(lines)


def chart(report: MonthReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    from matplotlib import pyplot

    labels = [w.start.strftime("%d %b") for w in report.weeks]
    figure, (volume, times) = pyplot.subplots(2, 1, figsize=(8, 6), sharex=True)
    volume.bar(labels, [w.requests for w in report.weeks], color="#3b6ea5")
    volume.set_ylabel("Requests")
    volume.yaxis.get_major_locator().set_params(integer=True)
    volume.set_title(f"FR search requests, {report.label}: weekly volume and decision time")
    # A week without decisions has no median: NaN leaves a gap rather than plotting a false zero.
    medians = [
        summary(w.decision_hours)["median"] if w.decision_hours else float("nan") for w in report.weeks
    ]
    times.plot(labels, medians, marker="o", color="#b5542c")
    times.set_ylabel("Median hours to decision")
    times.set_xlabel("Week starting")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def write(report: MonthReport, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"fr-report-{report.label}"
    md_path, csv_path, png_path = (out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "png"))
    chart(report, png_path)
    md_path.write_text(markdown(report, png_path.name), encoding="utf-8")
    with csv_path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(("section", "key", "metric", "value"))
        writer.writerows(rows(report))
    return [md_path, csv_path, png_path]

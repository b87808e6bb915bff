"""Deadline arithmetic: pure functions of a start time and the policy, no database and no Slack.

All times in and out are aware UTC datetimes. Working time is counted in the policy's zone: only the
policy's working hours on working days that are not bank holidays count, and the local wall-clock hours
stay right across DST changes because every local time is built with the zone, then converted to UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from bot.policy import Policy
from bot.timing_policy import Duration, WorkingTime

# No policy passes validation without a working day, so this only stops a runaway loop on a defect.
MAX_DAYS_SCANNED = 3 * 366
# Reminders repeat; a review overdue for months must not make the schedule walk forever.
MAX_REMINDER_SLOTS = 100_000


def local_moment(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of a wall-clock time on a local date. A time that does not exist (skipped by a
    spring-forward change) resolves to the same wall time on the old offset, i.e. just after the change."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def add_working_time(start: datetime, amount: timedelta, working: WorkingTime, zone: ZoneInfo) -> datetime:
    """The moment `amount` of working time after `start`. Time outside working hours does not count, so a
    deadline that starts on a Friday evening begins counting on the next working morning."""
    if amount <= timedelta(0):
        return start
    remaining = amount
    cursor = start.astimezone(UTC)
    day = cursor.astimezone(zone).date()
    for _ in range(MAX_DAYS_SCANNED):
        if working.is_working_day(day):
            opens = local_moment(day, working.start, zone)
            closes = local_moment(day, working.end, zone)
            begin = max(cursor, opens)
            if begin < closes:
                available = closes - begin
                if remaining <= available:
                    return begin + remaining
                remaining -= available
        day += timedelta(days=1)
        cursor = max(cursor, local_moment(day, time(0, 0), zone))
    raise ValueError("working time never reached the end: check working_time.days")


def working_time_between(start: datetime, end: datetime, working: WorkingTime, zone: ZoneInfo) -> timedelta:
    """How much working time passes from `start` to `end` (none if `end` is not after `start`): the
    inverse of `add_working_time`."""
    total = timedelta(0)
    if end <= start:
        return total
    day = start.astimezone(zone).date()
    last = end.astimezone(zone).date()
    for _ in range(MAX_DAYS_SCANNED):
        if day > last:
            return total
        if working.is_working_day(day):
            opens = max(start, local_moment(day, working.start, zone))
            closes = min(end, local_moment(day, working.end, zone))
            if opens < closes:
                total += closes - opens
        day += timedelta(days=1)
    raise ValueError("the span is longer than the days scanned")


def add_duration(start: datetime, duration: Duration, policy: Policy, factor: float = 1.0) -> datetime:
    """`start` plus `factor` times `duration`, in clock or working time as the duration says."""
    length = duration.length(policy.working_time) * factor
    if duration.in_working_time:
        return add_working_time(start, length, policy.working_time, policy.zone)
    return start + length


def review_deadline(policy: Policy, stage_id: str, urgency: str) -> Duration:
    return policy.review_deadlines.for_stage(stage_id, urgency)


def review_due(policy: Policy, stage_id: str, urgency: str, started_at: datetime) -> datetime:
    """When a stage that became pending at `started_at` must have decided."""
    return add_duration(started_at, review_deadline(policy, stage_id, urgency), policy)


def paused_due(
    policy: Policy, stage_id: str, urgency: str, due_at: datetime, paused: datetime, now: datetime
) -> datetime:
    """A stage's due time once its clock, stopped at `paused`, runs again at `now`: moved on by the time
    that passed meanwhile, counted as its deadline counts (a working-time deadline loses no time to a
    night or a weekend spent waiting)."""
    if review_deadline(policy, stage_id, urgency).in_working_time:
        waited = working_time_between(paused, now, policy.working_time, policy.zone)
        return add_working_time(due_at, waited, policy.working_time, policy.zone)
    return due_at + max(now - paused, timedelta(0))


@dataclass(frozen=True)
class ReminderSlot:
    """The latest reminder a review is owed at some moment: its number (0 is the first, at the due time),
    when it fell due, and when the next one falls due."""

    sequence: int
    due: datetime
    next_due: datetime


def reminder_slot(policy: Policy, urgency: str, due_at: datetime, now: datetime) -> ReminderSlot | None:
    """Reminders fall due at the deadline, then every `reminders.repeat_every`. The schedule is fixed by
    the deadline, so a late or repeated sweep computes the same numbers; reminders missed while the bot
    was down collapse into the latest one. None while the review is not yet due."""
    if now < due_at:
        return None
    repeat = policy.reminders.repeat_every.of(urgency)
    sequence, current = 0, due_at
    for _ in range(MAX_REMINDER_SLOTS):
        following = add_duration(current, repeat, policy)
        if following > now:
            return ReminderSlot(sequence, current, following)
        sequence, current = sequence + 1, following
    return ReminderSlot(sequence, current, add_duration(current, repeat, policy))


def escalation_due(policy: Policy, stage_id: str, urgency: str, due_at: datetime) -> datetime:
    """When an undecided review goes to the leads: after `escalate_after_reminders` unanswered reminders
    (at the moment the next one would fall due) or at a multiple of the deadline, whichever is first.
    Both count from the due time, so a due time moved on (the clock stopped while a question waited on
    the officer) moves the escalation with it: the multiple is the due time plus the rest of it."""
    reminders = policy.reminders
    after_reminders = due_at
    repeat = reminders.repeat_every.of(urgency)
    for _ in range(reminders.escalate_after_reminders.of(urgency)):
        after_reminders = add_duration(after_reminders, repeat, policy)
    multiple = reminders.escalate_after_deadline_multiple.of(urgency)
    after_multiple = add_duration(due_at, review_deadline(policy, stage_id, urgency), policy, multiple - 1)
    return min(after_reminders, after_multiple)


def latest_digest_slot(policy: Policy, now: datetime) -> tuple[date, datetime]:
    """The local date and UTC instant of the most recent digest time at or before `now`. The digest is at
    the same wall-clock time every day, so its UTC instant moves with DST."""
    zone = policy.zone
    today = now.astimezone(zone).date()
    for day in (today, today - timedelta(days=1), today - timedelta(days=2)):
        moment = local_moment(day, policy.digest.local_time, zone)
        if moment <= now:
            return day, moment
    raise AssertionError("a digest time exists on one of the last three days")


def digest_moment(policy: Policy, day: date) -> datetime:
    return local_moment(day, policy.digest.local_time, policy.zone)

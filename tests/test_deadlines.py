"""Deadline arithmetic without a database: working time across weekends, bank holidays and DST."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from bot import deadlines
from bot.policy import Policy, PolicyError, parse_policy
from bot.timing_policy import Duration
from tests.conftest import TEST_POLICY

LONDON = ZoneInfo("Europe/London")


def make_policy(**changes: object) -> Policy:
    data = yaml.safe_load(TEST_POLICY)
    data.update(changes)
    return parse_policy(yaml.safe_dump(data), "test-policy.yml").policy


def local(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=LONDON)  # type: ignore[misc]


CHRISTMAS = make_policy(
    working_time={"bank_holidays": [date(2026, 12, 25), date(2026, 12, 28)], "start": "09:00", "end": "17:00"}
)


def test_routine_deadline_skips_weekend_and_bank_holidays() -> None:
    # Thursday 24 Dec 15:00: 2 h that day; Fri 25 (holiday), the weekend and Mon 28 (holiday) do not count;
    # Tue 29 and Wed 30 give 16 h; the last 6 h run out on Thu 31 at 15:00.
    due = deadlines.review_due(CHRISTMAS, "supervisor", "routine", local(2026, 12, 24, 15, 0))
    assert due == local(2026, 12, 31, 15, 0)


def test_working_time_started_outside_hours_counts_from_the_next_opening() -> None:
    friday_evening = local(2026, 12, 18, 19, 30)
    due = deadlines.add_duration(friday_evening, Duration(working_hours=2), CHRISTMAS)
    assert due == local(2026, 12, 21, 11, 0)  # Monday 09:00 + 2 h


def test_working_time_ending_exactly_at_close_stays_on_that_day() -> None:
    due = deadlines.add_duration(local(2026, 12, 21, 9, 0), Duration(working_hours=8), CHRISTMAS)
    assert due == local(2026, 12, 21, 17, 0)


def test_clock_time_deadlines_ignore_working_hours() -> None:
    start = local(2026, 12, 24, 15, 0)
    assert deadlines.review_due(CHRISTMAS, "supervisor", "urgent", start) == start + timedelta(hours=8)
    assert deadlines.review_due(CHRISTMAS, "supervisor", "threat_to_life", start) == start + timedelta(
        hours=1
    )


def test_working_hours_keep_their_wall_clock_across_the_spring_change() -> None:
    # Friday 27 March 2026 16:00 GMT; the clocks go forward on Sunday 29 March. One working day later is
    # Monday 16:00 local time, which is 15:00 UTC (BST), not 16:00 UTC.
    policy = make_policy(review_deadlines={"routine": {"working_days": 1}})
    due = deadlines.review_due(policy, "supervisor", "routine", local(2026, 3, 27, 16, 0))
    assert due.astimezone(LONDON) == local(2026, 3, 30, 16, 0)
    assert due == datetime(2026, 3, 30, 15, 0, tzinfo=UTC)


def test_stage_override_and_custom_working_days() -> None:
    policy = make_policy(
        working_time={"days": ["mon", "wed"], "start": "10:00", "end": "12:00"},
        review_deadlines={"stages": {"dpo": {"routine": {"working_hours": 3}}}},
    )
    start = local(2026, 3, 2, 11, 0)  # Monday
    assert deadlines.review_due(policy, "dpo", "routine", start) == local(
        2026, 3, 4, 12, 0
    )  # Mon 1 h, Wed 2 h
    # Other stages keep the default: 3 working days of 2 h = 6 h: Mon 1 h, Wed 2 h, Mon 2 h, Wed 1 h.
    assert deadlines.review_due(policy, "supervisor", "routine", start) == local(2026, 3, 11, 11, 0)


def test_reminder_slots_follow_the_deadline_not_the_sweeps() -> None:
    policy = make_policy()
    due = datetime(2026, 3, 2, 17, 0, tzinfo=UTC)
    assert deadlines.reminder_slot(policy, "urgent", due, due - timedelta(seconds=1)) is None
    first = deadlines.reminder_slot(policy, "urgent", due, due)
    assert first == deadlines.ReminderSlot(0, due, due + timedelta(hours=2))
    # Down for five hours: the missed reminders collapse into the latest one.
    late = deadlines.reminder_slot(policy, "urgent", due, due + timedelta(hours=5))
    assert late == deadlines.ReminderSlot(2, due + timedelta(hours=4), due + timedelta(hours=6))


def test_escalation_comes_sooner_for_urgent_requests() -> None:
    policy = make_policy()
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # Monday, GMT
    for urgency, expected in (
        # routine: due Thu 09:00; 3 reminders every 4 working hours -> Fri 13:00; 2x deadline -> Mon+6 wd
        ("routine", datetime(2026, 3, 6, 13, 0, tzinfo=UTC)),
        ("urgent", start + timedelta(hours=12)),  # 8 h deadline: 2 reminders every 2 h = 1.5x deadline
        ("threat_to_life", start + timedelta(minutes=90)),  # 1 h deadline, 1 reminder every 30 min
    ):
        due = deadlines.review_due(policy, "supervisor", urgency, start)
        assert deadlines.escalation_due(policy, "supervisor", urgency, due) == expected, urgency


@pytest.mark.parametrize(
    ("now", "expected_day", "expected_utc"),
    [
        (datetime(2026, 3, 28, 8, 0, tzinfo=UTC), date(2026, 3, 28), datetime(2026, 3, 28, 8, 0, tzinfo=UTC)),
        # Spring forward: 08:00 BST is 07:00 UTC.
        (datetime(2026, 3, 29, 7, 0, tzinfo=UTC), date(2026, 3, 29), datetime(2026, 3, 29, 7, 0, tzinfo=UTC)),
        (
            datetime(2026, 3, 29, 6, 59, tzinfo=UTC),
            date(2026, 3, 28),
            datetime(2026, 3, 28, 8, 0, tzinfo=UTC),
        ),
        # Autumn back: 08:00 GMT is 08:00 UTC again.
        (
            datetime(2026, 10, 25, 7, 30, tzinfo=UTC),
            date(2026, 10, 24),
            datetime(2026, 10, 24, 7, 0, tzinfo=UTC),
        ),
        (
            datetime(2026, 10, 25, 8, 0, tzinfo=UTC),
            date(2026, 10, 25),
            datetime(2026, 10, 25, 8, 0, tzinfo=UTC),
        ),
    ],
)
def test_digest_slot_is_the_same_wall_clock_time_all_year(
    now: datetime, expected_day: date, expected_utc: datetime
) -> None:
    assert deadlines.latest_digest_slot(make_policy(), now) == (expected_day, expected_utc)


def test_digest_time_skipped_by_spring_forward_still_happens_once() -> None:
    policy = make_policy(digest={"local_time": "01:30"})  # 01:00-02:00 does not exist on 29 March
    moment = deadlines.digest_moment(policy, date(2026, 3, 29))
    assert moment == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 02:30 BST, just after the change
    assert deadlines.latest_digest_slot(policy, moment) == (date(2026, 3, 29), moment)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"working_time": {"end": 1020}}, "write times in quotes"),
        ({"working_time": {"start": "17:00", "end": "09:00"}}, "end must be after start"),
        ({"review_deadlines": {"urgent": {"hours": 2, "working_hours": 2}}}, "exactly one of"),
        ({"review_deadlines": {"stages": {"nobody": {"routine": {"hours": 1}}}}}, "unknown stage 'nobody'"),
        ({"working_time": {"days": ["funday"]}}, "working_time.days.0"),
        ({"digest": {"local_time": 480}}, "write times in quotes"),
    ],
)
def test_policy_timing_errors_name_the_problem(changes: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError) as error:
        make_policy(**changes)
    assert message in str(error.value)


def test_example_policy_timing_section_loads() -> None:
    from bot.policy import load_policy

    policy = load_policy(Path(__file__).resolve().parents[1] / "policy.example.yml").policy
    assert policy.digest.local_time == time(8, 0)
    assert policy.working_time.bank_holidays  # the example lists them


def test_test_clock_file_is_read_when_it_changes(tmp_path: Path) -> None:
    from bot.clock import FileClock

    path = tmp_path / "now.txt"
    path.write_text("2026-03-02T09:00:00+00:00")
    clock = FileClock(path)
    assert clock() == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    path.write_text("2026-03-09T09:30:00+00:00\n")
    assert clock() == datetime(2026, 3, 9, 9, 30, tzinfo=UTC)
    path.write_text("2026-03-09T09:3")  # caught mid-rewrite: the last good time stands
    assert clock() == datetime(2026, 3, 9, 9, 30, tzinfo=UTC)
    # A time of the same length written within one tick of the file system's clock: the same
    # modification time and size, which were all that was compared, so the new time went unread.
    path.write_text("2026-03-09T09:30:00+00:00\n")
    assert clock() == datetime(2026, 3, 9, 9, 30, tzinfo=UTC)
    stamp = path.stat().st_mtime_ns
    path.write_text("2026-03-09T09:45:00+00:00\n")
    os.utime(path, ns=(stamp, stamp))
    assert clock() == datetime(2026, 3, 9, 9, 45, tzinfo=UTC)


@pytest.mark.parametrize(
    ("content", "message"), [("2026-03-02T09:00:00", "needs an offset"), ("soon", "ISO 8601")]
)
def test_test_clock_file_must_hold_an_aware_time(tmp_path: Path, content: str, message: str) -> None:
    from bot.clock import FileClock

    path = tmp_path / "now.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        FileClock(path)

"""The policy's timing rules: review deadlines, working time, reminders, escalation, ratification, digest.

Kept apart from bot/policy.py so the time rules read as one piece; `Policy` embeds these models under the
keys `working_time`, `review_deadlines`, `reminders`, `ratification` and `digest` (see policy.example.yml).
The arithmetic that uses them lives in bot/deadlines.py.
"""

from __future__ import annotations

from datetime import date, time, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
UrgencyName = Literal["routine", "urgent", "threat_to_life"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _quoted_time(value: Any) -> Any:
    # YAML 1.1 reads an unquoted 17:00 as the number 1020 (base 60); pydantic would then take it as
    # seconds after midnight. Refuse it rather than silently use 00:17.
    if isinstance(value, int | float):
        raise ValueError("write times in quotes, e.g. '17:00' (unquoted, YAML reads 17:00 as a number)")
    return value


class WorkingTime(_Strict):
    """When working-time deadlines run: these weekdays, between start and end, in the policy's zone."""

    days: Annotated[tuple[Weekday, ...], Field(min_length=1)] = ("mon", "tue", "wed", "thu", "fri")
    start: time = time(9, 0)
    end: time = time(17, 0)
    bank_holidays: tuple[date, ...] = ()

    @field_validator("start", "end", mode="before")
    @classmethod
    def _times_quoted(cls, value: Any) -> Any:
        return _quoted_time(value)

    @model_validator(mode="after")
    def _start_before_end(self) -> WorkingTime:
        if self.end <= self.start:
            raise ValueError("working_time: end must be after start")
        return self

    @property
    def day_length(self) -> timedelta:
        return timedelta(hours=self.end.hour - self.start.hour, minutes=self.end.minute - self.start.minute)

    def is_working_day(self, day: date) -> bool:
        return WEEKDAYS[day.weekday()] in self.days and day not in self.bank_holidays


class Duration(_Strict):
    """A length of time: exactly one of `minutes` or `hours` (clock time), `working_hours` or
    `working_days` (working time: only the policy's working hours on working days count)."""

    minutes: Annotated[float | None, Field(gt=0, le=60 * 24 * 90)] = None
    hours: Annotated[float | None, Field(gt=0, le=24 * 90)] = None
    working_hours: Annotated[float | None, Field(gt=0, le=24 * 90)] = None
    working_days: Annotated[float | None, Field(gt=0, le=90)] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Duration:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of minutes, hours, working_hours, working_days")
        return self

    @property
    def in_working_time(self) -> bool:
        return self.working_hours is not None or self.working_days is not None

    def length(self, working: WorkingTime) -> timedelta:
        """Clock length, or for working-time durations the amount of working time."""
        if self.minutes is not None:
            return timedelta(minutes=self.minutes)
        if self.hours is not None:
            return timedelta(hours=self.hours)
        if self.working_hours is not None:
            return timedelta(hours=self.working_hours)
        assert self.working_days is not None
        return working.day_length * self.working_days

    def describe(self) -> str:
        for name, unit in (
            ("minutes", "minute"),
            ("hours", "hour"),
            ("working_hours", "working hour"),
            ("working_days", "working day"),
        ):
            value = getattr(self, name)
            if value is not None:
                number = f"{value:g}"
                return f"{number} {unit}" + ("" if value == 1 else "s")
        return ""


class DeadlineOverrides(_Strict):
    routine: Duration | None = None
    urgent: Duration | None = None
    threat_to_life: Duration | None = None


class ReviewDeadlines(_Strict):
    """How long a stage has to decide, by urgency; `stages` overrides them for named stages."""

    routine: Duration = Duration(working_days=3)
    urgent: Duration = Duration(hours=8)
    threat_to_life: Duration = Duration(hours=1)
    stages: dict[str, DeadlineOverrides] = {}
    # While a reviewer's question waits on the officer the stage's clock stops: no reminders, and the due
    # time moves on by the time spent waiting once the officer answers.
    pause_while_awaiting_officer: bool = True

    def for_stage(self, stage_id: str, urgency: str) -> Duration:
        override = self.stages.get(stage_id)
        chosen = getattr(override, urgency) if override is not None else None
        return chosen if chosen is not None else getattr(self, urgency)


class ByUrgencyDuration(_Strict):
    routine: Duration
    urgent: Duration
    threat_to_life: Duration

    def of(self, urgency: str) -> Duration:
        return getattr(self, urgency)  # type: ignore[no-any-return]


class ByUrgencyCount(_Strict):
    routine: Annotated[int, Field(ge=1, le=100)] = 3
    urgent: Annotated[int, Field(ge=1, le=100)] = 2
    threat_to_life: Annotated[int, Field(ge=1, le=100)] = 1

    def of(self, urgency: str) -> int:
        return int(getattr(self, urgency))


class ByUrgencyMultiple(_Strict):
    routine: Annotated[float, Field(ge=1, le=20)] = 2.0
    urgent: Annotated[float, Field(ge=1, le=20)] = 1.5
    threat_to_life: Annotated[float, Field(ge=1, le=20)] = 1.5

    def of(self, urgency: str) -> float:
        return float(getattr(self, urgency))


class Reminders(_Strict):
    """Overdue reviews: repeat reminders, escalation to the leads, and approval expiry warnings."""

    repeat_every: ByUrgencyDuration = ByUrgencyDuration(
        routine=Duration(working_hours=4), urgent=Duration(hours=2), threat_to_life=Duration(minutes=30)
    )
    # Reviews in one channel that fall due within this gap of the channel's last reminder wait and are
    # consolidated into the next one, so a busy channel gets one message, not a flood.
    channel_gap_minutes: Annotated[float, Field(ge=0, le=24 * 60)] = 10
    # Escalate when this many reminders went unanswered, or at this multiple of the deadline after the
    # stage started, whichever comes first.
    escalate_after_reminders: ByUrgencyCount = ByUrgencyCount()
    escalate_after_deadline_multiple: ByUrgencyMultiple = ByUrgencyMultiple()
    # The officer is told this long before an approval runs out.
    expiry_warning_hours: Annotated[float, Field(gt=0, le=24 * 30)] = 2


class Ratification(_Strict):
    """Urgent approvals the leads must ratify afterwards: a reminder goes to the leads' channel."""

    required_for: tuple[UrgencyName, ...] = ("threat_to_life",)
    # Only approvals given by a single review stage (e.g. the threat-to-life route) need it.
    single_stage_only: bool = True
    remind_after_hours: Annotated[float, Field(ge=0, le=24 * 30)] = 12


class DigestSettings(_Strict):
    """The leads' daily digest, at a wall-clock time in the policy's zone (the same all year)."""

    enabled: bool = True
    local_time: time = time(8, 0)
    # A digest missed while the bot was down is sent on start-up within this grace, else recorded as missed.
    grace_hours: Annotated[float, Field(gt=0, le=23)] = 6
    list_limit: Annotated[int, Field(ge=1, le=30)] = 10
    expiring_within_hours: Annotated[float, Field(gt=0, le=24 * 30)] = 24

    @field_validator("local_time", mode="before")
    @classmethod
    def _time_quoted(cls, value: Any) -> Any:
        return _quoted_time(value)

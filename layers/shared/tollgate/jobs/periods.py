"""Periods: job run keys, and each user's monthly allowance period anchored on their own reset day."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


def hourly(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H")


def daily(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%d")


def _anchored_day(year: int, month: int, anchor_day: int) -> date:
    # The 31st resets on the last day of shorter months (28 or 29 February, 30 April, ...).
    return date(year, month, min(anchor_day, calendar.monthrange(year, month)[1]))


def _shift_month(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


@dataclass(frozen=True, slots=True)
class AllowancePeriod:
    start: datetime  # UTC
    end: datetime  # UTC; the next reset
    key: str  # the local start date, e.g. "2026-02-28": the allowance is issued once per key

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


def allowance_period(anchor_day: int, timezone: str, moment: datetime) -> AllowancePeriod:
    """The allowance period holding `moment` for a user whose periods start at local midnight on `anchor_day`."""
    if not 1 <= anchor_day <= 31:
        raise ValueError("anchor_day must be 1 to 31")
    tz = ZoneInfo(timezone)
    local = moment.astimezone(tz)
    year, month = local.year, local.month
    start_day = _anchored_day(year, month, anchor_day)
    if local.date() < start_day:
        year, month = _shift_month(year, month, -1)
        start_day = _anchored_day(year, month, anchor_day)
    next_year, next_month = _shift_month(start_day.year, start_day.month, 1)
    end_day = _anchored_day(next_year, next_month, anchor_day)
    start = datetime.combine(start_day, time(0), tz).astimezone(UTC)
    end = datetime.combine(end_day, time(0), tz).astimezone(UTC)
    return AllowancePeriod(start=start, end=end, key=start_day.isoformat())


def next_period(period: AllowancePeriod, anchor_day: int, timezone: str) -> AllowancePeriod:
    # An hour past the end is inside the next period whatever the DST change in between.
    return allowance_period(anchor_day, timezone, period.end + timedelta(hours=1))

"""Each user's allowance period: anchored on their own reset day, at midnight in their own time zone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tollgate.jobs.periods import allowance_period, next_period


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("anchor", "moment", "start", "end", "key"),
    [
        # an ordinary month
        (15, "2026-03-20T10:00:00", "2026-03-15T00:00:00", "2026-04-15T00:00:00", "2026-03-15"),
        # before this month's anchor: the period began last month
        (15, "2026-03-10T10:00:00", "2026-02-15T00:00:00", "2026-03-15T00:00:00", "2026-02-15"),
        # the 31st resets on 28 February in a common year ...
        (31, "2026-03-05T00:00:00", "2026-02-28T00:00:00", "2026-03-31T00:00:00", "2026-02-28"),
        # ... and on 29 February in a leap year
        (31, "2028-03-01T00:00:00", "2028-02-29T00:00:00", "2028-03-31T00:00:00", "2028-02-29"),
        (30, "2026-02-28T12:00:00", "2026-02-28T00:00:00", "2026-03-30T00:00:00", "2026-02-28"),
        # the 31st resets on 30 April, then on 31 May
        (31, "2026-05-10T00:00:00", "2026-04-30T00:00:00", "2026-05-31T00:00:00", "2026-04-30"),
        # across a year end
        (31, "2027-01-15T00:00:00", "2026-12-31T00:00:00", "2027-01-31T00:00:00", "2026-12-31"),
        # exactly at the reset: the new period
        (1, "2026-06-01T00:00:00", "2026-06-01T00:00:00", "2026-07-01T00:00:00", "2026-06-01"),
    ],
)
def test_period_in_utc(anchor: int, moment: str, start: str, end: str, key: str) -> None:
    period = allowance_period(anchor, "UTC", utc(moment))
    assert (period.start, period.end, period.key) == (utc(start), utc(end), key)
    assert period.contains(utc(moment))


def test_a_user_in_tokyo_resets_at_their_midnight() -> None:
    # 2026-03-01 00:00 in Tokyo is 2026-02-28 15:00 UTC
    period = allowance_period(1, "Asia/Tokyo", utc("2026-02-28T16:00:00"))
    assert period.key == "2026-03-01"
    assert period.start == utc("2026-02-28T15:00:00")
    assert period.end == utc("2026-03-31T15:00:00")


def test_a_user_in_new_york_keeps_local_midnight_across_dst() -> None:
    # DST starts 2026-03-08 in New York: the March period starts at 05:00 UTC, April's at 04:00 UTC
    period = allowance_period(1, "America/New_York", utc("2026-03-15T12:00:00"))
    assert period.start == utc("2026-03-01T05:00:00")
    assert period.end == utc("2026-04-01T04:00:00")
    assert next_period(period, 1, "America/New_York").start == utc("2026-04-01T04:00:00")


def test_consecutive_periods_tile_the_year_without_gaps() -> None:
    period = allowance_period(31, "Europe/Berlin", utc("2026-01-31T12:00:00"))
    keys = []
    for _ in range(24):
        following = next_period(period, 31, "Europe/Berlin")
        assert following.start == period.end
        keys.append(period.key)
        period = following
    assert len(set(keys)) == 24
    assert "2026-02-28" in keys and "2027-02-28" in keys


def test_a_bad_anchor_is_refused() -> None:
    with pytest.raises(ValueError):
        allowance_period(0, "UTC", utc("2026-01-01T00:00:00"))

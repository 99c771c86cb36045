"""EventBridge schedule expressions as AWS reads them, and the local timer loop."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from tollgate_local.schedules import ScheduleError, ScheduleRunner, next_fire, scheduled_event
from tollgate_local.template import ScheduleDef


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("rate(5 minutes)", "2026-01-01T00:00:00", "2026-01-01T00:05:00"),
        ("rate(1 day)", "2026-01-31T10:00:00", "2026-02-01T10:00:00"),
        ("cron(30 2 * * ? *)", "2026-01-01T02:30:00", "2026-01-02T02:30:00"),
        ("cron(30 2 * * ? *)", "2026-01-01T01:00:00", "2026-01-01T02:30:00"),
        ("cron(0/15 * * * ? *)", "2026-01-01T00:16:00", "2026-01-01T00:30:00"),
        ("cron(0 0 1 * ? *)", "2026-01-15T00:00:00", "2026-02-01T00:00:00"),
        # the 31st skips months without one
        ("cron(0 0 31 * ? *)", "2026-01-31T00:00:00", "2026-03-31T00:00:00"),
        # 29 February only in leap years
        ("cron(0 12 29 2 ? *)", "2026-03-01T00:00:00", "2028-02-29T12:00:00"),
        # day of week: 1 = Sunday in AWS; names work too
        ("cron(0 9 ? * 2 *)", "2026-11-24T00:00:00", "2026-11-30T09:00:00"),
        ("cron(0 9 ? * MON-FRI *)", "2026-11-28T00:00:00", "2026-11-30T09:00:00"),
        ("cron(0 0 1 JAN ? 2027)", "2026-06-01T00:00:00", "2027-01-01T00:00:00"),
        ("at(2026-12-01T08:00:00)", "2026-11-24T00:00:00", "2026-12-01T08:00:00"),
    ],
)
def test_next_fire(expression: str, after: str, expected: str) -> None:
    assert next_fire(expression, at(after)) == at(expected)


def test_a_past_one_time_schedule_never_fires_again() -> None:
    assert next_fire("at(2020-01-01T00:00:00)", at("2026-01-01T00:00:00")) is None


def test_cron_in_a_time_zone_fires_at_local_time() -> None:
    # 09:00 in New York in winter is 14:00 UTC
    fire = next_fire("cron(0 9 * * ? *)", at("2026-01-10T00:00:00"), "America/New_York")
    assert fire == at("2026-01-10T14:00:00")


@pytest.mark.parametrize(
    "expression",
    ["rate(0 minutes)", "rate(5 fortnights)", "cron(0 0 * * * *)", "cron(0 0 L * ? *)", "cron(61 0 * * ? *)",
     "every day", "cron(0 0 * *)"],
)  # fmt: skip
def test_bad_expressions_are_refused(expression: str) -> None:
    with pytest.raises(ScheduleError):
        next_fire(expression, at("2026-01-01T00:00:00"))


def test_scheduled_event_carries_the_clock_or_the_schedules_input() -> None:
    schedule = ScheduleDef("Nightly", "Jobs", "cron(0 0 * * ? *)", None, True, "UTC")
    event = scheduled_event(schedule, at("2026-02-28T23:59:00"))
    assert event["detail-type"] == "Scheduled Event"
    assert event["time"] == "2026-02-28T23:59:00Z"
    assert event["resources"][0].endswith("schedule/default/Nightly")
    with_input = ScheduleDef("Hourly", "Jobs", "rate(1 hour)", '{"job": "hourly"}', True, "UTC")
    assert scheduled_event(with_input, at("2026-01-01T00:00:00")) == {"job": "hourly"}


def test_the_runner_fires_due_schedules_and_skips_disabled_ones() -> None:
    # Given a one-time schedule two seconds from now and a disabled one
    soon = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S")
    fired = threading.Event()
    seen: list[str] = []

    def invoke(schedule: ScheduleDef, when: datetime) -> None:
        seen.append(schedule.name)
        fired.set()

    runner = ScheduleRunner(
        {
            "Soon": ScheduleDef("Soon", "F", f"at({soon})", None, True, "UTC"),
            "Off": ScheduleDef("Off", "F", "rate(1 minute)", None, False, "UTC"),
        },
        invoke,
    )
    # When it runs
    runner.start()
    try:
        # Then the due schedule fires once, the disabled one never
        assert fired.wait(10)
    finally:
        runner.stop()
    assert seen == ["Soon"]

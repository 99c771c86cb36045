"""EventBridge schedule expressions (`rate(...)`, `cron(...)`, `at(...)`) and a local timer loop for them."""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tollgate_local.runtime import ACCOUNT_ID, REGION
from tollgate_local.template import ScheduleDef

log = logging.getLogger("tollgate_local.schedules")

RATE_UNITS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400}
MONTHS = {
    m: i
    for i, m in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], start=1)
}
DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"], start=1)}


class ScheduleError(ValueError):
    pass


def _parse_field(text: str, low: int, high: int, names: dict[str, int] | None = None) -> frozenset[int] | None:
    """A cron field as the set of values it allows; None for `*` and `?` (anything)."""
    if text in {"*", "?"}:
        return None
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        stepped = "/" in part
        if stepped:
            part, step_text = part.split("/", 1)
            step = int(step_text)
            if step < 1:
                raise ScheduleError(f"bad step in {text!r}")
        if part in {"*", ""}:
            start, end = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _value(a, names), _value(b, names)
        else:
            start = _value(part, names)
            end = high if stepped else start
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise ScheduleError(f"{text!r} is out of range {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _value(text: str, names: dict[str, int] | None) -> int:
    if names and text.upper() in names:
        return names[text.upper()]
    if not text.isdigit():
        raise ScheduleError(f"unsupported cron value {text!r} (L, W and # are not supported locally)")
    return int(text)


@dataclass(frozen=True)
class CronSpec:
    minutes: frozenset[int] | None
    hours: frozenset[int] | None
    days_of_month: frozenset[int] | None
    months: frozenset[int] | None
    days_of_week: frozenset[int] | None  # 1 = Sunday, as in AWS
    years: frozenset[int] | None

    @classmethod
    def parse(cls, body: str) -> CronSpec:
        fields = body.split()
        if len(fields) != 6:
            raise ScheduleError(f"cron() takes 6 fields, got {len(fields)}: {body!r}")
        minute, hour, dom, month, dow, year = fields
        if (dom == "?") == (dow == "?"):
            raise ScheduleError("one of day-of-month and day-of-week must be '?'")
        return cls(
            _parse_field(minute, 0, 59),
            _parse_field(hour, 0, 23),
            _parse_field(dom, 1, 31),
            _parse_field(month, 1, 12, MONTHS),
            _parse_field(dow, 1, 7, DAYS),
            _parse_field(year, 1970, 2199),
        )

    def _day_matches(self, day: datetime) -> bool:
        aws_dow = (day.isoweekday() % 7) + 1  # Monday=1..Sunday=7 -> Sunday=1..Saturday=7
        return (
            (self.years is None or day.year in self.years)
            and (self.months is None or day.month in self.months)
            and (self.days_of_month is None or day.day in self.days_of_month)
            and (self.days_of_week is None or aws_dow in self.days_of_week)
        )

    def next_after(self, moment: datetime) -> datetime | None:
        start = (moment + timedelta(minutes=1)).replace(second=0, microsecond=0)
        hours = sorted(self.hours) if self.hours is not None else list(range(24))
        minutes = sorted(self.minutes) if self.minutes is not None else list(range(60))
        day = start.replace(hour=0, minute=0)
        for _ in range(366 * 5):
            if self._day_matches(day):
                for h in hours:
                    for m in minutes:
                        candidate = day.replace(hour=h, minute=m)
                        if candidate >= start:
                            return candidate
            day = (day + timedelta(days=1)).replace(hour=0, minute=0)
        return None


def next_fire(expression: str, after: datetime, timezone: str = "UTC") -> datetime | None:
    """When `expression` next fires strictly after `after` (an aware datetime); None if never again."""
    tz = ZoneInfo(timezone)
    expr = expression.strip()
    if m := re.fullmatch(r"rate\((\d+)\s+(\w+)\)", expr):
        count, unit = int(m.group(1)), m.group(2).lower()
        if unit not in RATE_UNITS or count < 1:
            raise ScheduleError(f"bad rate expression {expression!r}")
        return after + timedelta(seconds=count * RATE_UNITS[unit])
    if m := re.fullmatch(r"cron\((.+)\)", expr):
        local = CronSpec.parse(m.group(1)).next_after(after.astimezone(tz).replace(tzinfo=None))
        return None if local is None else local.replace(tzinfo=tz).astimezone(UTC)
    if m := re.fullmatch(r"at\((\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\)", expr):
        at = datetime.fromisoformat(m.group(1)).replace(tzinfo=tz).astimezone(UTC)
        return at if at > after else None
    raise ScheduleError(f"unsupported schedule expression {expression!r}")


def scheduled_event(schedule: ScheduleDef, now: datetime) -> Any:
    """What the target function receives: the schedule's Input if it has one, else a Scheduled Event."""
    if schedule.input:
        return json.loads(schedule.input)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "account": ACCOUNT_ID,
        "time": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [f"arn:aws:scheduler:{REGION}:{ACCOUNT_ID}:schedule/default/{schedule.name}"],
        "detail": {},
    }


class ScheduleRunner:
    """Runs each enabled schedule on its timer in a background thread until `stop()`."""

    def __init__(self, schedules: dict[str, ScheduleDef], invoke: Callable[[ScheduleDef, datetime], Any]) -> None:
        self.schedules = {name: s for name, s in schedules.items() if s.enabled}
        self.invoke = invoke
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tollgate-schedules", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        now = datetime.now(UTC)
        due = {name: next_fire(s.expression, now, s.timezone) for name, s in self.schedules.items()}
        while not self._stop.is_set():
            pending = {name: at for name, at in due.items() if at is not None}
            if not pending:
                return
            name, at = min(pending.items(), key=lambda item: item[1])
            wait = (at - datetime.now(UTC)).total_seconds()
            if wait > 0 and self._stop.wait(min(wait, 30)):
                return
            if datetime.now(UTC) < at:
                continue
            schedule = self.schedules[name]
            log.info("schedule %s fires", name)
            try:
                self.invoke(schedule, at)
            except Exception:
                log.exception("schedule %s failed", name)
            due[name] = next_fire(schedule.expression, at, schedule.timezone)

"""ProviderReconciliation's period key and cursor (no database, no provider)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from tollgate.jobs.provider_reconciliation import PHASES, Position, quarter_hour


def test_the_period_is_the_utc_quarter_hour() -> None:
    # Given moments at, inside and just before quarter hours, one in another time zone
    # When their period keys are taken
    # Then runs of one quarter hour share a key and the next quarter hour has its own
    assert quarter_hour(datetime(2026, 3, 1, 12, 2, tzinfo=UTC)) == "2026-03-01T12:00"
    assert quarter_hour(datetime(2026, 3, 1, 12, 14, 59, tzinfo=UTC)) == "2026-03-01T12:00"
    assert quarter_hour(datetime(2026, 3, 1, 12, 15, tzinfo=UTC)) == "2026-03-01T12:15"
    assert quarter_hour(datetime(2026, 3, 1, 23, 59, tzinfo=UTC)) == "2026-03-01T23:45"
    assert quarter_hour(datetime(2026, 3, 1, 14, 47, tzinfo=timezone(timedelta(hours=2)))) == "2026-03-01T12:45"


def test_a_cursor_round_trips_and_an_unreadable_one_starts_over() -> None:
    # Given positions in each phase
    positions = [Position(PHASES[0], after="evt_123"), Position(PHASES[1], page=3), Position(PHASES[3])]
    # When they are encoded and decoded
    # Then they come back equal
    assert [Position.decode(p.encode()) for p in positions] == positions
    # And a missing, malformed or unknown cursor starts at the first phase (every item is idempotent)
    for cursor in (None, "", "not json", '{"phase": "paypal"}', '{"page": 2}', "[1, 2]"):
        assert Position.decode(cursor) == Position(PHASES[0])

"""The bounds every input from outside is held to, whichever layer checks it.

Timestamps: 1970-01-01T00:00:00Z to 9999-01-01T00:00:00Z inclusive. PostgreSQL's `timestamptz` holds far more,
but Python's `datetime` ends at year 9999 and pg8000 converts an aware value to UTC before sending it: an instant
near either end with a large offset (`9999-12-31T23:59:59-14:00`) overflows inside the driver after it has
started a statement. The upper bound leaves a year of room for offsets and for arithmetic a service does on a
date (a grant's expiry plus days); the lower bound is the Unix epoch, before any record this backend keeps. A
time without an offset is read as UTC (API.md: times are ISO 8601 UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime

EARLIEST_TIMESTAMP = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP = datetime(9999, 1, 1, tzinfo=UTC)

# What a client may send as an Idempotency-Key (the edge's check, and `ai_usage.idempotency_key`'s size).
IDEMPOTENCY_KEY_MAX_LENGTH = 255
# Services store a client's key in the ledger under their own prefix (`rag-search:<key>`) and payment handling
# under `<provider>:<kind>:<id>`, so the ledger allows this much more (its column is 300 characters).
LEDGER_KEY_PREFIX_ROOM = 45
LEDGER_KEY_MAX_LENGTH = IDEMPOTENCY_KEY_MAX_LENGTH + LEDGER_KEY_PREFIX_ROOM

# How deeply a JSON body may nest arrays and objects. Real bodies (and provider webhooks) stay under ten;
# the bound keeps every parser and validator on the way far from Python's recursion limit.
MAX_JSON_DEPTH = 64


def bounded_timestamp(value: datetime) -> datetime:
    """`value` in UTC, or ValueError if it lies outside the documented range (naive values are UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # past year 9999 (or before year 1) once the offset is applied
        utc = None
    if utc is None or not EARLIEST_TIMESTAMP <= utc <= LATEST_TIMESTAMP:
        raise ValueError(
            f"the time must lie between {EARLIEST_TIMESTAMP.isoformat()} and {LATEST_TIMESTAMP.isoformat()}"
        )
    return utc

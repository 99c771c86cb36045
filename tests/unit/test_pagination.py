"""Signed, type-checked cursors: only a cursor the server issued for that list decodes."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tollgate import pagination
from tollgate.config import get_settings
from tollgate.errors import InvalidCursor
from tollgate.input_bounds import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, bounded_timestamp
from tollgate.models.credits import CreditTransaction, Plan
from tollgate.pagination import MAX_CURSOR_LENGTH, Keyset, decode_cursor, encode_cursor

LEDGER = Keyset((CreditTransaction.created_at, CreditTransaction.id), descending=True)
PLANS = Keyset((Plan.sort_order, Plan.id))
STAMP = datetime(2026, 11, 24, 5, 30, tzinfo=UTC)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _signed(scope: str, body: object) -> str:
    """A cursor signed with the deployment's key around an arbitrary payload (what a key leak would allow)."""
    payload = _b64(json.dumps(body).encode())
    return f"{payload}.{_b64(pagination._mac(scope, payload))}"


def test_a_keyset_names_its_columns_direction_and_key_types():
    assert LEDGER.scope == "credit_transactions.created_at,credit_transactions.id:desc"
    assert LEDGER.codes == "tu"
    assert PLANS.scope == "plans.sort_order,plans.id:asc" and PLANS.codes == "iu"


def test_an_issued_cursor_decodes_to_its_key():
    # Given a cursor the ledger list issued
    key = (STAMP, uuid.uuid4())
    cursor = encode_cursor(LEDGER.scope, key)
    # Then it is short, url-safe, and decodes to the same key
    assert len(cursor) < 200 and set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert LEDGER.decode(cursor) == key
    assert LEDGER.decode(None) is None and LEDGER.decode("") is None


@pytest.mark.parametrize("crafted", [[1, 2], ["a", "b"], [None, None], {"k": "tu", "v": [1, 2]}])
def test_unsigned_crafted_cursors_are_refused(crafted):
    # Given the crafted sort keys of the report, as raw base64 JSON (the old cursor format)
    cursor = _b64(json.dumps(crafted).encode())
    # When a list decodes it, Then it is invalid_cursor (a 400), never a value reaching SQL
    for keyset in (LEDGER, PLANS):
        with pytest.raises(InvalidCursor):
            keyset.decode(cursor)


def test_a_tampered_cursor_is_refused():
    # Given an issued cursor
    cursor = encode_cursor(PLANS.scope, (3, uuid.UUID(int=5)))
    payload, mac = cursor.split(".")
    forged_payload = _b64(json.dumps({"k": "iu", "v": [-1, str(uuid.UUID(int=5))]}, separators=(",", ":")).encode())
    # When its payload, its MAC or its length changes, Then every variant is refused
    for variant in (f"{forged_payload}.{mac}", f"{payload}.{mac[:-2]}", payload, f"{payload}.", cursor + "A"):
        with pytest.raises(InvalidCursor):
            PLANS.decode(variant)


def test_a_cursor_of_one_list_is_refused_by_another():
    cursor = encode_cursor(PLANS.scope, (3, uuid.UUID(int=5)))
    flipped = Keyset((Plan.sort_order, Plan.id), descending=True)
    with pytest.raises(InvalidCursor):
        flipped.decode(cursor)
    with pytest.raises(InvalidCursor):
        LEDGER.decode(cursor)


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_a_cursor_signed_by_another_deployment_is_refused(monkeypatch: pytest.MonkeyPatch, fresh_settings: None):
    # Given a cursor signed with another deployment's key
    monkeypatch.setenv("JWT_SIGNING_KEY", "another-deployment-" + "x" * 40)
    get_settings.cache_clear()
    cursor = encode_cursor(PLANS.scope, (3, uuid.UUID(int=5)))
    assert PLANS.decode(cursor) == (3, uuid.UUID(int=5))
    # When this deployment (its own key) reads it, Then it is refused
    monkeypatch.setenv("JWT_SIGNING_KEY", "this-deployment-" + "y" * 40)
    get_settings.cache_clear()
    with pytest.raises(InvalidCursor):
        PLANS.decode(cursor)


@pytest.mark.parametrize(
    "values",
    [
        [1, 2],  # wrong types under the right type letters
        ["2026-01-01T00:00:00+00:00", 7],
        [None, None],
        ["9999-12-31T23:59:59-14:00", str(uuid.UUID(int=1))],  # past the timestamp range
        ["1969-12-31T23:59:59+00:00", str(uuid.UUID(int=1))],
        ["2026-01-01T00:00:00", str(uuid.UUID(int=1))],  # no offset
        ["2026-01-01T00:00:00+00:00", "not-a-uuid"],
        ["2026-01-01T00:00:00+00:00"],
    ],
)
def test_even_a_signed_cursor_is_type_and_range_checked(values):
    # Given a payload signed with the right key but carrying values of the wrong type or range
    cursor = _signed(LEDGER.scope, {"k": "tu", "v": values})
    # Then decoding refuses it: the signature is not the only check
    with pytest.raises(InvalidCursor):
        LEDGER.decode(cursor)


def test_a_signed_cursor_with_other_key_types_is_refused():
    cursor = _signed(PLANS.scope, {"k": "su", "v": ["3", str(uuid.UUID(int=5))]})
    with pytest.raises(InvalidCursor):
        PLANS.decode(cursor)
    with pytest.raises(InvalidCursor):
        PLANS.decode(_signed(PLANS.scope, {"k": "iu", "v": [True, str(uuid.UUID(int=5))]}))
    with pytest.raises(InvalidCursor):
        PLANS.decode(_signed(PLANS.scope, {"k": "iu", "v": [2**70, str(uuid.UUID(int=5))]}))


def test_an_over_long_or_non_ascii_cursor_is_refused_before_any_work():
    with pytest.raises(InvalidCursor):
        decode_cursor("A" * (MAX_CURSOR_LENGTH + 1), LEDGER.scope, LEDGER.codes)
    with pytest.raises(InvalidCursor):
        decode_cursor("é.é", LEDGER.scope, LEDGER.codes)


def test_timestamps_are_bounded_and_returned_in_utc():
    # Given the documented range, Then its ends are accepted and returned in UTC
    assert bounded_timestamp(EARLIEST_TIMESTAMP) == EARLIEST_TIMESTAMP
    assert bounded_timestamp(LATEST_TIMESTAMP) == LATEST_TIMESTAMP
    assert bounded_timestamp(datetime(2026, 1, 1, 12, 0)) == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # naive: UTC
    shifted = datetime.fromisoformat("2026-01-01T02:00:00+02:00")
    assert bounded_timestamp(shifted).utcoffset() is not None and bounded_timestamp(shifted) == shifted
    assert bounded_timestamp(shifted).tzinfo is UTC
    # And anything past either end, including values whose offset overflows Python's datetime, is a ValueError
    for text in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-01-01T00:00:01Z", "1969-12-31T23:59Z"):
        with pytest.raises(ValueError, match="between"):
            bounded_timestamp(datetime.fromisoformat(text))

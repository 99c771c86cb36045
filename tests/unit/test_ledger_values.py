"""Pure rules of the ledger's edge: credit amounts, request fingerprints, pagination cursors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tollgate.errors import InvalidCursor, ValidationFailed
from tollgate.ledger import credits, fingerprint
from tollgate.pagination import check_limit, decode_cursor, encode_cursor

D = Decimal


@pytest.mark.parametrize(
    ("value", "expected"),
    [(D("1"), D("1.0000")), ("0.2", D("0.2000")), (D("1.50000"), D("1.5000")), (7, D("7.0000"))],
)
def test_credits_accepts_amounts_at_the_ledger_scale(value, expected):
    assert credits(value) == expected


@pytest.mark.parametrize("value", [D("0"), D("-1"), D("0.00001"), D("1e13"), D("NaN"), D("Infinity"), 1.5, True, "x"])
def test_credits_refuses_non_positive_over_precise_huge_or_non_decimal(value):
    with pytest.raises(ValidationFailed):
        credits(value)


def test_credits_signed_and_zero_modes():
    assert credits(D("-2.5"), signed=True) == D("-2.5")
    assert credits(D("0"), allow_zero=True) == D("0")
    with pytest.raises(ValidationFailed):
        credits(D("0"), signed=True)


def test_fingerprint_is_canonical():
    a = fingerprint("charge", operation="chat", quantity=D("2"), metadata={"b": 1, "a": 2})
    b = fingerprint("charge", metadata={"a": 2, "b": 1}, quantity=D("2.000"), operation="chat")
    assert a == b
    assert a != fingerprint("charge", operation="chat", quantity=D("3"), metadata={"b": 1, "a": 2})
    assert a != fingerprint("hold", operation="chat", quantity=D("2"), metadata={"b": 1, "a": 2})


def test_cursor_round_trips_its_sort_key():
    # Given sort keys of the types lists order by
    key = (datetime(2026, 11, 24, 5, 30, 0, 123456, tzinfo=UTC), uuid.uuid4())
    # When they are encoded for a list and decoded for the same list, Then they come back equal
    assert decode_cursor(encode_cursor("t.created_at,t.id:desc", key), "t.created_at,t.id:desc", "tu") == key
    plain = (3, uuid.UUID(int=5))
    assert decode_cursor(encode_cursor("p.sort_order,p.id:asc", plain), "p.sort_order,p.id:asc", "iu") == plain


SCOPE = "t.created_at,t.id:desc"


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "",
        "%%%",
        encode_cursor(SCOPE, [1]),  # one key where the list has two
        encode_cursor(SCOPE, [3, uuid.UUID(int=5)]),  # an int where the list keys a timestamp
        encode_cursor("p.sort_order,p.id:asc", [datetime(2026, 1, 1, tzinfo=UTC), uuid.UUID(int=5)]),  # another list
    ],
)
def test_bad_cursors_are_invalid_cursor_errors(cursor):
    # Given a cursor that is not one this list issued, When it is decoded, Then it is refused as a bad request
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor, SCOPE, "tu")


def test_limits():
    assert check_limit(None) == 20
    assert check_limit(100) == 100
    for bad in (0, 101, -1):
        with pytest.raises(ValidationFailed):
            check_limit(bad)

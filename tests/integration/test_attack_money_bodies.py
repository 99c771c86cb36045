"""Hostile bodies on the money routes: JSON that Python's parser accepts but PostgreSQL's jsonb and the
powertools body reader do not (NaN, Infinity, numbers past a double, bodies not in UTF-8) must be refused at the
edge with a 4xx, and never cost a credit or answer 5xx."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.credits_support import assert_consistent, balance, funded_user, ledger_rows
from tests.support import api_call

D = Decimal
COSTS = {"chat": "1"}

NOT_JSON_CONSTANTS = [
    b'{"operation":"chat","metadata":{"x":NaN}}',
    b'{"operation":"chat","metadata":{"x":Infinity}}',
    b'{"operation":"chat","metadata":{"x":-Infinity}}',
    b'{"operation":"chat","metadata":{"x":[1,{"y":NaN}]}}',
]


@pytest.mark.parametrize("raw", NOT_JSON_CONSTANTS)
def test_nan_and_infinity_in_a_charge_body_are_malformed_json(db, raw):
    # Given a funded user
    user_id = funded_user(db, "10", costs=COSTS)
    # When a charge's metadata carries NaN or Infinity (not JSON, though Python's parser takes them)
    response = api_call("POST", "/credits/usage", raw_body=raw, as_user=user_id)
    # Then the edge refuses it as malformed JSON, and nothing was charged
    assert (response.status, response.error_code) == (400, "malformed_json"), response.json
    assert balance(db, user_id) == D(10)
    assert len(ledger_rows(db, user_id)) == 1


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/credits/usage", b'{"operation":"chat","metadata":{"x":1e400}}'),
        ("/credits/usage", b'{"operation":"chat","metadata":{"x":-1e400}}'),
        ("/credits/holds", b'{"amount":"1","metadata":{"x":1e999}}'),
        ("/credits/usage", b'{"operation":"chat","quantity":1e400}'),
    ],
)
def test_a_number_past_a_double_is_a_validation_error(db, path, raw):
    # Given a funded user
    user_id = funded_user(db, "10", costs=COSTS)
    # When a body carries a number no double holds (Python reads it as infinity)
    response = api_call("POST", path, raw_body=raw, as_user=user_id)
    # Then it is a 422 validation error, never a 500 from jsonb, and nothing moved
    assert (response.status, response.error_code) == (422, "validation_error"), response.json
    assert balance(db, user_id) == D(10)
    assert_consistent(db)


def test_a_hold_with_nan_metadata_holds_nothing(db):
    # Given a funded user
    user_id = funded_user(db, "10", costs=COSTS)
    # When a hold's metadata carries NaN
    response = api_call("POST", "/credits/holds", raw_body=b'{"amount":"2","metadata":{"x":NaN}}', as_user=user_id)
    # Then it is refused at the edge and nothing is held
    assert (response.status, response.error_code) == (400, "malformed_json"), response.json
    assert api_call("GET", "/credits/balance", as_user=user_id).json["held"] == "0.0000"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "latin-1"])
def test_a_body_not_in_utf8_is_malformed_json(db, encoding):
    # Given a funded user
    user_id = funded_user(db, "10", costs=COSTS)
    body = '{"operation":"chat","metadata":{"note":"café"}}'.encode(encoding)
    # When the charge body is JSON in another encoding (Python's parser detects UTF-16/32; the handler does not)
    response = api_call(
        "POST", "/credits/usage", raw_body=body, as_user=user_id,
        headers={"content-type": f"application/json; charset={encoding}"},
    )  # fmt: skip
    # Then the edge refuses it as malformed JSON, and nothing was charged
    assert (response.status, response.error_code) == (400, "malformed_json"), response.json
    assert balance(db, user_id) == D(10)


def test_finite_numbers_and_utf8_text_still_charge(db):
    # Given a funded user
    user_id = funded_user(db, "10", costs=COSTS)
    # When the metadata carries ordinary numbers (large, tiny, negative) and non-ASCII UTF-8 text
    raw = '{"operation":"chat","metadata":{"a":1e308,"b":-2.5e-300,"c":12345678901234567890,"d":"café ✓"}}'
    response = api_call("POST", "/credits/usage", raw_body=raw.encode(), as_user=user_id)
    # Then the charge goes through and the metadata is kept
    assert response.status == 201, response.json
    items = api_call("GET", "/credits/transactions", query="type=usage", as_user=user_id).json["items"]
    assert items[0]["metadata"]["d"] == "café ✓" and items[0]["metadata"]["c"] == 12345678901234567890
    assert balance(db, user_id) == D(9)

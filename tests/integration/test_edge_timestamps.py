"""Times from outside are bounded (1970-01-01T00:00:00Z..9999-01-01T00:00:00Z): out of range is 422
`validation_error` before any statement, and the container keeps answering correctly afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest

from tests.credits_support import admin, balance, funded_user, ledger_rows
from tests.edge_support import recorded_statements
from tests.support import api_call
from tollgate.db import UnitOfWork

COSTS = {"chat": "1"}
OUT_OF_RANGE = [
    "9999-12-31T23:59:59-14:00",  # the report's value: overflows pg8000's conversion to UTC
    "9999-12-31T23:59:59Z",
    "9999-01-01T00:00:01Z",
    "0001-01-01T00:00:00+14:00",
    "1969-12-31T23:59:59Z",
]


@pytest.fixture
def statements(db: Callable[[], UnitOfWork]) -> Iterator[list[str]]:
    """Every SQL statement sent to the database while the test runs (on the test database)."""
    with recorded_statements() as seen:
        yield seen


def test_out_of_range_query_times_are_422_before_any_statement(db, statements):
    # Given a funded user
    user_id = funded_user(db, "10", costs=COSTS)
    statements.clear()
    for stamp in OUT_OF_RANGE:
        for name in ("since", "until"):
            # When they list their ledger from or until a time outside the range
            response = api_call("GET", "/credits/transactions", query=f"{name}={quote(stamp)}", as_user=user_id)
            # Then it is a validation error naming the field, and the database was never asked
            assert (response.status, response.error_code) == (422, "validation_error"), (name, stamp, response.json)
            assert [d["loc"][-1] for d in response.json["error"]["details"]] == [name]
            assert statements == [], (name, stamp)


def test_the_range_ends_and_offsets_are_accepted(db):
    user_id = funded_user(db, "10", costs=COSTS)
    cases = [
        ("since", "1970-01-01T00:00:00Z", 1),
        ("until", "9999-01-01T00:00:00Z", 1),
        ("until", "9998-12-31T09:59:59-14:00", 1),  # 9998-12-31T23:59:59Z
        ("since", "2000-01-01T00:00:00", 1),  # no offset: UTC
        ("until", "1970-01-01T00:00:00+00:00", 0),
    ]
    for name, stamp, count in cases:
        response = api_call("GET", "/credits/transactions", query=f"{name}={quote(stamp)}", as_user=user_id)
        assert response.status == 200 and len(response.json["items"]) == count, (name, stamp, response.json)


def test_an_out_of_range_expiry_in_a_body_is_422_and_grants_nothing(db):
    # Given an admin and a user
    boss = admin(db)
    user_id = funded_user(db, "10")
    for stamp in OUT_OF_RANGE:
        # When the admin grants credits expiring at a time outside the range
        response = api_call(
            "POST", f"/admin/users/{user_id}/credits/adjustments", as_user=boss,
            body={"amount": "5", "reason": "goodwill", "expires_at": stamp},
        )  # fmt: skip
        # Then it is refused and nothing is granted
        assert (response.status, response.error_code) == (422, "validation_error"), (stamp, response.json)
    assert balance(db, user_id) == 10 and len(ledger_rows(db, user_id)) == 1
    # And a time inside the range still works, returned in UTC
    ok = api_call(
        "POST", f"/admin/users/{user_id}/credits/adjustments", as_user=boss,
        body={"amount": "5", "reason": "goodwill", "expires_at": "2999-06-01T12:00:00+02:00"},
    )  # fmt: skip
    assert ok.status == 201, ok.json
    grants = api_call("GET", f"/admin/users/{user_id}/credits", as_user=boss).json["grants"]
    assert any(g["expires_at"] in ("2999-06-01T10:00:00Z", "2999-06-01T10:00:00+00:00") for g in grants), grants


def test_after_refused_times_every_request_on_the_container_is_answered_right(db):
    # Given a user who sent every out-of-range time first
    user_id = funded_user(db, "50", costs=COSTS)
    for stamp in OUT_OF_RANGE:
        api_call("GET", "/credits/transactions", query=f"since={quote(stamp)}", as_user=user_id)
    # When they then charge ten times and read their ledger
    charges = [api_call("POST", "/credits/usage", body={"operation": "chat"}, as_user=user_id) for _ in range(10)]
    # Then every acknowledged charge is in the ledger, exactly once, and the balance matches
    assert [c.status for c in charges] == [201] * 10
    rows = {str(r.id) for r in ledger_rows(db, user_id)}
    assert {c.json["transaction_id"] for c in charges} <= rows
    assert balance(db, user_id) == 40

"""A price beyond what any balance can hold is refused like any charge the balance cannot cover (review finding)."""

from __future__ import annotations

from decimal import Decimal

from tests.credits_support import admin, funded_user
from tests.credits_support import balance as credit_balance
from tests.support import api_call


def test_a_charge_whose_price_overflows_the_ledger_is_refused_not_a_500(db):
    # Given an operation with a large (allowed) unit cost
    boss = admin(db)
    user_id = funded_user(db, "10")
    assert api_call("PUT", "/admin/feature-costs", body={"pricey": "1000"}, as_user=boss).status == 200
    # When a caller charges or holds an allowed quantity whose price exceeds NUMERIC(18, 4)
    body = {"operation": "pricey", "quantity": "999999999999"}
    usage = api_call("POST", "/credits/usage", body=body, as_user=user_id)
    hold = api_call("POST", "/credits/holds", body=body, as_user=user_id)
    # Then both are refused as insufficient credits (or invalid), never 500, and nothing moved
    assert usage.status in (402, 422), usage.json
    assert hold.status in (402, 422), hold.json
    assert credit_balance(db, user_id) == Decimal("10")

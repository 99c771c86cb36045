"""A discount code never applies to a subscription cart: the discount is taken off the line prices Stripe
charges, and on a subscription those recur every period (one use would discount every renewal)."""

from __future__ import annotations

from tests.commerce_orders_support import Db, checkout, discount, product, user, uses
from tests.payments_support import count, payments_env, stripe_api  # noqa: F401
from tests.provider_standins import StripeStandIn
from tests.support import api_call


def test_a_code_on_a_subscription_cart_is_refused_and_nothing_is_taken(
    db: Db,
    stripe_api: StripeStandIn,  # noqa: F811
) -> None:
    # Given a subscription product and a one-time product, and a percentage code
    club = product(db, name="Club", type="SUBSCRIPTION", amount="9.00", interval="month")
    widget = product(db, name="Widget", amount="10.00")
    code_id = discount(db, "WELCOME10", max_uses=5)
    buyer = user(db)
    # When the buyer validates and checks out the subscription with the code
    body = {"code": "WELCOME10", "items": [{"price_id": str(club.price_id), "quantity": 1}]}
    verdict = api_call("POST", "/discounts/validate", body=body, as_user=buyer)
    refused = checkout(buyer, [(club, 1)], code="WELCOME10")
    # Then both say why, no order is made and no use is reserved
    assert verdict.status == 200 and verdict.json["valid"] is False
    assert verdict.json["reason"] == "recurring_cart"
    assert refused.status == 422 and refused.json["error"]["code"] == "discount_invalid"
    assert refused.json["error"]["details"]["reason"] == "recurring_cart"
    assert count(db, "orders") == 0 and uses(db, code_id) == (0, 0)
    # And the same code still applies to a one-time cart
    assert checkout(buyer, [(widget, 1)], code="WELCOME10").status == 201
    assert uses(db, code_id) == (0, 1)

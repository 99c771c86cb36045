"""A Stripe subscription made outside Tollgate's checkout (the dashboard, the API) whose first paid invoice arrives
before any customer.subscription.* event: that invoice records the subscription row, as a checkout does, and is
the subscription's one plan order, with its amount; the subscription events that follow fill the row in (status,
plan, tier) and the renewals make no other order. A Tollgate checkout arriving after the invoice finds the same
order. Every delivery is signed with Stripe's scheme and goes through the gateway."""

# ruff: noqa: F403, F405
from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal

from sqlalchemy import text

from tests.integration.test_payments_stripe import invoice_obj, subscription_obj
from tests.integration.test_plan_orders_providers import (
    assert_history_shows,
    assert_one_plan_order,
    outcome,
    plan_orders,
    processed,
    stripe_ids,
    stripe_session,
)
from tests.payments_support import *
from tollgate.db import UnitOfWork
from tollgate_local.webhooks_cli import stripe_event

Db = Callable[[], UnitOfWork]


def link_customer(db: Db, user_id: uuid.UUID, customer: str) -> None:
    """The buyer is a Stripe customer already (an earlier checkout linked them), as a subscription made in the
    dashboard for them finds them."""
    with db() as uow:
        uow.session.execute(
            text("UPDATE users SET stripe_customer_id = :c WHERE id = :u"), {"c": customer, "u": user_id}
        )
        uow.commit()


def row_of(db: Db, sub_id: str) -> tuple[str, str | None, str]:
    with db() as uow:
        row = uow.session.execute(
            text(
                "SELECT s.status, s.tier, u.tier AS user_tier FROM subscriptions s JOIN users u ON u.id = s.user_id"
                " WHERE s.provider = 'stripe' AND s.provider_subscription_id = :s"
            ),
            {"s": sub_id},
        ).one()
        return row.status, row.tier, row.user_tier


def test_a_first_invoice_before_any_subscription_row_is_the_first_periods_order(db, payments_env, catalogue, buyer):
    # Given a subscription made in Stripe's dashboard for a known customer: no checkout, and its first invoice
    # (subscription_create, 19.00) delivered before customer.subscription.created
    sub_id, customer = stripe_ids()
    link_customer(db, buyer, customer)
    first = invoice_obj("in_first", sub_id, customer)
    first["billing_reason"] = "subscription_create"
    # When it is applied, and delivered again
    answer = processed(send_stripe(stripe_event("invoice.paid", first)))
    again = send_stripe(stripe_event("invoice.paid", first))
    # Then that invoice is the subscription's order, with its amount, naming a subscription row recorded now (no
    # tier yet: its own events bring status and plan); the allowance is granted once
    assert again.status == 200 and again.json["status"] == "processed"
    order = assert_one_plan_order(db, "stripe", sub_id, catalogue.pro_id, buyer, "19.00", "usd")
    assert order["provider_checkout_id"] == f"subscription:{sub_id}"
    assert outcome(db, answer)["order_id"] == str(order["id"])
    assert row_of(db, sub_id) == ("incomplete", None, "FREE")
    assert balance(db, buyer) == Decimal("1000")
    # When the subscription's events arrive afterwards
    processed(send_stripe(stripe_event("customer.subscription.created", subscription_obj(sub_id, customer, buyer))))
    processed(send_stripe(stripe_event("customer.subscription.updated", subscription_obj(sub_id, customer, buyer))))
    # Then the same row is the subscription, active and PRO, still with its one order
    assert count(db, "subscriptions", "provider = 'stripe'") == 1
    assert row_of(db, sub_id) == ("active", "PRO", "PRO")
    # When the next period is paid (for another amount)
    processed(send_stripe(stripe_event("invoice.paid", invoice_obj("in_second", sub_id, customer, amount=2500))))
    # Then no order is made for it: the first period's is the only one, read so through the gateway
    assert [o["id"] for o in plan_orders(db, "stripe")] == [order["id"]]
    assert count(db, "invoices", "provider = 'stripe' AND status = 'paid' AND amount_paid > 0") == 2
    assert_history_shows(db, order, buyer, catalogue.pro_id, "19.00")
    assert ledger_is_consistent(db, buyer)


def test_a_checkout_after_its_first_invoice_finds_the_order_the_invoice_made(db, payments_env, catalogue, buyer):
    # Given a Tollgate checkout's first invoice applied before the checkout and before any subscription event
    sub_id, customer = stripe_ids()
    first = invoice_obj("in_first", sub_id, customer, user_id=buyer)
    first["billing_reason"] = "subscription_create"
    processed(send_stripe(stripe_event("invoice.paid", first)))
    order = assert_one_plan_order(db, "stripe", sub_id, catalogue.pro_id, buyer, "19.00", "usd")
    # When the checkout completes, then the subscription's event arrives
    session = stripe_session(buyer, catalogue.pro_id, sub_id, customer, amount=1900)
    processed(send_stripe(stripe_event("checkout.session.completed", session)))
    processed(send_stripe(stripe_event("customer.subscription.created", subscription_obj(sub_id, customer, buyer))))
    # Then one subscription row and still the one order the invoice made
    assert count(db, "subscriptions", "provider = 'stripe'") == 1
    assert [o["id"] for o in plan_orders(db, "stripe")] == [order["id"]]
    assert row_of(db, sub_id) == ("active", "PRO", "PRO")
    assert balance(db, buyer) == Decimal("1000")

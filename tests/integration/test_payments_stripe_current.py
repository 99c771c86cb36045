"""Stripe at the pinned current API version: proration invoices grant what they bill, and refunds of
subscription invoices claw back through the links the current API gives (invoice_payment, payment intent).

Objects are built from tests/fixtures/providers/stripe/current/ (Stripe's own OpenAPI fixtures); the 2020-2024
shapes from tests/fixtures/providers/stripe/. Every event is signed by the stripe library and checked by
`stripe.Webhook.construct_event`, through the real webhook handler.
"""

# ruff: noqa: F403, F405
from __future__ import annotations

import copy
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import PROVIDER_FIXTURES
from tests.integration.test_payments_stripe import invoice_obj, subscription_obj
from tests.payments_support import *
from tollgate.payments.adapters import STRIPE_API_VERSION
from tollgate_local.webhooks_cli import stripe_event

CURRENT = PROVIDER_FIXTURES / "stripe" / "current"
DAY = 86_400
README = Path(__file__).resolve().parents[2] / "README.md"


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CURRENT / f"{name}.json").read_text())
    return loaded


def event(event_type: str, obj: dict[str, Any], *, created: int | None = None) -> dict[str, Any]:
    """An event envelope around a current-shape object, as an endpoint at the pinned version receives it."""
    envelope = stripe_event(event_type, obj, created=created)
    envelope["api_version"] = STRIPE_API_VERSION
    return envelope


def subscription(sub_id: str, customer: str, user_id: uuid.UUID, *, price: str, start: int, end: int) -> dict:
    """A current-shape subscription: its period lives on its item only."""
    obj = fixture("subscription")
    obj.update(
        id=sub_id,
        customer=customer,
        status="active",
        metadata={"user_id": str(user_id)},
        cancel_at=None,
        canceled_at=None,
        ended_at=None,
        cancel_at_period_end=False,
        trial_start=None,
        trial_end=None,
    )
    assert "current_period_end" not in obj
    item = obj["items"]["data"][0]
    item.update(current_period_start=start, current_period_end=end, subscription=sub_id)
    item["price"]["id"] = price
    item["plan"]["id"] = price
    return obj


def line(price: str, amount: int, start: int, end: int, *, sub_id: str, proration: bool = False) -> dict:
    """A current-shape invoice line: price in `pricing.price_details`, proration flag in
    `parent.subscription_item_details`."""
    template = fixture("invoice")["lines"]["data"][0]
    obj = copy.deepcopy(template)
    credited = {"invoice": "in_previous", "invoice_line_items": ["il_previous"]} if amount < 0 else None
    obj.update(
        id=f"il_{uuid.uuid4().hex[:20]}",
        amount=amount,
        subtotal=amount,
        description="Remaining time" if amount >= 0 else "Unused time",
        period={"start": start, "end": end},
        pricing={"type": "price_details", "price_details": {"price": price, "product": "prod_x"}},
        parent={
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": f"ii_{uuid.uuid4().hex[:16]}" if proration else None,
                "proration": proration,
                "proration_details": {"credited_items": credited},
                "subscription": sub_id,
                "subscription_item": "si_current",
            },
        },
    )
    assert "price" not in obj and "proration" not in obj
    return obj


def invoice(invoice_id: str, sub_id: str, customer: str, lines: list[dict], *, paid: int) -> dict:
    """A current-shape paid invoice: subscription under `parent.subscription_details`, no `charge`."""
    obj = fixture("invoice")
    obj.update(
        id=invoice_id,
        customer=customer,
        status="paid",
        amount_due=paid,
        amount_paid=paid,
        amount_remaining=0,
        total=paid,
        subtotal=paid,
        billing_reason="subscription_update" if all(_prorated(x) for x in lines) else "subscription_cycle",
        parent={
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": {}, "subscription": sub_id},
        },
    )
    obj["lines"]["data"] = lines
    assert "charge" not in obj and "payment_intent" not in obj
    return obj


def _prorated(x: dict) -> bool:
    return bool(x["parent"]["subscription_item_details"]["proration"])


def old_invoice(invoice_id: str, sub_id: str, customer: str, lines: list[dict], *, paid: int) -> dict:
    """The same invoice in the 2020-2024 shape: top-level `subscription`, `line.price`, `line.proration`."""
    obj = invoice_obj(invoice_id, sub_id, customer, amount=paid)
    template = obj["lines"]["data"][0]
    obj["lines"]["data"] = []
    for current in lines:
        old = copy.deepcopy(template)
        old.update(
            id=current["id"],
            amount=current["amount"],
            period=current["period"],
            proration=_prorated(current),
            type="invoiceitem" if _prorated(current) else "subscription",
        )
        old["price"]["id"] = current["pricing"]["price_details"]["price"]
        old["subscription"] = sub_id
        obj["lines"]["data"].append(old)
    return obj


def invoice_payment(invoice_id: str, payment_intent: str, amount: int) -> dict:
    obj = fixture("invoice_payment")
    obj.update(
        id=f"inpay_{uuid.uuid4().hex[:20]}",
        invoice=invoice_id,
        amount_paid=amount,
        amount_requested=amount,
        currency="usd",
        livemode=False,
        status="paid",
        payment={"type": "payment_intent", "payment_intent": payment_intent},
    )
    return obj


def refunded_charge(charge_id: str, payment_intent: str, amount: int, refunded: int) -> dict:
    """A current-shape charge after a refund: it names its payment intent and no invoice."""
    obj = fixture("charge")
    obj.update(
        id=charge_id,
        payment_intent=payment_intent,
        amount=amount,
        amount_captured=amount,
        amount_refunded=refunded,
        captured=True,
        refunded=refunded >= amount,
    )
    assert "invoice" not in obj
    return obj


def delivered(db: Any, payload: dict) -> dict:
    """Deliver a signed event; answer its receipt with the stored outcome (`detail`)."""
    response = send_stripe(payload)
    assert response.status == 200, response.body
    [row] = [r for r in webhook_rows(db) if r["event_id"] == payload["id"]]
    return {**response.json, "detail": row["outcome"] or {}}


def user_row(db, user_id: uuid.UUID) -> Any:
    with db() as uow:
        return uow.session.execute(text("SELECT tier FROM users WHERE id = :u"), {"u": user_id}).one()


# --- the pinned version -----------------------------------------------------------------------------------------
def test_the_api_version_is_pinned_once_and_named_in_the_readme(db, stripe_api, catalogue, buyer):
    import stripe

    # Given the buyer starts a Stripe checkout (the adapter is built and calls the stand-in)
    response = api_call(
        "POST",
        "/billing/checkout",
        as_user=buyer,
        body={
            "provider": "stripe",
            "kind": "pack",
            "item_id": str(catalogue.pack_id),
            "success_url": "https://app.example.com/ok",
            "cancel_url": "https://app.example.com/cancel",
        },
    )
    assert response.status == 200, response.body
    # Then the library and the request speak the pinned version, which the README tells operators to set
    assert stripe.api_version == STRIPE_API_VERSION
    assert stripe_api.requests[-1].headers["stripe-version"] == STRIPE_API_VERSION
    assert f"set your webhook endpoint's API version to `{STRIPE_API_VERSION}`" in " ".join(README.read_text().split())


# --- proration ----------------------------------------------------------------------------------------------------
SHAPES = {"current": invoice, "2020-2024": old_invoice}


def subscribed(db, buyer: uuid.UUID, sub_id: str, customer: str, *, price: str, start: int, end: int) -> None:
    """A current-shape subscription created and its first period's invoice paid."""
    delivered(
        db,
        event(
            "customer.subscription.created",
            subscription(sub_id, customer, buyer, price=price, start=start, end=end),
            created=start,
        ),
    )
    amount = 1900 if price == "price_pro_month" else 7900
    first = invoice(
        f"in_first_{sub_id}", sub_id, customer, [line(price, amount, start, end, sub_id=sub_id)], paid=amount
    )
    assert delivered(db, event("invoice.paid", first, created=start + 1))["status"] == "processed"


@pytest.mark.parametrize("shape", SHAPES)
def test_an_upgrade_halfway_grants_half_the_allowance_difference_once(db, payments_env, catalogue, buyer, shape):
    # Given a PRO subscription (1000 a month) whose first period's allowance was granted, half of it gone by
    start = now() - 15 * DAY
    end, half = start + 30 * DAY, start + 15 * DAY
    sub_id, customer = f"sub_up_{shape}", f"cus_up_{shape}"
    subscribed(db, buyer, sub_id, customer, price="price_pro_month", start=start, end=end)
    assert balance(db, buyer) == Decimal("1000")
    # When the plan moves to BUSINESS (5000) halfway, and Stripe bills half the price difference at once
    moved = subscription(sub_id, customer, buyer, price="price_biz_month", start=start, end=end)
    delivered(db, event("customer.subscription.updated", moved, created=half))
    lines = [
        line("price_pro_month", -950, half, end, sub_id=sub_id, proration=True),
        line("price_biz_month", 3950, half, end, sub_id=sub_id, proration=True),
    ]
    paid = SHAPES[shape](f"in_up_{shape}", sub_id, customer, lines, paid=3000)
    first = delivered(db, event("invoice.paid", paid, created=half + 1))
    # Then it grants (5000 - 1000) x 15/30 days = 2000 on top of what PRO left, not the whole 5000 nor nothing
    assert first["status"] == "processed", first
    assert balance(db, buyer) == Decimal("3000")
    # And a redelivery, or the invoice's other event, never grants it again
    delivered(db, event("invoice.paid", paid, created=half + 1))
    delivered(db, event("invoice.payment_succeeded", paid, created=half + 2))
    assert balance(db, buyer) == Decimal("3000")
    [top_up] = [g for g in grants(db, buyer, "allowance") if g["source_key"] == f"allowance:stripe:in_up_{shape}"]
    assert top_up["amount"] == Decimal("2000") and top_up["expires_at"] is None  # BUSINESS rolls over in full
    assert user_row(db, buyer).tier == "BUSINESS"
    assert ledger_is_consistent(db, buyer)


def test_a_proration_whose_subscription_is_unknown_is_prorated_over_its_calendar_month(
    db, payments_env, catalogue, buyer
):
    # Given the first invoice of a BUSINESS subscription that started on the 10th of a 31-day month, billed from
    # the 20th (Stripe prorates the partial month), before any subscription event arrived
    from datetime import UTC, datetime

    end = int(datetime(2027, 1, 10, tzinfo=UTC).timestamp())  # the period is Dec 10 - Jan 10: 31 days
    start = end - 21 * DAY
    sub_id, customer = "sub_partial", "cus_partial"
    lines = [line("price_biz_month", 5352, start, end, sub_id=sub_id, proration=True)]
    paid = invoice("in_partial", sub_id, customer, lines, paid=5352)
    paid["parent"]["subscription_details"]["metadata"] = {"user_id": str(buyer)}
    # When it is paid
    outcome = delivered(db, event("invoice.paid", paid))
    # Then it grants BUSINESS's allowance for 21 of the period's 31 days
    assert outcome["status"] == "processed", outcome
    assert balance(db, buyer) == (Decimal(5000) * 21 / 31).quantize(Decimal("0.0001"))


@pytest.mark.parametrize("shape", SHAPES)
def test_a_downgrade_grants_nothing_until_the_next_period(db, payments_env, catalogue, buyer, shape):
    # Given a BUSINESS subscription with its allowance granted
    start = now() - 10 * DAY
    end, change = start + 30 * DAY, start + 10 * DAY
    sub_id, customer = f"sub_down_{shape}", f"cus_down_{shape}"
    subscribed(db, buyer, sub_id, customer, price="price_biz_month", start=start, end=end)
    assert balance(db, buyer) == Decimal("5000")
    # When it moves down to PRO and the proration invoice (a credit, paid at 0) arrives
    delivered(
        db,
        event(
            "customer.subscription.updated",
            subscription(sub_id, customer, buyer, price="price_pro_month", start=start, end=end),
            created=change,
        ),
    )
    lines = [
        line("price_biz_month", -5267, change, end, sub_id=sub_id, proration=True),
        line("price_pro_month", 1267, change, end, sub_id=sub_id, proration=True),
    ]
    outcome = delivered(db, event("invoice.paid", SHAPES[shape](f"in_down_{shape}", sub_id, customer, lines, paid=0)))
    # Then nothing is granted (nor taken): PRO's allowance comes with the next period
    assert outcome["status"] == "processed" and outcome["detail"]["granted"] == "0", outcome
    assert balance(db, buyer) == Decimal("5000")
    nxt = SHAPES[shape](
        f"in_next_{shape}",
        sub_id,
        customer,
        [line("price_pro_month", 1900, end, end + 30 * DAY, sub_id=sub_id)],
        paid=1900,
    )
    delivered(db, event("invoice.paid", nxt))
    # (PRO's rollover `none` then lets what was left of BUSINESS's allowance expire, as any new period does)
    assert [g["amount"] for g in grants(db, buyer, "allowance")] == [Decimal("5000"), Decimal("1000")]
    assert balance(db, buyer) == Decimal("1000")
    assert ledger_is_consistent(db, buyer)


def test_changing_plans_back_and_forth_never_adds_up_to_more_than_one_period_of_the_best_plan(
    db, payments_env, catalogue, buyer
):
    # Given a PRO period (1000 granted); each downgrade's credit pays for the next upgrade in the same period
    start = now() - 15 * DAY
    end = start + 30 * DAY
    sub_id, customer = "sub_cycle", "cus_cycle"
    subscribed(db, buyer, sub_id, customer, price="price_pro_month", start=start, end=end)
    moment = start + 15 * DAY
    for n in range(4):
        # When it is upgraded to BUSINESS and downgraded again at once, four times (each upgrade worth 2000)
        up = [
            line("price_pro_month", -950, moment, end, sub_id=sub_id, proration=True),
            line("price_biz_month", 3950, moment, end, sub_id=sub_id, proration=True),
        ]
        down = [
            line("price_biz_month", -3950, moment, end, sub_id=sub_id, proration=True),
            line("price_pro_month", 950, moment, end, sub_id=sub_id, proration=True),
        ]
        delivered(db, event("invoice.paid", invoice(f"in_cycle_up_{n}", sub_id, customer, up, paid=0)))
        delivered(db, event("invoice.paid", invoice(f"in_cycle_down_{n}", sub_id, customer, down, paid=0)))
    # Then the period holds at most one BUSINESS allowance: 1000 + 2000 + 2000, and nothing more after that
    assert balance(db, buyer) == Decimal("5000")
    assert ledger_is_consistent(db, buyer)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_renewal_carrying_prorations_grants_at_most_one_period_of_its_plan(db, payments_env, catalogue, buyer, shape):
    # Given an upgrade whose prorations Stripe kept for the renewal invoice (proration_behavior create_prorations)
    start = now() - 30 * DAY
    end, half = start + 30 * DAY, start + 15 * DAY
    sub_id, customer = f"sub_renew_{shape}", f"cus_renew_{shape}"
    subscribed(db, buyer, sub_id, customer, price="price_pro_month", start=start, end=end)
    lines = [
        line("price_pro_month", -950, half, end, sub_id=sub_id, proration=True),
        line("price_biz_month", 3950, half, end, sub_id=sub_id, proration=True),
        line("price_biz_month", 7900, end, end + 30 * DAY, sub_id=sub_id),
    ]
    # When the renewal (the next BUSINESS period plus the past half period's difference) is paid
    outcome = delivered(
        db, event("invoice.paid", SHAPES[shape](f"in_renew_{shape}", sub_id, customer, lines, paid=10900))
    )
    # Then it grants one BUSINESS period, 5000, and no more
    assert outcome["detail"]["granted"] == "5000.0000", outcome
    assert balance(db, buyer) == Decimal("6000")


# --- refunds of subscription invoices -----------------------------------------------------------------------------
def paid_pro_invoice(db, buyer: uuid.UUID, tag: str) -> tuple[str, str, dict]:
    start = now() - DAY
    sub_id, customer = f"sub_ref_{tag}", f"cus_ref_{tag}"
    delivered(
        db,
        event(
            "customer.subscription.created",
            subscription(sub_id, customer, buyer, price="price_pro_month", start=start, end=start + 30 * DAY),
            created=start,
        ),
    )
    invoice_id = f"in_ref_{tag}"
    return (
        invoice_id,
        f"pi_ref_{tag}",
        invoice(
            invoice_id,
            sub_id,
            customer,
            [line("price_pro_month", 1900, start, start + 30 * DAY, sub_id=sub_id)],
            paid=1900,
        ),
    )


def test_a_refund_of_a_subscription_invoice_claws_back_through_its_invoice_payment(db, payments_env, catalogue, buyer):
    # Given a paid PRO invoice (1000 credits) and the invoice payment naming its payment intent
    invoice_id, pi, paid = paid_pro_invoice(db, buyer, "a")
    delivered(db, event("invoice.paid", paid))
    linked = delivered(db, event("invoice_payment.paid", invoice_payment(invoice_id, pi, 1900)))
    assert linked["status"] == "processed", linked
    assert balance(db, buyer) == Decimal("1000")
    # When half of its charge (which names no invoice) is refunded, the same step redelivered, then the rest
    outcome = delivered(db, event("charge.refunded", refunded_charge("ch_ref_a", pi, 1900, 950)))
    assert outcome["status"] == "processed", outcome
    assert balance(db, buyer) == Decimal("500")
    delivered(db, event("charge.refunded", refunded_charge("ch_ref_a", pi, 1900, 950)))
    assert balance(db, buyer) == Decimal("500")
    delivered(db, event("charge.refunded", refunded_charge("ch_ref_a", pi, 1900, 1900)))
    # Then each step clawed back its share once, and the invoice is refunded
    assert balance(db, buyer) == 0
    assert count(db, "refunds", "kind = 'refund'") == 2
    with db() as uow:
        row = uow.session.execute(
            text(
                "SELECT status, provider_payment_intent_id, provider_charge_id FROM invoices "
                "WHERE provider_invoice_id = :i"
            ),
            {"i": invoice_id},
        ).one()
    assert tuple(row) == ("refunded", pi, "ch_ref_a")
    assert ledger_is_consistent(db, buyer)


def test_an_invoice_payment_before_its_invoice_and_a_refund_before_both_still_claw_back(
    db, payments_env, catalogue, buyer
):
    # Given the refund arrives first, then the invoice payment, and the paid invoice last
    invoice_id, pi, paid = paid_pro_invoice(db, buyer, "b")
    early = delivered(db, event("charge.refunded", refunded_charge("ch_ref_b", pi, 1900, 1900)))
    assert early["status"] == "ignored"
    assert delivered(db, event("invoice_payment.paid", invoice_payment(invoice_id, pi, 1900)))["status"] == "processed"
    assert balance(db, buyer) == 0
    # When the invoice lands
    outcome = delivered(db, event("invoice.paid", paid))
    # Then its allowance is granted and the early refund takes it back, once
    assert outcome["detail"]["late_reversals"] == [early["event_id"]], outcome
    assert balance(db, buyer) == 0
    assert count(db, "refunds") == 1
    assert [r["status"] for r in webhook_rows(db) if r["type"] == "charge.refunded"] == ["processed"]
    assert ledger_is_consistent(db, buyer)


def test_a_refund_between_the_invoice_and_its_invoice_payment_is_applied_with_the_link(
    db, payments_env, catalogue, buyer
):
    # Given the paid invoice, then its refund (nothing links the charge to it yet)
    invoice_id, pi, paid = paid_pro_invoice(db, buyer, "c")
    delivered(db, event("invoice.paid", paid))
    assert delivered(db, event("charge.refunded", refunded_charge("ch_ref_c", pi, 1900, 1900)))["status"] == "ignored"
    assert balance(db, buyer) == Decimal("1000")
    # When the invoice payment links them
    delivered(db, event("invoice_payment.paid", invoice_payment(invoice_id, pi, 1900)))
    # Then the refund is applied
    assert balance(db, buyer) == 0
    assert count(db, "refunds") == 1


def test_an_older_invoice_links_its_payment_intent_itself(db, payments_env, catalogue, buyer):
    # Given a 2020-2024 invoice that names its payment intent, and a refunded charge naming only that intent
    send_stripe(stripe_event("customer.subscription.created", subscription_obj("sub_old_pi", "cus_old_pi", buyer)))
    paid = invoice_obj("in_old_pi", "sub_old_pi", "cus_old_pi", charge="ch_other")
    paid["payment_intent"] = "pi_old"
    delivered(db, stripe_event("invoice.paid", paid))
    refund = refunded_charge("ch_old_pi", "pi_old", 1900, 1900)
    # When it is refunded
    delivered(db, stripe_event("charge.refunded", refund))
    # Then the allowance is clawed back
    assert balance(db, buyer) == 0


def test_an_invoice_that_carries_its_payments_links_them_itself(db, payments_env, catalogue, buyer):
    # Given a current-shape paid invoice whose event carries its (expanded) payments
    invoice_id, pi, paid = paid_pro_invoice(db, buyer, "d")
    paid["payments"] = {"object": "list", "data": [invoice_payment(invoice_id, pi, 1900)], "has_more": False}
    delivered(db, event("invoice.paid", paid))
    # When its charge is refunded, with no invoice_payment.paid event at all
    delivered(db, event("charge.refunded", refunded_charge("ch_ref_d", pi, 1900, 1900)))
    # Then the allowance is clawed back
    assert balance(db, buyer) == 0

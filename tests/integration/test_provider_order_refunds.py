"""Lemon Squeezy and Asaas refunds move the order their payment made, as a Stripe refund moves its order: each refund
step the purchase's / invoice's claw-back applies sets the order's refunded amount to the cumulative money refunded
(never above the order's total, never lowered) and, once all of it is refunded, makes the order REFUNDED (payment
status REFUNDED) through the one rule in `order_refunds`. The step's refund row names the order. A pack's order is
its purchase's; a plan's order is the one its first paid period made, so a later renewal's refund leaves it alone.
Replays and reordered deliveries end in the same state, credits move exactly as the claw-back moves them, and the
ledger still reconciles. Every delivery is signed with the provider's own scheme and goes through the gateway."""

# ruff: noqa: F403, F405, F811 - the Asaas fixtures are imported from their own test module
from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.integration.test_payments_asaas import ASAAS_TOKEN, CPF, asaas_api, asaas_env, brl, send_asaas  # noqa: F401
from tests.integration.test_payments_asaas import buy_pack as asaas_buy_pack
from tests.integration.test_payments_asaas import checkout as asaas_checkout
from tests.integration.test_plan_orders_providers import ls_invoice, ls_iso, ls_subscription, outcome
from tests.payments_support import *
from tests.support import ApiResponse, api_call, make_user
from tollgate.db import UnitOfWork
from tollgate_local.webhooks_cli import lemonsqueezy_order

Db = Callable[[], UnitOfWork]


# --- reading -----------------------------------------------------------------------------------------------------
def orders_of(db: Db, provider: str) -> list[dict[str, Any]]:
    with db() as uow:
        rows = uow.session.execute(
            text("SELECT * FROM orders WHERE provider = :p ORDER BY created_at, id"), {"p": provider}
        ).mappings()
        return [dict(r) for r in rows]


def the_order(db: Db, provider: str) -> dict[str, Any]:
    (order,) = orders_of(db, provider)
    return order


def order_refund_rows(db: Db, order_id: uuid.UUID) -> list[dict[str, Any]]:
    with db() as uow:
        rows = uow.session.execute(
            text("SELECT * FROM refunds WHERE order_id = :o ORDER BY created_at, id"), {"o": order_id}
        ).mappings()
        return [dict(r) for r in rows]


def order_refund_events(db: Db, order_id: uuid.UUID) -> list[dict[str, Any]]:
    with db() as uow:
        rows = uow.session.execute(
            text(
                "SELECT data FROM outbox_events WHERE type = 'refund.completed' AND data->>'kind' = 'order'"
                " AND data->>'order_id' = :o ORDER BY created_at, id"
            ),
            {"o": str(order_id)},
        ).scalars()
        return [dict(r) for r in rows]


def assert_order(db: Db, order_id: uuid.UUID, status: str, payment_status: str, refunded: str) -> dict[str, Any]:
    with db() as uow:
        row = dict(uow.session.execute(text("SELECT * FROM orders WHERE id = :o"), {"o": order_id}).mappings().one())
    assert (row["status"], row["payment_status"], row["refunded_amount"]) == (status, payment_status, Decimal(refunded))
    assert row["refund_pending_amount"] == 0
    return row


def admin(db: Db) -> uuid.UUID:
    with db() as uow:
        user = make_user(uow.session, email=f"admin-{uuid.uuid4().hex[:8]}@example.com", role="ADMIN")
        uow.commit()
        return user.id


def assert_read_as(db: Db, order_id: uuid.UUID, buyer: uuid.UUID, status: str, refunded: str) -> None:
    """The customer's order, their order list and the back office's order list all say the same."""
    own = api_call("GET", f"/orders/{order_id}", as_user=buyer)
    assert own.status == 200, own.body
    assert (own.json["status"], Decimal(own.json["refunded_amount"])) == (status, Decimal(refunded))
    listed = api_call("GET", "/orders", as_user=buyer)
    assert [(o["id"], o["status"]) for o in listed.json["items"]] == [(str(order_id), status)]
    staff = api_call("GET", "/admin/orders", as_user=admin(db), role="ADMIN", query=f"user_id={buyer}")
    assert staff.status == 200, staff.body
    (seen,) = staff.json["items"]
    assert (seen["status"], Decimal(seen["refunded_amount"])) == (status, Decimal(refunded))


def sent(answer: ApiResponse) -> ApiResponse:
    assert answer.status == 200 and answer.json["status"] == "processed", answer.body
    return answer


# --- Lemon Squeezy: pack orders --------------------------------------------------------------------------------
def ls_pack_order(catalogue: Any, buyer: uuid.UUID, order_id: str = "9101") -> dict[str, Any]:
    return lemonsqueezy_order(
        user_id=str(buyer), item_id=str(catalogue.pack_id), variant_id="111", total_minor=500, order_id=order_id
    )


def ls_order_refunded(created: dict[str, Any], refunded_minor: int, *, at: int) -> dict[str, Any]:
    event = copy.deepcopy(created)
    event["meta"]["event_name"] = "order_refunded"
    status = "refunded" if refunded_minor >= created["data"]["attributes"]["total"] else "partial_refund"
    event["data"]["attributes"].update(
        refunded_amount=refunded_minor, refunded=True, status=status, updated_at=ls_iso(at)
    )
    return event


def test_lemonsqueezy_pack_refunds_move_its_order_partly_then_fully(db, payments_env, catalogue, buyer):
    # Given a pack order paid through Lemon Squeezy (5.00 USD, 100 credits)
    created = ls_pack_order(catalogue, buyer)
    sent(send_lemonsqueezy(created))
    order = the_order(db, "lemonsqueezy")
    assert_order(db, order["id"], "COMPLETED", "SUCCEEDED", "0")
    # When 2.50 of it is refunded
    partial = sent(send_lemonsqueezy(ls_order_refunded(created, 250, at=1)))
    # Then the order stays COMPLETED with 2.50 refunded, the step's refund row names it, half the credits went back
    assert_order(db, order["id"], "COMPLETED", "SUCCEEDED", "2.50")
    assert outcome(db, partial)["order_refund"]["order_refunded_amount"] == "2.50"
    assert [(r["amount"], r["status"], r["provider"]) for r in order_refund_rows(db, order["id"])] == [
        (Decimal("2.500"), "SUCCEEDED", "lemonsqueezy")
    ]
    assert balance(db, buyer) == Decimal("50")
    assert_read_as(db, order["id"], buyer, "COMPLETED", "2.50")
    # When the rest is refunded
    sent(send_lemonsqueezy(ls_order_refunded(created, 500, at=2)))
    # Then the order is REFUNDED for its whole total, with two refund rows adding up to it, and no credit is left
    assert_order(db, order["id"], "REFUNDED", "REFUNDED", "5.00")
    assert sum(r["amount"] for r in order_refund_rows(db, order["id"])) == Decimal("5.00")
    assert balance(db, buyer) == 0
    assert_read_as(db, order["id"], buyer, "REFUNDED", "5.00")
    # And a pack's refund is announced by its purchase's claw-back, not a second time as the order's
    assert order_refund_events(db, order["id"]) == []
    assert ledger_is_consistent(db, buyer)


@pytest.mark.parametrize(
    ("deliveries", "steps"),
    [([250, 250, 500, 250, 500], 2), ([500, 250, 500, 250], 1)],
    ids=["in_order_with_replays", "full_first_then_the_older_partial"],
)
def test_lemonsqueezy_pack_replays_and_reordered_refunds_end_in_one_state(
    db, payments_env, catalogue, buyer, deliveries, steps
):
    # Given a paid pack order
    created = ls_pack_order(catalogue, buyer)
    sent(send_lemonsqueezy(created))
    order = the_order(db, "lemonsqueezy")
    # When its refund steps arrive as `deliveries` (each a new delivery of the cumulative amount then refunded)
    for n, refunded in enumerate(deliveries):
        sent(send_lemonsqueezy(ls_order_refunded(created, refunded, at=n + 1)))
    # Then the order is refunded once for its whole total; a late smaller amount never lowered it
    assert_order(db, order["id"], "REFUNDED", "REFUNDED", "5.00")
    assert sum(r["amount"] for r in order_refund_rows(db, order["id"])) == Decimal("5.00")
    # And the credits went back as the claw-back takes them: all 100, once, in one row per step it applied
    assert balance(db, buyer) == 0
    assert count(db, "refunds", "purchase_id IS NOT NULL") == steps == len(order_refund_rows(db, order["id"]))
    assert ledger_is_consistent(db, buyer)


def test_a_lemonsqueezy_refund_before_its_order_waits_for_it(db, payments_env, catalogue, buyer):
    # Given an order_refunded delivered before its order_created
    created = ls_pack_order(catalogue, buyer)
    refunded = ls_order_refunded(created, 500, at=1)
    early = send_lemonsqueezy(refunded)
    # Then it fails (the provider retries) and nothing is recorded
    assert early.status == 500
    assert orders_of(db, "lemonsqueezy") == [] and count(db, "refunds") == 0
    # When order_created arrives, then the refund's retry
    sent(send_lemonsqueezy(created))
    sent(send_lemonsqueezy(refunded))
    # Then the order is REFUNDED and the credits granted are taken back
    order = the_order(db, "lemonsqueezy")
    assert_order(db, order["id"], "REFUNDED", "REFUNDED", "5.00")
    assert balance(db, buyer) == 0 and ledger_is_consistent(db, buyer)


def test_a_lemonsqueezy_refund_of_a_purchase_without_an_order_moves_only_its_credits(
    db, payments_env, catalogue, buyer
):
    # Given a pack purchase made before orders existed (its order gone, as it never was)
    created = ls_pack_order(catalogue, buyer)
    sent(send_lemonsqueezy(created))
    with db() as uow:
        uow.session.execute(text("DELETE FROM order_items"))
        uow.session.execute(text("DELETE FROM orders"))
        uow.commit()
    # When it is refunded
    answer = sent(send_lemonsqueezy(ls_order_refunded(created, 500, at=1)))
    # Then the credits are clawed back as before, and no order is made or named
    assert balance(db, buyer) == 0
    assert "order_refund" not in outcome(db, answer)
    assert orders_of(db, "lemonsqueezy") == [] and count(db, "refunds", "order_id IS NOT NULL") == 0
    assert ledger_is_consistent(db, buyer)


# --- Lemon Squeezy: plan orders --------------------------------------------------------------------------------
def ls_invoice_refunded(buyer: uuid.UUID, plan_id: uuid.UUID, invoice_id: str, refunded: int, at: int) -> dict:
    event = ls_invoice(buyer, plan_id, invoice_id=invoice_id, name="subscription_payment_refunded",
                       updated_at=ls_iso(at))  # fmt: skip
    event["data"]["attributes"].update(refunded=True, refunded_amount=refunded, status="refunded")
    return event


def test_lemonsqueezy_plan_refunds_move_the_order_of_its_first_paid_period(db, payments_env, catalogue, buyer):
    # Given a subscription whose initial invoice (19.00 USD) made its plan order
    sent(send_lemonsqueezy(ls_subscription("subscription_created", buyer, catalogue.pro_id, updated_at=ls_iso(-60))))
    sent(send_lemonsqueezy(ls_invoice(buyer, catalogue.pro_id, invoice_id="9001")))
    order = the_order(db, "lemonsqueezy")
    assert balance(db, buyer) == Decimal("1000")
    # When half of that invoice is refunded, that step delivered again, then all of it
    half = ls_invoice_refunded(buyer, catalogue.pro_id, "9001", 950, at=1)
    sent(send_lemonsqueezy(half))
    assert_order(db, order["id"], "COMPLETED", "SUCCEEDED", "9.50")
    assert balance(db, buyer) == Decimal("500")
    again = copy.deepcopy(half)
    again["data"]["attributes"]["updated_at"] = ls_iso(2)
    sent(send_lemonsqueezy(again))
    assert_order(db, order["id"], "COMPLETED", "SUCCEEDED", "9.50")
    sent(send_lemonsqueezy(ls_invoice_refunded(buyer, catalogue.pro_id, "9001", 1900, at=3)))
    # Then the order is REFUNDED for its total, read so by the customer and the back office
    assert_order(db, order["id"], "REFUNDED", "REFUNDED", "19.00")
    assert_read_as(db, order["id"], buyer, "REFUNDED", "19.00")
    # And each step is the order's refund row and its announcement, once, in Lemon Squeezy's name
    rows = order_refund_rows(db, order["id"])
    assert [(r["amount"], r["provider"], r["invoice_id"] is not None) for r in rows] == [
        (Decimal("9.500"), "lemonsqueezy", True),
        (Decimal("9.500"), "lemonsqueezy", True),
    ]
    announced = order_refund_events(db, order["id"])
    assert [(e["provider"], Decimal(e["amount"]), e["order_status"]) for e in announced] == [
        ("lemonsqueezy", Decimal("9.50"), "COMPLETED"),
        ("lemonsqueezy", Decimal("9.50"), "REFUNDED"),
    ]
    # And the allowance went back as the invoice's claw-back takes it
    assert balance(db, buyer) == 0 and ledger_is_consistent(db, buyer)


def test_a_lemonsqueezy_renewals_refund_leaves_the_plan_order_alone(db, payments_env, catalogue, buyer):
    # Given a plan order made by the initial invoice, and next month's renewal paid
    sent(send_lemonsqueezy(ls_subscription("subscription_created", buyer, catalogue.pro_id, updated_at=ls_iso(-60))))
    sent(send_lemonsqueezy(ls_invoice(buyer, catalogue.pro_id, invoice_id="9001")))
    sent(send_lemonsqueezy(ls_invoice(buyer, catalogue.pro_id, invoice_id="9002", reason="renewal")))
    order = the_order(db, "lemonsqueezy")
    # When the renewal is refunded in full
    answer = sent(send_lemonsqueezy(ls_invoice_refunded(buyer, catalogue.pro_id, "9002", 1900, at=1)))
    # Then its allowance is clawed back, but the order (the first period's) keeps its state
    assert "order_refund" not in outcome(db, answer)
    assert_order(db, order["id"], "COMPLETED", "SUCCEEDED", "0")
    assert order_refund_rows(db, order["id"]) == []
    assert count(db, "invoices", "provider = 'lemonsqueezy' AND status = 'refunded'") == 1
    assert ledger_is_consistent(db, buyer)


# --- Asaas: pack orders ------------------------------------------------------------------------------------------
def test_asaas_pack_refunds_move_its_order_partly_then_fully(db, asaas_api, brl, buyer):
    # Given a pack charge (25.00 BRL, 200 credits) received
    payment = asaas_buy_pack(asaas_api, brl, buyer)
    sent(send_asaas(asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(payment["id"]))))
    order = the_order(db, "asaas")
    # When 10.00 is refunded
    sent(send_asaas(asaas_api.event("PAYMENT_PARTIALLY_REFUNDED", asaas_api.refund(payment["id"], 10.0))))
    # Then the order stays COMPLETED with 10.00 refunded, and 40% of the credits went back
    assert_order(db, order["id"], "COMPLETED", "SUCCEEDED", "10.00")
    assert balance(db, buyer) == Decimal("120")
    assert_read_as(db, order["id"], buyer, "COMPLETED", "10.00")
    # When the rest is refunded
    sent(send_asaas(asaas_api.event("PAYMENT_REFUNDED", asaas_api.refund(payment["id"]))))
    # Then the order is REFUNDED, its refund rows are the two steps, and no credit of the pack is left
    assert_order(db, order["id"], "REFUNDED", "REFUNDED", "25.00")
    assert [r["amount"] for r in order_refund_rows(db, order["id"])] == [Decimal("10.000"), Decimal("15.000")]
    assert balance(db, buyer) == 0
    assert_read_as(db, order["id"], buyer, "REFUNDED", "25.00")
    assert ledger_is_consistent(db, buyer)


@pytest.mark.parametrize("reverse", [False, True], ids=["in_order_with_replays", "full_first_then_the_partial"])
def test_asaas_pack_replays_and_reordered_refunds_end_in_one_state(db, asaas_api, brl, buyer, reverse):
    # Given a received pack charge and the events of its two refunds (each the charge as it was then)
    payment = asaas_buy_pack(asaas_api, brl, buyer)
    sent(send_asaas(asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(payment["id"]))))
    order = the_order(db, "asaas")
    partial = asaas_api.event("PAYMENT_PARTIALLY_REFUNDED", asaas_api.refund(payment["id"], 10.0))
    full = asaas_api.event("PAYMENT_REFUNDED", asaas_api.refund(payment["id"]))
    # When they arrive (in order, or the full one first), each delivered again, and re-sent under new event ids
    for event in [full, partial] if reverse else [partial, full]:
        sent(send_asaas(event))
        assert send_asaas(event).json["duplicate"] is True
        sent(send_asaas(dict(event, id=f"evt_{uuid.uuid4().hex}")))
    # Then the order is refunded once for its whole total, never more and never lowered
    assert_order(db, order["id"], "REFUNDED", "REFUNDED", "25.00")
    assert sum(r["amount"] for r in order_refund_rows(db, order["id"])) == Decimal("25.00")
    assert balance(db, buyer) == 0 and ledger_is_consistent(db, buyer)


def test_an_asaas_refund_before_its_confirmation_makes_the_order_refunded(db, asaas_api, brl, buyer):
    # Given a pack charge paid and fully refunded, whose PAYMENT_RECEIVED comes last
    payment = asaas_buy_pack(asaas_api, brl, buyer)
    received = asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(payment["id"]), at="2026-12-01 12:00:00")
    refunded = asaas_api.event("PAYMENT_REFUNDED", asaas_api.refund(payment["id"]), at="2026-12-01 13:00:00")
    # When the refund arrives first, then the confirmation
    sent(send_asaas(refunded))
    order = the_order(db, "asaas")
    assert_order(db, order["id"], "REFUNDED", "REFUNDED", "25.00")
    assert send_asaas(received).status == 200
    # Then the order stays REFUNDED and nothing is granted
    assert_order(db, order["id"], "REFUNDED", "REFUNDED", "25.00")
    assert balance(db, buyer) == 0 and ledger_is_consistent(db, buyer)


def test_an_asaas_chargeback_leaves_the_order_as_a_stripe_dispute_does(db, asaas_api, brl, buyer):
    # Given a received pack charge
    payment = asaas_buy_pack(asaas_api, brl, buyer)
    sent(send_asaas(asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(payment["id"]))))
    order = the_order(db, "asaas")
    # When a chargeback is requested (the money is held, not refunded: a won chargeback gives it back)
    payment["status"], payment["chargeback"] = "CHARGEBACK_REQUESTED", {"status": "REQUESTED", "reason": "FRAUD"}
    sent(send_asaas(asaas_api.event("PAYMENT_CHARGEBACK_REQUESTED", payment)))
    # Then the pack's credits are clawed back as before, and the order keeps its paid state
    assert balance(db, buyer) == 0
    assert_order(db, order["id"], "COMPLETED", "SUCCEEDED", "0")
    assert order_refund_rows(db, order["id"]) == []


# --- Asaas: plan orders ------------------------------------------------------------------------------------------
def test_asaas_plan_refunds_move_the_order_of_its_first_charge_and_not_a_renewals(db, asaas_api, brl, buyer):
    # Given a subscription whose first charge (49.90 BRL) made its plan order, and next month's charge paid
    assert asaas_checkout(buyer, {"kind": "plan", "item_id": str(brl.plan_id), "tax_id": CPF}).status == 200
    [sub] = asaas_api.subscriptions.values()
    [first] = [p for p in asaas_api.payments.values() if p["subscription"] == sub["id"]]
    sent(send_asaas(asaas_api.event("SUBSCRIPTION_CREATED", sub, at="2026-12-01 10:00:00")))
    sent(send_asaas(asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(first["id"]), at="2026-12-01 10:06:00")))
    second = asaas_api.new_payment(sub["customer"], 49.9, "2027-01-01", subscription=sub["id"])
    sent(send_asaas(asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(second["id"], on="2027-01-01"),
                                    at="2027-01-01 09:00:00")))  # fmt: skip
    order = the_order(db, "asaas")
    assert balance(db, buyer) == Decimal("1000")  # rollover none: one period's allowance at a time
    # When the renewal is refunded
    sent(send_asaas(asaas_api.event("PAYMENT_REFUNDED", asaas_api.refund(second["id"]), at="2027-01-02 10:00:00")))
    # Then the order (the first period's) keeps its paid state
    assert_order(db, order["id"], "COMPLETED", "SUCCEEDED", "0")
    # When the first charge is refunded in part (delivered twice), then in full
    partial = asaas_api.event("PAYMENT_PARTIALLY_REFUNDED", asaas_api.refund(first["id"], 20.0),
                              at="2027-01-03 10:00:00")  # fmt: skip
    sent(send_asaas(partial))
    sent(send_asaas(dict(partial, id=f"evt_{uuid.uuid4().hex}")))
    assert_order(db, order["id"], "COMPLETED", "SUCCEEDED", "20.00")
    sent(send_asaas(asaas_api.event("PAYMENT_REFUNDED", asaas_api.refund(first["id"]), at="2027-01-03 11:00:00")))
    # Then the order is REFUNDED for its total, and each step was announced once as the order's, in Asaas's name
    assert_order(db, order["id"], "REFUNDED", "REFUNDED", "49.90")
    assert_read_as(db, order["id"], buyer, "REFUNDED", "49.90")
    assert [(e["provider"], Decimal(e["amount"])) for e in order_refund_events(db, order["id"])] == [
        ("asaas", Decimal("20.00")),
        ("asaas", Decimal("29.90")),
    ]
    assert count(db, "invoices", "provider = 'asaas' AND status = 'refunded'") == 2
    assert ledger_is_consistent(db, buyer)

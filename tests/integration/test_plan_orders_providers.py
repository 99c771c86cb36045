"""A plan's first PAID period is an order with every provider: Stripe, Lemon Squeezy, Asaas and Clerk Billing make
one COMPLETED order with one `plan` item (amount and currency as the provider reported that charge), linked to the
subscription row, through the one `orders.plan_order`. Every paid plan charge calls it and only the first makes the
order: after a free trial (which pays nothing and makes none) the first paid renewal does, a subscription paid
before orders existed gets it at its next charge, and replays, the subscription event before or after the payment,
later renewals and two paid events racing never make a second. Every delivery is signed with the provider's own
scheme through the real webhook handler; the history is read through the gateway."""

# ruff: noqa: F403, F405, F811 - the Asaas and Clerk Billing fixtures are imported from their own test modules
from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import PROVIDER_FIXTURES
from tests.integration.test_payments_asaas import ASAAS_TOKEN, CPF, asaas_api, asaas_env, brl, send_asaas  # noqa: F401
from tests.integration.test_payments_asaas import checkout as asaas_checkout
from tests.integration.test_payments_clerk_billing import (  # noqa: F401
    ITEM,
    MONTH_MS,
    attempt_event,
    clerk_plans,
    item_event,
    member,
    now_ms,
)
from tests.integration.test_payments_stripe import invoice_obj, subscription_obj
from tests.payments_support import *
from tests.support import ApiResponse, api_call, make_user
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.engine import build_engine, build_session_factory
from tollgate.errors import WebhookProcessingFailed
from tollgate.services import orders
from tollgate.services.webhooks import receive_webhook
from tollgate_local.webhooks_cli import clerk_headers, lemonsqueezy_signature, stripe_event, stripe_signature

Db = Callable[[], UnitOfWork]


# --- reading ---------------------------------------------------------------------------------------------------
def plan_orders(db: Db, provider: str) -> list[Any]:
    with db() as uow:
        return list(
            uow.session.execute(
                text("SELECT * FROM orders WHERE provider = :p ORDER BY created_at"), {"p": provider}
            ).mappings()
        )


def items_of(db: Db, order_id: uuid.UUID) -> list[Any]:
    with db() as uow:
        return list(
            uow.session.execute(text("SELECT * FROM order_items WHERE order_id = :o"), {"o": order_id}).mappings()
        )


def subscription_id(db: Db, provider: str, provider_subscription_id: str) -> uuid.UUID:
    with db() as uow:
        return uow.session.execute(
            text("SELECT id FROM subscriptions WHERE provider = :p AND provider_subscription_id = :s"),
            {"p": provider, "s": provider_subscription_id},
        ).scalar_one()


def assert_one_plan_order(
    db: Db, provider: str, sub_ref: str, plan_id: uuid.UUID, user_id: uuid.UUID, amount: str, currency: str
) -> Any:
    """Exactly one order of `provider`: COMPLETED, paid, one fulfilled plan item, linked to the subscription."""
    (order,) = plan_orders(db, provider)
    assert (order["status"], order["payment_status"], order["user_id"]) == ("COMPLETED", "SUCCEEDED", user_id)
    assert (order["total_amount"], order["subtotal"], order["currency"]) == (Decimal(amount), Decimal(amount), currency)
    assert order["subscription_id"] == subscription_id(db, provider, sub_ref)
    assert order["purchase_id"] is None and order["paid_at"] is not None and order["completed_at"] is not None
    (item,) = items_of(db, order["id"])
    assert (item["kind"], item["plan_id"], item["quantity"], item["total_price"]) == (
        "plan",
        plan_id,
        1,
        Decimal(amount),
    )
    assert item["fulfilled_at"] is not None
    return order


def outcome(db: Db, answer: ApiResponse) -> dict[str, Any]:
    """What the stored event's handler reported."""
    with db() as uow:
        return dict(
            uow.session.execute(
                text("SELECT outcome FROM webhook_events WHERE id = :i"), {"i": answer.json["id"]}
            ).scalar_one()
        )


def history(user_id: uuid.UUID) -> list[dict[str, Any]]:
    answer = api_call("GET", "/orders", as_user=user_id)
    assert answer.status == 200, answer.body
    return list(answer.json["items"])


def assert_history_shows(db: Db, order: Any, user_id: uuid.UUID, plan_id: uuid.UUID, total: str) -> None:
    (shown,) = history(user_id)
    assert (shown["id"], shown["order_number"], shown["status"]) == (
        str(order["id"]),
        order["order_number"],
        "COMPLETED",
    )
    assert Decimal(shown["total"]) == Decimal(total)
    (item,) = shown["items"]
    assert (item["kind"], item["plan_id"]) == ("plan", str(plan_id))
    # And nobody else sees it, in a list or by its id
    stranger = make_stranger(db)
    assert history(stranger) == []
    other = api_call("GET", f"/orders/{order['id']}", as_user=stranger)
    assert (other.status, other.error_code) == (404, "order_not_found")


def make_stranger(db: Db) -> uuid.UUID:
    with db() as uow:
        user = make_user(uow.session, email=f"stranger-{uuid.uuid4().hex[:8]}@example.com")
        uow.commit()
        return user.id


# --- Lemon Squeezy -----------------------------------------------------------------------------------------------
def ls_iso(delta_seconds: int = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ls_fixture(name: str) -> dict[str, Any]:
    return json.loads((PROVIDER_FIXTURES / "lemonsqueezy" / f"{name}.json").read_text())


def ls_subscription(name: str, buyer: uuid.UUID, plan_id: uuid.UUID, *, status: str = "active", **attrs: Any) -> dict:
    event = ls_fixture("subscription_created")
    event["meta"] = {
        "event_name": name, "test_mode": True,
        "custom_data": {"user_id": str(buyer), "kind": "plan", "item_id": str(plan_id)},
    }  # fmt: skip
    event["data"]["id"] = "777"
    event["data"]["attributes"].update(
        status=status, variant_id=201, test_mode=True, updated_at=attrs.pop("updated_at", ls_iso()), **attrs
    )
    return event


def ls_invoice(
    buyer: uuid.UUID, plan_id: uuid.UUID, *, invoice_id: str = "9001", reason: str = "initial", total: int = 1900,
    name: str = "subscription_payment_success", updated_at: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    event = ls_fixture("subscription_payment_success")
    event["meta"] = {
        "event_name": name, "test_mode": True,
        "custom_data": {"user_id": str(buyer), "kind": "plan", "item_id": str(plan_id)},
    }  # fmt: skip
    event["data"]["id"] = invoice_id
    event["data"]["attributes"].update(
        subscription_id=777, billing_reason=reason, total=total, subtotal=total, currency="USD", test_mode=True,
        updated_at=updated_at or ls_iso(),
    )  # fmt: skip
    return event


def processed(answer: ApiResponse) -> ApiResponse:
    assert answer.status == 200 and answer.json["status"] == "processed", answer.body
    return answer


def test_lemonsqueezy_first_payment_is_one_plan_order_replays_and_renewals_add_none(db, payments_env, catalogue, buyer):
    # Given a subscription created, then its initial invoice paid (9.99 USD as Lemon Squeezy reports it)
    processed(
        send_lemonsqueezy(ls_subscription("subscription_created", buyer, catalogue.pro_id, updated_at=ls_iso(-60)))
    )
    first = ls_invoice(buyer, catalogue.pro_id, total=999)
    answer = processed(send_lemonsqueezy(first))
    # When the same delivery is replayed, and the recovered event for the same invoice arrives
    replay = send_lemonsqueezy(first)
    recovered = copy.deepcopy(first)
    recovered["meta"]["event_name"] = "subscription_payment_recovered"
    processed(send_lemonsqueezy(recovered))
    # Then one COMPLETED plan order of 9.99 usd names the subscription, and the webhook said which order
    assert replay.status == 200 and replay.json["duplicate"] is True
    order = assert_one_plan_order(db, "lemonsqueezy", "777", catalogue.pro_id, buyer, "9.99", "usd")
    assert outcome(db, answer)["order_id"] == str(order["id"])
    # When next month's renewal and a plan change's invoice are paid
    processed(send_lemonsqueezy(ls_invoice(buyer, catalogue.pro_id, invoice_id="9002", reason="renewal")))
    processed(send_lemonsqueezy(ls_invoice(buyer, catalogue.pro_id, invoice_id="9003", reason="updated", total=500)))
    # Then still that one order; the allowance was granted per invoice as before
    assert [o["id"] for o in plan_orders(db, "lemonsqueezy")] == [order["id"]]
    assert count(db, "invoices", "provider = 'lemonsqueezy' AND credits_granted > 0") == 3
    # And the user's order history, through the gateway, shows it
    assert_history_shows(db, order, buyer, catalogue.pro_id, "9.99")


def test_lemonsqueezy_payment_before_its_subscription_makes_one_order_linked_to_the_row(
    db, payments_env, catalogue, buyer
):
    # Given the initial invoice delivered before subscription_created (Lemon Squeezy does not order them)
    processed(send_lemonsqueezy(ls_invoice(buyer, catalogue.pro_id, updated_at=ls_iso(-30))))
    # Then the order exists and names a subscription row already, which gives no tier on its own
    order = assert_one_plan_order(db, "lemonsqueezy", "777", catalogue.pro_id, buyer, "19.00", "usd")
    with db() as uow:
        tier = uow.session.execute(text("SELECT tier FROM users WHERE id = :u"), {"u": buyer}).scalar_one()
    assert tier == "FREE"
    # When subscription_created arrives, then an update
    processed(
        send_lemonsqueezy(ls_subscription("subscription_created", buyer, catalogue.pro_id, updated_at=ls_iso(-20)))
    )
    processed(
        send_lemonsqueezy(ls_subscription("subscription_updated", buyer, catalogue.pro_id, updated_at=ls_iso(-10)))
    )
    # Then the same row is the subscription (active, PRO), still one order naming it, one month granted
    assert count(db, "subscriptions", "provider = 'lemonsqueezy'") == 1
    with db() as uow:
        row = uow.session.execute(
            text("SELECT id, status, tier FROM subscriptions WHERE provider = 'lemonsqueezy'")
        ).one()
        tier = uow.session.execute(text("SELECT tier FROM users WHERE id = :u"), {"u": buyer}).scalar_one()
    assert (row.status, row.tier, tier) == ("active", "PRO", "PRO")
    assert [(o["id"], o["subscription_id"]) for o in plan_orders(db, "lemonsqueezy")] == [(order["id"], row.id)]
    assert balance(db, buyer) == Decimal("1000")


def test_lemonsqueezy_free_trial_makes_its_order_at_the_first_paid_renewal(db, payments_env, catalogue, buyer):
    # Given a subscription on trial whose initial invoice is for nothing
    processed(send_lemonsqueezy(ls_subscription("subscription_created", buyer, catalogue.pro_id, status="on_trial")))
    processed(send_lemonsqueezy(ls_invoice(buyer, catalogue.pro_id, total=0)))
    # Then the trial is no sale: no order yet
    assert plan_orders(db, "lemonsqueezy") == [] and history(buyer) == []
    # When the trial ends and the first paid charge is a renewal (19.00), and that delivery is replayed
    renewal = ls_invoice(buyer, catalogue.pro_id, invoice_id="9002", reason="renewal")
    answer = processed(send_lemonsqueezy(renewal))
    replay = send_lemonsqueezy(renewal)
    # Then that renewal is the subscription's one order, with its amount
    assert replay.status == 200 and replay.json["duplicate"] is True
    order = assert_one_plan_order(db, "lemonsqueezy", "777", catalogue.pro_id, buyer, "19.00", "usd")
    assert outcome(db, answer)["order_id"] == str(order["id"])
    # When the next renewal is paid
    processed(send_lemonsqueezy(ls_invoice(buyer, catalogue.pro_id, invoice_id="9003", reason="renewal", total=2500)))
    # Then still that one order
    assert [o["id"] for o in plan_orders(db, "lemonsqueezy")] == [order["id"]]
    assert_history_shows(db, order, buyer, catalogue.pro_id, "19.00")


def test_lemonsqueezy_payment_racing_its_subscription_created_makes_one_row_and_one_order(
    db, payments_env, catalogue, buyer, monkeypatch
):
    # Given the initial invoice's event paused inside its transaction, right after it recorded the subscription
    # row, while subscription_created for the same subscription arrives on another container
    entered, release = threading.Event(), threading.Event()
    real = orders.plan_order

    def paused(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(orders, "plan_order", paused)
    invoice = json.dumps(ls_invoice(buyer, catalogue.pro_id, updated_at=ls_iso(-30))).encode()
    created = ls_subscription("subscription_created", buyer, catalogue.pro_id, updated_at=ls_iso(-20))
    results: dict[str, object] = {}

    def deliver(name: str, raw: bytes, event_name: str) -> None:
        engine = build_engine(get_settings())  # another container: its own pool
        headers = {"x-signature": lemonsqueezy_signature(raw, LS_SECRET), "x-event-name": event_name}
        try:
            results[name] = receive_webhook(
                "lemonsqueezy", raw, headers, lambda: UnitOfWork(build_session_factory(engine))
            )
        except Exception as exc:
            results[name] = exc
        finally:
            engine.dispose()

    payment = threading.Thread(target=deliver, args=("payment", invoice, "subscription_payment_success"))
    payment.start()
    assert entered.wait(30)
    racer = threading.Thread(target=deliver, args=("created", json.dumps(created).encode(), "subscription_created"))
    racer.start()
    # When the racer is waiting on the row's unique key, the paused event goes on
    for _ in range(500):
        with db() as uow:
            waiting = uow.session.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            ).scalar_one()
        if waiting or not racer.is_alive():
            break
        time.sleep(0.01)
    assert waiting, "the racer never waited on the paused event's locks"
    release.set()
    payment.join(30)
    racer.join(30)
    # Then the payment applied; the racer, held on the buyer's row, applied after it to the row it recorded (or,
    # had it lost on the row's unique key, failed rolled back and applies on the retry)
    assert getattr(results["payment"], "status", None) == "processed", results
    assert getattr(results["created"], "status", None) == "processed" or isinstance(
        results["created"], WebhookProcessingFailed
    ), results
    retry = send_lemonsqueezy(created)
    assert retry.status == 200 and retry.json["status"] == "processed", retry.body
    # And there is one subscription row, active, and one order naming it
    assert count(db, "subscriptions", "provider = 'lemonsqueezy' AND status = 'active'") == 1
    assert_one_plan_order(db, "lemonsqueezy", "777", catalogue.pro_id, buyer, "19.00", "usd")


# --- Asaas -------------------------------------------------------------------------------------------------------
def test_asaas_first_charge_is_one_plan_order_replays_and_renewals_add_none(db, asaas_api, brl, buyer):
    # Given a plan checkout: Asaas made the subscription and its first charge
    assert asaas_checkout(buyer, {"kind": "plan", "item_id": str(brl.plan_id), "tax_id": CPF}).status == 200
    [sub] = asaas_api.subscriptions.values()
    [charge] = [p for p in asaas_api.payments.values() if p["subscription"] == sub["id"]]
    processed(send_asaas(asaas_api.event("SUBSCRIPTION_CREATED", sub, at="2026-12-01 10:00:00")))
    # When the charge is confirmed, that delivery replayed, and then received (a second event of the same charge)
    confirmed = asaas_api.event(
        "PAYMENT_CONFIRMED", asaas_api.settle(charge["id"], "CONFIRMED"), at="2026-12-01 10:05:00"
    )
    answer = processed(send_asaas(confirmed))
    replay = send_asaas(confirmed)
    processed(send_asaas(asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(charge["id"]), at="2026-12-01 10:06:00")))
    # Then one COMPLETED plan order of 49.90 brl names the subscription
    assert replay.status == 200 and replay.json["duplicate"] is True
    order = assert_one_plan_order(db, "asaas", sub["id"], brl.plan_id, buyer, "49.90", "brl")
    assert outcome(db, answer)["order_id"] == str(order["id"])
    # When next month's charge is paid (and reconciliation-style re-delivery of it under a new event id)
    second = asaas_api.new_payment(sub["customer"], 49.9, "2027-01-01", subscription=sub["id"])
    renewal = asaas_api.settle(second["id"], on="2027-01-01")
    processed(send_asaas(asaas_api.event("PAYMENT_RECEIVED", renewal, at="2027-01-01 09:00:00")))
    processed(send_asaas(asaas_api.event("PAYMENT_RECEIVED", renewal, at="2027-01-01 09:01:00")))
    # Then no new order; both periods granted their allowance
    assert [o["id"] for o in plan_orders(db, "asaas")] == [order["id"]]
    assert count(db, "invoices", "provider = 'asaas' AND credits_granted > 0") == 2
    assert_history_shows(db, order, buyer, brl.plan_id, "49.90")


@pytest.mark.parametrize("carries_reference", [False, True], ids=["bare_charge", "charge_with_reference"])
def test_asaas_charge_before_its_subscription_event_makes_one_order_linked_to_the_row(
    db, asaas_api, brl, buyer, carries_reference
):
    # Given the first charge received before SUBSCRIPTION_CREATED: bare, it names no plan (5xx, Asaas retries);
    # carrying the subscription's externalReference, it names the plan and records the subscription
    asaas_checkout(buyer, {"kind": "plan", "item_id": str(brl.plan_id), "tax_id": CPF})
    [sub] = asaas_api.subscriptions.values()
    [charge] = [p for p in asaas_api.payments.values() if p["subscription"] == sub["id"]]
    if carries_reference:
        charge["externalReference"] = sub["externalReference"]
    received = asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(charge["id"]), at="2026-12-01 10:06:00")
    early = send_asaas(received)
    assert early.status == (200 if carries_reference else 500)
    # When the subscription events arrive afterwards, and Asaas retries the charge's event
    processed(send_asaas(asaas_api.event("SUBSCRIPTION_CREATED", sub, at="2026-12-01 10:00:00")))
    processed(send_asaas(received))
    processed(send_asaas(asaas_api.event("SUBSCRIPTION_UPDATED", sub, at="2026-12-01 10:10:00")))
    # Then one active subscription row, one order naming it, one month granted
    assert count(db, "subscriptions", "provider = 'asaas' AND status = 'active'") == 1
    assert_one_plan_order(db, "asaas", sub["id"], brl.plan_id, buyer, "49.90", "brl")
    assert balance(db, buyer) == Decimal("1000")


def test_asaas_charge_that_does_not_match_the_plan_makes_no_order(db, asaas_api, brl, buyer):
    # Given a subscription charge whose value is not the plan's price (crafted or edited in Asaas)
    asaas_checkout(buyer, {"kind": "plan", "item_id": str(brl.plan_id), "tax_id": CPF})
    [sub] = asaas_api.subscriptions.values()
    [charge] = [p for p in asaas_api.payments.values() if p["subscription"] == sub["id"]]
    processed(send_asaas(asaas_api.event("SUBSCRIPTION_CREATED", sub, at="2026-12-01 10:00:00")))
    cheap = dict(asaas_api.settle(charge["id"]), value=1.0)
    answer = send_asaas(asaas_api.event("PAYMENT_RECEIVED", cheap, at="2026-12-01 10:06:00"))
    # Then it is rejected and no order exists
    assert answer.status == 200 and answer.json["status"] == "rejected"
    assert plan_orders(db, "asaas") == []


def test_an_asaas_subscription_paid_before_orders_existed_gets_its_order_at_its_next_charge(db, asaas_api, brl, buyer):
    # Given a subscription whose first charge was paid before orders existed (Asaas has no free trials: this is its
    # subscription without an order), its order and items gone as they never were
    asaas_checkout(buyer, {"kind": "plan", "item_id": str(brl.plan_id), "tax_id": CPF})
    [sub] = asaas_api.subscriptions.values()
    [charge] = [p for p in asaas_api.payments.values() if p["subscription"] == sub["id"]]
    processed(send_asaas(asaas_api.event("SUBSCRIPTION_CREATED", sub, at="2026-12-01 10:00:00")))
    processed(send_asaas(asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(charge["id"]), at="2026-12-01 10:06:00")))
    with db() as uow:
        uow.session.execute(text("DELETE FROM order_items"))
        uow.session.execute(text("DELETE FROM orders"))
        uow.commit()
    # When its next charge is paid, and that delivery replayed
    second = asaas_api.new_payment(sub["customer"], 49.9, "2027-01-01", subscription=sub["id"])
    received = asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(second["id"], on="2027-01-01"),
                               at="2027-01-01 09:00:00")  # fmt: skip
    answer = processed(send_asaas(received))
    replay = send_asaas(received)
    # Then that charge is the subscription's one order
    assert replay.status == 200 and replay.json["duplicate"] is True
    order = assert_one_plan_order(db, "asaas", sub["id"], brl.plan_id, buyer, "49.90", "brl")
    assert outcome(db, answer)["order_id"] == str(order["id"])
    # When the charge after it is paid
    third = asaas_api.new_payment(sub["customer"], 49.9, "2027-02-01", subscription=sub["id"])
    processed(send_asaas(asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(third["id"], on="2027-02-01"),
                                         at="2027-02-01 09:00:00")))  # fmt: skip
    # Then still that one order
    assert [o["id"] for o in plan_orders(db, "asaas")] == [order["id"]]


# --- Clerk Billing -----------------------------------------------------------------------------------------------
def test_clerk_first_payment_is_one_plan_order_replays_and_renewals_add_none(db, payments_env, clerk_plans, member):
    # Given an item that turned active and its paid checkout attempt
    start = now_ms() - 2 * MONTH_MS
    processed(send_clerk(item_event("subscriptionItem.active", at=start + 10, start=start), msg_id="msg_item"))
    paid = attempt_event("cpay_first", at=start + 20, start=start)
    answer = processed(send_clerk(paid, msg_id="msg_pay"))
    # When Svix retries the message, and Clerk re-sends the attempt under a new message id
    retry = send_clerk(paid, msg_id="msg_pay")
    processed(send_clerk(paid, msg_id="msg_pay_again"))
    # Then one COMPLETED plan order of 19.00 usd names the item's subscription row
    assert retry.status == 200 and retry.json["duplicate"] is True
    order = assert_one_plan_order(db, "clerk", ITEM, clerk_plans.pro_id, member, "19.00", "usd")
    assert outcome(db, answer)["order_id"] == str(order["id"])
    # When Clerk renews: a recurring attempt is paid
    second = start + MONTH_MS
    processed(send_clerk(item_event("subscriptionItem.updated", at=second + 1, start=second), msg_id="msg_renew"))
    processed(
        send_clerk(attempt_event("cpay_m2", at=second + 5, start=second, charge_type="recurring"), msg_id="msg_p2")
    )
    # Then no new order
    assert [o["id"] for o in plan_orders(db, "clerk")] == [order["id"]]
    assert count(db, "invoices", "provider = 'clerk' AND credits_granted > 0") == 2
    assert_history_shows(db, order, member, clerk_plans.pro_id, "19.00")


def test_clerk_attempt_before_its_item_makes_one_order_linked_to_the_row(db, payments_env, clerk_plans, member):
    # Given the paid checkout attempt delivered before the item's events
    start = now_ms() - 1000
    processed(send_clerk(attempt_event("cpay_early", at=start + 20, start=start), msg_id="msg_pay"))
    order = assert_one_plan_order(db, "clerk", ITEM, clerk_plans.pro_id, member, "19.00", "usd")
    # When the item's events arrive, the older one last
    processed(send_clerk(item_event("subscriptionItem.active", at=start + 30, start=start), msg_id="msg_active"))
    processed(
        send_clerk(item_event("subscriptionItem.created", at=start + 5, start=start, status="incomplete"), msg_id="m0")
    )
    # Then one subscription row (active, PRO) and the one order names it; the allowance was granted once
    assert count(db, "subscriptions", "provider = 'clerk'") == 1
    with db() as uow:
        row = uow.session.execute(text("SELECT id, status, tier FROM subscriptions WHERE provider = 'clerk'")).one()
        tier = uow.session.execute(text("SELECT tier FROM users WHERE id = :u"), {"u": member}).scalar_one()
    assert (row.status, row.tier, tier) == ("active", "PRO", "PRO")
    assert [(o["id"], o["subscription_id"]) for o in plan_orders(db, "clerk")] == [(order["id"], row.id)]
    assert balance(db, member) == Decimal("1000")


def clerk_trial(member: uuid.UUID) -> int:
    """A free trial item and its checkout attempt that charged nothing; answers when the trial ends."""
    start = now_ms() - 2 * MONTH_MS
    processed(send_clerk(item_event("subscriptionItem.active", at=start, start=start, is_free_trial=True), msg_id="t1"))
    free = attempt_event("cpay_trial", at=start + 5, start=start)
    for total in free["data"]["totals"].values():
        total["amount"] = 0
    processed(send_clerk(free, msg_id="t2"))
    return start + MONTH_MS


def test_clerk_free_trial_makes_its_order_at_the_first_paid_recurring_charge(db, payments_env, clerk_plans, member):
    # Given a free trial, whose checkout for nothing is no sale
    later = clerk_trial(member)
    assert plan_orders(db, "clerk") == [] and history(member) == []
    # When the trial ends, its first charge (recurring) is paid, and Svix retries that message
    paid = attempt_event("cpay_after", at=later, start=later, charge_type="recurring")
    answer = processed(send_clerk(paid, msg_id="t3"))
    retry = send_clerk(paid, msg_id="t3")
    # Then that charge is the item's one order
    assert retry.status == 200 and retry.json["duplicate"] is True
    order = assert_one_plan_order(db, "clerk", ITEM, clerk_plans.pro_id, member, "19.00", "usd")
    assert outcome(db, answer)["order_id"] == str(order["id"])
    # When the next month is charged too
    nxt = later + MONTH_MS
    processed(send_clerk(attempt_event("cpay_next", at=nxt, start=nxt, charge_type="recurring"), msg_id="t4"))
    # Then still that one order
    assert [o["id"] for o in plan_orders(db, "clerk")] == [order["id"]]
    assert_history_shows(db, order, member, clerk_plans.pro_id, "19.00")


def test_a_failed_clerk_checkout_makes_no_order(db, payments_env, clerk_plans, member):
    # Given an item and a checkout attempt that failed
    start = now_ms() - 1000
    processed(send_clerk(item_event("subscriptionItem.active", at=start, start=start), msg_id="f1"))
    processed(send_clerk(attempt_event("cpay_failed", at=start + 5, start=start, status="failed"), msg_id="f2"))
    # Then no order (the plan was not paid)
    assert plan_orders(db, "clerk") == []


# --- Stripe -----------------------------------------------------------------------------------------------------
def stripe_session(buyer: uuid.UUID, plan_id: uuid.UUID, sub_id: str, customer: str, *, amount: int) -> dict:
    """A subscription checkout session; `amount` 0 is a free trial's (Stripe: no payment required)."""
    return {
        "id": f"cs_test_{uuid.uuid4().hex}", "object": "checkout.session", "mode": "subscription",
        "client_reference_id": str(buyer), "customer": customer, "subscription": sub_id, "amount_total": amount,
        "amount_subtotal": amount, "currency": "usd", "payment_status": "paid" if amount else "no_payment_required",
        "status": "complete", "metadata": {"user_id": str(buyer), "kind": "plan", "item_id": str(plan_id)},
    }  # fmt: skip


def stripe_ids() -> tuple[str, str]:
    return f"sub_{uuid.uuid4().hex[:14]}", f"cus_{uuid.uuid4().hex[:14]}"


def stripe_trial(buyer: uuid.UUID, plan_id: uuid.UUID) -> tuple[str, str]:
    """A trial checkout that paid nothing, its trialing subscription and its invoice for nothing."""
    sub_id, customer = stripe_ids()
    processed(
        send_stripe(
            stripe_event(
                "checkout.session.completed",
                stripe_session(buyer, plan_id, sub_id, customer, amount=0),
                created=now() - 30,
            )
        )
    )
    trialing = subscription_obj(sub_id, customer, buyer, status="trialing", trial_end=now())
    processed(send_stripe(stripe_event("customer.subscription.created", trialing, created=now() - 29)))
    free = invoice_obj(f"in_{uuid.uuid4().hex[:12]}", sub_id, customer, amount=0)
    free["billing_reason"] = "subscription_create"
    processed(send_stripe(stripe_event("invoice.paid", free, created=now() - 28)))
    return sub_id, customer  # fmt: skip


def test_a_stripe_trial_makes_its_order_at_the_first_paid_renewal(db, payments_env, catalogue, buyer):
    # Given a subscription whose first period is a free trial: its checkout and invoice paid nothing
    sub_id, customer = stripe_trial(buyer, catalogue.pro_id)
    # Then the subscription is recorded and no order made
    assert count(db, "subscriptions", "provider = 'stripe'") == 1
    assert plan_orders(db, "stripe") == []
    # When the trial ends and the first paid invoice (subscription_cycle, 19.00) arrives, is replayed, and comes
    # again as invoice.payment_succeeded (another event id)
    paid = invoice_obj("in_after_trial", sub_id, customer)
    first = stripe_event("invoice.paid", paid)
    answer = processed(send_stripe(first))
    replay = send_stripe(first)
    processed(send_stripe(stripe_event("invoice.payment_succeeded", paid)))
    # Then that invoice is the subscription's one order, keyed by the subscription
    assert replay.status == 200 and replay.json["duplicate"] is True
    order = assert_one_plan_order(db, "stripe", sub_id, catalogue.pro_id, buyer, "19.00", "usd")
    assert order["provider_checkout_id"] == f"subscription:{sub_id}"
    assert outcome(db, answer)["order_id"] == str(order["id"])
    # When the next period's invoice is paid (for another amount)
    processed(send_stripe(stripe_event("invoice.paid", invoice_obj("in_next", sub_id, customer, amount=2500))))
    # Then still that one order; both paid invoices were applied
    assert [o["id"] for o in plan_orders(db, "stripe")] == [order["id"]]
    assert count(db, "invoices", "provider = 'stripe' AND status = 'paid' AND amount_paid > 0") == 2
    assert_history_shows(db, order, buyer, catalogue.pro_id, "19.00")


@pytest.mark.parametrize("invoice_first", [False, True], ids=["checkout_first", "invoice_first"])
def test_a_stripe_checkout_and_its_first_invoice_make_one_order(db, payments_env, catalogue, buyer, invoice_first):
    # Given a paid subscription checkout (19.00) and its first invoice (subscription_create), in either order
    sub_id, customer = stripe_ids()
    checkout = stripe_event("checkout.session.completed", stripe_session(buyer, catalogue.pro_id, sub_id, customer,
                                                                        amount=1900))  # fmt: skip
    created = invoice_obj("in_first", sub_id, customer, user_id=buyer)
    created["billing_reason"] = "subscription_create"
    deliveries = [stripe_event("invoice.paid", created), checkout]
    for event in deliveries if invoice_first else reversed(deliveries):
        processed(send_stripe(event))
    # When the next period is paid
    processed(send_stripe(stripe_event("invoice.paid", invoice_obj("in_second", sub_id, customer))))
    # Then one order, the first period's
    assert_one_plan_order(db, "stripe", sub_id, catalogue.pro_id, buyer, "19.00", "usd")


def test_a_stripe_order_keyed_by_its_checkout_is_found_by_the_renewals(db, payments_env, catalogue, buyer):
    # Given a plan order made when orders were keyed by the checkout session (as before they named the subscription)
    sub_id, customer = stripe_ids()
    session = stripe_session(buyer, catalogue.pro_id, sub_id, customer, amount=1900)
    processed(send_stripe(stripe_event("checkout.session.completed", session)))
    with db() as uow:
        uow.session.execute(text("UPDATE orders SET provider_checkout_id = :c WHERE provider = 'stripe'"),
                            {"c": session["id"]})  # fmt: skip
        uow.commit()
    # When the subscription renews, and the checkout's event is delivered again under a new event id
    processed(send_stripe(stripe_event("invoice.paid", invoice_obj("in_renewal", sub_id, customer))))
    processed(send_stripe(stripe_event("checkout.session.completed", session)))
    # Then that order is still the only one
    (order,) = plan_orders(db, "stripe")
    assert order["provider_checkout_id"] == session["id"]


# --- manual plans ------------------------------------------------------------------------------------------------
def test_a_manual_plan_is_no_order(db, payments_env, catalogue, buyer):
    # Given an admin who gives the user Pro by hand (no payment)
    with db() as uow:
        boss = make_user(uow.session, email=f"admin-{uuid.uuid4().hex[:6]}@example.com", role="ADMIN").id
        uow.commit()
    body = {"plan_id": str(catalogue.pro_id), "interval": "month"}
    answer = api_call("PUT", f"/admin/users/{buyer}/plan", body=body, as_user=boss, role="ADMIN")
    # Then the plan and its allowance are the user's, and no order was made
    assert answer.status == 200 and answer.json["user_tier"] == "PRO"
    assert count(db, "orders") == 0 and history(buyer) == []


# --- two paid events racing --------------------------------------------------------------------------------------
Delivery = tuple[str, bytes, dict[str, str]]


def stripe_delivery(event: dict[str, Any]) -> Delivery:
    body = json.dumps(event)
    return "stripe", body.encode(), {"stripe-signature": stripe_signature(body, STRIPE_SECRET)}


def ls_delivery(event: dict[str, Any]) -> Delivery:
    raw = json.dumps(event).encode()
    headers = {"x-signature": lemonsqueezy_signature(raw, LS_SECRET), "x-event-name": event["meta"]["event_name"]}
    return "lemonsqueezy", raw, headers


def clerk_delivery(event: dict[str, Any], msg_id: str) -> Delivery:
    body = json.dumps(event)
    return "clerk", body.encode(), clerk_headers(body, CLERK_SECRET, msg_id)


def asaas_delivery(event: dict[str, Any]) -> Delivery:
    return "asaas", json.dumps(event).encode(), {"asaas-access-token": ASAAS_TOKEN}


def on_own_engine(delivery: Delivery) -> object:
    """The delivery as another container receives it: its own pool."""
    provider, raw, headers = delivery
    engine = build_engine(get_settings())
    try:
        return receive_webhook(provider, raw, headers, lambda: UnitOfWork(build_session_factory(engine)))
    except Exception as exc:
        return exc
    finally:
        engine.dispose()


def race(db: Db, monkeypatch: pytest.MonkeyPatch, first: Delivery, second: Delivery) -> None:
    """`first` makes its order and holds it, uncommitted, while `second` is delivered; `second` must wait on its
    locks; then `first` commits. The second either found the order once it could go on, or failed rolled back on
    the order's key and applies on the provider's retry (redelivered here)."""
    made, release = threading.Event(), threading.Event()
    real = orders.plan_order

    def paused(*args: Any, **kwargs: Any) -> Any:
        order = real(*args, **kwargs)
        if not made.is_set():  # only the first caller holds its order open
            assert order is not None
            made.set()
            assert release.wait(30)
        return order

    monkeypatch.setattr(orders, "plan_order", paused)
    results: dict[str, object] = {}
    one = threading.Thread(target=lambda: results.__setitem__("first", on_own_engine(first)))
    one.start()
    assert made.wait(30), results
    two = threading.Thread(target=lambda: results.__setitem__("second", on_own_engine(second)))
    two.start()
    waiting = 0
    for _ in range(500):
        with db() as uow:
            waiting = uow.session.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            ).scalar_one()
        if waiting or not two.is_alive():
            break
        time.sleep(0.01)
    release.set()
    one.join(30)
    two.join(30)
    assert waiting, f"the second event never waited on the first one's locks: {results}"
    assert getattr(results["first"], "status", None) == "processed", results
    if isinstance(results["second"], WebhookProcessingFailed):
        results["second"] = on_own_engine(second)
    assert getattr(results["second"], "status", None) == "processed", results


def stripe_race(request: pytest.FixtureRequest) -> tuple[Delivery, Delivery, tuple[str, str, uuid.UUID, str, str]]:
    """A paid checkout and its first invoice (both 19.00), the subscription already recorded."""
    request.getfixturevalue("payments_env")
    catalogue, buyer = request.getfixturevalue("catalogue"), request.getfixturevalue("buyer")
    sub_id, customer = stripe_ids()
    processed(send_stripe(stripe_event("customer.subscription.created", subscription_obj(sub_id, customer, buyer))))
    created = invoice_obj("in_first", sub_id, customer)
    created["billing_reason"] = "subscription_create"
    checkout = stripe_session(buyer, catalogue.pro_id, sub_id, customer, amount=1900)
    return (
        stripe_delivery(stripe_event("checkout.session.completed", checkout)),
        stripe_delivery(stripe_event("invoice.paid", created)),
        ("stripe", sub_id, catalogue.pro_id, "19.00", "usd"),
    )


def ls_race(request: pytest.FixtureRequest) -> tuple[Delivery, Delivery, tuple[str, str, uuid.UUID, str, str]]:
    """After a free trial, two paid invoices of the subscription at once (19.00 first, 25.00 second)."""
    request.getfixturevalue("payments_env")
    catalogue, buyer = request.getfixturevalue("catalogue"), request.getfixturevalue("buyer")
    processed(send_lemonsqueezy(ls_subscription("subscription_created", buyer, catalogue.pro_id, status="on_trial")))
    processed(send_lemonsqueezy(ls_invoice(buyer, catalogue.pro_id, total=0)))
    return (
        ls_delivery(ls_invoice(buyer, catalogue.pro_id, invoice_id="9002", reason="renewal")),
        ls_delivery(ls_invoice(buyer, catalogue.pro_id, invoice_id="9003", reason="renewal", total=2500)),
        ("lemonsqueezy", "777", catalogue.pro_id, "19.00", "usd"),
    )


def clerk_race(request: pytest.FixtureRequest) -> tuple[Delivery, Delivery, tuple[str, str, uuid.UUID, str, str]]:
    """After a free trial, two paid recurring attempts of the item at once."""
    request.getfixturevalue("payments_env")
    plans, member = request.getfixturevalue("clerk_plans"), request.getfixturevalue("member")
    later = clerk_trial(member)
    nxt = later + MONTH_MS
    return (
        clerk_delivery(attempt_event("cpay_a", at=later, start=later, charge_type="recurring"), "race_a"),
        clerk_delivery(attempt_event("cpay_b", at=nxt, start=nxt, charge_type="recurring"), "race_b"),
        ("clerk", ITEM, plans.pro_id, "19.00", "usd"),
    )


def asaas_race(request: pytest.FixtureRequest) -> tuple[Delivery, Delivery, tuple[str, str, uuid.UUID, str, str]]:
    """A subscription's first charge confirmed while its next charge is received."""
    api, brl_plans, buyer = (request.getfixturevalue(n) for n in ("asaas_api", "brl", "buyer"))
    asaas_checkout(buyer, {"kind": "plan", "item_id": str(brl_plans.plan_id), "tax_id": CPF})
    [sub] = api.subscriptions.values()
    [charge] = [p for p in api.payments.values() if p["subscription"] == sub["id"]]
    processed(send_asaas(api.event("SUBSCRIPTION_CREATED", sub, at="2026-12-01 10:00:00")))
    second = api.new_payment(sub["customer"], 49.9, "2027-01-01", subscription=sub["id"])
    return (
        asaas_delivery(api.event("PAYMENT_CONFIRMED", api.settle(charge["id"], "CONFIRMED"), at="2026-12-01 10:05:00")),
        asaas_delivery(
            api.event("PAYMENT_RECEIVED", api.settle(second["id"], on="2027-01-01"), at="2027-01-01 09:00:00")
        ),
        ("asaas", sub["id"], brl_plans.plan_id, "49.90", "brl"),
    )


@pytest.mark.parametrize(
    "setup", [stripe_race, ls_race, clerk_race, asaas_race], ids=["stripe", "lemonsqueezy", "clerk", "asaas"]
)
def test_two_paid_events_racing_make_one_order(db, monkeypatch, request, setup):
    # Given two paid plan charges of one subscription that has no order, delivered at once on two containers
    first, second, (provider, sub_ref, plan_id, amount, currency) = setup(request)
    user_id = request.getfixturevalue("member" if provider == "clerk" else "buyer")
    # When the first makes its order and holds it while the second arrives
    race(db, monkeypatch, first, second)
    # Then one order, the first charge's, and both charges applied
    assert_one_plan_order(db, provider, sub_ref, plan_id, user_id, amount, currency)
    paid = 1 if provider == "stripe" else 2  # a Stripe checkout is no invoice: its first invoice is the other
    assert count(db, "invoices", "provider = :p AND status = 'paid' AND amount_paid > 0", p=provider) == paid

"""Auto top-up: the setting through the gateway, the trigger under concurrent charges (one attempt, the monthly cap),
the consumer against the Stripe stand-in (one PaymentIntent per attempt whatever the retries; refused cards turn
it off, mail and emit), and the grant only by the signed `payment_intent.succeeded` webhook, once.
"""

# ruff: noqa: F403, F405
from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.credits_support import assert_consistent, set_costs
from tests.payments_support import *
from tests.provider_standins import StripeStandIn
from tests.support import api_call, make_user
from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.db.base import new_id, utcnow
from tollgate.errors import PaymentProviderError, TollgateError
from tollgate.jobs.outbox_relay import ConsoleSink, OutboxRelay
from tollgate.models.auto_topup import AutoTopUpAttempt
from tollgate.models.payments import PaymentMethod
from tollgate.services import auto_topup, credits
from tollgate_local.webhooks_cli import stripe_event

D = Decimal
WORKERS = 8


def race(count: int, work: Callable[[int], Any]) -> list[Any]:
    """work(0..count-1) on WORKERS threads released together at a barrier; answers results or domain errors."""
    barrier = threading.Barrier(min(count, WORKERS))

    def run(i: int) -> Any:
        if i < WORKERS:
            barrier.wait(timeout=30)
        try:
            return work(i)
        except TollgateError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(run, range(count)))


def customer(db: Callable[[], UnitOfWork], card: str = "pm_card_visa", credits_: str = "100") -> uuid.UUID:
    """A user holding `credits_` with a Stripe customer and `card` attached (as Stripe's webhooks record it)."""
    with db() as uow:
        set_costs(uow.session, {"chat": "10"})
        user = make_user(uow.session, stripe_customer_id=f"cus_{uuid.uuid4().hex[:14]}")
        uow.session.add(
            PaymentMethod(
                provider="stripe", provider_payment_method_id=card, provider_customer_id=user.stripe_customer_id,
                user_id=user.id, type="card", brand="visa", last4="4242",
            )
        )  # fmt: skip
        ledger.grant(uow.session, user.id, kind="promo", amount=D(credits_), source_key="promo:seed")
        uow.commit()
        return user.id


def enable(user_id: uuid.UUID, pack_id: uuid.UUID, *, threshold: str = "50", cap: str = "20.00") -> Any:
    body = {"enabled": True, "threshold": threshold, "pack_id": str(pack_id), "monthly_cap": cap}
    return api_call("PUT", "/credits/auto-topup", body=body, as_user=user_id)


def charge(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> Any:
    return credits.record_usage(db(), user_id, operation="chat")


def attempts(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> list[Any]:
    with db() as uow:
        return list(
            uow.session.execute(
                text("SELECT * FROM auto_topup_attempts WHERE user_id = :u ORDER BY sequence"), {"u": user_id}
            ).mappings()
        )


def events(db: Callable[[], UnitOfWork], event_type: str, user_id: uuid.UUID) -> list[Any]:
    with db() as uow:
        return list(
            uow.session.execute(
                text("SELECT * FROM outbox_events WHERE type = :t AND user_id = :u ORDER BY id"),
                {"t": event_type, "u": user_id},
            ).mappings()
        )


def setting(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> Any:
    with db() as uow:
        return uow.session.execute(
            text("SELECT * FROM auto_topup_settings WHERE user_id = :u"), {"u": user_id}
        ).mappings().one()  # fmt: skip


def relay() -> None:
    OutboxRelay(sink=ConsoleSink(write=lambda _: None)).run_once()


def intent_requests(stripe: StripeStandIn) -> list[Any]:
    return [r for r in stripe.requests if r.method == "POST" and r.path.startswith("/v1/payment_intents")]


def succeeded_event(stripe: StripeStandIn, intent_id: str) -> dict[str, Any]:
    return stripe_event("payment_intent.succeeded", dict(stripe.payment_intents[intent_id]))


def mails(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> list[Any]:
    with db() as uow:
        return list(
            uow.session.execute(
                text("SELECT * FROM email_logs WHERE user_id = :u AND type = 'auto_topup_failed'"), {"u": user_id}
            ).mappings()
        )


# --- the setting ------------------------------------------------------------------------------------------------
def test_the_setting_is_validated_and_read_back_through_the_gateway(db, payments_env, catalogue):
    # Given a user with no saved card, and one with a card
    with db() as uow:
        bare = make_user(uow.session).id
        uow.commit()
    user_id = customer(db)
    # When auto top-up is turned on without a card, Then 409 no_default_payment_method
    assert enable(bare, catalogue.pack_id).error_code == "no_default_payment_method"
    # When the pack does not exist, or the cap does not pay for one pack (5.00), Then 409 with their codes
    assert enable(user_id, uuid.uuid4()).error_code == "auto_topup_pack_unavailable"
    assert enable(user_id, catalogue.pack_id, cap="4.99").error_code == "monthly_cap_below_pack_price"
    # When the threshold is negative or the cap is zero, Then 422
    assert enable(user_id, catalogue.pack_id, threshold="-1").status == 422
    assert enable(user_id, catalogue.pack_id, cap="0").status == 422
    # When it is turned on properly, Then the answer and a GET both show it, with nothing spent
    saved = enable(user_id, catalogue.pack_id, threshold="50", cap="20.00")
    assert saved.status == 200, saved.json
    read = api_call("GET", "/credits/auto-topup", as_user=user_id)
    assert read.json == saved.json
    assert read.json["enabled"] is True and read.json["threshold"] == "50.0000"
    assert (read.json["monthly_cap"], read.json["currency"], read.json["spent_this_month"]) == ("20.00", "usd", "0.00")
    assert read.json["last_attempt"] is None
    # And turning it off needs no card
    off = api_call(
        "PUT", "/credits/auto-topup", as_user=bare,
        body={"enabled": False, "threshold": "5", "pack_id": str(catalogue.pack_id), "monthly_cap": "10"},
    )  # fmt: skip
    assert off.status == 200 and off.json["enabled"] is False


# --- the trigger ------------------------------------------------------------------------------------------------
def test_eight_concurrent_charges_crossing_the_threshold_make_one_attempt(db, payments_env, catalogue, stripe_api):
    # Given 100 credits, chats at 10, auto top-up under 50
    user_id = customer(db)
    assert enable(user_id, catalogue.pack_id, threshold="50", cap="20.00").status == 200
    # When 8 charges race (the balance goes 90 .. 20, crossing 50 on the 6th)
    results = race(8, lambda _: charge(db, user_id))
    # Then all 8 charged, and exactly one attempt and one requested event exist
    assert all(isinstance(r, ledger.ChargeResult) for r in results), results
    rows = attempts(db, user_id)
    assert [(r["sequence"], r["status"], r["amount"]) for r in rows] == [(1, "requested", D("5.000"))]
    requested = events(db, "auto_topup.requested", user_id)
    assert len(requested) == 1 and requested[0]["data"]["attempt_id"] == str(rows[0]["id"])
    # And the charges did not call Stripe: the top-up waits for the relay
    assert intent_requests(stripe_api) == []
    assert_consistent(db, user_id)


def test_the_monthly_cap_holds_under_concurrent_charges(db, payments_env, catalogue, stripe_api):
    # Given a 10.00 cap for a 5.00 pack, 5.00 already spent this month, and attempts that do not count
    user_id = customer(db, credits_="200")
    assert enable(user_id, catalogue.pack_id, threshold="150", cap="10.00").status == 200
    with db() as uow:
        month_start = utcnow().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        for sequence, status, at in ((1, "succeeded", month_start - timedelta(days=2)),  # last month
                                     (2, "failed", utcnow()), (3, "succeeded", utcnow())):  # fmt: skip
            uow.session.add(
                AutoTopUpAttempt(
                    id=new_id(), user_id=user_id, sequence=sequence, status=status, pack_id=catalogue.pack_id,
                    credits=D(100), amount=D("5.00"), currency="usd", created_at=at,
                )
            )  # fmt: skip
        uow.commit()
    # When 8 charges race across the threshold (200 -> 120)
    race(8, lambda _: charge(db, user_id))
    # Then one more attempt is made (5.00 + 5.00 = the cap)
    new = [r for r in attempts(db, user_id) if r["sequence"] > 3]
    assert [(r["sequence"], r["status"]) for r in new] == [(4, "requested")]
    # When it succeeds and 8 more charges race
    with db() as uow:
        uow.session.execute(text("UPDATE auto_topup_attempts SET status = 'succeeded' WHERE sequence = 4"))
        uow.commit()
    race(8, lambda _: charge(db, user_id))
    # Then none is made: one more pack would pass the cap
    assert len(attempts(db, user_id)) == 4
    assert len(events(db, "auto_topup.requested", user_id)) == 1


# --- the consumer -----------------------------------------------------------------------------------------------
def test_a_retried_consumer_never_creates_two_payment_intents(db, payments_env, catalogue, stripe_api):
    # Given a requested top-up
    user_id = customer(db)
    assert enable(user_id, catalogue.pack_id, threshold="95").status == 200
    charge(db, user_id)
    (attempt,) = attempts(db, user_id)
    # When Stripe fails the first try (twice: the library's own retry too), Then the consumer raises for a retry
    stripe_api.failures = [500, 500]
    with pytest.raises(PaymentProviderError):
        auto_topup.run_attempt(UnitOfWork, attempt["id"])
    assert attempts(db, user_id)[0]["status"] == "processing"  # still in flight: no second attempt can start
    # When the delivery is retried, and then delivered once more (at least once)
    auto_topup.run_attempt(UnitOfWork, attempt["id"])
    auto_topup.run_attempt(UnitOfWork, attempt["id"])
    # Then every call carried the same idempotency key and Stripe made one PaymentIntent
    keys = {r.headers.get("idempotency-key") for r in intent_requests(stripe_api)}
    assert keys == {auto_topup.idempotency_key(user_id, 1)}
    assert len(stripe_api.payment_intents) == 1
    (intent,) = stripe_api.payment_intents.values()
    assert intent["metadata"] == {
        "user_id": str(user_id), "kind": "pack", "item_id": str(catalogue.pack_id),
        "auto_topup_attempt_id": str(attempt["id"]),
    }  # fmt: skip
    form = intent_requests(stripe_api)[-1].form
    assert (form["off_session"], form["confirm"], form["amount"], form["currency"]) == ("true", "true", "500", "usd")
    assert form["payment_method"] == "pm_card_visa" and form["customer"].startswith("cus_")
    assert attempts(db, user_id)[0]["payment_intent_id"] == intent["id"]


@pytest.mark.parametrize(
    ("card", "code"),
    [("pm_card_chargeDeclined", "card_declined"), ("pm_card_authenticationRequired", "authentication_required")],
)
def test_a_refused_card_turns_auto_topup_off_mails_and_emits_once(db, payments_env, catalogue, stripe_api, card, code):
    # Given a requested top-up on a card Stripe refuses off-session
    user_id = customer(db, card=card)
    assert enable(user_id, catalogue.pack_id, threshold="95").status == 200
    charge(db, user_id)
    # When the relay runs the consumer
    relay()
    # Then the attempt failed with Stripe's code, auto top-up is off with the reason, one mail and one event
    (attempt,) = attempts(db, user_id)
    assert (attempt["status"], attempt["failure_code"]) == ("failed", code)
    assert attempt["payment_intent_id"] in stripe_api.payment_intents
    row = setting(db, user_id)
    assert row["enabled"] is False and row["disabled_reason"].startswith(code) and row["disabled_at"] is not None
    (mail,) = mails(db, user_id)
    assert mail["status"] == "sent"
    (failed,) = events(db, "auto_topup.failed", user_id)
    assert failed["data"]["failure_code"] == code and failed["data"]["attempt_id"] == str(attempt["id"])
    # When more charges run and the relay runs again (and Stripe's failure webhook arrives too)
    for _ in range(3):
        charge(db, user_id)
    relay()
    intent = dict(stripe_api.payment_intents[attempt["payment_intent_id"]])
    assert send_stripe(stripe_event("payment_intent.payment_failed", intent)).status == 200
    # Then nothing is tried again: no loop of failed charges, no second mail or event
    assert len(attempts(db, user_id)) == 1 and len(stripe_api.payment_intents) == 1
    assert len(mails(db, user_id)) == 1 and len(events(db, "auto_topup.failed", user_id)) == 1
    # And the GET says why
    read = api_call("GET", "/credits/auto-topup", as_user=user_id).json
    assert read["enabled"] is False and read["disabled_reason"].startswith(code)
    assert read["last_attempt"]["status"] == "failed"


def test_the_payment_failed_webhook_fails_an_attempt_in_flight(db, payments_env, catalogue, stripe_api):
    # Given an attempt whose PaymentIntent Stripe took (processing), that later fails
    user_id = customer(db)
    assert enable(user_id, catalogue.pack_id, threshold="95").status == 200
    charge(db, user_id)
    (attempt,) = attempts(db, user_id)
    with db() as uow:  # Stripe's event carries the attempt's customer (a foreign one is refused)
        customer_id = uow.session.execute(
            text("SELECT stripe_customer_id FROM users WHERE id = :u"), {"u": user_id}
        ).scalar_one()
    intent = {
        "id": f"pi_{uuid.uuid4().hex[:24]}", "object": "payment_intent", "amount": 500, "currency": "usd",
        "status": "requires_payment_method", "customer": customer_id,
        "metadata": {"user_id": str(user_id), "kind": "pack", "item_id": str(catalogue.pack_id),
                     "auto_topup_attempt_id": str(attempt["id"])},
        "last_payment_error": {"type": "card_error", "code": "card_declined", "message": "Your card was declined."},
    }  # fmt: skip
    # When the signed failure webhook arrives twice (two deliveries)
    first = send_stripe(stripe_event("payment_intent.payment_failed", intent))
    second = send_stripe(stripe_event("payment_intent.payment_failed", intent))
    # Then the attempt failed, auto top-up is off, one mail and one event
    assert first.status == 200 and second.status == 200
    assert attempts(db, user_id)[0]["status"] == "failed"
    assert setting(db, user_id)["enabled"] is False
    assert len(mails(db, user_id)) == 1 and len(events(db, "auto_topup.failed", user_id)) == 1


# --- the grant --------------------------------------------------------------------------------------------------
def test_only_the_webhook_grants_and_a_duplicate_grants_nothing(db, payments_env, catalogue, stripe_api):
    # Given a top-up whose PaymentIntent succeeded at Stripe
    user_id = customer(db)
    assert enable(user_id, catalogue.pack_id, threshold="95").status == 200
    charge(db, user_id)
    relay()
    (attempt,) = attempts(db, user_id)
    intent_id = attempt["payment_intent_id"]
    # Then nothing is granted before the webhook
    assert balance(db, user_id) == D(90)
    assert attempt["status"] == "processing"
    # When the signed payment_intent.succeeded arrives, then again (a redelivery, and a second event of it)
    event = succeeded_event(stripe_api, intent_id)
    answers = [send_stripe(event), send_stripe(event), send_stripe(succeeded_event(stripe_api, intent_id))]
    # Then the pack is granted once, by the pack-order flow keyed by the payment intent id
    assert [a.status for a in answers] == [200, 200, 200]
    assert balance(db, user_id) == D(190)
    assert count(db, "purchases", "provider = 'stripe' AND provider_order_id = :o", o=intent_id) == 1
    assert count(db, "credit_grants", "source_key = :k", k=f"stripe:order:{intent_id}") == 1
    assert attempts(db, user_id)[0]["status"] == "succeeded"
    assert_consistent(db, user_id)


def test_a_payment_whose_amount_is_not_the_packs_grants_nothing(db, payments_env, catalogue, stripe_api):
    # Given a top-up's PaymentIntent reported for 1.00 instead of the pack's 5.00
    user_id = customer(db)
    assert enable(user_id, catalogue.pack_id, threshold="95").status == 200
    charge(db, user_id)
    relay()
    (attempt,) = attempts(db, user_id)
    intent = dict(stripe_api.payment_intents[attempt["payment_intent_id"]], amount=100, amount_received=100)
    # When its webhook arrives
    answer = send_stripe(stripe_event("payment_intent.succeeded", intent))
    # Then it is rejected (no retry fixes it) and nothing is granted
    assert answer.status == 200 and answer.json["status"] == "rejected"
    assert balance(db, user_id) == D(90)


def test_a_checkout_payment_intent_is_still_ignored(db, payments_env, catalogue, buyer):
    # Given the PaymentIntent of a Checkout purchase (its metadata name the pack, not an attempt)
    intent = {
        "id": f"pi_{uuid.uuid4().hex[:24]}", "object": "payment_intent", "amount": 500, "amount_received": 500,
        "currency": "usd", "status": "succeeded",
        "metadata": {"user_id": str(buyer), "kind": "pack", "item_id": str(catalogue.pack_id)},
    }  # fmt: skip
    # When its payment_intent.succeeded arrives, Then it is ignored: the session's events grant the purchase
    answer = send_stripe(stripe_event("payment_intent.succeeded", intent))
    assert answer.status == 200 and answer.json["status"] == "ignored"
    assert balance(db, buyer) == D(0)


# --- end to end -------------------------------------------------------------------------------------------------
def test_end_to_end_charge_outbox_relay_stripe_webhook_grant(db, payments_env, catalogue, stripe_api):
    # Given a user with a saved card who turns auto top-up on through the gateway
    user_id = customer(db)
    assert enable(user_id, catalogue.pack_id, threshold="95", cap="5.00").status == 200
    # When a charge through the gateway leaves 90 available
    usage = api_call("POST", "/credits/usage", body={"operation": "chat"}, as_user=user_id)
    assert usage.status == 201 and usage.json["balance"] == "90.0000"
    # Then the charge answered without any call to Stripe
    assert intent_requests(stripe_api) == []
    # When the relay delivers the outbox event to the consumer
    relay()
    # Then the stand-in made one off-session PaymentIntent for the pack
    (intent,) = stripe_api.payment_intents.values()
    assert intent["status"] == "succeeded" and intent["amount"] == 500
    # When Stripe's signed payment_intent.succeeded arrives
    assert send_stripe(succeeded_event(stripe_api, intent["id"])).status == 200
    # Then the credits are granted and the GET shows the attempt succeeded, the month's spend at the cap
    assert balance(db, user_id) == D(190)
    read = api_call("GET", "/credits/auto-topup", as_user=user_id).json
    assert read["last_attempt"]["status"] == "succeeded" and read["last_attempt"]["payment_intent_id"] == intent["id"]
    assert read["spent_this_month"] == "5.00"
    # And the relay running again changes nothing (the consumer is idempotent)
    relay()
    assert len(stripe_api.payment_intents) == 1 and balance(db, user_id) == D(190)

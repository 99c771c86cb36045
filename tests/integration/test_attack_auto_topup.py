"""Auto top-up attacked from outside and left half-done: a stuck attempt is recovered without buying twice, a
PaymentIntent naming someone else's attempt grants nothing, reordered and repeated webhooks change nothing, the cap
holds while the setting changes under concurrent charges, odd values are refused at the edge, keys cannot turn it on,
and inactive accounts are not charged.
"""

# ruff: noqa: F403, F405, F811
from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any, cast

import pytest
from sqlalchemy import text

from tests.integration.auth_helpers import AuthEnv, auth_env, bearer  # noqa: F401
from tests.integration.test_auto_topup import (
    attempts,
    charge,
    customer,
    enable,
    events,
    intent_requests,
    mails,
    race,
    relay,
    setting,
    succeeded_event,
)
from tests.payments_support import *
from tests.support import api_call, make_user
from tollgate import ledger
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.jobs.outbox_relay import ConsoleSink, OutboxRelay
from tollgate.models.credits import CreditPack
from tollgate.models.payments import PaymentMethod
from tollgate.payments import adapters
from tollgate.services import auto_topup, credits
from tollgate_local.webhooks_cli import stripe_event

D = Decimal
CONSUMER = "consumer:tollgate.services.auto_topup.handle_requested"


def age(db: Callable[[], UnitOfWork], user_id: uuid.UUID, by: timedelta) -> None:
    """Make the user's attempts look last touched `by` ago (as a stuck one would)."""
    with db() as uow:
        uow.session.execute(
            text("UPDATE auto_topup_attempts SET updated_at = :at WHERE user_id = :u"),
            {"at": utcnow() - by, "u": user_id},
        )
        uow.commit()


class DiesAfterStripe:
    """The function dies (a timeout) right after Stripe answered, before the answer is recorded."""

    def __init__(self, real: adapters.StripeGateway) -> None:
        self.real = real

    def charge_off_session(self, request: adapters.OffSessionCharge) -> adapters.OffSessionResult:
        self.real.charge_off_session(request)
        raise TimeoutError("Task timed out after 30.00 seconds")


def dies_after_stripe() -> adapters.StripeGateway:
    return cast(adapters.StripeGateway, DiesAfterStripe(adapters.stripe_gateway()))


def intent(user_id: uuid.UUID, attempt_id: Any, pack_id: uuid.UUID, customer_id: str, **fields: Any) -> dict[str, Any]:
    """A PaymentIntent as Stripe would send it, with auto top-up's metadata."""
    return {
        "id": f"pi_{uuid.uuid4().hex[:24]}", "object": "payment_intent", "amount": 500, "amount_received": 500,
        "currency": "usd", "status": "succeeded", "customer": customer_id, "created": 1_764_633_600,
        "metadata": {"user_id": str(user_id), "kind": "pack", "item_id": str(pack_id),
                     "auto_topup_attempt_id": str(attempt_id)},
        **fields,
    }  # fmt: skip


def stripe_customer(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> str:
    with db() as uow:
        return str(
            uow.session.execute(text("SELECT stripe_customer_id FROM users WHERE id = :u"), {"u": user_id}).scalar()
        )


def requested(db: Callable[[], UnitOfWork], catalogue: Catalogue, **kw: Any) -> tuple[uuid.UUID, Any]:
    """A user with a card whose charge just requested a top-up (90 available, threshold 95)."""
    user_id = customer(db, **kw)
    assert enable(user_id, catalogue.pack_id, threshold="95").status == 200
    charge(db, user_id)
    (attempt,) = attempts(db, user_id)
    return user_id, attempt


# --- recovery of a stuck attempt --------------------------------------------------------------------------------
def test_an_attempt_whose_delivery_went_dead_is_redriven_with_the_same_key(
    db, payments_env, catalogue, stripe_api, monkeypatch
):
    # Given a relay that gives up after one failed delivery, and Stripe failing that one (the library retries once)
    monkeypatch.setenv("OUTBOX_MAX_ATTEMPTS", "1")
    get_settings.cache_clear()
    user_id, _ = requested(db, catalogue)
    stripe_api.failures = [500, 500]
    relay()
    assert count(db, "outbox_deliveries", "target = :t AND status = 'DEAD'", t=CONSUMER) == 1
    assert attempts(db, user_id)[0]["status"] == "processing"
    # When recovery runs before the attempt is stale, Then it leaves it alone
    assert auto_topup.recover_stale(UnitOfWork).redriven == 0
    # When it has been stuck past the bound and recovery runs (twice: overlapping runs)
    age(db, user_id, timedelta(minutes=20))
    report = auto_topup.recover_stale(UnitOfWork)
    auto_topup.recover_stale(UnitOfWork)
    # Then it was re-driven with the attempt's own key: one PaymentIntent, recorded on the attempt
    assert report.redriven == 1
    assert {r.headers.get("idempotency-key") for r in intent_requests(stripe_api)} == {
        auto_topup.idempotency_key(user_id, 1)
    }
    (pi,) = stripe_api.payment_intents.values()
    assert attempts(db, user_id)[0]["payment_intent_id"] == pi["id"]
    # And Stripe's webhook grants it once and frees the next top-up
    assert send_stripe(succeeded_event(stripe_api, pi["id"])).status == 200
    assert balance(db, user_id) == D(190)
    assert attempts(db, user_id)[0]["status"] == "succeeded"


def test_a_function_that_died_after_stripe_answered_is_resolved_without_a_second_payment(
    db, payments_env, catalogue, stripe_api
):
    # Given an attempt whose PaymentIntent Stripe made, but the function died before recording it
    user_id, attempt = requested(db, catalogue)
    with pytest.raises(TimeoutError):
        auto_topup.run_attempt(UnitOfWork, attempt["id"], gateway=dies_after_stripe())
    assert len(stripe_api.payment_intents) == 1
    assert attempts(db, user_id)[0]["payment_intent_id"] is None
    # When it is stale and recovery runs
    age(db, user_id, timedelta(hours=2))
    auto_topup.recover_stale(UnitOfWork)
    # Then Stripe answered the same PaymentIntent (same key): still one, now recorded
    (pi,) = stripe_api.payment_intents.values()
    row = attempts(db, user_id)[0]
    assert (row["status"], row["payment_intent_id"]) == ("processing", pi["id"])
    # And its success webhook grants once
    send_stripe(succeeded_event(stripe_api, pi["id"]))
    send_stripe(succeeded_event(stripe_api, pi["id"]))
    assert balance(db, user_id) == D(190)


def test_a_stale_attempt_whose_intent_was_canceled_is_failed_after_reading_it(db, payments_env, catalogue, stripe_api):
    # Given an attempt whose PaymentIntent is known, whose outcome webhook never came, and which Stripe canceled
    user_id, _ = requested(db, catalogue)
    relay()
    pi_id = attempts(db, user_id)[0]["payment_intent_id"]
    stripe_api.payment_intents[pi_id]["status"] = "canceled"
    age(db, user_id, timedelta(hours=1))
    # When recovery runs twice
    first = auto_topup.recover_stale(UnitOfWork)
    auto_topup.recover_stale(UnitOfWork)
    # Then it read the PaymentIntent (no new one), failed the attempt, turned auto top-up off, mailed and emitted once
    assert first.failed == 1 and len(stripe_api.payment_intents) == 1
    assert len(intent_requests(stripe_api)) == 1  # the consumer's only: recovery read, it did not create
    row = attempts(db, user_id)[0]
    assert (row["status"], row["failure_code"]) == ("failed", "canceled")
    assert setting(db, user_id)["enabled"] is False
    assert len(mails(db, user_id)) == 1 and len(events(db, "auto_topup.failed", user_id)) == 1


def test_a_stale_attempt_whose_intent_succeeded_waits_for_its_webhook(db, payments_env, catalogue, stripe_api):
    # Given an attempt whose PaymentIntent succeeded, its webhook not yet delivered, stuck past the bound
    user_id, _ = requested(db, catalogue)
    relay()
    age(db, user_id, timedelta(hours=1))
    # When recovery runs, Then it neither fails it nor buys again: the paid pack is granted only by the webhook
    report = auto_topup.recover_stale(UnitOfWork)
    assert report.waiting == 1 and report.failed == 0
    assert attempts(db, user_id)[0]["status"] == "processing" and len(stripe_api.payment_intents) == 1
    # And further charges start no second top-up meanwhile
    charge(db, user_id)
    assert len(attempts(db, user_id)) == 1


def test_past_stripes_key_window_an_unknown_outcome_fails_without_charging(db, payments_env, catalogue, stripe_api):
    # Given an attempt marked processing whose Stripe call's outcome is unknown, stuck for two days (Stripe keeps
    # an idempotency key for 24 hours: a re-drive now could make a second PaymentIntent)
    user_id, attempt = requested(db, catalogue)
    with pytest.raises(TimeoutError):
        auto_topup.run_attempt(UnitOfWork, attempt["id"], gateway=dies_after_stripe())
    before = len(intent_requests(stripe_api))
    age(db, user_id, timedelta(days=2))
    # When recovery runs
    report = auto_topup.recover_stale(UnitOfWork)
    # Then Stripe is not called again, the attempt failed, auto top-up is off (no automatic buy), one mail
    assert report.failed == 1 and len(intent_requests(stripe_api)) == before
    assert attempts(db, user_id)[0]["status"] == "failed"
    assert setting(db, user_id)["enabled"] is False
    assert len(mails(db, user_id)) == 1 and len(events(db, "auto_topup.failed", user_id)) == 1
    # When the payment did go through and its webhook arrives late, Then the paying customer gets the pack, once
    (pi,) = stripe_api.payment_intents.values()
    assert send_stripe(succeeded_event(stripe_api, pi["id"])).status == 200
    send_stripe(succeeded_event(stripe_api, pi["id"]))
    assert balance(db, user_id) == D(190)
    assert attempts(db, user_id)[0]["status"] == "succeeded"


def test_the_relay_run_recovers_stale_attempts(db, payments_env, catalogue, stripe_api):
    # Given an attempt stuck in `requested` (its event's delivery is long gone)
    user_id, _ = requested(db, catalogue)
    with db() as uow:
        uow.session.execute(text("UPDATE outbox_events SET dispatched_at = now() WHERE user_id = :u"), {"u": user_id})
        uow.commit()
    age(db, user_id, timedelta(minutes=30))
    # When the scheduled relay runs
    OutboxRelay(sink=ConsoleSink(write=lambda _: None)).run(run_seconds=0)
    # Then the attempt was re-driven: one PaymentIntent
    assert len(stripe_api.payment_intents) == 1
    assert attempts(db, user_id)[0]["payment_intent_id"] is not None


def test_a_retry_after_the_card_changed_does_not_loop_on_the_key(db, payments_env, catalogue, stripe_api):
    # Given an attempt whose first Stripe call's answer was lost, and a new card saved since
    user_id, attempt = requested(db, catalogue)
    with pytest.raises(TimeoutError):
        auto_topup.run_attempt(UnitOfWork, attempt["id"], gateway=dies_after_stripe())
    customer_id = stripe_customer(db, user_id)
    with db() as uow:
        uow.session.add(
            PaymentMethod(
                provider="stripe", provider_payment_method_id="pm_card_mastercard", user_id=user_id,
                provider_customer_id=customer_id, type="card", brand="mastercard", last4="4444",
            )
        )  # fmt: skip
        uow.commit()
    # When the delivery is retried (the key now meets other parameters at Stripe)
    status = auto_topup.run_attempt(UnitOfWork, attempt["id"])
    # Then no second PaymentIntent is made and the attempt ends instead of raising on every retry
    assert len(stripe_api.payment_intents) == 1
    assert status == "failed" and setting(db, user_id)["enabled"] is False
    assert len(mails(db, user_id)) == 1


# --- PaymentIntents that are not what they claim ----------------------------------------------------------------
def test_a_second_intent_naming_a_settled_attempt_grants_nothing(db, payments_env, catalogue, stripe_api):
    # Given a top-up granted by its PaymentIntent
    user_id, attempt = requested(db, catalogue)
    relay()
    pi_id = attempts(db, user_id)[0]["payment_intent_id"]
    send_stripe(succeeded_event(stripe_api, pi_id))
    assert balance(db, user_id) == D(190)
    # When another PaymentIntent of the same customer names the same attempt
    other = intent(user_id, attempt["id"], catalogue.pack_id, stripe_customer(db, user_id))
    answer = send_stripe(stripe_event("payment_intent.succeeded", other))
    # Then it is rejected: the attempt already has its PaymentIntent
    assert answer.status == 200 and answer.json["status"] == "rejected"
    assert balance(db, user_id) == D(190)
    assert count(db, "purchases", "provider_order_id = :o", o=other["id"]) == 0


def test_another_customers_payment_naming_a_victims_attempt_grants_nothing(db, payments_env, catalogue, stripe_api):
    # Given a victim's attempt in flight and an attacker with their own Stripe customer
    victim, attempt = requested(db, catalogue)
    attacker = customer(db, card="pm_attackers_card")
    # When a payment by the attacker's customer names the victim's attempt (and the victim as buyer)
    forged = intent(victim, attempt["id"], catalogue.pack_id, stripe_customer(db, attacker))
    answer = send_stripe(stripe_event("payment_intent.succeeded", forged))
    # Or names the victim's attempt with the attacker as buyer
    mixed = intent(attacker, attempt["id"], catalogue.pack_id, stripe_customer(db, attacker))
    mixed_answer = send_stripe(stripe_event("payment_intent.succeeded", mixed))
    # Then both are rejected: nobody is granted, the victim's attempt is untouched
    assert answer.json["status"] == "rejected" and mixed_answer.json["status"] == "rejected"
    assert balance(db, victim) == D(90) and balance(db, attacker) == D(100)
    row = attempts(db, victim)[0]
    assert (row["status"], row["payment_intent_id"]) == ("requested", None)


def test_a_failure_of_a_foreign_intent_does_not_fail_the_attempt(db, payments_env, catalogue, stripe_api):
    # Given an attempt whose own PaymentIntent succeeded (its webhook still to come)
    user_id, attempt = requested(db, catalogue)
    relay()
    # When a payment_failed arrives for another PaymentIntent naming this attempt
    other = intent(user_id, attempt["id"], catalogue.pack_id, stripe_customer(db, user_id),
                   status="requires_payment_method", last_payment_error={"code": "card_declined"})  # fmt: skip
    answer = send_stripe(stripe_event("payment_intent.payment_failed", other))
    # Then it is rejected: the attempt stays in flight, auto top-up stays on, no mail
    assert answer.json["status"] == "rejected"
    assert attempts(db, user_id)[0]["status"] == "processing"
    assert setting(db, user_id)["enabled"] is True and mails(db, user_id) == []


def test_payment_failed_after_succeeded_changes_nothing(db, payments_env, catalogue, stripe_api):
    # Given a top-up granted by its webhook
    user_id, _ = requested(db, catalogue)
    relay()
    pi = dict(stripe_api.payment_intents[attempts(db, user_id)[0]["payment_intent_id"]])
    send_stripe(stripe_event("payment_intent.succeeded", pi))
    # When a payment_failed for the same PaymentIntent arrives late (reordered)
    failed = dict(pi, status="requires_payment_method", last_payment_error={"code": "card_declined"})
    assert send_stripe(stripe_event("payment_intent.payment_failed", failed)).status == 200
    # Then the attempt stays succeeded, auto top-up on, the credits kept, no mail or failure event
    assert attempts(db, user_id)[0]["status"] == "succeeded"
    assert setting(db, user_id)["enabled"] is True
    assert balance(db, user_id) == D(190)
    assert mails(db, user_id) == [] and events(db, "auto_topup.failed", user_id) == []


def test_a_refusal_reported_by_webhook_before_the_consumer_records_it_mails_once(
    db, payments_env, catalogue, stripe_api
):
    # Given a card that needs authentication, and Stripe's failure webhook arriving while the consumer waits
    user_id, attempt = requested(db, catalogue, card="pm_card_authenticationRequired")

    class WebhookFirst:
        def charge_off_session(self, request: adapters.OffSessionCharge) -> adapters.OffSessionResult:
            result = adapters.stripe_gateway().charge_off_session(request)
            assert result.payment_intent_id is not None
            refused = dict(stripe_api.payment_intents[result.payment_intent_id])
            assert send_stripe(stripe_event("payment_intent.payment_failed", refused)).status == 200
            return result

    # When the consumer runs, and the relay too (a second delivery), and more charges follow
    auto_topup.run_attempt(UnitOfWork, attempt["id"], gateway=cast(adapters.StripeGateway, WebhookFirst()))
    relay()
    charge(db, user_id)
    relay()
    # Then auto top-up is off, one PaymentIntent, one mail, one failure event: no retry loop
    assert setting(db, user_id)["enabled"] is False
    assert len(stripe_api.payment_intents) == 1 and len(attempts(db, user_id)) == 1
    assert len(mails(db, user_id)) == 1 and len(events(db, "auto_topup.failed", user_id)) == 1


# --- the cap while the setting changes --------------------------------------------------------------------------
def test_the_cap_holds_while_puts_change_it_and_the_pack_under_concurrent_charges(
    db, payments_env, catalogue, stripe_api
):
    # Given a second pack (7.00) and a user whose cap moves between 5.00 and 14.00 while charges race
    with db() as uow:
        big = CreditPack(name="Big pack", credits=D(150), price=D("7.00"), currency="usd", active=True)
        uow.session.add(big)
        uow.commit()
        big_id = big.id
    user_id = customer(db, credits_="400")
    assert enable(user_id, catalogue.pack_id, threshold="390", cap="14.00").status == 200
    bodies = [(catalogue.pack_id, "14.00"), (big_id, "7.00"), (catalogue.pack_id, "5.00"), (big_id, "14.00")]

    def work(i: int) -> Any:
        if i % 2:
            pack, cap = bodies[(i // 2) % len(bodies)]
            return enable(user_id, pack, threshold="390", cap=cap).status
        return charge(db, user_id)

    # When three rounds of 8 racing requests run, each in-flight top-up succeeding between rounds
    for _ in range(3):
        results = race(8, work)
        assert all(r == 200 or isinstance(r, ledger.ChargeResult) for r in results), results
        with db() as uow:
            uow.session.execute(
                text("UPDATE auto_topup_attempts SET status = 'succeeded' WHERE user_id = :u AND status = 'requested'"),
                {"u": user_id},
            )
            uow.commit()
    # Then the month's top-ups never pass the largest cap ever set, and each fitted the cap when it was made
    spent = sum((r["amount"] for r in attempts(db, user_id)), D(0))
    assert D(0) < spent <= D("14.00")
    # And a lowered cap under the month's spend starts nothing more
    assert enable(user_id, catalogue.pack_id, threshold="390", cap="5.00").status == 200
    charge(db, user_id)
    assert sum((r["amount"] for r in attempts(db, user_id)), D(0)) == spent


def test_eight_concurrent_holds_crossing_the_threshold_make_one_attempt(db, payments_env, catalogue, stripe_api):
    # Given 100 credits and auto top-up under 50
    user_id = customer(db)
    assert enable(user_id, catalogue.pack_id, threshold="50").status == 200
    # When 8 holds of 10 race
    results = race(
        8,
        lambda _: credits.create_hold(
            UnitOfWork(), user_id, operation=None, quantity=D(1), amount=D(10), ttl_seconds=60
        ),
    )
    # Then all held and one attempt exists
    assert all(isinstance(r, ledger.HoldResult) for r in results), results
    assert len(attempts(db, user_id)) == 1


# --- values at the edge -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("threshold", "cap"),
    [
        ("NaN", "10"), ("Infinity", "10"), ("-0.0001", "10"), ("0.00001", "10"), ("1e30", "10"), ("abc", "10"),
        ("", "10"), (None, "10"), (True, "10"), ([], "10"),
        ("50", "NaN"), ("50", "-Infinity"), ("50", "-5"), ("50", "5.001"), ("50", "1e15"), ("50", "abc"),
        ("50", "0"), ("50", {"amount": "10"}),
    ],
)  # fmt: skip
def test_odd_threshold_and_cap_values_are_refused(db, payments_env, catalogue, threshold, cap):
    # Given a user with a card
    user_id = customer(db)
    # When the setting is saved with an odd value
    body = {"enabled": True, "threshold": threshold, "pack_id": str(catalogue.pack_id), "monthly_cap": cap}
    answer = api_call("PUT", "/credits/auto-topup", body=body, as_user=user_id)
    # Then 422 and nothing is saved
    assert answer.status == 422, answer.json
    assert count(db, "auto_topup_settings", "user_id = :u", u=user_id) == 0


def test_the_cap_is_in_the_packs_currency_and_a_currency_field_is_refused(db, payments_env, catalogue):
    # Given a user with a card, and a euro pack
    user_id = customer(db)
    with db() as uow:
        eur = CreditPack(name="Euro pack", credits=D(100), price=D("4.50"), currency="EUR", active=True)
        uow.session.add(eur)
        uow.commit()
        eur_id = eur.id
    # When the body names a currency of its own, Then 422
    body = {"enabled": True, "threshold": "5", "pack_id": str(catalogue.pack_id), "monthly_cap": "10",
            "currency": "eur"}  # fmt: skip
    assert api_call("PUT", "/credits/auto-topup", body=body, as_user=user_id).status == 422
    # When the euro pack is chosen, Then the cap is read in euros
    saved = enable(user_id, eur_id, threshold="5", cap="9.00")
    assert saved.status == 200 and saved.json["currency"] == "eur"
    # And the largest values that fit are kept exactly
    huge = enable(user_id, eur_id, threshold="99999999999999.9999", cap="9999999999.99")
    assert huge.status == 200, huge.json
    assert (huge.json["threshold"], huge.json["monthly_cap"]) == ("99999999999999.9999", "9999999999.99")


# --- who may turn it on, with which card ------------------------------------------------------------------------
def test_a_detached_card_or_another_customers_card_cannot_be_used(db, payments_env, catalogue):
    # Given a user whose only card was detached
    detached = customer(db)
    with db() as uow:
        uow.session.execute(text("UPDATE payment_methods SET detached = true WHERE user_id = :u"), {"u": detached})
        uow.commit()
    # And a user whose recorded card belongs to another user's Stripe customer
    owner = customer(db, card="pm_owners_card")
    owners_customer = stripe_customer(db, owner)
    with db() as uow:
        borrower = make_user(uow.session, stripe_customer_id=f"cus_{uuid.uuid4().hex[:14]}")
        uow.session.add(
            PaymentMethod(
                provider="stripe", provider_payment_method_id="pm_borrowed_card", user_id=borrower.id,
                provider_customer_id=owners_customer, type="card",
            )
        )  # fmt: skip
        uow.commit()
        borrower_id = borrower.id
    # When either turns auto top-up on, Then 409 no_default_payment_method
    assert enable(detached, catalogue.pack_id).error_code == "no_default_payment_method"
    assert enable(borrower_id, catalogue.pack_id).error_code == "no_default_payment_method"


def test_a_card_detached_after_enabling_fails_the_attempt_without_charging(db, payments_env, catalogue, stripe_api):
    # Given a requested top-up, and the card detached since
    user_id, _ = requested(db, catalogue)
    with db() as uow:
        uow.session.execute(text("UPDATE payment_methods SET detached = true WHERE user_id = :u"), {"u": user_id})
        uow.commit()
    # When the relay runs it twice
    relay()
    relay()
    # Then Stripe is not called, the attempt failed, auto top-up is off, one mail
    assert intent_requests(stripe_api) == []
    assert attempts(db, user_id)[0]["failure_code"] == "no_payment_method"
    assert setting(db, user_id)["enabled"] is False and len(mails(db, user_id)) == 1


def test_an_api_key_cannot_change_auto_topup_but_may_read_it(auth_env: AuthEnv) -> None:
    # Given a key with credits:read and credits:write
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    created = api_call(
        "POST", "/auth/api-keys", headers=bearer(tokens["access_token"]), through_authorizer=True,
        body={"name": "k", "scopes": ["credits:read", "credits:write"]},
    )  # fmt: skip
    key = {"x-api-key": created.json["key"]}
    body = {"enabled": False, "threshold": "5", "pack_id": str(uuid.uuid4()), "monthly_cap": "10"}
    # When it PUTs the setting, Then 403: spending the saved card is the person's decision
    assert api_call("PUT", "/credits/auto-topup", body=body, headers=key, through_authorizer=True).status == 403
    # And it may read it
    assert api_call("GET", "/credits/auto-topup", headers=key, through_authorizer=True).status == 200


# --- accounts that may not be charged ---------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["SUSPENDED", "LOCKED"])
def test_an_inactive_account_is_not_charged(db, payments_env, catalogue, stripe_api, status):
    # Given a requested top-up, then the account suspended (or locked by the end of its trial)
    user_id, _ = requested(db, catalogue)
    with db() as uow:
        uow.session.execute(text("UPDATE users SET status = :s WHERE id = :u"), {"s": status, "u": user_id})
        uow.commit()
    # When the relay runs the consumer, and a charge runs for the account
    relay()
    charge(db, user_id)
    relay()
    # Then Stripe is never called; the attempt ended without mail, and no new one started
    assert intent_requests(stripe_api) == []
    rows = attempts(db, user_id)
    assert [(r["status"], r["failure_code"]) for r in rows] == [("failed", "account_inactive")]
    assert mails(db, user_id) == []

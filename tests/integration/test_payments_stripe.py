"""Stripe events through the real webhook handler: packs, subscriptions, invoices, refunds, disputes, order."""

# ruff: noqa: F403, F405
from __future__ import annotations

import json
import threading
import uuid
from decimal import Decimal

from sqlalchemy import text

from tests.payments_support import *
from tollgate.db import UnitOfWork
from tollgate_local.webhooks_cli import stripe_checkout_session, stripe_event


def pack_checkout(catalogue: Catalogue, user_id: uuid.UUID, **kw: object) -> dict:
    session = stripe_checkout_session(
        user_id=str(user_id),
        item_id=str(catalogue.pack_id),
        amount_minor=500,
        currency="usd",
        **kw,  # type: ignore[arg-type]
    )
    return stripe_event("checkout.session.completed", session)


def subscription_obj(
    sub_id: str,
    customer: str,
    user_id: uuid.UUID,
    *,
    status: str = "active",
    price: str = "price_pro_month",
    period_start: int = 1_700_000_000,
    trial_end: int | None = None,
    cancel_at_period_end: bool = False,
) -> dict:
    # The shape of tests/fixtures/providers/stripe/customer.subscription.updated.json, ids adapted.
    fixture = json.loads((PROVIDER_FIXTURES / "stripe" / "customer.subscription.updated.json").read_text())
    obj = fixture["data"]["object"]
    obj.update(
        id=sub_id,
        customer=customer,
        status=status,
        metadata={"user_id": str(user_id)},
        current_period_start=period_start,
        current_period_end=period_start + 30 * 86400,
        trial_start=period_start if trial_end else None,
        trial_end=trial_end,
        cancel_at_period_end=cancel_at_period_end,
    )
    obj["items"]["data"][0]["price"]["id"] = price
    obj["items"]["data"][0]["plan"]["id"] = price
    return obj


def invoice_obj(
    invoice_id: str,
    sub_id: str,
    customer: str,
    *,
    user_id: uuid.UUID | None = None,
    price: str = "price_pro_month",
    amount: int = 1900,
    charge: str | None = None,
) -> dict:
    fixture = json.loads((PROVIDER_FIXTURES / "stripe" / "invoice.paid.json").read_text())
    obj = fixture["data"]["object"]
    obj.update(
        id=invoice_id,
        subscription=sub_id,
        customer=customer,
        amount_paid=amount,
        amount_due=amount,
        total=amount,
        billing_reason="subscription_cycle",
        charge=charge or f"ch_{uuid.uuid4().hex[:20]}",
    )
    line = obj["lines"]["data"][0]
    line["price"]["id"] = price
    line["price"]["recurring"] = {"interval": "month", "interval_count": 1}
    line["subscription"] = sub_id
    line["period"] = {"start": now() - 60, "end": now() + 30 * 86400}
    line["metadata"] = {"user_id": str(user_id)} if user_id else {}
    return obj


from tests.conftest import PROVIDER_FIXTURES  # noqa: E402


# --- packs ------------------------------------------------------------------------------------------------------
def test_a_paid_pack_checkout_grants_the_pack_once_with_its_expiry(db, payments_env, catalogue, buyer):
    # Given a paid checkout of the 100-credit pack
    event = pack_checkout(catalogue, buyer)
    # When Stripe delivers it, and then delivers it again
    first = send_stripe(event)
    second = send_stripe(event)
    # Then the first applies it, the second is a duplicate, and exactly one purchase grant exists
    assert first.status == 200 and first.json["status"] == "processed"
    assert second.status == 200 and second.json["duplicate"] is True
    assert balance(db, buyer) == Decimal("100")
    [grant] = grants(db, buyer, "purchase")
    assert grant["source_key"] == f"stripe:order:{event['data']['object']['id']}"
    assert grant["expires_at"] is not None
    assert count(db, "purchases", "status = 'completed'") == 1
    with db() as uow:
        customer = uow.session.execute(
            text("SELECT stripe_customer_id FROM users WHERE id = :u"), {"u": buyer}
        ).scalar()
    assert customer == event["data"]["object"]["customer"]  # the customer is linked
    assert ledger_is_consistent(db, buyer)


def test_the_real_fixture_shape_is_parsed(db, payments_env, catalogue, buyer):
    # Given the published payment-mode fixture, with our buyer, pack and amount put into it
    fixture = json.loads((PROVIDER_FIXTURES / "stripe" / "checkout.session.completed.payment_mode.json").read_text())
    obj = fixture["data"]["object"]
    obj.update(
        amount_total=500,
        client_reference_id=str(buyer),
        metadata={"user_id": str(buyer), "kind": "pack", "item_id": str(catalogue.pack_id)},
    )
    fixture["id"] = "evt_fixture_payment_mode"
    # When it arrives
    response = send_stripe(fixture)
    # Then the pack is granted
    assert response.status == 200 and response.json["status"] == "processed"
    assert balance(db, buyer) == Decimal("100")


def test_an_amount_that_does_not_match_the_pack_grants_nothing(db, payments_env, catalogue, buyer):
    # Given a checkout that reports 1.00 USD for the 5.00 USD pack
    event = stripe_event(
        "checkout.session.completed",
        stripe_checkout_session(user_id=str(buyer), item_id=str(catalogue.pack_id), amount_minor=100, currency="usd"),
    )
    # When it arrives
    response = send_stripe(event)
    # Then it is recorded as rejected (2xx: no retry can fix it) and nothing is granted
    assert response.status == 200 and response.json["status"] == "rejected"
    assert balance(db, buyer) == 0
    assert count(db, "purchases") == 0


def test_line_items_are_checked_where_the_stripe_api_is_reachable(db, stripe_api, catalogue, buyer):
    # Given the pack sells through a Stripe price, and a session whose line items carry another price
    with db() as uow:
        uow.session.execute(text("UPDATE credit_packs SET stripe_price_id = 'price_pack'"))
        uow.commit()
    event = pack_checkout(catalogue, buyer)
    stripe_api.line_item_prices[event["data"]["object"]["id"]] = ["price_something_else"]
    # When it arrives, then it is rejected
    assert send_stripe(event).json["status"] == "rejected"
    # And a session that does carry the pack's price grants
    good = pack_checkout(catalogue, buyer)
    stripe_api.line_item_prices[good["data"]["object"]["id"]] = ["price_pack"]
    assert send_stripe(good).json["status"] == "processed"
    assert balance(db, buyer) == Decimal("100")


def test_an_async_payment_is_granted_once_through_completed_and_async_succeeded(db, payments_env, catalogue, buyer):
    # Given a checkout completed while the payment was still processing
    session = stripe_checkout_session(
        user_id=str(buyer), item_id=str(catalogue.pack_id), amount_minor=500, currency="usd", payment_status="unpaid"
    )
    assert send_stripe(stripe_event("checkout.session.completed", session)).json["status"] == "processed"
    assert balance(db, buyer) == 0
    # When the payment succeeds, and a late `completed` with paid status arrives too
    session_paid = {**session, "payment_status": "paid"}
    send_stripe(stripe_event("checkout.session.async_payment_succeeded", session_paid))
    send_stripe(stripe_event("checkout.session.completed", session_paid))
    # Then the pack was granted exactly once
    assert balance(db, buyer) == Decimal("100")
    assert len(grants(db, buyer, "purchase")) == 1


def test_a_failed_async_payment_grants_nothing(db, payments_env, catalogue, buyer):
    session = stripe_checkout_session(
        user_id=str(buyer), item_id=str(catalogue.pack_id), amount_minor=500, currency="usd", payment_status="unpaid"
    )
    send_stripe(stripe_event("checkout.session.completed", session))
    send_stripe(stripe_event("checkout.session.async_payment_failed", session))
    assert balance(db, buyer) == 0
    assert count(db, "purchases", "status = 'failed'") == 1
    # And a pending checkout that expires unpaid is marked expired
    other = {**session, "id": "cs_test_expiring"}
    send_stripe(stripe_event("checkout.session.completed", other))
    send_stripe(stripe_event("checkout.session.expired", {**other, "status": "expired"}))
    assert count(db, "purchases", "status = 'expired'") == 1
    assert balance(db, buyer) == 0


def test_one_event_delivered_twice_in_parallel_has_one_effect(db, payments_env, catalogue, buyer):
    # Given one event, when two deliveries race
    event = pack_checkout(catalogue, buyer)
    answers: list = []
    barrier = threading.Barrier(2)

    def deliver() -> None:
        barrier.wait()
        answers.append(send_stripe(event))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then both answer 2xx, one of them as a duplicate, and the pack was granted once
    assert sorted(a.status for a in answers) == [200, 200]
    assert sorted(a.json["duplicate"] for a in answers) == [False, True]
    assert balance(db, buyer) == Decimal("100")
    assert count(db, "webhook_events") == 1


def test_a_failure_after_the_grant_rolls_everything_back_and_the_retry_applies_once(db, payments_env, catalogue, buyer):
    from tollgate.services.webhooks import receive_webhook
    from tollgate_local.webhooks_cli import stripe_signature

    class FailingCommit(UnitOfWork):
        armed = True

        def commit(self) -> None:
            if FailingCommit.armed:
                # the grant was written in this transaction; fail right before it would be kept
                assert self.session.execute(text("SELECT count(*) FROM credit_grants")).scalar() == 1
                FailingCommit.armed = False
                raise ConnectionError("injected: the database went away before COMMIT")
            super().commit()

    event = pack_checkout(catalogue, buyer)
    body = json.dumps(event).encode()
    headers = {"Stripe-Signature": stripe_signature(body.decode(), STRIPE_SECRET)}
    # When the first attempt fails after granting
    import pytest

    from tollgate.errors import WebhookProcessingFailed

    with pytest.raises(WebhookProcessingFailed):
        receive_webhook("stripe", body, headers, FailingCommit)
    # Then nothing of it was kept, but the attempt is recorded for replay
    assert balance(db, buyer) == 0
    assert count(db, "purchases") == 0
    [row] = webhook_rows(db)
    assert row["status"] == "failed" and row["attempts"] == 1 and "injected" in row["error"]
    # And the provider's retry applies it once
    receipt = receive_webhook("stripe", body, headers, FailingCommit)
    assert receipt.status == "processed" and not receipt.duplicate
    assert balance(db, buyer) == Decimal("100")
    assert webhook_rows(db)[0]["attempts"] == 2


def test_a_handler_crash_answers_5xx_so_stripe_retries(db, payments_env, catalogue, buyer, monkeypatch):
    from tollgate.services.payment_events import stripe_events

    def boom(*a, **k):
        raise RuntimeError("bug")

    monkeypatch.setitem(stripe_events.HANDLERS, "checkout.session.completed", boom)
    response = send_stripe(pack_checkout(catalogue, buyer))
    assert response.status == 500 and response.error_code == "webhook_processing_failed"
    assert webhook_rows(db)[0]["status"] == "failed"


def test_live_events_are_ignored_by_a_test_deployment(db, payments_env, catalogue, buyer):
    event = pack_checkout(catalogue, buyer)
    event["livemode"] = True
    response = send_stripe(event)
    assert response.status == 200 and response.json["status"] == "ignored"
    assert balance(db, buyer) == 0


def test_test_events_are_ignored_by_a_live_deployment(db, payments_env, catalogue, buyer, monkeypatch):
    from tollgate.config import get_settings

    monkeypatch.setenv("PAYMENTS_LIVE_MODE", "true")
    get_settings.cache_clear()
    response = send_stripe(pack_checkout(catalogue, buyer))
    assert response.json["status"] == "ignored"
    assert balance(db, buyer) == 0


# --- refunds and disputes ---------------------------------------------------------------------------------------
def charge(payment_intent: str, amount_refunded: int, charge_id: str = "ch_pack_1", amount: int = 500) -> dict:
    fixture = json.loads((PROVIDER_FIXTURES / "stripe" / "charge.refunded.json").read_text())
    obj = fixture["data"]["object"]
    obj.update(
        id=charge_id,
        payment_intent=payment_intent,
        amount=amount,
        amount_refunded=amount_refunded,
        amount_captured=amount,
        refunded=amount_refunded >= amount,
    )
    return obj


def bought(db, catalogue, buyer) -> str:
    event = pack_checkout(catalogue, buyer)
    assert send_stripe(event).json["status"] == "processed"
    return str(event["data"]["object"]["payment_intent"])


def test_a_partial_refund_in_two_steps_claws_back_each_share_once(db, payments_env, catalogue, buyer):
    pi = bought(db, catalogue, buyer)
    # When 1.00 of 5.00 is refunded, the same step redelivered, then 2.00 more (cumulative 3.00)
    send_stripe(stripe_event("charge.refunded", charge(pi, 100)))
    assert balance(db, buyer) == Decimal("80")
    send_stripe(stripe_event("charge.refunded", charge(pi, 100)))  # a new event id, same cumulative step
    assert balance(db, buyer) == Decimal("80")
    send_stripe(stripe_event("charge.refunded", charge(pi, 300)))
    # Then 20 + 40 credits were clawed back, and the purchase is partially refunded
    assert balance(db, buyer) == Decimal("40")
    with db() as uow:
        p = uow.session.execute(text("SELECT * FROM purchases")).mappings().one()
    assert p["status"] == "partially_refunded" and p["refunded_amount"] == Decimal("3.000")
    assert count(db, "refunds") == 2
    # And an out-of-order older step (1.00 cumulative) changes nothing
    send_stripe(stripe_event("charge.refunded", charge(pi, 100)))
    assert balance(db, buyer) == Decimal("40")
    assert ledger_is_consistent(db, buyer)


def test_refund_of_credits_already_spent_never_drives_the_balance_negative(db, payments_env, catalogue, buyer):
    from tollgate import ledger

    pi = bought(db, catalogue, buyer)
    # Given the buyer spent 90 of the pack's 100 credits
    with db() as uow:
        ledger.adjust(uow.session, buyer, amount=Decimal("-90"), reason="spent in the test", actor_id=None)
        uow.commit()
    assert balance(db, buyer) == Decimal("10")
    # When the whole pack is refunded
    send_stripe(stripe_event("charge.refunded", charge(pi, 500)))
    # Then only what remains of the pack is clawed back; the shortfall is recorded
    assert balance(db, buyer) == Decimal("0")
    with db() as uow:
        refund = uow.session.execute(text("SELECT * FROM refunds")).mappings().one()
    assert refund["credits_requested"] == Decimal("100")
    assert refund["credits_clawed_back"] == Decimal("10")
    assert refund["credits_shortfall"] == Decimal("90")
    assert ledger_is_consistent(db, buyer)


def test_an_inquiry_moves_nothing_and_a_lost_chargeback_claws_back_once(db, payments_env, catalogue, buyer):
    pi = bought(db, catalogue, buyer)
    fixture = json.loads((PROVIDER_FIXTURES / "stripe" / "charge.dispute.created.json").read_text())
    dispute = fixture["data"]["object"]
    dispute.update(id="dp_1", charge="ch_pack_1", payment_intent=pi, amount=500, status="warning_needs_response")
    # When an inquiry opens
    send_stripe(stripe_event("charge.dispute.created", dispute))
    assert balance(db, buyer) == Decimal("100")
    # When it becomes a chargeback and the funds are withdrawn (twice delivered), then closed as lost
    lost = {**dispute, "status": "needs_response"}
    send_stripe(stripe_event("charge.dispute.funds_withdrawn", lost))
    send_stripe(stripe_event("charge.dispute.funds_withdrawn", lost))
    send_stripe(stripe_event("charge.dispute.closed", {**lost, "status": "lost"}))
    # Then the pack's credits were clawed back once
    assert balance(db, buyer) == Decimal("0")
    assert count(db, "refunds", "kind = 'chargeback'") == 1


def test_a_refund_plus_a_dispute_never_claw_back_more_than_was_granted(db, payments_env, catalogue, buyer):
    pi = bought(db, catalogue, buyer)
    # Given 2.00 refunded
    send_stripe(stripe_event("charge.refunded", charge(pi, 200)))
    assert balance(db, buyer) == Decimal("60")
    # When a dispute over the whole 5.00 is lost as well
    send_stripe(
        stripe_event(
            "charge.dispute.funds_withdrawn",
            {
                "id": "dp_2",
                "object": "dispute",
                "charge": "ch_pack_1",
                "payment_intent": pi,
                "amount": 500,
                "currency": "usd",
                "status": "needs_response",
            },
        )
    )
    # Then in total exactly the 100 granted credits were asked back
    with db() as uow:
        asked = uow.session.execute(text("SELECT sum(credits_requested) FROM refunds")).scalar()
    assert asked == Decimal("100")
    assert balance(db, buyer) == 0


# --- subscriptions and invoices ---------------------------------------------------------------------------------
def test_a_subscription_lifecycle_moves_the_tier_and_each_paid_invoice_grants_the_allowance(
    db, payments_env, catalogue, buyer
):
    customer = "cus_sub_1"
    # Given a subscription checkout completed
    session = stripe_checkout_session(
        user_id=str(buyer),
        item_id=str(catalogue.pro_id),
        amount_minor=1900,
        currency="usd",
        kind="plan",
        customer=customer,
        subscription="sub_1",
    )
    assert (
        send_stripe(stripe_event("checkout.session.completed", session, created=now() - 10)).json["status"]
        == "processed"
    )
    # When the subscription is created active and its first invoice is paid (delivered twice)
    send_stripe(
        stripe_event("customer.subscription.created", subscription_obj("sub_1", customer, buyer), created=now() - 9)
    )
    inv = stripe_event("invoice.paid", invoice_obj("in_1", "sub_1", customer))
    send_stripe(inv)
    send_stripe(inv)
    # Then the user is PRO with one month of allowance
    with db() as uow:
        user = uow.session.execute(text("SELECT tier, downgrade_count FROM users WHERE id = :u"), {"u": buyer}).one()
    assert user.tier == "PRO"
    assert balance(db, buyer) == Decimal("1000")
    # And the next period's invoice grants again
    send_stripe(stripe_event("invoice.paid", invoice_obj("in_2", "sub_1", customer)))
    assert len(grants(db, buyer, "allowance")) == 2
    # When it is cancelled at period end, then deleted
    send_stripe(
        stripe_event(
            "customer.subscription.updated",
            subscription_obj("sub_1", customer, buyer, cancel_at_period_end=True),
            created=now() - 5,
        )
    )
    sub = api_call("GET", "/billing/subscription", as_user=buyer).json
    assert sub["cancel_at_period_end"] is True and sub["plan"] == "PRO"
    send_stripe(
        stripe_event(
            "customer.subscription.deleted",
            subscription_obj("sub_1", customer, buyer, status="canceled"),
            created=now() - 1,
        )
    )
    # Then the user is back on FREE, counted as one downgrade
    with db() as uow:
        user = uow.session.execute(text("SELECT tier, downgrade_count FROM users WHERE id = :u"), {"u": buyer}).one()
    assert (user.tier, user.downgrade_count) == ("FREE", 1)
    assert ledger_is_consistent(db, buyer)


def test_an_invoice_that_arrives_before_its_subscription_still_grants(db, payments_env, catalogue, buyer):
    # Given nothing is known of sub_9 yet, when its paid invoice arrives carrying the subscription's metadata
    response = send_stripe(stripe_event("invoice.paid", invoice_obj("in_9", "sub_9", "cus_9", user_id=buyer)))
    # Then the allowance is granted to the buyer the metadata names
    assert response.json["status"] == "processed"
    assert balance(db, buyer) == Decimal("1000")
    # And the subscription arriving later links up and sets the tier
    send_stripe(stripe_event("customer.subscription.created", subscription_obj("sub_9", "cus_9", buyer)))
    with db() as uow:
        assert uow.session.execute(text("SELECT tier FROM users WHERE id = :u"), {"u": buyer}).scalar() == "PRO"


def test_an_invoice_whose_buyer_is_unknown_is_retried_later(db, payments_env, catalogue, buyer):
    # An invoice naming no user and an unknown customer: 5xx, stored as failed, applied by a later replay
    event = stripe_event("invoice.paid", invoice_obj("in_7", "sub_7", "cus_7"))
    assert send_stripe(event).status == 500
    with db() as uow:
        uow.session.execute(text("UPDATE users SET stripe_customer_id = 'cus_7' WHERE id = :u"), {"u": buyer})
        uow.commit()
    from tollgate.services.authz import Actor
    from tollgate.services.webhooks import replay_event

    assert replay_event(event["id"], Actor.operator()).status == "processed"
    assert balance(db, buyer) == Decimal("1000")


def test_out_of_order_updates_never_move_a_subscription_backwards(db, payments_env, catalogue, buyer):
    customer = "cus_ooo"
    t = now()
    # Given an update to BUSINESS at t, applied first
    send_stripe(
        stripe_event(
            "customer.subscription.updated",
            subscription_obj("sub_o", customer, buyer, price="price_biz_month"),
            created=t,
        )
    )
    # When the older create (PRO, at t - 100) arrives late
    late = send_stripe(
        stripe_event("customer.subscription.created", subscription_obj("sub_o", customer, buyer), created=t - 100)
    )
    # Then the row stays on BUSINESS and the late event is recorded as not applied
    assert late.json["status"] == "processed"
    with db() as uow:
        row = uow.session.execute(text("SELECT provider_price_id, tier FROM subscriptions")).one()
        applied = (
            uow.session.execute(text("SELECT applied FROM subscription_events ORDER BY created_at")).scalars().all()
        )
    assert (row.provider_price_id, row.tier) == ("price_biz_month", "BUSINESS")
    assert applied == [True, False]


def test_a_delete_before_a_late_create_stays_deleted(db, payments_env, catalogue, buyer):
    t = now()
    send_stripe(
        stripe_event(
            "customer.subscription.deleted", subscription_obj("sub_d", "cus_d", buyer, status="canceled"), created=t
        )
    )
    send_stripe(
        stripe_event("customer.subscription.created", subscription_obj("sub_d", "cus_d", buyer), created=t - 50)
    )
    # Even an update stamped the same second as the delete cannot revive it
    send_stripe(stripe_event("customer.subscription.updated", subscription_obj("sub_d", "cus_d", buyer), created=t))
    with db() as uow:
        assert uow.session.execute(text("SELECT status FROM subscriptions")).scalar() == "canceled"
        assert uow.session.execute(text("SELECT tier FROM users WHERE id = :u"), {"u": buyer}).scalar() == "FREE"


def test_a_trial_marks_the_trial_used_and_a_plan_change_keeps_the_previous_price(db, payments_env, catalogue, buyer):
    t = now()
    send_stripe(
        stripe_event(
            "customer.subscription.created",
            subscription_obj("sub_t", "cus_t", buyer, status="trialing", trial_end=t + 7 * 86400),
            created=t - 10,
        )
    )
    with db() as uow:
        u = uow.session.execute(
            text("SELECT tier, trial_used, trial_ends_at FROM users WHERE id = :u"), {"u": buyer}
        ).one()
    assert u.tier == "PRO" and u.trial_used is True and u.trial_ends_at is not None
    # When the plan moves to BUSINESS and then back down to PRO
    send_stripe(
        stripe_event(
            "customer.subscription.updated",
            subscription_obj("sub_t", "cus_t", buyer, price="price_biz_month"),
            created=t - 5,
        )
    )
    send_stripe(stripe_event("customer.subscription.updated", subscription_obj("sub_t", "cus_t", buyer), created=t))
    with db() as uow:
        sub = uow.session.execute(text("SELECT previous_price_id, plan_history FROM subscriptions")).one()
        u = uow.session.execute(text("SELECT tier, downgrade_count FROM users WHERE id = :u"), {"u": buyer}).one()
    assert sub.previous_price_id == "price_biz_month"
    assert [h["price_id"] for h in sub.plan_history] == ["price_pro_month", "price_biz_month", "price_pro_month"]
    assert (u.tier, u.downgrade_count) == ("PRO", 1)


def test_a_failed_invoice_payment_marks_past_due_and_mails_the_user(db, payments_env, catalogue, buyer):
    send_stripe(
        stripe_event("customer.subscription.created", subscription_obj("sub_f", "cus_f", buyer), created=now() - 10)
    )
    fixture = json.loads((PROVIDER_FIXTURES / "stripe" / "invoice.payment_failed.json").read_text())
    obj = fixture["data"]["object"]
    obj.update(id="in_f", subscription="sub_f", customer="cus_f")
    response = send_stripe(stripe_event("invoice.payment_failed", obj))
    assert response.json["status"] == "processed"
    with db() as uow:
        assert uow.session.execute(text("SELECT status FROM subscriptions")).scalar() == "past_due"
        assert uow.session.execute(text("SELECT status FROM invoices")).scalar() == "payment_failed"
        mails = uow.session.execute(
            text("SELECT count(*) FROM email_logs WHERE type = 'payment_failed' AND user_id = :u"), {"u": buyer}
        ).scalar()
    assert mails == 1


# --- customers, payment methods, catalogue ----------------------------------------------------------------------
def test_customer_payment_method_product_and_price_events_are_kept(db, payments_env, catalogue, buyer):
    send_stripe(
        stripe_event("customer.updated", {"id": "cus_x", "object": "customer", "metadata": {"user_id": str(buyer)}})
    )
    send_stripe(
        stripe_event(
            "payment_method.attached",
            {
                "id": "pm_1",
                "object": "payment_method",
                "type": "card",
                "customer": "cus_x",
                "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030},
            },
        )
    )
    t = now()
    send_stripe(
        stripe_event("product.created", {"id": "prod_1", "object": "product", "name": "Pro", "active": True}, created=t)
    )
    send_stripe(
        stripe_event(
            "price.created",
            {
                "id": "price_1",
                "object": "price",
                "product": "prod_1",
                "unit_amount": 1900,
                "currency": "usd",
                "type": "recurring",
                "recurring": {"interval": "month", "interval_count": 1},
                "active": True,
            },
            created=t,
        )
    )
    send_stripe(
        stripe_event(
            "product.updated", {"id": "prod_1", "object": "product", "name": "Old", "active": True}, created=t - 60
        )
    )
    with db() as uow:
        s = uow.session
        assert s.execute(text("SELECT stripe_customer_id FROM users WHERE id = :u"), {"u": buyer}).scalar() == "cus_x"
        pm = s.execute(text("SELECT user_id, brand, last4 FROM payment_methods")).one()
        assert (pm.user_id, pm.brand, pm.last4) == (buyer, "visa", "4242")
        assert s.execute(text("SELECT name FROM products")).scalar() == "Pro"  # the older update did not apply
        price = s.execute(text("SELECT unit_amount, interval, product_id IS NOT NULL AS linked FROM prices")).one()
        assert (price.unit_amount, price.interval, price.linked) == (Decimal("19.000"), "month", True)


def test_unknown_event_types_are_stored_as_ignored(db, payments_env):
    response = send_stripe(json.loads((PROVIDER_FIXTURES / "stripe" / "payment_intent.succeeded.json").read_text()))
    assert response.status == 200 and response.json["status"] == "ignored"


def test_completed_and_async_succeeded_racing_grant_once(db, payments_env, catalogue, buyer):
    # Given the two events of one paid checkout, delivered at the same moment
    session = stripe_checkout_session(
        user_id=str(buyer), item_id=str(catalogue.pack_id), amount_minor=500, currency="usd"
    )
    events = [stripe_event("checkout.session.completed", session)]
    events.append(stripe_event("checkout.session.async_payment_succeeded", session))
    barrier = threading.Barrier(2)
    answers: list = []

    def deliver(event: dict) -> None:
        barrier.wait()
        answers.append(send_stripe(event))

    threads = [threading.Thread(target=deliver, args=(e,)) for e in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then both are applied (the buyer's row serialises them) and the pack is granted once
    assert [a.status for a in answers] == [200, 200]
    assert balance(db, buyer) == Decimal("100")
    assert len(grants(db, buyer, "purchase")) == 1


def test_the_published_subscription_and_invoice_fixtures_are_parsed(db, payments_env, catalogue, buyer):
    # Given the published fixtures, with our customer linked to the buyer
    with db() as uow:
        uow.session.execute(
            text("UPDATE users SET stripe_customer_id = 'cus_00000000000000' WHERE id = :u"), {"u": buyer}
        )
        uow.commit()
    for name in ("customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted"):
        event = json.loads((PROVIDER_FIXTURES / "stripe" / f"{name}.json").read_text())
        event["id"] = f"evt_fixture_{name}"
        assert send_stripe(event).json["status"] == "processed", name
    # Then (the published deleted event is stamped BEFORE the created one) the newest state wins
    with db() as uow:
        sub = uow.session.execute(text("SELECT status, user_id, current_period_end FROM subscriptions")).one()
        applied = uow.session.execute(text("SELECT type, applied FROM subscription_events ORDER BY created_at")).all()
    assert (sub.status, sub.user_id) == ("active", buyer)
    assert sub.current_period_end is not None
    assert [tuple(row) for row in applied] == [
        ("customer.subscription.created", True),
        ("customer.subscription.updated", False),
        ("customer.subscription.deleted", False),
    ]
    # A one-off invoice (no subscription) is recorded without an allowance
    paid = json.loads((PROVIDER_FIXTURES / "stripe" / "invoice.paid.json").read_text())
    assert send_stripe(paid).json["status"] == "processed"
    with db() as uow:
        assert uow.session.execute(text("SELECT status, credits_granted FROM invoices")).one() == ("paid", 0)


def test_a_subscription_reopens_an_account_locked_by_an_ended_trial(db, payments_env, catalogue, buyer):
    # Given the TrialExpiry job locked the buyer's account when their trial ended unpaid
    with db() as uow:
        uow.session.execute(text("UPDATE users SET status = 'LOCKED', trial_used = true WHERE id = :u"), {"u": buyer})
        uow.commit()
    # When they subscribe
    send_stripe(
        stripe_event("customer.subscription.created", subscription_obj("sub_back", "cus_back", buyer), created=now())
    )
    # Then the account is open again, on the paid tier
    with db() as uow:
        user = uow.session.execute(text("SELECT status, tier FROM users WHERE id = :u"), {"u": buyer}).one()
    assert (user.status, user.tier) == ("ACTIVE", "PRO")

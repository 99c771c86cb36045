"""Stripe does not order its deliveries: a refund or a lost dispute that arrives before the payment it reverses
is kept (stored `ignored`, nothing to reverse yet) and applied in the same transaction as the late grant."""

# ruff: noqa: F403, F405
from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.integration.test_payments_stripe import charge, invoice_obj, pack_checkout, subscription_obj
from tests.payments_support import *
from tollgate_local.webhooks_cli import stripe_checkout_session, stripe_event


def purchase_row(db: Any) -> Any:
    with db() as uow:
        return uow.session.execute(text("SELECT * FROM purchases")).mappings().one()


def stored(db: Any, event: dict[str, Any]) -> Any:
    with db() as uow:
        return (
            uow.session.execute(text("SELECT * FROM webhook_events WHERE event_id = :e"), {"e": event["id"]})
            .mappings()
            .one()
        )


def lost_dispute(payment_intent: str, *, dispute_id: str = "dp_early", amount: int = 500) -> dict[str, Any]:
    return {
        "id": dispute_id,
        "object": "dispute",
        "charge": "ch_pack_1",
        "payment_intent": payment_intent,
        "amount": amount,
        "currency": "usd",
        "status": "needs_response",
        "reason": "fraudulent",
    }


def test_a_stripe_refund_delivered_before_its_purchase_is_still_clawed_back(db, payments_env, catalogue, buyer):
    # Given a paid pack checkout whose full refund Stripe delivers first
    purchase = pack_checkout(catalogue, buyer)
    payment_intent = str(purchase["data"]["object"]["payment_intent"])
    refunded = charge(payment_intent, 500)
    # When the refund arrives, then the purchase (and the refund again if Stripe was asked to retry it)
    first = send_stripe(stripe_event("charge.refunded", refunded))
    send_stripe(purchase)
    if first.status >= 500:
        send_stripe(stripe_event("charge.refunded", refunded))
    # Then the pack's credits are gone again and the ledger adds up
    assert balance(db, buyer) == Decimal("0")
    assert ledger_is_consistent(db, buyer)


def test_an_early_refund_is_applied_once_with_the_grant_and_its_redelivery_is_a_duplicate(
    db, payments_env, catalogue, buyer
):
    # Given a full refund stored before anything matched it
    purchase = pack_checkout(catalogue, buyer)
    refund = stripe_event("charge.refunded", charge(str(purchase["data"]["object"]["payment_intent"]), 500))
    early = send_stripe(refund)
    assert early.status == 200 and early.json["status"] == "ignored"
    # When the purchase arrives
    granted = send_stripe(purchase)
    # Then the grant and the claw-back happened in its transaction, and the stored refund is marked applied
    assert granted.status == 200 and granted.json["status"] == "processed"
    assert balance(db, buyer) == Decimal("0")
    assert purchase_row(db)["status"] == "refunded"
    row = stored(db, refund)
    assert row["status"] == "processed"
    assert row["outcome"]["applied_with"] == purchase["id"]
    assert count(db, "refunds", "kind = 'refund' AND credits_clawed_back = 100") == 1
    # And a redelivery of the refund is a duplicate that moves nothing
    again = send_stripe(refund)
    assert again.status == 200 and again.json["duplicate"] is True
    assert count(db, "refunds") == 1
    assert balance(db, buyer) == Decimal("0")
    assert ledger_is_consistent(db, buyer)


def test_an_early_partial_refund_claws_back_only_its_share(db, payments_env, catalogue, buyer):
    # Given 1.00 of the 5.00 pack refunded before the purchase is delivered
    purchase = pack_checkout(catalogue, buyer)
    send_stripe(stripe_event("charge.refunded", charge(str(purchase["data"]["object"]["payment_intent"]), 100)))
    # When the purchase arrives
    send_stripe(purchase)
    # Then a fifth of the pack is clawed back and the purchase is partially refunded
    assert balance(db, buyer) == Decimal("80")
    row = purchase_row(db)
    assert row["status"] == "partially_refunded" and row["refunded_amount"] == Decimal("1.000")
    assert row["credits_clawed_back"] == Decimal("20")
    assert ledger_is_consistent(db, buyer)


def test_an_early_refund_then_a_second_refund_step_claw_back_each_share_once(db, payments_env, catalogue, buyer):
    # Given 1.00 refunded before the purchase, the purchase, then a second step to 3.00 cumulative
    purchase = pack_checkout(catalogue, buyer)
    pi = str(purchase["data"]["object"]["payment_intent"])
    send_stripe(stripe_event("charge.refunded", charge(pi, 100)))
    send_stripe(purchase)
    assert balance(db, buyer) == Decimal("80")
    # When the second step arrives (and the first step again, under a new event id)
    send_stripe(stripe_event("charge.refunded", charge(pi, 300)))
    send_stripe(stripe_event("charge.refunded", charge(pi, 100)))
    # Then 20 + 40 credits were clawed back in two refund rows
    assert balance(db, buyer) == Decimal("40")
    assert count(db, "refunds") == 2
    assert purchase_row(db)["refunded_amount"] == Decimal("3.000")
    assert ledger_is_consistent(db, buyer)


def test_two_refund_steps_both_before_the_purchase_apply_in_order(db, payments_env, catalogue, buyer):
    # Given refunds to 1.00 and then 3.00 cumulative, both delivered before the purchase
    purchase = pack_checkout(catalogue, buyer)
    pi = str(purchase["data"]["object"]["payment_intent"])
    t = now()
    send_stripe(stripe_event("charge.refunded", charge(pi, 100), created=t - 20))
    send_stripe(stripe_event("charge.refunded", charge(pi, 300), created=t - 10))
    # When the purchase arrives
    send_stripe(purchase)
    # Then both steps were applied, oldest first: 20 + 40 credits
    assert balance(db, buyer) == Decimal("40")
    with db() as uow:
        asked = uow.session.execute(text("SELECT credits_requested FROM refunds ORDER BY created_at")).scalars().all()
    assert sorted(asked) == [Decimal("20"), Decimal("40")]
    assert count(db, "webhook_events", "status = 'ignored'") == 0
    assert ledger_is_consistent(db, buyer)


def test_a_dispute_lost_before_the_purchase_claws_back_once(db, payments_env, catalogue, buyer):
    # Given the funds of a whole-pack dispute withdrawn before the purchase is delivered
    purchase = pack_checkout(catalogue, buyer)
    pi = str(purchase["data"]["object"]["payment_intent"])
    withdrawn = stripe_event("charge.dispute.funds_withdrawn", lost_dispute(pi))
    assert send_stripe(withdrawn).json["status"] == "ignored"
    # When the purchase arrives
    send_stripe(purchase)
    # Then the dispute's claw-back happened with the grant
    assert balance(db, buyer) == Decimal("0")
    # And when the dispute is closed as lost and its first event redelivered
    send_stripe(stripe_event("charge.dispute.closed", {**lost_dispute(pi), "status": "lost"}))
    assert send_stripe(withdrawn).json["duplicate"] is True
    # Then the pack was clawed back exactly once, as a chargeback
    assert balance(db, buyer) == Decimal("0")
    assert count(db, "refunds", "kind = 'chargeback'") == 1
    assert purchase_row(db)["disputed_amount"] == Decimal("5.000")
    assert ledger_is_consistent(db, buyer)


def test_an_early_refund_waits_for_an_async_payment_that_is_still_pending(db, payments_env, catalogue, buyer):
    # Given a checkout completed while the payment was processing: a purchase row, nothing granted yet
    session = stripe_checkout_session(
        user_id=str(buyer), item_id=str(catalogue.pack_id), amount_minor=500, currency="usd", payment_status="unpaid"
    )
    send_stripe(stripe_event("checkout.session.completed", session))
    # When the refund arrives before the payment's success
    early = send_stripe(stripe_event("charge.refunded", charge(str(session["payment_intent"]), 500)))
    # Then it waits (nothing to claw back from yet), and the success that grants the pack applies it
    assert early.json["status"] == "ignored"
    assert count(db, "refunds") == 0
    send_stripe(stripe_event("checkout.session.async_payment_succeeded", {**session, "payment_status": "paid"}))
    assert balance(db, buyer) == Decimal("0")
    assert purchase_row(db)["status"] == "refunded"
    assert ledger_is_consistent(db, buyer)


def test_an_early_refund_of_an_invoice_claws_back_its_allowance(db, payments_env, catalogue, buyer):
    # Given a subscription, and the refund of its invoice's charge delivered before the invoice
    send_stripe(
        stripe_event("customer.subscription.created", subscription_obj("sub_r", "cus_r", buyer), created=now() - 10)
    )
    invoice = stripe_event("invoice.paid", invoice_obj("in_r", "sub_r", "cus_r", charge="ch_inv_r"))
    refunded = {**charge("", 1900, charge_id="ch_inv_r", amount=1900), "payment_intent": None, "invoice": "in_r"}
    assert send_stripe(stripe_event("charge.refunded", refunded)).json["status"] == "ignored"
    # When the paid invoice arrives
    send_stripe(invoice)
    # Then its allowance is granted and clawed back in the same transaction
    assert len(grants(db, buyer, "allowance")) == 1
    assert balance(db, buyer) == Decimal("0")
    with db() as uow:
        row = uow.session.execute(text("SELECT status, refunded_amount FROM invoices")).one()
    assert (row.status, row.refunded_amount) == ("refunded", Decimal("19.000"))
    assert ledger_is_consistent(db, buyer)


def test_a_refund_ignored_for_another_mode_is_never_applied(db, payments_env, catalogue, buyer):
    # Given a live-mode refund of the payment, ignored by this test-mode deployment
    purchase = pack_checkout(catalogue, buyer)
    pi = str(purchase["data"]["object"]["payment_intent"])
    live = stripe_event("charge.refunded", charge(pi, 500), livemode=True)
    assert send_stripe(live).json["status"] == "ignored"
    # When the test-mode purchase arrives
    send_stripe(purchase)
    # Then the live refund stays ignored and the pack stays granted
    assert balance(db, buyer) == Decimal("100")
    assert stored(db, live)["status"] == "ignored"


def test_a_failing_late_claw_back_rolls_the_purchase_back_and_the_retry_applies_both(
    db, payments_env, catalogue, buyer, monkeypatch
):
    from tollgate import ledger

    # Given an early refund, and a claw-back that fails once
    purchase = pack_checkout(catalogue, buyer)
    refund = stripe_event("charge.refunded", charge(str(purchase["data"]["object"]["payment_intent"]), 500))
    send_stripe(refund)
    real = ledger.clawback
    calls = {"n": 0}

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected: claw-back failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger, "clawback", failing_once)
    # When the purchase arrives, then Stripe retries it
    failed = send_stripe(purchase)
    # Then the first attempt answered 5xx and kept nothing: no grant, the refund still waiting
    assert failed.status == 500
    assert balance(db, buyer) == Decimal("0") and count(db, "purchases") == 0
    assert stored(db, refund)["status"] == "ignored"
    # And the retry grants and claws back once
    assert send_stripe(purchase).json["status"] == "processed"
    assert balance(db, buyer) == Decimal("0")
    assert len(grants(db, buyer, "purchase")) == 1 and count(db, "refunds") == 1
    assert stored(db, refund)["status"] == "processed"
    assert ledger_is_consistent(db, buyer)


def _pause_the_refund_at_its_holder_look_up(monkeypatch: Any, call: int) -> tuple[threading.Event, threading.Event]:
    """Stop the thread named `refund` right after its `call`-th look-up of the refunded purchase (1: before it
    takes the reversal lock, 2: holding it). Returns (paused, resume)."""
    from tollgate.services.payment_events import stripe_events

    paused, resume = threading.Event(), threading.Event()
    real = stripe_events._charge_holder
    calls = {"n": 0}

    def look_up(*args: Any) -> Any:
        holder = real(*args)
        if threading.current_thread().name == "refund":
            calls["n"] += 1
            if calls["n"] == call:
                paused.set()
                assert resume.wait(30)
        return holder

    monkeypatch.setattr(stripe_events, "_charge_holder", look_up)
    return paused, resume


def _refund_in_a_thread(refund: dict[str, Any], answers: dict[str, Any]) -> threading.Thread:
    thread = threading.Thread(target=lambda: answers.update(refund=send_stripe(refund)), name="refund")
    thread.start()
    return thread


@pytest.mark.direct_database(
    reason="two webhook deliveries in flight at once in one process: the template gives each container a pool of "
    "one connection, so in that tier the second would wait for the first (two containers in AWS)"
)
def test_a_purchase_committed_while_its_refund_looked_for_it_is_found(db, payments_env, catalogue, buyer, monkeypatch):
    # Given a refund that found no purchase, and stopped there
    purchase = pack_checkout(catalogue, buyer)
    refund = stripe_event("charge.refunded", charge(str(purchase["data"]["object"]["payment_intent"]), 500))
    paused, resume = _pause_the_refund_at_its_holder_look_up(monkeypatch, call=1)
    answers: dict[str, Any] = {}
    thread = _refund_in_a_thread(refund, answers)
    assert paused.wait(30)
    # When the purchase is applied and committed in the meantime (it finds no stored refund yet)
    assert send_stripe(purchase).json["status"] == "processed"
    resume.set()
    thread.join(30)
    # Then the refund, looking again under the reversal lock, finds the purchase and claws it back
    assert answers["refund"].json["status"] == "processed"
    assert balance(db, buyer) == Decimal("0")
    assert ledger_is_consistent(db, buyer)


@pytest.mark.direct_database(
    reason="two webhook deliveries in flight at once in one process: the template gives each container a pool of "
    "one connection, so in that tier the second would wait for the first (two containers in AWS)"
)
def test_a_purchase_waits_for_a_refund_about_to_be_stored_unmatched(db, payments_env, catalogue, buyer, monkeypatch):
    # Given a refund that found no purchase and holds the reversal lock, not yet committed
    purchase = pack_checkout(catalogue, buyer)
    refund = stripe_event("charge.refunded", charge(str(purchase["data"]["object"]["payment_intent"]), 500))
    paused, resume = _pause_the_refund_at_its_holder_look_up(monkeypatch, call=2)
    answers: dict[str, Any] = {}
    thread = _refund_in_a_thread(refund, answers)
    assert paused.wait(30)
    # When the purchase arrives meanwhile, and the refund is stored a moment later
    buying = threading.Thread(target=lambda: answers.update(purchase=send_stripe(purchase)))
    buying.start()
    buying.join(0.5)  # without the lock it would commit here, blind to the refund
    resume.set()
    thread.join(30)
    buying.join(30)
    # Then the purchase waited for the stored refund and applied it with the grant
    assert answers["refund"].json["status"] == "ignored"
    assert answers["purchase"].json["status"] == "processed"
    assert stored(db, purchase)["outcome"]["late_reversals"] == [refund["id"]]
    assert balance(db, buyer) == Decimal("0")
    assert ledger_is_consistent(db, buyer)

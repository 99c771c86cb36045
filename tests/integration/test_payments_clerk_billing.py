"""Clerk Billing on /webhooks/clerk: subscription items move subscription rows (provider clerk), paid payment
attempts grant the plan's allowance once per paid period, failed ones mark past due; duplicates, out-of-order
deliveries and failures keep the webhook contract. Payloads are shaped as Clerk's backend SDK types them
(tests/fixtures/providers/clerk/billing/SOURCES.md) and signed with Svix's scheme."""

# ruff: noqa: F403, F405
from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text, update

from tests.conftest import PROVIDER_FIXTURES
from tests.payments_support import *
from tests.support import make_user
from tollgate.db import UnitOfWork
from tollgate.models.credits import Plan

CLERK_USER = "user_29w83sxmDNGwOuEthce5gg56FcC"
PRO_PLAN = "cplan_2zRa8p5vMUK1Y0WqnFoXWYqGqLn"
BUSINESS_PLAN = "cplan_business_for_tests"
ITEM = "csubi_2zRa8sJ1xgCqDr8XWr1mYQ0rjsF"
DAY_MS = 86_400_000
MONTH_MS = 31 * DAY_MS


def fixture(name: str) -> dict[str, Any]:
    return json.loads((PROVIDER_FIXTURES / "clerk" / "billing" / f"{name}.json").read_text())


def now_ms() -> int:
    return int(time.time() * 1000)


def item_event(event_type: str, *, at: int, start: int, status: str = "active", **fields: Any) -> dict[str, Any]:
    event = fixture("subscriptionItem.active")
    event["type"], event["timestamp"] = event_type, at
    item = event["data"]
    item.update(status=status, period_start=start, period_end=start + MONTH_MS, updated_at=at, **fields)
    return event


def attempt_event(
    attempt_id: str, *, at: int, start: int, status: str = "paid", charge_type: str = "checkout", **item_fields: Any
) -> dict[str, Any]:
    event = fixture("paymentAttempt.updated")
    event["timestamp"] = at
    data = event["data"]
    data.update(id=attempt_id, payment_id=attempt_id, status=status, charge_type=charge_type, billing_date=start)
    data["paid_at" if status == "paid" else "failed_at"] = at
    if status == "failed":
        data.pop("paid_at", None)
        data["failed_reason"] = {"code": "card_declined", "decline_code": "insufficient_funds"}
    data["subscription_items"][0].update(period_start=start, period_end=start + MONTH_MS, **item_fields)
    return event


@pytest.fixture
def clerk_plans(db: Callable[[], UnitOfWork], catalogue: Catalogue) -> Catalogue:
    with db() as uow:
        uow.session.execute(update(Plan).where(Plan.id == catalogue.pro_id).values(clerk_plan_id=PRO_PLAN))
        uow.session.execute(update(Plan).where(Plan.id == catalogue.business_id).values(clerk_plan_id=BUSINESS_PLAN))
        uow.commit()
    return catalogue


@pytest.fixture
def member(db: Callable[[], UnitOfWork]) -> uuid.UUID:
    with db() as uow:
        user = make_user(uow.session, email="example@example.org", clerk_id=CLERK_USER)
        uow.commit()
        return user.id


def user_row(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> Any:
    with db() as uow:
        return uow.session.execute(text("SELECT * FROM users WHERE id = :u"), {"u": user_id}).mappings().one()


def sub_row(db: Callable[[], UnitOfWork]) -> Any:
    with db() as uow:
        return (
            uow.session.execute(
                text("SELECT * FROM subscriptions WHERE provider = 'clerk' AND provider_subscription_id = :i"),
                {"i": ITEM},
            )
            .mappings()
            .one_or_none()
        )


def test_a_paid_checkout_gives_the_tier_and_grants_the_allowance_once(db, payments_env, clerk_plans, member):
    # Given a Clerk user who subscribes to Pro: the item turns active and the checkout attempt is paid
    start = now_ms() - 1000
    activated = send_clerk(item_event("subscriptionItem.active", at=start + 10, start=start), msg_id="msg_item_1")
    paid = attempt_event("cpay_first", at=start + 20, start=start)
    # When the attempt arrives, then again (a Svix retry), then re-sent by Clerk under a new message id
    first = send_clerk(paid, msg_id="msg_pay_1")
    retry = send_clerk(paid, msg_id="msg_pay_1")
    resent = send_clerk(paid, msg_id="msg_pay_1b")
    # Then the subscription row is Clerk's, the user is PRO and the allowance was granted exactly once
    assert activated.status == 200 and activated.json["status"] == "processed"
    assert first.json["status"] == "processed" and retry.json["duplicate"] is True
    assert resent.json["status"] == "processed" and resent.json["duplicate"] is False
    sub = sub_row(db)
    assert (sub["status"], sub["tier"], sub["interval"], sub["provider_price_id"]) == (
        "active",
        "PRO",
        "month",
        PRO_PLAN,
    )
    assert user_row(db, member)["tier"] == "PRO"
    assert balance(db, member) == Decimal("1000")
    assert count(db, "invoices", "provider = 'clerk' AND provider_invoice_id = 'cpay_first' AND status = 'paid'") == 1
    with db() as uow:
        invoice = uow.session.execute(text("SELECT * FROM invoices WHERE provider = 'clerk'")).mappings().one()
    assert (invoice["amount_paid"], invoice["currency"], invoice["credits_granted"]) == (
        Decimal("19.000"), "usd", Decimal("1000"),
    )  # fmt: skip
    assert invoice["provider_subscription_id"] == ITEM and invoice["subscription_id"] == sub["id"]
    assert ledger_is_consistent(db, member)


def test_the_container_event_applies_its_paid_item_and_skips_the_free_default_plan(
    db, payments_env, clerk_plans, member
):
    # Given `subscription.active` as Clerk sends it: the free default plan's item (ended) and the Pro item
    event = fixture("subscription.active")
    event["timestamp"] = now_ms()
    # When it arrives
    answer = send_clerk(event, msg_id="msg_container")
    # Then only the Pro item became a subscription row, with the container's payer
    assert answer.status == 200 and answer.json["status"] == "processed"
    assert count(db, "subscriptions", "provider = 'clerk'") == 1
    assert sub_row(db)["status"] == "active" and user_row(db, member)["tier"] == "PRO"


def test_a_renewal_grants_the_second_period_once(db, payments_env, clerk_plans, member):
    # Given a first paid month
    start = now_ms() - 2 * MONTH_MS
    send_clerk(item_event("subscriptionItem.active", at=start, start=start), msg_id="msg_a")
    send_clerk(attempt_event("cpay_m1", at=start + 5, start=start), msg_id="msg_p1")
    # When Clerk renews: the item moves to the next period, a recurring attempt is paid, and a second paid
    # attempt for the same period arrives (a retried charge Clerk recorded twice)
    second = start + MONTH_MS
    renewed = send_clerk(item_event("subscriptionItem.updated", at=second + 1, start=second), msg_id="msg_renew")
    pay2 = send_clerk(attempt_event("cpay_m2", at=second + 5, start=second, charge_type="recurring"), msg_id="msg_p2")
    pay2b = send_clerk(
        attempt_event("cpay_m2_again", at=second + 9, start=second, charge_type="recurring"), msg_id="msg_p2b"
    )
    # Then the period moved, the second period granted once, and the first period's allowance (rollover none)
    # expired when the second one was issued
    assert renewed.json["status"] == "processed" and pay2.json["status"] == "processed"
    assert pay2b.json["status"] == "processed"
    assert int(sub_row(db)["current_period_start"].timestamp() * 1000) == second
    allowance = grants(db, member, "allowance")
    assert len(allowance) == 2
    assert sorted(Decimal(g["amount"]) for g in allowance) == [Decimal("1000"), Decimal("1000")]
    assert count(db, "invoices", "provider = 'clerk' AND credits_granted > 0") == 2
    assert balance(db, member) == Decimal("1000")
    assert ledger_is_consistent(db, member)


def test_the_recurring_charge_that_pays_the_item_as_it_was_before_the_renewal_opens_the_next_period(
    db, payments_env, clerk_plans, member
):
    # Given a first paid month
    start = now_ms() - 2 * MONTH_MS
    send_clerk(item_event("subscriptionItem.active", at=start, start=start), msg_id="msg_a")
    send_clerk(attempt_event("cpay_m1", at=start + 5, start=start), msg_id="msg_p1")
    # When the renewal's recurring attempt still carries the item's old period (billed on its end)
    event = attempt_event("cpay_m2", at=start + MONTH_MS + 5, start=start, charge_type="recurring")
    event["data"]["billing_date"] = start + MONTH_MS
    answer = send_clerk(event, msg_id="msg_p2")
    # Then it pays (and grants) the period that starts at the billing date, not the first one again
    assert answer.json["status"] == "processed"
    with db() as uow:
        period = uow.session.execute(
            text("SELECT period_start FROM invoices WHERE provider_invoice_id = 'cpay_m2'")
        ).scalar_one()
    assert int(period.timestamp() * 1000) == start + MONTH_MS
    assert len(grants(db, member, "allowance")) == 2


def test_cancel_keeps_the_plan_to_the_period_end_and_ended_returns_to_free_for_good(
    db, payments_env, clerk_plans, member
):
    # Given an active paid item
    start = now_ms() - DAY_MS
    send_clerk(item_event("subscriptionItem.active", at=start, start=start), msg_id="msg_a")
    send_clerk(attempt_event("cpay_1", at=start + 5, start=start), msg_id="msg_p")
    # When the payer cancels: the item is canceled, and later ended
    canceled = send_clerk(
        item_event(
            "subscriptionItem.canceled", at=start + 100, start=start, status="canceled", canceled_at=start + 100
        ),
        msg_id="msg_cancel",
    )
    tier_while_canceled = user_row(db, member)["tier"]
    ended = send_clerk(
        item_event("subscriptionItem.ended", at=start + 200, start=start, status="ended", ended_at=start + 200),
        msg_id="msg_end",
    )
    # And a newer `active` for the same item arrives afterwards (an ended item never comes back)
    revived = send_clerk(item_event("subscriptionItem.active", at=start + 300, start=start), msg_id="msg_late")
    # Then the plan ran until it ended, the tier is FREE, and the credits already granted stay
    assert canceled.json["status"] == "processed" and tier_while_canceled == "PRO"
    assert ended.json["status"] == "processed"
    assert revived.json["status"] == "processed"
    sub = sub_row(db)
    assert (sub["status"], sub["cancel_at_period_end"]) == ("ended", True)
    assert sub["ended_at"] is not None
    assert user_row(db, member)["tier"] == "FREE"
    assert balance(db, member) == Decimal("1000")
    assert count(db, "subscription_events", "type = 'subscriptionItem.active' AND applied = false") == 1


def test_an_older_item_event_never_moves_the_subscription_backwards(db, payments_env, clerk_plans, member):
    # Given the item's cancellation (newer) delivered before its activation (older)
    start = now_ms() - DAY_MS
    send_clerk(
        item_event("subscriptionItem.canceled", at=start + 100, start=start, status="canceled"), msg_id="msg_new"
    )
    # When the older activation arrives
    late = send_clerk(item_event("subscriptionItem.active", at=start + 10, start=start), msg_id="msg_old")
    # Then it is recorded but not applied: the row stays canceled
    assert late.status == 200 and late.json["status"] == "processed"
    assert sub_row(db)["status"] == "canceled"
    with db() as uow:
        applied = uow.session.execute(text("SELECT type, applied FROM subscription_events ORDER BY created_at")).all()
    assert [(r.type, r.applied) for r in applied] == [
        ("subscriptionItem.canceled", True), ("subscriptionItem.active", False),
    ]  # fmt: skip
    # And a pending attempt that arrives after the paid one does not reopen the invoice
    send_clerk(attempt_event("cpay_x", at=start + 200, start=start), msg_id="msg_paid")
    send_clerk(attempt_event("cpay_x", at=start + 150, start=start, status="pending"), msg_id="msg_pending")
    assert count(db, "invoices", "provider_invoice_id = 'cpay_x' AND status = 'paid'") == 1


def test_a_failed_recurring_charge_marks_past_due_and_mails_the_payer(db, payments_env, clerk_plans, member):
    # Given an active paid item
    start = now_ms() - MONTH_MS - DAY_MS
    send_clerk(item_event("subscriptionItem.active", at=start, start=start), msg_id="msg_a")
    send_clerk(attempt_event("cpay_1", at=start + 5, start=start), msg_id="msg_p")
    # When the renewal's charge fails
    failed = send_clerk(
        attempt_event("cpay_2", at=now_ms(), start=start + MONTH_MS, status="failed", charge_type="recurring"),
        msg_id="msg_fail",
    )
    # Then the item is past due (the plan stays while Clerk retries), nothing more is granted, the payer is mailed
    assert failed.json["status"] == "processed"
    assert sub_row(db)["status"] == "past_due" and user_row(db, member)["tier"] == "PRO"
    assert count(db, "invoices", "provider_invoice_id = 'cpay_2' AND status = 'payment_failed'") == 1
    assert len(grants(db, member, "allowance")) == 1
    assert count(db, "email_logs", "type = 'payment_failed' AND recipient = 'example@example.org'") == 1
    # And Clerk's own `subscriptionItem.pastDue` agrees
    past_due = send_clerk(
        item_event("subscriptionItem.pastDue", at=now_ms() + 5, start=start + MONTH_MS, status="past_due"),
        msg_id="msg_pd",
    )
    assert past_due.json["status"] == "processed" and sub_row(db)["status"] == "past_due"


def test_a_free_trial_gives_the_tier_and_its_period_allowance_once(db, payments_env, clerk_plans, member):
    # Given an item in a free trial
    start = now_ms() - DAY_MS
    trial = item_event("subscriptionItem.active", at=start, start=start, is_free_trial=True)
    # When it arrives, and Clerk's `freeTrialEnding` for the same trial period follows
    first = send_clerk(trial, msg_id="msg_trial")
    ending = item_event("subscriptionItem.freeTrialEnding", at=start + 50, start=start, is_free_trial=True)
    second = send_clerk(ending, msg_id="msg_trial_ending")
    # Then the user is trialing on PRO, the trial is marked used, and the trial period granted once
    assert first.json["status"] == "processed" and second.json["status"] == "processed"
    assert sub_row(db)["status"] == "trialing"
    user = user_row(db, member)
    assert user["tier"] == "PRO" and user["trial_used"] is True and user["trial_ends_at"] is not None
    assert balance(db, member) == Decimal("1000")
    # And the first paid period after the trial grants again
    paid = attempt_event("cpay_after_trial", at=start + MONTH_MS, start=start + MONTH_MS, charge_type="recurring")
    send_clerk(paid, msg_id="msg_after_trial")
    assert len(grants(db, member, "allowance")) == 2


def test_an_event_for_a_user_not_synced_yet_fails_rolled_back_and_applies_on_the_retry(db, payments_env, clerk_plans):
    # Given a paid attempt whose Clerk user Tollgate does not know yet
    start = now_ms()
    paid = attempt_event("cpay_early", at=start, start=start)
    # When it arrives
    early = send_clerk(paid, msg_id="msg_early")
    # Then it answers 5xx, nothing of it is applied, and the stored event is marked failed for the retry
    assert early.status >= 500
    assert count(db, "invoices", "provider = 'clerk'") == 0
    assert count(db, "webhook_events", "event_id = 'msg_early' AND status = 'failed'") == 1
    # When the user arrives and Svix retries the same message
    with db() as uow:
        user = make_user(uow.session, email="late@example.org", clerk_id=CLERK_USER)
        uow.commit()
    retry = send_clerk(paid, msg_id="msg_early")
    # Then it applies once
    assert retry.status == 200 and retry.json["status"] == "processed"
    assert balance(db, user.id) == Decimal("1000")


def test_unknown_plans_are_rejected_default_plans_ignored_and_bad_signatures_store_nothing(
    db, payments_env, clerk_plans, member
):
    start = now_ms()
    # Given an item of a plan Tollgate does not sell, and one of Clerk's free default plan
    foreign = item_event("subscriptionItem.active", at=start, start=start)
    foreign["data"]["plan"]["id"] = foreign["data"]["plan_id"] = "cplan_unknown"
    default = copy.deepcopy(foreign)
    default["data"]["plan"]["is_default"] = True
    # When they arrive, and a body signed with another secret
    rejected = send_clerk(foreign, msg_id="msg_foreign")
    ignored = send_clerk(default, msg_id="msg_default")
    forged = send_clerk(item_event("subscriptionItem.active", at=start, start=start), secret="whsec_" + "b3RoZXI=")
    # Then the first is rejected, the second ignored, the forged one refused and not stored; no row moved
    assert (rejected.status, rejected.json["status"]) == (200, "rejected")
    assert (ignored.status, ignored.json["status"]) == (200, "ignored")
    assert forged.status in {400, 401}
    assert count(db, "webhook_events") == 2
    assert count(db, "subscriptions") == 0 and user_row(db, member)["tier"] == "FREE"


def test_the_cli_builds_clerk_billing_events_the_webhook_applies(db, payments_env, clerk_plans, member):
    from tollgate_local.webhooks_cli import clerk_billing_event

    # Given the events `tollgate webhooks send clerk ...` builds for one user and plan
    def build(event_type: str) -> dict[str, Any]:
        return clerk_billing_event(
            event_type, clerk_user_id=CLERK_USER, email="example@example.org", clerk_plan_id=PRO_PLAN, amount_minor=1900
        )

    active, paid = build("subscriptionItem.active"), build("paymentAttempt.updated")
    # When they are signed and delivered
    answers = [send_clerk(active), send_clerk(paid)]
    # Then the item and its payment match: the user is PRO with the allowance
    assert [a.json["status"] for a in answers] == ["processed", "processed"]
    assert user_row(db, member)["tier"] == "PRO" and balance(db, member) == Decimal("1000")


# --- plan changes: Clerk makes a new subscription item for each -----------------------------------------------------
BUSINESS_ITEM = "csubi_business_for_tests"
PRO_ITEM_AGAIN = "csubi_pro_again_for_tests"


def plan_attempt(
    attempt_id: str, *, item_id: str, plan_id: str, price: int, paid: int, start: int, end: int, **fields: Any
) -> dict[str, Any]:
    """A paid attempt for `item_id` on `plan_id` (price per period `price`, `paid` charged), for [start, end)."""
    event = attempt_event(attempt_id, at=start + 5, start=start, **fields)
    data = event["data"]
    item = data["subscription_items"][0]
    money = {"amount": price, "amount_formatted": f"{price / 100:.2f}", "currency": "USD", "currency_symbol": "$"}
    item.update(id=item_id, plan_id=plan_id, period_end=end, amount=money)
    item["plan"].update(id=plan_id, amount=price)
    charged = {**money, "amount": paid, "amount_formatted": f"{paid / 100:.2f}"}
    data["totals"] = {"subtotal": charged, "tax_total": {**charged, "amount": 0}, "grand_total": charged}
    return event


def outcome(db: Callable[[], UnitOfWork], msg_id: str) -> dict[str, Any]:
    """What the stored event's handler answered (its rule and grant)."""
    with db() as uow:
        row = uow.session.execute(
            text("SELECT outcome FROM webhook_events WHERE provider = 'clerk' AND event_id = :e"), {"e": msg_id}
        ).scalar_one()
    return dict(row.get("detail", row))


def granted(db: Callable[[], UnitOfWork], attempt_id: str) -> Decimal:
    with db() as uow:
        return Decimal(
            uow.session.execute(
                text("SELECT credits_granted FROM invoices WHERE provider = 'clerk' AND provider_invoice_id = :i"),
                {"i": attempt_id},
            ).scalar_one()
        )


@pytest.mark.parametrize(
    ("new_period", "expected"),
    [
        # Clerk keeps the period's end: the difference (5000 - 1000) for the half left = 2000
        ("kept", Decimal("2000")),
        # Clerk starts a whole new month: 2000 for the half left plus 2500 for the half past the old end,
        # capped at one Business period minus the Pro period granted = 4000
        ("restarted", Decimal("4000")),
    ],
)
def test_an_upgrade_mid_period_grants_the_difference_for_the_time_left_then_the_renewal_grants_in_full(
    db, payments_env, clerk_plans, member, new_period, expected
):
    # Given a user on Pro, granted Pro's 1000 for the month
    start = now_ms() - 2 * MONTH_MS
    send_clerk(attempt_event("cpay_pro", at=start + 5, start=start), msg_id="msg_pro")
    # When they upgrade to Business halfway through: a new item and its paid attempt for the prorated price
    half = start + MONTH_MS // 2
    end = start + MONTH_MS if new_period == "kept" else half + MONTH_MS
    upgrade = plan_attempt(
        "cpay_up", item_id=BUSINESS_ITEM, plan_id=BUSINESS_PLAN, price=7900, paid=3000, start=half, end=end
    )
    answer = send_clerk(upgrade, msg_id="msg_up")
    # Then it grants the allowance difference for the time left, never Business's whole allowance on top
    assert answer.status == 200 and answer.json["status"] == "processed", answer.body
    assert outcome(db, "msg_up")["rule"] == "upgrade"
    assert granted(db, "cpay_up") == expected
    assert granted(db, "cpay_pro") + granted(db, "cpay_up") <= Decimal("5000")
    # When the Business item renews (and Clerk reports the renewal twice)
    renewal = [
        plan_attempt(
            f"cpay_biz_{n}",
            item_id=BUSINESS_ITEM,
            plan_id=BUSINESS_PLAN,
            price=7900,
            paid=7900,
            start=end,
            end=end + MONTH_MS,
            charge_type="recurring",
        )
        for n in range(2)
    ]
    renewed = [send_clerk(event, msg_id=f"msg_renew_{n}") for n, event in enumerate(renewal)]
    # Then the next period grants Business's full allowance, once
    assert [r.json["status"] for r in renewed] == ["processed", "processed"]
    assert [outcome(db, f"msg_renew_{n}")["granted"] for n in range(2)] == ["5000.0000", "0"]
    assert sorted(Decimal(g["amount"]) for g in grants(db, member, "allowance")) == sorted(
        [Decimal("1000"), expected, Decimal("5000")]
    )
    assert ledger_is_consistent(db, member)


@pytest.mark.parametrize("new_period", ["kept", "restarted"])
def test_a_downgrade_mid_period_grants_nothing_until_the_next_period(db, payments_env, clerk_plans, member, new_period):
    # Given a user on Business, granted Business's 5000 for the month
    start = now_ms() - 2 * MONTH_MS
    send_clerk(
        plan_attempt(
            "cpay_biz",
            item_id=BUSINESS_ITEM,
            plan_id=BUSINESS_PLAN,
            price=7900,
            paid=7900,
            start=start,
            end=start + MONTH_MS,
        ),
        msg_id="msg_biz",
    )
    # When they move down to Pro halfway through: a new Pro item whose attempt is paid by the credit (0 charged)
    half = start + MONTH_MS // 2
    end = start + MONTH_MS if new_period == "kept" else half + MONTH_MS
    down = plan_attempt("cpay_down", item_id=ITEM, plan_id=PRO_PLAN, price=1900, paid=0, start=half, end=end)
    answer = send_clerk(down, msg_id="msg_down")
    # Then nothing is granted for the rest of the period
    assert answer.status == 200 and answer.json["status"] == "processed", answer.body
    assert (outcome(db, "msg_down")["rule"], granted(db, "cpay_down")) == ("downgrade", Decimal(0))
    # When the Pro item's next period is paid
    renewal = plan_attempt(
        "cpay_pro_next", item_id=ITEM, plan_id=PRO_PLAN, price=1900, paid=1900, start=end, end=end + MONTH_MS,
        charge_type="recurring",
    )  # fmt: skip
    renewed = send_clerk(renewal, msg_id="msg_pro_next")
    # Then Pro's full allowance is granted for it
    assert renewed.json["status"] == "processed" and outcome(db, "msg_pro_next")["granted"] == "1000.0000"
    assert sorted(Decimal(g["amount"]) for g in grants(db, member, "allowance")) == [Decimal("1000"), Decimal("5000")]
    assert ledger_is_consistent(db, member)


def test_a_paid_attempt_for_less_than_the_price_grants_pro_rata(db, payments_env, clerk_plans, member):
    # Given a first Pro checkout Clerk reports paid for half of the item's price, and a later period paid 0
    start = now_ms() - 2 * MONTH_MS
    half_paid = plan_attempt(
        "cpay_half", item_id=ITEM, plan_id=PRO_PLAN, price=1900, paid=950, start=start, end=start + MONTH_MS
    )
    unpaid = plan_attempt(
        "cpay_zero", item_id=ITEM, plan_id=PRO_PLAN, price=1900, paid=0, start=start + MONTH_MS,
        end=start + 2 * MONTH_MS, charge_type="recurring",
    )  # fmt: skip
    # When they arrive
    first, second = send_clerk(half_paid, msg_id="msg_half"), send_clerk(unpaid, msg_id="msg_zero")
    # Then the allowance follows what was paid: half of Pro's, then nothing
    assert first.json["status"] == second.json["status"] == "processed"
    assert (outcome(db, "msg_half")["rule"], granted(db, "cpay_half")) == ("pro_rata", Decimal("500"))
    assert (outcome(db, "msg_zero")["rule"], granted(db, "cpay_zero")) == ("pro_rata", Decimal(0))
    assert balance(db, member) <= Decimal("500")
    assert ledger_is_consistent(db, member)

"""Attacks on Clerk Billing: free trials used to unlock a locked account or to collect a second trial allowance,
reordered item events, two payment attempts for one period delivered at once, and plan changes (each a new
subscription item) used to collect more than one period's allowance of the best plan."""

# ruff: noqa: F403, F405
from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from decimal import Decimal

from sqlalchemy import text

from tests.conftest import PROVIDER_FIXTURES
from tests.integration.test_payments_clerk_billing import (
    BUSINESS_ITEM,
    BUSINESS_PLAN,
    DAY_MS,
    ITEM,
    MONTH_MS,
    PRO_ITEM_AGAIN,
    PRO_PLAN,
    attempt_event,
    clerk_plans,
    granted,
    item_event,
    member,
    now_ms,
    outcome,
    plan_attempt,
    sub_row,
    user_row,
)
from tests.payments_support import *
from tests.support import make_user
from tollgate.db import UnitOfWork

__all__ = ["clerk_plans", "member"]  # fixtures used by name below


def set_user(db: Callable[[], UnitOfWork], user_id: uuid.UUID, **values: object) -> None:
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    with db() as uow:
        uow.session.execute(text(f"UPDATE users SET {assignments} WHERE id = :u"), {"u": user_id, **values})
        uow.commit()


def test_a_new_free_trial_does_not_unlock_an_account_whose_trial_ended_unpaid(db, payments_env, clerk_plans, member):
    # Given an account the TrialExpiry job locked (its trial ended unpaid, the trial marked used)
    set_user(db, member, status="LOCKED", trial_used=True)
    start = now_ms() - 1000
    # When Clerk reports a new subscription item on a free trial for it
    answer = send_clerk(item_event("subscriptionItem.active", at=start + 10, start=start, is_free_trial=True))
    # Then the item is recorded, but the account stays locked and no second trial allowance is granted
    assert answer.status == 200 and answer.json["status"] == "processed", answer.body
    assert sub_row(db)["status"] == "trialing"
    assert user_row(db, member)["status"] == "LOCKED"
    assert balance(db, member) == 0
    # And once the item's first charge is paid, the payment unlocks it and grants the plan's allowance
    paid = send_clerk(attempt_event("cpay_after_trial", at=start + 20, start=start + 31 * DAY_MS))
    assert paid.json["status"] == "processed", paid.body
    assert user_row(db, member)["status"] == "ACTIVE"
    assert balance(db, member) == Decimal("1000")
    assert ledger_is_consistent(db, member)


def test_a_user_who_used_a_trial_gets_no_second_trial_allowance(db, payments_env, clerk_plans, member):
    # Given a user who had a free trial before (another item, long ended)
    set_user(db, member, trial_used=True)
    start = now_ms() - 1000
    # When a new item starts on a free trial, and Clerk updates it within the trial
    first = send_clerk(item_event("subscriptionItem.active", at=start + 10, start=start, is_free_trial=True))
    again = send_clerk(item_event("subscriptionItem.updated", at=start + 20, start=start, is_free_trial=True))
    # Then the tier follows the trial but no trial allowance is granted
    assert first.json["status"] == again.json["status"] == "processed"
    assert user_row(db, member)["tier"] == "PRO"
    assert balance(db, member) == 0


def test_a_first_free_trial_still_grants_its_allowance_once(db, payments_env, clerk_plans, member):
    # Given a user who never had a trial
    start = now_ms() - 1000
    # When an item starts on a free trial and is updated within it
    send_clerk(item_event("subscriptionItem.active", at=start + 10, start=start, is_free_trial=True))
    send_clerk(item_event("subscriptionItem.updated", at=start + 20, start=start, is_free_trial=True))
    # Then the trial's allowance is granted once and the trial is marked used
    assert balance(db, member) == Decimal("1000")
    assert user_row(db, member)["trial_used"] is True


def test_a_cancel_delivered_before_the_activation_it_follows_wins(db, payments_env, clerk_plans, member):
    # Given an item activated at t1 and ended at t2, delivered in the reverse order
    start = now_ms() - 10_000
    ended = item_event("subscriptionItem.ended", at=start + 200, start=start, status="ended")
    active = item_event("subscriptionItem.active", at=start + 100, start=start)
    # When the end arrives first, then the older activation
    assert send_clerk(ended).json["status"] == "processed"
    late = send_clerk(active)
    # Then the item stays ended and the user FREE
    assert late.status == 200
    assert sub_row(db)["status"] == "ended"
    assert user_row(db, member)["tier"] == "FREE"


def test_two_attempts_paying_one_period_delivered_at_once_grant_once(db, payments_env, clerk_plans, member):
    # Given two paid attempts for the same item and period (a retried charge that both went through), and no
    # item event seen yet
    start = now_ms() - 1000
    events = [attempt_event(f"cpay_twin_{n}", at=start + 10 + n, start=start) for n in range(2)]
    answers: list[int] = []

    def deliver(event: dict[str, object]) -> None:
        answers.append(send_clerk(event).status)

    # When both are delivered at the same moment
    threads = [threading.Thread(target=deliver, args=(event,)) for event in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Then each is answered (a retry may be asked for), and once both are applied the period is granted once
    assert len(answers) == 2 and all(status in (200, 500, 503) for status in answers), answers
    for event in events:  # Svix retries whatever was not applied
        assert send_clerk(event).status == 200
    assert balance(db, member) == Decimal("1000")
    assert count(db, "invoices", "provider = 'clerk' AND grant_source_key IS NOT NULL") == 1
    assert ledger_is_consistent(db, member)
    assert sub_row(db) is None or sub_row(db)["provider_subscription_id"] == ITEM


def test_an_unverified_registration_never_receives_the_owners_clerk_id(db, payments_env, clerk_plans):
    # Given someone registered the Clerk user's email first, with their own password, never verifying it
    with db() as uow:
        squatter = make_user(uow.session, email="Example@Example.org", password_hash="$argon2id$squatter").id
        uow.commit()
    created = json.loads((PROVIDER_FIXTURES / "clerk" / "user.created.json").read_text())
    assert created["data"]["email_addresses"][0]["verification"]["status"] == "verified"
    # When the owner signs up through Clerk (email verified there) and pays for Pro
    linked = send_clerk(created, msg_id="msg_owner_created")
    start = now_ms() - 1000
    paid = send_clerk(attempt_event("cpay_owner", at=start + 20, start=start), msg_id="msg_owner_paid")
    # Then the unverified account is not linked to the owner's Clerk id, is not verified by it, and receives
    # nothing the owner paid for
    assert linked.status == 200 and linked.json["status"] == "rejected", linked.body
    row = user_row(db, squatter)
    assert row["clerk_id"] is None and row["email_verified_at"] is None and row["tier"] == "FREE"
    assert balance(db, squatter) == 0
    assert paid.status >= 500  # no Tollgate user has the payer's Clerk id yet: Svix retries


def test_upgrading_downgrading_and_upgrading_again_within_a_period_never_passes_one_business_period(
    db, payments_env, clerk_plans, member
):
    # Given a user on Pro (1000 for the month)
    start = now_ms() - 2 * MONTH_MS
    end = start + MONTH_MS
    send_clerk(attempt_event("cpay_pro", at=start + 5, start=start), msg_id="msg_pro")
    # When, within that month, they move up to Business at a quarter, down to Pro at half, and up to Business
    # again a day later: each a new item whose attempt carries the rest of the period
    steps = [
        ("cpay_up_1", BUSINESS_ITEM, BUSINESS_PLAN, 7900, 4500, start + MONTH_MS // 4),
        ("cpay_down", PRO_ITEM_AGAIN, PRO_PLAN, 1900, 0, start + MONTH_MS // 2),
        ("cpay_up_2", "csubi_business_again", BUSINESS_PLAN, 7900, 2000, start + MONTH_MS // 2 + DAY_MS),
    ]
    for attempt, item, plan, price, paid, at in steps:
        event = plan_attempt(attempt, item_id=item, plan_id=plan, price=price, paid=paid, start=at, end=end)
        assert send_clerk(event, msg_id=f"msg_{attempt}").json["status"] == "processed"
    # Then the first upgrade grants the difference for three quarters (3000), the downgrade nothing, and the second
    # upgrade only what is left of one Business period (1000, though its time left is worth more)
    assert [granted(db, a) for a in ("cpay_pro", "cpay_up_1", "cpay_down", "cpay_up_2")] == [
        Decimal("1000"), Decimal("3000"), Decimal(0), Decimal("1000"),
    ]  # fmt: skip
    assert outcome(db, "msg_cpay_down")["rule"] == "downgrade"
    assert sum(Decimal(g["amount"]) for g in grants(db, member, "allowance")) == Decimal("5000")
    assert ledger_is_consistent(db, member)


def test_an_upgrade_delivered_before_the_plan_it_upgrades_from_never_grants_more_than_one_business_period(
    db, payments_env, clerk_plans, member
):
    # Given a Pro month and a Business upgrade halfway through it, whose attempts Svix delivers in reverse order
    start = now_ms() - 2 * MONTH_MS
    upgrade = plan_attempt(
        "cpay_up", item_id=BUSINESS_ITEM, plan_id=BUSINESS_PLAN, price=7900, paid=3000,
        start=start + MONTH_MS // 2, end=start + MONTH_MS,
    )  # fmt: skip
    pro = attempt_event("cpay_pro", at=start + 5, start=start)
    # When the upgrade arrives first, then the Pro checkout
    answers = [send_clerk(upgrade, msg_id="msg_up"), send_clerk(pro, msg_id="msg_pro")]
    # Then the upgrade, seen alone, grants Business's allowance by the share of its price paid (3000 of 7900), the
    # Pro checkout nothing on top of it: never Business's period plus Pro's
    assert [a.json["status"] for a in answers] == ["processed", "processed"]
    assert granted(db, "cpay_up") == (Decimal(5000) * 3000 / 7900).quantize(Decimal("0.0001"))
    assert granted(db, "cpay_pro") == 0
    assert outcome(db, "msg_pro")["rule"] == "capped"
    assert ledger_is_consistent(db, member)

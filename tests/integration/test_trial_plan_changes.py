"""Seed 001's trial rule: at most two downgrades during a trial (a checkout for a cheaper plan is refused after
them), and `users.last_plan_change_at` recorded on every plan change a provider reports."""

# ruff: noqa: F403, F405
from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.integration.test_payments_stripe import subscription_obj
from tests.payments_support import *
from tests.support import make_user
from tollgate.db import UnitOfWork
from tollgate.models.credits import Plan
from tollgate_local.webhooks_cli import stripe_event

URLS = {"success_url": "https://app.example.com/ok", "cancel_url": "https://app.example.com/cancel"}


@pytest.fixture
def basic_id(db: Callable[[], UnitOfWork], catalogue: Catalogue) -> uuid.UUID:
    """A plan cheaper than the catalogue's PRO (19.00) and BUSINESS (79.00)."""
    with db() as uow:
        basic = Plan(
            tier="BASIC", name="Basic", monthly_credits=Decimal("200"), rollover="none", price_monthly=Decimal("9.00"),
            price_yearly=Decimal("90.00"), currency="usd", stripe_price_id_monthly="price_basic_month", active=True,
            features=[],
        )  # fmt: skip
        uow.session.add(basic)
        uow.commit()
        return basic.id


def checkout(user_id: uuid.UUID, plan_id: uuid.UUID) -> ApiResponse:
    return api_call(
        "POST",
        "/billing/checkout",
        as_user=user_id,
        body={"provider": "stripe", "kind": "plan", "item_id": str(plan_id), **URLS},
    )


def user_row(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> Any:
    with db() as uow:
        return uow.session.execute(
            text("SELECT tier, downgrade_count, last_plan_change_at FROM users WHERE id = :u"), {"u": user_id}
        ).one()


def sessions_created(stripe_api: Any) -> int:
    return len([r for r in stripe_api.requests if r.path == "/v1/checkout/sessions"])


def test_a_third_downgrade_during_a_trial_is_refused_at_checkout(db, stripe_api, catalogue, basic_id, buyer):
    # Given a PRO trial on Stripe that was moved up to BUSINESS and back down to PRO twice
    t = now()
    trial_end = t + 7 * 86400
    moves = [("customer.subscription.created", "price_pro_month", "trialing")]
    moves += [
        ("customer.subscription.updated", price, "trialing") for price in ["price_biz_month", "price_pro_month"] * 2
    ]
    for i, (kind, price, status) in enumerate(moves):
        obj = subscription_obj("sub_tr", "cus_tr", buyer, status=status, price=price, trial_end=trial_end)
        assert send_stripe(stripe_event(kind, obj, created=t - 50 + i)).json["status"] == "processed"
    assert user_row(db, buyer).downgrade_count == 2
    # When the user asks for a checkout for the cheaper BASIC plan
    refused = checkout(buyer, basic_id)
    # Then it is a 409 naming the trial rule, and Stripe is never asked
    assert (refused.status, refused.error_code) == (409, "trial_downgrade_limit")
    assert refused.json["error"]["details"]["downgrade_count"] == 2
    assert sessions_created(stripe_api) == 0
    # And an upgrade is not a downgrade: it gets the usual answer for a subscriber (change plans in the portal)
    upgrade = checkout(buyer, catalogue.business_id)
    assert (upgrade.status, upgrade.error_code) == (409, "already_subscribed")
    # When the trial subscription is canceled mid-trial (the tier falls to FREE: a third downgrade counted)
    canceled = subscription_obj("sub_tr", "cus_tr", buyer, status="canceled", trial_end=trial_end)
    send_stripe(stripe_event("customer.subscription.deleted", canceled, created=t))
    assert tuple(user_row(db, buyer))[:2] == ("FREE", 3)
    # Then a plan cheaper than the trial's is still refused, while the trial's own plan may be bought
    assert checkout(buyer, basic_id).error_code == "trial_downgrade_limit"
    same = checkout(buyer, catalogue.pro_id)
    assert same.status == 200, same.body
    assert sessions_created(stripe_api) == 1


@pytest.mark.parametrize(
    ("downgrades", "trial_left", "expected"),
    [
        (2, timedelta(days=3), 409),  # at the limit, in the trial
        (1, timedelta(days=3), 200),  # one downgrade left
        (2, -timedelta(hours=1), 200),  # the trial is over: the rule no longer applies
    ],
)
def test_the_limit_holds_only_at_two_downgrades_and_only_during_the_trial(
    db, stripe_api, catalogue, basic_id, downgrades, trial_left, expected
):
    # Given a PRO user whose trial ends `trial_left` from now, with `downgrades` downgrades counted
    at = datetime.now(UTC)
    with db() as uow:
        user = make_user(
            uow.session, tier="PRO", downgrade_count=downgrades, trial_used=True,
            trial_started_at=at - timedelta(days=4), trial_ends_at=at + trial_left,
        )  # fmt: skip
        uow.commit()
        user_id = user.id
    # When they ask for a checkout for the cheaper BASIC plan
    response = checkout(user_id, basic_id)
    # Then only the user at the limit inside the trial is refused
    assert response.status == expected, response.body
    assert sessions_created(stripe_api) == (0 if expected == 409 else 1)


def test_a_paying_user_is_past_the_trial_whatever_its_planned_end(db, stripe_api, catalogue, basic_id, buyer):
    # Given a trial converted early to a paid PRO subscription (the user's trial end is still ahead), with two
    # downgrades counted
    t = now()
    trial = subscription_obj("sub_pd", "cus_pd", buyer, status="trialing", trial_end=t + 5 * 86400)
    send_stripe(stripe_event("customer.subscription.created", trial, created=t - 10))
    send_stripe(stripe_event("customer.subscription.updated", subscription_obj("sub_pd", "cus_pd", buyer), created=t))
    with db() as uow:
        uow.session.execute(text("UPDATE users SET downgrade_count = 2 WHERE id = :u"), {"u": buyer})
        uow.commit()
    # When they ask for a checkout for BASIC
    response = checkout(buyer, basic_id)
    # Then the trial rule does not apply: the answer is the subscriber's usual one
    assert (response.status, response.error_code) == (409, "already_subscribed")


def test_every_plan_change_records_last_plan_change_at_and_nothing_else_moves_it(db, payments_env, catalogue, buyer):
    t = now()

    def at(seconds: int) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    # Given a new PRO subscription: its first plan is a change from none
    send_stripe(
        stripe_event("customer.subscription.created", subscription_obj("sub_lp", "cus_lp", buyer), created=t - 30)
    )
    assert user_row(db, buyer).last_plan_change_at == at(t - 30)
    # When it moves to BUSINESS
    biz = subscription_obj("sub_lp", "cus_lp", buyer, price="price_biz_month")
    send_stripe(stripe_event("customer.subscription.updated", biz, created=t - 20))
    # Then the change is recorded at the provider's time
    assert user_row(db, buyer).last_plan_change_at == at(t - 20)
    # When an update keeps the plan (only set to cancel at the period's end)
    ending = subscription_obj("sub_lp", "cus_lp", buyer, price="price_biz_month", cancel_at_period_end=True)
    send_stripe(stripe_event("customer.subscription.updated", ending, created=t - 10))
    # And an older event (PRO, before the move) arrives late
    send_stripe(
        stripe_event("customer.subscription.updated", subscription_obj("sub_lp", "cus_lp", buyer), created=t - 25)
    )
    # Then neither moves the record
    row = user_row(db, buyer)
    assert (row.tier, row.last_plan_change_at) == ("BUSINESS", at(t - 20))

"""AnalyticsRollup: the previous UTC day's metrics, upserted per (day, metric, dimension)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from tests.support import make_user
from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.jobs import run_job
from tollgate.jobs.analytics import AnalyticsRollup
from tollgate.models.credits import AdminSettings
from tollgate.models.payments import Subscription

DAY = date(2026, 10, 14)
START = datetime(2026, 10, 14, tzinfo=UTC)
RUN_AT = datetime(2026, 10, 15, 0, 20, tzinfo=UTC)


def plenty() -> int:
    return 600_000


def metrics(db: Callable[[], UnitOfWork]) -> dict[tuple[str, str], Decimal]:
    with db() as uow:
        rows = uow.session.execute(
            text("SELECT metric, dimension, value FROM analytics WHERE day = :d"), {"d": DAY}
        ).all()
        return {(r.metric, r.dimension): Decimal(r.value) for r in rows}


def add_subscription(db_session, user_id, ref: str, status: str, amount: str, interval: str, created, ended=None):
    db_session.execute(
        text(
            "INSERT INTO subscriptions (id, provider, provider_subscription_id, user_id, status, unit_amount, "
            "currency, interval, quantity, created_at, ended_at, canceled_at) VALUES (gen_random_uuid(), 'stripe', "
            ":ref, :u, :status, :amount, 'usd', :interval, 1, :created, :ended, :ended)"
        ),
        {"ref": ref, "u": user_id, "status": status, "amount": Decimal(amount), "interval": interval,
         "created": created, "ended": ended},
    )  # fmt: skip


def test_rolls_up_the_previous_day_and_a_rerun_writes_the_same(db: Callable[[], UnitOfWork]) -> None:
    # Given, on 14 October: two sign-ups, a pack purchase, a monthly and a yearly subscription, a churned one,
    # and credits granted, used and expired
    with db() as uow:
        s = uow.session
        uow.session.merge(AdminSettings(id=1, feature_costs={"chat": "2"}))
        old = make_user(s, created_at=START - timedelta(days=40))
        a = make_user(s, created_at=START + timedelta(hours=3))
        b = make_user(s, created_at=START + timedelta(hours=5))
        add_subscription(s, a.id, "sub_m", "active", "19.00", "month", START + timedelta(hours=4))
        add_subscription(s, b.id, "sub_y", "active", "120.00", "year", START + timedelta(hours=6))
        add_subscription(s, old.id, "sub_old", "canceled", "19.00", "month", START - timedelta(days=35),
                         START + timedelta(hours=8))  # fmt: skip
        s.execute(
            text(
                "INSERT INTO purchases (id, provider, provider_order_id, user_id, credits, amount, currency, status, "
                "paid_at, created_at) VALUES (gen_random_uuid(), 'stripe', 'cs_1', :u, 100, 5.00, 'usd', "
                "'completed', :paid, :paid)"
            ),
            {"u": old.id, "paid": START + timedelta(hours=9)},
        )
        ledger.grant(s, a.id, kind="promo", amount=Decimal("30"), source_key="g1", now=START + timedelta(hours=3),
                     expires_at=START + timedelta(hours=20))  # fmt: skip
        ledger.charge(s, a.id, operation="chat", quantity=Decimal("5"), now=START + timedelta(hours=10))
        ledger.expire_grant(s, ledger.grant(s, b.id, kind="promo", amount=Decimal("4"), source_key="g2",
                            now=START + timedelta(hours=1), expires_at=START + timedelta(hours=2)).grant_id,
                            now=START + timedelta(hours=3))  # fmt: skip
        ledger.grant(
            s, old.id, kind="promo", amount=Decimal("999"), source_key="yesterday", now=START - timedelta(hours=1)
        )
        uow.commit()
    # When the rollup runs just after midnight, and once more
    run_job(AnalyticsRollup(), now=RUN_AT, remaining_ms=plenty, uow_factory=db, safety_ms=1)
    first = metrics(db)
    with db() as uow:
        uow.session.execute(text("DELETE FROM job_cursors"))
        uow.commit()
    run_job(AnalyticsRollup(), now=RUN_AT + timedelta(hours=1), remaining_ms=plenty, uow_factory=db, safety_ms=1)
    # Then the day's figures are right, and the rerun wrote the same rows (no duplicates)
    assert metrics(db) == first
    assert first[("mrr", "usd")] == Decimal("29")  # 19 monthly + 120 / 12
    assert first[("active_subscriptions", "")] == 2
    assert first[("new_users", "")] == 2
    assert first[("new_customers", "")] == 2  # a and b subscribed; old had paid before
    assert first[("churned_subscriptions", "")] == 1
    assert first[("churn_rate", "")] == 1  # the only subscription paying at the day's start was canceled
    assert first[("revenue", "usd")] == Decimal("5.00")
    assert first[("credits_granted", "")] == Decimal("34")
    assert first[("credits_used", "")] == Decimal("10")
    assert first[("credits_expired", "")] == Decimal("4")


def test_mrr_counts_only_paying_subscriptions_and_churn_rate_is_a_ratio(db: Callable[[], UnitOfWork]) -> None:
    # Given subscriptions of every provider in every state at the end of 14 October (opened a month before unless
    # said), each with the figure it adds to that day's USD MRR
    end = START + timedelta(days=1)
    old = START - timedelta(days=30)
    rows: list[dict[str, Any]] = [
        dict(provider="stripe", status="active", unit_amount="20.00", quantity=2),  # +40
        dict(provider="stripe", status="past_due", unit_amount="10.00"),  # +10: the provider still retries
        dict(provider="stripe", status="trialing", unit_amount="50.00", trial_end=end + timedelta(days=5)),
        dict(provider="stripe", status="active", unit_amount="30.00", cancel_at_period_end=True,
             canceled_at=START - timedelta(days=2)),  # will not recur: churned two days before
        dict(provider="stripe", status="canceled", unit_amount="25.00", canceled_at=START + timedelta(hours=2),
             ended_at=START + timedelta(hours=2)),  # paid churn on the day
        dict(provider="stripe", status="active", unit_amount="60.00", created_at=START - timedelta(days=5),
             trial_end=end + timedelta(hours=2)),  # active now, but its trial ran past that day
        dict(provider="stripe", status="active", unit_amount="12.00", created_at=end + timedelta(hours=1)),
        dict(provider="stripe", status="unpaid", unit_amount="19.00"),  # the provider gave up charging
        dict(provider="stripe", status="canceled", unit_amount="19.00", canceled_at=START + timedelta(hours=3),
             ended_at=START + timedelta(hours=3), trial_end=end + timedelta(days=4)),  # a trial dropped: no revenue
        dict(provider="lemonsqueezy", status="active", unit_amount="240.00", interval="year"),  # +20
        dict(provider="lemonsqueezy", status="on_trial", unit_amount="15.00", trial_end=end + timedelta(days=3)),
        dict(provider="lemonsqueezy", status="cancelled", unit_amount="15.00",
             canceled_at=START + timedelta(hours=5)),  # runs to its period's end, but churned on the day
        dict(provider="lemonsqueezy", status="expired", unit_amount="15.00", canceled_at=START - timedelta(days=9),
             ended_at=START - timedelta(days=3)),
        dict(provider="clerk", status="active", unit_amount="15.00"),  # +15
        dict(provider="clerk", status="trialing", unit_amount="15.00", trial_end=end + timedelta(days=6)),
        dict(provider="manual", status="active", unit_amount="0.00"),  # an admin's plan: no revenue
        dict(provider="asaas", status="active", unit_amount="49.90", currency="brl"),  # +49.90 BRL
        dict(provider="asaas", status="pending", unit_amount="49.90", currency="brl"),  # never paid yet
    ]  # fmt: skip
    with db() as uow:
        for i, row in enumerate(rows):
            fields = {"interval": "month", "currency": "usd", "created_at": old, **row}
            uow.session.add(
                Subscription(
                    provider_subscription_id=f"sub_{i}", user_id=make_user(uow.session).id,
                    **{**fields, "unit_amount": Decimal(fields["unit_amount"])},
                )
            )  # fmt: skip
        uow.commit()
    # When the rollup runs for the day
    run_job(AnalyticsRollup(), now=RUN_AT, remaining_ms=plenty, uow_factory=db, safety_ms=1)
    # Then MRR counts only the paying subscriptions, per currency
    figures = metrics(db)
    assert figures[("mrr", "usd")] == Decimal("85")  # 40 + 10 + 240 / 12 + 15
    assert figures[("mrr", "brl")] == Decimal("49.90")
    # And the churn rate is the share of the 7 paying at the day's start that stopped during it (2: the Stripe
    # cancellation and the Lemon Squeezy one), while the churn count also has the dropped trial
    assert figures[("churn_rate", "")] == Decimal("0.2857")  # 2 / 7
    assert figures[("churned_subscriptions", "")] == 3
    # And the live count still includes trials and the subscription set to cancel
    assert figures[("active_subscriptions", "")] == 11

"""GET /admin/analytics: the AnalyticsRollup's daily series, read through the gateway. The figures come from the
rollup over a fixture of subscriptions (MRR counts only paying subscriptions, churn_rate is a ratio); the route
serves them per dimension and day, bounds the range, and admits admins only."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from tests.support import api_call, make_user
from tollgate.db import UnitOfWork
from tollgate.jobs.analytics import DAY_FIGURES, day_bounds, rollup_day
from tollgate.models.jobs import ANALYTICS_METRICS, AnalyticsMetric
from tollgate.models.payments import Subscription

DAY1 = date(2026, 10, 14)
DAY2 = date(2026, 10, 15)


def _at(day: date, hours: float = 0) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(hours=hours)


def _subscriptions(db: Callable[[], UnitOfWork]) -> None:
    """Subscriptions that make day 1's USD MRR 29 and EUR MRR 10 (`sub_1` churns on day 2: see `_churn`)."""
    before = _at(DAY1) - timedelta(days=30)
    rows: list[dict[str, Any]] = [
        dict(status="active", unit_amount="19.00"),  # +19 USD both days
        dict(status="active", unit_amount="10.00"),  # +10 USD on day 1

        dict(status="active", unit_amount="120.00", interval="year", currency="eur"),  # +10 EUR both days
        dict(status="trialing", unit_amount="50.00", trial_end=_at(DAY2, 48)),  # a trial: no revenue
        dict(status="active", unit_amount="0.00", provider="manual"),  # an admin's free plan: no revenue
        dict(status="unpaid", unit_amount="40.00"),  # the provider gave up charging
    ]  # fmt: skip
    with db() as uow:
        for i, row in enumerate(rows):
            fields = {"provider": "stripe", "interval": "month", "currency": "usd", "created_at": before, **row}
            uow.session.add(
                Subscription(
                    provider_subscription_id=f"sub_{i}", user_id=make_user(uow.session).id,
                    **{**fields, "unit_amount": Decimal(fields["unit_amount"])},
                )
            )  # fmt: skip
        uow.commit()


def _churn(db: Callable[[], UnitOfWork]) -> None:
    """`sub_1` is canceled during day 2 (it was paying at day 2's start: one of the three that were)."""
    with db() as uow:
        sub = uow.session.execute(
            select(Subscription).where(Subscription.provider_subscription_id == "sub_1")
        ).scalar_one()
        sub.status, sub.canceled_at, sub.ended_at = "canceled", _at(DAY2, 5), _at(DAY2, 5)
        uow.commit()


def _rollup(db: Callable[[], UnitOfWork], *days: date) -> None:
    """The nightly rollup of each day, run just after it (statuses are read as they are then)."""
    for day in days:
        with db() as uow:
            rollup_day(uow.session, day, _at(day, 24.5))
            uow.commit()


def _two_days(db: Callable[[], UnitOfWork]) -> None:
    _subscriptions(db)
    _rollup(db, DAY1)
    _churn(db)
    _rollup(db, DAY2)


def _admin(db: Callable[[], UnitOfWork]) -> Any:
    with db() as uow:
        admin = make_user(uow.session, role="ADMIN")
        uow.commit()
    return admin


def test_the_route_serves_the_rollups_figures_per_currency_and_day(db: Callable[[], UnitOfWork]) -> None:
    # Given the subscriptions, rolled up for two days
    _two_days(db)
    admin = _admin(db)
    # When an admin asks for MRR over both days
    mrr = api_call("GET", "/admin/analytics", query=f"metric=mrr&since={DAY1}&until={DAY2}", as_user=admin)
    # Then one series per currency, a point per day: trials, free plans and unpaid ones are not revenue
    assert mrr.status == 200, mrr.json
    series = {s["dimension"]: [(p["day"], p["value"]) for p in s["points"]] for s in mrr.json["series"]}
    assert series == {"eur": [(str(DAY1), "10"), (str(DAY2), "10")], "usd": [(str(DAY1), "29"), (str(DAY2), "19")]}
    assert (mrr.json["metric"], mrr.json["since"], mrr.json["until"]) == ("mrr", str(DAY1), str(DAY2))
    # And one dimension alone when asked
    usd = api_call(
        "GET", "/admin/analytics", query=f"metric=mrr&dimension=usd&since={DAY1}&until={DAY2}", as_user=admin
    )
    assert [s["dimension"] for s in usd.json["series"]] == ["usd"]
    # And churn is a ratio: of the three paying at day 2's start, one stopped
    churn = api_call("GET", "/admin/analytics", query=f"metric=churn_rate&since={DAY2}&until={DAY2}", as_user=admin)
    assert churn.status == 200
    (only,) = churn.json["series"]
    assert only["dimension"] == "" and Decimal(only["points"][0]["value"]) == Decimal("0.3333")


def test_days_outside_the_range_and_other_metrics_are_left_out(db: Callable[[], UnitOfWork]) -> None:
    # Given two rolled-up days
    _two_days(db)
    admin = _admin(db)
    # When an admin asks for the second day only
    answer = api_call("GET", "/admin/analytics", query=f"metric=active_subscriptions&since={DAY2}", as_user=admin)
    # Then only that day (until defaults to yesterday, long after) of only that metric
    assert answer.status == 200
    (only,) = answer.json["series"]
    assert [p["day"] for p in only["points"]] == [str(DAY2)]
    assert only["points"][0]["value"] == "4"  # live at day 2's end: sub_0, the yearly, the trial, the free plan


def test_the_range_is_bounded_and_the_metric_must_be_one_the_rollup_writes(db: Callable[[], UnitOfWork]) -> None:
    admin = _admin(db)
    cases = {
        "metric=mrr&since=2025-01-01&until=2026-01-02": ("range_too_long", 422),  # 367 days
        f"metric=mrr&since={DAY2}&until={DAY1}": ("validation_error", 422),
        "metric=profit": ("validation_error", 422),
        "metric=mrr&since=yesterday": ("validation_error", 422),
        "": ("validation_error", 422),
    }
    for query, (code, status) in cases.items():
        # When an admin asks with that query
        answer = api_call("GET", "/admin/analytics", query=query, as_user=admin)
        # Then it is refused with its code
        assert (answer.status, answer.error_code) == (status, code), query
    # And 366 days is the longest series served
    longest = api_call("GET", "/admin/analytics", query="metric=mrr&since=2025-01-01&until=2026-01-01", as_user=admin)
    assert longest.status == 200 and longest.json["series"] == []


def test_only_admins_read_analytics(db: Callable[[], UnitOfWork]) -> None:
    with db() as uow:
        callers = {role: make_user(uow.session, role=role) for role in ("USER", "SUPPORT")}
        uow.commit()
    for role, caller in callers.items():
        # When a USER or SUPPORT asks, Then it is forbidden
        answer = api_call("GET", "/admin/analytics", query="metric=mrr", as_user=caller)
        assert (answer.status, answer.error_code) == (403, "forbidden"), role


def test_the_metric_names_are_the_rollups(db: Callable[[], UnitOfWork]) -> None:
    # Given the names the reports accept and the rollup's SQL function, Then they are the same metrics
    with db() as uow:
        start, end = day_bounds(DAY1)
        computed = {row.metric for row in uow.session.execute(DAY_FIGURES, {"start": start, "end": end})}
    assert computed == set(ANALYTICS_METRICS)
    # And a rollup writes a row of each
    _rollup(db, DAY1)
    with db() as uow:
        written = set(uow.session.execute(select(AnalyticsMetric.metric).group_by(AnalyticsMetric.metric)).scalars())
        assert written == set(ANALYTICS_METRICS)
        assert uow.session.execute(select(func.count()).select_from(AnalyticsMetric)).scalar_one() == len(written)

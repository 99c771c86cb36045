"""Manual plans through the gateway: PUT/DELETE /admin/users/{user_id}/plan (admins only, audited), the tier and
the allowance as paid plans get them, idempotent re-assignment, ending without clawback, and the renewal of each
period by the MonthlyAllowance job until `until`."""

# ruff: noqa: F403, F405
from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from tests.gateway_support import api_key_for
from tests.payments_support import *
from tests.support import api_call, make_user
from tollgate.db import UnitOfWork
from tollgate.jobs import run_job
from tollgate.jobs.allowance import MonthlyAllowance
from tollgate.models.payments import Subscription


def admin(db: Callable[[], UnitOfWork]) -> uuid.UUID:
    with db() as uow:
        user = make_user(uow.session, email=f"admin-{uuid.uuid4().hex[:6]}@example.com", role="ADMIN")
        uow.commit()
        return user.id


def put_plan(user_id: uuid.UUID, actor: uuid.UUID, role: str = "ADMIN", **body: Any) -> ApiResponse:
    return api_call("PUT", f"/admin/users/{user_id}/plan", body=body, as_user=actor, role=role)


def user_row(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> Any:
    with db() as uow:
        return uow.session.execute(text("SELECT * FROM users WHERE id = :u"), {"u": user_id}).mappings().one()


def manual_subs(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> list[Any]:
    with db() as uow:
        return list(
            uow.session.execute(
                text("SELECT * FROM subscriptions WHERE provider = 'manual' AND user_id = :u ORDER BY created_at"),
                {"u": user_id},
            ).mappings()
        )


def audits(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> list[str]:
    with db() as uow:
        rows = uow.session.execute(
            text("SELECT action FROM audit_logs WHERE target_id = :t ORDER BY created_at"), {"t": str(user_id)}
        )
        return [r.action for r in rows]


def run_allowance(db: Callable[[], UnitOfWork], now: datetime) -> Any:
    return run_job(MonthlyAllowance(), now=now, remaining_ms=lambda: 600_000, uow_factory=db, safety_ms=1)


def test_an_admin_assigns_a_plan_tier_and_allowance_audited_and_reassigning_grants_nothing_more(db, catalogue, buyer):
    # Given an admin and a user on FREE
    boss = admin(db)
    # When the admin gives the user Pro monthly, then sends the same assignment again
    first = put_plan(buyer, boss, plan_id=str(catalogue.pro_id), interval="month")
    again = put_plan(buyer, boss, plan_id=str(catalogue.pro_id), interval="month")
    # Then the user is PRO with one period's allowance, granted once; the row is a manual subscription
    assert first.status == 200, first.json
    assert (first.json["tier"], first.json["user_tier"], first.json["status"]) == ("PRO", "PRO", "active")
    assert Decimal(first.json["credits_granted"]) == Decimal("1000") and first.json["changed"] is True
    assert again.status == 200 and again.json["changed"] is False and Decimal(again.json["credits_granted"]) == 0
    assert again.json["subscription_id"] == first.json["subscription_id"]
    assert user_row(db, buyer)["tier"] == "PRO"
    assert balance(db, buyer) == Decimal("1000") and len(grants(db, buyer, "allowance")) == 1
    subs = manual_subs(db, buyer)
    assert len(subs) == 1 and subs[0]["interval"] == "month"
    assert subs[0]["current_period_end"] - subs[0]["current_period_start"] >= timedelta(days=28)
    assert count(db, "invoices", "provider = 'manual' AND user_id = :u AND credits_granted = 1000", u=buyer) == 1
    assert audits(db, buyer) == ["plan.manual.assign"]
    assert ledger_is_consistent(db, buyer)


def test_only_admins_may_assign_or_end_a_plan(db, catalogue, buyer):
    # Given a support agent and an ordinary user
    with db() as uow:
        support = make_user(uow.session, email="support@example.com", role="SUPPORT")
        uow.commit()
    # When they try to assign or end a plan
    as_support = put_plan(buyer, support.id, role="SUPPORT", plan_id=str(catalogue.pro_id), interval="month")
    as_self = put_plan(buyer, buyer, role="USER", plan_id=str(catalogue.pro_id), interval="month")
    end = api_call("DELETE", f"/admin/users/{buyer}/plan", as_user=buyer, role="USER")
    # Then each is forbidden and nothing changed
    assert (as_support.status, as_self.status, end.status) == (403, 403, 403)
    assert user_row(db, buyer)["tier"] == "FREE" and manual_subs(db, buyer) == []
    assert balance(db, buyer) == 0 and audits(db, buyer) == []


def test_through_the_authorizer_an_admin_key_assigns_and_a_user_key_is_refused(db, catalogue, buyer):
    # Given an admin's API key with the admin scope and the user's own key without it
    boss = admin(db)
    admin_key = api_key_for(boss, scopes=("admin",))
    user_key = api_key_for(buyer)
    body = {"plan_id": str(catalogue.business_id), "interval": "year"}
    # When each calls PUT /admin/users/{user_id}/plan through the real authorizer
    refused = api_call(
        "PUT", f"/admin/users/{buyer}/plan", body=body, headers={"x-api-key": user_key}, through_authorizer=True
    )
    done = api_call(
        "PUT", f"/admin/users/{buyer}/plan", body=body, headers={"x-api-key": admin_key}, through_authorizer=True
    )
    # Then only the admin's succeeds, and a yearly plan grants twelve months of its allowance
    assert refused.status == 403
    assert done.status == 200, done.json
    assert done.json["tier"] == "BUSINESS" and Decimal(done.json["credits_granted"]) == Decimal("60000")


def test_ending_returns_to_free_and_claws_nothing_back(db, catalogue, buyer):
    # Given a user on a manual Pro plan who spent nothing
    boss = admin(db)
    put_plan(buyer, boss, plan_id=str(catalogue.pro_id), interval="month")
    # When the admin ends it, then tries again
    ended = api_call("DELETE", f"/admin/users/{buyer}/plan", as_user=boss, role="ADMIN")
    again = api_call("DELETE", f"/admin/users/{buyer}/plan", as_user=boss, role="ADMIN")
    # Then the plan is ended, the tier is FREE, the allowance already granted stays; a second end finds nothing
    assert ended.status == 200 and ended.json["status"] == "ended" and ended.json["user_tier"] == "FREE"
    assert again.status == 404
    assert user_row(db, buyer)["tier"] == "FREE"
    assert balance(db, buyer) == Decimal("1000")
    assert [s["status"] for s in manual_subs(db, buyer)] == ["ended"]
    assert audits(db, buyer) == ["plan.manual.assign", "plan.manual.end"]
    assert ledger_is_consistent(db, buyer)


def test_another_plan_replaces_the_current_one_and_bad_requests_are_refused(db, catalogue, buyer):
    boss = admin(db)
    put_plan(buyer, boss, plan_id=str(catalogue.pro_id), interval="month")
    # When the admin moves the user to Business, and sends bad assignments
    moved = put_plan(buyer, boss, plan_id=str(catalogue.business_id), interval="month")
    past = put_plan(buyer, boss, plan_id=str(catalogue.pro_id), interval="month", until="2020-01-01T00:00:00Z")
    weekly = put_plan(buyer, boss, plan_id=str(catalogue.pro_id), interval="week")
    unknown = put_plan(buyer, boss, plan_id=str(uuid.uuid4()), interval="month")
    nobody = put_plan(uuid.uuid4(), boss, plan_id=str(catalogue.pro_id), interval="month")
    # Then Business replaced Pro (one live manual plan) and each bad request is a clear 4xx
    assert moved.status == 200 and moved.json["tier"] == "BUSINESS"
    assert [s["status"] for s in manual_subs(db, buyer)] == ["ended", "active"]
    assert user_row(db, buyer)["tier"] == "BUSINESS"
    assert (past.status, weekly.status, unknown.status, nobody.status) == (422, 422, 404, 404)


def test_a_user_with_a_live_provider_subscription_gets_no_manual_plan(db, catalogue, buyer):
    # Given a user whose Stripe subscription is active
    with db() as uow:
        uow.session.add(
            Subscription(
                provider="stripe", provider_subscription_id="sub_live", user_id=buyer, status="active",
                tier="PRO", plan_id=catalogue.pro_id, plan_history=[], metadata_={},
            )
        )  # fmt: skip
        uow.commit()
    # When an admin assigns a manual plan
    answer = put_plan(buyer, admin(db), plan_id=str(catalogue.business_id), interval="month")
    # Then it is refused (two allowances a period) and nothing was granted
    assert answer.status == 409
    assert manual_subs(db, buyer) == [] and balance(db, buyer) == 0


def test_the_allowance_job_renews_each_period_until_the_plan_ends(db, catalogue, buyer):
    # Given a manual Pro plan (rollover none) that ends in 70 days
    boss = admin(db)
    until = (datetime.now(UTC) + timedelta(days=70)).replace(microsecond=0)
    put_plan(buyer, boss, plan_id=str(catalogue.pro_id), interval="month", until=until.isoformat())
    first_end = manual_subs(db, buyer)[0]["current_period_end"]
    # When the job runs inside the first period, then after it, then again in the same second period
    inside = run_allowance(db, first_end - timedelta(days=1))
    second = run_allowance(db, first_end + timedelta(hours=1))
    repeat = run_allowance(db, first_end + timedelta(hours=2))
    # Then only the second period granted: one more allowance
    assert not inside.stats.get("manual_renewed")
    assert second.stats.get("manual_renewed") == 1 and not repeat.stats.get("manual_renewed")
    assert len(grants(db, buyer, "allowance")) == 2
    sub = manual_subs(db, buyer)[0]
    assert sub["current_period_start"] == first_end and sub["status"] == "active"
    # When periods pass beyond `until`
    third_end = manual_subs(db, buyer)[0]["current_period_end"]
    third = run_allowance(db, third_end + timedelta(hours=1))
    assert third.stats.get("manual_renewed") == 1
    assert manual_subs(db, buyer)[0]["current_period_end"] == until  # the last period is cut at `until`
    last = run_allowance(db, until + timedelta(hours=1))
    # Then the plan ended at `until`: the tier is FREE again, and three periods were granted in all
    assert last.stats.get("manual_ended") == 1
    sub = manual_subs(db, buyer)[0]
    assert sub["status"] == "ended" and sub["ended_at"] == until
    assert user_row(db, buyer)["tier"] == "FREE"
    assert len(grants(db, buyer, "allowance")) == 3
    assert ledger_is_consistent(db, buyer)

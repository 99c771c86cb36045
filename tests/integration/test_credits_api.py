"""The Credits routes of API.md, through the real handler and the template (functions/credits)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from sqlalchemy import text

from tests.credits_support import admin, assert_consistent, balance, funded_user, ledger_rows, set_costs
from tests.support import api_call, make_user
from tollgate import ledger

D = Decimal
COSTS = {"chat": "1", "image_gen": "5", "faq_search": "0.2"}


def test_balance_shows_the_buckets(db):
    # Given a user with a promo grant, an allowance and a pack
    with db() as uow:
        set_costs(uow.session, COSTS)
        user = make_user(uow.session, tier="PRO")
        ledger.grant(uow.session, user.id, kind="promo", amount=D(5), source_key="p")
        ledger.grant(uow.session, user.id, kind="allowance", amount=D(100), source_key="a")
        ledger.grant(uow.session, user.id, kind="purchase", amount=D(40), source_key="o")
        ledger.hold(uow.session, user.id, amount=D(3))
        uow.commit()
    # When they ask for their balance
    response = api_call("GET", "/credits/balance", as_user=user)
    # Then every bucket is a decimal string
    assert response.status == 200, response.json
    body = response.json
    assert body["balance"] == "145.0000"
    assert body["held"] == "3.0000"
    assert body["bonus"] == "40.0000"
    assert body["allowance"] == "100.0000" and body["promotional"] == "2.0000"
    assert body["available"] == "102.0000"  # the pack waits for auto-use
    assert body["tier"] == "PRO" and body["bonus_auto_use"] is False


def test_usage_charges_and_answers_201_with_idempotent_replay(db):
    user_id = funded_user(db, "10", costs=COSTS)
    headers = {"Idempotency-Key": "order-42"}
    first = api_call(
        "POST", "/credits/usage", body={"operation": "chat", "quantity": "2"}, as_user=user_id, headers=headers
    )
    again = api_call(
        "POST", "/credits/usage", body={"operation": "chat", "quantity": 2}, as_user=user_id, headers=headers
    )
    other = api_call(
        "POST", "/credits/usage", body={"operation": "chat", "quantity": 3}, as_user=user_id, headers=headers
    )
    assert first.status == 201, first.json
    assert first.json["charged"] == "2.0000" and first.json["balance"] == "8.0000"
    assert again.status == 201 and again.json == first.json
    assert other.status == 409 and other.error_code == "idempotency_conflict"
    assert balance(db, user_id) == D(8)


def test_usage_errors_answer_their_codes_and_write_nothing(db):
    user_id = funded_user(db, "3", costs=COSTS)
    cases = [
        ({"operation": "image_gen"}, 402, "insufficient_credits"),
        ({"operation": "teleport"}, 422, "unknown_operation"),
        ({"operation": "chat", "quantity": "0"}, 422, "validation_error"),
        ({"operation": "chat", "quantity": "-1"}, 422, "validation_error"),
        ({"operation": "chat", "quantity": "0.00001"}, 422, "validation_error"),
        ({"operation": "chat", "extra": 1}, 422, "validation_error"),
        ({}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        response = api_call("POST", "/credits/usage", body=body, as_user=user_id)
        assert (response.status, response.error_code) == (status, code), (body, response.json)
    refused = api_call("POST", "/credits/usage", body={"operation": "image_gen"}, as_user=user_id)
    assert refused.json["error"]["details"]["balance"] == "3.0000"
    bad_key = api_call(
        "POST", "/credits/usage", body={"operation": "chat"}, as_user=user_id, headers={"Idempotency-Key": "é"}
    )
    assert bad_key.status == 422
    assert len(ledger_rows(db, user_id)) == 1


def test_usage_needs_a_caller(db):
    response = api_call("POST", "/credits/usage", body={"operation": "chat"})
    assert response.status == 401


def test_hold_capture_release_through_the_api(db):
    user_id = funded_user(db, "10", costs=COSTS)
    held = api_call("POST", "/credits/holds", body={"operation": "image_gen", "ttl_seconds": 60}, as_user=user_id)
    assert held.status == 201, held.json
    assert held.json["amount"] == "5.0000"
    hold_id = held.json["hold_id"]
    capture = api_call("POST", f"/credits/holds/{hold_id}/capture", body={"amount": "1.25"}, as_user=user_id)
    assert capture.status == 200, capture.json
    assert capture.json["charged"] == "1.2500" and capture.json["released"] == "3.7500"
    assert capture.json["balance"] == "8.7500"
    again = api_call("POST", f"/credits/holds/{hold_id}/release", as_user=user_id)
    assert (again.status, again.error_code) == (409, "hold_not_active")
    second = api_call("POST", "/credits/holds", body={"amount": "2"}, as_user=user_id)
    released = api_call("POST", f"/credits/holds/{second.json['hold_id']}/release", as_user=user_id)
    assert released.status == 200 and released.json == {"released": "2.0000", "balance": "8.7500"}
    assert_consistent(db)


def test_hold_errors(db):
    user_id = funded_user(db, "10", costs=COSTS)
    other_id = funded_user(db, "10")
    both = api_call("POST", "/credits/holds", body={"operation": "chat", "amount": "1"}, as_user=user_id)
    assert both.status == 422
    held = api_call("POST", "/credits/holds", body={"amount": "2"}, as_user=user_id).json["hold_id"]
    foreign = api_call("POST", f"/credits/holds/{held}/capture", body={"amount": "1"}, as_user=other_id)
    assert (foreign.status, foreign.error_code) == (404, "hold_not_found")
    missing = api_call("POST", f"/credits/holds/{uuid.uuid4()}/release", as_user=user_id)
    assert (missing.status, missing.error_code) == (404, "hold_not_found")
    too_much = api_call("POST", f"/credits/holds/{held}/capture", body={"amount": "3"}, as_user=user_id)
    assert too_much.status == 422
    bad_id = api_call("POST", "/credits/holds/not-a-uuid/release", as_user=user_id)
    assert bad_id.status == 422


def test_transactions_newest_first_with_filters_and_cursor(db):
    user_id = funded_user(db, "100", costs=COSTS)
    for _ in range(5):
        assert api_call("POST", "/credits/usage", body={"operation": "chat"}, as_user=user_id).status == 201
    api_call("POST", "/credits/usage", body={"operation": "image_gen"}, as_user=user_id)
    page1 = api_call("GET", "/credits/transactions", query="limit=4", as_user=user_id)
    assert page1.status == 200, page1.json
    assert len(page1.json["items"]) == 4 and page1.json["next_cursor"]
    assert page1.json["items"][0]["operation"] == "image_gen"
    page2 = api_call(
        "GET", "/credits/transactions", query=f"limit=4&cursor={page1.json['next_cursor']}", as_user=user_id
    )
    assert len(page2.json["items"]) == 3 and page2.json["next_cursor"] is None
    ids = [t["id"] for t in page1.json["items"] + page2.json["items"]]
    assert len(set(ids)) == 7
    chats = api_call("GET", "/credits/transactions", query="operation=chat&type=usage", as_user=user_id)
    assert len(chats.json["items"]) == 5
    since = api_call("GET", "/credits/transactions", query="since=2000-01-01T00:00:00Z&limit=100", as_user=user_id)
    assert since.status == 200 and len(since.json["items"]) == 7
    until = api_call("GET", "/credits/transactions", query="until=2000-01-01T00:00:00Z", as_user=user_id)
    assert until.status == 200 and until.json["items"] == []
    assert api_call("GET", "/credits/transactions", query="since=yesterday", as_user=user_id).status == 422
    garbage = api_call("GET", "/credits/transactions", query="cursor=garbage", as_user=user_id)
    assert (garbage.status, garbage.error_code) == (400, "invalid_cursor")
    assert api_call("GET", "/credits/transactions", query="limit=101", as_user=user_id).status == 422
    assert api_call("GET", "/credits/transactions", query="type=nope", as_user=user_id).status == 422
    # Another user's ledger is not visible
    other = funded_user(db, "1")
    assert len(api_call("GET", "/credits/transactions", as_user=other).json["items"]) == 1


def test_usage_summary_and_costs(db):
    with db() as uow:
        set_costs(uow.session, COSTS, plan_costs={"PRO": {"chat": "0.5"}})
        user = make_user(uow.session, tier="PRO")
        ledger.grant(uow.session, user.id, kind="promo", amount=D(100), source_key="p")
        uow.commit()
    for op in ("chat", "chat", "image_gen"):
        api_call("POST", "/credits/usage", body={"operation": op}, as_user=user)
    summary = api_call("GET", "/credits/usage/summary", query="days=7", as_user=user)
    assert summary.status == 200
    assert summary.json == [
        {"operation": "image_gen", "count": 1, "credits": "5.0000"},
        {"operation": "chat", "count": 2, "credits": "1.0000"},
    ]
    costs = api_call("GET", "/credits/costs", as_user=user)
    assert costs.json == {"chat": "0.5000", "faq_search": "0.2000", "image_gen": "5.0000"}
    assert api_call("GET", "/credits/usage/summary", query="days=0", as_user=user).status == 422


def test_settings_toggle_bonus_auto_use_unless_locked(db):
    with db() as uow:
        set_costs(uow.session, COSTS, allow_toggle=True)
        user = make_user(uow.session)
        ledger.grant(uow.session, user.id, kind="purchase", amount=D(10), source_key="o")
        uow.commit()
    assert api_call("POST", "/credits/usage", body={"operation": "chat"}, as_user=user).status == 402
    on = api_call("PATCH", "/credits/settings", body={"bonus_auto_use": True}, as_user=user)
    assert on.status == 200 and on.json["bonus_auto_use"] is True
    assert api_call("POST", "/credits/usage", body={"operation": "chat"}, as_user=user).status == 201
    with db() as uow:
        set_costs(uow.session, COSTS, allow_toggle=False)
        uow.commit()
    locked = api_call("PATCH", "/credits/settings", body={"bonus_auto_use": False}, as_user=user)
    assert (locked.status, locked.error_code) == (403, "bonus_auto_use_locked")
    assert api_call("PATCH", "/credits/settings", body={"bonus_auto_use": "yes please"}, as_user=user).status == 422


def test_public_catalogue_lists_active_items_sorted(db):
    with db() as uow:
        uow.session.execute(
            text(
                "INSERT INTO plans (id, tier, name, monthly_credits, price_monthly, sort_order, active) VALUES "
                "(gen_random_uuid(), 'PRO', 'Pro', 1000, 19, 1, true), "
                "(gen_random_uuid(), 'FREE', 'Free', 50, 0, 0, true), "
                "(gen_random_uuid(), 'OLD', 'Old', 1, 1, 2, false)"
            )
        )
        uow.session.execute(
            text(
                "INSERT INTO credit_packs (id, name, credits, price, sort_order) VALUES "
                "(gen_random_uuid(), 'Starter', 100, 5, 0), (gen_random_uuid(), 'Power', 1000, 40, 1)"
            )
        )
        uow.commit()
    plans = api_call("GET", "/plans", through_authorizer=True)
    assert plans.status == 200, plans.json
    assert [p["tier"] for p in plans.json["items"]] == ["FREE", "PRO"]
    assert plans.json["items"][1]["price_monthly"] == "19.00"
    packs = api_call("GET", "/credit-packs", query="limit=1", through_authorizer=True)
    assert [p["name"] for p in packs.json["items"]] == ["Starter"]
    more = api_call(
        "GET", "/credit-packs", query=f"limit=1&cursor={packs.json['next_cursor']}", through_authorizer=True
    )
    assert [p["name"] for p in more.json["items"]] == ["Power"] and more.json["next_cursor"] is None


# --- admin ----------------------------------------------------------------------------------------------------
def test_admin_routes_refuse_non_admins(db):
    user_id = funded_user(db, "10", costs=COSTS)
    calls = [
        ("POST", f"/admin/users/{user_id}/credits/usage", {"operation": "chat"}),
        ("POST", f"/admin/users/{user_id}/credits/adjustments", {"amount": "5", "reason": "x"}),
        ("POST", "/admin/credits/refunds", {"transaction_id": str(uuid.uuid4()), "reason": "x"}),
        ("GET", f"/admin/users/{user_id}/credits", None),
        ("GET", "/admin/feature-costs", None),
        ("PUT", "/admin/feature-costs", {"chat": "2"}),
        ("GET", "/admin/plans", None),
        ("POST", "/admin/credits/reconcile", None),
    ]
    for method, path, body in calls:
        response = api_call(method, path, body=body, as_user=user_id, role="USER")
        assert (response.status, response.error_code) == (403, "forbidden"), (path, response.json)
    assert balance(db, user_id) == D(10)


def test_admin_charge_adjust_refund_and_inspect(db):
    boss = admin(db)
    user_id = funded_user(db, "10", costs=COSTS)
    charged = api_call("POST", f"/admin/users/{user_id}/credits/usage", body={"operation": "image_gen"}, as_user=boss)
    assert charged.status == 201 and charged.json["balance"] == "5.0000"
    adjusted = api_call(
        "POST", f"/admin/users/{user_id}/credits/adjustments", body={"amount": "-2", "reason": "abuse"}, as_user=boss
    )
    assert adjusted.status == 201 and adjusted.json["balance"] == "3.0000"
    refund = api_call(
        "POST", "/admin/credits/refunds",
        body={"transaction_id": charged.json["transaction_id"], "amount": "4", "reason": "outage"}, as_user=boss,
    )  # fmt: skip
    assert refund.status == 201, refund.json
    assert refund.json["refunded"] == "4.0000" and refund.json["balance"] == "7.0000"
    over = api_call(
        "POST", "/admin/credits/refunds",
        body={"transaction_id": charged.json["transaction_id"], "amount": "1.5", "reason": "again"}, as_user=boss,
    )  # fmt: skip
    assert (over.status, over.error_code) == (409, "refund_exceeds_charge")
    view = api_call("GET", f"/admin/users/{user_id}/credits", as_user=boss)
    assert view.status == 200 and view.json["balance"] == "7.0000"
    assert [g["remaining"] for g in view.json["grants"]] == ["7.0000"]
    assert api_call("GET", f"/admin/users/{uuid.uuid4()}/credits", as_user=boss).status == 404
    with db() as uow:
        actions = uow.session.execute(text("SELECT action FROM audit_logs ORDER BY created_at")).scalars().all()
    assert actions == ["credits.charge", "credits.adjust", "credits.refund"]
    assert_consistent(db)


def test_admin_feature_costs_and_plan_overrides(db):
    boss = admin(db)
    put = api_call("PUT", "/admin/feature-costs", body={"chat": "2", "faq_search": 0.25}, as_user=boss)
    assert put.status == 200, put.json
    assert put.json == {"chat": "2.0000", "faq_search": "0.2500"}
    override = api_call("PUT", "/admin/feature-costs", query="tier=PRO", body={"chat": "1"}, as_user=boss)
    assert override.status == 200
    assert api_call("GET", "/admin/feature-costs", query="tier=PRO", as_user=boss).json == {"chat": "1.0000"}
    for bad in ({"chat": "-1"}, {"chat": "0.00001"}, {"Bad Name": "1"}):
        assert api_call("PUT", "/admin/feature-costs", body=bad, as_user=boss).status == 422, bad
    assert api_call("GET", "/admin/feature-costs", as_user=boss).json == {"chat": "2.0000", "faq_search": "0.2500"}


def test_admin_catalogue_management(db):
    boss = admin(db)
    created = api_call(
        "POST", "/admin/plans",
        body={"tier": "PRO", "name": "Pro", "monthly_credits": "1000", "rollover": "capped", "rollover_cap": "500",
              "price_monthly": "19.00", "price_yearly": "190", "stripe_price_id_monthly": "price_123"},
        as_user=boss,
    )  # fmt: skip
    assert created.status == 201, created.json
    plan_id = created.json["id"]
    assert api_call("POST", "/admin/plans", body={"tier": "PRO", "name": "Again"}, as_user=boss).status == 409
    assert (
        api_call(
            "POST", "/admin/plans", body={"tier": "X", "name": "Bad", "price_monthly": "1.001"}, as_user=boss
        ).status
        == 422
    )
    assert (
        api_call("POST", "/admin/plans", body={"tier": "Y", "name": "Cap", "rollover": "capped"}, as_user=boss).status
        == 422
    )
    patched = api_call("PATCH", f"/admin/plans/{plan_id}", body={"active": False, "badge": "Popular"}, as_user=boss)
    assert patched.status == 200 and patched.json["active"] is False and patched.json["badge"] == "Popular"
    assert api_call("PATCH", f"/admin/plans/{plan_id}", body={"name": None}, as_user=boss).status == 422
    assert api_call("PATCH", f"/admin/plans/{uuid.uuid4()}", body={"active": True}, as_user=boss).status == 404
    assert api_call("GET", "/plans").json["items"] == []
    assert len(api_call("GET", "/admin/plans", as_user=boss).json["items"]) == 1
    pack = api_call(
        "POST", "/admin/credit-packs",
        body={"name": "Starter", "credits": "100", "price": "5.00", "currency": "USD", "expires_after_days": 365},
        as_user=boss,
    )  # fmt: skip
    assert pack.status == 201 and pack.json["currency"] == "usd"
    assert (
        api_call(
            "POST", "/admin/credit-packs", body={"name": "Zero", "credits": "0", "price": "1"}, as_user=boss
        ).status
        == 422
    )
    changed = api_call("PATCH", f"/admin/credit-packs/{pack.json['id']}", body={"price": "4.50"}, as_user=boss)
    assert changed.status == 200 and changed.json["price"] == "4.50"
    with db() as uow:
        actions = uow.session.execute(text("SELECT action FROM audit_logs ORDER BY created_at")).scalars().all()
    assert actions == [
        "catalogue.plan_create",
        "catalogue.plan_update",
        "catalogue.pack_create",
        "catalogue.pack_update",
    ]


def test_admin_reconcile_and_credit_line(db):
    boss = admin(db)
    user_id = funded_user(db, "1", costs=COSTS)
    opened = api_call(
        "PUT", f"/admin/users/{user_id}/credits/floor", body={"floor": "-10", "reason": "vip"}, as_user=boss
    )
    assert opened.status == 200 and opened.json == {"floor": "-10.0000"}
    charged = api_call("POST", "/credits/usage", body={"operation": "image_gen"}, as_user=user_id)
    assert charged.status == 201 and charged.json["balance"] == "-4.0000"
    report = api_call("POST", "/admin/credits/reconcile", as_user=boss)
    assert report.status == 200 and report.json["users_checked"] == 1 and report.json["mismatches"] == []


@pytest.mark.parametrize("path", ["/credits/balance", "/credits/costs", "/credits/transactions"])
def test_user_routes_work_through_the_real_authorizer_route_table(db, path):
    # An unauthenticated call through the real authorizer is refused before the handler
    response = api_call("GET", path, through_authorizer=True)
    assert response.status in (401, 403)


def test_admin_sets_whether_users_may_toggle_bonus_auto_use(db):
    # Given a fresh deployment: users do not choose, so a bought pack is spendable
    boss = admin(db)
    user_id = funded_user(db, "0")
    assert api_call("GET", "/admin/credits/settings", as_user=boss).json == {"allow_bonus_auto_use_toggle": False}
    assert api_call("PATCH", "/credits/settings", body={"bonus_auto_use": False}, as_user=user_id).status == 403
    view = api_call("GET", "/credits/balance", as_user=user_id).json
    assert view["bonus_auto_use"] is True and view["bonus_auto_use_locked"] is True
    # When an admin opts in to seed 001's per-user toggle
    opted = api_call("PUT", "/admin/credits/settings", body={"allow_bonus_auto_use_toggle": True}, as_user=boss)
    assert opted.status == 200 and opted.json == {"allow_bonus_auto_use_toggle": True}
    # Then users choose (off until they turn it on), and only an admin may change the policy
    view = api_call("GET", "/credits/balance", as_user=user_id).json
    assert view["bonus_auto_use"] is False and view["bonus_auto_use_locked"] is False
    assert api_call("PATCH", "/credits/settings", body={"bonus_auto_use": True}, as_user=user_id).status == 200
    assert (
        api_call("PUT", "/admin/credits/settings", body={"allow_bonus_auto_use_toggle": False}, as_user=user_id).status
        == 403
    )

# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""User management through the gateway: who may call what, search and filters with cursors, one user's page,
role and status changes (suspension revokes sessions and keys at once, within the authorizer's cache bound),
the self-demotion and last-admin guards, and the audit rows written with each change."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text, update

from tests.gateway_support import api_key_for
from tests.integration.auth_helpers import AuthEnv, auth_env, bearer  # noqa: F401
from tests.support import api_call, make_user
from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import LastAdmin
from tollgate.models import User
from tollgate.models.payments import Purchase
from tollgate.models.support import SupportTicket
from tollgate.services import user_admin
from tollgate.services.authz import Actor

Db = Callable[[], UnitOfWork]


def _admin(db: Db, role: str = "ADMIN", **fields: Any) -> User:
    with db() as uow:
        user = make_user(uow.session, role=role, **fields)
        uow.commit()
        uow.session.expunge(user)
        return user


def _audits(db: Db, user_id: uuid.UUID) -> list[Any]:
    with db() as uow:
        return list(
            uow.session.execute(
                text(
                    "SELECT actor_id, action, old_values, new_values, details FROM audit_logs "
                    "WHERE target_type = 'user' AND target_id = :t ORDER BY created_at, id"
                ),
                {"t": str(user_id)},
            )
        )


def _me(headers: dict[str, str]) -> int:
    return api_call("GET", "/auth/me", headers=headers, through_authorizer=True).status


def test_each_role_gets_what_the_table_says(db: Db) -> None:
    # Given a customer and a caller of each role
    customer = _admin(db, role="USER")
    callers = {role: _admin(db, role=role) for role in ("USER", "SUPPORT", "ADMIN")}
    base = f"/admin/users/{customer.id}"
    routes = [
        ("GET", "/admin/users", None, {"SUPPORT", "ADMIN"}),
        ("GET", base, None, {"SUPPORT", "ADMIN"}),
        ("PATCH", base, {"role": "SUPPORT"}, {"ADMIN"}),
        ("POST", base + "/export", None, {"ADMIN"}),
        ("POST", base + "/erase", None, {"ADMIN"}),
    ]
    # When each role calls each route (USER and SUPPORT first: a refusal changes nothing)
    seen, wanted = {}, {}
    for method, path, body, allowed in routes:
        for role in ("USER", "SUPPORT", "ADMIN"):
            response = api_call(method, path, body=body, as_user=callers[role], role=role)
            seen[(method, path, role)] = "2xx" if 200 <= response.status < 300 else str(response.status)
            wanted[(method, path, role)] = "2xx" if role in allowed else "403"
    # Then USER gets 403 everywhere, SUPPORT only reads, ADMIN does everything
    assert seen == wanted
    # And the refused PATCH wrote nothing: the one role change is the admin's
    assert [a.action for a in _audits(db, customer.id)][:1] == ["user.role_change"]
    assert [a.actor_id for a in _audits(db, customer.id) if a.action == "user.role_change"] == [callers["ADMIN"].id]


def test_search_matches_email_name_and_username_in_any_case_with_wildcards_taken_literally(db: Db) -> None:
    # Given users whose emails and names hold the search text, a % and an _
    admin = _admin(db)
    tag = uuid.uuid4().hex[:8]
    with db() as uow:
        ada = make_user(uow.session, email=f"Ada.{tag}@Example.com", name="Ada Lovelace")
        grace = make_user(uow.session, email=f"g.{tag}@example.com", name=f"Grace {tag.upper()}")
        percent = make_user(uow.session, email=f"100%{tag}@example.com")
        under = make_user(uow.session, email=f"a_b{tag}@example.com")
        make_user(uow.session, email=f"aXb{tag}@example.com")  # what an unescaped _ would also match
        uow.commit()

    def ids(query: str) -> set[str]:
        response = api_call("GET", "/admin/users", query=query, as_user=admin)
        assert response.status == 200, response.json
        return {u["id"] for u in response.json["items"]}

    # When staff search, Then the text matches inside email or name, whatever its case
    assert ids(f"q=ada.{tag.upper()}") == {str(ada.id)}
    assert ids(f"q={tag}&limit=100") >= {str(ada.id), str(grace.id), str(percent.id), str(under.id)}
    assert ids(f"q=grace%20{tag}") == {str(grace.id)}
    assert ids("q=lovelace") >= {str(ada.id)}
    # And % and _ match only themselves
    assert ids(f"q=%25{tag}") == {str(percent.id)}
    assert ids(f"q=a_b{tag}") == {str(under.id)}


def test_filters_and_cursor_pagination(db: Db) -> None:
    # Given users of several roles, statuses, tiers and creation times
    admin = _admin(db)
    now = utcnow()
    tier = f"T{uuid.uuid4().hex[:6].upper()}"
    with db() as uow:
        pros = [make_user(uow.session, tier=tier, created_at=now - timedelta(days=i)) for i in range(5)]
        make_user(uow.session, tier=tier, role="SUPPORT", created_at=now - timedelta(days=1))
        suspended = make_user(uow.session, tier=tier, status="SUSPENDED", created_at=now - timedelta(days=2))
        uow.commit()
    # When the tier's active users are paged two at a time
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = f"tier={tier}&role=USER&status=ACTIVE&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api_call("GET", "/admin/users", query=query, as_user=admin).json
        seen += [u["id"] for u in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Then every one comes once, newest first, over three pages
    assert seen == [str(u.id) for u in pros] and pages == 3
    # And the status filter and the creation range select what they say
    only = api_call("GET", "/admin/users", query=f"tier={tier}&status=SUSPENDED", as_user=admin).json["items"]
    assert [u["id"] for u in only] == [str(suspended.id)]
    since = (now - timedelta(days=1, hours=12)).isoformat().replace("+00:00", "Z")
    recent = api_call("GET", "/admin/users", query=f"tier={tier}&role=USER&created_since={since}", as_user=admin)
    assert [u["id"] for u in recent.json["items"]] == [str(pros[0].id), str(pros[1].id)]
    until = (now - timedelta(days=3, hours=12)).isoformat().replace("+00:00", "Z")
    old = api_call("GET", "/admin/users", query=f"tier={tier}&created_until={until}", as_user=admin)
    assert [u["id"] for u in old.json["items"]] == [str(pros[4].id)]


def test_bad_list_input_is_a_4xx_with_a_code(db: Db) -> None:
    # Given an admin
    admin = _admin(db)
    # When the list is asked with unknown values, a tampered cursor or an empty search
    for query, status, code in [
        ("status=GONE", 422, "validation_error"),
        ("role=ROOT", 422, "validation_error"),
        ("tier=lower-case", 422, "validation_error"),
        ("created_since=2026-02-01T00:00:00Z&created_until=2026-01-01T00:00:00Z", 422, "validation_error"),
        ("cursor=not-a-cursor", 400, "invalid_cursor"),
        ("limit=0", 422, None),
    ]:
        response = api_call("GET", "/admin/users", query=query, as_user=admin)
        # Then each is refused with its status (and code where the service names one)
        assert response.status == status, (query, response.json)
        if code:
            assert response.error_code == code, (query, response.json)


def test_a_users_page_carries_profile_balance_plan_and_recent_purchases(db: Db) -> None:
    # Given a customer with credits, two purchases and three tickets (one closed), and a support agent
    agent = _admin(db, role="SUPPORT")
    with db() as uow:
        customer = make_user(uow.session, name="Cus Tomer", tier="FREE")
        ledger.grant(uow.session, customer.id, kind="promo", amount=Decimal("12.5"), source_key="promo:page")
        for i in range(2):
            uow.session.add(
                Purchase(
                    provider="stripe", provider_order_id=f"cs_page_{uuid.uuid4().hex}", user_id=customer.id,
                    credits=Decimal("100"), amount=Decimal("5.00"), currency="usd", status="completed",
                    package_name=f"Pack {i}", created_at=utcnow() - timedelta(minutes=10 - i),
                )
            )  # fmt: skip
        for status in ("OPEN", "IN_PROGRESS", "CLOSED"):
            uow.session.add(SupportTicket(customer_id=customer.id, subject="Help", description="?", status=status))
        uow.commit()
    # When support reads the page
    response = api_call("GET", f"/admin/users/{customer.id}", as_user=agent, role="SUPPORT")
    # Then it shows the person, their balance, purchases (newest first) and tickets in progress; no orders yet
    assert response.status == 200, response.json
    page = response.json
    assert page["profile"]["email"] == customer.email and page["profile"]["name"] == "Cus Tomer"
    assert "password_hash" not in page["profile"] and "totp_secret" not in page["profile"]
    assert page["balance"]["balance"] == "12.5000"
    assert page["plan"]["tier"] == "FREE"
    assert [p["package_name"] for p in page["recent_purchases"]] == ["Pack 1", "Pack 0"]
    assert page["recent_orders"] == [] and page["subscription"] is None
    assert page["open_tickets"] == 2
    # And an unknown user is a 404 with its code
    missing = api_call("GET", f"/admin/users/{uuid.uuid4()}", as_user=agent, role="SUPPORT")
    assert missing.status == 404 and missing.error_code == "user_not_found"


def test_suspension_revokes_sessions_and_keys_at_once_and_is_audited(db: Db, auth_env: AuthEnv) -> None:
    # Given a signed-in customer with an API key, both working through the authorizer
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    with db() as uow:
        customer = uow.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one()
        uow.session.expunge(customer)
    key = api_key_for(customer.id, scopes=("profile:read",))
    assert _me(bearer(tokens["access_token"])) == 200 and _me({"x-api-key": key}) == 200
    admin = _admin(db)
    # When an admin suspends them (and the authorizer's cache is cold, as in a fresh container)
    response = api_call("PATCH", f"/admin/users/{customer.id}", body={"status": "SUSPENDED"}, as_user=admin)
    assert response.status == 200, response.json
    assert response.json["status"] == "SUSPENDED"
    auth_env.set()
    # Then the token and the key are refused at once, and the refresh token is dead
    assert _me(bearer(tokens["access_token"])) == 403
    assert _me({"x-api-key": key}) == 403
    refreshed = api_call("POST", "/auth/token/refresh", body={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status == 401
    # And every session and key row is revoked
    with db() as uow:
        live_sessions = uow.session.execute(
            text("SELECT count(*) FROM sessions WHERE user_id = :u AND revoked_at IS NULL"), {"u": customer.id}
        ).scalar_one()
        live_keys = uow.session.execute(
            text("SELECT count(*) FROM api_keys WHERE user_id = :u AND revoked_at IS NULL"), {"u": customer.id}
        ).scalar_one()
    assert live_sessions == 0 and live_keys == 0
    # And one audit row names the admin, the old and the new status, and what was revoked
    [row] = [a for a in _audits(db, customer.id) if a.action == "user.status_change"]
    assert row.actor_id == admin.id
    assert row.old_values == {"status": "ACTIVE"} and row.new_values == {"status": "SUSPENDED"}
    assert row.details["sessions_revoked"] >= 1 and row.details["api_keys_revoked"] == 1
    # And reactivating lets them sign in again (their old credentials stay revoked)
    back = api_call("PATCH", f"/admin/users/{customer.id}", body={"status": "ACTIVE"}, as_user=admin)
    assert back.status == 200 and back.json["status"] == "ACTIVE"
    assert _me(bearer(auth_env.login(email)["access_token"])) == 200
    assert _me({"x-api-key": key}) == 403


def test_a_warm_authorizer_cache_refuses_a_suspended_user_once_its_bound_passes(db: Db, auth_env: AuthEnv) -> None:
    # Given a 1-second authorizer cache that has just allowed a customer's token and key
    auth_env.set(AUTHORIZER_CACHE_SECONDS="1")
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    with db() as uow:
        customer_id = uow.session.execute(select(User.id).where(func.lower(User.email) == email)).scalar_one()
    key = api_key_for(customer_id, scopes=("profile:read",))
    assert _me(bearer(tokens["access_token"])) == 200 and _me({"x-api-key": key}) == 200
    # When an admin suspends the customer
    admin = _admin(db)
    assert api_call("PATCH", f"/admin/users/{customer_id}", body={"status": "SUSPENDED"}, as_user=admin).status == 200
    # Then once AUTHORIZER_CACHE_SECONDS has passed, the same container refuses both
    time.sleep(1.1)
    assert _me(bearer(tokens["access_token"])) == 403
    assert _me({"x-api-key": key}) == 403


def test_an_admin_cannot_demote_or_suspend_themselves(db: Db) -> None:
    # Given two admins
    me, _other = _admin(db), _admin(db)
    for body in ({"role": "USER"}, {"status": "SUSPENDED"}, {"role": "SUPPORT", "status": "ACTIVE"}):
        # When one changes their own role or status
        response = api_call("PATCH", f"/admin/users/{me.id}", body=body, as_user=me)
        # Then it is a 409 and nothing changed, nothing was audited
        assert response.status == 409 and response.error_code == "cannot_change_own_access", response.json
    with db() as uow:
        assert uow.session.get(User, me.id).role == "ADMIN"  # type: ignore[union-attr]
    assert _audits(db, me.id) == []


def test_the_last_active_admin_cannot_be_demoted_or_suspended(db: Db) -> None:
    # Given exactly one other active admin beside the caller, and no one else
    with db() as uow:
        uow.session.execute(update(User).where(User.role == "ADMIN").values(role="USER"))
        uow.commit()
    caller, target = _admin(db), _admin(db)
    # When the caller demotes the other admin, it works (the caller is still an admin)
    assert api_call("PATCH", f"/admin/users/{target.id}", body={"role": "USER"}, as_user=caller).status == 200
    # And when the demoted one is made admin again and then the caller is suspended from a token that still says
    # ADMIN but whose user no longer is (the last active admin stands alone)
    assert api_call("PATCH", f"/admin/users/{target.id}", body={"role": "ADMIN"}, as_user=caller).status == 200
    with db() as uow:
        uow.session.execute(update(User).where(User.id == target.id).values(status="SUSPENDED"))
        uow.commit()
    response = api_call("PATCH", f"/admin/users/{caller.id}", body={"role": "USER"}, as_user=target, role="ADMIN")
    # Then the last active admin is not demoted: 409 last_admin, nothing written
    assert response.status == 409 and response.error_code == "last_admin", response.json
    with db() as uow:
        assert uow.session.get(User, caller.id).role == "ADMIN"  # type: ignore[union-attr]
    assert [a.action for a in _audits(db, caller.id)] == []


def test_bad_patch_bodies_are_refused_and_write_nothing(db: Db) -> None:
    # Given an admin and a customer
    admin, customer = _admin(db), _admin(db, role="USER")
    for body, status in [
        ({}, 422),
        ({"role": "ROOT"}, 422),
        ({"status": "LOCKED"}, 422),
        ({"status": "DELETED"}, 422),
        ({"role": "USER", "extra": 1}, 422),
        ({"role": None}, 422),
    ]:
        # When the PATCH carries nothing, an unknown value or an unknown field
        response = api_call("PATCH", f"/admin/users/{customer.id}", body=body, as_user=admin)
        # Then it is a 4xx with a code
        assert response.status == status and response.error_code, (body, response.json)
    # And an unknown user is a 404
    missing = api_call("PATCH", f"/admin/users/{uuid.uuid4()}", body={"role": "USER"}, as_user=admin)
    assert missing.status == 404 and missing.error_code == "user_not_found"
    # And nothing was written
    with db() as uow:
        row = uow.session.get(User, customer.id)
        assert row is not None and (row.role, row.status) == ("USER", "ACTIVE")
    assert _audits(db, customer.id) == []


def test_a_role_change_is_audited_with_old_and_new_values(db: Db) -> None:
    # Given an admin and a customer
    admin, customer = _admin(db), _admin(db, role="USER")
    # When the customer is made SUPPORT, and the same change is sent again
    first = api_call("PATCH", f"/admin/users/{customer.id}", body={"role": "SUPPORT"}, as_user=admin)
    again = api_call("PATCH", f"/admin/users/{customer.id}", body={"role": "SUPPORT"}, as_user=admin)
    # Then both answer the user as SUPPORT, and one audit row records the change (the repeat changed nothing)
    assert first.status == again.status == 200 and first.json["role"] == "SUPPORT"
    rows = _audits(db, customer.id)
    assert [(r.action, r.old_values, r.new_values, r.actor_id) for r in rows] == [
        ("user.role_change", {"role": "USER"}, {"role": "SUPPORT"}, admin.id)
    ]


def test_two_admins_demoting_each_other_at_once_leave_one_admin(db: Db) -> None:
    # Given exactly two active admins
    with db() as uow:
        uow.session.execute(update(User).where(User.role == "ADMIN").values(role="USER"))
        uow.commit()
    first, second = _admin(db), _admin(db)
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def demote(actor: User, target: User) -> None:
        barrier.wait()
        try:
            user_admin.update_user(UnitOfWork(), Actor.user(actor.id, "ADMIN"), target.id, role="USER")
            outcomes[str(actor.id)] = "done"
        except LastAdmin:
            outcomes[str(actor.id)] = "last_admin"

    # When each demotes the other at the same moment
    threads = [threading.Thread(target=demote, args=pair) for pair in ((first, second), (second, first))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # Then one wins, the other is refused, and one active admin is left
    assert sorted(outcomes.values()) == ["done", "last_admin"]
    with db() as uow:
        admins = uow.session.execute(select(func.count()).select_from(User).where(User.role == "ADMIN")).scalar_one()
    assert admins == 1

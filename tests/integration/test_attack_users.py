# ruff: noqa: F811  (pytest fixtures imported from helper modules are redefined as parameters)
"""Attacks on user management and GDPR (issue 14), through the real gateway and authorizer where a route is
involved: staff keys and stale verdicts, role escalation, bad PATCH bodies, sign-ins and token refreshes racing a
suspension or an erasure, provider events for an erased person, what an export may show of other people, and the
search edge."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, text

from tests.conftest import PROVIDER_FIXTURES
from tests.gateway_support import api_key_for
from tests.integration.auth_helpers import PASSWORD, AuthEnv, auth_env, bearer  # noqa: F401
from tests.integration.test_auth_authorizer import _Jwks, clerk  # noqa: F401
from tests.payments_support import Catalogue, catalogue, payments_env, send_clerk, send_stripe  # noqa: F401
from tests.support import api_call, edited, make_user
from tollgate import ledger
from tollgate.auth import passwords
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.db.engine import build_engine, build_session_factory
from tollgate.errors import AccountDisabled, InvalidCredentials
from tollgate.models import User
from tollgate.models.support import SupportTicket, TicketMessage
from tollgate.services import gdpr, identity
from tollgate.services.authz import Actor
from tollgate.storage import get_storage
from tollgate_local.webhooks_cli import stripe_checkout_session, stripe_event

Db = Callable[[], UnitOfWork]


def _user(db: Db, role: str = "USER", **fields: Any) -> User:
    with db() as uow:
        user = make_user(uow.session, role=role, **fields)
        uow.commit()
        uow.session.expunge(user)
        return user


def _signed_in(db: Db, auth_env: AuthEnv, role: str = "USER") -> tuple[User, dict[str, str]]:
    """A registered, verified user of `role` and the bearer header of a fresh sign-in."""
    email = auth_env.register_verified()
    with db() as uow:
        user = uow.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one()
        user.role = role
        uow.commit()
        uow.session.expunge(user)
    return user, bearer(auth_env.login(email)["access_token"])


def _row(db: Db, user_id: uuid.UUID) -> Any:
    with db() as uow:
        return uow.session.execute(
            text("SELECT email, role, status, deleted_at, clerk_id FROM users WHERE id = :u"), {"u": user_id}
        ).one()


def _count(db: Db, sql: str, **params: Any) -> int:
    with db() as uow:
        return int(uow.session.execute(text(sql), params).scalar_one())


def _user_audits(db: Db, user_id: uuid.UUID) -> int:
    """Admin changes about the user (their own sign-in and key events are security events, `auth.*`)."""
    sql = "SELECT count(*) FROM audit_logs WHERE target_type = 'user' AND target_id = :t AND action LIKE 'user.%'"
    return _count(db, sql, t=str(user_id))


def _gw(method: str, path: str, headers: dict[str, str], body: Any = None, query: str = "") -> Any:
    return api_call(method, path, body=body, query=query, headers=headers, through_authorizer=True)


# --- who may call what, with which credential -------------------------------------------------------------------
def test_support_with_an_admin_scoped_key_reads_but_never_changes_exports_or_erases(db: Db, auth_env: AuthEnv) -> None:
    # Given a SUPPORT agent with a session and a key holding the `admin` scope, and a customer
    agent, session = _signed_in(db, auth_env, role="SUPPORT")
    key = {"x-api-key": api_key_for(agent.id, scopes=("admin",))}
    customer = _user(db)
    base = f"/admin/users/{customer.id}"
    # When the agent reads with either credential, Then it works
    for headers in (session, key):
        assert _gw("GET", "/admin/users", headers).status == 200
        assert _gw("GET", base, headers).status == 200
    # When the agent tries to promote anyone (themselves included), export or erase with either credential
    for headers in (session, key):
        assert _gw("PATCH", base, headers, {"role": "ADMIN"}).status == 403
        assert _gw("PATCH", f"/admin/users/{agent.id}", headers, {"role": "ADMIN"}).status == 403
        assert _gw("POST", base + "/export", headers).status == 403
        assert _gw("POST", base + "/erase", headers).status == 403
    # Then nothing changed and nothing was audited
    assert _row(db, customer.id).role == "USER" and _row(db, agent.id).role == "SUPPORT"
    assert _row(db, customer.id).deleted_at is None
    assert _user_audits(db, customer.id) == 0 and _user_audits(db, agent.id) == 0


def test_a_customer_reads_no_one_through_the_admin_routes(db: Db, auth_env: AuthEnv) -> None:
    # Given a signed-in customer and another person
    me, session = _signed_in(db, auth_env)
    other = _user(db)
    # When the customer asks for the list, the other person's page or their own, Then each is 403
    for path in ("/admin/users", f"/admin/users/{other.id}", f"/admin/users/{me.id}"):
        response = _gw("GET", path, session)
        assert response.status == 403, path
        assert other.email not in response.body.decode()


def test_an_admin_api_key_cannot_change_access_export_or_erase(db: Db, auth_env: AuthEnv) -> None:
    # Given an admin's key with the `admin` scope (a key is not the person: it may leak from a script), and a
    # second admin and a customer
    admin, session = _signed_in(db, auth_env, role="ADMIN")
    key = {"x-api-key": api_key_for(admin.id, scopes=("admin",))}
    other_admin, customer = _user(db, role="ADMIN"), _user(db)
    # When the key demotes the other admin, suspends or promotes the customer, exports or erases them
    refused = [
        _gw("PATCH", f"/admin/users/{other_admin.id}", key, {"role": "USER"}),
        _gw("PATCH", f"/admin/users/{customer.id}", key, {"status": "SUSPENDED"}),
        _gw("PATCH", f"/admin/users/{customer.id}", key, {"role": "ADMIN"}),
        _gw("POST", f"/admin/users/{customer.id}/export", key),
        _gw("POST", f"/admin/users/{customer.id}/erase", key),
    ]
    # Then each is refused and nothing changed or was audited
    assert [r.status for r in refused] == [403] * 5
    assert _row(db, other_admin.id).role == "ADMIN"
    assert (_row(db, customer.id).role, _row(db, customer.id).status) == ("USER", "ACTIVE")
    assert _user_audits(db, customer.id) == 0 and _user_audits(db, other_admin.id) == 0
    # And the key still reads, while the admin's session does what the key could not
    assert _gw("GET", f"/admin/users/{customer.id}", key).status == 200
    assert _gw("PATCH", f"/admin/users/{customer.id}", session, {"role": "SUPPORT"}).status == 200
    assert _gw("POST", f"/admin/users/{customer.id}/export", session).status == 200


def test_an_admin_api_key_cannot_change_run_time_settings(db: Db, auth_env: AuthEnv) -> None:
    # Given an admin's key with the `admin` scope (the settings hold the goodwill caps and the bonus toggle)
    admin, session = _signed_in(db, auth_env, role="ADMIN")
    key = {"x-api-key": api_key_for(admin.id, scopes=("admin",))}
    body = {"value": "5000", "type": "number"}
    # When the key raises the goodwill cap
    refused = _gw("PUT", "/admin/system-config/support_goodwill_cap", key, body)
    # Then it is refused, while the key still reads the settings and the admin's session changes them
    assert refused.status == 403
    assert _gw("GET", "/admin/system-config", key).status == 200
    assert _gw("PUT", "/admin/system-config/support_goodwill_cap", session, body).status == 200


@pytest.mark.parametrize("change", [{"role": "USER"}, {"status": "SUSPENDED"}])
def test_an_admin_demoted_or_suspended_meanwhile_cannot_act_on_a_stale_verdict(db: Db, change: dict[str, str]) -> None:
    # Given two admins and a customer, and the first admin demoted or suspended by the second
    stale, other, customer = _user(db, role="ADMIN"), _user(db, role="ADMIN"), _user(db)
    assert api_call("PATCH", f"/admin/users/{stale.id}", body=change, as_user=other).status == 200
    # When the first still calls as ADMIN (what a warm authorizer cache says for AUTHORIZER_CACHE_SECONDS)
    calls = [
        api_call("PATCH", f"/admin/users/{customer.id}", body={"role": "ADMIN"}, as_user=stale, role="ADMIN"),
        api_call("PATCH", f"/admin/users/{other.id}", body={"status": "SUSPENDED"}, as_user=stale, role="ADMIN"),
        api_call("POST", f"/admin/users/{customer.id}/export", as_user=stale, role="ADMIN"),
        api_call("POST", f"/admin/users/{customer.id}/erase", as_user=stale, role="ADMIN"),
    ]
    # Then the database's role decides: every call is refused (403; suspending the admin who is now the only
    # active one is 409 last_admin) and nothing changed
    assert [c.status for c in calls] == [403, 409, 403, 403], [c.json for c in calls]
    assert _row(db, customer.id).role == "USER" and _row(db, customer.id).deleted_at is None
    assert _row(db, other.id).status == "ACTIVE"
    assert _user_audits(db, customer.id) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"role": "OPERATOR"},
        {"role": "admin"},
        {"role": "ADMIN "},
        {"status": "LOCKED"},
        {"status": "DELETED"},
        {"status": None},
        {"role": None},
        {},
        {"role": "ADMIN", "email": "x@example.com"},
        {"role": ["ADMIN"]},
        {"status": {"value": "ACTIVE"}},
        {"role": "A" * 10_000},
    ],
)
def test_bad_patch_bodies_are_422_and_write_nothing(db: Db, body: dict[str, Any]) -> None:
    # Given an admin and a customer
    admin, customer = _user(db, role="ADMIN"), _user(db)
    # When the admin sends a body naming no settable role or status, or more than role and status
    response = api_call("PATCH", f"/admin/users/{customer.id}", body=body, as_user=admin)
    # Then it is a 422 with a code, and the customer and the audit trail are untouched
    assert response.status == 422, response.json
    assert response.error_code == "validation_error"
    row = _row(db, customer.id)
    assert (row.role, row.status, row.email) == ("USER", "ACTIVE", customer.email)
    assert _user_audits(db, customer.id) == 0


def test_an_admin_cannot_suspend_demote_or_erase_themselves_nor_patch_an_erased_account(db: Db) -> None:
    # Given two admins and an erased customer
    admin, _other, customer = _user(db, role="ADMIN"), _user(db, role="ADMIN"), _user(db)
    assert api_call("POST", f"/admin/users/{customer.id}/erase", as_user=admin).status == 200
    # When the admin changes their own access or erases themselves
    own = [
        api_call("PATCH", f"/admin/users/{admin.id}", body={"status": "SUSPENDED"}, as_user=admin),
        api_call("PATCH", f"/admin/users/{admin.id}", body={"role": "SUPPORT"}, as_user=admin),
        api_call("POST", f"/admin/users/{admin.id}/erase", as_user=admin),
    ]
    # Then each is 409 cannot_change_own_access
    assert [(r.status, r.error_code) for r in own] == [(409, "cannot_change_own_access")] * 3
    # And an erased account cannot be brought back to life by a PATCH
    back = api_call("PATCH", f"/admin/users/{customer.id}", body={"status": "ACTIVE"}, as_user=admin)
    assert back.status == 409 and _row(db, customer.id).status == "DELETED"


# --- a suspended or erased person's other ways in ----------------------------------------------------------------
def test_a_reset_link_mailed_before_the_suspension_does_not_reopen_the_account(db: Db, auth_env: AuthEnv) -> None:
    # Given a customer who asked for a password reset, then was suspended
    email = auth_env.register_verified()
    assert api_call("POST", "/auth/password/forgot", body={"email": email}).status == 202
    link = auth_env.token_from(email, "password_reset")
    with db() as uow:
        customer_id = uow.session.execute(select(User.id).where(func.lower(User.email) == email)).scalar_one()
    admin = _user(db, role="ADMIN")
    body = {"status": "SUSPENDED"}
    assert api_call("PATCH", f"/admin/users/{customer_id}", body=body, as_user=admin).status == 200
    # When the link is used and the customer signs in with the new password
    reset = api_call("POST", "/auth/password/reset", body={"token": link, "password": "An0ther-long-passw0rd!"})
    login = api_call("POST", "/auth/login", body={"email": email, "password": "An0ther-long-passw0rd!"})
    # Then neither works, and the account stays suspended with no live session
    assert reset.status >= 400 and login.status >= 400
    assert _row(db, customer_id).status == "SUSPENDED"
    assert _count(db, "SELECT count(*) FROM sessions WHERE user_id = :u AND revoked_at IS NULL", u=customer_id) == 0
    # And a new forgot-password mails nothing
    before = auth_env.mail_count(email, "password_reset")
    assert api_call("POST", "/auth/password/forgot", body={"email": email}).status == 202
    assert auth_env.mail_count(email, "password_reset") == before


@pytest.fixture
def slow_password_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """The password check of a sign-in pauses (`entered` set) until `release` is set: the window in which an
    admin's change can land between the sign-in reading the account and writing its session."""
    entered, release = threading.Event(), threading.Event()
    real = passwords.verify_password

    def paused(stored: str | None, password: str) -> bool:
        result = real(stored, password)
        if threading.current_thread().name == "racing-login":
            entered.set()
            assert release.wait(20)
        return result

    monkeypatch.setattr(passwords, "verify_password", paused)
    yield entered, release
    release.set()


@pytest.mark.parametrize("action", ["suspend", "erase"])
def test_a_sign_in_racing_a_suspension_or_an_erasure_gets_no_session(
    db: Db, auth_env: AuthEnv, slow_password_check: tuple[threading.Event, threading.Event], action: str
) -> None:
    # Given a customer whose sign-in has checked the password but not yet written its session
    entered, release = slow_password_check
    email = auth_env.register_verified()
    with db() as uow:
        customer_id = uow.session.execute(select(User.id).where(func.lower(User.email) == email)).scalar_one()
    outcome: list[object] = []
    # The sign-in runs as another container would: its own engine, built from the same settings. (One process
    # shares one pool; with the template's pool of one the paused sign-in would hold the admin's connection.)
    container = build_engine(get_settings())

    def sign_in() -> None:
        try:
            uow = UnitOfWork(build_session_factory(container))
            outcome.append(identity.login(uow, email, PASSWORD, identity.ClientInfo("198.51.100.7", "ua")))
        except Exception as exc:
            outcome.append(exc)

    racer = threading.Thread(target=sign_in, name="racing-login")
    racer.start()
    assert entered.wait(20)
    # When an admin suspends or erases the account in that window
    admin = _user(db, role="ADMIN")
    if action == "suspend":
        response = api_call("PATCH", f"/admin/users/{customer_id}", body={"status": "SUSPENDED"}, as_user=admin)
    else:
        response = api_call("POST", f"/admin/users/{customer_id}/erase", as_user=admin)
    assert response.status == 200, response.json
    release.set()
    racer.join(30)
    container.dispose()
    # Then the sign-in is refused and no session row was written after the change (none kept the IP either)
    assert len(outcome) == 1 and isinstance(outcome[0], AccountDisabled | InvalidCredentials), outcome
    assert _count(db, "SELECT count(*) FROM sessions WHERE user_id = :u AND revoked_at IS NULL", u=customer_id) == 0
    if action == "erase":
        assert _count(db, "SELECT count(*) FROM sessions WHERE user_id = :u", u=customer_id) == 0
        assert _row(db, customer_id).status == "DELETED"
    else:
        # And reactivating the account later brings back no session minted during the suspension
        body = {"status": "ACTIVE"}
        assert api_call("PATCH", f"/admin/users/{customer_id}", body=body, as_user=admin).status == 200
        live = "SELECT count(*) FROM sessions WHERE user_id = :u AND revoked_at IS NULL"
        assert _count(db, live, u=customer_id) == 0


def test_an_admin_emails_address_demoted_by_an_admin_stays_demoted(
    db: Db, auth_env: AuthEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an address in ADMIN_EMAILS whose account is an ADMIN, and a second admin
    email = f"boss-{uuid.uuid4().hex[:8]}@example.com"
    auth_env.set(ADMIN_EMAILS=email)
    auth_env.register_verified(email)
    with db() as uow:
        boss = uow.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one()
        boss_id = boss.id
    assert _row(db, boss_id).role == "ADMIN"
    other = _user(db, role="ADMIN")
    # When the second admin demotes them, and they sign in again
    assert api_call("PATCH", f"/admin/users/{boss_id}", body={"role": "USER"}, as_user=other).status == 200
    tokens = auth_env.login(email)
    # Then they are still a USER: an explicit demotion outlives the list
    assert _row(db, boss_id).role == "USER"
    assert _gw("GET", "/admin/users", bearer(tokens["access_token"])).status == 403
    # And an ADMIN_EMAILS address nobody demoted is still promoted at sign-in
    fresh = f"boss2-{uuid.uuid4().hex[:8]}@example.com"
    auth_env.set(ADMIN_EMAILS=f"{email},{fresh}")
    auth_env.register_verified(fresh)
    with db() as uow:
        uow.session.execute(text("UPDATE users SET role = 'USER' WHERE lower(email) = :e"), {"e": fresh})
        uow.commit()
    auth_env.login(fresh)
    with db() as uow:
        role = uow.session.execute(text("SELECT role FROM users WHERE lower(email) = :e"), {"e": fresh}).scalar_one()
    assert role == "ADMIN"


# --- provider events for an erased person ------------------------------------------------------------------------
def _clerk_event(event_type: str) -> dict[str, Any]:
    event = json.loads((PROVIDER_FIXTURES / "clerk" / "user.created.json").read_text())
    event["type"] = event_type
    event["data"]["email_addresses"][0]["verification"]["status"] = "verified"
    return event


def test_clerk_events_and_tokens_for_an_erased_person_recreate_nothing(
    db: Db, clerk: _Jwks, payments_env: None
) -> None:
    # Given a Clerk user kept in step by webhooks, then erased by an admin
    created = _clerk_event("user.created")
    clerk_id, email = created["data"]["id"], created["data"]["email_addresses"][0]["email_address"]
    assert send_clerk(created, msg_id=f"msg_{uuid.uuid4().hex}").status == 200
    with db() as uow:
        person_id = uow.session.execute(select(User.id).where(User.clerk_id == clerk_id)).scalar_one()
    admin = _user(db, role="ADMIN")
    assert api_call("POST", f"/admin/users/{person_id}/erase", as_user=admin).status == 200
    # When Clerk sends an update for them, and their still-valid Clerk session token calls the API
    updated = send_clerk(_clerk_event("user.updated"), msg_id=f"msg_{uuid.uuid4().hex}")
    me = _gw("GET", "/auth/me", bearer(clerk.token(sub=clerk_id, email=email)))
    # Then the event is answered without error, the token is refused, and no account holds their email or name
    assert updated.status == 200, updated.json
    assert me.status in (401, 403)
    assert _count(db, "SELECT count(*) FROM users WHERE lower(email) = lower(:e)", e=email) == 0
    assert _count(db, "SELECT count(*) FROM users WHERE id <> :a AND id <> :p", a=admin.id, p=person_id) == 0
    assert _row(db, person_id).status == "DELETED"
    with db() as uow:
        name = uow.session.execute(text("SELECT name FROM users WHERE id = :p"), {"p": person_id}).scalar_one()
    assert name is None


def test_a_stripe_payment_for_an_erased_customer_id_never_reaches_whoever_registers_the_email_next(
    db: Db, auth_env: AuthEnv, payments_env: None, catalogue: Catalogue
) -> None:
    # Given an erased customer who paid through Stripe (customer id kept), and someone who registered the freed
    # email afterwards
    email = auth_env.register_verified()
    customer_id = f"cus_{uuid.uuid4().hex[:14]}"
    with db() as uow:
        old = uow.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one()
        old.stripe_customer_id = customer_id
        old_id = old.id
        uow.commit()
    admin = _user(db, role="ADMIN")
    assert api_call("POST", f"/admin/users/{old_id}/erase", as_user=admin).status == 200
    auth_env.register_verified(email)
    with db() as uow:
        new_id = uow.session.execute(select(User.id).where(func.lower(User.email) == email)).scalar_one()
    # When a late checkout completes for the old customer id, naming no user (the dashboard, a payment link)
    session = stripe_checkout_session(
        user_id="", item_id=str(catalogue.pack_id), amount_minor=500, currency="usd", customer=customer_id
    )
    session["client_reference_id"] = None
    session["metadata"] = {"kind": "pack", "item_id": str(catalogue.pack_id)}
    session["customer_details"] = {**(session.get("customer_details") or {}), "email": email, "name": "Old Name"}
    answer = send_stripe(stripe_event("checkout.session.completed", session))
    # Then it is handled without a 5xx, the new account gets nothing, and the erased one stays erased
    assert answer.status < 500, answer.json
    # And the customer id decides: the payment is recorded on the erased account, kept for the accounting
    assert _count(db, "SELECT count(*) FROM purchases WHERE user_id = :u", u=old_id) == 1
    granted_new = "SELECT count(*) FROM credit_grants WHERE user_id = :u AND kind = 'purchase'"
    assert _count(db, granted_new, u=new_id) == 0
    assert _count(db, "SELECT count(*) FROM purchases WHERE user_id = :u", u=new_id) == 0
    row = _row(db, old_id)
    assert row.status == "DELETED" and row.email.endswith("@erased.invalid")
    with db() as uow:
        name = uow.session.execute(text("SELECT name FROM users WHERE id = :p"), {"p": old_id}).scalar_one()
    assert name is None


# --- what an export shows of other people ------------------------------------------------------------------------
def test_an_export_shows_no_other_persons_data(db: Db, auth_env: AuthEnv) -> None:
    # Given a support agent who handled another customer's ticket and changed that customer's data, a customer
    # whose page an admin changed from an address of their own, and a third admin who exports the agent
    admin, agent_session = _signed_in(db, auth_env, role="ADMIN")
    agent = _user(db, role="SUPPORT")
    customer = _user(db, name="Bob Customer")
    with db() as uow:
        ticket = SupportTicket(customer_id=customer.id, subject="Bob's refund", description="Bob's address is ...")
        uow.session.add(ticket)
        uow.session.flush()
        uow.session.add_all([
            TicketMessage(ticket_id=ticket.id, user_id=customer.id, content="I am Bob, at 1 Main St"),
            TicketMessage(ticket_id=ticket.id, user_id=agent.id, content="Hi Bob, refund sent", from_staff=True),
        ])  # fmt: skip
        uow.session.execute(
            text(
                "INSERT INTO audit_logs (id, actor_id, action, target_type, target_id, details, old_values, "
                "new_values, ip_address, user_agent, created_at) VALUES (:id, :actor, 'user.role_change', 'user', "
                ":target, CAST(:d AS jsonb), CAST(:o AS jsonb), CAST(:n AS jsonb), '192.0.2.50', 'AgentBrowser', "
                ":now)"
            ),
            {"id": uuid.uuid4(), "actor": agent.id, "target": str(customer.id), "d": json.dumps({"email": "bob@x"}),
             "o": json.dumps({"name": "Bob Customer"}), "n": json.dumps({"name": "Bob C"}), "now": utcnow()},
        )  # fmt: skip
        uow.commit()
    # And the admin changed the customer's role from their own browser
    headers = {**agent_session, "user-agent": "AdminBrowser/1.0"}
    assert _gw("PATCH", f"/admin/users/{customer.id}", headers, {"role": "SUPPORT"}).status == 200
    # When the admin exports the agent, and then the customer
    staff_export = _gw("POST", f"/admin/users/{agent.id}/export", agent_session)
    customer_export = _gw("POST", f"/admin/users/{customer.id}/export", agent_session)
    assert staff_export.status == 200 and customer_export.status == 200
    # Then the agent's export holds none of Bob's words, values or id
    staff_text = staff_export.body.decode()
    for leaked in ("1 Main St", "Hi Bob", "Bob Customer", "Bob C", "bob@x", str(customer.id)):
        assert leaked not in staff_text, leaked
    # And the agent's own action is still there, with their own address
    [row] = staff_export.json["sections"]["audit_logs"]
    assert row["action"] == "user.role_change" and row["ip_address"] == "192.0.2.50"
    # And the customer's export shows what was done to them, but not the staff's addresses or browsers
    customer_text = customer_export.body.decode()
    assert "Hi Bob, refund sent" in customer_text and "I am Bob" in customer_text
    assert "AdminBrowser" not in customer_text and "AgentBrowser" not in customer_text
    assert "192.0.2.50" not in customer_text
    assert {r["action"] for r in customer_export.json["sections"]["audit_logs"]} >= {"user.role_change"}
    del admin


# --- search, filters and cursors --------------------------------------------------------------------------------
def test_search_text_edges_are_literal_bounded_and_never_a_5xx(db: Db) -> None:
    # Given an admin and users whose emails hold a backslash, a % and an _
    admin = _user(db, role="ADMIN")
    tag = uuid.uuid4().hex[:8]
    back = _user(db, email=f"b\\s{tag}@example.com")
    _user(db, email=f"bxs{tag}@example.com")

    def search(query: str) -> Any:
        return api_call("GET", "/admin/users", query=query, as_user=admin)

    # When staff search for a backslash sequence, Then it matches only itself
    found = search(f"q=b%5Cs{tag}")
    assert found.status == 200 and [u["id"] for u in found.json["items"]] == [str(back.id)]
    # And a lone % or _ or \ is a literal (no table scan of every user as a match-all)
    for lone in ("%25", "_", "%5C"):
        answer = search(f"q={lone}{tag}")
        assert answer.status == 200
        assert all(tag in u["email"] for u in answer.json["items"])
    # When the text is 10 KB, holds a NUL, or is only spaces, Then it is a 4xx with a code, never a 5xx
    for query in ("q=" + "a" * 10_000, "q=a%00b", "q=%20%20%20", "status=ACTIVE%00", "tier=PRO%00"):
        answer = search(query)
        assert 400 <= answer.status < 500, (query[:40], answer.status, answer.json)
        assert answer.error_code, query[:40]


def test_cursors_cannot_be_forged_nor_widen_another_filter(db: Db) -> None:
    # Given an admin, three suspended users and three active ones of one tier
    admin = _user(db, role="ADMIN")
    tier = f"T{uuid.uuid4().hex[:6].upper()}"
    now = utcnow()
    suspended = {
        str(_user(db, tier=tier, status="SUSPENDED", created_at=now - timedelta(minutes=i)).id) for i in range(3)
    }
    for i in range(3):
        _user(db, tier=tier, created_at=now - timedelta(minutes=10 + i))
    first = api_call("GET", "/admin/users", query=f"tier={tier}&limit=1", as_user=admin).json
    cursor = first["next_cursor"]
    # When the cursor of the unfiltered list is replayed with a status filter
    swapped = api_call("GET", "/admin/users", query=f"tier={tier}&status=SUSPENDED&cursor={cursor}", as_user=admin)
    # Then the filter still holds (a cursor is only a position)
    assert swapped.status == 200
    assert {u["id"] for u in swapped.json["items"]} <= suspended
    # When a cursor is edited, truncated, or made of a different list's position
    for bad in (edited(cursor), cursor[:10], "e30", "%00", "x" * 5000):
        answer = api_call("GET", "/admin/users", query=f"tier={tier}&cursor={bad}", as_user=admin)
        # Then it is a 4xx, never a 5xx
        assert 400 <= answer.status < 500, (bad[:20], answer.status)


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "10000-01-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-01-01T00:00:00",
        "2026-01-01",
        "1700000000",
        "-1",
        "2026-01-01T00:00:00+99:00",
        "nan",
        "",
    ],
)
def test_creation_range_edges_are_a_2xx_or_a_4xx(db: Db, value: str) -> None:
    # Given an admin
    admin = _user(db, role="ADMIN")
    # When the list is bounded by an edge value on either side
    for name in ("created_since", "created_until"):
        answer = api_call("GET", "/admin/users", query=f"{name}={value}", as_user=admin)
        # Then the answer is a 200 or a 4xx with a code, never a 5xx
        assert answer.status == 200 or (400 <= answer.status < 500 and answer.error_code), (name, value, answer.json)


def test_two_erasures_at_once_erase_once_and_audit_the_second_as_a_repeat(db: Db) -> None:
    # Given two admins and a customer with credits
    first, second, customer = _user(db, role="ADMIN"), _user(db, role="ADMIN"), _user(db)
    with db() as uow:
        ledger.grant(uow.session, customer.id, kind="promo", amount=Decimal("5"), source_key="promo:erase-race")
        uow.commit()
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def erase(actor: User) -> None:
        barrier.wait()
        try:
            outcomes.append(gdpr.erase_user(UnitOfWork(), get_storage(), Actor.user(actor.id, "ADMIN"), customer.id))
        except Exception as exc:
            outcomes.append(exc)

    # When both admins erase the customer at the same moment
    threads = [threading.Thread(target=erase, args=(a,)) for a in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Then one erased and the other found it erased (no error), and the audit trail says so once each
    assert sorted(getattr(o, "already_erased", o) for o in outcomes) == [False, True], outcomes  # type: ignore[type-var]
    with db() as uow:
        repeats = uow.session.execute(
            text("SELECT details->>'repeat' FROM audit_logs WHERE action = 'user.erase' AND target_id = :t"),
            {"t": str(customer.id)},
        ).scalars()
        assert sorted(repeats) == ["false", "true"]
    # And the ledger is untouched
    assert _count(db, "SELECT count(*) FROM credit_transactions WHERE user_id = :u", u=customer.id) >= 1


def test_a_token_refresh_racing_a_suspension_leaves_no_live_session(
    db: Db, auth_env: AuthEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a signed-in customer whose refresh has locked its session row and read the account, and pauses
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    with db() as uow:
        customer_id = uow.session.execute(select(User.id).where(func.lower(User.email) == email)).scalar_one()
    entered, release = threading.Event(), threading.Event()
    real = identity.issue_access_token  # type: ignore[attr-defined]  # the name the service calls

    def paused(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "racing-refresh":
            entered.set()
            release.wait(5)
        return real(*args, **kwargs)

    monkeypatch.setattr(identity, "issue_access_token", paused)
    outcome: dict[str, object] = {}

    def refresh() -> None:
        try:
            outcome["refresh"] = identity.refresh(UnitOfWork(), tokens["refresh_token"], identity.ClientInfo("", ""))
        except Exception as exc:
            outcome["refresh"] = exc

    admin = _user(db, role="ADMIN")

    def suspend() -> None:
        body = {"status": "SUSPENDED"}
        outcome["suspend"] = api_call("PATCH", f"/admin/users/{customer_id}", body=body, as_user=admin).status

    racer = threading.Thread(target=refresh, name="racing-refresh")
    racer.start()
    assert entered.wait(20)
    # When an admin suspends the customer in that window
    suspender = threading.Thread(target=suspend)
    suspender.start()
    threading.Timer(0.5, release.set).start()
    racer.join(30)
    suspender.join(30)
    # Then the suspension holds and no session of the customer is live
    assert outcome["suspend"] == 200, outcome
    assert _row(db, customer_id).status == "SUSPENDED"
    live = "SELECT count(*) FROM sessions WHERE user_id = :u AND revoked_at IS NULL"
    assert _count(db, live, u=customer_id) == 0

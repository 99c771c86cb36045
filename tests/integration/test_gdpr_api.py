# ruff: noqa: F811  (pytest fixtures imported from helper modules are redefined as parameters)
"""GDPR through the gateway: the export holds the person's data and no secret; the erasure anonymises the person,
ends every credential, removes their files, redacts their mail, keeps the ledger and purchases (which still
reconcile), frees the email for a new account, and is idempotent and audited."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text

from tests.files_support import FileEnv, files_env  # noqa: F401
from tests.gateway_support import api_key_for
from tests.integration.auth_helpers import PASSWORD, AuthEnv, auth_env, bearer  # noqa: F401
from tests.support import api_call, make_user, project_gateway
from tollgate import ledger
from tollgate.auth.secrets import hash_secret
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.models import User
from tollgate.models.payments import Purchase, Subscription
from tollgate.models.support import SupportTicket, TicketMessage
from tollgate.services import files
from tollgate.storage import get_storage
from tollgate.storage.local import LocalStorage
from tollgate_local.schedules import scheduled_event

Db = Callable[[], UnitOfWork]
TOTP_SECRET = "sealed-totp-secret-that-must-never-leave"
INTERNAL_NOTE = "staff only: customer seems annoyed"


def _one(db: Db, sql: str, **params: Any) -> Any:
    with db() as uow:
        return uow.session.execute(text(sql), params).scalar_one()


def _admin(db: Db) -> User:
    with db() as uow:
        user = make_user(uow.session, role="ADMIN")
        uow.commit()
        uow.session.expunge(user)
        return user


def _customer(db: Db, auth_env: AuthEnv, files_env: FileEnv) -> dict[str, Any]:
    """A signed-in customer with a key, a TOTP secret, credits spent, a purchase, a stored file and mail."""
    email = auth_env.register_verified(name="Rosa Person", username=f"rosa{uuid.uuid4().hex[:6]}")
    tokens = auth_env.login(email)
    with db() as uow:
        user = uow.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one()
        user.totp_pending_secret = TOTP_SECRET
        user_id = user.id
        ledger.grant(uow.session, user_id, kind="promo", amount=Decimal("20"), source_key="promo:gdpr")
        ledger.charge(uow.session, user_id, operation="chat", amount=Decimal("3"), idempotency_key="gdpr-1")
        uow.session.add(
            Purchase(
                provider="stripe", provider_order_id=f"cs_{uuid.uuid4().hex}", user_id=user_id, credits=Decimal("10"),
                amount=Decimal("5.00"), currency="usd", status="completed", package_name="Ten",
            )
        )  # fmt: skip
        uow.session.add(
            Subscription(provider="stripe", provider_subscription_id=f"sub_{uuid.uuid4().hex}", user_id=user_id,
                         status="canceled", ended_at=utcnow())
        )  # fmt: skip
        staff = make_user(uow.session, role="SUPPORT")
        ticket = SupportTicket(customer_id=user_id, subject="Refund?", description="My card was charged twice")
        uow.session.add(ticket)
        uow.session.flush()
        uow.session.add_all([
            TicketMessage(ticket_id=ticket.id, user_id=user_id, content="Any news?"),
            TicketMessage(ticket_id=ticket.id, user_id=staff.id, content="Looking into it", from_staff=True),
            TicketMessage(ticket_id=ticket.id, user_id=staff.id, content=INTERNAL_NOTE, from_staff=True,
                          is_internal=True),
        ])  # fmt: skip
        uow.commit()
    key = api_key_for(user_id, scopes=("profile:read",))
    storage = get_storage()
    upload = files.start_upload(UnitOfWork(), storage, user_id, name="id-card.txt", content_type="text/plain", size=4)
    assert isinstance(storage, LocalStorage)
    path = storage.path_of(upload.file.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"rosa")
    return {"id": user_id, "email": email, "tokens": tokens, "key": key, "file_path": path}


def _reconcile() -> dict[str, Any]:
    gateway = project_gateway()
    schedule = gateway.template.schedules["LedgerReconciliation"]
    result: dict[str, Any] = gateway.runner.invoke(schedule.function_id, scheduled_event(schedule, utcnow()))
    return result


def _me(headers: dict[str, str]) -> int:
    return api_call("GET", "/auth/me", headers=headers, through_authorizer=True).status


def test_the_export_holds_the_persons_data_and_no_secret(db: Db, auth_env: AuthEnv, files_env: FileEnv) -> None:
    # Given a customer with a password, a session, an API key, a TOTP secret, ledger rows, a purchase and a file
    customer = _customer(db, auth_env, files_env)
    admin = _admin(db)
    with db() as uow:
        password_hash = uow.session.get(User, customer["id"]).password_hash  # type: ignore[union-attr]
        key_hash = uow.session.execute(
            text("SELECT key_hash FROM api_keys WHERE user_id = :u"), {"u": customer["id"]}
        ).scalar_one()
    assert password_hash
    # When an admin exports their data
    response = api_call("POST", f"/admin/users/{customer['id']}/export", as_user=admin)
    # Then it is the person's data, section by section
    assert response.status == 200, response.json
    export = response.json
    sections = export["sections"]
    assert export["profile"]["email"] == customer["email"] and export["profile"]["name"] == "Rosa Person"
    assert export["profile"]["has_password"] is True and export["truncated"] == []
    assert len(sections["sessions"]) == 1 and sections["sessions"][0]["ip"]
    assert [k["name"] for k in sections["api_keys"]] == ["tests"]
    assert sorted(Decimal(t["amount"]) for t in sections["ledger"]) == [Decimal(-3), Decimal(10), Decimal(20)]
    assert [p["package_name"] for p in sections["purchases"]] == ["Ten"]
    assert [f["original_name"] for f in sections["files"]] == ["id-card.txt"]
    assert {m["type"] for m in sections["email_logs"]} >= {"verify_email"}
    assert sections["credit_account"][0]["balance"] == "27.0000"  # sign-up 10 + 20 - 3
    assert len(sections["subscriptions"]) == 1 and sections["orders"] == []
    assert [t["subject"] for t in sections["support_tickets"]] == ["Refund?"]
    assert sorted(m["content"] for m in sections["ticket_messages"]) == ["Any news?", "Looking into it"]
    assert INTERNAL_NOTE not in response.body.decode()
    # And no secret appears anywhere in it: not a hash, not a key, not a refresh token, not the TOTP secret
    body = response.body.decode()
    for secret in (password_hash, key_hash, customer["key"], customer["tokens"]["refresh_token"],
                   hash_secret(customer["tokens"]["refresh_token"]), TOTP_SECRET):  # fmt: skip
        assert secret not in body
    for column in ("password_hash", "key_hash", "refresh_token_hash", "token_hash", "totp_secret"):
        assert f'"{column}"' not in body
    # And the export is audited, naming the admin
    assert (
        _one(
            db, "SELECT actor_id FROM audit_logs WHERE action = 'user.export' AND target_id = :t", t=str(customer["id"])
        )
        == admin.id
    )


def test_erase_anonymises_the_person_and_keeps_the_ledger_reconciling(
    db: Db, auth_env: AuthEnv, files_env: FileEnv
) -> None:
    # Given a customer with credentials, credits spent, a purchase, a file and mail, and an admin
    customer = _customer(db, auth_env, files_env)
    user_id, email = customer["id"], customer["email"]
    admin = _admin(db)
    ledger_before = _one(db, "SELECT count(*) FROM credit_transactions WHERE user_id = :u", u=user_id)
    assert _one(db, "SELECT count(*) FROM email_logs WHERE lower(recipient) = :e", e=email) >= 1
    # When the admin erases them
    response = api_call("POST", f"/admin/users/{user_id}/erase", as_user=admin)
    # Then the answer says what went
    assert response.status == 200, response.json
    done = response.json
    assert done["already_erased"] is False and done["files_removed"] == 1
    assert done["removed"]["sessions"] == 1 and done["removed"]["api_keys"] == 1
    # And no credential works any more (a fresh container re-checks at once); the old password signs nobody in
    auth_env.set()
    assert _me(bearer(customer["tokens"]["access_token"])) == 403
    assert _me({"x-api-key": customer["key"]}) == 403
    assert api_call("POST", "/auth/login", body={"email": email, "password": PASSWORD}).status == 401
    refresh = api_call("POST", "/auth/token/refresh", body={"refresh_token": customer["tokens"]["refresh_token"]})
    assert refresh.status == 401
    # And the person is not findable by their email, name or username
    for query in (f"q={email}", "q=Rosa%20Person", "q=rosa"):
        found = api_call("GET", "/admin/users", query=query, as_user=admin).json["items"]
        assert str(user_id) not in {u["id"] for u in found}, query
    # And the row left holds no personal field, cannot sign in, and says it was erased
    with db() as uow:
        user = uow.session.get(User, user_id)
        assert user is not None
        assert user.email == f"erased-{user_id.hex}@erased.invalid"
        assert (user.name, user.username, user.image, user.password_hash) == (None, None, None, None)
        assert (user.totp_secret, user.totp_pending_secret, user.two_factor_enabled) == (None, None, False)
        assert (user.status, user.role) == ("DELETED", "USER") and user.deleted_at is not None
    for table in ("sessions", "api_keys", "oauth_accounts", "verification_tokens", "storage_objects"):
        assert _one(db, f"SELECT count(*) FROM {table} WHERE user_id = :u", u=user_id) == 0, table
    assert not customer["file_path"].exists()
    # And the mail they were sent is kept, redacted
    assert _one(db, "SELECT count(*) FROM email_logs WHERE lower(recipient) = :e", e=email) == 0
    assert _one(db, "SELECT count(*) FROM email_logs WHERE user_id = :u AND subject <> '[erased]'", u=user_id) == 0
    # And the ledger, the balance and the purchase are kept with the user's id, and reconcile
    assert _one(db, "SELECT count(*) FROM credit_transactions WHERE user_id = :u", u=user_id) == ledger_before
    assert _one(db, "SELECT balance FROM credit_accounts WHERE user_id = :u", u=user_id) == Decimal("27")
    assert _one(db, "SELECT count(*) FROM purchases WHERE user_id = :u", u=user_id) == 1
    report = _reconcile()
    assert report["stats"]["mismatches"] == 0 and report["stats"]["users_checked"] >= 1
    assert _one(db, "SELECT count(*) FROM ledger_mismatches") == 0
    # And the audit row names the user by id only: the address is not kept there
    audit = _one(db, "SELECT row_to_json(a)::text FROM audit_logs a WHERE action = 'user.erase'")
    assert email not in audit and json.loads(audit)["target_id"] == str(user_id)


def test_the_freed_email_registers_a_new_account_and_a_second_erase_changes_nothing(
    db: Db, auth_env: AuthEnv, files_env: FileEnv
) -> None:
    # Given an erased customer
    customer = _customer(db, auth_env, files_env)
    admin = _admin(db)
    assert api_call("POST", f"/admin/users/{customer['id']}/erase", as_user=admin).status == 200
    # When someone registers with the same email
    auth_env.register_verified(customer["email"])
    # Then it is a new account that signs in
    with db() as uow:
        fresh = uow.session.execute(select(User).where(func.lower(User.email) == customer["email"])).scalar_one()
        assert fresh.id != customer["id"] and fresh.status == "ACTIVE"
        fresh_id = fresh.id
    assert _me(bearer(auth_env.login(customer["email"])["access_token"])) == 200
    mails_to_new = _one(db, "SELECT count(*) FROM email_logs WHERE lower(recipient) = :e", e=customer["email"])
    assert mails_to_new >= 1
    # When the old account is erased again
    again = api_call("POST", f"/admin/users/{customer['id']}/erase", as_user=admin)
    # Then it answers as done before, touches neither the new account nor its mail, and is audited as a repeat
    assert again.status == 200 and again.json["already_erased"] is True and again.json["removed"] == {}
    assert _one(db, "SELECT email FROM users WHERE id = :u", u=fresh_id) == customer["email"]
    assert _one(db, "SELECT count(*) FROM email_logs WHERE lower(recipient) = :e", e=customer["email"]) == mails_to_new
    repeats = _one(
        db, "SELECT array_agg((details->>'repeat') ORDER BY created_at) FROM audit_logs WHERE action = 'user.erase'"
    )
    assert repeats == ["false", "true"]
    # And an erased account's role and status can no longer change
    patched = api_call("PATCH", f"/admin/users/{customer['id']}", body={"status": "ACTIVE"}, as_user=admin)
    assert patched.status == 409 and patched.error_code == "user_erased"


def test_erase_refuses_a_billing_subscription_and_the_admins_own_account(db: Db, files_env: FileEnv) -> None:
    # Given a customer whose Stripe subscription is still active, and an admin
    admin = _admin(db)
    with db() as uow:
        customer = make_user(uow.session, name="Still Paying")
        uow.session.add(
            Subscription(provider="stripe", provider_subscription_id=f"sub_{uuid.uuid4().hex}",
                         user_id=customer.id, status="active")
        )  # fmt: skip
        uow.commit()
        customer_id, customer_email = customer.id, customer.email
    # When the admin erases the customer, or themselves
    billing = api_call("POST", f"/admin/users/{customer_id}/erase", as_user=admin)
    own = api_call("POST", f"/admin/users/{admin.id}/erase", as_user=admin)
    # Then both are refused with their codes, and nothing was erased or audited
    assert billing.status == 409 and billing.error_code == "subscription_still_billing", billing.json
    assert billing.json["error"]["details"]["subscriptions"][0]["status"] == "active"
    assert own.status == 409 and own.error_code == "cannot_change_own_access"
    assert _one(db, "SELECT email FROM users WHERE id = :u", u=customer_id) == customer_email
    assert _one(db, "SELECT count(*) FROM audit_logs WHERE action = 'user.erase'") == 0
    # And an unknown user is a 404
    missing = api_call("POST", f"/admin/users/{uuid.uuid4()}/erase", as_user=admin)
    assert missing.status == 404 and missing.error_code == "user_not_found"

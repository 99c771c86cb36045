"""Clerk users and ADMIN_EMAILS (issue 11, finding 6): a role comes from ADMIN_EMAILS only for a primary email
that Clerk reports verified. Through the real webhook endpoint with Svix-signed events."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import PROVIDER_FIXTURES
from tests.payments_support import payments_env, send_clerk  # noqa: F401
from tollgate.config import get_settings
from tollgate.db import UnitOfWork

ADMIN = "example@example.org"  # the fixture's primary email


def _event(event_type: str, status: str) -> dict[str, Any]:
    event = json.loads((PROVIDER_FIXTURES / "clerk" / "user.created.json").read_text())
    event["type"] = event_type
    event["data"]["email_addresses"][0]["verification"]["status"] = status
    return event


def _role(db: Callable[[], UnitOfWork]) -> str:
    with db() as uow:
        return str(uow.session.execute(text("SELECT role FROM users WHERE clerk_id IS NOT NULL")).scalar_one())


@pytest.fixture
def admin_email(monkeypatch: pytest.MonkeyPatch, payments_env: None) -> None:  # noqa: F811
    monkeypatch.setenv("ADMIN_EMAILS", ADMIN)
    get_settings.cache_clear()


def test_an_unverified_admin_email_from_clerk_grants_no_admin(db: Callable[[], UnitOfWork], admin_email: None) -> None:
    # Given ADMIN_EMAILS naming an address, and a Clerk user created with it unverified
    created = send_clerk(_event("user.created", "unverified"), msg_id="msg_admin_1")
    # Then the user exists with role USER
    assert created.status == 200 and created.json["status"] == "processed"
    assert _role(db) == "USER"
    # When Clerk later reports the address verified
    send_clerk(_event("user.updated", "verified"), msg_id="msg_admin_2")
    # Then, and only then, the user is an ADMIN
    assert _role(db) == "ADMIN"


def test_a_verified_admin_email_from_clerk_is_an_admin(db: Callable[[], UnitOfWork], admin_email: None) -> None:
    # Given a Clerk user created with the admin address verified
    send_clerk(_event("user.created", "verified"), msg_id="msg_admin_3")
    # Then it is an ADMIN
    assert _role(db) == "ADMIN"


def test_an_admin_email_demoted_by_an_admin_stays_demoted_through_clerk_updates(
    db: Callable[[], UnitOfWork], admin_email: None
) -> None:
    # Given a Clerk user made ADMIN by ADMIN_EMAILS, then demoted by an admin (an audited role change)
    send_clerk(_event("user.created", "verified"), msg_id="msg_admin_4")
    with db() as uow:
        user_id = uow.session.execute(text("SELECT id FROM users WHERE clerk_id IS NOT NULL")).scalar_one()
        uow.session.execute(text("UPDATE users SET role = 'USER' WHERE id = :u"), {"u": user_id})
        uow.session.execute(
            text(
                "INSERT INTO audit_logs (id, action, target_type, target_id, details, created_at)"
                " VALUES (gen_random_uuid(), 'user.role_change', 'user', :u, '{}', now())"
            ),
            {"u": str(user_id)},
        )
        uow.commit()
    # When Clerk sends the next user.updated with the admin address still verified
    updated = send_clerk(_event("user.updated", "verified"), msg_id="msg_admin_5")
    # Then the demotion holds
    assert updated.status == 200
    assert _role(db) == "USER"

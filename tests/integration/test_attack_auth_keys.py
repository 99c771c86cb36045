# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""API keys and step-up attacked from outside (issue 11 review): a key where a session should be, scope
escalation, expiry, and OAuth sessions. Through the real handlers and authorizer."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from tests.integration.auth_helpers import PASSWORD, AuthEnv, auth_env, bearer  # noqa: F401
from tests.integration.test_auth_oauth import StandInProvider, _google, _sign_in, provider  # noqa: F401
from tests.support import api_call
from tollgate.auth import scopes
from tollgate.db import UnitOfWork
from tollgate.models import User

ATTACKER_PASSWORD = "attacker chose this one"


def _post(path: str, token: str, body: Any = None) -> Any:
    return api_call("POST", path, headers=bearer(token), through_authorizer=True, body=body)


def _as_key(key: str, method: str, path: str, body: Any = None) -> int:
    return api_call(method, path, headers={"x-api-key": key}, through_authorizer=True, body=body).status


def test_an_admins_key_with_every_scope_reaches_no_session_only_route(auth_env: AuthEnv) -> None:
    # Given an ADMIN's key holding every scope there is
    boss = f"boss-{uuid.uuid4().hex[:6]}@example.com"
    auth_env.set(ADMIN_EMAILS=boss, MAIL_MIN_INTERVAL_SECONDS="0")
    auth_env.register_verified(boss)
    tokens = auth_env.login(boss)
    created = _post("/auth/api-keys", tokens["access_token"], {"name": "all", "scopes": list(scopes.SCOPES)})
    assert created.status == 201, created.json
    key = created.json["key"]
    # When it calls every route declared for sessions only (logout, 2FA, sessions, keys, lock-adjacent ones)
    answers = {}
    for route, needed in scopes.ROUTE_SCOPES.items():
        if needed == scopes.SESSION_ONLY:
            method, path = route.split(" ", 1)
            path = path.replace("{session_id}", tokens["session_id"]).replace("{key_id}", created.json["id"])
            answers[route] = _as_key(key, method, path, {})
    # Then the authorizer refuses each one, and the session and the key are untouched
    assert len(answers) >= 15 and answers == dict.fromkeys(answers, 403)
    assert (
        api_call("GET", "/auth/sessions", headers=bearer(tokens["access_token"]), through_authorizer=True).status == 200
    )
    assert _as_key(key, "GET", "/auth/me") == 200


def test_a_key_cannot_climb_past_its_scopes_or_its_users_role(auth_env: AuthEnv) -> None:
    # Given an ordinary user with a default (read-only) key
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="0")
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    read_only = _post("/auth/api-keys", tokens["access_token"], {"name": "ro"}).json["key"]
    # Then it cannot charge, hold, pay or mint keys
    assert _as_key(read_only, "POST", "/credits/usage", {"operation": "chat"}) == 403
    assert _as_key(read_only, "POST", "/credits/holds", {"operation": "chat"}) == 403
    assert _as_key(read_only, "POST", "/billing/checkout", {}) == 403
    assert _as_key(read_only, "POST", "/auth/api-keys", {"name": "more", "scopes": ["credits:write"]}) == 403
    # And a non-staff user cannot put `admin` on a key
    refused = _post("/auth/api-keys", tokens["access_token"], {"name": "a", "scopes": ["admin", "credits:read"]})
    assert (refused.status, refused.json["error"]["code"]) == (403, "scope_not_allowed")
    # When a staff member's admin key outlives her demotion
    boss = f"boss-{uuid.uuid4().hex[:6]}@example.com"
    auth_env.set(ADMIN_EMAILS=boss, MAIL_MIN_INTERVAL_SECONDS="0")
    auth_env.register_verified(boss)
    admin_key = _post("/auth/api-keys", auth_env.login(boss)["access_token"], {"name": "a", "scopes": ["admin"]})
    assert _as_key(admin_key.json["key"], "GET", "/admin/feature-costs") == 200
    with UnitOfWork() as uow:
        uow.session.execute(update(User).where(User.email == boss).values(role="USER"))
        uow.commit()
    auth_env.set(ADMIN_EMAILS="")  # a fresh container, and the address no longer listed
    # Then the key's scope alone opens nothing
    assert _as_key(admin_key.json["key"], "GET", "/admin/feature-costs") == 403


def test_an_expired_key_stops_at_its_expiry_even_when_its_verdict_is_cached(auth_env: AuthEnv) -> None:
    # Given a key that expires in a few seconds, just used (so its verdict is cached)
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    soon = datetime.now(UTC) + timedelta(seconds=3)
    key = _post("/auth/api-keys", tokens["access_token"], {"name": "short", "expires_at": soon.isoformat()}).json["key"]
    assert _as_key(key, "GET", "/credits/balance") == 200
    # When its expiry passes (inside the authorizer's cache period)
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.2)
    # Then it is refused at once
    assert _as_key(key, "GET", "/credits/balance") == 403


def test_an_oauth_session_must_prove_the_password_before_credential_changes(
    auth_env: AuthEnv, provider: StandInProvider
) -> None:
    # Given an attacker who registered the owner's address first (his link sits in her mailbox), and the owner
    # who then signs in with Google
    email = f"g-{uuid.uuid4().hex[:8]}@gmail.example"
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="0")
    assert api_call("POST", "/auth/register", body={"email": email, "password": ATTACKER_PASSWORD}).status == 202
    attackers_link = auth_env.token_from(email, "verify_email")
    signed_in = _sign_in(provider, "google", _google(email))
    assert signed_in.status == 200, signed_in.json
    access = signed_in.json["access_token"]
    # Then the attacker's link, clicked later, gives his password nothing
    clicked = api_call("POST", "/auth/verify-email", body={"token": attackers_link, "password": ATTACKER_PASSWORD})
    assert clicked.status == 400
    assert api_call("POST", "/auth/login", body={"email": email, "password": ATTACKER_PASSWORD}).status == 401
    # And the OAuth session (no password proven) cannot mint keys or turn on 2FA, nor step up without a password
    for path, body in (("/auth/api-keys", {"name": "k"}), ("/auth/two-factor/email/enable", None)):
        answer = _post(path, access, body)
        assert (answer.status, answer.json["error"]["code"]) == (403, "reauthentication_required")
    step_up = _post("/auth/reauthenticate", access, {"password": ATTACKER_PASSWORD})
    assert (step_up.status, step_up.json["error"]["code"]) == (409, "password_not_set")
    # And a refreshed token of that session is no fresher
    refreshed = api_call("POST", "/auth/token/refresh", body={"refresh_token": signed_in.json["refresh_token"]})
    assert _post("/auth/api-keys", refreshed.json["access_token"], {"name": "k"}).status == 403
    # When the owner sets a password with a reset link and signs in with it, Then she may mint a key
    assert api_call("POST", "/auth/password/forgot", body={"email": email}).status == 202
    reset = auth_env.token_from(email, "password_reset")
    assert api_call("POST", "/auth/password/reset", body={"token": reset, "password": PASSWORD}).status == 200
    assert _post("/auth/api-keys", auth_env.login(email)["access_token"], {"name": "k"}).status == 201

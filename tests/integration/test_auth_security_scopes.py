# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""Scoped API keys (issue 11, finding 3): a key holds only its scopes, never reaches credential routes, and every
route of the template declares the scope it needs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.auth_helpers import AuthEnv, auth_env, bearer  # noqa: F401
from tests.support import api_call, project_gateway
from tollgate.auth import scopes


def _key(auth_env: AuthEnv, **body: Any) -> tuple[str, dict[str, Any]]:
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    created = api_call(
        "POST", "/auth/api-keys", headers=bearer(tokens["access_token"]), through_authorizer=True,
        body={"name": "k", **body},
    )  # fmt: skip
    assert created.status == 201, created.json
    return created.json["key"], tokens


def _as_key(key: str, method: str, path: str, body: Any = None) -> int:
    return api_call(method, path, headers={"x-api-key": key}, through_authorizer=True, body=body).status


def test_an_api_key_cannot_change_credentials_or_see_sessions(auth_env: AuthEnv) -> None:
    # Given a key with every scope a user may grant
    key, tokens = _key(auth_env, scopes=["profile:read", "credits:read", "credits:write", "rag", "billing:read"])
    # When it calls the credential routes
    answers = {
        "mint a key": _as_key(key, "POST", "/auth/api-keys", {"name": "more"}),
        "list keys": _as_key(key, "GET", "/auth/api-keys"),
        "totp setup": _as_key(key, "POST", "/auth/two-factor/totp/setup"),
        "totp enable": _as_key(key, "POST", "/auth/two-factor/totp/enable", {"code": "123456"}),
        "mail 2fa": _as_key(key, "POST", "/auth/two-factor/email/enable"),
        "list sessions": _as_key(key, "GET", "/auth/sessions"),
        "revoke session": _as_key(key, "DELETE", f"/auth/sessions/{tokens['session_id']}"),
        "reauthenticate": _as_key(key, "POST", "/auth/reauthenticate", {"password": "whatever it is"}),
        "change password": _as_key(
            key, "POST", "/auth/password/change", {"current_password": "x", "new_password": "y" * 12}
        ),
    }
    # Then the authorizer refuses every one (403 before any handler runs)
    assert answers == dict.fromkeys(answers, 403)
    # And the session it was revoking is untouched
    assert api_call("POST", "/auth/token/refresh", body={"refresh_token": tokens["refresh_token"]}).status == 200


def test_a_key_reaches_only_what_its_scopes_name(auth_env: AuthEnv) -> None:
    # Given a key created without scopes (the default: read-only)
    key, _ = _key(auth_env)
    # Then it reads the profile and the balance, and spends nothing
    assert _as_key(key, "GET", "/auth/me") == 200
    assert _as_key(key, "GET", "/credits/balance") == 200
    assert _as_key(key, "POST", "/credits/usage", {"operation": "chat"}) == 403
    assert _as_key(key, "POST", "/rag/search", {"query": "hello"}) == 403
    assert _as_key(key, "GET", "/billing/subscription") == 403
    # And a key with credits:write may spend, but not read billing
    writer, _ = _key(auth_env, scopes=["credits:write"])
    assert _as_key(writer, "POST", "/credits/usage", {"operation": "chat"}) not in (401, 403)
    assert _as_key(writer, "GET", "/credits/balance") == 403


def test_the_scopes_and_expiry_are_shown_and_checked(auth_env: AuthEnv) -> None:
    # Given a key with an expiry an hour away
    until = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    email = auth_env.register_verified()
    headers = bearer(auth_env.login(email)["access_token"])
    created = api_call(
        "POST", "/auth/api-keys", headers=headers, through_authorizer=True,
        body={"name": "timed", "scopes": ["rag"], "expires_at": until.isoformat()},
    )  # fmt: skip
    # Then its scopes and expiry are listed
    assert created.status == 201
    assert created.json["scopes"] == ["rag"]
    assert datetime.fromisoformat(created.json["expires_at"]) == until
    listed = api_call("GET", "/auth/api-keys", headers=headers, through_authorizer=True).json["items"]
    assert listed[0]["scopes"] == ["rag"]
    # And unknown scopes, a past expiry, or a staff scope from a user are refused
    bad = [
        api_call("POST", "/auth/api-keys", headers=headers, through_authorizer=True, body=body)
        for body in (
            {"name": "x", "scopes": ["everything"]},
            {"name": "x", "expires_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()},
            {"name": "x", "scopes": ["admin"]},
        )
    ]
    assert [b.status for b in bad] == [422, 422, 403]
    assert bad[2].error_code == "scope_not_allowed"


def test_every_authorized_route_declares_its_scope() -> None:
    # Given the template's routes behind the authorizer
    template = project_gateway().template
    guarded = {f"{r.method} {r.path}" for r in template.routes if r.authorizer is not None}
    # Then each one is declared, and nothing declared is missing from the template
    assert guarded - set(scopes.ROUTE_SCOPES) == set()
    assert set(scopes.ROUTE_SCOPES) - guarded == set()
    # And credential routes (all of /auth/ but reading the profile) admit no key
    for route, needed in scopes.ROUTE_SCOPES.items():
        if route.split(" ")[1].startswith("/auth/") and route != "GET /auth/me":
            assert needed == scopes.SESSION_ONLY, route
        assert needed == scopes.SESSION_ONLY or needed in scopes.SCOPES, route


@pytest.mark.parametrize("route", ["POST /auth/api-keys", "GET /credits/balance", f"GET /made-up/{uuid.uuid4()}"])
def test_sessions_pass_and_undeclared_routes_admit_no_key(route: str) -> None:
    # Then a session may call any route, and a key holding every scope no undeclared or credential one
    everything = frozenset(scopes.SCOPES)
    assert scopes.permits("session", frozenset(), route)
    assert scopes.permits("api_key", everything, route) == (route == "GET /credits/balance")

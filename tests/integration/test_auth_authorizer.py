# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""The Lambda authorizer through the local gateway: who gets in, who does not, and how fast revocation bites."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select, text, update

from tests.integration.auth_helpers import PASSWORD, AuthEnv, auth_env, bearer  # noqa: F401
from tests.support import api_call, project_gateway
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.models import User


def _me(headers: dict[str, str]) -> int:
    return api_call("GET", "/auth/me", headers=headers, through_authorizer=True).status


def _claims(**overrides: Any) -> dict[str, Any]:
    settings = get_settings()
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": str(uuid.uuid4()),
        "sid": str(uuid.uuid4()), "role": "USER", "iat": now, "nbf": now, "exp": now + 600,
    }  # fmt: skip
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _key() -> str:
    secret = get_settings().jwt_signing_key
    assert secret is not None
    return secret.get_secret_value()


def test_every_protected_route_of_the_template_goes_through_the_authorizer() -> None:
    # Given the project's template
    template = project_gateway().template
    public = {
        ("GET", "/health"), ("POST", "/auth/register"), ("POST", "/auth/verify-email"), ("POST", "/auth/login"),
        ("POST", "/auth/login/two-factor"), ("POST", "/auth/token/refresh"), ("POST", "/auth/password/forgot"),
        ("POST", "/auth/password/reset"), ("GET", "/auth/oauth/{provider}/authorize"),
        ("GET", "/auth/oauth/{provider}/callback"), ("POST", "/auth/lock"),
    }  # fmt: skip
    # Then every auth route that API.md marks user/admin has the default authorizer, and the public ones none
    for route in template.routes:
        if not route.path.startswith("/auth/"):
            continue
        key = (route.method, route.path)
        if key in public:
            assert route.authorizer is None, key
        else:
            assert route.authorizer == "TollgateAuthorizer", key
    # And every route under a prefix API.md marks user/admin (whichever area serves it) is guarded too
    for route in template.routes:
        if route.path.startswith(("/admin/", "/credits/", "/billing/", "/rag/")):
            assert route.authorizer == "TollgateAuthorizer", (route.method, route.path)
    # And API.md's auth routes are all there
    paths = {(r.method, r.path) for r in template.routes}
    for needed in [
        ("GET", "/auth/me"), ("PATCH", "/auth/me"), ("POST", "/auth/logout"), ("GET", "/auth/sessions"),
        ("DELETE", "/auth/sessions/{session_id}"), ("POST", "/auth/api-keys"), ("GET", "/auth/api-keys"),
        ("DELETE", "/auth/api-keys/{key_id}"), ("POST", "/auth/two-factor/email/enable"),
        ("POST", "/auth/two-factor/totp/setup"), ("POST", "/auth/two-factor/totp/enable"),
        ("POST", "/auth/two-factor/disable"), ("POST", "/auth/password/change"), *public,
    ]:  # fmt: skip
        assert needed in paths, needed


def test_allows_a_valid_token_and_passes_the_context(auth_env: AuthEnv) -> None:
    # Given a signed-in user
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    # When the authorizer sees the token
    authorizer = project_gateway().runner.module("AuthorizerFunction")
    answer = authorizer.decide({"headers": {"authorization": f"Bearer {tokens['access_token']}"}})
    # Then it allows, with user_id, role, session_id and tier as strings
    assert answer["isAuthorized"] is True
    context = answer["context"]
    assert context["session_id"] == tokens["session_id"] and context["role"] == "USER" and context["tier"] == "FREE"
    with UnitOfWork() as uow:
        user_id = uow.session.execute(select(User.id).where(func.lower(User.email) == email)).scalar_one()
    assert context["user_id"] == str(user_id)
    assert all(isinstance(v, str) for v in context.values())


def test_denies_requests_without_a_usable_credential(auth_env: AuthEnv) -> None:
    # Given no credential, a wrong scheme, garbage, or an unknown API key
    for headers in ({}, {"authorization": "Basic dXNlcjpwdw=="}, {"authorization": "Bearer nonsense"},
                    {"x-api-key": "tg_0000_nothing"}, {"authorization": "Bearer " + "a" * 10_000}):  # fmt: skip
        # Then the gateway answers 403 before the handler runs
        assert _me(headers) == 403, headers


@pytest.mark.parametrize(
    "tamper",
    ["alg_none", "hs512", "rs256", "wrong_key", "wrong_aud", "wrong_iss", "expired", "future_nbf", "no_sid"],
)
def test_denies_tampered_tokens(auth_env: AuthEnv, tamper: str) -> None:
    # Given a real user and session, and a token for them forged or bent in one way
    email = auth_env.register_verified()
    real = jwt.decode(auth_env.login(email)["access_token"], options={"verify_signature": False})
    base = {k: real[k] for k in ("sub", "sid")}
    now = int(time.time())
    if tamper == "alg_none":
        token = jwt.encode(_claims(**base), None, algorithm="none")  # type: ignore[arg-type]  # the attack itself
    elif tamper == "hs512":
        token = jwt.encode(_claims(**base), _key(), algorithm="HS512")
    elif tamper == "rs256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode(_claims(**base), private, algorithm="RS256")
    elif tamper == "wrong_key":
        token = jwt.encode(_claims(**base), "x" * 64, algorithm="HS256")
    elif tamper == "wrong_aud":
        token = jwt.encode(_claims(**base, aud="someone-else"), _key(), algorithm="HS256")
    elif tamper == "wrong_iss":
        token = jwt.encode(_claims(**base, iss="https://evil.example"), _key(), algorithm="HS256")
    elif tamper == "expired":
        token = jwt.encode(_claims(**base, iat=now - 1000, nbf=now - 1000, exp=now - 60), _key(), algorithm="HS256")
    elif tamper == "future_nbf":
        token = jwt.encode(_claims(**base, nbf=now + 600), _key(), algorithm="HS256")
    else:
        token = jwt.encode(_claims(sub=base["sub"], sid=None), _key(), algorithm="HS256")
    # When it is presented, Then the authorizer denies it
    assert _me(bearer(token)) == 403
    # And the same claims signed properly would have passed (the test forges only what it names)
    assert _me(bearer(jwt.encode(_claims(**base), _key(), algorithm="HS256"))) == 200


def test_revoked_sessions_and_disabled_users_stop_within_the_cache_window(auth_env: AuthEnv) -> None:
    # Given a 1-second authorizer cache and a signed-in user whose token was just accepted
    auth_env.set(AUTHORIZER_CACHE_SECONDS="1")
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    assert _me(bearer(tokens["access_token"])) == 200
    # When the session is revoked elsewhere (another container)
    with UnitOfWork() as uow:
        uow.session.execute(text("UPDATE sessions SET revoked_at = now() WHERE family_id = :f"),
                            {"f": tokens["session_id"]})  # fmt: skip
        uow.commit()
    # Then this container may still allow it from cache, but no longer than the window
    time.sleep(1.1)
    assert _me(bearer(tokens["access_token"])) == 403
    # And a suspended user's fresh session is refused as well
    other = auth_env.login(email)
    with UnitOfWork() as uow:
        uow.session.execute(update(User).where(func.lower(User.email) == email).values(status="SUSPENDED"))
        uow.commit()
    assert _me(bearer(other["access_token"])) == 403


def test_role_comes_from_the_database_not_the_token(auth_env: AuthEnv) -> None:
    # Given a user promoted to ADMIN after signing in
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    with UnitOfWork() as uow:
        uow.session.execute(update(User).where(func.lower(User.email) == email).values(role="ADMIN"))
        uow.commit()
    # When the old token is used (in a fresh container), Then the context carries the current role
    auth_env.set()
    answer = (
        project_gateway()
        .runner.module("AuthorizerFunction")
        .decide({"headers": {"authorization": f"Bearer {tokens['access_token']}"}})
    )
    assert answer["context"]["role"] == "ADMIN"


def test_expired_api_keys_and_keys_of_disabled_users_are_denied(auth_env: AuthEnv) -> None:
    # Given a key that has expired and a key of a user who is later locked
    email = auth_env.register_verified()
    headers = bearer(auth_env.login(email)["access_token"])
    old = api_call("POST", "/auth/api-keys", headers=headers, through_authorizer=True,
                   body={"name": "old", "expires_in_days": 1}).json  # fmt: skip
    live = api_call("POST", "/auth/api-keys", headers=headers, through_authorizer=True, body={"name": "live"}).json
    with UnitOfWork() as uow:
        uow.session.execute(text("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = :i"),
                            {"i": old["id"]})  # fmt: skip
        uow.commit()
    # Then the expired key is denied and the live one works, until its user is suspended
    assert _me({"x-api-key": old["key"]}) == 403
    assert _me({"x-api-key": live["key"]}) == 200
    with UnitOfWork() as uow:
        uow.session.execute(update(User).where(func.lower(User.email) == email).values(status="SUSPENDED"))
        uow.commit()
    auth_env.set()
    assert _me({"x-api-key": live["key"]}) == 403


def test_cached_verdicts_skip_the_database(auth_env: AuthEnv) -> None:
    # Given a token the authorizer has seen once
    email = auth_env.register_verified()
    token = auth_env.login(email)["access_token"]
    authorizer = project_gateway().runner.module("AuthorizerFunction")
    event = {"headers": {"authorization": f"Bearer {token}"}}
    assert authorizer.decide(event)["isAuthorized"]
    # When the database row changes but the cache is warm
    with UnitOfWork() as uow:
        uow.session.execute(text("UPDATE sessions SET revoked_at = now()"))
        uow.commit()
    # Then the cached verdict answers (within AUTHORIZER_CACHE_SECONDS), and a cleared cache re-checks
    assert authorizer.decide(event)["isAuthorized"]
    authorizer.cache.clear()
    assert not authorizer.decide(event)["isAuthorized"]


@pytest.mark.parametrize("role", ["ADMIN", "SUPPORT"])
def test_staff_lose_the_back_office_at_once_when_demoted_or_suspended(auth_env: AuthEnv, role: str) -> None:
    # Given a staff member (and another admin, so the deployment keeps one) whose token and key were just
    # accepted by a warm authorizer with the default 30-second cache
    auth_env.set()
    email = auth_env.register_verified()
    with UnitOfWork() as uow:
        uow.session.execute(update(User).where(func.lower(User.email) == email).values(role=role))
        uow.commit()
    token = auth_env.login(email)["access_token"]
    key = api_call("POST", "/auth/api-keys", headers=bearer(token), through_authorizer=True,
                   body={"name": "desk", "scopes": ["admin"]}).json["key"]  # fmt: skip
    for headers in (bearer(token), {"x-api-key": key}):
        listed = api_call("GET", "/admin/users", headers=headers, through_authorizer=True)
        assert listed.status == 200, listed.json
    # When the role is taken away in the database (another container's admin call)
    with UnitOfWork() as uow:
        uow.session.execute(update(User).where(func.lower(User.email) == email).values(role="USER"))
        uow.commit()
    # Then the very next back-office request, by session or key, is refused: no cached staff verdict answers
    for headers in (bearer(token), {"x-api-key": key}):
        assert api_call("GET", "/admin/users", headers=headers, through_authorizer=True).status == 403
    # And a suspension likewise ends a staff session at once
    with UnitOfWork() as uow:
        uow.session.execute(update(User).where(func.lower(User.email) == email).values(role=role))
        uow.commit()
    fresh = auth_env.login(email)["access_token"]
    assert api_call("GET", "/admin/users", headers=bearer(fresh), through_authorizer=True).status == 200
    with UnitOfWork() as uow:
        uow.session.execute(update(User).where(func.lower(User.email) == email).values(status="SUSPENDED"))
        uow.commit()
    assert api_call("GET", "/admin/users", headers=bearer(fresh), through_authorizer=True).status == 403


# --- Clerk mode ---------------------------------------------------------------------------------------------------
class _Jwks:
    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        public.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        self.document = json.dumps({"keys": [public]}).encode()

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "sub": "user_2abc",
            "sid": "sess_1",
            "iat": now,
            "nbf": now,
            "exp": now + 60,
            "azp": "https://app.example",
        }
        body.update(claims)
        return jwt.encode({k: v for k, v in body.items() if v is not None}, self.private, algorithm="RS256",
                          headers={"kid": self.kid})  # fmt: skip


@pytest.fixture
def clerk(auth_env: AuthEnv) -> Iterator[_Jwks]:
    jwks = _Jwks()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(jwks.document)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    auth_env.set(
        AUTH_MODE="clerk",
        CLERK_JWKS_URL=f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json",
        CLERK_AUTHORIZED_PARTIES="https://app.example",
        SIGNUP_CREDITS="7",
    )
    yield jwks
    server.shutdown()


def test_clerk_tokens_map_to_users_created_on_first_sight(clerk: _Jwks) -> None:
    # Given a Clerk session token for a user Tollgate has never seen
    token = clerk.token(sub="user_first", email="first@example.com")
    # When it calls a protected route
    first = api_call("GET", "/auth/me", headers=bearer(token), through_authorizer=True)
    # Then the user is created (with the Clerk id and sign-up credits) and answered for
    assert first.status == 200 and first.json["email"] == "first@example.com"
    with UnitOfWork() as uow:
        user = uow.session.execute(select(User).where(User.clerk_id == "user_first")).scalar_one()
        credits = uow.session.execute(
            text("SELECT coalesce(sum(amount), 0) FROM credit_transactions WHERE user_id = :u"), {"u": user.id}
        ).scalar_one()
        assert float(credits) == 7
    # And a second token of the same Clerk user maps to the same row
    again = api_call("GET", "/auth/me", headers=bearer(clerk.token(sub="user_first")), through_authorizer=True)
    assert again.json["id"] == first.json["id"]


@pytest.mark.parametrize("tamper", ["expired", "future_nbf", "wrong_party", "foreign_key", "hs256_with_public_key"])
def test_clerk_mode_denies_bad_tokens(clerk: _Jwks, tamper: str) -> None:
    # Given a Clerk token bent in one way
    now = int(time.time())
    if tamper == "expired":
        token = clerk.token(iat=now - 600, nbf=now - 600, exp=now - 60)
    elif tamper == "future_nbf":
        token = clerk.token(nbf=now + 600)
    elif tamper == "wrong_party":
        token = clerk.token(azp="https://evil.example")
    elif tamper == "foreign_key":
        other = _Jwks()
        other.kid = clerk.kid  # same kid, different key
        token = other.token()
    else:
        public_pem = clerk.private.public_key().public_bytes(
            encoding=serialization.Encoding.PEM, format=serialization.PublicFormat.SubjectPublicKeyInfo
        )
        token = _hs256_with(public_pem, now)
    # When it is presented, Then it is denied and no user is created
    assert _me(bearer(token)) == 403
    with UnitOfWork() as uow:
        assert uow.session.execute(select(func.count()).select_from(User)).scalar_one() == 0


def _hs256_with(secret: bytes, now: int) -> str:
    # The classic key-confusion forgery: an HMAC "signed" with the RSA public key, header alg HS256.
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": "user_x", "iat": now, "exp": now + 60, "azp": "https://app.example"}).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def test_builtin_sign_in_is_off_in_clerk_mode(clerk: _Jwks) -> None:
    # When someone tries the built-in login in Clerk mode, Then it is refused with a clear code
    response = api_call("POST", "/auth/login", body={"email": "a@example.com", "password": PASSWORD})
    assert response.status == 403 and response.error_code == "builtin_auth_disabled"

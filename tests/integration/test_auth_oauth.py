# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""OAuth sign-in (Google, GitHub) against a local stand-in provider that speaks their wire format and checks
PKCE the way a real authorization server does."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from tests.integration.auth_helpers import PASSWORD, AuthEnv, auth_env, bearer  # noqa: F401
from tests.support import api_call
from tollgate.db import UnitOfWork
from tollgate.models import User
from tollgate.models.auth import OAuthAccount


@dataclass
class Grant:
    challenge: str
    redirect_uri: str
    client_id: str
    profile: dict[str, Any]
    emails: list[dict[str, Any]] = field(default_factory=list)


class StandInProvider:
    """Authorization codes are issued by `approve` (the user's consent); /token checks client, redirect and PKCE."""

    def __init__(self) -> None:
        self.grants: dict[str, Grant] = {}
        self.tokens: dict[str, Grant] = {}
        self.client_secret = secrets.token_urlsafe(16)
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                grant = provider.grants.pop(form.get("code", ""), None)
                if grant is None or form.get("grant_type") != "authorization_code":
                    return self._json(400, {"error": "invalid_grant"})
                if form.get("client_secret") != provider.client_secret or form.get("client_id") != grant.client_id:
                    return self._json(401, {"error": "invalid_client"})
                if form.get("redirect_uri") != grant.redirect_uri:
                    return self._json(400, {"error": "invalid_grant", "error_description": "redirect_uri"})
                digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant.challenge:
                    return self._json(400, {"error": "invalid_grant", "error_description": "PKCE"})
                token = secrets.token_urlsafe(16)
                provider.tokens[token] = grant
                return self._json(200, {"access_token": token, "token_type": "bearer", "scope": "email",
                                        "expires_in": 3599})  # fmt: skip

            def do_GET(self) -> None:
                token = (self.headers.get("authorization") or "").removeprefix("Bearer ")
                grant = provider.tokens.get(token)
                if grant is None:
                    return self._json(401, {"message": "Bad credentials"})
                path = urlsplit(self.path).path
                if path == "/user/emails":
                    return self._json(200, grant.emails)
                return self._json(200, grant.profile)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def approve(self, authorization_url: str, profile: dict[str, Any], emails: list[dict[str, Any]] | None = None
                ) -> tuple[str, str]:  # fmt: skip
        """The user consents: returns (code, state) as the provider would send them back."""
        params = {k: v[0] for k, v in parse_qs(urlsplit(authorization_url).query).items()}
        assert params["code_challenge_method"] == "S256" and params["response_type"] == "code"
        code = secrets.token_urlsafe(12)
        self.grants[code] = Grant(params["code_challenge"], params["redirect_uri"], params["client_id"], profile,
                                  emails or [])  # fmt: skip
        return code, params["state"]


@pytest.fixture
def provider(auth_env: AuthEnv) -> Iterator[StandInProvider]:
    stand_in = StandInProvider()
    auth_env.set(
        GOOGLE_CLIENT_ID="google-client", GOOGLE_CLIENT_SECRET=stand_in.client_secret,
        GOOGLE_AUTHORIZE_URL=f"{stand_in.base}/authorize", GOOGLE_TOKEN_URL=f"{stand_in.base}/token",
        GOOGLE_USERINFO_URL=f"{stand_in.base}/userinfo",
        GITHUB_CLIENT_ID="github-client", GITHUB_CLIENT_SECRET=stand_in.client_secret,
        GITHUB_AUTHORIZE_URL=f"{stand_in.base}/login/oauth/authorize", GITHUB_TOKEN_URL=f"{stand_in.base}/token",
        GITHUB_API_URL=stand_in.base, SIGNUP_CREDITS="3",
    )  # fmt: skip
    yield stand_in
    stand_in.server.shutdown()


def _google(email: str, sub: str | None = None, verified: bool = True) -> dict[str, Any]:
    return {"sub": sub or uuid.uuid4().hex, "email": email, "email_verified": verified, "name": "G User",
            "picture": "https://img.example/p.png"}  # fmt: skip


def _sign_in(provider: StandInProvider, name: str, profile: dict[str, Any],
             emails: list[dict[str, Any]] | None = None) -> Any:  # fmt: skip
    start = api_call("GET", f"/auth/oauth/{name}/authorize")
    assert start.status == 200, start.json
    code, state = provider.approve(start.json["authorization_url"], profile, emails)
    return api_call("GET", f"/auth/oauth/{name}/callback", query=f"code={code}&state={state}")


def test_google_sign_in_creates_a_verified_account(provider: StandInProvider) -> None:
    # Given a Google user Tollgate has never seen
    email = f"g-{uuid.uuid4().hex[:8]}@gmail.example"
    profile = _google(email)
    # When they complete the OAuth dance
    response = _sign_in(provider, "google", profile)
    # Then tokens come back, and the account exists, verified, without a password, linked to Google
    assert response.status == 200, response.json
    me = api_call("GET", "/auth/me", headers=bearer(response.json["access_token"]), through_authorizer=True)
    assert me.json["email"] == email and me.json["email_verified"] is True
    with UnitOfWork() as uow:
        user = uow.session.execute(select(User).where(User.email == email)).scalar_one()
        assert user.password_hash is None
        link = uow.session.execute(select(OAuthAccount)).scalar_one()
        assert (link.provider, link.provider_account_id, link.user_id) == ("google", profile["sub"], user.id)
    # And signing in again reaches the same account
    again = _sign_in(provider, "google", profile)
    me_again = api_call("GET", "/auth/me", headers=bearer(again.json["access_token"]), through_authorizer=True)
    assert me_again.json["id"] == me.json["id"]


def test_oauth_links_to_an_existing_verified_account(auth_env: AuthEnv, provider: StandInProvider) -> None:
    # Given a verified password account
    email = auth_env.register_verified()
    # When its owner signs in with GitHub (primary verified email matching, in another case)
    response = _sign_in(
        provider, "github", {"id": 4242, "login": "octo", "name": None, "avatar_url": None},
        emails=[{"email": "other@example.com", "primary": False, "verified": True},
                {"email": email.upper(), "primary": True, "verified": True}],
    )  # fmt: skip
    # Then it is the same account, now linked, and the password still works
    assert response.status == 200, response.json
    with UnitOfWork() as uow:
        users = uow.session.execute(select(func.count()).select_from(User)).scalar_one()
        link = uow.session.execute(select(OAuthAccount.provider, OAuthAccount.provider_account_id)).one()
    assert users == 1 and tuple(link) == ("github", "4242")
    auth_env.login(email)


def test_oauth_takes_over_an_unverified_account_and_drops_its_password(
    auth_env: AuthEnv, provider: StandInProvider
) -> None:
    # Given someone registered the victim's email with their own password but never verified it
    email = f"victim-{uuid.uuid4().hex[:6]}@example.com"
    api_call("POST", "/auth/register", body={"email": email, "password": PASSWORD})
    # When the real owner signs in with Google
    response = _sign_in(provider, "google", _google(email))
    # Then they get the account, and the squatter's password no longer opens it
    assert response.status == 200
    squatter = api_call("POST", "/auth/login", body={"email": email, "password": PASSWORD})
    assert squatter.status == 401


def test_oauth_refuses_reused_state_bad_pkce_and_unverified_emails(provider: StandInProvider) -> None:
    # Given a completed sign-in
    start = api_call("GET", "/auth/oauth/google/authorize").json
    code, state = provider.approve(start["authorization_url"], _google("s@example.com"))
    assert api_call("GET", "/auth/oauth/google/callback", query=f"code={code}&state={state}").status == 200
    # When its state is replayed with a fresh code
    provider.grants["replayed"] = next(iter(provider.tokens.values()))
    replay = api_call("GET", "/auth/oauth/google/callback", query=f"code=replayed&state={state}")
    # Then it is refused
    assert replay.status == 400 and replay.error_code == "oauth_failed"
    # When an attacker's code (bound to another PKCE challenge) is sent with a victim's state
    victim = api_call("GET", "/auth/oauth/google/authorize").json
    attacker = api_call("GET", "/auth/oauth/google/authorize").json
    attacker_code, _ = provider.approve(attacker["authorization_url"], _google("attacker@example.com"))
    mixed = api_call("GET", "/auth/oauth/google/callback", query=f"code={attacker_code}&state={victim['state']}")
    # Then the provider refuses the verifier and so do we
    assert mixed.status == 400 and mixed.error_code == "oauth_failed"
    # When the provider says the email is not verified, Then no account is made
    unverified = _sign_in(provider, "google", _google("unverified@example.com", verified=False))
    assert unverified.status == 400
    with UnitOfWork() as uow:
        assert uow.session.execute(select(User).where(User.email == "unverified@example.com")).first() is None


def test_oauth_authorize_can_redirect_and_unknown_providers_are_refused(provider: StandInProvider) -> None:
    # When the browser navigates to authorize with redirect=true, Then it is sent to the provider
    response = api_call("GET", "/auth/oauth/github/authorize", query="redirect=true")
    assert response.status == 302 and response.headers["location"].startswith(f"{provider.base}/login/oauth/")
    # When the provider is not one we know, Then 422
    assert api_call("GET", "/auth/oauth/myspace/authorize").status == 422

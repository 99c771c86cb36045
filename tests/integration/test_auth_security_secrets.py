# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""Secrets at rest (issue 11, finding 5): TOTP secrets, pending TOTP secrets and PKCE verifiers are sealed
(AES-GCM envelope, key id stored with each value), and keys rotate."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest
from sqlalchemy import text

from tests.integration.auth_helpers import AuthEnv, auth_env, bearer  # noqa: F401
from tests.integration.test_auth_oauth import StandInProvider, _google
from tests.support import api_call
from tollgate.auth import sealing
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.errors import ConfigurationError


def _row(sql: str) -> Any:
    with UnitOfWork() as uow:
        return uow.session.execute(text(sql)).one()


def test_totp_secrets_are_never_stored_in_clear(auth_env: AuthEnv) -> None:
    # Given a user who starts TOTP enrolment
    email = auth_env.register_verified()
    headers = bearer(auth_env.login(email)["access_token"])
    setup = api_call("POST", "/auth/two-factor/totp/setup", headers=headers, through_authorizer=True).json
    secret = setup["secret"]
    # Then the pending secret is sealed, not the secret
    pending = _row("SELECT totp_pending_secret FROM users WHERE totp_pending_secret IS NOT NULL")[0]
    assert secret not in pending and sealing.is_sealed(pending)
    assert pending.split(".")[1] == sealing.keys()[0].id  # the key id travels with the value
    # When enrolment finishes
    code = pyotp.TOTP(secret).now()
    enabled = api_call(
        "POST", "/auth/two-factor/totp/enable", headers=headers, through_authorizer=True, body={"code": code}
    )
    assert enabled.status == 200
    # Then the stored secret is sealed too, and still opens the sign-in
    stored = _row("SELECT totp_secret FROM users WHERE totp_secret IS NOT NULL")[0]
    assert secret not in stored and sealing.is_sealed(stored)
    challenge = auth_env.login(email)["challenge_id"]
    later = pyotp.TOTP(secret).at(time.time() + 30)
    done = api_call("POST", "/auth/login/two-factor", body={"challenge_id": challenge, "code": later})
    assert done.status == 200


def test_a_sealed_value_opens_only_in_its_own_place_and_after_rotation(auth_env: AuthEnv) -> None:
    # Given a value sealed for one row
    sealed = sealing.seal("JBSWY3DPEHPK3PXP", "users.totp_secret:one")
    # Then it opens there, and not when copied to another row
    assert sealing.unseal(sealed, "users.totp_secret:one") == "JBSWY3DPEHPK3PXP"
    with pytest.raises(ConfigurationError):
        sealing.unseal(sealed, "users.totp_secret:two")
    # When a new master key is put first (the old one kept after it)
    old = get_settings().jwt_signing_key
    assert old is not None
    auth_env.set(SECRET_ENCRYPTION_KEYS=f"{'n' * 40},{old.get_secret_value()}")
    # Then new values are sealed under the new key id, and old ones still open (and ask to be re-sealed)
    fresh = sealing.seal("JBSWY3DPEHPK3PXP", "users.totp_secret:one")
    assert fresh.split(".")[1] != sealed.split(".")[1]
    assert sealing.unseal(sealed, "users.totp_secret:one") == "JBSWY3DPEHPK3PXP"
    assert sealing.reseal_needed(sealed) and not sealing.reseal_needed(fresh)
    # And once the old key is dropped, its values no longer open
    auth_env.set(SECRET_ENCRYPTION_KEYS="n" * 40)
    with pytest.raises(ConfigurationError):
        sealing.unseal(sealed, "users.totp_secret:one")


@pytest.fixture
def provider(auth_env: AuthEnv) -> Iterator[StandInProvider]:
    stand_in = StandInProvider()
    auth_env.set(
        GOOGLE_CLIENT_ID="google-client", GOOGLE_CLIENT_SECRET=stand_in.client_secret,
        GOOGLE_AUTHORIZE_URL=f"{stand_in.base}/authorize", GOOGLE_TOKEN_URL=f"{stand_in.base}/token",
        GOOGLE_USERINFO_URL=f"{stand_in.base}/userinfo",
    )  # fmt: skip
    yield stand_in
    stand_in.server.shutdown()


def test_pkce_verifiers_are_sealed_while_the_sign_in_is_pending(provider: StandInProvider) -> None:
    # Given an OAuth sign-in that has started
    start = api_call("GET", "/auth/oauth/google/authorize")
    assert start.status == 200
    # Then the stored verifier is sealed (a 43+ character verifier would be plain [A-Za-z0-9_-])
    verifier, state_hash = _row("SELECT code_verifier, state_hash FROM oauth_states")
    assert sealing.is_sealed(verifier) and start.json["state"] != state_hash
    # And the provider still sees a verifier that matches its challenge: the sign-in completes
    code, state = provider.approve(start.json["authorization_url"], _google("pkce@example.com"))
    done = api_call("GET", "/auth/oauth/google/callback", query=f"code={code}&state={state}")
    assert done.status == 200, done.json
    # And that session proved no password: a credential change asks for a reauthentication
    again = api_call(
        "POST", "/auth/api-keys", headers=bearer(done.json["access_token"]), through_authorizer=True,
        body={"name": "k"},
    )  # fmt: skip
    assert again.status == 403 and again.error_code == "reauthentication_required"

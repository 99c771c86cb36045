"""Sign-in primitives without a database: password policy and hashing, secrets, access tokens, roles."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from tollgate.auth import passwords
from tollgate.auth.access_tokens import issue_access_token, verify_access_token
from tollgate.auth.secrets import hash_secret, new_code, new_token, pkce_challenge
from tollgate.config import get_settings
from tollgate.errors import ConfigurationError, Forbidden, WeakPassword
from tollgate.services.authz import Actor, require_role


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch):
    get_settings.cache_clear()
    passwords.hasher.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()
    passwords.hasher.cache_clear()


@pytest.mark.parametrize(
    ("password", "reason"),
    [("1234567", "length"), ("x" * 129, "length"), ("Password123", "common"), ("QWERTYUIOP", "common"),
     ("someone@example.com", "email"), ("someone", "length"), ("someone1", None)],
)  # fmt: skip
def test_password_policy(password: str, reason: str | None) -> None:
    # Given a candidate password for someone@example.com
    # When it is checked
    if reason is None:
        passwords.check_password_policy(password, email="someone@example.com")
        return
    with pytest.raises(WeakPassword) as caught:
        passwords.check_password_policy(password, email="someone@example.com")
    # Then it is refused for the stated reason
    assert caught.value.details["reason"] == reason


def test_unicode_passwords_count_characters_and_normalise() -> None:
    # Given an 8-character password in composed and decomposed forms
    composed, decomposed = "caf\u00e9caf\u00e9", "cafe\u0301cafe\u0301"
    passwords.check_password_policy(composed)
    # When one form is hashed, Then the other verifies
    assert passwords.verify_password(passwords.hash_password(composed), decomposed)


def test_hash_parameters_never_drop_below_the_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the default settings
    stored = passwords.hash_password("a fine password")
    # Then the hash is argon2id m=19456 t=2 p=1
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    # And settings below the floor are refused
    monkeypatch.setenv("PASSWORD_HASH_MEMORY_KIB", "4096")
    get_settings.cache_clear()
    with pytest.raises(ValueError):
        get_settings()


def test_unknown_accounts_cost_a_hash_too() -> None:
    # When no hash is stored, Then verification fails but still runs argon2 (a dummy hash)
    started = time.perf_counter()
    assert passwords.verify_password(None, "anything at all") is False
    assert time.perf_counter() - started > 0.005
    assert passwords._dummy_hash().startswith("$argon2id$")


def test_secrets_are_random_and_stored_as_hashes() -> None:
    # Then tokens are 256-bit and distinct, codes are 6 digits, and a code's hash depends on its challenge
    assert len({new_token() for _ in range(100)}) == 100 and len(new_token()) >= 43
    assert all(len(c) == 6 and c.isdigit() for c in (new_code() for _ in range(100)))
    assert hash_secret("123456", context="a") != hash_secret("123456", context="b")
    # And the PKCE challenge is RFC 7636's S256
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    digest = hashlib.sha256(verifier.encode()).digest()
    assert pkce_challenge(verifier) == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_access_tokens_round_trip_with_every_claim() -> None:
    # Given a token issued now
    user_id, session_id = uuid.uuid4(), uuid.uuid4()
    token, ttl = issue_access_token(user_id, session_id, "ADMIN", datetime.now(UTC))
    # Then it verifies to the same user, session and role, and carries every required claim
    claims = verify_access_token(token)
    assert claims is not None and (claims.user_id, claims.session_id, claims.role) == (user_id, session_id, "ADMIN")
    raw = jwt.decode(token, options={"verify_signature": False})
    assert {"iss", "aud", "sub", "sid", "role", "iat", "nbf", "exp", "jti"} <= set(raw)
    assert raw["exp"] - raw["iat"] == ttl == 900
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_access_tokens_expire() -> None:
    # Given a token issued 16 minutes ago, Then it no longer verifies
    token, _ = issue_access_token(uuid.uuid4(), uuid.uuid4(), "USER", datetime.now(UTC) - timedelta(minutes=16))
    assert verify_access_token(token) is None


def test_signing_key_must_be_set_and_long(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no key, or a short one, Then issuing refuses (never a default key)
    monkeypatch.delenv("JWT_SIGNING_KEY", raising=False)
    get_settings.cache_clear()
    with pytest.raises(ConfigurationError):
        issue_access_token(uuid.uuid4(), uuid.uuid4(), "USER", datetime.now(UTC))
    monkeypatch.setenv("JWT_SIGNING_KEY", "short")
    get_settings.cache_clear()
    with pytest.raises(ConfigurationError):
        issue_access_token(uuid.uuid4(), uuid.uuid4(), "USER", datetime.now(UTC))


def test_require_role() -> None:
    # Given an actor of each role, and the CLI's operator
    admin, support, user = (Actor.user(uuid.uuid4(), role) for role in ("ADMIN", "SUPPORT", "USER"))
    operator = Actor.operator()
    # Then a listed role passes, another is Forbidden (the operator too, unless named), and misuse is a
    # programming error
    require_role(admin, "ADMIN")
    require_role(support, "ADMIN", "SUPPORT")
    require_role(operator, "ADMIN", "OPERATOR")
    with pytest.raises(Forbidden):
        require_role(user, "ADMIN")
    with pytest.raises(Forbidden):
        require_role(operator, "ADMIN")
    with pytest.raises(ValueError):
        require_role(admin)
    with pytest.raises(ValueError):
        require_role(admin, "ROOT")

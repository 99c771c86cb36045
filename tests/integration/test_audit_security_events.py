# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""Security events in the audit trail (issue 14): sign-in, a burst of failed sign-ins (once, at the lockout
threshold), password reset asked and done, password change, 2FA on and off, API keys made and revoked, sessions
revoked and credentials locked. Each row is written in the transaction of what it records, with the request's IP
and user agent."""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from sqlalchemy import func, select, text

from tests.integration.auth_helpers import PASSWORD, AuthEnv, auth_env, bearer  # noqa: F401
from tests.support import api_call
from tollgate.db import UnitOfWork
from tollgate.errors import InvalidCredentials
from tollgate.models import User
from tollgate.services import identity

AGENT = {"user-agent": "security-events-test/1"}


def _user_id(email: str) -> uuid.UUID:
    with UnitOfWork() as uow:
        found: uuid.UUID = uow.session.execute(
            select(User.id).where(func.lower(User.email) == email.lower())
        ).scalar_one()
        return found


def _events(prefix: str = "auth.") -> list[dict[str, Any]]:
    with UnitOfWork() as uow:
        rows = uow.session.execute(
            text("SELECT * FROM audit_logs WHERE action LIKE :p ORDER BY created_at, id"), {"p": prefix + "%"}
        )
        return [dict(r._mapping) for r in rows]


def _caller(email: str, session_id: str | None = None) -> identity.Caller:
    return identity.Caller(_user_id(email), session_id=session_id or str(uuid.uuid4()), auth_time=int(time.time()))


def test_a_sign_in_is_recorded_with_its_session_ip_and_user_agent(auth_env: AuthEnv) -> None:
    # Given a verified account (registering writes no security event)
    email = auth_env.register_verified()
    assert _events() == []
    # When it signs in through the gateway
    response = api_call("POST", "/auth/login", body={"email": email, "password": PASSWORD}, headers=AGENT)
    assert response.status == 200, response.json
    # Then one auth.sign_in row: the user as actor and resource, the session it opened, the request's origin
    (row,) = _events()
    user_id = _user_id(email)
    assert row["action"] == "auth.sign_in" and row["actor_id"] == user_id
    assert (row["target_type"], row["target_id"]) == ("user", str(user_id))
    assert row["details"] == {"method": "password", "session_id": response.json["session_id"]}
    assert row["ip_address"] == "203.0.113.9" and row["user_agent"] == "security-events-test/1"


def test_a_two_factor_sign_in_is_recorded_once_it_completes(auth_env: AuthEnv) -> None:
    # Given an account with mailed codes on
    email = auth_env.register_verified()
    identity.enable_email_two_factor(UnitOfWork(), _caller(email))
    # When it proves the password, then the code
    challenge = auth_env.login(email)
    assert _events("auth.sign_in") == []
    code = auth_env.code_from(email)
    done = api_call("POST", "/auth/login/two-factor", body={"challenge_id": challenge["challenge_id"], "code": code})
    assert done.status == 200, done.json
    # Then the sign-in is recorded when the session opens, with its second factor
    (row,) = _events("auth.sign_in")
    assert row["details"]["second_factor"] == "email" and row["details"]["session_id"] == done.json["session_id"]


def test_a_burst_of_failed_sign_ins_is_recorded_once_at_the_threshold(auth_env: AuthEnv) -> None:
    # Given an account locked after 3 failures
    auth_env.set(LOGIN_MAX_FAILURES_PER_ACCOUNT=3)
    email = auth_env.register_verified()
    # When the wrong password is tried twice
    for _ in range(2):
        assert api_call("POST", "/auth/login", body={"email": email, "password": "wrong" * 3}).status == 401
    # Then no burst yet
    assert _events("auth.sign_in_failures") == []
    # When the third failure reaches the threshold, and later tries meet the lockout
    assert api_call("POST", "/auth/login", body={"email": email, "password": "wrong" * 3}).status == 401
    for _ in range(2):
        assert api_call("POST", "/auth/login", body={"email": email, "password": "wrong" * 3}).status == 429
    # Then exactly one row records the burst against the account, its actor unknown
    (row,) = _events("auth.sign_in_failures")
    assert row["actor_id"] is None and row["target_type"] == "user" and row["target_id"] == str(_user_id(email))
    assert row["details"] == {"scope": "account"} and row["ip_address"] == "203.0.113.9"


def test_a_burst_from_one_address_across_accounts_is_recorded_against_the_address(auth_env: AuthEnv) -> None:
    # Given at most 4 failures per source address, and unknown emails tried from one address
    auth_env.set(LOGIN_MAX_FAILURES_PER_IP=4)
    for n in range(4):
        body = {"email": f"nobody-{n}@example.com", "password": "wrong" * 3}
        assert api_call("POST", "/auth/login", body=body).status == 401
    # Then one row names the address; no account is named for unknown emails
    rows = _events("auth.sign_in_failures")
    assert [(r["target_type"], r["target_id"], r["details"]) for r in rows] == [("ip", "203.0.113.9", {"scope": "ip"})]


def test_a_failed_attempt_and_its_burst_row_commit_together(auth_env: AuthEnv) -> None:
    # Given a threshold of one failure
    auth_env.set(LOGIN_MAX_FAILURES_PER_ACCOUNT=1)
    email = auth_env.register_verified()
    # When the wrong password is tried through the service (it refuses after committing the count)
    with contextlib.suppress(InvalidCredentials):
        identity.login(UnitOfWork(), email, "wrong" * 3, identity.ClientInfo(ip=None))
    # Then the burst row exists exactly when the counter was kept
    with UnitOfWork() as uow:
        counted = uow.session.execute(text("SELECT failures FROM auth_throttles WHERE scope = 'account'")).scalar()
    assert counted == 1
    assert [r["details"] for r in _events("auth.sign_in_failures")] == [{"scope": "account"}]


def test_password_reset_requested_and_completed_are_recorded(auth_env: AuthEnv) -> None:
    # Given an account, and an unknown email
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    # When a reset is asked for both
    assert api_call("POST", "/auth/password/forgot", body={"email": email}).status == 202
    assert api_call("POST", "/auth/password/forgot", body={"email": "nobody@example.com"}).status == 202
    # Then only the account's is recorded, its actor unknown (anyone may ask)
    user_id = _user_id(email)
    (asked,) = _events("auth.password_reset")
    assert (asked["action"], asked["actor_id"], asked["target_id"]) == (
        "auth.password_reset.requested", None, str(user_id),
    )  # fmt: skip
    # When the link is used
    token = auth_env.token_from(email, "password_reset")
    reset = api_call("POST", "/auth/password/reset", body={"token": token, "password": PASSWORD + " again"})
    assert reset.status in (200, 204), reset.json
    # Then the reset is recorded with what it revoked
    done = _events("auth.password_reset.completed")
    assert [(r["actor_id"], r["details"]) for r in done] == [(user_id, {"sessions_revoked": 1, "api_keys_revoked": 0})]
    assert tokens["session_id"]


def test_password_change_and_two_factor_on_and_off_are_recorded(auth_env: AuthEnv) -> None:
    # Given a signed-in account
    email = auth_env.register_verified()
    user_id = _user_id(email)
    # When it turns mailed codes on, then off, and changes its password
    identity.enable_email_two_factor(UnitOfWork(), _caller(email))
    identity.disable_two_factor(UnitOfWork(), _caller(email), PASSWORD, None)
    identity.change_password(UnitOfWork(), _caller(email), PASSWORD, PASSWORD + " changed", None)
    # Then each is a row naming the user, with the method before and after
    rows = [(r["action"], r["actor_id"], r["old_values"], r["new_values"]) for r in _events()]
    assert rows == [
        ("auth.two_factor.enabled", user_id, {"two_factor_method": None}, {"two_factor_method": "email"}),
        ("auth.two_factor.disabled", user_id, {"two_factor_method": "email"}, {"two_factor_method": None}),
        ("auth.password.changed", user_id, None, None),
    ]
    # And turning off a second factor that is not on records nothing
    identity.disable_two_factor(UnitOfWork(), _caller(email), PASSWORD + " changed", None)
    assert len(_events("auth.two_factor")) == 2


def test_api_keys_made_and_revoked_are_recorded_without_the_secret(auth_env: AuthEnv) -> None:
    # Given a signed-in account
    email = auth_env.register_verified()
    # When it makes a key, then revokes it twice
    created = identity.create_api_key(UnitOfWork(), _caller(email), "ci", scopes=["credits:read"])
    identity.revoke_api_key(UnitOfWork(), _user_id(email), created.view.id)
    identity.revoke_api_key(UnitOfWork(), _user_id(email), created.view.id)
    # Then one row each for the making and the (first) revocation, naming the key, never its secret
    rows = _events("auth.api_key")
    assert [(r["action"], r["target_type"], r["target_id"]) for r in rows] == [
        ("auth.api_key.created", "api_key", str(created.view.id)),
        ("auth.api_key.revoked", "api_key", str(created.view.id)),
    ]
    assert rows[0]["new_values"]["scopes"] == ["credits:read"] and rows[0]["new_values"]["prefix"]
    assert created.key not in str(rows)


def test_revoking_another_session_is_recorded_but_a_logout_is_not(auth_env: AuthEnv) -> None:
    # Given an account signed in twice
    email = auth_env.register_verified()
    first, second = auth_env.login(email), auth_env.login(email)
    # When the first session revokes the second, then logs out
    identity.revoke_session(UnitOfWork(), _caller(email, first["session_id"]), uuid.UUID(second["session_id"]))
    out = api_call("POST", "/auth/logout", headers=bearer(first["access_token"]), through_authorizer=True)
    assert out.status in (200, 204), out.body
    # Then one row names the revoked session
    rows = _events("auth.session")
    assert [(r["action"], r["target_type"], r["target_id"], r["details"]) for r in rows] == [
        ("auth.session.revoked", "session", second["session_id"], {"reason": "revoked"})
    ]


def test_the_lock_link_of_a_security_notice_is_recorded_with_what_it_revoked(auth_env: AuthEnv) -> None:
    # Given an account with a session that made an API key (a change that mails a lock link)
    email = auth_env.register_verified()
    auth_env.login(email)
    identity.create_api_key(UnitOfWork(), _caller(email), "ci", scopes=["credits:read"])
    token = auth_env.token_from(email, "security_api_key_created")
    # When the lock link is used
    identity.lock_account(UnitOfWork(), token)
    # Then the lock is recorded with the sessions and keys it revoked
    (row,) = _events("auth.account.locked")
    assert row["actor_id"] == _user_id(email) and row["details"] == {"sessions_revoked": 1, "api_keys_revoked": 1}


def test_a_replayed_refresh_token_revokes_its_session_and_is_recorded(auth_env: AuthEnv) -> None:
    # Given a session whose refresh token was rotated
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    rotated = api_call("POST", "/auth/token/refresh", body={"refresh_token": tokens["refresh_token"]})
    assert rotated.status == 200, rotated.json
    # When the old token comes back
    replayed = api_call("POST", "/auth/token/refresh", body={"refresh_token": tokens["refresh_token"]})
    # Then the session is revoked and the revocation recorded, its actor unknown
    assert replayed.status == 401, replayed.json
    rows = _events("auth.session")
    assert [(r["actor_id"], r["target_id"], r["details"]) for r in rows] == [
        (None, tokens["session_id"], {"reason": "reuse_detected", "user_id": str(_user_id(email))})
    ]

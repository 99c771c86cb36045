# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""Recovery that recovers (issue 11, finding 2), step-up for credential changes, security notices with their
lock link, and TOTP recovery codes. Through the real handlers and authorizer."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pyotp

from tests.integration.auth_helpers import PASSWORD, AuthEnv, auth_env, bearer, mail_text  # noqa: F401
from tests.support import api_call

NEW_PASSWORD = "a brand new secret"


def _post(path: str, token: str, body: Any = None) -> Any:
    return api_call("POST", path, headers=bearer(token), through_authorizer=True, body=body)


def _enrol_totp(token: str) -> tuple[pyotp.TOTP, list[str]]:
    setup = _post("/auth/two-factor/totp/setup", token)
    assert setup.status == 200, setup.json
    totp = pyotp.TOTP(setup.json["secret"])
    enabled = _post("/auth/two-factor/totp/enable", token, {"code": totp.now()})
    assert enabled.status == 200, enabled.json
    return totp, enabled.json["recovery_codes"]


def _reset(auth_env: AuthEnv, email: str, password: str = NEW_PASSWORD) -> None:
    assert api_call("POST", "/auth/password/forgot", body={"email": email}).status == 202
    token = auth_env.token_from(email, "password_reset")
    assert api_call("POST", "/auth/password/reset", body={"token": token, "password": password}).status == 200


def _stale(token: str, seconds: int) -> str:
    """The same access token with its auth_time moved `seconds` into the past (as after a long session)."""
    from tollgate.config import get_settings

    claims = jwt.decode(token, options={"verify_signature": False})
    claims["auth_time"] = int(time.time()) - seconds
    key = get_settings().jwt_signing_key
    assert key is not None
    return jwt.encode(claims, key.get_secret_value(), algorithm="HS256", headers={"typ": "at+jwt"})


# --- finding 2: a reset (or change) recovers the account ---------------------------------------------------------
def test_a_password_reset_revokes_api_keys_and_removes_an_intruders_totp(auth_env: AuthEnv) -> None:
    # Given someone who held the account: they minted an API key and enrolled TOTP
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="0")
    email = auth_env.register_verified()
    intruder = auth_env.login(email)["access_token"]
    key = _post("/auth/api-keys", intruder, {"name": "backdoor"}).json["key"]
    _enrol_totp(intruder)
    assert api_call("GET", "/auth/me", headers={"x-api-key": key}, through_authorizer=True).status == 200
    # When the owner resets the password from her mailbox
    _reset(auth_env, email)
    auth_env.set()  # a fresh container: no cached verdicts
    # Then the key is dead, and the intruder's TOTP no longer gates her sign-in
    assert api_call("GET", "/auth/me", headers={"x-api-key": key}, through_authorizer=True).status == 403
    signed_in = auth_env.login(email, NEW_PASSWORD)
    assert "access_token" in signed_in and "two_factor_required" not in signed_in
    # And she is told the password was reset
    assert auth_env.mail_count(email, "security_password_reset", "sent") == 1


def test_a_reset_keeps_a_second_factor_the_owner_has_signed_in_with(auth_env: AuthEnv) -> None:
    # Given an owner who enrolled TOTP and has signed in with it since
    email = auth_env.register_verified()
    totp, _ = _enrol_totp(auth_env.login(email)["access_token"])
    challenge = auth_env.login(email)
    later = totp.at(time.time() + 30)  # the enrolment code's step is spent
    done = api_call("POST", "/auth/login/two-factor", body={"challenge_id": challenge["challenge_id"], "code": later})
    assert done.status == 200
    # When she resets her password
    _reset(auth_env, email)
    # Then TOTP still gates the sign-in
    assert auth_env.login(email, NEW_PASSWORD)["two_factor_required"] is True


def test_a_password_change_revokes_every_api_key_and_other_session(auth_env: AuthEnv) -> None:
    # Given a user with an API key and a second session
    email = auth_env.register_verified()
    here, elsewhere = auth_env.login(email), auth_env.login(email)
    key = _post("/auth/api-keys", here["access_token"], {"name": "ci"}).json["key"]
    # When the password is changed
    changed = _post(
        "/auth/password/change", here["access_token"], {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    )
    assert changed.status == 200
    auth_env.set()
    # Then the key and the other session are dead, and this session lives on
    assert api_call("GET", "/auth/me", headers={"x-api-key": key}, through_authorizer=True).status == 403
    assert api_call("POST", "/auth/token/refresh", body={"refresh_token": elsewhere["refresh_token"]}).status == 401
    assert api_call("POST", "/auth/token/refresh", body={"refresh_token": here["refresh_token"]}).status == 200
    assert auth_env.mail_count(email, "security_password_changed", "sent") == 1


# --- step-up --------------------------------------------------------------------------------------------------
def test_credential_changes_need_a_recent_password_proof(auth_env: AuthEnv) -> None:
    # Given a session whose password sign-in is older than the step-up window
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    stale = _stale(tokens["access_token"], 3600)
    # When it tries each credential change
    attempts = [
        _post("/auth/api-keys", stale, {"name": "late"}),
        _post("/auth/two-factor/email/enable", stale),
        _post("/auth/two-factor/totp/setup", stale),
        _post("/auth/password/change", stale, {"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
        api_call(
            "DELETE", f"/auth/sessions/{auth_env.login(email)['session_id']}", headers=bearer(stale),
            through_authorizer=True,
        ),
    ]  # fmt: skip
    # Then each answers 403 reauthentication_required
    assert [(a.status, a.error_code) for a in attempts] == [(403, "reauthentication_required")] * 5
    # When it reauthenticates (a wrong password first)
    wrong = _post("/auth/reauthenticate", stale, {"password": "not my password"})
    assert wrong.status == 401
    fresh = _post("/auth/reauthenticate", stale, {"password": PASSWORD})
    assert fresh.status == 200 and fresh.json["step_up_until"] > fresh.json["auth_time"]
    # Then the new access token (same session) may make the change
    assert jwt.decode(fresh.json["access_token"], options={"verify_signature": False})["sid"] == tokens["session_id"]
    assert _post("/auth/api-keys", fresh.json["access_token"], {"name": "now"}).status == 201
    # And ending its own session never needs a step-up
    own = api_call("DELETE", f"/auth/sessions/{tokens['session_id']}", headers=bearer(stale), through_authorizer=True)
    assert own.status == 204


def test_a_refreshed_token_keeps_the_sign_in_time(auth_env: AuthEnv) -> None:
    # Given a sign-in, then a refresh
    email = auth_env.register_verified()
    first = auth_env.login(email)
    second = api_call("POST", "/auth/token/refresh", body={"refresh_token": first["refresh_token"]}).json
    # Then the new access token carries the original auth_time (refreshing proves no password)
    claims = [jwt.decode(t["access_token"], options={"verify_signature": False}) for t in (first, second)]
    assert claims[0]["auth_time"] == claims[1]["auth_time"]


def test_reauthentication_with_totp_needs_the_code(auth_env: AuthEnv) -> None:
    # Given a TOTP user with a stale session
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    _, codes = _enrol_totp(tokens["access_token"])
    stale = _stale(tokens["access_token"], 3600)
    # When they reauthenticate with the password alone, Then it is not enough
    alone = _post("/auth/reauthenticate", stale, {"password": PASSWORD})
    assert alone.status == 401 and alone.error_code == "invalid_code"
    # And with a recovery code it is
    assert _post("/auth/reauthenticate", stale, {"password": PASSWORD, "code": codes[0]}).status == 200


# --- notices and the lock link --------------------------------------------------------------------------------
def test_each_credential_change_mails_a_notice_whose_link_locks_the_account(auth_env: AuthEnv) -> None:
    # Given a user who (or whose intruder) adds an API key and turns on mailed 2FA
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="0")
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    key = _post("/auth/api-keys", tokens["access_token"], {"name": "x"}).json["key"]
    assert _post("/auth/two-factor/email/enable", tokens["access_token"]).status == 200
    # Then a notice went out for each, through the mail log
    assert auth_env.mail_count(email, "security_api_key_created", "sent") == 1
    assert auth_env.mail_count(email, "security_two_factor_enabled", "sent") == 1
    # When the owner follows the 2FA notice's lock link
    lock = auth_env.token_from(email, "security_two_factor_enabled")
    locked = api_call("POST", "/auth/lock", body={"token": lock})
    assert locked.status == 200 and locked.json == {"status": "locked"}
    auth_env.set()
    # Then sessions and keys are dead, the password no longer works, and the link is single-use
    assert api_call("GET", "/auth/me", headers={"x-api-key": key}, through_authorizer=True).status == 403
    assert api_call("POST", "/auth/token/refresh", body={"refresh_token": tokens["refresh_token"]}).status == 401
    assert api_call("POST", "/auth/login", body={"email": email, "password": PASSWORD}).status == 401
    assert api_call("POST", "/auth/lock", body={"token": lock}).error_code == "invalid_token"
    # And the reset link mailed with the lock brings the owner back, without the 2FA that was just added
    reset = auth_env.token_from(email, "account_locked")
    assert api_call("POST", "/auth/password/reset", body={"token": reset, "password": NEW_PASSWORD}).status == 200
    assert "access_token" in auth_env.login(email, NEW_PASSWORD)


# --- recovery codes -------------------------------------------------------------------------------------------
def test_totp_users_get_ten_one_time_recovery_codes(auth_env: AuthEnv) -> None:
    # Given a user who turned TOTP on
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    _, codes = _enrol_totp(tokens["access_token"])
    # Then ten distinct codes came back, and none is stored as given
    assert len(codes) == len(set(codes)) == 10
    from sqlalchemy import text

    from tollgate.db import UnitOfWork

    with UnitOfWork() as uow:
        stored = set(uow.session.execute(text("SELECT code_hash FROM recovery_codes")).scalars())
    assert len(stored) == 10 and not stored & set(codes)
    # When one is used in place of a TOTP code at sign-in
    challenge = auth_env.login(email)["challenge_id"]
    done = api_call("POST", "/auth/login/two-factor", body={"challenge_id": challenge, "code": codes[3]})
    # Then it signs in once, and a notice is mailed
    assert done.status == 200
    again = auth_env.login(email)["challenge_id"]
    reused = api_call("POST", "/auth/login/two-factor", body={"challenge_id": again, "code": codes[3]})
    assert reused.status == 401
    assert auth_env.mail_count(email, "security_recovery_code_used", "sent") == 1
    # When new codes are made, Then the old ones stop working
    fresh = _post("/auth/two-factor/recovery-codes", tokens["access_token"])
    assert fresh.status == 200 and len(fresh.json["recovery_codes"]) == 10
    old = api_call("POST", "/auth/login/two-factor", body={"challenge_id": again, "code": codes[4]})
    assert old.status == 401
    new = api_call(
        "POST", "/auth/login/two-factor", body={"challenge_id": again, "code": fresh.json["recovery_codes"][0]}
    )
    assert new.status == 200

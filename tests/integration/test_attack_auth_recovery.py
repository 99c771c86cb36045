# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""Recovery attacked from outside (issue 11 review): a sign-in started with the old password, lock links and
recovery codes. Through the real handlers and authorizer."""

from __future__ import annotations

from typing import Any

import pyotp

from tests.integration.auth_helpers import PASSWORD, AuthEnv, auth_env, bearer  # noqa: F401
from tests.support import api_call

NEW_PASSWORD = "a brand new secret"
WRONG_RECOVERY = "abcde-fghjk"


def _post(path: str, token: str, body: Any = None) -> Any:
    return api_call("POST", path, headers=bearer(token), through_authorizer=True, body=body)


def _enrol_totp(token: str) -> tuple[pyotp.TOTP, list[str]]:
    setup = _post("/auth/two-factor/totp/setup", token)
    assert setup.status == 200, setup.json
    totp = pyotp.TOTP(setup.json["secret"])
    enabled = _post("/auth/two-factor/totp/enable", token, {"code": totp.now()})
    assert enabled.status == 200, enabled.json
    return totp, enabled.json["recovery_codes"]


def _second_factor(challenge_id: str, code: str) -> Any:
    return api_call("POST", "/auth/login/two-factor", body={"challenge_id": challenge_id, "code": code})


def _owner_with_totp(auth_env: AuthEnv) -> tuple[str, dict[str, Any], list[str]]:
    """A TOTP user who has signed in with it since enrolling (so a reset keeps her factor)."""
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="0")
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    _, codes = _enrol_totp(tokens["access_token"])
    assert _second_factor(auth_env.login(email)["challenge_id"], codes[9]).status == 200
    return email, tokens, codes


def test_a_sign_in_started_with_the_old_password_cannot_finish_after_a_reset(auth_env: AuthEnv) -> None:
    # Given an attacker who has the owner's password and one of her recovery codes, and has passed the password
    # step of a sign-in
    email, _, codes = _owner_with_totp(auth_env)
    challenge = auth_env.login(email)["challenge_id"]
    # When the owner resets her password before he sends the second factor
    assert api_call("POST", "/auth/password/forgot", body={"email": email}).status == 202
    token = auth_env.token_from(email, "password_reset")
    assert api_call("POST", "/auth/password/reset", body={"token": token, "password": NEW_PASSWORD}).status == 200
    # Then his half-finished sign-in is dead
    late = _second_factor(challenge, codes[0])
    assert late.status == 401, late.json
    # And the owner still signs in with the new password and her factor
    assert _second_factor(auth_env.login(email, NEW_PASSWORD)["challenge_id"], codes[1]).status == 200


def test_a_sign_in_started_with_the_old_password_cannot_finish_after_a_change(auth_env: AuthEnv) -> None:
    # Given an attacker half-way through a sign-in with the owner's password
    email, _, codes = _owner_with_totp(auth_env)
    challenge = auth_env.login(email)["challenge_id"]
    # When the owner, freshly signed in, changes the password
    fresh = _second_factor(auth_env.login(email)["challenge_id"], codes[1]).json["access_token"]
    changed = _post("/auth/password/change", fresh, {"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert changed.status == 200, changed.json
    # Then the attacker's sign-in cannot be finished
    assert _second_factor(challenge, codes[0]).status == 401


def test_a_sign_in_in_progress_cannot_finish_after_the_lock_link(auth_env: AuthEnv) -> None:
    # Given an owner whose TOTP predates the change she is warned of (a new API key), and an attacker half-way
    # through a sign-in with her password
    email, tokens, codes = _owner_with_totp(auth_env)
    fresh = _second_factor(auth_env.login(email)["challenge_id"], codes[1]).json["access_token"]
    assert _post("/auth/api-keys", fresh, {"name": "ci"}).status == 201
    challenge = auth_env.login(email)["challenge_id"]
    # When she follows the notice's lock link
    lock = auth_env.token_from(email, "security_api_key_created")
    assert api_call("POST", "/auth/lock", body={"token": lock}).status == 200
    # Then the attacker's sign-in cannot be finished, though her own factor stays
    assert _second_factor(challenge, codes[0]).status == 401
    # And the lock link works once only, and a made-up one not at all
    assert api_call("POST", "/auth/lock", body={"token": lock}).status == 400
    assert api_call("POST", "/auth/lock", body={"token": lock[:-2] + "AA"}).status == 400
    # And after she recovers with the mailed reset link, the old lock link still does nothing
    reset = auth_env.token_from(email, "account_locked")
    assert api_call("POST", "/auth/password/reset", body={"token": reset, "password": NEW_PASSWORD}).status == 200
    assert api_call("POST", "/auth/lock", body={"token": lock}).status == 400
    assert _second_factor(auth_env.login(email, NEW_PASSWORD)["challenge_id"], codes[2]).status == 200
    auth_env.set()  # a fresh container: no cached verdicts
    assert api_call("GET", "/auth/me", headers=bearer(tokens["access_token"]), through_authorizer=True).status == 403


def test_recovery_codes_cannot_be_guessed_or_reused(auth_env: AuthEnv) -> None:
    # Given a TOTP user, and an attacker who knows her password but not her codes
    email, tokens, codes = _owner_with_totp(auth_env)
    # When a code is used once for step-up, Then it does not work a second time
    first = _post("/auth/reauthenticate", tokens["access_token"], {"password": PASSWORD, "code": codes[4]})
    again = _post("/auth/reauthenticate", tokens["access_token"], {"password": PASSWORD, "code": codes[4]})
    assert (first.status, again.status) == (200, 401)
    # When the attacker guesses recovery codes on one challenge
    challenge = auth_env.login(email)["challenge_id"]
    answers = [_second_factor(challenge, WRONG_RECOVERY).status for _ in range(5)]
    # Then the account locks after the allowed failures, and even a right code no longer opens the challenge
    assert 401 in answers and answers[-1] == 429
    assert _second_factor(challenge, codes[3]).status == 429

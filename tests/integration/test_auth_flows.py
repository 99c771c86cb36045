# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""Accounts and sign-in through the real AuthFunction handler (API.md "Auth"), against the real database."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from email.message import EmailMessage

import pyotp
import pytest
from sqlalchemy import func, select, text, update

from tests.integration.auth_helpers import PASSWORD, AuthEnv, auth_env, bearer  # noqa: F401
from tests.support import api_call
from tollgate.auth import passwords
from tollgate.db import UnitOfWork
from tollgate.mail import backends
from tollgate.mail import service as mail_service
from tollgate.models import User
from tollgate.models.auth import AuthSession, PasswordResetToken, TwoFactorToken, VerificationToken
from tollgate.services import identity


def _user(email: str) -> User:
    with UnitOfWork() as uow:
        user = uow.session.execute(select(User).where(func.lower(User.email) == email.lower())).scalar_one()
        uow.session.expunge(user)
        return user


def _signed_in_now(email: str) -> identity.Caller:
    """A caller whose session proved the password just now (what the authorizer passes after a sign-in)."""
    return identity.Caller(user_id=_user(email).id, session_id=str(uuid.uuid4()), auth_time=int(time.time()))


def _set_user(email: str, **values: object) -> None:
    with UnitOfWork() as uow:
        uow.session.execute(update(User).where(func.lower(User.email) == email.lower()).values(**values))
        uow.commit()


# --- register and verify ----------------------------------------------------------------------------------------
def test_register_verify_login_me(auth_env: AuthEnv) -> None:
    # Given a new email
    email = f"new-{uuid.uuid4().hex[:8]}@Example.com"
    # When it registers
    response = api_call("POST", "/auth/register", body={"email": email, "password": PASSWORD, "name": "Ada"})
    # Then the answer is 202 and a verification link was mailed; signing in waits for it
    assert response.status == 202
    assert response.json == {"status": "verification_sent"}
    early = api_call("POST", "/auth/login", body={"email": email, "password": PASSWORD})
    assert early.status == 401 and early.error_code == "invalid_credentials"
    token = auth_env.token_from(email, "verify_email")
    # When the link's token is posted with the registration's password
    verified = api_call("POST", "/auth/verify-email", body={"token": token, "password": PASSWORD})
    # Then the account is verified, the token is spent, and sign-in works (any case of the email)
    assert verified.status == 200
    again = api_call("POST", "/auth/verify-email", body={"token": token, "password": PASSWORD})
    assert again.status == 400 and again.error_code == "invalid_token"
    tokens = auth_env.login(email.lower())
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 900
    me = api_call("GET", "/auth/me", headers=bearer(tokens["access_token"]), through_authorizer=True)
    assert me.status == 200
    profile = me.json
    assert profile["email"] == email and profile["name"] == "Ada" and profile["role"] == "USER"
    assert profile["email_verified"] is True and profile["two_factor_enabled"] is False
    assert {"id", "username", "image", "status", "tier", "timezone", "language"} <= set(profile)


def test_register_grants_signup_credits_once(auth_env: AuthEnv) -> None:
    # Given SIGNUP_CREDITS=25
    auth_env.set(SIGNUP_CREDITS="25")
    # When a user registers twice with the same email
    email = f"credits-{uuid.uuid4().hex[:8]}@example.com"
    for _ in range(2):
        assert api_call("POST", "/auth/register", body={"email": email, "password": PASSWORD}).status == 202
    # Then one user exists, and the ledger granted 25 credits once
    with UnitOfWork() as uow:
        users = uow.session.execute(select(User.id).where(func.lower(User.email) == email)).scalars().all()
        assert len(users) == 1
        total = uow.session.execute(
            text("SELECT coalesce(sum(amount), 0) FROM credit_transactions WHERE user_id = :u"), {"u": users[0]}
        ).scalar_one()
    assert str(total).rstrip("0").rstrip(".") == "25"


def test_register_does_not_reveal_known_emails(auth_env: AuthEnv) -> None:
    # Given a verified account
    email = auth_env.register_verified()
    # When the same email and a new one register
    known = api_call("POST", "/auth/register", body={"email": email, "password": "another long password"})
    unknown = api_call(
        "POST", "/auth/register", body={"email": f"fresh-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD}
    )
    # Then the answers are the same, the password is unchanged, and the owner got a notice
    assert (known.status, known.json) == (unknown.status, unknown.json) == (202, {"status": "verification_sent"})
    auth_env.login(email)
    assert auth_env.mail_count(email, "account_exists", "sent") == 1


def test_weak_passwords_are_refused_before_anything_is_written(auth_env: AuthEnv) -> None:
    # Given passwords too short, too long, too common, or the email itself
    email = f"weak-{uuid.uuid4().hex[:8]}@example.com"
    for password in ("short", "x" * 129, "password123", "Qwertyuiop", email):
        # When one registers
        response = api_call("POST", "/auth/register", body={"email": email, "password": password})
        # Then 422 weak_password, and no user
        assert response.status == 422 and response.error_code == "weak_password", password
    with UnitOfWork() as uow:
        assert uow.session.execute(select(func.count()).select_from(User)).scalar_one() == 0
    # And any unicode of the right length is fine
    assert api_call("POST", "/auth/register", body={"email": email, "password": "ñandú 🦤 über"}).status == 202


def test_bad_input_is_a_4xx_and_never_echoed(auth_env: AuthEnv) -> None:
    # When the body is malformed, of the wrong shape or carries unknown fields
    bad_email = api_call("POST", "/auth/register", body={"email": "not-an-email", "password": PASSWORD})
    extra = api_call("POST", "/auth/login", body={"email": "a@b.co", "password": "x", "role": "ADMIN"})
    broken = api_call("POST", "/auth/login", raw_body=b"{nope")
    # Then 422/400 with a machine-readable code, and the password is not in the answer
    assert bad_email.status == 422 and bad_email.error_code == "validation_error"
    assert PASSWORD.encode() not in bad_email.body
    assert extra.status == 422
    assert broken.status == 400 and broken.error_code == "malformed_json"


def test_verification_token_expires(auth_env: AuthEnv) -> None:
    # Given a registration whose link is older than 24 hours
    email = f"late-{uuid.uuid4().hex[:8]}@example.com"
    api_call("POST", "/auth/register", body={"email": email, "password": PASSWORD})
    token = auth_env.token_from(email, "verify_email")
    with UnitOfWork() as uow:
        uow.session.execute(update(VerificationToken).values(expires_at=func.now() - timedelta(seconds=1)))
        uow.commit()
    # When it is used
    response = api_call("POST", "/auth/verify-email", body={"token": token, "password": PASSWORD})
    # Then it is refused
    assert response.status == 400 and response.error_code == "invalid_token"
    made_up = api_call("POST", "/auth/verify-email", body={"token": "made-up", "password": PASSWORD})
    assert made_up.error_code == "invalid_token"
    # And the password is part of the body
    assert api_call("POST", "/auth/verify-email", body={"token": token}).status == 422


# --- login ------------------------------------------------------------------------------------------------------
def test_login_gives_the_same_answer_for_unknown_emails_and_wrong_passwords(auth_env: AuthEnv) -> None:
    # Given a known account
    email = auth_env.register_verified()
    # When signing in with a wrong password, and with an unknown email
    wrong = api_call("POST", "/auth/login", body={"email": email, "password": "wrong password 1"})
    unknown = api_call("POST", "/auth/login", body={"email": "nobody@example.com", "password": "wrong password 1"})
    # Then both are the same 401 invalid_credentials, body for body
    assert wrong.status == unknown.status == 401
    assert wrong.json == unknown.json
    assert wrong.error_code == "invalid_credentials"


def test_forgot_password_answers_the_same_for_everyone(auth_env: AuthEnv) -> None:
    # Given a known account
    email = auth_env.register_verified()
    # When a reset is asked for it and for an unknown email
    known = api_call("POST", "/auth/password/forgot", body={"email": email})
    unknown = api_call("POST", "/auth/password/forgot", body={"email": "ghost@example.com"})
    # Then both answer 202 with the same body; only the real owner gets mail
    assert (known.status, known.json) == (unknown.status, unknown.json)
    assert known.status == 202
    assert auth_env.mail_count(email, "password_reset", "sent") == 1
    assert auth_env.mail_count("ghost@example.com") == 0


def test_slow_mail_does_not_reveal_which_emails_are_registered(
    auth_env: AuthEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a mail provider that takes 80 ms per message (as SES does over the network) and a 200 ms floor
    email = auth_env.register_verified()
    auth_env.set(ENUMERATION_FLOOR_MS="200", MAIL_MIN_INTERVAL_SECONDS="0")
    slow = backends.LocalMailBackend(auth_env.mail_dir, echo=False)
    original = slow.send

    def send(message: EmailMessage, log_id: str) -> str:
        time.sleep(0.08)
        return original(message, log_id)

    monkeypatch.setattr(slow, "send", send)
    monkeypatch.setattr(mail_service, "get_backend", lambda: slow)

    def timed(target: str) -> float:
        started = time.perf_counter()
        assert api_call("POST", "/auth/password/forgot", body={"email": target}).status == 202
        return time.perf_counter() - started

    # When a reset is asked for the known email (mail sent) and an unknown one (nothing sent)
    known = min(timed(email) for _ in range(5))
    unknown = min(timed(f"ghost{i}@example.com") for i in range(5))
    # Then both take the floor, not the floor plus the mail
    assert 0.2 <= known < 0.27 and 0.2 <= unknown < 0.27, (known, unknown)
    assert auth_env.mail_count(email, "password_reset", "sent") == 5


def test_mail_requests_are_limited_per_ip_whatever_the_email(auth_env: AuthEnv) -> None:
    # Given at most 3 mail-sending requests per IP per window
    auth_env.set(MAIL_REQUESTS_PER_IP="3")
    email = auth_env.register_verified()  # the first
    # When the same IP asks for resets of known and unknown emails
    answers = [
        api_call("POST", "/auth/password/forgot", body={"email": target}).status
        for target in (email, "ghost@example.com", email)
    ]
    # Then the third is the last allowed (register counted as the first); past it 429, whichever email
    assert answers == [202, 202, 429]
    blocked = api_call("POST", "/auth/register", body={"email": "new@example.com", "password": PASSWORD})
    assert blocked.status == 429 and blocked.error_code == "too_many_attempts"
    assert auth_env.mail_count("new@example.com") == 0
    # And another IP is not affected
    identity.forgot_password(UnitOfWork(), email, identity.ClientInfo(ip="192.0.2.44"))


def test_failed_logins_lock_the_account_then_cool_off(auth_env: AuthEnv) -> None:
    # Given a limit of 3 failures per account
    auth_env.set(LOGIN_MAX_FAILURES_PER_ACCOUNT="3", LOGIN_LOCKOUT_SECONDS="900")
    email = auth_env.register_verified()
    # When 3 wrong passwords are tried
    codes = [
        api_call("POST", "/auth/login", body={"email": email, "password": f"wrong password {i}"}).status
        for i in range(3)
    ]
    # Then they are 401s, and the next try - even with the right password - is 429 too_many_attempts
    assert codes == [401, 401, 401]
    blocked = api_call("POST", "/auth/login", body={"email": email, "password": PASSWORD})
    assert blocked.status == 429 and blocked.error_code == "too_many_attempts"
    assert blocked.json["error"]["details"]["retry_after_seconds"] > 0
    # And an unknown email is throttled exactly alike (no enumeration through the limit)
    ghost = [
        api_call("POST", "/auth/login", body={"email": "ghost@example.com", "password": "wrong password"}).status
        for _ in range(4)
    ]
    assert ghost == [401, 401, 401, 429]
    # When the cooling-off period has passed
    with UnitOfWork() as uow:
        uow.session.execute(text("UPDATE auth_throttles SET blocked_until = now() - interval '1 second'"))
        uow.commit()
    # Then the right password works again
    auth_env.login(email)


def test_failed_logins_are_limited_per_ip_across_accounts(auth_env: AuthEnv) -> None:
    # Given a limit of 4 failures per IP, and many accounts tried from one address
    auth_env.set(LOGIN_MAX_FAILURES_PER_IP="4")
    email = auth_env.register_verified()
    attacker = identity.ClientInfo(ip="198.51.100.7")
    for i in range(4):
        try:
            identity.login(UnitOfWork(), f"victim{i}@example.com", "wrong password", attacker)
        except Exception as exc:
            assert type(exc).__name__ == "InvalidCredentials"
    # When the same IP then tries a real account with its real password
    try:
        identity.login(UnitOfWork(), email, PASSWORD, attacker)
        raise AssertionError("expected a 429")
    except Exception as exc:
        # Then it is refused for the IP, while another IP signs in fine
        assert type(exc).__name__ == "RateLimited"
    assert isinstance(
        identity.login(UnitOfWork(), email, PASSWORD, identity.ClientInfo(ip="192.0.2.1")), identity.TokenPair
    )


def test_concurrent_failures_are_all_counted(auth_env: AuthEnv) -> None:
    # Given a high limit and ten requests failing at the same moment (as from ten Lambda containers)
    auth_env.set(LOGIN_MAX_FAILURES_PER_ACCOUNT="100")
    email = auth_env.register_verified()
    barrier = threading.Barrier(10)

    def fail() -> None:
        barrier.wait()
        try:
            identity.login(UnitOfWork(), email, "wrong password", identity.ClientInfo(ip="198.51.100.9"))
        except Exception as exc:
            assert type(exc).__name__ == "InvalidCredentials"

    threads = [threading.Thread(target=fail) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then the shared counters hold exactly ten failures, for the account and for the IP
    with UnitOfWork() as uow:
        counts: dict[str, int] = dict(
            uow.session.execute(text("SELECT scope, failures FROM auth_throttles WHERE scope <> 'mail'")).all()
        )
    assert counts == {"account": 10, "ip": 10}


def test_disabled_accounts_cannot_sign_in(auth_env: AuthEnv) -> None:
    # Given verified accounts that are suspended or deleted
    for change in ({"status": "SUSPENDED"}, {"deleted_at": func.now()}):
        email = auth_env.register_verified()
        _set_user(email, **change)
        # When they sign in with the right password
        response = api_call("POST", "/auth/login", body={"email": email, "password": PASSWORD})
        # Then 403 account_disabled
        assert response.status == 403 and response.error_code == "account_disabled", change


def test_a_locked_account_signs_in_to_pay_and_reaches_only_account_and_billing(auth_env: AuthEnv) -> None:
    # Given a verified account locked because its trial ended without a paid plan
    email = auth_env.register_verified()
    _set_user(email, status="LOCKED")
    # When it signs in
    tokens = auth_env.login(email)
    headers = {"authorization": f"Bearer {tokens['access_token']}"}
    # Then it reaches its account and billing, and nothing that spends credits
    assert api_call("GET", "/auth/me", headers=headers, through_authorizer=True).status == 200
    assert api_call("GET", "/billing/subscription", headers=headers, through_authorizer=True).status == 200
    spend = api_call("POST", "/credits/usage", headers=headers, through_authorizer=True, body={"operation": "chat"})
    assert spend.status == 403
    assert api_call("GET", "/credits/balance", headers=headers, through_authorizer=True).status == 403


def test_admin_emails_make_admins(auth_env: AuthEnv) -> None:
    # Given ADMIN_EMAILS naming an address
    email = f"boss-{uuid.uuid4().hex[:6]}@example.com"
    auth_env.set(ADMIN_EMAILS=f"someone@example.com, {email.upper()}")
    # When it registers and signs in
    auth_env.register_verified(email)
    tokens = auth_env.login(email)
    me = api_call("GET", "/auth/me", headers=bearer(tokens["access_token"]), through_authorizer=True)
    # Then its role is ADMIN
    assert me.json["role"] == "ADMIN"


def test_password_hash_is_argon2id_and_rehashed_when_parameters_rise(auth_env: AuthEnv) -> None:
    # Given an account hashed with the floor parameters
    email = auth_env.register_verified()
    stored = _user(email).password_hash
    assert stored is not None and stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    # When the time cost rises and the user signs in
    auth_env.set(PASSWORD_HASH_TIME_COST="3")
    auth_env.login(email)
    # Then the stored hash was replaced with the new parameters, and still verifies
    rehashed = _user(email).password_hash
    assert rehashed is not None and "t=3" in rehashed
    assert passwords.verify_password(rehashed, PASSWORD)


# --- refresh and logout -----------------------------------------------------------------------------------------
def test_refresh_rotates_and_reuse_revokes_the_session(auth_env: AuthEnv) -> None:
    # Given a signed-in user
    email = auth_env.register_verified()
    first = auth_env.login(email)
    # When the refresh token is used
    second = api_call("POST", "/auth/token/refresh", body={"refresh_token": first["refresh_token"]})
    # Then a new pair of the same session comes back, and the new refresh token works
    assert second.status == 200
    assert second.json["session_id"] == first["session_id"]
    assert second.json["refresh_token"] != first["refresh_token"]
    third = api_call("POST", "/auth/token/refresh", body={"refresh_token": second.json["refresh_token"]})
    assert third.status == 200
    # When the first (rotated) token is presented again
    reused = api_call("POST", "/auth/token/refresh", body={"refresh_token": first["refresh_token"]})
    # Then it is refused and the whole session is revoked: the newest token stops working too
    assert reused.status == 401 and reused.error_code == "refresh_token_reused"
    latest = api_call("POST", "/auth/token/refresh", body={"refresh_token": third.json["refresh_token"]})
    assert latest.status == 401 and latest.error_code == "invalid_refresh_token"
    me = api_call("GET", "/auth/me", headers=bearer(third.json["access_token"]), through_authorizer=True)
    assert me.status == 403


def test_expired_refresh_token_and_suspended_user_cannot_refresh(auth_env: AuthEnv) -> None:
    # Given two sessions: one whose refresh token expired, and one of a user later suspended
    email = auth_env.register_verified()
    expired = auth_env.login(email)
    with UnitOfWork() as uow:
        uow.session.execute(
            update(AuthSession)
            .where(AuthSession.family_id == uuid.UUID(expired["session_id"]))
            .values(expires_at=func.now() - timedelta(seconds=1))
        )
        uow.commit()
    other = auth_env.login(email)
    _set_user(email, status="SUSPENDED")
    # When each refreshes
    late = api_call("POST", "/auth/token/refresh", body={"refresh_token": expired["refresh_token"]})
    suspended = api_call("POST", "/auth/token/refresh", body={"refresh_token": other["refresh_token"]})
    # Then both are refused
    assert late.status == 401 and late.error_code == "invalid_refresh_token"
    assert suspended.status == 403 and suspended.error_code == "account_disabled"


def test_logout_revokes_the_current_session_only(auth_env: AuthEnv) -> None:
    # Given a user signed in twice
    email = auth_env.register_verified()
    one, two = auth_env.login(email), auth_env.login(email)
    # When the first session logs out
    out = api_call("POST", "/auth/logout", headers=bearer(one["access_token"]), through_authorizer=True)
    # Then 204; its tokens stop working; the other session is untouched
    assert out.status == 204
    assert api_call("POST", "/auth/token/refresh", body={"refresh_token": one["refresh_token"]}).status == 401
    auth_env.set()  # a new container: no cached verdicts
    assert api_call("GET", "/auth/me", headers=bearer(one["access_token"]), through_authorizer=True).status == 403
    assert api_call("GET", "/auth/me", headers=bearer(two["access_token"]), through_authorizer=True).status == 200


# --- reset and change -------------------------------------------------------------------------------------------
def test_reset_password_revokes_every_session_and_does_not_sign_in(auth_env: AuthEnv) -> None:
    # Given a signed-in user who asks for a reset
    email = auth_env.register_verified()
    session = auth_env.login(email)
    api_call("POST", "/auth/password/forgot", body={"email": email})
    token = auth_env.token_from(email, "password_reset")
    # When the link sets a new password
    reset = api_call("POST", "/auth/password/reset", body={"token": token, "password": "a brand new secret"})
    # Then 200 with no tokens; old sessions are dead; the old password fails and the new one works
    assert reset.status == 200 and "access_token" not in reset.json
    assert api_call("POST", "/auth/token/refresh", body={"refresh_token": session["refresh_token"]}).status == 401
    assert api_call("POST", "/auth/login", body={"email": email, "password": PASSWORD}).status == 401
    auth_env.login(email, "a brand new secret")
    # And the link is single-use
    again = api_call("POST", "/auth/password/reset", body={"token": token, "password": "yet another secret"})
    assert again.status == 400 and again.error_code == "invalid_token"


def test_reset_token_expires_after_an_hour(auth_env: AuthEnv) -> None:
    # Given a reset link older than its hour
    email = auth_env.register_verified()
    api_call("POST", "/auth/password/forgot", body={"email": email})
    token = auth_env.token_from(email, "password_reset")
    with UnitOfWork() as uow:
        uow.session.execute(update(PasswordResetToken).values(expires_at=func.now() - timedelta(seconds=1)))
        uow.commit()
    # When it is used, Then it is refused and the password is unchanged
    response = api_call("POST", "/auth/password/reset", body={"token": token, "password": "a brand new secret"})
    assert response.status == 400 and response.error_code == "invalid_token"
    auth_env.login(email)


def test_change_password_keeps_this_session_and_ends_the_others(auth_env: AuthEnv) -> None:
    # Given a user with two sessions
    email = auth_env.register_verified()
    here, elsewhere = auth_env.login(email), auth_env.login(email)
    headers = bearer(here["access_token"])
    # When the current password is wrong, Then 401 and nothing changes
    wrong = api_call(
        "POST", "/auth/password/change", headers=headers, through_authorizer=True,
        body={"current_password": "not it at all", "new_password": "a brand new secret"},
    )  # fmt: skip
    assert wrong.status == 401
    # When it is right
    ok = api_call(
        "POST", "/auth/password/change", headers=headers, through_authorizer=True,
        body={"current_password": PASSWORD, "new_password": "a brand new secret"},
    )  # fmt: skip
    # Then this session keeps working and the other is revoked
    assert ok.status == 200
    assert api_call("POST", "/auth/token/refresh", body={"refresh_token": here["refresh_token"]}).status == 200
    assert api_call("POST", "/auth/token/refresh", body={"refresh_token": elsewhere["refresh_token"]}).status == 401


# --- profile ----------------------------------------------------------------------------------------------------
def test_patch_me_changes_the_profile_and_refuses_taken_usernames(auth_env: AuthEnv) -> None:
    # Given two users, one named "taken_name"
    first = auth_env.register_verified(username="taken_name")
    second = auth_env.register_verified()
    headers = bearer(auth_env.login(second)["access_token"])
    # When the second changes its profile
    patched = api_call(
        "PATCH", "/auth/me", headers=headers, through_authorizer=True,
        body={"name": "Grace", "username": "grace_h", "timezone": "Europe/Paris", "language": "fr"},
    )  # fmt: skip
    # Then it is saved
    assert patched.status == 200
    assert (patched.json["name"], patched.json["username"], patched.json["timezone"]) == (
        "Grace", "grace_h", "Europe/Paris",
    )  # fmt: skip
    # And a taken username, a bad zone, or a field that is not the user's to change are refused
    taken = api_call("PATCH", "/auth/me", headers=headers, through_authorizer=True, body={"username": "TAKEN_NAME"})
    assert taken.status == 409 and taken.error_code == "username_taken"
    zone = api_call("PATCH", "/auth/me", headers=headers, through_authorizer=True, body={"timezone": "Mars/Base"})
    assert zone.status == 422
    role = api_call("PATCH", "/auth/me", headers=headers, through_authorizer=True, body={"role": "ADMIN"})
    assert role.status == 422
    assert _user(second).role == "USER" and _user(first).username == "taken_name"


# --- two-factor -------------------------------------------------------------------------------------------------
def test_email_two_factor_sign_in(auth_env: AuthEnv) -> None:
    # Given a user who turned on 2FA by mail
    email = auth_env.register_verified()
    headers = bearer(auth_env.login(email)["access_token"])
    on = api_call("POST", "/auth/two-factor/email/enable", headers=headers, through_authorizer=True)
    assert on.status == 200 and on.json == {"two_factor_enabled": True, "method": "email"}
    # When they sign in
    first = auth_env.login(email)
    # Then a challenge comes back instead of tokens, and a code is mailed
    assert first["two_factor_required"] is True and "access_token" not in first
    code = auth_env.code_from(email)
    # When the code is sent with the challenge
    done = api_call("POST", "/auth/login/two-factor", body={"challenge_id": first["challenge_id"], "code": code})
    # Then tokens come back, and the code cannot be used again
    assert done.status == 200 and done.json["access_token"]
    replay = api_call("POST", "/auth/login/two-factor", body={"challenge_id": first["challenge_id"], "code": code})
    assert replay.status == 401


def test_mailed_code_is_bound_to_its_challenge_and_expires(auth_env: AuthEnv) -> None:
    # Given two users with mailed 2FA, each with a pending challenge
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="0")
    alice, bob = auth_env.register_verified(), auth_env.register_verified()
    for email in (alice, bob):
        identity.enable_email_two_factor(UnitOfWork(), _signed_in_now(email))
    alice_challenge = auth_env.login(alice)["challenge_id"]
    bob_challenge = auth_env.login(bob)["challenge_id"]
    alice_code = auth_env.code_from(alice)
    # When Alice's code is used on Bob's challenge
    crossed = api_call("POST", "/auth/login/two-factor", body={"challenge_id": bob_challenge, "code": alice_code})
    # Then it is refused
    assert crossed.status == 401 and crossed.error_code == "invalid_code"
    # When Alice's code has expired (10 minutes)
    with UnitOfWork() as uow:
        uow.session.execute(update(TwoFactorToken).values(expires_at=func.now() - timedelta(seconds=1)))
        uow.commit()
    late = api_call("POST", "/auth/login/two-factor", body={"challenge_id": alice_challenge, "code": alice_code})
    # Then it is refused too
    assert late.status == 401


def test_a_second_login_inside_the_mail_window_reuses_the_challenge_unless_its_mail_failed(
    auth_env: AuthEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a user with mailed 2FA whose first code could not be sent (the provider failed)
    email = auth_env.register_verified()
    identity.enable_email_two_factor(UnitOfWork(), _signed_in_now(email))
    working = backends.get_backend()

    class Down:
        name = "ses"

        def send(self, message: EmailMessage, log_id: str) -> str:
            raise ConnectionError("provider down")

    monkeypatch.setattr(mail_service, "get_backend", lambda: Down())
    failed = auth_env.login(email)["challenge_id"]
    monkeypatch.setattr(mail_service, "get_backend", lambda: working)
    # When they sign in again inside the anti-spam window
    second = auth_env.login(email)["challenge_id"]
    # Then a new challenge is opened and its code is mailed (a failed send does not block the next)
    assert second != failed
    code = auth_env.code_from(email)
    # When they sign in a third time while that code is on its way
    third = auth_env.login(email)["challenge_id"]
    # Then the same challenge comes back (no second mail inside the window), and the mailed code completes it
    assert third == second
    assert auth_env.mail_count(email, "two_factor_code", "sent") == 1
    done = api_call("POST", "/auth/login/two-factor", body={"challenge_id": third, "code": code})
    assert done.status == 200


def test_two_factor_locks_after_five_wrong_codes(auth_env: AuthEnv) -> None:
    # Given a pending email challenge
    email = auth_env.register_verified()
    identity.enable_email_two_factor(UnitOfWork(), _signed_in_now(email))
    challenge = auth_env.login(email)["challenge_id"]
    code = auth_env.code_from(email)
    wrong = "000000" if code != "000000" else "111111"
    # When five wrong codes are tried
    answers = [
        api_call("POST", "/auth/login/two-factor", body={"challenge_id": challenge, "code": wrong}) for _ in range(5)
    ]
    # Then four say invalid_code, the fifth locks the challenge, and even the right code is now refused
    assert [a.error_code for a in answers] == ["invalid_code"] * 4 + ["too_many_attempts"]
    right = api_call("POST", "/auth/login/two-factor", body={"challenge_id": challenge, "code": code})
    assert right.status == 429


def test_totp_setup_enable_sign_in_and_disable(auth_env: AuthEnv) -> None:
    # Given a signed-in user
    email = auth_env.register_verified()
    headers = bearer(auth_env.login(email)["access_token"])
    # When they set up TOTP
    setup = api_call("POST", "/auth/two-factor/totp/setup", headers=headers, through_authorizer=True)
    assert setup.status == 200 and setup.json["otpauth_uri"].startswith("otpauth://totp/")
    totp = pyotp.TOTP(setup.json["secret"])
    now = time.time()
    this_step, next_step = totp.at(now), totp.at(now + 30)
    # Then a wrong code does not enable it, a right one does
    wrong = "000000" if this_step != "000000" else "111111"
    bad = api_call(
        "POST", "/auth/two-factor/totp/enable", headers=headers, through_authorizer=True, body={"code": wrong}
    )
    assert bad.status == 401 and bad.error_code == "invalid_code"
    good = api_call(
        "POST", "/auth/two-factor/totp/enable", headers=headers, through_authorizer=True, body={"code": this_step}
    )
    assert good.status == 200 and good.json["method"] == "totp"
    # When they sign in, Then the challenge wants a TOTP code; the one already used is refused (no replay)
    challenge = auth_env.login(email)
    assert challenge["method"] == "totp"
    replay = api_call(
        "POST", "/auth/login/two-factor", body={"challenge_id": challenge["challenge_id"], "code": this_step}
    )
    assert replay.status == 401
    # And the next time step's code works (one step of clock drift is allowed)
    done = api_call(
        "POST", "/auth/login/two-factor", body={"challenge_id": challenge["challenge_id"], "code": next_step}
    )
    assert done.status == 200
    # When they turn 2FA off, the password is needed
    no = api_call(
        "POST", "/auth/two-factor/disable", headers=headers, through_authorizer=True, body={"password": "nope nope"}
    )
    assert no.status == 401
    off = api_call(
        "POST", "/auth/two-factor/disable", headers=headers, through_authorizer=True, body={"password": PASSWORD}
    )
    assert off.status == 200 and off.json["two_factor_enabled"] is False
    assert "access_token" in auth_env.login(email)


# --- sessions and API keys --------------------------------------------------------------------------------------
def test_sessions_are_listed_and_revoked(auth_env: AuthEnv) -> None:
    # Given a user signed in three times
    email = auth_env.register_verified()
    logins = [auth_env.login(email) for _ in range(3)]
    headers = bearer(logins[0]["access_token"])
    # When they list their sessions two at a time
    page1 = api_call("GET", "/auth/sessions", query="limit=2", headers=headers, through_authorizer=True)
    page2 = api_call(
        "GET", "/auth/sessions", query=f"limit=2&cursor={page1.json['next_cursor']}", headers=headers,
        through_authorizer=True,
    )  # fmt: skip
    # Then all three appear once, the current one marked
    ids = [s["id"] for s in page1.json["items"] + page2.json["items"]]
    assert sorted(ids) == sorted(login["session_id"] for login in logins)
    assert page2.json["next_cursor"] is None
    current = [s for s in page1.json["items"] + page2.json["items"] if s["current"]]
    assert [s["id"] for s in current] == [logins[0]["session_id"]]
    # When one is revoked
    gone = api_call("DELETE", f"/auth/sessions/{logins[2]['session_id']}", headers=headers, through_authorizer=True)
    assert gone.status == 204
    # Then its refresh token is dead, and another user's session cannot be revoked by this one
    assert api_call("POST", "/auth/token/refresh", body={"refresh_token": logins[2]["refresh_token"]}).status == 401
    stranger = auth_env.login(auth_env.register_verified())
    other = api_call("DELETE", f"/auth/sessions/{stranger['session_id']}", headers=headers, through_authorizer=True)
    assert other.status == 404


def test_api_keys_are_shown_once_listed_and_revoked(auth_env: AuthEnv) -> None:
    # Given a signed-in user
    email = auth_env.register_verified()
    headers = bearer(auth_env.login(email)["access_token"])
    # When they create a key
    created = api_call("POST", "/auth/api-keys", headers=headers, through_authorizer=True, body={"name": "ci"})
    # Then 201 with the secret once; the list shows only its prefix
    assert created.status == 201
    key = created.json["key"]
    assert key.startswith(created.json["prefix"] + "_")
    listed = api_call("GET", "/auth/api-keys", headers=headers, through_authorizer=True)
    assert [k["id"] for k in listed.json["items"]] == [created.json["id"]]
    assert key not in listed.body.decode()
    # And the key itself signs requests in
    assert api_call("GET", "/auth/me", headers={"x-api-key": key}, through_authorizer=True).status == 200
    # When it is revoked
    revoked = api_call("DELETE", f"/auth/api-keys/{created.json['id']}", headers=headers, through_authorizer=True)
    assert revoked.status == 204
    # Then it no longer works (in a fresh container), and the stored form was never the key
    auth_env.set()
    assert api_call("GET", "/auth/me", headers={"x-api-key": key}, through_authorizer=True).status == 403
    with UnitOfWork() as uow:
        stored = uow.session.execute(text("SELECT key_hash FROM api_keys")).scalar_one()
    assert stored != key and len(stored) == 64


def test_secrets_are_stored_hashed(auth_env: AuthEnv) -> None:
    # Given a user who signed in and asked for a reset
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    api_call("POST", "/auth/password/forgot", body={"email": email})
    reset = auth_env.token_from(email, "password_reset")
    # Then no table holds the refresh token or the reset token as given
    with UnitOfWork() as uow:
        refresh_rows = uow.session.execute(select(AuthSession.refresh_token_hash)).scalars().all()
        reset_rows = uow.session.execute(select(PasswordResetToken.token_hash)).scalars().all()
    assert tokens["refresh_token"] not in refresh_rows and reset not in reset_rows

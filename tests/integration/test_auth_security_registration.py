# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""Registration as an attacker tries it (issue 11, findings 1 and 4): pre-hijacking an email, and learning
which emails are registered through usernames. Through the real handlers and authorizer."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from tests.integration.auth_helpers import PASSWORD, AuthEnv, auth_env, bearer  # noqa: F401
from tests.support import api_call
from tollgate.db import UnitOfWork
from tollgate.models import User

ATTACKER_PASSWORD = "attacker chose this one"
OWNER_PASSWORD = "the owner's own secret"


def _register(email: str, password: str, **extra: str) -> int:
    return api_call("POST", "/auth/register", body={"email": email, "password": password, **extra}).status


def _login_status(email: str, password: str) -> int:
    return api_call("POST", "/auth/login", body={"email": email, "password": password}).status


def _verify(token: str, password: str) -> int:
    return api_call("POST", "/auth/verify-email", body={"token": token, "password": password}).status


def _user(email: str) -> User:
    with UnitOfWork() as uow:
        user = uow.session.execute(select(User).where(func.lower(User.email) == email.lower())).scalar_one()
        uow.session.expunge(user)
        return user


def test_an_unverified_registration_cannot_pre_hijack_the_account(auth_env: AuthEnv) -> None:
    # Given an attacker who registered the victim's email with his password and never verified
    victim = f"victim-{uuid.uuid4().hex[:8]}@example.com"
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="0")  # the owner comes later than the anti-spam window
    assert _register(victim, ATTACKER_PASSWORD, name="Mallory", username="mallory_x") == 202
    # When the owner registers with her own password and confirms the link she is mailed
    assert _register(victim, OWNER_PASSWORD, name="Alice") == 202
    token = auth_env.token_from(victim, "verify_email")
    assert _verify(token, OWNER_PASSWORD) == 200
    # Then her password signs in and the attacker's answers 401
    assert _login_status(victim, OWNER_PASSWORD) == 200
    assert _login_status(victim, ATTACKER_PASSWORD) == 401
    # And nothing of the attacker's registration came with it
    user = _user(victim)
    assert user.name == "Alice" and user.username is None


def test_an_admin_email_is_not_handed_to_whoever_registered_it_first(auth_env: AuthEnv) -> None:
    # Given an address in ADMIN_EMAILS that has not signed up, registered first by an attacker
    boss = f"boss-{uuid.uuid4().hex[:6]}@example.com"
    auth_env.set(ADMIN_EMAILS=boss, MAIL_MIN_INTERVAL_SECONDS="0")
    assert _register(boss, ATTACKER_PASSWORD) == 202
    assert _user(boss).role == "USER"  # nothing is granted before a link is used
    # When the owner registers and verifies her own link
    assert _register(boss, OWNER_PASSWORD) == 202
    token = auth_env.token_from(boss, "verify_email")
    assert _verify(token, OWNER_PASSWORD) == 200
    # Then ADMIN belongs to her sign-in, and the attacker's password gets nothing
    assert _login_status(boss, ATTACKER_PASSWORD) == 401
    tokens = auth_env.login(boss, OWNER_PASSWORD)
    me = api_call("GET", "/auth/me", headers=bearer(tokens["access_token"]), through_authorizer=True)
    assert me.json["role"] == "ADMIN"


def test_the_link_that_is_used_decides_and_a_verified_account_cannot_be_registered_over(auth_env: AuthEnv) -> None:
    # Given two registrations of one email, each mailed its own link
    email = f"twice-{uuid.uuid4().hex[:8]}@example.com"
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="0")
    assert _register(email, "first registration pw") == 202
    first_link = auth_env.token_from(email, "verify_email")
    assert _register(email, "second registration pw") == 202
    second_link = auth_env.token_from(email, "verify_email")
    # When the first link is the one clicked
    assert _verify(first_link, "first registration pw") == 200
    # Then the first registration's password is the account's, and the other link is spent
    assert _login_status(email, "first registration pw") == 200
    assert _login_status(email, "second registration pw") == 401
    late = api_call("POST", "/auth/verify-email", body={"token": second_link, "password": "second registration pw"})
    assert late.status == 400 and late.error_code == "invalid_token"
    # When someone registers the verified email again
    assert _register(email, "third attempt password") == 202
    # Then only a notice goes out, no link, and the password is unchanged
    assert auth_env.mail_count(email, "account_exists", "sent") == 1
    assert _login_status(email, "third attempt password") == 401
    assert _login_status(email, "first registration pw") == 200


def test_an_unverified_owner_is_refused_like_a_wrong_password_and_mailed_her_link_again(auth_env: AuthEnv) -> None:
    # Given a pending registration whose first mail went out a while ago (no anti-spam window here)
    email = f"pending-{uuid.uuid4().hex[:8]}@example.com"
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="0")
    assert _register(email, PASSWORD, name="Pat") == 202
    assert auth_env.mail_count(email, "verify_email", "sent") == 1
    # When signing in with its password, and with another one
    right = api_call("POST", "/auth/login", body={"email": email, "password": PASSWORD})
    wrong = api_call("POST", "/auth/login", body={"email": email, "password": "not the password"})
    # Then both get the usual 401, body for body: sign-in tells nobody that the address has an account
    assert right.status == wrong.status == 401
    assert right.json == wrong.json and right.error_code == "invalid_credentials"
    # And only the right password mailed the registration's link again, which confirms that registration
    assert auth_env.mail_count(email, "verify_email", "sent") == 2
    assert _verify(auth_env.token_from(email, "verify_email"), PASSWORD) == 200
    assert _login_status(email, PASSWORD) == 200
    assert _user(email).name == "Pat"


def test_the_login_resend_keeps_to_the_anti_spam_window(auth_env: AuthEnv) -> None:
    # Given a registration just mailed, inside a 60 s anti-spam window
    email = f"window-{uuid.uuid4().hex[:8]}@example.com"
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="60")
    assert _register(email, PASSWORD) == 202
    first_link = auth_env.token_from(email, "verify_email")
    # When its owner tries to sign in before verifying
    assert _login_status(email, PASSWORD) == 401
    # Then no second mail leaves, and the link she has still works
    assert auth_env.mail_count(email, "verify_email", "sent") == 1
    assert auth_env.mail_count(email, "verify_email", "suppressed") == 1
    assert _verify(first_link, PASSWORD) == 200


def test_register_then_login_does_not_tell_a_registered_email_from_a_new_one(auth_env: AuthEnv) -> None:
    # Given a verified account, and an address nobody registered
    known = auth_env.register_verified()
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    answers = {}
    # When a prober registers each with his own password, then signs in with it
    for email in (known, unknown):
        assert _register(email, ATTACKER_PASSWORD) == 202
        answer = api_call("POST", "/auth/login", body={"email": email, "password": ATTACKER_PASSWORD})
        answers[email] = (answer.status, answer.json)
    # Then both answers are the same 401, body for body
    assert answers[known] == answers[unknown]
    assert answers[known][0] == 401


def test_an_owner_who_registers_inside_the_anti_spam_window_is_not_handed_the_attackers_password(
    auth_env: AuthEnv,
) -> None:
    # Given an attacker who registered an ADMIN_EMAILS address, and its owner registering within the 60 s window,
    # so the only link in her mailbox is the attacker's
    boss = f"boss-{uuid.uuid4().hex[:6]}@example.com"
    auth_env.set(ADMIN_EMAILS=boss, MAIL_MIN_INTERVAL_SECONDS="60")
    assert _register(boss, ATTACKER_PASSWORD) == 202
    assert _register(boss, OWNER_PASSWORD) == 202
    assert auth_env.mail_count(boss, "verify_email", "sent") == 1
    link = auth_env.token_from(boss, "verify_email")
    # When she clicks it and gives her own password
    clicked = api_call("POST", "/auth/verify-email", body={"token": link, "password": OWNER_PASSWORD})
    # Then it is refused like a bad link, and the attacker's password opens nothing
    assert clicked.status == 400 and clicked.error_code == "invalid_token"
    assert _login_status(boss, ATTACKER_PASSWORD) == 401
    assert _user(boss).email_verified_at is None and _user(boss).role == "USER"
    # And a made-up token with her password answers the very same
    made_up = api_call("POST", "/auth/verify-email", body={"token": "made-up", "password": OWNER_PASSWORD})
    assert (made_up.status, made_up.json) == (clicked.status, clicked.json)


def test_a_wrong_password_does_not_spend_the_link_and_is_throttled_like_a_login(auth_env: AuthEnv) -> None:
    # Given a pending registration, its link, and an account limit of 3 failures
    email = f"guess-{uuid.uuid4().hex[:8]}@example.com"
    auth_env.set(LOGIN_MAX_FAILURES_PER_ACCOUNT="3")
    assert _register(email, OWNER_PASSWORD) == 202
    link = auth_env.token_from(email, "verify_email")
    # When the link is posted with a wrong password
    wrong = api_call("POST", "/auth/verify-email", body={"token": link, "password": "a guessed password"})
    # Then it is a bad link to the caller, but the link still works with the registration's password
    assert wrong.status == 400 and wrong.error_code == "invalid_token"
    assert _verify(link, OWNER_PASSWORD) == 200
    assert _login_status(email, OWNER_PASSWORD) == 200

    # Given another pending registration
    other = f"guess-{uuid.uuid4().hex[:8]}@example.com"
    assert _register(other, OWNER_PASSWORD) == 202
    other_link = auth_env.token_from(other, "verify_email")
    # When passwords are guessed against its link past the limit
    statuses = [_verify(other_link, f"guess number {i}") for i in range(4)]
    # Then the account is cooling off: 429, even for the right password, as with logins
    assert statuses[:3] == [400, 400, 400] and statuses[3] == 429
    assert _verify(other_link, OWNER_PASSWORD) == 429
    assert _login_status(other, OWNER_PASSWORD) == 429


def test_usernames_do_not_reveal_whether_an_email_is_registered(auth_env: AuthEnv) -> None:
    # Given a prober with an account, and a victim whose email is registered and verified
    prober = auth_env.register_verified()
    headers = bearer(auth_env.login(prober)["access_token"])
    known = auth_env.register_verified()
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    # When the prober registers both emails, each with a fresh username
    assert _register(known, "some long password", username="probe_known") == 202
    assert _register(unknown, "some long password", username="probe_unknown") == 202
    # Then PATCH /auth/me answers alike for both usernames: neither registration reserved its username
    answers = [
        api_call("PATCH", "/auth/me", headers=headers, through_authorizer=True, body={"username": name})
        for name in ("probe_known", "probe_unknown")
    ]
    assert [a.status for a in answers] == [200, 200]
    # And the unverified registration's username is not on any account
    with UnitOfWork() as uow:
        holders = uow.session.execute(select(User.email).where(User.username == "probe_unknown")).scalars().all()
    assert holders == [prober]


def test_the_verified_registration_brings_its_username(auth_env: AuthEnv) -> None:
    # Given a registration with a username, confirmed by its link
    email = auth_env.register_verified(username="own_name")
    # Then the account carries it, and another account cannot take it
    assert _user(email).username == "own_name"
    other = auth_env.login(auth_env.register_verified())
    taken = api_call(
        "PATCH", "/auth/me", headers=bearer(other["access_token"]), through_authorizer=True,
        body={"username": "own_name"},
    )  # fmt: skip
    assert taken.status == 409 and taken.error_code == "username_taken"


def test_one_mailbox_cannot_be_registered_again_under_a_spelling_with_dots(auth_env: AuthEnv) -> None:
    # Given Kate's account
    email = auth_env.register_verified("kate-dots@example.com")
    # When someone registers her mailbox again with a final dot, or a domain with an empty label
    for spelling in ("kate-dots@example.com.", "kate-dots@example.com..", "kate-dots@example..com", "k@.example.com"):
        answer = api_call("POST", "/auth/register", body={"email": spelling, "password": ATTACKER_PASSWORD})
        # Then it is refused as an invalid address, and no second account exists
        assert (answer.status, answer.error_code) == (422, "validation_error"), spelling
    with UnitOfWork() as uow:
        count = uow.session.execute(select(func.count()).select_from(User).where(User.email.ilike("kate-dots@%")))
        assert count.scalar_one() == 1
    # And ordinary addresses still register
    assert _register("kate.dots@mail.example.co.uk", PASSWORD) == 202
    assert _login_status(email, PASSWORD) == 200

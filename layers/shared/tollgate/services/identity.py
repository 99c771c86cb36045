"""Identity: accounts and built-in sign-in: register, verify, log in (with 2FA), refresh, log out, reset and change
passwords, profile, 2FA settings, sessions and API keys.

Rules kept here (issue 4):
- no answer reveals whether an email is registered (register / forgot / login are equal in status, body and
  cost: unknown emails hash a dummy password);
- every secret handed out (refresh token, API key, mailed token or code) is random, stored hashed, single-use
  where that applies, and expiring;
- failed sign-ins are counted per account and per IP in Postgres; past the threshold, 429;
- a suspended, locked or deleted account can neither sign in nor refresh.

Rules added by issue 11 (accounts an attacker cannot take over):
- a registration proves nothing until its link is clicked: its password hash, name and username wait on the
  verification token, and the link that is used writes them (and any ADMIN_EMAILS role) to the account; an
  unconfirmed registration leaves nothing a later one inherits, and a verified account cannot be registered
  over; the link works only with that registration's password (inside the mail anti-spam window the owner's
  mailbox may hold only an attacker's link);
- an unverified account signs in like a wrong password (401, same floor), so register-then-login cannot tell
  a known email from a new one; its pending registration's password mails the link again;
- credential changes (API keys, 2FA on/off, recovery codes, password change, revoking other sessions) need a
  session that proved the password (and second factor) within STEP_UP_WINDOW_SECONDS (`Caller.auth_time`),
  never an API key: otherwise `ReauthenticationRequired`;
- each such change mails a security notice whose one-time link locks the account's credentials;
- a password reset or change revokes every other session and every API key; a reset also drops a second
  factor enrolled after the last completed password sign-in;
- TOTP secrets are stored sealed (tollgate.auth.sealing), recovery codes hashed.

Answers are views (frozen dataclasses of plain values made inside the unit of work), never ORM rows.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import pyotp
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session

from tollgate.auth import passwords, sealing, throttle
from tollgate.auth import scopes as key_scopes
from tollgate.auth.access_tokens import issue_access_token
from tollgate.auth.secrets import hash_secret, new_code, new_token, same_hash
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import (
    AccountDisabled,
    BadRequest,
    BuiltinAuthDisabled,
    Conflict,
    InvalidCredentials,
    InvalidRefreshToken,
    InvalidToken,
    InvalidTwoFactorCode,
    NotFound,
    PasswordNotSet,
    RateLimited,
    ReauthenticationRequired,
    RefreshTokenReused,
    ScopeNotAllowed,
    TwoFactorStateConflict,
    UsernameTaken,
    ValidationFailed,
)
from tollgate.mail import OutgoingMail, send_mail
from tollgate.mail import messages as mails
from tollgate.mail.service import HANDED_OVER
from tollgate.models import User, UserRole, UserStatus
from tollgate.models.auth import (
    ApiKey,
    AuthSession,
    EmailLog,
    PasswordResetToken,
    RecoveryCode,
    SecurityLockToken,
    TwoFactorConfirmation,
    TwoFactorToken,
    VerificationToken,
)
from tollgate.pagination import Page, keyset_page
from tollgate.services import audit_trail
from tollgate.services.authz import ADMIN, SUPPORT, Actor, has_role, role_set_by_admin
from tollgate.services.views import row_view

VERIFICATION_TTL = timedelta(hours=24)
RESET_TTL = timedelta(hours=1)
TWO_FACTOR_TTL = timedelta(minutes=10)
TOTP_ISSUER = "Tollgate"
API_KEY_PREFIX = "tg"
MAX_API_KEYS = 50
RECOVERY_CODE_COUNT = 10
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: codes are typed from paper
RECOVERY_CODE_LENGTH = 10  # about 49 bits each


# --- values the services return -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClientInfo:
    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls, as the authorizer proved it: a session (its id and step-up clock) or an API key."""

    user_id: uuid.UUID
    session_id: str | None = None
    api_key_id: str | None = None
    auth_time: int | None = None  # epoch seconds of the session's last password (+2FA) proof


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    session_id: uuid.UUID
    token_type: str = "Bearer"  # noqa: S105  (the scheme name, not a secret)


@dataclass(frozen=True, slots=True)
class TwoFactorChallenge:
    challenge_id: uuid.UUID
    method: str


@dataclass(frozen=True, slots=True)
class ProfileView:
    """The caller's own profile."""

    id: uuid.UUID
    email: str
    name: str | None
    username: str | None
    image: str | None
    role: str
    status: str
    tier: str
    email_verified: bool
    two_factor_enabled: bool
    two_factor_method: str | None
    timezone: str
    language: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SessionView:
    id: uuid.UUID
    ip: str | None
    user_agent: str | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime
    current: bool


@dataclass(frozen=True, slots=True)
class ApiKeyView:
    id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NewApiKey:
    key: str
    view: ApiKeyView


@dataclass(frozen=True, slots=True)
class TotpSetup:
    secret: str
    otpauth_uri: str


@dataclass(frozen=True, slots=True)
class AccessToken:
    access_token: str
    expires_in: int
    auth_time: datetime
    step_up_until: datetime
    token_type: str = "Bearer"  # noqa: S105  (the scheme name, not a secret)


# --- helpers shared by the flows ------------------------------------------------------------------------------
def normalise_email(email: str) -> str:
    return email.strip().lower()


def require_builtin() -> None:
    if get_settings().auth_mode != "builtin":
        raise BuiltinAuthDisabled("sign-in is handled by Clerk in this deployment")


def user_by_email(session: Session, email: str, *, lock: bool = False) -> User | None:
    query = select(User).where(func.lower(User.email) == normalise_email(email))
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def _user(session: Session, user_id: uuid.UUID, *, lock: bool = False) -> User:
    query = select(User).where(User.id == user_id)
    if lock:
        query = query.with_for_update()
    user = session.execute(query).scalar_one_or_none()
    if user is None or user.is_deleted:
        raise NotFound("no such user")
    return user


def ensure_active(user: User) -> None:
    """Suspended and deleted accounts cannot sign in. A LOCKED one (trial ended unpaid) can, to pay: the
    authorizer lets it reach only the account and billing routes."""
    if user.is_deleted or user.status not in (UserStatus.ACTIVE, UserStatus.LOCKED):
        raise AccountDisabled(
            "this account is disabled", details={"status": "DELETED" if user.is_deleted else user.status}
        )


def role_for_new_user(email: str) -> str:
    return UserRole.ADMIN if normalise_email(email) in get_settings().admin_emails else UserRole.USER


def grant_signup_credits(session: Session, user_id: uuid.UUID) -> None:
    """SIGNUP_CREDITS for a new user, inside the transaction that creates it (the ledger's own rules)."""
    from tollgate.ledger import grant_signup_credits as ledger_grant

    ledger_grant(session, user_id)


def create_user(session: Session, **fields: object) -> User:
    """A new user with its sign-up credits, flushed in the caller's transaction."""
    email = str(fields["email"])
    fields.setdefault("role", role_for_new_user(email))
    user = User(**fields)
    session.add(user)
    session.flush()
    grant_signup_credits(session, user.id)
    return user


def start_session(
    session: Session, user: User, client: ClientInfo, now: datetime, *, authenticated_at: datetime | None = None
) -> TokenPair:
    """A new session family and its first token pair. `authenticated_at`: when it proved the password (and
    second factor); None for sign-ins that did not (OAuth), which must reauthenticate before credential changes."""
    return _issue_pair(session, user, uuid.uuid4(), client, now, authenticated_at)


def _issue_pair(
    session: Session,
    user: User,
    family_id: uuid.UUID,
    client: ClientInfo,
    now: datetime,
    authenticated_at: datetime | None,
) -> TokenPair:
    refresh = new_token(32)
    session.add(
        AuthSession(
            family_id=family_id,
            user_id=user.id,
            refresh_token_hash=hash_secret(refresh),
            expires_at=now + timedelta(days=get_settings().refresh_token_ttl_days),
            ip=(client.ip or None),
            user_agent=(client.user_agent or "")[:512] or None,
            last_used_at=now,
            authenticated_at=authenticated_at,
            created_at=now,
        )
    )
    access, ttl = issue_access_token(user.id, family_id, user.role, now, authenticated_at)
    return TokenPair(access_token=access, refresh_token=refresh, expires_in=ttl, session_id=family_id)


def _revoke_families(
    session: Session, user_id: uuid.UUID, reason: str, *, except_family: uuid.UUID | None = None
) -> int:
    query = update(AuthSession).where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
    if except_family is not None:
        query = query.where(AuthSession.family_id != except_family)
    result = session.execute(query.values(revoked_at=utcnow(), revoked_reason=reason))
    return int(getattr(result, "rowcount", 0) or 0)


def _revoke_api_keys(session: Session, user_id: uuid.UUID, now: datetime) -> int:
    result = session.execute(
        update(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None)).values(revoked_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _end_sign_ins_in_progress(session: Session, user_id: uuid.UUID, now: datetime) -> None:
    """A sign-in that proved the old password but not yet its second factor must not finish after the password
    was reset, changed or locked: whoever started it may be the one being locked out."""
    session.execute(
        update(TwoFactorConfirmation)
        .where(
            TwoFactorConfirmation.user_id == user_id,
            TwoFactorConfirmation.confirmed_at.is_(None),
            TwoFactorConfirmation.expires_at > now,
        )
        .values(expires_at=now)
    )


def _drop_second_factor(session: Session, user: User) -> None:
    user.two_factor_enabled = False
    user.two_factor_method = None
    user.two_factor_enrolled_at = None
    user.totp_secret = None
    user.totp_pending_secret = None
    user.totp_last_step = None
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))


def require_step_up(caller: Caller, now: datetime) -> None:
    """Credential changes need a session (never an API key) that proved the password (and second factor)
    within the step-up window."""
    window = get_settings().step_up_window_seconds
    if caller.api_key_id or not caller.session_id:
        raise ReauthenticationRequired(
            "API keys cannot change credentials; use a signed-in session", details={"window_seconds": window}
        )
    if caller.auth_time is None or caller.auth_time < int(now.timestamp()) - window:
        raise ReauthenticationRequired(
            "confirm your password (and second factor) with POST /auth/reauthenticate first",
            details={"window_seconds": window},
        )


def _security_notice(session: Session, user: User, event: str, now: datetime) -> OutgoingMail:
    """A notice of `event` with its one-time lock link (the caller sends it after committing)."""
    hours = get_settings().security_lock_link_hours
    token = new_token(32)
    session.add(
        SecurityLockToken(
            user_id=user.id,
            event=event,
            token_hash=hash_secret(token),
            expires_at=now + timedelta(hours=hours),
            created_at=now,
        )
    )
    return mails.security_notice(user.email, user.id, event, token, hours)


def promote_admin(user: User) -> None:
    """ADMIN_EMAILS makes an admin at sign-in, unless an admin has set this account's role by hand (an audited
    `user.role_change`): an explicit demotion outlives the list."""
    if normalise_email(user.email) not in get_settings().admin_emails or user.role == UserRole.ADMIN:
        return
    session = object_session(user)
    if session is not None and role_set_by_admin(session, user.id):
        return
    user.role = UserRole.ADMIN


@contextmanager
def _answer_no_sooner_than(milliseconds: int) -> Iterator[None]:
    """Pad the call to a fixed floor so its duration does not tell whether mail was sent (SES takes tens of
    milliseconds; an unknown email sends nothing). Applied to register and forgot-password."""
    started = time.monotonic()
    try:
        yield
    finally:
        _pad_to_floor(started, milliseconds)


def _pad_to_floor(started: float, milliseconds: int) -> None:
    remaining = milliseconds / 1000 - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)


# --- register and verify ----------------------------------------------------------------------------------------
def _count_mail_request(uow: UnitOfWork, ip: str | None) -> None:
    """Requests that send mail are limited per source IP (whatever the email), so nobody can use this
    backend to bomb many mailboxes. Counted in its own transaction: a refused request still counts."""
    if not ip:
        return
    now = utcnow()
    with uow:
        throttle.check(uow.session, [("mail", ip)], now)
        throttle.record_failure(uow.session, "mail", ip, now)
        uow.commit()


def register(
    uow: UnitOfWork,
    email: str,
    password: str,
    *,
    name: str | None = None,
    username: str | None = None,
    client: ClientInfo | None = None,
) -> None:
    """Create an unverified account and mail a verification link. Known emails get the same answer: an
    unverified one is sent a fresh link, a verified one a notice that someone tried to sign up."""
    require_builtin()
    passwords.check_password_policy(password, email=email)
    _count_mail_request(uow, client.ip if client else None)
    with _answer_no_sooner_than(get_settings().enumeration_floor_ms):
        _register(uow, email, password, name, username)


def _register(uow: UnitOfWork, email: str, password: str, name: str | None, username: str | None) -> None:
    password_hash = passwords.hash_password(password)  # paid for every email alike
    now = utcnow()
    outgoing = None
    with uow:
        session = uow.session
        if username is not None:
            # The same check whatever the email: it can tell that a username is in use, never an email.
            taken = session.execute(select(User.id).where(func.lower(User.username) == username.lower())).first()
            if taken is not None:
                raise UsernameTaken("this username is taken")
        user = user_by_email(session, email)
        if user is None:
            try:
                with session.begin_nested():
                    # A bare account: no password, name, username or ADMIN_EMAILS role until a link is used.
                    user = create_user(session, email=email.strip(), role=UserRole.USER)
            except IntegrityError:
                # Another request registered the same email a moment ago.
                user = user_by_email(session, email)
                if user is None:
                    raise
        outgoing = _registration_mail(session, user, password_hash, name, username, now)
        uow.commit()
    if outgoing is not None:
        send_mail(uow, outgoing)


def _registration_mail(
    session: Session, user: User, password_hash: str, name: str | None, username: str | None, now: datetime
) -> OutgoingMail | None:
    """A verified account gets a notice and nothing changes; an unverified one a link that carries this
    registration's password, name and username (each registration its own, none inherited)."""
    if user.is_deleted:
        return None
    if user.email_verified:
        return mails.account_exists(user.email, user.id)
    token = new_token(32)
    session.add(
        VerificationToken(
            user_id=user.id,
            email=user.email,
            token_hash=hash_secret(token),
            expires_at=now + VERIFICATION_TTL,
            password_hash=password_hash,
            name=name,
            username=username,
        )
    )
    return mails.verify_email(user.email, user.id, token)


LinkToken = TypeVar("LinkToken", VerificationToken, PasswordResetToken, SecurityLockToken)


def _live_link_token(session: Session, model: type[LinkToken], token: str, now: datetime) -> LinkToken:
    """The unused, unexpired token a mailed link carries, locked; anything else is one and the same refusal."""
    row = session.execute(
        select(model).where(model.token_hash == hash_secret(token)).with_for_update()
    ).scalar_one_or_none()
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise InvalidToken("this link is invalid or has expired")
    return row


def _count_failed_attempt(session: Session, account_key: str | None, ip: str | None, now: datetime) -> None:
    """One failed credential attempt, counted against the account and the caller's address (the login throttle).
    The attempt that reaches a threshold is a burst the audit trail records (its actor unknown)."""
    if throttle.record_failure(session, "account", account_key, now):
        user = user_by_email(session, account_key) if account_key else None
        audit_trail.security_event(
            session, None, audit_trail.SIGN_IN_FAILURES, resource="user",
            resource_id=str(user.id) if user is not None else None, details={"scope": "account"}, now=now,
        )  # fmt: skip
    if throttle.record_failure(session, "ip", ip, now):
        audit_trail.security_event(
            session, None, audit_trail.SIGN_IN_FAILURES, resource="ip", resource_id=ip, details={"scope": "ip"},
            now=now,
        )  # fmt: skip


def _password_matches(session: Session, user: User, password: str, ip: str | None, now: datetime) -> tuple[bool, str]:
    """Whether `password` is the signed-in user's own, asked under the login throttle (429 while it cools off;
    PasswordNotSet for an account without one). Returns the throttle's account key with it."""
    account_key = normalise_email(user.email)
    throttle.check(session, [("account", account_key), ("ip", ip or "")], now)
    if user.password_hash is None:
        raise PasswordNotSet("this account has no password; set one with password reset first")
    return passwords.verify_password(user.password_hash, password), account_key


def verify_email(uow: UnitOfWork, token: str, password: str, ip: str | None = None) -> None:
    """Confirm the registration whose link this is: its password, name and username become the account's.

    The link alone is not enough: `password` must be that registration's. Whoever registers an address first
    puts his link in the owner's mailbox, and inside the mail anti-spam window it may be the only one there;
    clicking it must not hand her account his password. A wrong password answers exactly like a bad link (and
    leaves the link usable), costs one password check either way, and counts as a failed sign-in."""
    require_builtin()
    now = utcnow()
    with uow:
        session = uow.session
        throttle.check(session, [("ip", ip or "")], now)
        row = _verification_row(session, token, now)
        account_key = normalise_email(row.email) if row is not None else None
        if account_key is not None:
            throttle.check(session, [("account", account_key)], now)
        ok = passwords.verify_password(row.password_hash if row is not None else None, password)
        user = _user(session, row.user_id, lock=True) if row is not None and ok else None
        if (
            row is None
            or user is None
            or normalise_email(user.email) != normalise_email(row.email)
            or user.email_verified  # a verified account is never registered over
        ):
            _count_failed_attempt(session, account_key, ip, now)
            uow.commit()
            raise InvalidToken("this link is invalid or has expired")
        assert row.password_hash is not None  # verify_password accepts no missing hash
        user.password_hash = row.password_hash
        user.password_changed_at = now
        user.name = row.name
        user.username = None
        user.email_verified_at = now
        user.role = role_for_new_user(user.email) if user.role == UserRole.USER else user.role
        # Nothing made before the address was proven survives it.
        _drop_second_factor(session, user)
        _revoke_families(session, user.id, "registration_verified")
        _revoke_api_keys(session, user.id, now)
        session.execute(
            update(VerificationToken)
            .where(VerificationToken.user_id == user.id, VerificationToken.used_at.is_(None))
            .values(used_at=now)
        )
        throttle.clear(session, "account", account_key)
        session.flush()
        if row.username is not None:
            free = session.execute(
                select(User.id).where(func.lower(User.username) == row.username.lower(), User.id != user.id)
            ).first()
            if free is None:
                try:
                    with session.begin_nested():
                        user.username = row.username
                        session.flush()
                except IntegrityError:
                    user.username = None  # taken meanwhile: the account starts without one
        uow.commit()


def _verification_row(session: Session, token: str, now: datetime) -> VerificationToken | None:
    """The live verification token of this link, locked, or None. A token without a password (from before
    registrations carried their own) confirms nothing: its owner registers again or resets the password."""
    try:
        row = _live_link_token(session, VerificationToken, token, now)
    except InvalidToken:
        return None
    return row if row.password_hash is not None else None


# --- login ----------------------------------------------------------------------------------------------------
def login(uow: UnitOfWork, email: str, password: str, client: ClientInfo) -> TokenPair | TwoFactorChallenge:
    """Sign in. An account whose address is not verified yet answers exactly like a wrong password (status,
    body, and no sooner than the enumeration floor): anything else would tell a prober who registered an address
    with his own password whether it already had an account. With the newest pending registration's password,
    that registration's verification mail goes out again (the anti-spam window applies)."""
    require_builtin()
    started = time.monotonic()
    try:
        return _login(uow, email, password, client)
    except InvalidCredentials:
        _pad_to_floor(started, get_settings().enumeration_floor_ms)
        raise


def _login(uow: UnitOfWork, email: str, password: str, client: ClientInfo) -> TokenPair | TwoFactorChallenge:
    account_key = normalise_email(email)
    now = utcnow()
    outcome: TokenPair | TwoFactorChallenge | None = None
    outgoing: OutgoingMail | None = None
    with uow:
        session = uow.session
        throttle.check(session, [("account", account_key), ("ip", client.ip or "")], now)
        user = user_by_email(session, email)
        pending: VerificationToken | None = None
        if user is not None and not user.email_verified:
            # One hash either way: the newest pending registration's, whose owner is mailed her link again.
            pending = _pending_registration(session, user.id, now)
            stored = pending.password_hash if pending is not None else None
        else:
            stored = user.password_hash if user is not None else None
        ok = passwords.verify_password(stored, password)
        if user is not None and ok and user.email_verified:
            outcome, outgoing = _sign_in(session, user, password, client, now)
        else:
            # An unverified account is refused like a wrong password, and counted like one.
            if user is not None and ok and pending is not None and _may_be_mailed(user):
                outgoing = _resend_registration_mail(session, user, pending, now)
            _count_failed_attempt(session, account_key, client.ip, now)
        uow.commit()
    if outgoing is not None:
        send_mail(uow, outgoing)
    if outcome is None:
        raise InvalidCredentials("the email or password is wrong")
    return outcome


def _sign_in(
    session: Session, user: User, password: str, client: ClientInfo, now: datetime
) -> tuple[TokenPair | TwoFactorChallenge, OutgoingMail | None]:
    """The verified account proved its password: a session, or the second-factor challenge (and its mail)."""
    # Read again under a share lock: a suspension or erasure that committed (or is committing) while the password
    # was checked refuses this sign-in; one that starts later waits for this session, then revokes it.
    session.refresh(user, with_for_update={"key_share": True})
    ensure_active(user)
    if user.password_hash and passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
    promote_admin(user)
    if not user.two_factor_enabled:
        throttle.clear(session, "account", normalise_email(user.email))
        user.last_login_at = now
        user.password_login_at = now
        pair = start_session(session, user, client, now, authenticated_at=now)
        audit_trail.security_event(
            session, user.id, audit_trail.SIGN_IN, details={"method": "password", "session_id": str(pair.session_id)},
            now=now,
        )  # fmt: skip
        return pair, None
    challenge, code = _open_challenge(session, user, client, now)
    outgoing = mails.two_factor_code(user.email, user.id, code, challenge.id) if code is not None else None
    return TwoFactorChallenge(challenge_id=challenge.id, method=challenge.method), outgoing


def _may_be_mailed(user: User) -> bool:
    return not user.is_deleted and user.status in (UserStatus.ACTIVE, UserStatus.LOCKED)


def _resend_registration_mail(session: Session, user: User, pending: VerificationToken, now: datetime) -> OutgoingMail:
    """A fresh link for the same registration (tokens are stored hashed, so the old one cannot be mailed again);
    the earlier link keeps working, which matters when the anti-spam window holds this mail back."""
    token = new_token(32)
    session.add(
        VerificationToken(
            user_id=user.id,
            email=user.email,
            token_hash=hash_secret(token),
            expires_at=now + VERIFICATION_TTL,
            password_hash=pending.password_hash,
            name=pending.name,
            username=pending.username,
        )
    )
    return mails.verify_email(user.email, user.id, token)


def _pending_registration(session: Session, user_id: uuid.UUID, now: datetime) -> VerificationToken | None:
    return session.execute(
        select(VerificationToken)
        .where(
            VerificationToken.user_id == user_id,
            VerificationToken.used_at.is_(None),
            VerificationToken.expires_at > now,
            VerificationToken.password_hash.is_not(None),
        )
        .order_by(VerificationToken.created_at.desc(), VerificationToken.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def _open_challenge(
    session: Session, user: User, client: ClientInfo, now: datetime
) -> tuple[TwoFactorConfirmation, str | None]:
    """The login challenge, and the code to mail (None when no mail is due)."""
    method = user.two_factor_method or "email"
    if method == "email":
        # A code mailed moments ago is still on its way: reuse its challenge instead of being stopped by the
        # mail anti-spam window with a challenge whose code never leaves.
        window = timedelta(seconds=get_settings().mail_min_interval_seconds)
        recent = session.execute(
            select(TwoFactorConfirmation)
            .where(
                TwoFactorConfirmation.user_id == user.id,
                TwoFactorConfirmation.method == "email",
                TwoFactorConfirmation.confirmed_at.is_(None),
                TwoFactorConfirmation.locked_at.is_(None),
                TwoFactorConfirmation.expires_at > now,
                TwoFactorConfirmation.created_at > now - window,
            )
            .order_by(TwoFactorConfirmation.created_at.desc())
            .limit(1)
        ).scalar_one_or_none()
        if recent is not None and _code_was_sent(session, recent.id):
            return recent, None
    challenge = TwoFactorConfirmation(
        user_id=user.id,
        method=method,
        attempts=0,
        ip=client.ip,
        user_agent=(client.user_agent or "")[:512] or None,
        expires_at=now + TWO_FACTOR_TTL,
        created_at=now,
    )
    session.add(challenge)
    session.flush()
    if method != "email":
        return challenge, None
    code = new_code(6)
    session.add(
        TwoFactorToken(
            user_id=user.id,
            challenge_id=challenge.id,
            code_hash=hash_secret(code, context=str(challenge.id)),
            expires_at=now + TWO_FACTOR_TTL,
        )
    )
    return challenge, code


def _code_was_sent(session: Session, challenge_id: uuid.UUID) -> bool:
    """Did the mail of this challenge's code go out (or is it going)? A failed send is no reason to reuse it."""
    sent = session.execute(
        select(EmailLog.id)
        .where(
            EmailLog.type == "two_factor_code",
            EmailLog.status.in_(HANDED_OVER),  # a delivered (or bounced) code went out too
            EmailLog.metadata_["challenge_id"].astext == str(challenge_id),
        )
        .limit(1)
    ).first()
    return sent is not None


def login_two_factor(uow: UnitOfWork, challenge_id: uuid.UUID, code: str, client: ClientInfo) -> TokenPair:
    require_builtin()
    settings = get_settings()
    now = utcnow()
    with uow:
        session = uow.session
        challenge = session.execute(
            select(TwoFactorConfirmation).where(TwoFactorConfirmation.id == challenge_id).with_for_update()
        ).scalar_one_or_none()
        if challenge is None or challenge.confirmed_at is not None or challenge.expires_at <= now:
            raise InvalidTwoFactorCode("this sign-in has expired; sign in again")
        user = _user(session, challenge.user_id, lock=True)
        account_key = normalise_email(user.email)
        if challenge.locked_at is not None:
            raise RateLimited("too many wrong codes; sign in again")
        throttle.check(session, [("account", account_key), ("ip", client.ip or "")], now)
        ensure_active(user)
        matched = _code_matches(session, user, challenge, code.strip(), now)
        if matched is None:
            challenge.attempts += 1
            _count_failed_attempt(session, account_key, client.ip, now)
            locked = challenge.attempts >= settings.two_factor_max_attempts
            if locked:
                challenge.locked_at = now
            uow.commit()
            if locked:
                raise RateLimited("too many wrong codes; sign in again")
            raise InvalidTwoFactorCode(
                "the code is wrong", details={"attempts_left": settings.two_factor_max_attempts - challenge.attempts}
            )
        challenge.confirmed_at = now
        throttle.clear(session, "account", account_key)
        user.last_login_at = now
        user.password_login_at = now
        pair = start_session(session, user, client, now, authenticated_at=now)
        audit_trail.security_event(
            session, user.id, audit_trail.SIGN_IN,
            details={
                "method": "password", "second_factor": "recovery_code" if matched == "recovery" else challenge.method,
                "session_id": str(pair.session_id),
            },
            now=now,
        )  # fmt: skip
        outgoing = _security_notice(session, user, "recovery_code_used", now) if matched == "recovery" else None
        uow.commit()
    if outgoing is not None:
        send_mail(uow, outgoing)
    return pair


def _code_matches(
    session: Session, user: User, challenge: TwoFactorConfirmation, code: str, now: datetime
) -> str | None:
    """Which kind of code completed the challenge ("code", or "recovery" for a TOTP user's recovery code), or
    None when it does not."""
    if challenge.method == "totp" and not (code.isdigit() and len(code) == 6):
        return "recovery" if _use_recovery_code(session, user, code, now) else None
    if not code.isdigit() or len(code) != 6:
        return None
    if challenge.method == "totp":
        return "code" if _accept_totp(user, user.totp_secret, code, now) else None
    tokens = session.execute(
        select(TwoFactorToken).where(
            TwoFactorToken.challenge_id == challenge.id,
            TwoFactorToken.used_at.is_(None),
            TwoFactorToken.expires_at > now,
        )
    ).scalars()
    wanted = hash_secret(code, context=str(challenge.id))
    for token in tokens:
        if same_hash(token.code_hash, wanted):
            token.used_at = now
            return "code"
    return None


def _totp_context(user_id: uuid.UUID, column: str) -> str:
    return f"users.{column}:{user_id}"


def _open_totp_secret(user: User, stored: str | None, column: str) -> str | None:
    if not stored:
        return None
    if not sealing.is_sealed(stored):
        return stored  # written before secrets were sealed; re-sealed below once it is used
    return sealing.unseal(stored, _totp_context(user.id, column))


def _accept_totp(user: User, stored: str | None, code: str, now: datetime, column: str = "totp_secret") -> bool:
    """A TOTP code of the current step or one step either side, never one already accepted."""
    secret = _open_totp_secret(user, stored, column)
    if not secret:
        return False
    totp = pyotp.TOTP(secret)
    step_now = int(now.timestamp()) // totp.interval
    for step in (step_now - 1, step_now, step_now + 1):
        if user.totp_last_step is not None and step <= user.totp_last_step:
            continue
        if secrets.compare_digest(totp.generate_otp(step), code):
            user.totp_last_step = step
            if column == "totp_secret" and stored is not None and sealing.reseal_needed(stored):
                user.totp_secret = sealing.seal(secret, _totp_context(user.id, "totp_secret"))
            return True
    return False


def _normalise_recovery_code(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum())


def _recovery_hash(user_id: uuid.UUID, code: str) -> str:
    return hash_secret(_normalise_recovery_code(code), context=f"recovery:{user_id}")


def _use_recovery_code(session: Session, user: User, code: str, now: datetime) -> bool:
    if len(_normalise_recovery_code(code)) != RECOVERY_CODE_LENGTH:
        return False
    row = session.execute(
        select(RecoveryCode)
        .where(
            RecoveryCode.user_id == user.id,
            RecoveryCode.code_hash == _recovery_hash(user.id, code),
            RecoveryCode.used_at.is_(None),
        )
        .with_for_update()
    ).scalar_one_or_none()
    if row is None:
        return False
    row.used_at = now
    return True


def _new_recovery_codes(session: Session, user: User, now: datetime) -> list[str]:
    """Ten fresh codes (shown once), replacing any earlier set."""
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_CODE_LENGTH))
        code = f"{raw[:5]}-{raw[5:]}"
        codes.append(code)
        session.add(RecoveryCode(user_id=user.id, code_hash=_recovery_hash(user.id, code), created_at=now))
    return codes


# --- refresh and logout -----------------------------------------------------------------------------------------
def refresh(uow: UnitOfWork, refresh_token: str, client: ClientInfo) -> TokenPair:
    """Rotate: the presented token stops working and a new pair is issued in the same family. A token that was
    already rotated coming back means it leaked: the whole family is revoked."""
    require_builtin()
    now = utcnow()
    with uow:
        session = uow.session
        query = select(AuthSession).where(AuthSession.refresh_token_hash == hash_secret(refresh_token))
        found = session.execute(query).scalar_one_or_none()
        if found is not None:
            # The account (share lock), then the session row: the order of everything that revokes sessions
            # (suspension, erasure, password reset), so a refresh and a revocation wait for each other, never
            # deadlock, and a pair issued first is revoked by the revocation that follows.
            session.execute(select(User.id).where(User.id == found.user_id).with_for_update(key_share=True))
        row = session.execute(query.with_for_update().execution_options(populate_existing=True)).scalar_one_or_none()
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            raise InvalidRefreshToken("the refresh token is invalid or expired; sign in again")
        if row.rotated_at is not None:
            session.execute(
                update(AuthSession)
                .where(AuthSession.family_id == row.family_id, AuthSession.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason="reuse_detected")
            )
            # Nobody chose this revocation: the actor is unknown (the owner or the thief replayed the token).
            audit_trail.security_event(
                session, None, audit_trail.SESSION_REVOKED, resource="session", resource_id=str(row.family_id),
                details={"reason": "reuse_detected", "user_id": str(row.user_id)}, now=now,
            )  # fmt: skip
            uow.commit()
            raise RefreshTokenReused("this refresh token was already used; the session is revoked")
        user = _user(session, row.user_id)
        ensure_active(user)
        row.rotated_at = now
        row.last_used_at = now
        pair = _issue_pair(session, user, row.family_id, client, now, row.authenticated_at)
        uow.commit()
        return pair


def logout(uow: UnitOfWork, user_id: uuid.UUID, session_id: str | None) -> None:
    require_builtin()
    if not session_id:
        raise BadRequest("this credential has no session to end (API keys are revoked by DELETE /auth/api-keys)")
    _revoke_one_session(uow, user_id, _parse_uuid(session_id), reason="logout")


def reauthenticate(uow: UnitOfWork, caller: Caller, password: str, code: str | None, ip: str | None) -> AccessToken:
    """Prove the password, and the second factor if the account has one (a TOTP or recovery code; with mailed
    2FA a first call without `code` mails one), again: the session's step-up clock restarts and a new access
    token carries it."""
    require_builtin()
    if caller.api_key_id or not caller.session_id:
        raise ReauthenticationRequired("only a signed-in session can reauthenticate")
    family_id = _parse_uuid(caller.session_id)
    now = utcnow()
    outgoing = None
    with uow:
        session = uow.session
        user = _user(session, caller.user_id, lock=True)
        ensure_active(user)
        ok, account_key = _password_matches(session, user, password, ip, now)
        if ok and user.two_factor_enabled and user.two_factor_method == "email" and not code:
            challenge, mailed = _open_challenge(session, user, ClientInfo(ip=ip), now)
            outgoing = mails.two_factor_code(user.email, user.id, mailed, challenge.id) if mailed else None
            uow.commit()
            if outgoing is not None:
                send_mail(uow, outgoing)
            raise InvalidTwoFactorCode("a code was mailed to you; send it with the password", details={"sent": True})
        second: str | None = "none"
        if ok and user.two_factor_enabled:
            second = _second_factor_for_step_up(session, user, (code or "").strip(), now)
        if not ok or second is None:
            _count_failed_attempt(session, account_key, ip, now)
            uow.commit()
            if not ok:
                raise InvalidCredentials("the password is wrong")
            raise InvalidTwoFactorCode("a valid two-factor code is needed as well")
        updated = session.execute(
            update(AuthSession)
            .where(
                AuthSession.family_id == family_id,
                AuthSession.user_id == user.id,
                AuthSession.revoked_at.is_(None),
            )
            .values(authenticated_at=now)
        )
        if not int(getattr(updated, "rowcount", 0) or 0):
            raise NotFound("no such session")
        user.password_login_at = now
        if second == "recovery":
            outgoing = _security_notice(session, user, "recovery_code_used", now)
        access, ttl = issue_access_token(user.id, family_id, user.role, now, now)
        uow.commit()
    if outgoing is not None:
        send_mail(uow, outgoing)
    window = timedelta(seconds=get_settings().step_up_window_seconds)
    return AccessToken(access_token=access, expires_in=ttl, auth_time=now, step_up_until=now + window)


def _second_factor_for_step_up(session: Session, user: User, code: str, now: datetime) -> str | None:
    """Whether `code` proves the account's second factor: "code", "recovery" (a TOTP user's recovery code) or
    None. Mailed 2FA takes any unused, unexpired code mailed to this user."""
    if not code:
        return None
    if user.two_factor_method == "totp":
        if code.isdigit() and len(code) == 6:
            return "code" if _accept_totp(user, user.totp_secret, code, now) else None
        return "recovery" if _use_recovery_code(session, user, code, now) else None
    if not (code.isdigit() and len(code) == 6):
        return None
    tokens = session.execute(
        select(TwoFactorToken).where(
            TwoFactorToken.user_id == user.id, TwoFactorToken.used_at.is_(None), TwoFactorToken.expires_at > now
        )
    ).scalars()
    for token in tokens:
        if same_hash(token.code_hash, hash_secret(code, context=str(token.challenge_id))):
            token.used_at = now
            return "code"
    return None


def _parse_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound("no such session") from None


# --- passwords --------------------------------------------------------------------------------------------------
def forgot_password(uow: UnitOfWork, email: str, client: ClientInfo | None = None) -> None:
    """Mail a reset link if the account exists. The caller answers 202 whatever happens here."""
    require_builtin()
    _count_mail_request(uow, client.ip if client else None)
    with _answer_no_sooner_than(get_settings().enumeration_floor_ms):
        _forgot_password(uow, email)


def _forgot_password(uow: UnitOfWork, email: str) -> None:
    now = utcnow()
    outgoing = None
    with uow:
        session = uow.session
        user = user_by_email(session, email)
        if user is not None and not user.is_deleted and user.status in (UserStatus.ACTIVE, UserStatus.LOCKED):
            token = new_token(32)
            session.add(PasswordResetToken(user_id=user.id, token_hash=hash_secret(token), expires_at=now + RESET_TTL))
            # Anyone may ask for a reset: the actor is unknown, the account is the resource.
            audit_trail.security_event(
                session, None, audit_trail.PASSWORD_RESET_REQUESTED, resource_id=str(user.id), now=now
            )
            outgoing = mails.password_reset(user.email, user.id, token)
        uow.commit()
    if outgoing is not None:
        send_mail(uow, outgoing)


def reset_password(uow: UnitOfWork, token: str, new_password: str) -> None:
    """Set a new password from a mailed link. Every session and every API key is revoked, nobody is signed in,
    and a second factor enrolled after the last completed password sign-in (one its owner never used) is
    removed: whoever held the account may have added it."""
    require_builtin()
    now = utcnow()
    with uow:
        session = uow.session
        row = _live_link_token(session, PasswordResetToken, token, now)
        user = _user(session, row.user_id, lock=True)
        ensure_active(user)
        passwords.check_password_policy(new_password, email=user.email)
        user.password_hash = passwords.hash_password(new_password)
        user.password_changed_at = now
        if user.email_verified_at is None:
            user.email_verified_at = now  # the link proved the address
            user.role = role_for_new_user(user.email) if user.role == UserRole.USER else user.role
        enrolled = user.two_factor_enrolled_at
        if user.two_factor_enabled and (
            enrolled is None or user.password_login_at is None or enrolled > user.password_login_at
        ):
            _drop_second_factor(session, user)
        user.totp_pending_secret = None
        session.execute(
            update(PasswordResetToken)
            .where(PasswordResetToken.user_id == user.id, PasswordResetToken.used_at.is_(None))
            .values(used_at=now)
        )
        sessions = _revoke_families(session, user.id, "password_reset")
        keys = _revoke_api_keys(session, user.id, now)
        _end_sign_ins_in_progress(session, user.id, now)
        throttle.clear(session, "account", normalise_email(user.email))
        audit_trail.security_event(
            session, user.id, audit_trail.PASSWORD_RESET_COMPLETED,
            details={"sessions_revoked": sessions, "api_keys_revoked": keys}, now=now,
        )  # fmt: skip
        outgoing = _security_notice(session, user, "password_reset", now)
        uow.commit()
    send_mail(uow, outgoing)


def change_password(
    uow: UnitOfWork,
    caller: Caller,
    current_password: str,
    new_password: str,
    ip: str | None,
) -> None:
    """Every other session and every API key is revoked; the session making the change (which has just proved
    the password) stays signed in."""
    require_builtin()
    now = utcnow()
    require_step_up(caller, now)
    with uow:
        session = uow.session
        user = _user(session, caller.user_id, lock=True)
        ensure_active(user)
        matches, account_key = _password_matches(session, user, current_password, ip, now)
        if not matches:
            _count_failed_attempt(session, account_key, ip, now)
            uow.commit()
            raise InvalidCredentials("the current password is wrong")
        passwords.check_password_policy(new_password, email=user.email)
        user.password_hash = passwords.hash_password(new_password)
        user.password_changed_at = now
        keep = None
        if caller.session_id:
            try:
                keep = uuid.UUID(caller.session_id)
            except ValueError:
                keep = None
        sessions = _revoke_families(session, user.id, "password_changed", except_family=keep)
        keys = _revoke_api_keys(session, user.id, now)
        _end_sign_ins_in_progress(session, user.id, now)
        audit_trail.security_event(
            session, user.id, audit_trail.PASSWORD_CHANGED,
            details={"sessions_revoked": sessions, "api_keys_revoked": keys}, now=now,
        )  # fmt: skip
        outgoing = _security_notice(session, user, "password_changed", now)
        uow.commit()
    send_mail(uow, outgoing)


def lock_account(uow: UnitOfWork, token: str) -> None:
    """The link of a security notice: revoke every session and API key, drop a second factor enrolled since
    the notice's change, and stop the password from working; a reset link is mailed to recover."""
    require_builtin()
    now = utcnow()
    with uow:
        session = uow.session
        row = _live_link_token(session, SecurityLockToken, token, now)
        user = _user(session, row.user_id, lock=True)
        session.execute(
            update(SecurityLockToken)
            .where(SecurityLockToken.user_id == user.id, SecurityLockToken.used_at.is_(None))
            .values(used_at=now)
        )
        enrolled = user.two_factor_enrolled_at
        if user.two_factor_enabled and (enrolled is None or enrolled >= row.created_at):
            _drop_second_factor(session, user)
        user.totp_pending_secret = None
        user.password_hash = None
        sessions = _revoke_families(session, user.id, "account_locked")
        keys = _revoke_api_keys(session, user.id, now)
        _end_sign_ins_in_progress(session, user.id, now)
        audit_trail.security_event(
            session, user.id, audit_trail.ACCOUNT_LOCKED,
            details={"sessions_revoked": sessions, "api_keys_revoked": keys}, now=now,
        )  # fmt: skip
        outgoing = None
        if not user.is_deleted and user.status in (UserStatus.ACTIVE, UserStatus.LOCKED):
            reset = new_token(32)
            session.add(PasswordResetToken(user_id=user.id, token_hash=hash_secret(reset), expires_at=now + RESET_TTL))
            outgoing = mails.account_locked(user.email, user.id, reset)
        uow.commit()
    if outgoing is not None:
        send_mail(uow, outgoing)


# --- profile ----------------------------------------------------------------------------------------------------
def get_profile(uow: UnitOfWork, user_id: uuid.UUID) -> ProfileView:
    with uow:
        return row_view(ProfileView, _user(uow.session, user_id))


def update_profile(uow: UnitOfWork, user_id: uuid.UUID, changes: dict[str, object]) -> ProfileView:
    allowed = {"name", "username", "image", "timezone", "language"}
    unknown = set(changes) - allowed
    if unknown:
        raise BadRequest(f"these fields cannot be changed here: {sorted(unknown)}")
    with uow:
        session = uow.session
        user = _user(session, user_id, lock=True)
        username = changes.get("username")
        if isinstance(username, str) and username.lower() != (user.username or "").lower():
            taken = session.execute(
                select(User.id).where(func.lower(User.username) == username.lower(), User.id != user.id)
            ).first()
            if taken is not None:
                raise UsernameTaken("this username is taken")
        for field, value in changes.items():
            setattr(user, field, value)
        try:
            session.flush()
        except IntegrityError:
            raise UsernameTaken("this username is taken") from None
        uow.commit()
        session.refresh(user)
        return row_view(ProfileView, user)


# --- two-factor settings ----------------------------------------------------------------------------------------
def enable_email_two_factor(uow: UnitOfWork, caller: Caller) -> None:
    require_builtin()
    now = utcnow()
    require_step_up(caller, now)
    with uow:
        user = _user(uow.session, caller.user_id, lock=True)
        if user.two_factor_enabled:
            raise TwoFactorStateConflict("two-factor sign-in is already on; turn it off first to switch method")
        user.two_factor_enabled = True
        user.two_factor_method = "email"
        user.two_factor_enrolled_at = now
        audit_trail.security_event(
            uow.session, user.id, audit_trail.TWO_FACTOR_ENABLED, old_values={"two_factor_method": None},
            new_values={"two_factor_method": "email"}, now=now,
        )  # fmt: skip
        outgoing = _security_notice(uow.session, user, "two_factor_enabled", now)
        uow.commit()
    send_mail(uow, outgoing)


def setup_totp(uow: UnitOfWork, caller: Caller) -> TotpSetup:
    require_builtin()
    require_step_up(caller, utcnow())
    with uow:
        user = _user(uow.session, caller.user_id, lock=True)
        if user.two_factor_enabled:
            raise TwoFactorStateConflict("two-factor sign-in is already on; turn it off first to switch method")
        secret = pyotp.random_base32()
        user.totp_pending_secret = sealing.seal(secret, _totp_context(user.id, "totp_pending_secret"))
        uow.commit()
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=TOTP_ISSUER)
        return TotpSetup(secret=secret, otpauth_uri=uri)


def enable_totp(uow: UnitOfWork, caller: Caller, code: str) -> list[str]:
    """Turn TOTP on with a valid code; answers the ten recovery codes (shown this once)."""
    require_builtin()
    now = utcnow()
    require_step_up(caller, now)
    with uow:
        session = uow.session
        user = _user(session, caller.user_id, lock=True)
        if user.two_factor_enabled:
            raise TwoFactorStateConflict("two-factor sign-in is already on")
        if not user.totp_pending_secret:
            raise TwoFactorStateConflict("call POST /auth/two-factor/totp/setup first")
        if not _accept_totp(user, user.totp_pending_secret, code.strip(), now, column="totp_pending_secret"):
            raise InvalidTwoFactorCode("the code is wrong")
        secret = _open_totp_secret(user, user.totp_pending_secret, "totp_pending_secret")
        assert secret is not None  # accepted above
        user.totp_secret = sealing.seal(secret, _totp_context(user.id, "totp_secret"))
        user.totp_pending_secret = None
        user.two_factor_enabled = True
        user.two_factor_method = "totp"
        user.two_factor_enrolled_at = now
        codes = _new_recovery_codes(session, user, now)
        audit_trail.security_event(
            session, user.id, audit_trail.TWO_FACTOR_ENABLED, old_values={"two_factor_method": None},
            new_values={"two_factor_method": "totp"}, now=now,
        )  # fmt: skip
        outgoing = _security_notice(session, user, "two_factor_enabled", now)
        uow.commit()
    send_mail(uow, outgoing)
    return codes


def regenerate_recovery_codes(uow: UnitOfWork, caller: Caller) -> list[str]:
    """Ten new recovery codes for a TOTP user; the earlier ones stop working."""
    require_builtin()
    now = utcnow()
    require_step_up(caller, now)
    with uow:
        session = uow.session
        user = _user(session, caller.user_id, lock=True)
        if not user.two_factor_enabled or user.two_factor_method != "totp":
            raise TwoFactorStateConflict("recovery codes are for TOTP sign-in; turn it on first")
        codes = _new_recovery_codes(session, user, now)
        # Fresh codes are a way back in for whoever holds this session: recorded like 2FA on and off.
        audit_trail.security_event(session, user.id, audit_trail.RECOVERY_CODES_CREATED, now=now)
        outgoing = _security_notice(session, user, "recovery_codes_created", now)
        uow.commit()
    send_mail(uow, outgoing)
    return codes


def disable_two_factor(uow: UnitOfWork, caller: Caller, password: str, ip: str | None) -> None:
    require_builtin()
    now = utcnow()
    require_step_up(caller, now)
    with uow:
        session = uow.session
        user = _user(session, caller.user_id, lock=True)
        matches, account_key = _password_matches(session, user, password, ip, now)
        if not matches:
            _count_failed_attempt(session, account_key, ip, now)
            uow.commit()
            raise InvalidCredentials("the password is wrong")
        was_on = user.two_factor_enabled
        if was_on:
            audit_trail.security_event(
                session, user.id, audit_trail.TWO_FACTOR_DISABLED,
                old_values={"two_factor_method": user.two_factor_method}, new_values={"two_factor_method": None},
                now=now,
            )  # fmt: skip
        _drop_second_factor(session, user)
        outgoing = _security_notice(session, user, "two_factor_disabled", now) if was_on else None
        uow.commit()
    if outgoing is not None:
        send_mail(uow, outgoing)


# --- sessions ---------------------------------------------------------------------------------------------------
def list_sessions(
    uow: UnitOfWork, user_id: uuid.UUID, current_session: str | None, cursor: str | None, limit: int
) -> Page[SessionView]:
    """The live sessions (one per family: its newest, unrotated token), newest first."""
    now = utcnow()
    with uow:
        query = select(AuthSession).where(
            AuthSession.user_id == user_id,
            AuthSession.rotated_at.is_(None),
            AuthSession.revoked_at.is_(None),
            AuthSession.expires_at > now,
        )
        page = keyset_page(uow.session, query, AuthSession.id, cursor=cursor, limit=limit, descending=True)
        items = [
            SessionView(
                id=row.family_id,
                ip=row.ip,
                user_agent=row.user_agent,
                created_at=row.created_at,
                last_used_at=row.last_used_at,
                expires_at=row.expires_at,
                current=str(row.family_id) == (current_session or ""),
            )
            for row in page.items
        ]
        return Page(items=items, next_cursor=page.next_cursor)


def revoke_session(uow: UnitOfWork, caller: Caller, family_id: uuid.UUID) -> None:
    """Ending the caller's own session is a logout; ending another one is a credential change (step-up)."""
    if str(family_id) != (caller.session_id or ""):
        require_step_up(caller, utcnow())
    _revoke_one_session(uow, caller.user_id, family_id, reason="revoked")


def _revoke_one_session(uow: UnitOfWork, user_id: uuid.UUID, family_id: uuid.UUID, *, reason: str) -> None:
    with uow:
        session = uow.session
        exists = session.execute(
            select(AuthSession.id).where(AuthSession.family_id == family_id, AuthSession.user_id == user_id).limit(1)
        ).first()
        if exists is None:
            raise NotFound("no such session")
        ended = session.execute(
            update(AuthSession)
            .where(AuthSession.family_id == family_id, AuthSession.revoked_at.is_(None))
            .values(revoked_at=utcnow(), revoked_reason=reason)
        )
        # A logout is not a revocation: it ends the session that asks.
        if reason != "logout" and int(getattr(ended, "rowcount", 0) or 0):
            audit_trail.security_event(
                session, user_id, audit_trail.SESSION_REVOKED, resource="session", resource_id=str(family_id),
                details={"reason": reason},
            )  # fmt: skip
        uow.commit()


# --- API keys ---------------------------------------------------------------------------------------------------
def _key_view(key: ApiKey) -> ApiKeyView:
    return ApiKeyView(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        scopes=tuple(sorted(key.scopes or ())),
    )


def create_api_key(
    uow: UnitOfWork,
    caller: Caller,
    name: str,
    *,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
) -> NewApiKey:
    """`tg_<prefix>_<secret>`: the prefix identifies the key in lists, the whole key is hashed for lookup. The
    key holds `scopes` (default: the narrowest useful set) until `expires_at` (optional)."""
    now = utcnow()
    require_step_up(caller, now)
    wanted = sorted(set(scopes if scopes is not None else key_scopes.DEFAULT_SCOPES))
    unknown = set(wanted) - set(key_scopes.SCOPES)
    if unknown or not wanted:
        raise ValidationFailed("unknown or no scopes", details={"unknown": sorted(unknown), "known": key_scopes.SCOPES})
    if expires_at is not None and expires_at <= now:
        raise ValidationFailed("expires_at must be in the future")
    with uow:
        session = uow.session
        user = _user(session, caller.user_id, lock=True)
        ensure_active(user)
        if key_scopes.STAFF_SCOPES & set(wanted) and not has_role(Actor.user(user.id, user.role), ADMIN, SUPPORT):
            raise ScopeNotAllowed("only staff can create keys with these scopes", details={"scopes": wanted})
        live = session.execute(
            select(func.count()).select_from(ApiKey).where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        ).scalar_one()
        if live >= MAX_API_KEYS:
            raise Conflict(f"at most {MAX_API_KEYS} active API keys; revoke one first")
        prefix = secrets.token_hex(6)
        key = f"{API_KEY_PREFIX}_{prefix}_{new_token(32)}"
        row = ApiKey(
            user_id=user.id,
            name=name,
            prefix=f"{API_KEY_PREFIX}_{prefix}",
            key_hash=hash_secret(key),
            scopes=wanted,
            expires_at=expires_at,
            created_at=now,
        )
        session.add(row)
        session.flush()
        audit_trail.security_event(
            session, user.id, audit_trail.API_KEY_CREATED, resource="api_key", resource_id=str(row.id),
            new_values={"name": name, "prefix": row.prefix, "scopes": wanted, "expires_at": expires_at}, now=now,
        )  # fmt: skip
        outgoing = _security_notice(session, user, "api_key_created", now)
        uow.commit()
        created = NewApiKey(key=key, view=_key_view(row))
    send_mail(uow, outgoing)
    return created


def list_api_keys(uow: UnitOfWork, user_id: uuid.UUID, cursor: str | None, limit: int) -> Page[ApiKeyView]:
    with uow:
        query = select(ApiKey).where(ApiKey.user_id == user_id)
        page = keyset_page(uow.session, query, ApiKey.id, cursor=cursor, limit=limit, descending=True)
        return Page(items=[_key_view(r) for r in page.items], next_cursor=page.next_cursor)


def revoke_api_key(uow: UnitOfWork, user_id: uuid.UUID, key_id: uuid.UUID) -> None:
    with uow:
        row = uow.session.execute(
            select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            raise NotFound("no such API key")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            audit_trail.security_event(
                uow.session, user_id, audit_trail.API_KEY_REVOKED, resource="api_key", resource_id=str(key_id),
                old_values={"name": row.name, "prefix": row.prefix},
            )  # fmt: skip
        uow.commit()

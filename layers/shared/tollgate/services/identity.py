"""Identity: accounts and built-in sign-in: register, verify, log in (with 2FA), refresh, log out, reset and change
passwords, profile, 2FA settings, sessions and API keys.

Rules kept here (issue 4):
- no answer reveals whether an email is registered (register / forgot / login are equal in status, body and
  cost: unknown emails hash a dummy password);
- every secret handed out (refresh token, API key, mailed token or code) is random, stored hashed, single-use
  where that applies, and expiring;
- failed sign-ins are counted per account and per IP in Postgres; past the threshold, 429;
- a suspended, locked or deleted account can neither sign in nor refresh.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

import pyotp
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tollgate.auth import passwords, throttle
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
    EmailNotVerified,
    InvalidCredentials,
    InvalidRefreshToken,
    InvalidToken,
    InvalidTwoFactorCode,
    NotFound,
    PasswordNotSet,
    RateLimited,
    RefreshTokenReused,
    TwoFactorStateConflict,
    UsernameTaken,
)
from tollgate.mail import OutgoingMail, send_mail
from tollgate.mail import messages as mails
from tollgate.models import User, UserRole, UserStatus
from tollgate.models.auth import (
    ApiKey,
    AuthSession,
    EmailLog,
    PasswordResetToken,
    TwoFactorConfirmation,
    TwoFactorToken,
    VerificationToken,
)

VERIFICATION_TTL = timedelta(hours=24)
RESET_TTL = timedelta(hours=1)
TWO_FACTOR_TTL = timedelta(minutes=10)
TOTP_ISSUER = "Tollgate"
API_KEY_PREFIX = "tg"
T = TypeVar("T")
MAX_API_KEYS = 50


# --- values the services return -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClientInfo:
    ip: str | None = None
    user_agent: str | None = None


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


@dataclass(frozen=True, slots=True)
class NewApiKey:
    key: str
    view: ApiKeyView


@dataclass(frozen=True, slots=True)
class TotpSetup:
    secret: str
    otpauth_uri: str


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


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


def start_session(session: Session, user: User, client: ClientInfo, now: datetime) -> TokenPair:
    """A new session family and its first token pair."""
    return _issue_pair(session, user, uuid.uuid4(), client, now)


def _issue_pair(session: Session, user: User, family_id: uuid.UUID, client: ClientInfo, now: datetime) -> TokenPair:
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
            created_at=now,
        )
    )
    access, ttl = issue_access_token(user.id, family_id, user.role, now)
    return TokenPair(access_token=access, refresh_token=refresh, expires_in=ttl, session_id=family_id)


def _revoke_families(
    session: Session, user_id: uuid.UUID, reason: str, *, except_family: uuid.UUID | None = None
) -> int:
    query = update(AuthSession).where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
    if except_family is not None:
        query = query.where(AuthSession.family_id != except_family)
    result = session.execute(query.values(revoked_at=utcnow(), revoked_reason=reason))
    return int(getattr(result, "rowcount", 0) or 0)


def promote_admin(user: User) -> None:
    if normalise_email(user.email) in get_settings().admin_emails and user.role != UserRole.ADMIN:
        user.role = UserRole.ADMIN


@contextmanager
def _answer_no_sooner_than(milliseconds: int) -> Iterator[None]:
    """Pad the call to a fixed floor so its duration does not tell whether mail was sent (SES takes tens of
    milliseconds; an unknown email sends nothing). Applied to register and forgot-password."""
    started = time.monotonic()
    try:
        yield
    finally:
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
            taken = session.execute(select(User.id).where(func.lower(User.username) == username.lower())).first()
            if taken is not None:
                raise UsernameTaken("this username is taken")
        user = user_by_email(session, email)
        if user is None:
            try:
                with session.begin_nested():
                    user = create_user(
                        session, email=email.strip(), password_hash=password_hash, name=name, username=username
                    )
            except IntegrityError:
                # Another request registered the same email (or username) a moment ago.
                user = user_by_email(session, email)
                if user is None:
                    raise UsernameTaken("this username is taken") from None
                outgoing = _mail_for_existing(session, user, now)
            else:
                outgoing = _new_verification(session, user, now)
        else:
            outgoing = _mail_for_existing(session, user, now)
        uow.commit()
    if outgoing is not None:
        send_mail(uow, outgoing)


def _new_verification(session: Session, user: User, now: datetime) -> OutgoingMail:
    token = new_token(32)
    session.add(
        VerificationToken(
            user_id=user.id, email=user.email, token_hash=hash_secret(token), expires_at=now + VERIFICATION_TTL
        )
    )
    return mails.verify_email(user.email, user.id, token)


def _mail_for_existing(session: Session, user: User, now: datetime) -> OutgoingMail | None:
    if user.is_deleted:
        return None
    if user.email_verified:
        return mails.account_exists(user.email, user.id)
    return _new_verification(session, user, now)


LinkToken = TypeVar("LinkToken", VerificationToken, PasswordResetToken)


def _live_link_token(session: Session, model: type[LinkToken], token: str, now: datetime) -> LinkToken:
    """The unused, unexpired token a mailed link carries, locked; anything else is one and the same refusal."""
    row = session.execute(
        select(model).where(model.token_hash == hash_secret(token)).with_for_update()
    ).scalar_one_or_none()
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise InvalidToken("this link is invalid or has expired")
    return row


def verify_email(uow: UnitOfWork, token: str) -> None:
    now = utcnow()
    with uow:
        session = uow.session
        row = _live_link_token(session, VerificationToken, token, now)
        user = _user(session, row.user_id, lock=True)
        if normalise_email(user.email) != normalise_email(row.email):
            raise InvalidToken("this link is invalid or has expired")
        # Every outstanding link of this user is spent: one verification is enough.
        session.execute(
            update(VerificationToken)
            .where(VerificationToken.user_id == user.id, VerificationToken.used_at.is_(None))
            .values(used_at=now)
        )
        if user.email_verified_at is None:
            user.email_verified_at = now
        uow.commit()


# --- login ----------------------------------------------------------------------------------------------------
def login(uow: UnitOfWork, email: str, password: str, client: ClientInfo) -> TokenPair | TwoFactorChallenge:
    require_builtin()
    account_key = normalise_email(email)
    now = utcnow()
    with uow:
        session = uow.session
        throttle.check(session, [("account", account_key), ("ip", client.ip or "")], now)
        user = user_by_email(session, email)
        ok = passwords.verify_password(user.password_hash if user is not None else None, password)
        if user is None or not ok:
            throttle.record_failure(session, "account", account_key, now)
            throttle.record_failure(session, "ip", client.ip, now)
            uow.commit()
            raise InvalidCredentials("the email or password is wrong")
        ensure_active(user)
        if not user.email_verified:
            raise EmailNotVerified("confirm your email address first; we sent you a link")
        if user.password_hash and passwords.needs_rehash(user.password_hash):
            user.password_hash = passwords.hash_password(password)
        promote_admin(user)
        if not user.two_factor_enabled:
            throttle.clear(session, "account", account_key)
            user.last_login_at = now
            pair = start_session(session, user, client, now)
            uow.commit()
            return pair
        challenge, code = _open_challenge(session, user, client, now)
        outcome = TwoFactorChallenge(challenge_id=challenge.id, method=challenge.method)
        outgoing = mails.two_factor_code(user.email, user.id, code, challenge.id) if code is not None else None
        uow.commit()
    if outgoing is not None:
        send_mail(uow, outgoing)
    return outcome


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
            EmailLog.status.in_(("sent", "pending")),
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
        if not _code_matches(session, user, challenge, code.strip(), now):
            challenge.attempts += 1
            throttle.record_failure(session, "account", account_key, now)
            throttle.record_failure(session, "ip", client.ip, now)
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
        pair = start_session(session, user, client, now)
        uow.commit()
        return pair


def _code_matches(session: Session, user: User, challenge: TwoFactorConfirmation, code: str, now: datetime) -> bool:
    if not code.isdigit() or len(code) != 6:
        return False
    if challenge.method == "totp":
        return _accept_totp(user, user.totp_secret, code, now)
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
            return True
    return False


def _accept_totp(user: User, secret: str | None, code: str, now: datetime) -> bool:
    """A TOTP code of the current step or one step either side, never one already accepted."""
    if not secret:
        return False
    totp = pyotp.TOTP(secret)
    step_now = int(now.timestamp()) // totp.interval
    for step in (step_now - 1, step_now, step_now + 1):
        if user.totp_last_step is not None and step <= user.totp_last_step:
            continue
        if secrets.compare_digest(totp.generate_otp(step), code):
            user.totp_last_step = step
            return True
    return False


# --- refresh and logout -----------------------------------------------------------------------------------------
def refresh(uow: UnitOfWork, refresh_token: str, client: ClientInfo) -> TokenPair:
    """Rotate: the presented token stops working and a new pair is issued in the same family. A token that was
    already rotated coming back means it leaked: the whole family is revoked."""
    require_builtin()
    now = utcnow()
    with uow:
        session = uow.session
        row = session.execute(
            select(AuthSession).where(AuthSession.refresh_token_hash == hash_secret(refresh_token)).with_for_update()
        ).scalar_one_or_none()
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            raise InvalidRefreshToken("the refresh token is invalid or expired; sign in again")
        if row.rotated_at is not None:
            session.execute(
                update(AuthSession)
                .where(AuthSession.family_id == row.family_id, AuthSession.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason="reuse_detected")
            )
            uow.commit()
            raise RefreshTokenReused("this refresh token was already used; the session is revoked")
        user = _user(session, row.user_id)
        ensure_active(user)
        row.rotated_at = now
        row.last_used_at = now
        pair = _issue_pair(session, user, row.family_id, client, now)
        uow.commit()
        return pair


def logout(uow: UnitOfWork, user_id: uuid.UUID, session_id: str | None) -> None:
    require_builtin()
    if not session_id:
        raise BadRequest("this credential has no session to end (API keys are revoked by DELETE /auth/api-keys)")
    revoke_session(uow, user_id, _parse_uuid(session_id), reason="logout")


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
            outgoing = mails.password_reset(user.email, user.id, token)
        uow.commit()
    if outgoing is not None:
        send_mail(uow, outgoing)


def reset_password(uow: UnitOfWork, token: str, new_password: str) -> None:
    """Set a new password from a mailed link; every session of the user is revoked; nobody is signed in."""
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
        session.execute(
            update(PasswordResetToken)
            .where(PasswordResetToken.user_id == user.id, PasswordResetToken.used_at.is_(None))
            .values(used_at=now)
        )
        _revoke_families(session, user.id, "password_reset")
        throttle.clear(session, "account", normalise_email(user.email))
        uow.commit()


def change_password(
    uow: UnitOfWork,
    user_id: uuid.UUID,
    session_id: str | None,
    current_password: str,
    new_password: str,
    ip: str | None,
) -> None:
    """Other sessions are revoked; the one making the change stays signed in."""
    require_builtin()
    now = utcnow()
    with uow:
        session = uow.session
        user = _user(session, user_id, lock=True)
        ensure_active(user)
        account_key = normalise_email(user.email)
        throttle.check(session, [("account", account_key), ("ip", ip or "")], now)
        if user.password_hash is None:
            raise PasswordNotSet("this account has no password yet; use password reset to set one")
        if not passwords.verify_password(user.password_hash, current_password):
            throttle.record_failure(session, "account", account_key, now)
            throttle.record_failure(session, "ip", ip, now)
            uow.commit()
            raise InvalidCredentials("the current password is wrong")
        passwords.check_password_policy(new_password, email=user.email)
        user.password_hash = passwords.hash_password(new_password)
        user.password_changed_at = now
        keep = None
        if session_id:
            try:
                keep = uuid.UUID(session_id)
            except ValueError:
                keep = None
        _revoke_families(session, user.id, "password_changed", except_family=keep)
        uow.commit()


# --- profile ----------------------------------------------------------------------------------------------------
def get_profile(uow: UnitOfWork, user_id: uuid.UUID) -> User:
    with uow:
        user = _user(uow.session, user_id)
        uow.session.expunge(user)
        return user


def update_profile(uow: UnitOfWork, user_id: uuid.UUID, changes: dict[str, object]) -> User:
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
        session.expunge(user)
        return user


# --- two-factor settings ----------------------------------------------------------------------------------------
def enable_email_two_factor(uow: UnitOfWork, user_id: uuid.UUID) -> None:
    require_builtin()
    with uow:
        user = _user(uow.session, user_id, lock=True)
        if user.two_factor_enabled:
            raise TwoFactorStateConflict("two-factor sign-in is already on; turn it off first to switch method")
        user.two_factor_enabled = True
        user.two_factor_method = "email"
        uow.commit()


def setup_totp(uow: UnitOfWork, user_id: uuid.UUID) -> TotpSetup:
    require_builtin()
    with uow:
        user = _user(uow.session, user_id, lock=True)
        if user.two_factor_enabled:
            raise TwoFactorStateConflict("two-factor sign-in is already on; turn it off first to switch method")
        secret = pyotp.random_base32()
        user.totp_pending_secret = secret
        uow.commit()
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=TOTP_ISSUER)
        return TotpSetup(secret=secret, otpauth_uri=uri)


def enable_totp(uow: UnitOfWork, user_id: uuid.UUID, code: str) -> None:
    require_builtin()
    now = utcnow()
    with uow:
        user = _user(uow.session, user_id, lock=True)
        if user.two_factor_enabled:
            raise TwoFactorStateConflict("two-factor sign-in is already on")
        if not user.totp_pending_secret:
            raise TwoFactorStateConflict("call POST /auth/two-factor/totp/setup first")
        if not _accept_totp(user, user.totp_pending_secret, code.strip(), now):
            raise InvalidTwoFactorCode("the code is wrong")
        user.totp_secret = user.totp_pending_secret
        user.totp_pending_secret = None
        user.two_factor_enabled = True
        user.two_factor_method = "totp"
        uow.commit()


def disable_two_factor(uow: UnitOfWork, user_id: uuid.UUID, password: str, ip: str | None) -> None:
    now = utcnow()
    with uow:
        session = uow.session
        user = _user(session, user_id, lock=True)
        account_key = normalise_email(user.email)
        throttle.check(session, [("account", account_key), ("ip", ip or "")], now)
        if user.password_hash is None:
            raise PasswordNotSet("this account has no password; set one with password reset first")
        if not passwords.verify_password(user.password_hash, password):
            throttle.record_failure(session, "account", account_key, now)
            throttle.record_failure(session, "ip", ip, now)
            uow.commit()
            raise InvalidCredentials("the password is wrong")
        user.two_factor_enabled = False
        user.two_factor_method = None
        user.totp_secret = None
        user.totp_pending_secret = None
        user.totp_last_step = None
        uow.commit()


# --- sessions ---------------------------------------------------------------------------------------------------
def list_sessions(
    uow: UnitOfWork, user_id: uuid.UUID, current_session: str | None, cursor: str | None, limit: int
) -> Page[SessionView]:
    """The live sessions (one per family: its newest, unrotated token), newest first."""
    now = utcnow()
    with uow:
        query = (
            select(AuthSession)
            .where(
                AuthSession.user_id == user_id,
                AuthSession.rotated_at.is_(None),
                AuthSession.revoked_at.is_(None),
                AuthSession.expires_at > now,
            )
            .order_by(AuthSession.id.desc())
            .limit(limit + 1)
        )
        if cursor:
            query = query.where(AuthSession.id < _cursor(cursor))
        rows = list(uow.session.execute(query).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
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
            for row in rows
        ]
        return Page(items=items, next_cursor=str(rows[-1].id) if more and rows else None)


def _cursor(cursor: str) -> uuid.UUID:
    try:
        return uuid.UUID(cursor)
    except ValueError:
        raise BadRequest("the cursor is not valid") from None


def revoke_session(uow: UnitOfWork, user_id: uuid.UUID, family_id: uuid.UUID, *, reason: str = "revoked") -> None:
    with uow:
        session = uow.session
        exists = session.execute(
            select(AuthSession.id).where(AuthSession.family_id == family_id, AuthSession.user_id == user_id).limit(1)
        ).first()
        if exists is None:
            raise NotFound("no such session")
        session.execute(
            update(AuthSession)
            .where(AuthSession.family_id == family_id, AuthSession.revoked_at.is_(None))
            .values(revoked_at=utcnow(), revoked_reason=reason)
        )
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
    )


def create_api_key(uow: UnitOfWork, user_id: uuid.UUID, name: str, expires_in_days: int | None) -> NewApiKey:
    """`tg_<prefix>_<secret>`: the prefix identifies the key in lists, the whole key is hashed for lookup."""
    now = utcnow()
    with uow:
        session = uow.session
        user = _user(session, user_id, lock=True)
        ensure_active(user)
        live = session.execute(
            select(func.count()).select_from(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        ).scalar_one()
        if live >= MAX_API_KEYS:
            raise Conflict(f"at most {MAX_API_KEYS} active API keys; revoke one first")
        prefix = secrets.token_hex(6)
        key = f"{API_KEY_PREFIX}_{prefix}_{new_token(32)}"
        row = ApiKey(
            user_id=user_id,
            name=name,
            prefix=f"{API_KEY_PREFIX}_{prefix}",
            key_hash=hash_secret(key),
            expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
            created_at=now,
        )
        session.add(row)
        uow.commit()
        return NewApiKey(key=key, view=_key_view(row))


def list_api_keys(uow: UnitOfWork, user_id: uuid.UUID, cursor: str | None, limit: int) -> Page[ApiKeyView]:
    with uow:
        query = select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.id.desc()).limit(limit + 1)
        if cursor:
            query = query.where(ApiKey.id < _cursor(cursor))
        rows = list(uow.session.execute(query).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(items=[_key_view(r) for r in rows], next_cursor=str(rows[-1].id) if more and rows else None)


def revoke_api_key(uow: UnitOfWork, user_id: uuid.UUID, key_id: uuid.UUID) -> None:
    with uow:
        row = uow.session.execute(
            select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            raise NotFound("no such API key")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        uow.commit()

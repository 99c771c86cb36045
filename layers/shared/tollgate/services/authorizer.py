"""Who is calling: the decision behind the Lambda authorizer.

- `Authorization: Bearer <access token>` (built-in mode): the JWT is verified without the database, then
  one query checks that the user is still active and the session family is not revoked, and reads the
  current role and tier (a demotion or suspension applies at once, not at token expiry).
- `Authorization: Bearer <Clerk session JWT>` (AUTH_MODE=clerk): verified against the JWKS; `sub` maps to
  `users.clerk_id`, and a user seen for the first time is created (with its sign-up credits).
- `X-Api-Key: <key>`: looked up by hash; must be unrevoked, unexpired, and its user active.

The function caches verdicts per token for AUTHORIZER_CACHE_SECONDS (never past the token's expiry), so a
revoked session or key stops working within that delay, and always within one access-token lifetime.

Scopes (issue 11): a session holds every right of its user; an API key only the scopes it was created with.
The verdict carries the credential kind, the scopes and (for sessions) `auth_time`; `allows_route` checks them
against the route's declaration in tollgate.auth.scopes, so a key never reaches a credential route.

Suspended and deleted accounts are refused everywhere. A LOCKED account (its trial ended without a paid plan,
see the TrialExpiry job) is let through only to the routes its owner needs to pay and manage the account
(`LOCKED_ROUTE_PREFIXES`): paying is what unlocks it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError

from tollgate.auth import scopes as key_scopes
from tollgate.auth.access_tokens import verify_access_token
from tollgate.auth.clerk import verify_clerk_token
from tollgate.auth.secrets import hash_secret
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.models import User, UserRole, UserStatus
from tollgate.models.auth import ApiKey, AuthSession

API_KEY_TOUCH_INTERVAL = timedelta(minutes=1)
LOCKED_ROUTE_PREFIXES = ("/auth/", "/billing/")


@dataclass(frozen=True, slots=True)
class Verdict:
    """An allowed caller, and until when (epoch seconds) the verdict may be reused."""

    user_id: uuid.UUID
    role: str
    tier: str
    session_id: str
    valid_until: float
    api_key_id: str = ""
    status: str = UserStatus.ACTIVE
    scopes: frozenset[str] = frozenset({key_scopes.ALL})
    auth_time: int | None = None

    @property
    def reusable(self) -> bool:
        """Whether the authorizer may answer later requests from this verdict (its cache). A staff verdict never:
        back-office power ends the moment it is taken away, and staff traffic is small enough to re-read."""
        return self.role not in (UserRole.ADMIN, UserRole.SUPPORT)

    @property
    def credential(self) -> str:
        return "api_key" if self.api_key_id else "session"

    def context(self) -> dict[str, str]:
        # The keys tollgate.http.api.current_principal reads (all strings: simple-response context).
        return {
            "user_id": str(self.user_id),
            "role": self.role,
            "session_id": self.session_id,
            "tier": self.tier,
            "api_key_id": self.api_key_id,
            "status": self.status,
            "credential": self.credential,
            "scopes": key_scopes.encode(self.scopes),
            "auth_time": "" if self.auth_time is None else str(self.auth_time),
        }


def _usable(user: User | None) -> bool:
    return user is not None and user.deleted_at is None and user.status in (UserStatus.ACTIVE, UserStatus.LOCKED)


def allows_route(status: str, route_key: str, credential: str = "session", scopes: str = "") -> bool:
    """Whether an account in `status`, calling with this credential (`scopes` as the context carries them), may
    call `route_key` ("POST /billing/checkout")."""
    if not key_scopes.permits(credential, key_scopes.decode(scopes), route_key):
        return False
    if status != UserStatus.LOCKED:
        return True
    path = route_key.partition(" ")[2]
    return path.startswith(LOCKED_ROUTE_PREFIXES)


def authorize_bearer(uow: UnitOfWork, token: str) -> Verdict | None:
    if get_settings().auth_mode == "clerk":
        return authorize_clerk(uow, token)
    claims = verify_access_token(token)
    if claims is None:
        return None
    with uow:
        session_live = (
            exists().where(AuthSession.family_id == claims.session_id, AuthSession.revoked_at.is_(None)).correlate(None)
        )
        row = uow.session.execute(
            select(User, session_live.label("live")).where(User.id == claims.user_id)
        ).one_or_none()
        if row is None or not row.live or not _usable(row.User):
            return None
        user: User = row.User
        return Verdict(
            user.id,
            user.role,
            user.tier,
            str(claims.session_id),
            float(claims.expires_at),
            status=user.status,
            auth_time=claims.auth_time,
        )


def authorize_api_key(uow: UnitOfWork, key: str, now: datetime | None = None) -> Verdict | None:
    if not key.startswith("tg_") or len(key) > 200:
        return None
    now = now or utcnow()
    with uow:
        row = uow.session.execute(
            select(ApiKey, User).join(User, User.id == ApiKey.user_id).where(ApiKey.key_hash == hash_secret(key))
        ).one_or_none()
        if row is None:
            return None
        api_key: ApiKey = row.ApiKey
        user: User = row.User
        if api_key.revoked_at is not None or (api_key.expires_at is not None and api_key.expires_at <= now):
            return None
        if not _usable(user):
            return None
        if api_key.last_used_at is None or api_key.last_used_at < now - API_KEY_TOUCH_INTERVAL:
            uow.session.execute(update(ApiKey).where(ApiKey.id == api_key.id).values(last_used_at=now))
            uow.commit()
        valid_until = api_key.expires_at.timestamp() if api_key.expires_at else float("inf")
        return Verdict(
            user.id,
            user.role,
            user.tier,
            "",
            valid_until,
            api_key_id=str(api_key.id),
            status=user.status,
            scopes=frozenset(api_key.scopes or ()),
        )


def authorize_clerk(uow: UnitOfWork, token: str) -> Verdict | None:
    claims = verify_clerk_token(token)
    if claims is None:
        return None
    with uow:
        session = uow.session
        user = session.execute(select(User).where(User.clerk_id == claims.subject)).scalar_one_or_none()
        if user is None:
            user = _first_sight(uow, claims.subject, claims.email)
        if not _usable(user):
            return None
        return Verdict(
            user.id, user.role, user.tier, claims.session_id or "", float(claims.expires_at), status=user.status
        )


def _first_sight(uow: UnitOfWork, clerk_id: str, email: str | None) -> User:
    """Create the user a Clerk token names for the first time (Clerk webhooks fill in the rest later)."""
    # Imported here: only a first sight needs account creation (and its password hashing module).
    from tollgate.services.identity import create_user

    session = uow.session
    now = utcnow()
    address = email
    if address is not None:
        taken = session.execute(select(User.id).where(func.lower(User.email) == address.lower())).first()
        if taken is not None:
            address = None  # a built-in account owns it; never merge on an unverified claim
    placeholder = f"{clerk_id}@users.clerk.invalid"
    try:
        with session.begin_nested():
            # Never ADMIN from ADMIN_EMAILS here: a token's email claim does not say Clerk verified it. The
            # Clerk webhook promotes the user once it reports the primary email verified.
            user = create_user(
                session,
                email=address or placeholder,
                email_verified_at=now if address else None,
                clerk_id=clerk_id,
                role=UserRole.USER,
            )
        uow.commit()
        return user
    except IntegrityError:
        # Another container created it a moment ago.
        session.rollback()
        return session.execute(select(User).where(User.clerk_id == clerk_id)).scalar_one()

"""Access tokens: short-lived JWTs (HS256) that the authorizer verifies without a database round trip.

Claims: iss, aud, sub (user id), sid (session family), role, iat, nbf, exp (15 minutes by default), a
random jti, and `auth_time` (OIDC's name: when the session last proved the password and second factor; absent
for sessions that never did, e.g. OAuth sign-ins) which the step-up rule reads. Verification pins the
algorithm (no `none`, no RS/HS swap) and requires every claim but `auth_time`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import jwt

from tollgate.auth.secrets import new_token
from tollgate.config import Settings, get_settings
from tollgate.errors import ConfigurationError

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["iss", "aud", "sub", "sid", "role", "iat", "exp", "nbf"]
MIN_KEY_BYTES = 32
LEEWAY_SECONDS = 5


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    role: str
    expires_at: int
    auth_time: int | None = None


def signing_key(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    if settings.jwt_signing_key is None:
        raise ConfigurationError(
            "JWT_SIGNING_KEY is not set (in AWS it comes from the signing secret; locally the CLI creates one)"
        )
    key = settings.jwt_signing_key.get_secret_value()
    if len(key.encode()) < MIN_KEY_BYTES:
        raise ConfigurationError(f"JWT_SIGNING_KEY must be at least {MIN_KEY_BYTES} bytes")
    return key


def issue_access_token(
    user_id: uuid.UUID, session_id: uuid.UUID, role: str, now: datetime, auth_time: datetime | None = None
) -> tuple[str, int]:
    """A signed token and its lifetime in seconds."""
    settings = get_settings()
    issued = int(now.timestamp())
    ttl = settings.access_token_ttl_seconds
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(user_id),
        "sid": str(session_id),
        "role": role,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "jti": new_token(12),
    }
    if auth_time is not None:
        claims["auth_time"] = int(auth_time.timestamp())
    token = jwt.encode(claims, signing_key(settings), algorithm=ALGORITHM, headers={"typ": "at+jwt"})
    return token, ttl


def verify_access_token(token: str) -> AccessClaims | None:
    """The claims of a valid token, or None for anything else (bad signature, algorithm, claim or time)."""
    settings = get_settings()
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != ALGORITHM:
            return None
        claims = jwt.decode(
            token,
            signing_key(settings),
            algorithms=[ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": REQUIRED_CLAIMS, "verify_signature": True},
        )
        return AccessClaims(
            user_id=uuid.UUID(str(claims["sub"])),
            session_id=uuid.UUID(str(claims["sid"])),
            role=str(claims["role"]),
            expires_at=int(claims["exp"]),
            auth_time=int(claims["auth_time"]) if claims.get("auth_time") is not None else None,
        )
    except (jwt.PyJWTError, ValueError, TypeError):
        return None

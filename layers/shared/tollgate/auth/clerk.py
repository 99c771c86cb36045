"""Clerk session tokens (AUTH_MODE=clerk): RS256 JWTs verified against the instance's JWKS."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import jwt

from tollgate.config import get_settings
from tollgate.errors import ConfigurationError

ALGORITHMS = ["RS256"]
LEEWAY_SECONDS = 5
JWKS_CACHE_SECONDS = 600


@dataclass(frozen=True, slots=True)
class ClerkClaims:
    subject: str
    session_id: str | None
    email: str | None
    expires_at: int


@lru_cache(maxsize=4)
def _jwks_client(url: str) -> jwt.PyJWKClient:
    # Keys are cached per container; an unknown `kid` makes the client fetch the set again (key rotation).
    return jwt.PyJWKClient(url, cache_jwk_set=True, lifespan=JWKS_CACHE_SECONDS, timeout=5)


def verify_clerk_token(token: str) -> ClerkClaims | None:
    settings = get_settings()
    if not settings.clerk_jwks_url:
        raise ConfigurationError("AUTH_MODE=clerk needs CLERK_JWKS_URL")
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") not in ALGORITHMS:
            return None
        key = _jwks_client(settings.clerk_jwks_url).get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=ALGORITHMS,
            issuer=settings.clerk_issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["sub", "exp", "iat"], "verify_aud": False},
        )
    except jwt.PyJWKClientConnectionError:
        raise
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    parties = settings.clerk_authorized_parties
    if parties and claims.get("azp") not in parties:
        return None
    email = claims.get("email")
    return ClerkClaims(
        subject=str(claims["sub"]),
        session_id=str(claims["sid"]) if claims.get("sid") else None,
        email=str(email).strip() if isinstance(email, str) and "@" in email else None,
        expires_at=int(claims["exp"]),
    )

"""One-time secrets from the OS CSPRNG, and how they are stored (only ever as a SHA-256 hash)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def new_token(nbytes: int = 32) -> str:
    """A URL-safe random token (256 bits by default)."""
    return secrets.token_urlsafe(nbytes)


def new_code(digits: int = 6) -> str:
    """A numeric code for mail (uniform over 10**digits)."""
    return str(secrets.randbelow(10**digits)).zfill(digits)


def hash_secret(value: str, *, context: str = "") -> str:
    """The stored form of a secret. High-entropy tokens need no salt; short codes are bound to `context`
    (their challenge) so one code's hash says nothing about another challenge's."""
    return hashlib.sha256(f"{context}\x00{value}".encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

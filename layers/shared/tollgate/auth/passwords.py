"""Password hashing (argon2id) and the password policy.

Parameters never drop below OWASP's floor (m=19456 KiB, t=2, p=1); a stored hash made with weaker
parameters is replaced at the next successful sign-in. Unknown accounts are checked against a dummy hash
so a failed sign-in costs the same whether or not the email is registered.
"""

from __future__ import annotations

import secrets
import unicodedata
from functools import lru_cache
from importlib import resources

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from tollgate.config import get_settings
from tollgate.errors import WeakPassword

MIN_LENGTH = 8
MAX_LENGTH = 128
MIN_MEMORY_KIB = 19456
MIN_TIME_COST = 2


@lru_cache(maxsize=1)
def hasher() -> PasswordHasher:
    settings = get_settings()
    return PasswordHasher(
        time_cost=max(settings.password_hash_time_cost, MIN_TIME_COST),
        memory_cost=max(settings.password_hash_memory_kib, MIN_MEMORY_KIB),
        parallelism=1,
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Made once per process with the live parameters, from a random secret nobody knows.
    return hasher().hash(secrets.token_urlsafe(24))


def _normalise(password: str) -> str:
    # The same password typed on different keyboards (composed or decomposed accents) must match.
    return unicodedata.normalize("NFKC", password)


def hash_password(password: str) -> str:
    return hasher().hash(_normalise(password))


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when `password` matches. With no stored hash, a dummy hash is checked so the cost is the same."""
    target = stored_hash or _dummy_hash()
    try:
        ok = hasher().verify(target, _normalise(password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return ok and stored_hash is not None


def needs_rehash(stored_hash: str) -> bool:
    try:
        return hasher().check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    text = resources.files("tollgate").joinpath("data/common_passwords.txt").read_text(encoding="utf-8")
    return frozenset(line.strip().casefold() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def check_password_policy(password: str, *, email: str | None = None) -> None:
    """8-128 characters (any unicode), not one of the most common passwords, not the email itself."""
    length = len(_normalise(password))
    if length < MIN_LENGTH or length > MAX_LENGTH:
        raise WeakPassword(
            f"the password must be {MIN_LENGTH} to {MAX_LENGTH} characters long",
            details={"reason": "length", "min": MIN_LENGTH, "max": MAX_LENGTH},
        )
    folded = _normalise(password).casefold()
    if folded in common_passwords():
        raise WeakPassword("this password is too common; choose another", details={"reason": "common"})
    if email and folded in {email.casefold(), email.split("@")[0].casefold()}:
        raise WeakPassword("the password must not be your email", details={"reason": "email"})

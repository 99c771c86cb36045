"""Secrets that must be read back (TOTP secrets, PKCE verifiers) are stored sealed: envelope encryption with
AES-256-GCM from `cryptography`.

Each value gets its own random data key; the data key is wrapped by a key-encryption key (KEK) derived with
HKDF-SHA256 from a master secret, and the KEK's id is stored with the value:

    v1.<kek id>.<wrapped data key>.<nonce + ciphertext + tag>      (base64url parts)

Where the KEKs come from: `SECRET_ENCRYPTION_KEYS` (comma-separated master secrets, the first one seals, every
one unseals: list the old one after the new one while rotating), or, when unset, `JWT_SIGNING_KEY`, which the
signing secret (`tollgate/<stage>/signing`) generates. The id is a fingerprint of the KEK, so no id needs to be
configured. The context (e.g. `users.totp_secret:<user id>`) is bound as associated data: a sealed value copied
to another row or column does not open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tollgate.config import get_settings
from tollgate.errors import ConfigurationError

VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12
MIN_MASTER_BYTES = 32
HKDF_INFO = b"tollgate secrets at rest v1"


@dataclass(frozen=True, slots=True)
class Kek:
    id: str
    key: bytes


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def derive_kek(master: str) -> Kek:
    if len(master.encode()) < MIN_MASTER_BYTES:
        raise ConfigurationError(f"a secret encryption key must be at least {MIN_MASTER_BYTES} bytes")
    key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=HKDF_INFO).derive(master.encode())
    # The id names the key without revealing it (a MAC of a constant under the key).
    kid = hmac.new(key, b"tollgate key id", hashlib.sha256).hexdigest()[:12]
    return Kek(kid, key)


@lru_cache(maxsize=8)
def _keks(masters: tuple[str, ...]) -> tuple[Kek, ...]:
    return tuple(derive_kek(master) for master in masters)


def keys() -> tuple[Kek, ...]:
    """The KEKs in force, the sealing one first."""
    settings = get_settings()
    listed = settings.secret_encryption_keys.get_secret_value() if settings.secret_encryption_keys else ""
    masters = tuple(part.strip() for part in listed.split(",") if part.strip())
    if not masters and settings.jwt_signing_key is not None:
        masters = (settings.jwt_signing_key.get_secret_value(),)
    if not masters:
        raise ConfigurationError("no key to seal secrets with: set SECRET_ENCRYPTION_KEYS or JWT_SIGNING_KEY")
    return _keks(masters)


def is_sealed(value: str) -> bool:
    return value.startswith(VERSION + ".")


def seal(plaintext: str, context: str) -> str:
    kek = keys()[0]
    data_key = AESGCM.generate_key(bit_length=256)
    aad = f"{VERSION}|{kek.id}|{context}".encode()
    wrap_nonce, nonce = os.urandom(NONCE_BYTES), os.urandom(NONCE_BYTES)
    wrapped = wrap_nonce + AESGCM(kek.key).encrypt(wrap_nonce, data_key, aad)
    sealed = nonce + AESGCM(data_key).encrypt(nonce, plaintext.encode(), aad)
    return ".".join((VERSION, kek.id, _b64(wrapped), _b64(sealed)))


def unseal(value: str, context: str) -> str:
    """The plaintext of a sealed value; ConfigurationError when no key in force opens it."""
    try:
        version, kid, wrapped_text, sealed_text = value.split(".")
    except ValueError:
        raise ConfigurationError("a stored secret is not in the sealed format") from None
    kek = next((k for k in keys() if k.id == kid), None)
    if version != VERSION or kek is None:
        raise ConfigurationError(f"no key in force opens this stored secret (key id {kid!r})")
    aad = f"{version}|{kid}|{context}".encode()
    try:
        wrapped, sealed = _unb64(wrapped_text), _unb64(sealed_text)
        data_key = AESGCM(kek.key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
        return AESGCM(data_key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad).decode()
    except (InvalidTag, ValueError) as exc:
        raise ConfigurationError("a stored secret does not open with its key (tampered or misplaced)") from exc


def reseal_needed(value: str) -> bool:
    """Sealed under a KEK other than the current one (re-seal it on the next write)."""
    return not is_sealed(value) or value.split(".")[1] != keys()[0].id

"""Local stand-ins for secrets AWS keeps in Secrets Manager (the JWT key and the webhook signing secrets).

JWT_SIGNING_KEY: in AWS the signing secret (`tollgate/<stage>/signing`) generates it. Locally, when neither the
environment nor `.env` sets it, one is generated once from the OS CSPRNG and kept in `$TOLLGATE_DATA_DIR/jwt.key`
(mode 0600), so tokens survive a restart of `tollgate serve` and no key is ever written in code.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from tollgate.config import get_settings

KEY_FILE = "jwt.key"


def ensure_jwt_signing_key(data_dir: Path | None = None) -> Path | None:
    """Make sure JWT_SIGNING_KEY is set for this process; returns the key file when one is used."""
    settings = get_settings()
    if settings.jwt_signing_key is not None:
        return None
    folder = data_dir or settings.data_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / KEY_FILE
    os.environ["JWT_SIGNING_KEY"] = _read_or_create(path, lambda: secrets.token_urlsafe(48))
    get_settings.cache_clear()
    return path


# Webhook signing secrets: in AWS they come from the providers (put in the payments secret). Locally, unset, one of
# each is generated once and kept beside jwt.key, so `tollgate serve` and `tollgate webhooks send` (two
# processes) sign and verify with the same secret and the README's purchase flow needs no `.env`.
WEBHOOK_SECRET_FILES = {
    "STRIPE_WEBHOOK_SECRET": "stripe_webhook.secret",
    "LEMONSQUEEZY_WEBHOOK_SECRET": "lemonsqueezy_webhook.secret",
    "CLERK_WEBHOOK_SECRET": "clerk_webhook.secret",
    "ASAAS_WEBHOOK_TOKEN": "asaas_webhook.token",  # 43 characters: within Asaas's 32-255
}


def _new_webhook_secret(name: str) -> str:
    if name == "STRIPE_WEBHOOK_SECRET":
        return "whsec_" + secrets.token_urlsafe(32)
    if name == "CLERK_WEBHOOK_SECRET":
        return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()  # Svix: base64 after the prefix
    return secrets.token_urlsafe(32)


def _read_or_create(path: Path, make: Callable[[], str]) -> str:
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(make())
    return path.read_text().strip()


def ensure_webhook_secrets(data_dir: Path | None = None) -> dict[str, Path]:
    """Set each provider webhook secret the environment and `.env` leave unset; returns the files used."""
    settings = get_settings()
    configured = {
        "STRIPE_WEBHOOK_SECRET": settings.stripe_webhook_secret,
        "LEMONSQUEEZY_WEBHOOK_SECRET": settings.lemonsqueezy_webhook_secret,
        "CLERK_WEBHOOK_SECRET": settings.clerk_webhook_secret,
        "ASAAS_WEBHOOK_TOKEN": settings.asaas_webhook_token,
    }
    folder = data_dir or settings.data_dir
    used: dict[str, Path] = {}
    for name, file_name in WEBHOOK_SECRET_FILES.items():
        value = configured[name]
        if value is not None and value.get_secret_value():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / file_name
        os.environ[name] = _read_or_create(path, lambda name=name: _new_webhook_secret(name))  # type: ignore[misc]
        used[name] = path
    if used:
        get_settings.cache_clear()
    return used

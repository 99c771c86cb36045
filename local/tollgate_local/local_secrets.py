"""Local stand-ins for secrets AWS keeps in Secrets Manager.

JWT_SIGNING_KEY: in AWS the app secret generates it. Locally, when neither the environment nor `.env` sets
it, one is generated once from the OS CSPRNG and kept in `$TOLLGATE_DATA_DIR/jwt.key` (mode 0600), so tokens
survive a restart of `tollgate serve` and no key is ever written in code.
"""

from __future__ import annotations

import os
import secrets
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
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
    os.environ["JWT_SIGNING_KEY"] = path.read_text().strip()
    get_settings.cache_clear()
    return path

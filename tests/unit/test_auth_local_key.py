"""The local JWT signing key: generated once from the CSPRNG, kept private, reused; never when one is set."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tollgate.config import get_settings
from tollgate_local.local_secrets import ensure_jwt_signing_key


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("JWT_SIGNING_KEY", raising=False)
    monkeypatch.setenv("TOLLGATE_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    get_settings.cache_clear()


def test_a_key_is_generated_once_and_reused(clean_env: Path) -> None:
    # Given no JWT_SIGNING_KEY anywhere
    # When the CLI starts twice
    path = ensure_jwt_signing_key()
    first = os.environ["JWT_SIGNING_KEY"]
    os.environ.pop("JWT_SIGNING_KEY")
    get_settings.cache_clear()
    again = ensure_jwt_signing_key()
    # Then one private file holds a long random key, and both starts use it
    assert path == again == clean_env / "jwt.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.environ["JWT_SIGNING_KEY"] == first and len(first) >= 48
    assert get_settings().jwt_signing_key is not None


def test_a_configured_key_wins(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a key in the environment
    monkeypatch.setenv("JWT_SIGNING_KEY", "k" * 40)
    get_settings.cache_clear()
    # When the CLI starts, Then no file is made and the key is untouched
    assert ensure_jwt_signing_key() is None
    assert not (clean_env / "jwt.key").exists()
    assert os.environ["JWT_SIGNING_KEY"] == "k" * 40

"""Settings: the names of API.md, read from the environment and .env, validated once."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from tollgate.config import Settings

CONFIG_NAMES = [
    "DATABASE_URL", "TOLLGATE_DATA_DIR", "TOLLGATE_PORT", "TOLLGATE_MAIL_DIR", "APP_URL", "ADMIN_EMAILS",
    "SIGNUP_CREDITS", "AUTH_MODE", "PAYMENTS_LIVE_MODE", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET",
    "LEMONSQUEEZY_API_KEY", "LEMONSQUEEZY_WEBHOOK_SECRET", "LEMONSQUEEZY_STORE_ID", "CLERK_WEBHOOK_SECRET",
    "CLERK_JWKS_URL", "TOLLGATE_SECRETS_ARN",
]  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in CONFIG_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    return monkeypatch


def test_defaults_run_everything_locally(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None)
    assert settings.database_url is None
    assert settings.data_dir == Path(".tollgate")
    assert settings.port == 3000
    assert settings.mail_dir == Path(".tollgate/mail")
    assert settings.auth_mode == "builtin"
    assert settings.payments_live_mode is False
    assert settings.max_body_bytes == 1024 * 1024


def test_reads_the_api_md_names_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", "postgresql://u:p@db:5432/x")
    clean_env.setenv("TOLLGATE_DATA_DIR", "/var/tollgate")
    clean_env.setenv("TOLLGATE_PORT", "8123")
    clean_env.setenv("ADMIN_EMAILS", " Boss@Example.com, ops@example.com ,")
    clean_env.setenv("SIGNUP_CREDITS", "2.5")
    clean_env.setenv("PAYMENTS_LIVE_MODE", "true")
    clean_env.setenv("STRIPE_SECRET_KEY", "sk_test_123")
    settings = Settings(_env_file=None)
    assert settings.database_url == "postgresql://u:p@db:5432/x"
    assert settings.data_dir == Path("/var/tollgate")
    assert settings.mail_dir == Path("/var/tollgate/mail")
    assert settings.port == 8123
    assert settings.admin_emails == frozenset({"boss@example.com", "ops@example.com"})
    assert settings.signup_credits == Decimal("2.5")
    assert settings.payments_live_mode is True
    assert settings.stripe_secret_key is not None
    assert settings.stripe_secret_key.get_secret_value() == "sk_test_123"
    assert "sk_test_123" not in repr(settings)  # secrets never print


def test_mail_dir_can_be_set_on_its_own(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TOLLGATE_MAIL_DIR", "/tmp/mailbox")
    assert Settings(_env_file=None).mail_dir == Path("/tmp/mailbox")


def test_dotenv_is_read_and_the_environment_wins(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("APP_URL=https://from-dotenv.example\nTOLLGATE_PORT=4000\n")
    clean_env.setenv("TOLLGATE_PORT", "5000")
    settings = Settings(_env_file=".env")
    assert settings.app_url == "https://from-dotenv.example"
    assert settings.port == 5000


@pytest.mark.parametrize(
    ("name", "value"),
    [("TOLLGATE_PORT", "0"), ("AUTH_MODE", "ldap"), ("SIGNUP_CREDITS", "-1"), ("DB_AUTH_MODE", "magic")],
)
def test_invalid_values_are_refused_at_start(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_env_example_documents_every_setting() -> None:
    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names = [field_name.upper()]
        if isinstance(alias, str):
            names = [alias]
        elif alias is not None:
            names = [str(choice) for choice in alias.choices]  # type: ignore[union-attr]
        assert any(name in example for name in names), f"{names[0]} is missing from .env.example"

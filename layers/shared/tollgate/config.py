"""One settings model for the whole backend, read once per process.

Locally values come from the environment and `.env`; in AWS the provider credentials may also come from a
Secrets Manager secret (a JSON object keyed by the same names) named by `TOLLGATE_SECRETS_ARN`.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DbAuthMode = Literal["url", "iam", "secret"]

# How long a fetched Secrets Manager value is reused before it is fetched again (powertools parameters cache).
SECRET_MAX_AGE_SECONDS = 300


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
    )

    # --- database -----------------------------------------------------------------------------------------
    database_url: str | None = Field(default=None, description="PostgreSQL URL; unset locally: embedded DB")
    db_auth_mode: DbAuthMode = Field(
        default="url",
        description="url: DATABASE_URL; iam: RDS Proxy with an IAM token; secret: Secrets Manager credentials",
    )
    db_host: str | None = None
    db_port: int = 5432
    db_name: str = "tollgate"
    db_user: str = "tollgate"
    db_secret_arn: str | None = Field(default=None, description="secret with username/password (secret mode)")
    db_ssl: bool = Field(default=True, description="TLS to the database in iam/secret modes (RDS Proxy)")
    db_pool_size: int = Field(default=5, ge=1, le=100)
    db_pool_pre_ping: bool = False
    db_statement_timeout_ms: int = Field(default=15_000, ge=0)
    aws_region: str = Field(default="us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))

    # --- local mode -----------------------------------------------------------------------------------------
    data_dir: Path = Field(default=Path(".tollgate"), validation_alias="TOLLGATE_DATA_DIR")
    port: int = Field(default=3000, ge=1, le=65535, validation_alias="TOLLGATE_PORT")
    mail_dir_override: Path | None = Field(default=None, validation_alias="TOLLGATE_MAIL_DIR")

    # --- product ----------------------------------------------------------------------------------------------
    app_url: str = "http://localhost:3000"
    admin_emails: Annotated[frozenset[str], NoDecode] = frozenset()
    signup_credits: Decimal = Field(default=Decimal("10"), ge=0)
    auth_mode: Literal["builtin", "clerk"] = "builtin"
    payments_live_mode: bool = False
    max_body_bytes: int = Field(default=1024 * 1024, ge=1, validation_alias="TOLLGATE_MAX_BODY_BYTES")

    # --- provider credentials ------------------------------------------------------------------------------
    secrets_arn: str | None = Field(default=None, validation_alias="TOLLGATE_SECRETS_ARN")
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    lemonsqueezy_api_key: SecretStr | None = None
    lemonsqueezy_webhook_secret: SecretStr | None = None
    lemonsqueezy_store_id: str | None = None
    clerk_webhook_secret: SecretStr | None = None
    clerk_jwks_url: str | None = None

    @field_validator("admin_emails", mode="before")
    @classmethod
    def _split_emails(cls, value: Any) -> Any:
        if isinstance(value, str):
            return frozenset(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @property
    def mail_dir(self) -> Path:
        return self.mail_dir_override or self.data_dir / "mail"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit values win, then the environment, then .env, then the Secrets Manager secret.
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            SecretsManagerSource(settings_cls, env_settings),
            file_secret_settings,
        )


class SecretsManagerSource(PydanticBaseSettingsSource):
    """Values from a JSON secret in Secrets Manager, fetched through powertools parameters (cached)."""

    def __init__(self, settings_cls: type[BaseSettings], env_settings: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._env_settings = env_settings

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ returns every value at once

    def __call__(self) -> dict[str, Any]:
        arn = self._env_settings().get("secrets_arn")
        if not arn:
            return {}
        # Imported here: only deployments that name a secret pay for boto3.
        from aws_lambda_powertools.utilities import parameters

        secret = parameters.get_secret(str(arn), transform="json", max_age=SECRET_MAX_AGE_SECONDS)
        if not isinstance(secret, dict):
            raise ValueError("the TOLLGATE_SECRETS_ARN secret must hold a JSON object")
        return {str(key).lower(): value for key, value in secret.items()}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

"""One settings model for the whole backend, read once per process.

Locally values come from the environment and `.env`; in AWS the credentials may also come from Secrets Manager
secrets (JSON objects keyed by the same names): those listed in `TOLLGATE_SECRETS_ARNS` (comma-separated, so each
function reads only the secrets it needs) and the one named by `TOLLGATE_SECRETS_ARN`, merged.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
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
    # The least-privileged role the functions connect as (tollgate/db/roles.py). The migration step creates and
    # grants it, and gives it the statement timeout; unset (locally), the functions connect as the schema owner.
    db_app_user: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]*$")
    # The migration function's own connection: the schema owner it logs in as (unset: DB_USER), and the secret
    # whose password the application role gets (the one RDS Proxy logs in with; unset: no password is set).
    migration_db_user: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]*$")
    migration_app_secret_arn: str | None = None
    aws_region: str = Field(default="us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))

    # --- local mode -----------------------------------------------------------------------------------------
    data_dir: Path = Field(default=Path(".tollgate"), validation_alias="TOLLGATE_DATA_DIR")
    port: int = Field(default=3000, ge=1, le=65535, validation_alias="TOLLGATE_PORT")
    mail_dir_override: Path | None = Field(default=None, validation_alias="TOLLGATE_MAIL_DIR")

    # --- product ----------------------------------------------------------------------------------------------
    # Mailed links start with it. In AWS the template always sets it (the front end); unset, it is the local
    # gateway's dev-only pages (http://127.0.0.1:$TOLLGATE_PORT/_local), so links in local mail open something.
    app_url: str = ""
    admin_emails: Annotated[frozenset[str], NoDecode] = frozenset()
    signup_credits: Decimal = Field(default=Decimal("10"), ge=0)
    auth_mode: Literal["builtin", "clerk"] = "builtin"
    payments_live_mode: bool = False
    max_body_bytes: int = Field(default=1024 * 1024, ge=1, validation_alias="TOLLGATE_MAX_BODY_BYTES")

    # --- provider credentials ------------------------------------------------------------------------------
    secrets_arn: str | None = Field(default=None, validation_alias="TOLLGATE_SECRETS_ARN")
    secrets_arns: Annotated[tuple[str, ...], NoDecode] = Field(default=(), validation_alias="TOLLGATE_SECRETS_ARNS")
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    lemonsqueezy_api_key: SecretStr | None = None
    lemonsqueezy_webhook_secret: SecretStr | None = None
    lemonsqueezy_store_id: str | None = None
    clerk_webhook_secret: SecretStr | None = None
    clerk_jwks_url: str | None = None
    # Asaas (Brazil): the API key (`access_token` header), and the token Asaas sends in `asaas-access-token` on
    # every webhook (32-255 characters, as Asaas accepts it; a comma list during a rotation).
    asaas_api_key: SecretStr | None = None
    asaas_webhook_token: SecretStr | None = None
    # Payments (issue 5): provider API base URLs (tests and `tollgate serve` may point them at local stand-ins).
    stripe_api_base: str = "https://api.stripe.com"
    lemonsqueezy_api_base: str = "https://api.lemonsqueezy.com"
    asaas_api_base: str = "https://api-sandbox.asaas.com/v3"  # production: https://api.asaas.com/v3
    provider_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # Stripe signatures older than this (or this far in the future) are refused; Svix uses 5 minutes itself.
    webhook_tolerance_seconds: int = Field(default=300, ge=30, le=3600)

    # --- scheduled jobs --------------------------------------------------------------------------------------
    # LogRetention: log groups under these prefixes that keep logs forever get this retention.
    log_retention_days: int = Field(default=30, ge=1, le=3653)
    log_group_prefixes: Annotated[tuple[str, ...], NoDecode] = ()
    # A job stops starting batches when less than this is left of its invocation, and resumes next run.
    job_safety_ms: int = Field(default=10_000, ge=0)
    # Balance notices: mail when the last `burn_rate_days` of usage would empty the balance within
    # `low_balance_notice_days`, and when credits expire within `expiry_notice_days` unused.
    low_balance_notice_days: int = Field(default=3, ge=1, le=90)
    burn_rate_days: int = Field(default=7, ge=1, le=90)
    expiry_notice_days: int = Field(default=7, ge=1, le=90)
    # ProviderReconciliation: how far back it looks at the providers' APIs (should cover several runs), how old
    # a Lemon Squeezy change must be before the job applies it (its webhook retries end after ~2.5 minutes), and
    # the page size of the list calls.
    provider_reconciliation_hours: int = Field(default=72, ge=1, le=720)
    provider_reconciliation_settle_minutes: int = Field(default=10, ge=0, le=1440)
    provider_reconciliation_page_size: int = Field(default=100, ge=1, le=100)
    # Its refund sweep (issue 13): order refunds PENDING longer than this are looked up at Stripe, this many a step.
    refund_sweep_after_minutes: int = Field(default=15, ge=1, le=1440)
    refund_sweep_batch_size: int = Field(default=25, ge=1, le=100)
    # Retention (days kept; see tollgate/jobs/retention.py for what each covers).
    email_log_retention_days: int = Field(default=90, ge=1)
    token_retention_days: int = Field(default=7, ge=1)
    session_retention_days: int = Field(default=30, ge=1)
    webhook_payload_retention_days: int = Field(default=30, ge=1)
    ai_message_retention_days: int = Field(default=365, ge=1)
    ai_usage_retention_days: int = Field(default=400, ge=1)
    job_cursor_retention_days: int = Field(default=90, ge=1)

    # --- domain events out (issue 17: the outbox, its relay, EventBridge, outbound webhooks) ----------------
    # local: the relay writes every event to the console and delivers to the registered webhook endpoints,
    # which may be http://localhost. aws: PutEvents to OUTBOX_EVENT_BUS_NAME; webhook URLs must be public https.
    outbox_delivery: Literal["local", "aws"] = "local"
    outbox_event_bus_name: str | None = None
    # Emit credits.low / credits.depleted from charges and holds (one indexed look-up per spend).
    outbox_balance_events: bool = True
    # The relay: deliveries claimed per batch, the claim's lease, attempts before DEAD, backoff 2^n from base.
    outbox_batch_size: int = Field(default=100, ge=1, le=1000)
    outbox_lease_seconds: int = Field(default=120, ge=10, le=900)
    outbox_max_attempts: int = Field(default=8, ge=1, le=50)
    outbox_backoff_base_seconds: float = Field(default=30.0, ge=0, le=3600)
    outbox_backoff_max_seconds: float = Field(default=3600.0, ge=1, le=86_400)
    webhook_delivery_timeout_seconds: float = Field(default=5.0, gt=0, le=30)
    # Webhook requests one relay pass sends side by side (a slow endpoint then costs a pass one timeout).
    outbox_webhook_concurrency: int = Field(default=8, ge=1, le=32)
    # Retention: delivered and dead deliveries, and events left with no pending delivery, go after this.
    outbox_retention_days: int = Field(default=30, ge=1)
    # One relay invocation keeps polling this long (1 s apart) before it returns: with the 1-minute schedule,
    # an event waits about a second, not up to a minute (the template sets 58). 0: one pass per invocation
    # (locally, where the schedules share one timer thread).
    outbox_relay_run_seconds: float = Field(default=0.0, ge=0, le=840)

    # HS256 key of access tokens. In AWS the signing secret generates it; locally the CLI persists one in
    # $TOLLGATE_DATA_DIR/jwt.key. Never a default in code: unset, sign-in refuses to run.
    jwt_signing_key: SecretStr | None = None
    # The key of pagination cursors where functions that list but never sign a token must not hold the signing
    # key (in AWS: the cursor secret). Unset: derived from JWT_SIGNING_KEY (see tollgate/pagination.py).
    cursor_signing_key: SecretStr | None = None
    jwt_issuer: str = "tollgate"
    jwt_audience: str = "tollgate-api"
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=3600)
    refresh_token_ttl_days: int = Field(default=30, ge=1, le=365)
    # How long the authorizer reuses a verdict for the same token in one container (revocation delay bound).
    authorizer_cache_seconds: int = Field(default=30, ge=0, le=300)
    # Issue 14: how long one container reuses a system_config value it read (a change elsewhere shows after it).
    system_config_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    password_hash_memory_kib: int = Field(default=19456, ge=19456)
    password_hash_time_cost: int = Field(default=2, ge=2)
    login_max_failures_per_account: int = Field(default=5, ge=1)
    login_max_failures_per_ip: int = Field(default=30, ge=1)
    login_failure_window_seconds: int = Field(default=900, ge=1)
    login_lockout_seconds: int = Field(default=900, ge=1)
    # register / forgot-password requests per source IP inside LOGIN_FAILURE_WINDOW_SECONDS (mail bombing)
    mail_requests_per_ip: int = Field(default=20, ge=1)
    # Issue 13: wrong discount codes (validate or checkout) per user and per source IP inside the window, then
    # 429 for the lockout (a valid code too, or guessing would go on through it).
    discount_max_failures_per_user: int = Field(default=10, ge=1)
    discount_max_failures_per_ip: int = Field(default=30, ge=1)
    discount_failure_window_seconds: int = Field(default=900, ge=1)
    discount_lockout_seconds: int = Field(default=900, ge=1)
    two_factor_max_attempts: int = Field(default=5, ge=1, le=20)
    # Issue 11: credential changes (API keys, 2FA, password, other sessions) need a password (+2FA) sign-in or
    # POST /auth/reauthenticate this recently; security notices carry a lock link valid this many hours.
    step_up_window_seconds: int = Field(default=300, ge=30, le=3600)
    security_lock_link_hours: int = Field(default=72, ge=1, le=720)
    # Master secrets that seal TOTP secrets and PKCE verifiers (comma-separated; the first seals, all unseal).
    # In AWS the auth secret generates it; unset: derived from JWT_SIGNING_KEY. See tollgate/auth/sealing.py.
    secret_encryption_keys: SecretStr | None = None
    # register and forgot-password take at least this long, mail sent or not (timing must not reveal accounts)
    enumeration_floor_ms: int = Field(default=300, ge=0, le=5000)
    mail_backend: Literal["local", "ses"] = "local"
    mail_from: str = "Tollgate <no-reply@localhost>"
    # Anti-spam: the same type of message to the same address at most once per window.
    mail_min_interval_seconds: int = Field(default=60, ge=0)
    ses_configuration_set: str | None = None
    # Issue 14: SES delivery notifications arrive through SNS; only this topic's messages are taken (unset: any
    # topic, locally), and a signed message older than this is refused as stale (a replay inside it is a no-op).
    ses_events_topic_arn: str | None = None
    mail_event_max_age_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)
    clerk_issuer: str | None = None
    clerk_authorized_parties: Annotated[frozenset[str], NoDecode] = frozenset()
    # OAuth: the front-end page the provider sends the browser back to; `{provider}` is replaced.
    oauth_redirect_url: str | None = None
    google_client_id: str | None = None
    google_client_secret: SecretStr | None = None
    google_authorize_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    google_token_url: str = "https://oauth2.googleapis.com/token"  # noqa: S105
    google_userinfo_url: str = "https://openidconnect.googleapis.com/v1/userinfo"
    github_client_id: str | None = None
    github_client_secret: SecretStr | None = None
    github_authorize_url: str = "https://github.com/login/oauth/authorize"
    github_token_url: str = "https://github.com/login/oauth/access_token"  # noqa: S105
    github_api_url: str = "https://api.github.com"

    # --- knowledge base (issue 7: embeddings, search, ask) -------------------------------------------------
    # local: all-MiniLM-L6-v2 (int8 ONNX) on this machine, dev only; bedrock: Titan Text Embeddings v2;
    # openai: text-embedding-3-small. Vectors of different models are never compared (`tollgate rag reembed`).
    embedding_provider: Literal["local", "bedrock", "openai"] = "local"
    embedding_model_id: str | None = Field(default=None, description="unset: the provider's default model")
    embedding_dimensions: int | None = Field(
        default=None,
        description="Titan v2: 256, 512 or 1024; OpenAI 3-small: up to 1536; unset: the model's own",
    )
    embedding_batch_size: int = Field(default=32, ge=1, le=256)
    # extractive: answer with the best chunks themselves (no LLM); bedrock: Converse API; openai: chat completions.
    llm_provider: Literal["extractive", "bedrock", "openai"] = "extractive"
    llm_model_id: str | None = Field(default=None, description="unset: the provider's default model")
    llm_max_output_tokens: int = Field(default=512, ge=16, le=4096)
    llm_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    bedrock_region: str | None = Field(default=None, description="unset: AWS_REGION")
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    # vector, chosen by measurement: hit@3 on the paraphrase set 0.90 (vector) vs 0.79 (hybrid), see bench/rag.py.
    rag_search_mode: Literal["vector", "hybrid"] = Field(
        default="vector",
        description="default search mode (chosen by bench/rag.py's hit@3 on the paraphrase set)",
    )
    rag_search_threshold: float = Field(default=0.25, ge=-1, le=1)
    rag_hnsw_ef_search: int = Field(default=64, ge=1, le=1000)
    rag_ask_context_chunks: int = Field(default=4, ge=1, le=20)
    rag_ask_history_messages: int = Field(default=6, ge=0, le=50)
    # Asks per window per tier (`TIER=N,...`); a tier not listed gets `rag_ask_rate_limit_default`.
    rag_ask_rate_limits: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: {"FREE": 10, "PRO": 60, "BUSINESS": 300}
    )
    rag_ask_rate_limit_default: int = Field(default=10, ge=0)
    rag_ask_rate_window_seconds: int = Field(default=60, ge=1, le=86_400)

    # --- files (issue 15: uploads to S3 or a local folder, quotas, soft delete) -------------------------------
    # s3: the bucket STORAGE_BUCKET (the template's FilesBucket); local: $TOLLGATE_DATA_DIR/files, with signed
    # upload and download URLs served by the local gateway.
    storage_backend: Literal["local", "s3"] = "local"
    storage_bucket: str | None = None
    files_dir_override: Path | None = Field(default=None, validation_alias="TOLLGATE_FILES_DIR")
    # Where the local gateway serves the local backend's signed URLs (unset: this machine's gateway).
    local_files_url: str = ""
    # A soft-deleted file can be restored this long; then Retention deletes its object and row.
    file_restore_days: int = Field(default=30, ge=1, le=3650)
    # The presigned POST and GET URLs live this long; an upload not completed this long after it started stops
    # counting against the quota, can no longer be completed, and is swept by Retention.
    file_upload_expiry_seconds: int = Field(default=600, ge=60, le=3600)
    file_download_expiry_seconds: int = Field(default=300, ge=30, le=3600)
    file_upload_complete_minutes: int = Field(default=60, ge=1, le=1440)
    # Media types a file may declare (exact, lower case; parameters such as `; charset=` are not part of it).
    file_content_types: Annotated[frozenset[str], NoDecode] = frozenset(
        {
            "image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml",
            "application/pdf", "text/plain", "text/markdown", "text/csv", "application/json",
            "audio/mpeg", "audio/wav", "audio/ogg", "audio/webm", "audio/mp4", "video/mp4", "video/webm",
        }
    )  # fmt: skip
    # Bytes per tier (`TIER=N,...`): READY + PENDING files together, and one file; unlisted tiers get the default.
    file_quota_bytes: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: {"FREE": 100 * 2**20, "PRO": 10 * 2**30, "BUSINESS": 100 * 2**30}
    )
    file_quota_bytes_default: int = Field(default=100 * 2**20, ge=0)
    file_max_bytes: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: {"FREE": 10 * 2**20, "PRO": 100 * 2**20, "BUSINESS": 2**30}
    )
    file_max_bytes_default: int = Field(default=10 * 2**20, ge=1, le=5 * 2**30)  # a presigned POST takes 5 GB
    # GDPR export (issue 14): an answer larger than this (counted as the Lambda response carries it, escapes and
    # all) is stored under exports/ in the files store and answered with a presigned GET of this life instead;
    # Lambda answers at most 6 MB.
    gdpr_export_inline_max_bytes: int = Field(default=4 * 2**20, ge=1, le=5 * 2**20)
    gdpr_export_url_seconds: int = Field(default=900, ge=60, le=3600)

    @field_validator("file_quota_bytes", "file_max_bytes", mode="before")
    @classmethod
    def _split_tier_bytes(cls, value: Any) -> Any:
        if isinstance(value, str):
            sizes: dict[str, int] = {}
            for part in value.split(","):
                if part.strip():
                    tier, _, count = part.partition("=")
                    sizes[tier.strip().upper()] = int(count)
            return sizes
        return value

    @field_validator("file_content_types", mode="before")
    @classmethod
    def _split_content_types(cls, value: Any) -> Any:
        if isinstance(value, str):
            return frozenset(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @field_validator("rag_ask_rate_limits", mode="before")
    @classmethod
    def _split_rate_limits(cls, value: Any) -> Any:
        if isinstance(value, str):
            limits: dict[str, int] = {}
            for part in value.split(","):
                if part.strip():
                    tier, _, count = part.partition("=")
                    limits[tier.strip().upper()] = int(count)
            return limits
        return value

    @field_validator("admin_emails", mode="before")
    @classmethod
    def _split_emails(cls, value: Any) -> Any:
        if isinstance(value, str):
            return frozenset(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @field_validator("secrets_arns", mode="before")
    @classmethod
    def _split_arns(cls, value: Any) -> Any:
        if isinstance(value, str):
            return split_arns(value)
        return value

    @field_validator("log_group_prefixes", mode="before")
    @classmethod
    def _split_prefixes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("asaas_webhook_token")
    @classmethod
    def _asaas_token_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return value
        for part in value.get_secret_value().split(","):
            if not 32 <= len(part.strip()) <= 255:
                raise ValueError("ASAAS_WEBHOOK_TOKEN must be 32 to 255 characters (each, in a comma list)")
        return value

    @field_validator("clerk_authorized_parties", mode="before")
    @classmethod
    def _split_parties(cls, value: Any) -> Any:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _local_app_url(self) -> Settings:
        if not self.app_url:
            self.app_url = f"http://127.0.0.1:{self.port}/_local"
        return self

    @property
    def mail_dir(self) -> Path:
        return self.mail_dir_override or self.data_dir / "mail"

    @property
    def files_dir(self) -> Path:
        return self.files_dir_override or self.data_dir / "files"

    @property
    def files_url(self) -> str:
        return (self.local_files_url or f"http://127.0.0.1:{self.port}/_local/files").rstrip("/")

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
        from_env = self._env_settings()  # keyed by alias where a field has one
        arns = secret_arns(from_env)
        if not arns:
            return {}
        # Imported here: only deployments that name a secret pay for boto3.
        from aws_lambda_powertools.utilities import parameters

        merged: dict[str, Any] = {}
        for arn in arns:
            secret = parameters.get_secret(arn, transform="json", max_age=SECRET_MAX_AGE_SECONDS)
            if not isinstance(secret, dict):
                raise ValueError(f"the secret {arn} must hold a JSON object")
            for key, value in secret.items():
                name = str(key).lower()
                # Two secrets disagreeing on a value is a deployment mistake: which one is meant cannot be known.
                if name in merged and merged[name] != value:
                    raise ValueError(f"{name.upper()} has different values in two secrets of this function")
                merged[name] = value
        return merged


def split_arns(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def secret_arns(from_env: dict[str, Any]) -> tuple[str, ...]:
    """The secrets to read: TOLLGATE_SECRETS_ARN (one, kept for existing deployments), then TOLLGATE_SECRETS_ARNS."""
    single = from_env.get("TOLLGATE_SECRETS_ARN") or from_env.get("secrets_arn") or ""
    listed = from_env.get("TOLLGATE_SECRETS_ARNS") or from_env.get("secrets_arns") or ""
    found = [*split_arns(str(single)), *(split_arns(listed) if isinstance(listed, str) else map(str, listed))]
    return tuple(dict.fromkeys(found))  # each secret once, in order


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

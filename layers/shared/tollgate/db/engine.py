"""The SQLAlchemy engine, built once per process (one Lambda container keeps one connection).

Three ways to reach the database, chosen by `DB_AUTH_MODE`:
- `url`: `DATABASE_URL` as given (locally: the embedded PostgreSQL the CLI starts and names);
- `iam`: RDS Proxy over TLS with a 15-minute IAM auth token minted for every new connection;
- `secret`: RDS Proxy over TLS with the username/password of a Secrets Manager secret.
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from tollgate.config import SECRET_MAX_AGE_SECONDS, Settings, get_settings
from tollgate.errors import ConfigurationError

# A pooled connection older than this is replaced: it outlives neither an IAM token nor the proxy's idle timeout.
POOL_RECYCLE_SECONDS = 600


def pg8000_url(raw_url: str) -> URL:
    """Turn any libpq-style PostgreSQL URL into a pg8000 one.

    libpq names a Unix socket folder with `?host=/dir`; pg8000 wants the socket file itself as `unix_sock`.
    """
    parts = urlsplit(raw_url)
    if parts.scheme not in {"postgres", "postgresql", "postgresql+pg8000"}:
        raise ConfigurationError(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")
    query = dict(parse_qsl(parts.query))
    socket_dir = query.pop("host", None)
    url = make_url(raw_url).set(drivername="postgresql+pg8000", query={})
    if socket_dir:
        port = url.port or 5432
        url = url.set(host=None, port=None, query={"unix_sock": f"{socket_dir}/.s.PGSQL.{port}"})
    if query.get("sslmode") in {"require", "verify-ca", "verify-full"}:
        url = url.set(query={**dict(url.query), "ssl": "true"})
    return url


def _tls_context() -> ssl.SSLContext:
    # The Lambda runtime's CA bundle includes the Amazon RDS roots used by RDS Proxy.
    return ssl.create_default_context()


def _fetch_db_secret(settings: Settings) -> dict[str, Any]:
    if not settings.db_secret_arn:
        raise ConfigurationError("DB_AUTH_MODE=secret needs DB_SECRET_ARN")
    from aws_lambda_powertools.utilities import parameters

    secret = parameters.get_secret(settings.db_secret_arn, transform="json", max_age=SECRET_MAX_AGE_SECONDS)
    if not isinstance(secret, dict):
        raise ConfigurationError("the database secret must be a JSON object")
    return secret


def _iam_token(settings: Settings) -> str:
    import boto3  # only IAM-authenticated deployments pay for boto3

    client = boto3.client("rds", region_name=settings.aws_region)
    token: str = client.generate_db_auth_token(
        DBHostname=settings.db_host or "", Port=settings.db_port, DBUsername=settings.db_user
    )
    return token


def build_engine(settings: Settings) -> Engine:
    connect_args: dict[str, Any] = {
        "application_name": "tollgate",
        # Bounded statements: a stuck query must not hold a ledger lock past the Lambda timeout.
        "startup_params": {"statement_timeout": str(settings.db_statement_timeout_ms)},
    }
    pool_args: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": 0 if settings.db_auth_mode != "url" else settings.db_pool_size,
        "pool_recycle": POOL_RECYCLE_SECONDS,
        "pool_pre_ping": settings.db_pool_pre_ping,
    }
    if settings.db_auth_mode == "url":
        if not settings.database_url:
            raise ConfigurationError("DATABASE_URL is not set (locally `tollgate serve` starts a database)")
        url = pg8000_url(settings.database_url)
        query = dict(url.query)
        if query.pop("ssl", None):
            connect_args["ssl_context"] = _tls_context()
            url = url.set(query=query)
        return create_engine(url, connect_args=connect_args, **pool_args)

    if not settings.db_host:
        raise ConfigurationError(f"DB_AUTH_MODE={settings.db_auth_mode} needs DB_HOST (the RDS Proxy endpoint)")
    if settings.db_ssl:
        connect_args["ssl_context"] = _tls_context()
    url = URL.create(
        "postgresql+pg8000",
        username=settings.db_user,
        host=settings.db_host,
        port=settings.db_port,
        database=settings.db_name,
    )
    engine = create_engine(url, connect_args=connect_args, **pool_args)

    @event.listens_for(engine, "do_connect")
    def _credentials(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        # Fresh credentials for every new physical connection: IAM tokens live 15 minutes, secrets rotate.
        if settings.db_auth_mode == "iam":
            cparams["password"] = _iam_token(settings)
        else:
            secret = _fetch_db_secret(settings)
            cparams["user"] = secret.get("username", settings.db_user)
            cparams["password"] = secret["password"]

    return engine


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    return build_engine(get_settings())


@lru_cache(maxsize=1)
def get_session_factory() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False, autoflush=False)


def reset_engine() -> None:
    """Forget the cached engine (tests and the CLI switch databases; a Lambda never calls this)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    get_session_factory.cache_clear()

"""The SQLAlchemy engine, built once per process (one Lambda container keeps one connection).

What every connection may rely on, with or without a transaction-mode pooler (RDS Proxy, PgBouncer) in between:
- no startup parameters and no session state: the statement timeout is a default of the application's role,
  set by the migration step (`apply_statement_timeout`), so it holds on whichever backend serves a transaction;
- transaction control costs one round trip each (`tollgate.db.dialect`);
- a connection that saw any failure it cannot vouch for - an exception that is not the server's own answer, a
  driver-level interface error, a lost or shutting-down server - is discarded, never handed to the next caller:
  its protocol state is unknown (replies may still be unread), and reusing it reads another statement's rows;
- `is_unavailable(exc)` is the one classification of "the database cannot serve right now" (503 at the edge).

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

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from tollgate.config import SECRET_MAX_AGE_SECONDS, Settings, get_settings
from tollgate.db.dialect import DRIVER_NAME
from tollgate.errors import ConfigurationError

# A pooled connection older than this is replaced: it outlives neither an IAM token nor the proxy's idle timeout.
POOL_RECYCLE_SECONDS = 600

# SQLSTATEs of a server that is gone or not accepting connections: class 08 (connection exceptions, also what
# PgBouncer answers for its own failures), 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now,
# 53300 too many connections.
LOST_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
LOST_SQLSTATE_CLASSES = ("08",)
# The server answered, but could not serve in time (statement timeout, lock timeout): the connection is sound.
BUSY_SQLSTATES = frozenset({"57014", "55P03"})
# What pg8000 (InterfaceError) and poolers say when the server cannot be reached, whatever SQLSTATE they send.
LOST_MESSAGES = (
    "network error",
    "communication error",
    "can't create a connection",
    "connection is closed",
    "server login has been failing",
    "cannot connect to server",
)


def _driver_error(exc: BaseException) -> BaseException:
    return exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE a driver error carries (pg8000 keeps the server's error fields as a dict), if any."""
    orig = _driver_error(exc)
    fields = orig.args[0] if orig.args else None
    if isinstance(fields, dict):
        code = fields.get("C")
        return str(code) if code else None
    return None


def _is_lost(orig: BaseException) -> bool:
    """The connection (or the attempt to make one) failed because the server is gone or refuses connections."""
    if isinstance(orig, OSError):  # includes ConnectionError, socket timeouts and TLS failures
        return True
    code = sqlstate(orig)
    if code is not None:  # the server's (or pooler's) own answer: its code says it all
        return code in LOST_SQLSTATES or code.startswith(LOST_SQLSTATE_CLASSES)
    text = str(orig).lower()
    return any(message in text for message in LOST_MESSAGES)


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot serve right now (lost, restarting, refusing, or too slow) - a
    transient condition a client should retry - rather than a bug. The one classification the HTTP edge and the
    webhook receivers use."""
    if isinstance(exc, PoolTimeout):  # no pooled connection came free in time
        return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # a wrapped driver error counts as itself
        seen.add(id(current))
        orig = _driver_error(current)
        if _is_lost(orig) or sqlstate(orig) in BUSY_SQLSTATES:
            return True
        current = current.__cause__
    return False


def _discard_untrusted(context: ExceptionContext) -> None:
    """`handle_error`: decide whether the connection that raised may be reused.

    SQLAlchemy discards a connection only when the dialect recognises a disconnect; pg8000's dialect knows two
    messages. Everything else would go back to the pool, including a connection whose driver raised half-way
    through the protocol (e.g. a value it cannot encode after Parse/Describe/Sync were sent): the next statement
    on it reads the previous one's replies. So: a lost server invalidates the whole pool (every connection of it
    is stale after a restart); any exception that is not a server error answered in full invalidates this one
    connection. Server errors (constraint violations, timeouts) leave the protocol in sync: those are kept.
    Commits, rollbacks and pre-pings pass through here too.
    """
    if context.is_disconnect:
        return
    orig = context.original_exception
    if _is_lost(orig):
        context.is_disconnect = True
        return
    dbapi_error: Any = getattr(context.dialect.loaded_dbapi, "Error", Exception)
    interface_error: Any = getattr(context.dialect.loaded_dbapi, "InterfaceError", ())
    if not isinstance(orig, dbapi_error) or isinstance(orig, interface_error):
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = False  # only this connection's state is unknown


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
    # No startup parameters beyond the name: PgBouncer refuses unknown ones, RDS Proxy pins on some.
    connect_args: dict[str, Any] = {"application_name": "tollgate"}
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
        return _guarded(create_engine(url.set(drivername=DRIVER_NAME), connect_args=connect_args, **pool_args))

    if not settings.db_host:
        raise ConfigurationError(f"DB_AUTH_MODE={settings.db_auth_mode} needs DB_HOST (the RDS Proxy endpoint)")
    if settings.db_ssl:
        connect_args["ssl_context"] = _tls_context()
    url = URL.create(
        DRIVER_NAME,
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

    return _guarded(engine)


def _guarded(engine: Engine) -> Engine:
    event.listen(engine, "handle_error", _discard_untrusted)
    return engine


def apply_statement_timeout(connection: Connection, timeout_ms: int, role: str | None = None) -> None:
    """Make `timeout_ms` the statement timeout of every later session of `role` (default: the current role) in
    this database.

    Bounded statements: a stuck query must not hold a ledger lock past the Lambda timeout. The bound is a role
    default, which the server applies as each backend starts, so it holds on whichever backend a pooler hands
    out: no startup parameter (PgBouncer refuses them, RDS Proxy rejects command-line options) and no `SET` per
    transaction (a round trip each, and RDS Proxy pins a client connection that runs `SET`). The migration step
    applies it to the application role when there is one (never to the owner: migrations may run longer);
    connections opened afterwards carry it."""
    milliseconds = int(timeout_ms)
    template = "ALTER ROLE %I IN DATABASE %I SET statement_timeout = %s"
    if role:
        statement = connection.scalar(
            text("SELECT format(CAST(:template AS text), CAST(:role AS text), current_database(), CAST(:ms AS int))"),
            {"template": template, "role": role, "ms": milliseconds},
        )
        connection.exec_driver_sql(str(statement))
    else:
        connection.exec_driver_sql(
            f"DO $$ BEGIN EXECUTE format('{template}', current_user, current_database(), {milliseconds}); END $$"
        )


def build_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    return build_engine(get_settings())


@lru_cache(maxsize=1)
def get_session_factory() -> sessionmaker[Session]:
    return build_session_factory(get_engine())


def reset_engine() -> None:
    """Forget the cached engine (tests and the CLI switch databases; a Lambda never calls this)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    get_session_factory.cache_clear()

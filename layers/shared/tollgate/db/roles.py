"""The application role: what the functions connect as, kept least-privileged by every migration run.

The schema owner (the migration step) creates and grants it; the role itself may read and write rows, never
change the schema, owns nothing, and may only add to the ledger and the audit trail: `credit_transactions` and
`audit_logs` get SELECT and INSERT, no UPDATE, DELETE or TRUNCATE at the privilege level (each table's trigger
stays as the second wall). It may read `alembic_version` (health reports it) but not move it.

Identifiers and literals are quoted by the server (`format('%I', ...)`, `%L`), never spliced in Python.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text

from tollgate.config import SECRET_MAX_AGE_SECONDS, Settings
from tollgate.errors import ConfigurationError

# Tables the role may read and append to, and tables it may only read.
APPEND_ONLY_TABLES = ("credit_transactions", "audit_logs")
READ_ONLY_TABLES = ("alembic_version",)
# RDS grants IAM database authentication through membership of this role (absent outside RDS). A member can no
# longer log in with a password, so it is granted only when the role logs in with IAM tokens end to end.
RDS_IAM_ROLE = "rds_iam"
SCRAM_ITERATIONS = 4096


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of `password`: the server stores it as is, and the password itself
    never appears in a statement (nor in a server log of statements)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def app_role_password(settings: Settings) -> str | None:
    """The application role's password from MIGRATION_APP_SECRET_ARN (the secret RDS Proxy logs in with)."""
    if not settings.migration_app_secret_arn:
        return None
    from aws_lambda_powertools.utilities import parameters  # only deployments that name a secret pay for it

    secret = parameters.get_secret(settings.migration_app_secret_arn, transform="json", max_age=SECRET_MAX_AGE_SECONDS)
    if not isinstance(secret, dict) or not secret.get("password"):
        raise ConfigurationError("the application role's secret must be a JSON object with a password")
    if secret.get("username") not in (None, settings.db_app_user):
        raise ConfigurationError("the application role's secret names another user than DB_APP_USER")
    return str(secret["password"])


def _run(connection: Connection, template: str, *args: Any) -> None:
    """Execute a statement the server builds with format() from `template` and `args` (quoted by it)."""
    # format() is variadic: each argument needs a type the server can resolve.
    placeholders = "".join(f", CAST(:a{i} AS text)" for i in range(len(args)))
    query = f"SELECT format(CAST(:template AS text){placeholders})"
    statement = connection.scalar(text(query), {"template": template, **{f"a{i}": a for i, a in enumerate(args)}})
    connection.exec_driver_sql(str(statement))


def ensure_app_role(
    connection: Connection,
    role: str,
    *,
    password: str | None = None,
    iam: bool = False,
    append_only: Sequence[str] = APPEND_ONLY_TABLES,
    read_only: Sequence[str] = READ_ONLY_TABLES,
) -> None:
    """Create `role` if missing and (re)apply its privileges on the current schema; idempotent.

    Run by the schema owner inside the migration transaction, after the revisions: it covers every table and
    function that exists now, and default privileges cover what the owner creates later."""
    if role == connection.scalar(text("SELECT current_user")):
        raise ConfigurationError(f"the application role {role!r} must not be the schema owner")
    exists = connection.scalar(text("SELECT count(*) FROM pg_roles WHERE rolname = :r"), {"r": role})
    # No SUPERUSER/CREATEDB/CREATEROLE: the defaults of CREATE ROLE, and only a superuser may change the first.
    _run(connection, "ALTER ROLE %I LOGIN" if exists else "CREATE ROLE %I LOGIN", role)
    if password is not None:
        _run(connection, "ALTER ROLE %I PASSWORD %L", role, scram_verifier(password))
    if iam and connection.scalar(text("SELECT count(*) FROM pg_roles WHERE rolname = :r"), {"r": RDS_IAM_ROLE}):
        _run(connection, "GRANT %I TO %I", RDS_IAM_ROLE, role)

    schema, database = connection.execute(text("SELECT current_schema(), current_database()")).one()
    _run(connection, "GRANT CONNECT ON DATABASE %I TO %I", database, role)
    # Usage only: the role can name objects, not create them (PostgreSQL 15+ no longer lets PUBLIC create here).
    _run(connection, "REVOKE CREATE ON SCHEMA %I FROM PUBLIC, %I", schema, role)
    _run(connection, "GRANT USAGE ON SCHEMA %I TO %I", schema, role)
    # Start from nothing each run, so a privilege granted by hand (TRUNCATE, TRIGGER, REFERENCES) does not linger.
    _run(connection, "REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I", schema, role)
    _run(connection, "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I", schema, role)
    for table in (*append_only, *read_only):
        present = text("SELECT to_regclass(format('%I.%I', CAST(:s AS text), CAST(:t AS text))) IS NOT NULL")
        if connection.scalar(present, {"s": schema, "t": table}):
            kept = "UPDATE, DELETE" if table in append_only else "INSERT, UPDATE, DELETE"
            _run(connection, f"REVOKE {kept} ON TABLE %I.%I FROM %I", schema, table, role)
    _run(connection, "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I", schema, role)
    _run(connection, "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO %I", schema, role)
    # Tables, sequences and functions the owner creates later get the same privileges the moment they exist.
    defaults = "ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT {} TO %I"
    _run(connection, defaults.format("SELECT, INSERT, UPDATE, DELETE ON TABLES"), schema, role)
    _run(connection, defaults.format("USAGE, SELECT ON SEQUENCES"), schema, role)
    _run(connection, defaults.format("EXECUTE ON FUNCTIONS"), schema, role)

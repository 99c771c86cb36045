"""Test tiers: the same suite in the configuration `template.yaml` deploys, not only in the developer's.

`TOLLGATE_TEST_TIER` picks one:
- `default` (unset): DATABASE_URL to the embedded PostgreSQL, the settings' defaults (what `make run` uses);
- `production`: every test that touches the database, with the environment the template gives the functions
  (read from template.yaml at run time: pool of 1, pre-ping, IAM auth over TLS, ...) and their traffic through
  PgBouncer in transaction mode, the local stand-in for RDS Proxy. Migrations run directly against PostgreSQL,
  as the deploy-time migration function does.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tollgate_local import TEMPLATE_PATH
from tollgate_local.template import Template

TIER_VARIABLE = "TOLLGATE_TEST_TIER"
DEFAULT_TIER = "default"
PRODUCTION_TIER = "production"
TIERS = (DEFAULT_TIER, PRODUCTION_TIER)
# The charge path: the function whose environment the tier takes (every function shares the DB_* settings).
TIER_FUNCTION = "CreditsFunction"

# Template values that name deployed resources, and what stands in for them here. None: left unset.
LOCAL_FILLS_REASONS = {
    "DB_HOST": "the RDS Proxy endpoint: the local PgBouncer",
    "DB_PORT": "PgBouncer listens on a free port (parallel runs on one machine must not collide)",
    "TOLLGATE_SECRETS_ARN": "no Secrets Manager here: the secret's values come from the environment",
    "TOLLGATE_SECRETS_ARNS": "no Secrets Manager here: the secrets' values come from the environment",
    "APP_URL": "a required parameter (the front end); unset, mailed links open the local gateway's pages",
    "TOLLGATE_CONFIGURATION": "the deploy's configuration fingerprint (the Migrations resource's answer): no deploy",
    "SES_CONFIGURATION_SET": "the stack's SES configuration set: no SES here, mail goes to the local backend",
}

# Tests that by nature cannot run through a pooler are skipped in the production tier with their reason: those
# marked `direct_database(reason)`, and these (by node id prefix).
MIGRATION_REASON = (
    "makes its own scratch database with psql and migrates it straight on PostgreSQL, as the deploy-time "
    "migration function does (never through RDS Proxy)"
)
DIRECT_DATABASE_TESTS = {
    "tests/integration/test_migrations.py": MIGRATION_REASON,
    "tests/integration/test_ledger_sql_migration.py": MIGRATION_REASON,
    "tests/integration/test_fault_injection.py::test_a_database_restart_under_traffic": "stops and starts an "
    "embedded PostgreSQL of its own under traffic (a Unix socket, no pooler in front of it)",
}


def direct_database_reason(item: Any) -> str | None:
    """Why the test `item` cannot run behind the pooler (None: it can)."""
    marker = item.get_closest_marker("direct_database")
    if marker is not None:
        return str(marker.kwargs.get("reason") or (marker.args[0] if marker.args else "marked direct_database"))
    for prefix, reason in DIRECT_DATABASE_TESTS.items():
        if item.nodeid.startswith(prefix):
            return reason
    return None


# Lambda gives every function its region; boto3 signs IAM tokens locally and needs some credentials to do so.
LAMBDA_RUNTIME_ENVIRONMENT = {
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "AKIATOLLGATETESTTIER",
    "AWS_SECRET_ACCESS_KEY": "tollgate-test-tier-not-a-secret",
}


def selected_tier() -> str:
    tier = os.environ.get(TIER_VARIABLE) or DEFAULT_TIER
    if tier not in TIERS:
        raise ValueError(f"{TIER_VARIABLE}={tier!r}: choose one of {', '.join(TIERS)}")
    return tier


def template_environment(
    template: Template, function_id: str = TIER_FUNCTION, fills: dict[str, str | None] | None = None
) -> dict[str, str | None]:
    """The function's environment as CloudFormation would set it with the template's parameter defaults.

    Literal values and `!Ref Parameter` (its default) are taken as deployed; anything naming a resource (or an
    `!If` over them) must be in `fills`, so a new variable the tier cannot give a value stops the tier instead
    of passing unseen. A fill also overrides a literal (DB_PORT).
    """
    fills = fills or {}
    parameters: dict[str, Any] = template.data.get("Parameters") or {}
    environment: dict[str, str | None] = {}
    for name, value in template.functions[function_id].environment.items():
        ref = value.get("Ref") if isinstance(value, dict) and len(value) == 1 else None
        if name in fills:
            environment[name] = fills[name]
        elif isinstance(value, bool):
            environment[name] = str(value).lower()
        elif isinstance(value, str | int | float):
            environment[name] = str(value)
        elif ref in parameters and "Default" in parameters[ref]:
            environment[name] = str(parameters[ref]["Default"])
        else:
            raise ValueError(f"{function_id}'s {name} = {value!r} has no local value: the tier needs a fill")
    return environment


def database_settings(template: Template) -> dict[str, dict[str, Any]]:
    """Every function's DB_* variables (one process serves every handler: they must agree)."""
    return {
        function_id: {k: v for k, v in function.environment.items() if k.startswith("DB_")}
        for function_id, function in template.functions.items()
    }


@dataclass
class ProductionTier:
    """The pooler in front of the embedded PostgreSQL, and the environment pointed at it."""

    bouncer: Any  # tollgate_local.pgbouncer.PgBouncer
    environment: dict[str, str | None]
    database: str  # the name the functions use (the template's DB_NAME)

    @property
    def url(self) -> str:
        """The pooler as a URL (DB_USER from the template; any password would do)."""
        user = self.environment.get("DB_USER") or "tollgate"
        return f"postgresql://{user}@{self.bouncer.host}:{self.bouncer.port}/{self.database}"


# The tier this session started (None in the default tier).
ACTIVE: ProductionTier | None = None
# What PgBouncer logged as an error or warning during the session (a sign of what RDS Proxy would refuse).
POOLER_PROBLEMS: list[str] = []


def stop_production_tier(tier: ProductionTier) -> None:
    tier.bouncer.stop()
    POOLER_PROBLEMS.extend(line for line in tier.bouncer.log().splitlines() if " ERROR " in line or " WARNING " in line)


def start_production_tier(pg_server: Any, backend_database: str) -> ProductionTier:
    """Start PgBouncer in front of `pg_server` and apply the template's environment to this process."""
    from tollgate_local.pgbouncer import Backend, PgBouncer, ensure

    template = Template(TEMPLATE_PATH)
    binary = ensure()
    info = pg_server.get_postmaster_info()
    socket_dir = str(info.socket_dir) if info.socket_dir is not None else (info.hostname or "127.0.0.1")
    # The alias is the template's DB_NAME, so the functions name the database as they do in AWS.
    database = template_environment(template, fills={k: None for k in LOCAL_FILLS_REASONS})["DB_NAME"] or "tollgate"
    folder = Path(tempfile.mkdtemp(prefix="tollgate-test-pgbouncer-"))
    folder.chmod(0o755)
    bouncer = PgBouncer(
        binary=binary,
        folder=folder,
        databases={database: Backend(socket_dir, int(info.port or 5432), backend_database, "postgres")},
        run_as=getattr(pg_server, "system_user", None),
    ).start()
    atexit.register(bouncer.stop)  # also when the session ends without its fixtures' teardown
    fills: dict[str, str | None] = {
        **{name: None for name in LOCAL_FILLS_REASONS},
        "DB_HOST": bouncer.host,
        "DB_PORT": str(bouncer.port),
    }
    environment = template_environment(template, fills=fills)
    for name, value in {**LAMBDA_RUNTIME_ENVIRONMENT, **environment}.items():
        if value is None:
            os.environ.pop(name, None)
        elif name in LAMBDA_RUNTIME_ENVIRONMENT:
            os.environ.setdefault(name, value)
        else:
            os.environ[name] = value
    # The client trusts PgBouncer's throwaway certificate the way the Lambda runtime trusts the RDS roots.
    os.environ["SSL_CERT_FILE"] = str(bouncer.cert_file)
    global ACTIVE
    ACTIVE = ProductionTier(bouncer=bouncer, environment=environment, database=database)
    return ACTIVE


def point_at(url: str) -> None:
    """In the production tier a container finds its database by DB_HOST/DB_PORT/DB_NAME, not DATABASE_URL."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(
            f"{url}: the production tier reaches a database by host and port (mark the test direct_database)"
        )
    os.environ["DB_HOST"] = parts.hostname
    os.environ["DB_PORT"] = str(parts.port or 5432)
    if parts.path.strip("/"):
        os.environ["DB_NAME"] = parts.path.strip("/")
    if parts.username:
        os.environ["DB_USER"] = parts.username

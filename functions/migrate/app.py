"""The migration function: Alembic to every head, then the application role's privileges, on every deploy.

Invoked two ways:
- by CloudFormation (`Custom::Migrations`): Create and Update upgrade, Delete does nothing (the data outlives the
  stack); the outcome is PUT to the event's ResponseURL, and FAILED fails (and rolls back) the deploy. A success
  also returns ConfigurationFingerprint, a digest of the resource's properties (every parameter value that
  reaches a function's configuration among them), which every other function's version description and
  environment carry: SAM names versions after the template's text, so this is what makes a deploy that changes
  only parameter values publish new versions, and only once the migrations have run;
- directly (`tollgate migrate --aws STACK`, any other event): upgrade and return the heads, or raise.

It connects as the schema owner (MIGRATION_DB_USER); the role the other functions use is its DB_USER.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from aws_lambda_powertools.utilities.typing import LambdaContext

from tollgate.config import Settings, get_settings
from tollgate.observability import logger

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# CloudFormation's reason field is bounded (the whole response must stay under 4 KB).
MAX_REASON_CHARS = 1000
RESPONSE_TIMEOUT_SECONDS = 30
# Short enough for a version description, long enough that two configurations never meet by chance.
FINGERPRINT_HEX_CHARS = 16


def migration_settings(settings: Settings) -> Settings:
    """The owner's connection settings, naming the functions' role (DB_USER) as the application role."""
    owner = settings.migration_db_user or settings.db_user
    app_role = settings.db_app_user or (settings.db_user if owner != settings.db_user else None)
    return settings.model_copy(update={"db_user": owner, "db_app_user": app_role, "db_pool_size": 1})


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["settings"] = settings
    return config


def upgrade() -> dict[str, Any]:
    """Upgrade to every head (idempotent: a schema at head is left as it is) and re-apply the role."""
    settings = migration_settings(get_settings())
    config = alembic_config(settings)
    command.upgrade(config, "heads")
    heads = sorted(ScriptDirectory.from_config(config).get_heads())
    logger.info("migrated", extra={"heads": heads, "app_role": settings.db_app_user})
    return {"status": "ok", "heads": heads, "app_role": settings.db_app_user}


def respond(event: dict[str, Any], status: str, reason: str, data: dict[str, Any] | None = None) -> None:
    """Answer CloudFormation at the event's pre-signed ResponseURL (an empty content type, as S3 signed it)."""
    body = {
        "Status": status,
        "Reason": reason[:MAX_REASON_CHARS],
        # One physical resource for the life of the stack: an update never looks like a replacement.
        "PhysicalResourceId": event.get("PhysicalResourceId") or f"{event['StackId']}/{event['LogicalResourceId']}",
        "StackId": event["StackId"],
        "RequestId": event["RequestId"],
        "LogicalResourceId": event["LogicalResourceId"],
        "Data": data or {},
    }
    payload = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(  # noqa: S310  (the URL is CloudFormation's own https one)
        event["ResponseURL"],
        data=payload,
        method="PUT",
        headers={"Content-Type": "", "Content-Length": str(len(payload))},
    )
    with urllib.request.urlopen(request, timeout=RESPONSE_TIMEOUT_SECONDS) as answer:  # noqa: S310
        answer.read()


def configuration_fingerprint(properties: dict[str, Any]) -> str:
    """The first hex digits of the sha256 of the properties' canonical JSON (sorted keys, no spaces): equal for
    equal properties whatever their order, different when any value changes."""
    canonical = json.dumps(properties, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:FINGERPRINT_HEX_CHARS]


def custom_resource(event: dict[str, Any]) -> dict[str, Any]:
    request_type = event.get("RequestType")
    try:
        if request_type in {"Create", "Update"}:
            result = upgrade()
            data = {
                "Heads": ",".join(result["heads"]),
                "AppRole": result["app_role"] or "",
                "ConfigurationFingerprint": configuration_fingerprint(event.get("ResourceProperties") or {}),
            }
            respond(event, "SUCCESS", f"schema at {data['Heads']}", data)
            return result
        # Delete: the schema and its data stay (the cluster keeps a snapshot policy of its own).
        respond(event, "SUCCESS", "nothing to do on delete")
        return {"status": "ok", "heads": []}
    except Exception as exc:
        logger.exception("migration failed")
        respond(event, "FAILED", f"{type(exc).__name__}: {exc}")
        return {"status": "failed", "error": type(exc).__name__}


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if isinstance(event, dict) and "RequestType" in event and "ResponseURL" in event:
        return custom_resource(event)
    return upgrade()

"""The migration function on an empty database: every head, a least-privileged application role, the
CloudFormation custom resource protocol, and /health telling the truth before and after."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tests.conftest import use_database
from tests.support import api_call, make_user
from tollgate import ledger
from tollgate.config import get_settings
from tollgate.db.engine import pg8000_url, sqlstate
from tollgate.db.roles import ensure_app_role
from tollgate.db.schema_heads import SCHEMA_HEADS
from tollgate_local import PROJECT_ROOT, TEMPLATE_PATH
from tollgate_local.runtime import LocalLambdaContext
from tollgate_local.template import Template

SCRATCH_DB = "tollgate_migrate_function"
APP_ROLE = "tollgate_app_migrate_test"
INSUFFICIENT_PRIVILEGE = "42501"

pytestmark = pytest.mark.direct_database(
    "migrates a scratch database of its own straight on PostgreSQL and connects as a second role"
)


def load_handler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("migrate_app", PROJECT_ROOT / "functions" / "migrate" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def context() -> LocalLambdaContext:
    return LocalLambdaContext(Template(TEMPLATE_PATH).functions["MigrateFunction"])


@pytest.fixture
def scratch(pg_server: Any, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty database; this process is pointed at it as the schema owner, naming APP_ROLE as DB_USER (the
    migration function's own environment: its DB_USER is the role the other functions use)."""
    pg_server.psql(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}";')
    pg_server.psql(f'CREATE DATABASE "{SCRATCH_DB}";')
    url: str = pg_server.get_uri(SCRATCH_DB)
    owner = pg8000_url(url).username or "postgres"
    monkeypatch.setenv("DB_USER", APP_ROLE)
    monkeypatch.setenv("MIGRATION_DB_USER", owner)
    use_database(url)
    yield url
    monkeypatch.delenv("DB_USER")
    monkeypatch.delenv("MIGRATION_DB_USER")
    use_database(database_url)
    pg_server.psql(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}";')
    pg_server.psql(f'DROP ROLE IF EXISTS "{APP_ROLE}";')


def engine_as(url: str, user: str) -> Engine:
    return create_engine(pg8000_url(url).set(username=user))


def refused(engine: Engine, statement: str) -> str | None:
    """The SQLSTATE `statement` fails with (None: it succeeded; rolled back either way)."""
    with engine.connect() as conn:
        try:
            conn.execute(text(statement))
        except DBAPIError as exc:
            return sqlstate(exc)
        finally:
            conn.rollback()
    return None


def test_the_handler_migrates_an_empty_database_and_the_app_role_may_only_append_to_the_ledger(
    scratch: str,
) -> None:
    handler = load_handler()
    # Given an empty database, on which /health refuses to report ok
    before = api_call("GET", "/health")
    assert before.status == 503 and before.error_code == "schema_outdated"
    assert before.json["error"]["details"] == {"expected": sorted(SCHEMA_HEADS), "found": []}

    # When the migration function is invoked directly (as `tollgate migrate --aws` does)
    result = handler.lambda_handler({"action": "upgrade"}, context())

    # Then the schema is at every head, and /health says so
    assert result == {"status": "ok", "heads": sorted(SCHEMA_HEADS), "app_role": APP_ROLE}
    after = api_call("GET", "/health")
    assert after.status == 200 and set(after.json["schema_version"].split(",")) == set(SCHEMA_HEADS)

    app = engine_as(scratch, APP_ROLE)
    try:
        # And the application role can charge: a user, a grant and a deduction, committed
        with Session(app) as session:
            user = make_user(session)
            ledger.grant(session, user.id, kind="promo", amount=Decimal(10), source_key="promo:migrate")
            charged = ledger.charge(session, user.id, operation="chat", amount=Decimal(3))
            session.commit()
        assert charged.balance == Decimal(7)
        # But it cannot change or remove ledger rows, nor empty the table: refused at the privilege level
        # (42501), before the immutability trigger is reached
        for statement in (
            "UPDATE credit_transactions SET amount = amount * 2",
            "DELETE FROM credit_transactions",
            "TRUNCATE credit_transactions",
        ):
            assert refused(app, statement) == INSUFFICIENT_PRIVILEGE, statement
        # Nor alter the schema, create tables, drop the trigger, or move the recorded revision
        for statement in (
            "ALTER TABLE credit_transactions DISABLE TRIGGER USER",
            "DROP TRIGGER credit_transactions_no_truncate ON credit_transactions",
            "ALTER TABLE users ADD COLUMN nickname text",
            "CREATE TABLE side_door (id int)",
            "UPDATE alembic_version SET version_num = version_num",
        ):
            assert refused(app, statement) == INSUFFICIENT_PRIVILEGE, statement
        with app.connect() as conn:
            # And it owns nothing, and its sessions carry the statement bound
            owned = conn.scalar(text("SELECT count(*) FROM pg_class WHERE relowner = current_user::regrole"))
            assert owned == 0
            timeout_ms = get_settings().db_statement_timeout_ms
            assert conn.scalar(text("SELECT setting::int FROM pg_settings WHERE name = 'statement_timeout'")) == (
                timeout_ms
            )
    finally:
        app.dispose()

    # When it runs again (every deploy does)
    again = handler.lambda_handler({"action": "upgrade"}, context())
    # Then nothing changes and nothing fails
    assert again == result


def test_the_role_gets_a_scram_verifier_never_the_password(scratch: str) -> None:
    # Given an empty database and an owner's connection
    owner = create_engine(pg8000_url(scratch))
    try:
        # When the role is ensured with a password
        with owner.begin() as conn:
            ensure_app_role(conn, APP_ROLE, password="correct-horse-battery")
        # Then the server stores a SCRAM-SHA-256 verifier of it, never the password itself
        with owner.connect() as conn:
            stored = conn.scalar(text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"), {"r": APP_ROLE})
        assert stored.startswith("SCRAM-SHA-256$4096:") and "correct-horse" not in stored
    finally:
        owner.dispose()


class CloudFormationStandIn:
    """The pre-signed ResponseURL CloudFormation hands a custom resource: records every PUT body."""

    def __init__(self) -> None:
        self.responses: list[dict[str, Any]] = []
        self.content_types: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                outer.responses.append(json.loads(self.rfile.read(length)))
                outer.content_types.append(self.headers.get("Content-Type"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/response?X-Amz-Signature=stand-in"

    def event(
        self, request_type: str, physical_id: str | None = None, properties: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "RequestType": request_type,
            "ResponseURL": self.url,
            "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/tollgate/abc",
            "RequestId": f"request-{request_type}",
            "LogicalResourceId": "Migrations",
            "ResourceType": "Custom::Migrations",
            "ResourceProperties": properties or {"ServiceToken": "arn", "RunId": "1"},
        }
        if physical_id:
            event["PhysicalResourceId"] = physical_id
        return event


@pytest.fixture
def cloudformation() -> Iterator[CloudFormationStandIn]:
    stand_in = CloudFormationStandIn()
    stand_in.thread.start()
    yield stand_in
    stand_in.server.shutdown()
    stand_in.server.server_close()


def test_custom_resource_create_update_delete_are_answered_at_the_response_url(
    scratch: str, cloudformation: CloudFormationStandIn
) -> None:
    handler = load_handler()
    # Given an empty database
    # When CloudFormation creates the Migrations resource
    handler.lambda_handler(cloudformation.event("Create"), context())
    # Then the answer is SUCCESS with the heads, under one physical id
    created = cloudformation.responses[-1]
    assert created["Status"] == "SUCCESS", created
    assert created["Data"]["Heads"] == ",".join(sorted(SCHEMA_HEADS)) and created["Data"]["AppRole"] == APP_ROLE
    assert created["RequestId"] == "request-Create" and created["LogicalResourceId"] == "Migrations"
    assert cloudformation.content_types[-1] == ""  # what the pre-signed URL was signed for
    physical_id = created["PhysicalResourceId"]

    # And the fingerprint of its properties, which the functions' versions carry
    fingerprint = created["Data"]["ConfigurationFingerprint"]
    assert fingerprint == handler.configuration_fingerprint({"ServiceToken": "arn", "RunId": "1"})
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0

    # When an update comes (a new deploy), Then it upgrades again and keeps the physical id (no replacement)
    handler.lambda_handler(cloudformation.event("Update", physical_id), context())
    updated = cloudformation.responses[-1]
    assert updated["Status"] == "SUCCESS" and updated["PhysicalResourceId"] == physical_id
    # And the same properties give the same fingerprint (the versions stay)
    assert updated["Data"]["ConfigurationFingerprint"] == fingerprint

    # When an update changes only a configuration value (a parameter-only deploy)
    changed = {"ServiceToken": "arn", "RunId": "1", "Configuration": {"AppUrl": "https://new.example.com"}}
    handler.lambda_handler(cloudformation.event("Update", physical_id, changed), context())
    reconfigured = cloudformation.responses[-1]
    # Then it migrates as ever and answers another fingerprint (every function publishes a new version)
    assert reconfigured["Status"] == "SUCCESS" and reconfigured["PhysicalResourceId"] == physical_id
    assert reconfigured["Data"]["ConfigurationFingerprint"] not in {"", fingerprint}

    # When the stack is deleted, Then it answers SUCCESS, with no data, and leaves the schema alone
    handler.lambda_handler(cloudformation.event("Delete", physical_id), context())
    deleted = cloudformation.responses[-1]
    assert deleted["Status"] == "SUCCESS" and deleted["PhysicalResourceId"] == physical_id
    assert deleted["Data"] == {}
    assert api_call("GET", "/health").status == 200
    assert len(cloudformation.responses) == 4


def test_the_configuration_fingerprint_follows_the_properties_and_nothing_else() -> None:
    handler = load_handler()
    # Given the properties of a deploy, as CloudFormation hands them on (strings, lists, nested maps)
    properties: dict[str, Any] = {
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:migrate:live",
        "RunId": "",
        "Configuration": {"AppUrl": "https://app.example.com", "SubnetIds": ["subnet-a", "subnet-b"], "Unicode": "é"},
    }
    fingerprint = handler.configuration_fingerprint(properties)
    # Then it is 16 hex digits, and equal properties in another order give the same one
    assert len(fingerprint) == 16 and set(fingerprint) <= set("0123456789abcdef")
    reordered = dict(reversed(list(properties.items())))
    reordered["Configuration"] = dict(reversed(list(properties["Configuration"].items())))
    assert handler.configuration_fingerprint(reordered) == fingerprint
    # And a change to any one value, however deep, gives another
    variants: list[dict[str, Any]] = [
        {**properties, "RunId": "1"},
        {**properties, "Configuration": {**properties["Configuration"], "AppUrl": "https://app.example.org"}},
        {**properties, "Configuration": {**properties["Configuration"], "SubnetIds": ["subnet-b", "subnet-a"]}},
        {**properties, "Configuration": {**properties["Configuration"], "Unicode": "e"}},
        {**properties, "Configuration": {**properties["Configuration"], "SnapStart": "On"}},
    ]
    fingerprints = {handler.configuration_fingerprint(variant) for variant in variants}
    assert fingerprint not in fingerprints and len(fingerprints) == len(variants)


def test_a_failed_migration_answers_failed_so_the_deploy_fails(
    scratch: str, cloudformation: CloudFormationStandIn
) -> None:
    handler = load_handler()
    # Given a database that cannot be reached (nothing listens on port 1)
    use_database("postgresql://postgres:x@127.0.0.1:1/tollgate")
    # When CloudFormation creates the Migrations resource
    result = handler.lambda_handler(cloudformation.event("Create"), context())
    # Then it answers FAILED with a reason (CloudFormation fails the deploy and rolls back)
    failed = cloudformation.responses[-1]
    assert failed["Status"] == "FAILED" and failed["Reason"]
    assert result["status"] == "failed"

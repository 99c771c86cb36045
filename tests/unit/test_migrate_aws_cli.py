"""`tollgate migrate --aws STACK` invokes the stack's migration function, found through CloudFormation."""

from __future__ import annotations

import io
import json
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from tollgate_local.cli import main


def stubbed_clients(monkeypatch: pytest.MonkeyPatch, function_error: str | None = None) -> list[Stubber]:
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    lambda_client = boto3.client("lambda", region_name="us-east-1")
    cfn_stub, lambda_stub = Stubber(cloudformation), Stubber(lambda_client)
    cfn_stub.add_response(
        "describe_stack_resource",
        {"StackResourceDetail": {
            "LogicalResourceId": "MigrateFunction", "PhysicalResourceId": "tollgate-MigrateFunction-abc",
            "ResourceType": "AWS::Lambda::Function", "LastUpdatedTimestamp": "2026-01-01T00:00:00Z",
            "ResourceStatus": "UPDATE_COMPLETE",
        }},
        {"StackName": "tollgate", "LogicalResourceId": "MigrateFunction"},
    )  # fmt: skip
    answer: dict[str, Any] = {"StatusCode": 200, "Payload": io.BytesIO(b'{"status": "ok", "heads": ["0004_rag"]}')}
    if function_error:
        answer["FunctionError"] = function_error
    lambda_stub.add_response(
        "invoke",
        answer,
        {"FunctionName": "tollgate-MigrateFunction-abc", "Payload": json.dumps({"action": "upgrade"}).encode()},
    )
    clients = {"cloudformation": cloudformation, "lambda": lambda_client}
    monkeypatch.setattr(boto3, "client", lambda name, **_: clients[name])
    cfn_stub.activate()
    lambda_stub.activate()
    return [cfn_stub, lambda_stub]


def test_migrate_aws_invokes_the_stacks_migration_function(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a stack whose MigrateFunction answers ok
    stubs = stubbed_clients(monkeypatch)
    # When the CLI is asked to migrate it
    code = main(["migrate", "--aws", "tollgate"])
    # Then it invoked that function with the upgrade action and printed its answer
    assert code == 0
    assert json.loads(capsys.readouterr().out)["heads"] == ["0004_rag"]
    for stub in stubs:
        stub.assert_no_pending_responses()


def test_migrate_aws_fails_when_the_function_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a migration function that raised
    stubbed_clients(monkeypatch, function_error="Unhandled")
    # When the CLI runs it, Then it exits non-zero and says which function failed
    assert main(["migrate", "--aws", "tollgate"]) == 1
    assert "tollgate-MigrateFunction-abc failed" in capsys.readouterr().err

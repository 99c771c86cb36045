"""LogRetention: log groups of the stack that keep logs forever get the configured retention (moto)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tollgate.jobs.log_retention import apply_log_retention


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        import boto3

        yield boto3.client("logs", region_name="us-east-1")


def retention(logs: Any, name: str) -> int | None:
    group = logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"][0]
    value: int | None = group.get("retentionInDays")
    return value


def test_sets_retention_only_where_none_is_set_and_only_on_the_stacks_groups(logs: Any) -> None:
    # Given the stack's groups, one without retention and one with its own, and another stack's group
    logs.create_log_group(logGroupName="/aws/lambda/tollgate-HealthFunction-abc")
    logs.create_log_group(logGroupName="/aws/lambda/tollgate-CreditsFunction-def")
    logs.put_retention_policy(logGroupName="/aws/lambda/tollgate-CreditsFunction-def", retentionInDays=7)
    logs.create_log_group(logGroupName="/tollgate/dev/http-api")
    logs.create_log_group(logGroupName="/aws/lambda/other-stack-fn")
    # When the job runs with the stack's prefixes
    report = apply_log_retention(logs, ["/aws/lambda/tollgate-", "/tollgate/dev/"], 30)
    # Then only the stack's groups without a policy got one
    assert sorted(report.updated) == ["/aws/lambda/tollgate-HealthFunction-abc", "/tollgate/dev/http-api"]
    assert report.checked == 3
    assert retention(logs, "/aws/lambda/tollgate-HealthFunction-abc") == 30
    assert retention(logs, "/aws/lambda/tollgate-CreditsFunction-def") == 7
    assert retention(logs, "/aws/lambda/other-stack-fn") is None
    # And a second run changes nothing
    assert apply_log_retention(logs, ["/aws/lambda/tollgate-", "/tollgate/dev/"], 30).updated == []


def test_pages_through_many_groups(logs: Any) -> None:
    for i in range(120):
        logs.create_log_group(logGroupName=f"/tollgate/dev/group-{i:03d}")
    report = apply_log_retention(logs, ["/tollgate/dev/"], 14)
    assert report.checked == 120 and len(report.updated) == 120

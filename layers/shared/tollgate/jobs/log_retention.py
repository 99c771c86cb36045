"""LogRetention: every CloudWatch log group of the stack that has no retention policy gets one.

Log groups the template declares have their retention already; this catches the ones AWS creates on its own
(e.g. a function's group created on first invocation after a rename, or one a deploy left behind).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LogRetentionReport:
    checked: int = 0
    updated: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"job": "LogRetention", "checked": self.checked, "updated": self.updated}


def apply_log_retention(logs_client: Any, prefixes: Iterable[str], days: int) -> LogRetentionReport:
    """Set `days` on each log group under `prefixes` that keeps its logs forever. Groups that have a policy,
    shorter or longer, are left as their owner set them."""
    report = LogRetentionReport()
    paginator = logs_client.get_paginator("describe_log_groups")
    for prefix in prefixes:
        for page in paginator.paginate(logGroupNamePrefix=prefix):
            for group in page.get("logGroups", []):
                report.checked += 1
                if group.get("retentionInDays"):
                    continue
                logs_client.put_retention_policy(logGroupName=group["logGroupName"], retentionInDays=days)
                report.updated.append(group["logGroupName"])
    return report


def run_log_retention(prefixes: Iterable[str], days: int, region: str) -> LogRetentionReport:
    import boto3  # only this job talks to CloudWatch Logs

    return apply_log_retention(boto3.client("logs", region_name=region), prefixes, days)

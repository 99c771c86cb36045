"""template.yaml pages someone: every asynchronously invoked function parks its failed runs in the failed-runs
queue, every function has error and throttle alarms, and the jobs' alarms watch the very metrics the jobs emit."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tollgate.jobs import entry
from tollgate.jobs.runner import JobReport
from tollgate_local.template import Template

TEMPLATE = Template(Path(__file__).resolve().parents[2] / "template.yaml")
QUEUE = {"Fn::GetAtt": ["JobsDeadLetterQueue", "Arn"]}
TOPIC = [{"Ref": "AlarmTopic"}]


def _alarms() -> dict[str, dict[str, Any]]:
    return {
        name: res["Properties"]
        for name, res in TEMPLATE.resources.items()
        if res.get("Type") == "AWS::CloudWatch::Alarm"
    }


def _asynchronous_functions() -> set[str]:
    """Functions Scheduler invokes, and those backing a custom resource (CloudFormation invokes them async)."""
    scheduled = {schedule.function_id for schedule in TEMPLATE.schedules.values()}
    custom = {
        str(res["Properties"]["ServiceToken"]["Ref"]).split(".")[0]
        for res in TEMPLATE.resources.values()
        if str(res.get("Type", "")).startswith("Custom::")
    }
    return scheduled | custom


def test_every_asynchronous_function_parks_failed_runs_in_the_queue() -> None:
    functions = _asynchronous_functions()
    assert len(functions) >= 11  # ten jobs and the migration function
    for function_id in functions:
        props = TEMPLATE.resources[function_id]["Properties"]
        on_failure = props["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]
        assert on_failure == {"Type": "SQS", "Destination": QUEUE}, function_id
    # And an invocation a schedule cannot make lands in the same queue
    for function_id in {schedule.function_id for schedule in TEMPLATE.schedules.values()}:
        for event in TEMPLATE.resources[function_id]["Properties"]["Events"].values():
            assert event["Properties"]["DeadLetterConfig"] == {"Arn": QUEUE}, function_id
    # And a message in that queue pages
    depth = _alarms()["FailedRunsAlarm"]
    assert depth["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["JobsDeadLetterQueue", "QueueName"]}}]


def test_every_function_has_error_and_throttle_alarms_and_reserved_concurrency() -> None:
    watched: dict[str, set[str]] = {}
    for alarm in _alarms().values():
        assert alarm["AlarmActions"] == TOPIC  # every alarm reaches the one topic
        if alarm.get("Namespace") == "AWS/Lambda":
            (dimension,) = alarm["Dimensions"]
            watched.setdefault(dimension["Value"]["Ref"], set()).add(alarm["MetricName"])
    for function_id in TEMPLATE.functions:
        assert watched.get(function_id) == {"Errors", "Throttles"}, function_id
        assert "ReservedConcurrentExecutions" in TEMPLATE.resources[function_id]["Properties"], function_id


@pytest.mark.parametrize(
    ("alarm_name", "job", "count"),
    [
        ("LedgerMismatchesAlarm", "LedgerReconciliation", "mismatches"),
        ("ProviderUnresolvedAlarm", "ProviderReconciliation", "unresolved"),
    ],
)
def test_job_alarms_watch_what_the_job_emits(
    alarm_name: str, job: str, count: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a run of the job that counted one `count`
    report = JobReport(job=job, period="p", now=datetime(2026, 1, 1, tzinfo=UTC), complete=True, stats={count: 1})
    monkeypatch.setattr(entry, "run_job", lambda *args, **kwargs: report)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")  # the suite turns metrics off; this test reads them
    # When the scheduled entry point reports it
    entry.run_scheduled(SimpleNamespace(name=job), {}, SimpleNamespace(get_remaining_time_in_millis=lambda: 60_000))
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    (blob,) = [b for b in emitted if count in b]
    (directive,) = blob["_aws"]["CloudWatchMetrics"]
    # Then the alarm watches that metric: its namespace, its name and exactly its dimensions
    alarm = _alarms()[alarm_name]
    assert alarm["Namespace"] == directive["Namespace"]
    assert alarm["MetricName"] == count and count in {metric["Name"] for metric in directive["Metrics"]}
    dimensions = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
    (names,) = directive["Dimensions"]
    assert dimensions == {name: blob[name] for name in names}

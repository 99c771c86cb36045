"""Running a job from a scheduled Lambda invocation: its clock, its time guard, its log line and metrics."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from tollgate.config import get_settings
from tollgate.jobs.runner import Job, run_job, scheduled_now
from tollgate.observability import METRICS_NAMESPACE, SERVICE_NAME, logger, metrics, tracer

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


def run_scheduled(job: Job, event: Mapping[str, Any] | None, context: Any) -> dict[str, Any]:
    report = run_job(
        job,
        now=scheduled_now(event),
        remaining_ms=context.get_remaining_time_in_millis,
        safety_ms=get_settings().job_safety_ms,
    )
    summary = report.as_dict()
    logger.info("job run", extra=summary)
    # Metrics of this run alone, with the job as their dimension, flushed now.
    job_metrics = EphemeralMetrics(namespace=METRICS_NAMESPACE, service=SERVICE_NAME)
    job_metrics.add_dimension(name="job", value=job.name)
    job_metrics.add_metric(name="ItemsProcessed", unit=MetricUnit.Count, value=report.processed)
    job_metrics.add_metric(name="RunStoppedForTime", unit=MetricUnit.Count, value=int(report.stopped_for_time))
    for key, value in report.stats.items():
        job_metrics.add_metric(name=key, unit=MetricUnit.Count, value=value)
    job_metrics.flush_metrics()
    return summary


def scheduled_handler(job: str) -> LambdaHandler:
    """The Lambda handler of one job, named "module:Class". The job's module is imported on the first
    invocation, so each scheduled function loads only its own job (and what that job needs)."""
    module_name, _, class_name = job.partition(":")

    @logger.inject_lambda_context
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        job_class = getattr(importlib.import_module(module_name), class_name)
        return run_scheduled(job_class(), event, context)

    handler.__name__ = handler.__qualname__ = class_name
    return handler

"""Scheduled jobs (EventBridge Scheduler). One handler per job; each runs in batches and resumes if cut short."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from tollgate.config import get_settings
from tollgate.jobs.account_jobs import TrialExpiry
from tollgate.jobs.allowance import MonthlyAllowance
from tollgate.jobs.analytics import AnalyticsRollup
from tollgate.jobs.entry import run_scheduled
from tollgate.jobs.ledger_jobs import GrantExpiry, HoldExpiry, LedgerReconciliation
from tollgate.jobs.log_retention import run_log_retention
from tollgate.jobs.notices import BalanceNotices
from tollgate.jobs.provider_reconciliation import ProviderReconciliation
from tollgate.jobs.retention import Retention
from tollgate.observability import logger, metrics, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def grant_expiry(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_scheduled(GrantExpiry(), event, context)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def hold_expiry(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_scheduled(HoldExpiry(), event, context)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def ledger_reconciliation(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_scheduled(LedgerReconciliation(), event, context)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def log_retention(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = get_settings()
    report = run_log_retention(settings.log_group_prefixes, settings.log_retention_days, settings.aws_region)
    logger.info("job run", extra=report.as_dict())
    return report.as_dict()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def retention(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_scheduled(Retention(), event, context)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def trial_expiry(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_scheduled(TrialExpiry(), event, context)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def analytics_rollup(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_scheduled(AnalyticsRollup(), event, context)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def monthly_allowance(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_scheduled(MonthlyAllowance(), event, context)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def balance_notices(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_scheduled(BalanceNotices(), event, context)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def provider_reconciliation(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_scheduled(ProviderReconciliation(), event, context)

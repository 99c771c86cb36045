"""Scheduled jobs (EventBridge Scheduler): one handler per job, each its own function in template.yaml.

Every job runs in steps that commit with its cursor, so a run cut short resumes next time (tollgate.jobs).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from tollgate.config import get_settings
from tollgate.jobs.entry import scheduled_handler
from tollgate.observability import logger, metrics, tracer

monthly_allowance = scheduled_handler("tollgate.jobs.allowance:MonthlyAllowance")
grant_expiry = scheduled_handler("tollgate.jobs.ledger_jobs:GrantExpiry")
hold_expiry = scheduled_handler("tollgate.jobs.ledger_jobs:HoldExpiry")
order_reservation_expiry = scheduled_handler("tollgate.jobs.order_reservations:OrderReservationExpiry")
trial_expiry = scheduled_handler("tollgate.jobs.account_jobs:TrialExpiry")
retention = scheduled_handler("tollgate.jobs.retention:Retention")
ledger_reconciliation = scheduled_handler("tollgate.jobs.ledger_jobs:LedgerReconciliation")
provider_reconciliation = scheduled_handler("tollgate.jobs.provider_reconciliation:ProviderReconciliation")
analytics_rollup = scheduled_handler("tollgate.jobs.analytics:AnalyticsRollup")
balance_notices = scheduled_handler("tollgate.jobs.notices:BalanceNotices")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def log_retention(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """LogRetention talks to CloudWatch Logs, not the database: no steps, no cursor (it is idempotent)."""
    from tollgate.jobs.log_retention import run_log_retention

    settings = get_settings()
    report = run_log_retention(settings.log_group_prefixes, settings.log_retention_days, settings.aws_region)
    logger.info("job run", extra=report.as_dict())
    return report.as_dict()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def outbox_relay(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """OutboxRelay has no cursor: each pass claims what is due (SKIP LOCKED), so overlapping runs share work."""
    from tollgate.jobs.outbox_relay import OutboxRelay

    report = OutboxRelay().run(remaining_ms=context.get_remaining_time_in_millis)
    logger.info("job run", extra=report.as_dict())
    return report.as_dict()

"""Mail events: SES publishes what became of each message (delivery, bounce, complaint) to an SNS topic, which
invokes this function. Each message's SNS signature is verified before the service sets the email log's status
(and suppresses an address that bounced for good or complained). Not an HTTP route: SNS is the only caller."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from tollgate.db import UnitOfWork
from tollgate.observability import logger, metrics, tracer
from tollgate.services import mail_events


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    results = mail_events.receive_sns(UnitOfWork(), list(event.get("Records") or []))
    return {
        "results": [
            {"notification_id": r.notification_id, "type": r.type, "outcome": r.outcome, "duplicate": r.duplicate}
            for r in results
        ]
    }

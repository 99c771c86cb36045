"""What became of sent mail: SES delivery, bounce and complaint events (published by the configuration set to an
SNS topic, delivered to MailEventsFunction) set seed 001's statuses on `email_logs`.

- Each SNS message is verified (tollgate.mail.sns) and stored once in `mail_events` by its SNS MessageId: a
  replay answers as before and changes nothing.
- Statuses only move forward: sent -> delivered -> bounced -> complained; a late delivery never undoes a bounce
  (the event is kept, `superseded`). A transient (soft) bounce is recorded and changes no status.
- A permanent bounce or a complaint suppresses the address (`email_suppressions`): from then on it gets only
  essential mail (tollgate.mail.service).
- A message id no log carries is recorded as `unknown_message` and changes nothing.

Locally `tollgate mail simulate <message-id> delivered|bounce|complaint` builds the same SES event (`ses_event`)
and applies it without SNS.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import new_id, utcnow
from tollgate.errors import NotFound, SnsMessageInvalid, SnsMessageStale, ValidationFailed
from tollgate.mail.service import suppression_key
from tollgate.mail.sns import CertFetcher, fetch_cert, verify_sns_message
from tollgate.models.auth import EmailLog
from tollgate.models.mail_events import EmailSuppression, MailEvent
from tollgate.observability import logger

PROVIDER = "ses"
# How far each status is along: an event moves a log only forward.
STATUS_RANK = {"pending": 0, "sent": 0, "failed": 0, "suppressed": 0, "delivered": 1, "bounced": 2, "complained": 3}
EVENT_TYPES = {"Delivery": "delivery", "Bounce": "bounce", "Complaint": "complaint"}
SimulatedKind = Literal["delivered", "bounce", "complaint"]


@dataclass(frozen=True, slots=True)
class MailEventResult:
    notification_id: str
    type: str
    outcome: str  # applied | unknown_message | superseded | stale | ignored
    email_log_id: uuid.UUID | None = None
    status: str | None = None  # the log's status afterwards
    duplicate: bool = False
    suppressed: tuple[str, ...] = ()


def _time(value: Any) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _addresses(items: Any, key: str = "emailAddress") -> list[str]:
    found = [str(i.get(key)) for i in items if isinstance(i, Mapping) and i.get(key)] if isinstance(items, list) else []
    return [suppression_key(a) for a in found]


def _read(event: Mapping[str, Any]) -> tuple[str, str | None, str, dict[str, Any], datetime | None, list[str]]:
    """(type, subtype, the mail's message id, details, when, the recipients it concerns) of an SES event
    (configuration-set `eventType`, or an identity notification's `notificationType`)."""
    name = str(event.get("eventType") or event.get("notificationType") or "")
    kind = EVENT_TYPES.get(name, "other")
    mail = _mapping(event.get("mail"))
    message_id = str(mail.get("messageId") or "")
    if not message_id:
        raise ValidationFailed("the SES event names no message", details={"field": "mail.messageId"})
    body = _mapping(event.get(name[:1].lower() + name[1:])) if name else {}
    subtype: str | None = None
    recipients: list[str] = []
    if kind == "bounce":
        subtype = f"{body.get('bounceType') or 'Undetermined'}/{body.get('bounceSubType') or 'General'}"
        recipients = _addresses(body.get("bouncedRecipients"))
    elif kind == "complaint":
        subtype = str(body.get("complaintFeedbackType") or "") or None
        recipients = _addresses(body.get("complainedRecipients"))
    elif kind == "delivery":
        recipients = [suppression_key(str(r)) for r in body.get("recipients") or [] if isinstance(r, str)]
    details = {"event_type": name, **{k: v for k, v in body.items() if k != "timestamp"}}
    return kind, subtype, message_id, details, _time(body.get("timestamp") or mail.get("timestamp")), recipients


def _new_status(kind: str, subtype: str | None) -> str | None:
    if kind == "delivery":
        return "delivered"
    if kind == "complaint":
        return "complained"
    if kind == "bounce" and not (subtype or "").startswith("Transient"):
        return "bounced"
    return None  # a soft bounce (SES retries), or an event that says nothing of the outcome


def _suppress(session: Session, addresses: Sequence[str], reason: str, event_id: uuid.UUID, now: datetime) -> None:
    for address in addresses:
        session.execute(
            insert(EmailSuppression)
            .values(email=address, reason=reason, mail_event_id=event_id, created_at=now)
            .on_conflict_do_nothing(index_elements=[EmailSuppression.email])
        )


def apply_event(
    session: Session, notification_id: str, event: Mapping[str, Any], *, now: datetime, provider: str = PROVIDER
) -> MailEventResult:
    """Store SES `event` (once per notification id) and apply it to its email log, in `session`'s transaction."""
    kind, subtype, message_id, details, occurred_at, recipients = _read(event)
    previous = session.execute(
        select(MailEvent).where(MailEvent.provider == provider, MailEvent.notification_id == notification_id)
    ).scalar_one_or_none()
    if previous is not None:
        return MailEventResult(notification_id, previous.type, previous.outcome, previous.email_log_id, duplicate=True)
    log = session.execute(
        select(EmailLog)
        .where(EmailLog.message_id == message_id)
        .order_by(EmailLog.created_at)
        .limit(1)
        .with_for_update()
    ).scalar_one_or_none()
    status = _new_status(kind, subtype)
    if log is None:
        outcome = "unknown_message"
    elif status is not None and STATUS_RANK[status] <= STATUS_RANK.get(log.status, 0) and status != log.status:
        outcome = "superseded"
    else:
        outcome = "applied"
    event_id = new_id()
    stored = session.execute(
        insert(MailEvent)
        .values(
            id=event_id,
            provider=provider,
            notification_id=notification_id,
            message_id=message_id,
            email_log_id=log.id if log else None,
            type=kind,
            subtype=subtype,
            outcome=outcome,
            details=json.loads(json.dumps(details, default=str)),
            occurred_at=occurred_at,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=[MailEvent.provider, MailEvent.notification_id])
        .returning(MailEvent.id)
    ).first()
    if stored is None:  # the same notification committed meanwhile (a concurrent delivery of it)
        session.rollback()
        return apply_event(session, notification_id, event, now=now, provider=provider)
    suppressed: tuple[str, ...] = ()
    if log is not None and outcome == "applied":
        if status is not None:
            log.status = status
        if status in ("bounced", "complained") and (kind == "complaint" or (subtype or "").startswith("Permanent")):
            # Only the address the log sent to: an event naming other recipients never suppresses theirs.
            own = suppression_key(log.recipient)
            suppressed = (own,) if not recipients or own in recipients else ()
            _suppress(session, suppressed, "complaint" if kind == "complaint" else "bounce", event_id, now)
    return MailEventResult(
        notification_id, kind, outcome, log.id if log else None, log.status if log else None, suppressed=suppressed
    )


def receive_sns(
    uow: UnitOfWork,
    records: Sequence[Mapping[str, Any]],
    *,
    now: datetime | None = None,
    fetch: CertFetcher = fetch_cert,
) -> list[MailEventResult]:
    """Verify and apply each SNS record (`{"Sns": {...}}`) of a Lambda event, each in its own transaction.

    A message SNS did not sign for SES_EVENTS_TOPIC_ARN (or any, while that is unset) raises `SnsMessageInvalid`
    (the invocation fails and is alarmed); a stale one is skipped (`stale`): retrying it could never succeed."""
    settings = get_settings()
    if not settings.ses_events_topic_arn:  # no topic to hold messages to: accept none rather than every topic's
        raise SnsMessageInvalid("no mail events topic is configured", details={"reason": "topic"})
    results: list[MailEventResult] = []
    for record in records:
        message = _mapping(record.get("Sns")) or record
        clock = now or utcnow()
        notification_id = str(message.get("MessageId") or "")
        try:
            verify_sns_message(
                message,
                topic_arn=settings.ses_events_topic_arn,
                max_age_seconds=settings.mail_event_max_age_seconds,
                now=clock,
                fetch=fetch,
            )
        except SnsMessageStale:
            logger.warning("stale SNS message skipped", extra={"notification_id": notification_id})
            results.append(MailEventResult(notification_id, "other", "stale"))
            continue
        if message.get("Type") != "Notification":
            results.append(MailEventResult(notification_id, "other", "ignored"))
            continue
        try:
            event = json.loads(str(message.get("Message")))
        except ValueError:
            raise ValidationFailed("the SNS message does not carry an SES event") from None
        if not isinstance(event, Mapping):
            raise ValidationFailed("the SNS message does not carry an SES event")
        with uow:
            result = apply_event(uow.session, notification_id, event, now=clock)
            uow.commit()
        logger.info("mail event", extra={"type": result.type, "outcome": result.outcome, "dup": result.duplicate})
        results.append(result)
    return results


def ses_event(kind: SimulatedKind, message_id: str, recipient: str, *, now: datetime) -> dict[str, Any]:
    """The SES configuration-set event a real delivery, permanent bounce or complaint of `message_id` publishes
    (docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-contents.html)."""
    stamp = now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    mail = {"timestamp": stamp, "messageId": message_id, "source": get_settings().mail_from, "destination": [recipient]}
    if kind == "delivered":
        return {
            "eventType": "Delivery",
            "mail": mail,
            "delivery": {
                "timestamp": stamp,
                "recipients": [recipient],
                "processingTimeMillis": 500,
                "smtpResponse": "250 2.6.0 Message received",
                "reportingMTA": "a8-70.smtp-out.amazonses.com",
            },
        }
    if kind == "bounce":
        return {
            "eventType": "Bounce",
            "mail": mail,
            "bounce": {
                "bounceType": "Permanent",
                "bounceSubType": "General",
                "timestamp": stamp,
                "feedbackId": f"local-{uuid.uuid4()}",
                "bouncedRecipients": [
                    {
                        "emailAddress": recipient,
                        "action": "failed",
                        "status": "5.1.1",
                        "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                    }
                ],
            },
        }
    return {
        "eventType": "Complaint",
        "mail": mail,
        "complaint": {
            "timestamp": stamp,
            "feedbackId": f"local-{uuid.uuid4()}",
            "complaintFeedbackType": "abuse",
            "complainedRecipients": [{"emailAddress": recipient}],
        },
    }


def simulate(uow: UnitOfWork, message_id: str, kind: SimulatedKind, *, now: datetime | None = None) -> MailEventResult:
    """Locally: what SES would report for `message_id` (a `local-<log id>` of the local backend, or any id a log
    carries), applied as a notification of its own."""
    clock = now or utcnow()
    with uow:
        recipient = uow.session.execute(
            select(EmailLog.recipient).where(EmailLog.message_id == message_id).limit(1)
        ).scalar_one_or_none()
        if recipient is None:
            raise NotFound("no email log carries this message id", details={"message_id": message_id})
        result = apply_event(
            uow.session, f"local-{new_id()}", ses_event(kind, message_id, recipient, now=clock), now=clock
        )
        uow.commit()
    return result

"""SES delivery events through SNS, invoked as the template's MailEventsFunction: messages signed with SNS's real
scheme (RSA over the canonical string, SignatureVersion 1 and 2) by a test signing certificate at an SNS URL set
deliveries, bounces and complaints on the email logs the mail service wrote; replays change nothing; forged,
altered, foreign-topic and stale messages change nothing; a permanent bounce or a complaint stops non-essential
mail to the address; `tollgate mail simulate` applies the same event locally."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from tests.support import project_gateway
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.errors import NotFound, SnsMessageInvalid
from tollgate.mail import OutgoingMail, send_mail
from tollgate.mail.backends import LocalMailBackend
from tollgate.mail.sns import CERT_CACHE, check_cert_url, string_to_sign
from tollgate.models.auth import EmailLog
from tollgate.models.mail_events import EmailSuppression, MailEvent
from tollgate.services import mail_events
from tollgate_local.cli import build_parser

CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem"
TOPIC = "arn:aws:sns:us-east-1:123456789012:tollgate-mail-events"


@pytest.fixture(scope="module")
def signer() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256())
    )  # fmt: skip
    return key, cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def sns(signer: tuple[rsa.RSAPrivateKey, bytes], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test certificate is what the container fetched from CERT_URL; the mail events topic is TOPIC."""
    monkeypatch.setitem(CERT_CACHE, CERT_URL, signer[1])
    monkeypatch.setenv("SES_EVENTS_TOPIC_ARN", TOPIC)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def signed(
    signer: tuple[rsa.RSAPrivateKey, bytes], event: dict[str, Any], *, version: str = "2", topic: str = TOPIC,
    sent: datetime | None = None, message_id: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """An SNS Notification carrying `event`, signed as SNS signs it, in the Lambda record shape."""
    message: dict[str, Any] = {
        "Type": "Notification", "MessageId": message_id or str(uuid.uuid4()), "TopicArn": topic,
        "Subject": None, "Message": json.dumps(event),
        "Timestamp": (sent or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "SignatureVersion": version, "SigningCertUrl": CERT_URL,
        "UnsubscribeUrl": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe", "MessageAttributes": {},
    }  # fmt: skip
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # version 1 is SHA1withRSA
    signature = signer[0].sign(string_to_sign(message), padding.PKCS1v15(), algorithm)
    message["Signature"] = base64.b64encode(signature).decode()
    return {"EventSource": "aws:sns", "EventVersion": "1.0", "EventSubscriptionArn": f"{TOPIC}:sub", "Sns": message}


def invoke(*records: dict[str, Any]) -> list[dict[str, Any]]:
    result = project_gateway().runner.invoke("MailEventsFunction", {"Records": list(records)})
    return list(result["results"])


def sent_mail(db: Callable[[], UnitOfWork], tmp_path: Path, to: str, *, kind: str = "low_balance",
              essential: bool = False) -> EmailLog:  # fmt: skip
    """What the mail service logged for a message it sent through the local backend (message id `local-<id>`)."""
    mail = OutgoingMail(to=to, type=kind, subject="s", text="t", essential=essential)
    send_mail(db(), mail, LocalMailBackend(tmp_path, echo=False))
    with db() as uow:
        log = (
            uow.session.execute(
                select(EmailLog)
                .where(EmailLog.recipient == to, EmailLog.type == kind)
                .order_by(EmailLog.created_at.desc())
            )
            .scalars()
            .first()
        )
        assert log is not None
        uow.session.expunge(log)
        return log


def status(db: Callable[[], UnitOfWork], log_id: uuid.UUID) -> str:
    with db() as uow:
        log = uow.session.get(EmailLog, log_id)
        assert log is not None
        return log.status


def stored(db: Callable[[], UnitOfWork]) -> list[tuple[str, str]]:
    with db() as uow:
        return [
            (e.type, e.outcome) for e in uow.session.execute(select(MailEvent).order_by(MailEvent.created_at)).scalars()
        ]


def suppressed(db: Callable[[], UnitOfWork]) -> dict[str, str]:
    with db() as uow:
        return {s.email: s.reason for s in uow.session.execute(select(EmailSuppression)).scalars()}


def event(kind: mail_events.SimulatedKind, log: EmailLog) -> dict[str, Any]:
    assert log.message_id is not None
    return mail_events.ses_event(kind, log.message_id, log.recipient, now=datetime.now(UTC))


def test_a_signed_delivery_marks_the_log_delivered_and_a_replay_changes_nothing(db, sns, signer, tmp_path) -> None:
    # Given a message the mail service sent
    log = sent_mail(db, tmp_path, "ada@example.com")
    assert log.status == "sent"
    record = signed(signer, event("delivered", log))
    # When SNS delivers SES's delivery event, and delivers it again
    first, again = invoke(record)[0], invoke(record)[0]
    # Then the log is delivered, the event stored once, and the replay answered as a duplicate
    assert (first["outcome"], first["duplicate"]) == ("applied", False)
    assert (again["outcome"], again["duplicate"]) == ("applied", True)
    assert status(db, log.id) == "delivered"
    assert stored(db) == [("delivery", "applied")]


def test_signature_version_1_is_verified_too(db, sns, signer, tmp_path) -> None:
    log = sent_mail(db, tmp_path, "v1@example.com")
    assert invoke(signed(signer, event("delivered", log), version="1"))[0]["outcome"] == "applied"
    assert status(db, log.id) == "delivered"


def test_a_permanent_bounce_suppresses_the_address_for_non_essential_mail_only(db, sns, signer, tmp_path) -> None:
    # Given a message to an address that does not exist
    log = sent_mail(db, tmp_path, "Gone@Example.com")
    # When SES reports a permanent bounce
    invoke(signed(signer, event("bounce", log)))
    # Then the log is bounced and the address suppressed
    assert status(db, log.id) == "bounced"
    assert suppressed(db) == {"gone@example.com": "bounce"}
    # And the next non-essential message to it is not handed to the backend, while a sign-in code still is
    later = sent_mail(db, tmp_path, "gone@example.com", kind="credits_expiring")
    assert (later.status, later.message_id) == ("suppressed", None)
    assert later.error is not None and "bounce" in later.error
    code = sent_mail(db, tmp_path, "gone@example.com", kind="two_factor_code", essential=True)
    assert code.status == "sent"
    assert not (tmp_path / f"{later.id}.eml").exists() and (tmp_path / f"{code.id}.eml").exists()


def test_a_transient_bounce_is_recorded_and_changes_nothing_else(db, sns, signer, tmp_path) -> None:
    log = sent_mail(db, tmp_path, "full@example.com")
    soft = event("bounce", log)
    soft["bounce"]["bounceType"], soft["bounce"]["bounceSubType"] = "Transient", "MailboxFull"
    assert invoke(signed(signer, soft))[0]["outcome"] == "applied"
    assert status(db, log.id) == "sent" and suppressed(db) == {}
    assert stored(db) == [("bounce", "applied")]


def test_a_complaint_after_delivery_suppresses_and_a_late_delivery_never_undoes_a_bounce(db, sns, signer, tmp_path):
    # Given one message delivered then complained of, and another bounced
    annoyed = sent_mail(db, tmp_path, "annoyed@example.com")
    invoke(signed(signer, event("delivered", annoyed)))
    invoke(signed(signer, event("complaint", annoyed)))
    bounced = sent_mail(db, tmp_path, "bounced@example.com")
    invoke(signed(signer, event("bounce", bounced)))
    # When a delivery event of the bounced one arrives late
    late = invoke(signed(signer, event("delivered", bounced)))[0]
    # Then the complaint holds, the bounce holds, and the late event is kept as superseded
    assert (status(db, annoyed.id), status(db, bounced.id), late["outcome"]) == ("complained", "bounced", "superseded")
    assert suppressed(db) == {"annoyed@example.com": "complaint", "bounced@example.com": "bounce"}


def test_an_unknown_message_id_is_recorded_and_changes_nothing(db, sns, signer, tmp_path) -> None:
    log = sent_mail(db, tmp_path, "known@example.com")
    foreign = mail_events.ses_event("bounce", "0100019a-not-ours", "someone@example.com", now=datetime.now(UTC))
    assert invoke(signed(signer, foreign))[0]["outcome"] == "unknown_message"
    assert status(db, log.id) == "sent" and suppressed(db) == {}
    assert stored(db) == [("bounce", "unknown_message")]


@pytest.mark.parametrize("tamper", ["altered", "other_topic", "forged_key", "bad_cert_url", "http_cert", "version"])
def test_a_message_sns_did_not_sign_for_the_topic_is_refused_and_stores_nothing(
    db, sns, signer, tmp_path, tamper: str
) -> None:
    # Given a delivery event whose SNS message was tampered with in one way
    log = sent_mail(db, tmp_path, "target@example.com")
    record = signed(
        signer,
        event("delivered", log),
        topic="arn:aws:sns:us-east-1:999999999999:x" if tamper == "other_topic" else TOPIC,
    )
    message = record["Sns"]
    if tamper == "altered":
        message["Message"] = json.dumps(event("complaint", log))
    elif tamper == "forged_key":
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        message["Signature"] = base64.b64encode(
            other.sign(string_to_sign(message), padding.PKCS1v15(), hashes.SHA256())
        ).decode()
    elif tamper == "bad_cert_url":
        message["SigningCertUrl"] = "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem"
    elif tamper == "http_cert":
        message["SigningCertUrl"] = CERT_URL.replace("https://", "http://")
    elif tamper == "version":
        message["SignatureVersion"] = "3"
    # When SNS (or anyone) invokes the function with it, Then it is refused
    with pytest.raises(SnsMessageInvalid):
        invoke(record)
    # And nothing changed
    assert status(db, log.id) == "sent" and stored(db) == [] and suppressed(db) == {}


def test_a_stale_message_is_skipped(db, sns, signer, tmp_path) -> None:
    log = sent_mail(db, tmp_path, "old@example.com")
    age = get_settings().mail_event_max_age_seconds
    record = signed(signer, event("bounce", log), sent=datetime.now(UTC) - timedelta(seconds=age + 60))
    assert invoke(record)[0]["outcome"] == "stale"
    assert status(db, log.id) == "sent" and stored(db) == []


def test_only_sns_hosts_may_serve_the_signing_certificate() -> None:
    assert check_cert_url(CERT_URL) == CERT_URL
    assert check_cert_url("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-x.pem")
    for url in (
        "https://sns.us-east-1.amazonaws.com/cert.txt",
        "https://example.com/sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com:8443/x.pem",
        "https://user@sns.us-east-1.amazonaws.com/x.pem",
        "file:///etc/ssl/x.pem",
    ):
        with pytest.raises(SnsMessageInvalid):
            check_cert_url(url)


def test_the_local_simulation_applies_the_same_event(db, tmp_path) -> None:
    # Given a message the local backend sent (message id local-<log id>)
    log = sent_mail(db, tmp_path, "local@example.com")
    assert log.message_id == f"local-{log.id}"
    # When the operator simulates a complaint (the CLI's command parses), Then it is applied as SES's would be
    args = build_parser().parse_args(["mail", "simulate", log.message_id, "complaint"])
    assert callable(args.func) and args.outcome == "complaint"
    result = mail_events.simulate(db(), log.message_id, "complaint")
    assert (result.outcome, result.status, result.suppressed) == ("applied", "complained", ("local@example.com",))
    assert status(db, log.id) == "complained" and stored(db) == [("complaint", "applied")]
    # And a message id no log carries is not found
    with pytest.raises(NotFound):
        mail_events.simulate(db(), "local-nothing", "delivered")
    with db() as uow:
        assert uow.session.execute(select(func.count()).select_from(MailEvent)).scalar_one() == 1

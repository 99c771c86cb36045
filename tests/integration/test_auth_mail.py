# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""The mail service: every message logged, the anti-spam window, the local backend's .eml files, SES (moto)."""

from __future__ import annotations

import uuid
from email import message_from_bytes
from email.message import EmailMessage

import boto3
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID  # type: ignore[attr-defined]
from moto.ses.models import ses_backends
from sqlalchemy import select

from tests.integration.auth_helpers import AuthEnv, auth_env  # noqa: F401
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.mail import OutgoingMail, send_mail
from tollgate.mail.backends import LocalMailBackend, SesMailBackend, build_backend
from tollgate.models.auth import EmailLog


def _mail(to: str = "reader@example.com", type_: str = "verify_email") -> OutgoingMail:
    return OutgoingMail(to=to, type=type_, subject="Hello", text="Visit https://app.example/x?token=abc\n")


def _logs() -> list[tuple[str, str, str, str | None, str | None]]:
    with UnitOfWork() as uow:
        rows = uow.session.execute(
            select(EmailLog.type, EmailLog.status, EmailLog.provider, EmailLog.message_id, EmailLog.error).order_by(
                EmailLog.created_at
            )
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_local_backend_writes_one_eml_per_message_and_logs_it(auth_env: AuthEnv, capsys) -> None:
    # Given the local backend
    backend = LocalMailBackend(auth_env.mail_dir)
    # When a message is sent
    status = send_mail(UnitOfWork(), _mail(), backend)
    # Then it is logged as sent, printed, and kept as a parseable .eml named by its log id
    assert status == "sent"
    [(type_, log_status, provider, message_id, error)] = _logs()
    assert (type_, log_status, provider, error) == ("verify_email", "sent", "local", None)
    files = list(auth_env.mail_dir.glob("*.eml"))
    assert len(files) == 1 and message_id == f"local-{files[0].stem}"
    parsed = message_from_bytes(files[0].read_bytes())
    assert parsed["To"] == "reader@example.com" and parsed["Subject"] == "Hello"
    assert "token=abc" in capsys.readouterr().out


def test_the_same_type_to_the_same_address_is_sent_once_per_window(auth_env: AuthEnv) -> None:
    # Given a 60-second anti-spam window
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="60")
    backend = LocalMailBackend(auth_env.mail_dir, echo=False)
    # When the same type goes to the same address twice (any case), and other mail goes too
    first = send_mail(UnitOfWork(), _mail("Reader@Example.com"), backend)
    second = send_mail(UnitOfWork(), _mail("reader@example.com"), backend)
    other_type = send_mail(UnitOfWork(), _mail("reader@example.com", "password_reset"), backend)
    other_address = send_mail(UnitOfWork(), _mail("someone@example.com"), backend)
    # Then only the repeat is suppressed, and it is still logged
    assert (first, second, other_type, other_address) == ("sent", "suppressed", "sent", "sent")
    assert [row[1] for row in _logs()] == ["sent", "suppressed", "sent", "sent"]
    assert len(list(auth_env.mail_dir.glob("*.eml"))) == 3


def test_a_failed_delivery_is_logged_and_not_raised(auth_env: AuthEnv) -> None:
    # Given a backend that fails
    class Broken:
        name = "ses"

        def send(self, message: EmailMessage, log_id: str) -> str:
            raise ConnectionError("SES is unreachable")

    # When a message is sent
    status = send_mail(UnitOfWork(), _mail(), Broken())
    # Then the caller is not interrupted; the log says failed, with the error
    assert status == "failed"
    [(_, log_status, provider, message_id, error)] = _logs()
    assert (log_status, provider, message_id) == ("failed", "ses", None)
    assert error is not None and "SES is unreachable" in error
    # And a failed message does not count against the window: a retry goes out
    assert send_mail(UnitOfWork(), _mail(), LocalMailBackend(auth_env.mail_dir, echo=False)) == "sent"


@mock_aws
def test_ses_backend_sends_the_raw_message(auth_env: AuthEnv) -> None:
    # Given SES (moto) with a verified sender, and MAIL_BACKEND=ses
    auth_env.set(MAIL_BACKEND="ses", MAIL_FROM="Tollgate <no-reply@tollgate.example>", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("ses", region_name="us-east-1").verify_email_identity(EmailAddress="no-reply@tollgate.example")
    backend = build_backend(get_settings())
    assert isinstance(backend, SesMailBackend)
    # When a message is sent
    to = f"reader-{uuid.uuid4().hex[:6]}@example.com"
    status = send_mail(UnitOfWork(), _mail(to), backend)
    # Then SES accepted it, the log carries SES's message id, and SES got our exact MIME message
    assert status == "sent"
    [(_, _, provider, message_id, _)] = _logs()
    assert provider == "ses" and message_id
    sent = ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages
    assert len(sent) == 1
    raw = message_from_bytes(sent[0].raw_data.encode() if isinstance(sent[0].raw_data, str) else sent[0].raw_data)
    assert raw["To"] == to and raw["Subject"] == "Hello"


@mock_aws
def test_ses_rejection_is_logged_as_failed(auth_env: AuthEnv) -> None:
    # Given SES with no verified sender
    auth_env.set(MAIL_BACKEND="ses", MAIL_FROM="Tollgate <unverified@tollgate.example>", AWS_DEFAULT_REGION="us-east-1")
    # When a message is sent, Then SES refuses it and the log records why
    assert send_mail(UnitOfWork(), _mail(), build_backend(get_settings())) == "failed"
    [(_, status, _, _, error)] = _logs()
    assert status == "failed" and error is not None and "MessageRejected" in error

# ruff: noqa: F811  (pytest fixtures imported from helper modules are redefined as parameters)
"""SES mail events attacked from outside (issue 14 review): signing-certificate URLs on hosts that are not SNS's
(look-alikes, S3 buckets named "sns", credentials, redirects, oversized answers), subscription messages, foreign
and missing topics, replays and future-dated messages, events naming addresses the mail never went to, a
complaint for an address many logs carry, essential mail after a bounce, and the anti-spam window and the 2FA
challenge once a delivery notification moved `sent` on to `delivered`."""

from __future__ import annotations

import inspect
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import pytest
from sqlalchemy import func, select

from tests.integration.auth_helpers import AuthEnv, auth_env  # noqa: F401
from tests.integration.test_mail_events_sns import (  # noqa: F401
    CERT_URL,
    TOPIC,
    event,
    invoke,
    sent_mail,
    signed,
    signer,
    sns,
    status,
    stored,
    suppressed,
)
from tests.support import api_call, make_user
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.errors import SnsMessageInvalid
from tollgate.mail import OutgoingMail, send_mail
from tollgate.mail import messages as mails
from tollgate.mail import sns as sns_module
from tollgate.mail.backends import LocalMailBackend
from tollgate.mail.sns import check_cert_url, string_to_sign, verify_sns_message
from tollgate.models.auth import EmailLog
from tollgate.models.mail_events import MailEvent
from tollgate.services import identity, mail_events

Db = Callable[[], UnitOfWork]
Signer = Any


def _count_events(db: Db) -> int:
    with db() as uow:
        return int(uow.session.execute(select(func.count()).select_from(MailEvent)).scalar_one())


# --- where the signing certificate may come from ----------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://sns.evil.com/SimpleNotificationService-x.pem",
        "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-x.pem",
        "https://evil.com/sns.us-east-1.amazonaws.com/x.pem",
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
        "https://sns.us-east-1.amazonaws.com@evil.com/x.pem",
        "https://evil.com:x@sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com\\@evil.com/x.pem",
        "https://sns.us-east-1.amazonaws.com./x.pem",
        "https://sns.us-east-1.amazonaws.com/x.pem/../../evil",
        "https://sns.us-east-1.amazonaws.com/x.txt?.pem",
        "https://sns.us-east-1.amazonaws.com:444/x.pem",
        # S3 serves buckets on `<bucket>.s3[-...].amazonaws.com` with Amazon's TLS certificate: a bucket named
        # "sns" is anyone's, and must never count as SNS.
        "https://sns.s3.amazonaws.com/SimpleNotificationService-x.pem",
        "https://sns.s3-us-west-2.amazonaws.com/SimpleNotificationService-x.pem",
        "https://sns.s3-accelerate.amazonaws.com/SimpleNotificationService-x.pem",
        "https://sns.s3-external-1.amazonaws.com/SimpleNotificationService-x.pem",
        "ftp://sns.us-east-1.amazonaws.com/x.pem",
        "",
    ],
)
def test_a_certificate_url_off_the_sns_hosts_is_refused_before_anything_is_fetched(url: str) -> None:
    # Given a message whose SigningCertURL names a host, scheme or path that is not SNS's
    fetched: list[str] = []

    def fetch(u: str) -> bytes:
        fetched.append(u)
        return b""

    message = {
        "Type": "Notification", "MessageId": "m", "TopicArn": TOPIC, "Message": "{}",
        "Timestamp": datetime.now(UTC).isoformat(), "SignatureVersion": "2", "Signature": "AAAA",
        "SigningCertURL": url,
    }  # fmt: skip
    # When it is verified, Then it is refused, and nothing was fetched from that URL
    with pytest.raises(SnsMessageInvalid):
        verify_sns_message(message, topic_arn=TOPIC, max_age_seconds=3600, now=datetime.now(UTC), fetch=fetch)
    assert fetched == []


def test_the_real_region_hosts_are_still_sns() -> None:
    for host in (
        "sns.us-east-1.amazonaws.com", "sns.us-gov-west-1.amazonaws.com", "sns.ap-southeast-4.amazonaws.com",
        "sns.eu-central-2.amazonaws.com", "sns.cn-northwest-1.amazonaws.com.cn", "SNS.US-WEST-2.AMAZONAWS.COM",
    ):  # fmt: skip
        url = f"https://{host}/SimpleNotificationService-0123.pem"
        assert check_cert_url(url) == url


class _CertHost(BaseHTTPRequestHandler):
    """A certificate host that redirects `/redirect` elsewhere and answers `/huge` with far too many bytes."""

    hits: list[str] = []

    def do_GET(self) -> None:  # http.server's name
        self.hits.append(self.path)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/elsewhere.pem")
            self.end_headers()
            return
        body = b"-" * (sns_module.MAX_CERT_BYTES * 8) if self.path == "/huge" else b"not a certificate"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def cert_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CertHost)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _CertHost.hits = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_certificate_fetch_follows_no_redirect_and_reads_a_bounded_answer(cert_host: str) -> None:
    # Given a host that redirects the certificate URL elsewhere
    # When the certificate is fetched, Then the redirect is refused: nothing is read from where it points
    with pytest.raises(HTTPError):
        sns_module.fetch_cert(f"{cert_host}/redirect")
    assert _CertHost.hits == ["/redirect"]
    # And an answer larger than any certificate is refused, not read whole, and never cached
    with pytest.raises(SnsMessageInvalid):
        sns_module.fetch_cert(f"{cert_host}/huge")
    assert f"{cert_host}/huge" not in sns_module.CERT_CACHE and sns_module.CERT_FETCH_TIMEOUT_SECONDS <= 5


# --- topics and message types -------------------------------------------------------------------------------------
def _subscription(signer: Signer, kind: str, topic: str, subscribe_url: str) -> dict[str, Any]:
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    message: dict[str, Any] = {
        "Type": kind, "MessageId": str(uuid.uuid4()), "Token": "t" * 64, "TopicArn": topic,
        "Message": "You have chosen to subscribe to the topic.", "SubscribeURL": subscribe_url,
        "Timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "SignatureVersion": "2", "SigningCertURL": CERT_URL,
    }  # fmt: skip
    message["Signature"] = base64.b64encode(
        signer[0].sign(string_to_sign(message), padding.PKCS1v15(), hashes.SHA256())
    ).decode()
    return message


@pytest.mark.parametrize("kind", ["SubscriptionConfirmation", "UnsubscribeConfirmation"])
def test_a_subscription_message_is_never_confirmed_and_a_foreign_topics_is_refused(
    db: Db, sns: None, signer: Signer, cert_host: str, kind: str
) -> None:
    # Given a correctly signed (un)subscription message of another account's topic, its SubscribeURL ours to watch
    foreign = _subscription(signer, kind, "arn:aws:sns:us-east-1:999999999999:theirs", f"{cert_host}/confirm")
    # When it reaches the function, Then it is refused
    with pytest.raises(SnsMessageInvalid):
        invoke({"Sns": foreign})
    # And one of the function's own topic is recorded as ignored: nothing visits the SubscribeURL, nothing stored
    own = _subscription(signer, kind, TOPIC, f"{cert_host}/confirm")
    assert invoke({"Sns": own})[0]["outcome"] == "ignored"
    assert _CertHost.hits == [] and _count_events(db) == 0


def test_without_a_configured_topic_no_message_is_accepted(
    db: Db, sns: None, signer: Signer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a function whose mail events topic is not configured, and a correctly signed delivery of any topic
    log = sent_mail(db, tmp_path, "topicless@example.com")
    monkeypatch.setenv("SES_EVENTS_TOPIC_ARN", "")
    get_settings.cache_clear()
    record = signed(signer, event("bounce", log), topic="arn:aws:sns:us-east-1:999999999999:anyone")
    # When it arrives, Then it is refused (no topic to hold it to is not "any topic"), and nothing changed
    with pytest.raises(SnsMessageInvalid):
        invoke(record)
    assert status(db, log.id) == "sent" and stored(db) == [] and suppressed(db) == {}


# --- replays and timestamps ---------------------------------------------------------------------------------------
def test_a_replay_with_a_new_timestamp_fails_its_signature_and_a_future_dated_one_is_applied_once(
    db: Db, sns: None, signer: Signer, tmp_path: Path
) -> None:
    # Given a bounce SNS signed, already applied
    log = sent_mail(db, tmp_path, "replay@example.com")
    record = signed(signer, event("bounce", log))
    assert invoke(record)[0]["outcome"] == "applied"
    # When it is replayed with a fresh Timestamp (to dodge the age limit), Then the signature no longer matches
    fresh = json.loads(json.dumps(record))
    fresh["Sns"]["Timestamp"] = datetime.now(UTC).isoformat()
    with pytest.raises(SnsMessageInvalid):
        invoke(fresh)
    # And a message dated in the future is applied once; its replay, however late, is a duplicate
    other = sent_mail(db, tmp_path, "future@example.com")
    ahead = signed(signer, event("delivered", other), sent=datetime.now(UTC) + timedelta(days=3))
    first, again = invoke(ahead)[0], invoke(ahead)[0]
    assert (first["outcome"], first["duplicate"], again["duplicate"]) == ("applied", False, True)
    assert stored(db) == [("bounce", "applied"), ("delivery", "applied")]


def test_concurrent_deliveries_of_one_notification_apply_it_once(
    db: Db, sns: None, signer: Signer, tmp_path: Path
) -> None:
    # Given one complaint notification delivered by four invocations at once
    log = sent_mail(db, tmp_path, "race@example.com")
    record = signed(signer, event("complaint", log))
    barrier = threading.Barrier(4)
    answers: list[mail_events.MailEventResult] = []
    errors: list[BaseException] = []

    def deliver() -> None:
        barrier.wait()
        try:
            answers.extend(mail_events.receive_sns(UnitOfWork(), [record]))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then none failed, one applied it and the others saw a duplicate, one event is stored, the address suppressed
    assert errors == []
    assert sorted(r.duplicate for r in answers) == [False, True, True, True]
    assert stored(db) == [("complaint", "applied")] and suppressed(db) == {"race@example.com": "complaint"}


# --- what an event may change -------------------------------------------------------------------------------------
def test_a_bounce_naming_other_recipients_suppresses_no_one_but_the_logs_own(
    db: Db, sns: None, signer: Signer, tmp_path: Path
) -> None:
    # Given a message to one address, and a permanent bounce of it that names someone else as well
    log = sent_mail(db, tmp_path, "Owner@Example.com")
    bounce = event("bounce", log)
    named = ["victim@example.com", "owner@example.com"]
    bounce["bounce"]["bouncedRecipients"] = [{"emailAddress": a} for a in named]
    invoke(signed(signer, bounce))
    # Then only the address the message went to is suppressed
    assert suppressed(db) == {"owner@example.com": "bounce"}
    # And a complaint naming only a stranger suppresses no one, though the log says complained
    other = sent_mail(db, tmp_path, "second@example.com")
    complaint = event("complaint", other)
    complaint["complaint"]["complainedRecipients"] = [{"emailAddress": "victim@example.com"}]
    invoke(signed(signer, complaint))
    assert status(db, other.id) == "complained"
    assert suppressed(db) == {"owner@example.com": "bounce"}
    # So mail to the stranger still goes out
    assert sent_mail(db, tmp_path, "victim@example.com").status == "sent"


def test_a_complaint_of_one_of_many_logs_marks_that_log_only(db: Db, sns: None, signer: Signer, tmp_path: Path) -> None:
    # Given five messages of different types to one address
    logs = [sent_mail(db, tmp_path, "many@example.com", kind=f"kind_{i}") for i in range(5)]
    # When SES reports a complaint of the third
    result = invoke(signed(signer, event("complaint", logs[2])))[0]
    # Then that log is complained, the others stay sent, and the address is suppressed once
    assert result["outcome"] == "applied"
    assert [status(db, log.id) for log in logs] == ["sent", "sent", "complained", "sent", "sent"]
    assert suppressed(db) == {"many@example.com": "complaint"}


def test_every_sign_in_and_security_mail_still_reaches_a_suppressed_address(
    db: Db, sns: None, signer: Signer, tmp_path: Path
) -> None:
    # Given an address that complained
    log = sent_mail(db, tmp_path, "careful@example.com")
    invoke(signed(signer, event("complaint", log)))
    assert suppressed(db) == {"careful@example.com": "complaint"}
    # When each message sign-in and account security send goes to it
    with db() as uow:
        uid, token = make_user(uow.session).id, "tok"
        uow.commit()
    built = {
        "verify_email": mails.verify_email("careful@example.com", uid, token),
        "account_exists": mails.account_exists("careful@example.com", uid),
        "password_reset": mails.password_reset("careful@example.com", uid, token),
        "two_factor_code": mails.two_factor_code("careful@example.com", uid, "123456", uuid.uuid4()),
        "account_locked": mails.account_locked("careful@example.com", uid, token),
        **{
            f"security_{e}": mails.security_notice("careful@example.com", uid, e, token, 24)
            for e in mails.SECURITY_EVENTS
        },
    }
    # (every constructor of that module is covered here)
    constructors = {n for n, f in inspect.getmembers(mails, inspect.isfunction) if f.__module__ == mails.__name__}
    assert constructors - {"_link"} == {"verify_email", "account_exists", "password_reset", "two_factor_code",
                                        "account_locked", "security_notice"}  # fmt: skip
    backend = LocalMailBackend(tmp_path, echo=False)
    outcomes = {name: send_mail(db(), mail, backend) for name, mail in built.items()}
    # Then every one is sent, while non-essential mail is held back
    assert outcomes == {name: "sent" for name in built}
    assert send_mail(db(), OutgoingMail(to="careful@example.com", type="news", subject="s", text="t"), backend) == (
        "suppressed"
    )


# --- the anti-spam window once statuses move on -----------------------------------------------------------------
def test_a_delivery_notification_does_not_reopen_the_anti_spam_window(
    db: Db, sns: None, signer: Signer, tmp_path: Path
) -> None:
    # Given a password reset mail sent a moment ago, which SES then reports delivered
    backend = LocalMailBackend(tmp_path, echo=False)
    with db() as uow:
        uid = make_user(uow.session).id
        uow.commit()
    assert send_mail(db(), mails.password_reset("bombed@example.com", uid, "t1"), backend) == "sent"
    with db() as uow:
        log = uow.session.execute(select(EmailLog).where(EmailLog.recipient == "bombed@example.com")).scalar_one()
        uow.session.expunge(log)
    invoke(signed(signer, event("delivered", log)))
    assert status(db, log.id) == "delivered"
    # When another one is asked for inside the window (anyone can ask for a reset of any address)
    again = send_mail(db(), mails.password_reset("bombed@example.com", uid, "t2"), backend)
    # Then it is held back, as it would have been before the notification
    assert again == "suppressed"
    # And so after a bounce or a complaint too
    for kind in ("bounce", "complaint"):
        to = f"{kind}-window@example.com"
        assert send_mail(db(), mails.password_reset(to, uid, "t1"), backend) == "sent"
        with db() as uow:
            first = uow.session.execute(select(EmailLog).where(EmailLog.recipient == to)).scalar_one()
            uow.session.expunge(first)
        invoke(signed(signer, event(kind, first)))
        assert send_mail(db(), mails.password_reset(to, uid, "t2"), backend) == "suppressed", kind


def test_a_delivered_sign_in_code_still_holds_its_challenge_inside_the_window(
    auth_env: AuthEnv, sns: None, signer: Signer
) -> None:
    # Given a user with mailed 2FA whose sign-in code was mailed and then reported delivered
    email = auth_env.register_verified()
    with UnitOfWork() as uow:
        user_id = uow.session.execute(select(EmailLog.user_id).where(EmailLog.recipient == email)).scalars().first()
    assert user_id is not None
    caller = identity.Caller(user_id, session_id=str(uuid.uuid4()), auth_time=int(datetime.now(UTC).timestamp()))
    identity.enable_email_two_factor(UnitOfWork(), caller)
    first = auth_env.login(email)["challenge_id"]
    code = auth_env.code_from(email)
    with UnitOfWork() as uow:
        log = uow.session.execute(
            select(EmailLog).where(EmailLog.recipient == email, EmailLog.type == "two_factor_code")
        ).scalar_one()
        uow.session.expunge(log)
    invoke(signed(signer, event("delivered", log)))
    # When they sign in again inside the window
    second = auth_env.login(email)["challenge_id"]
    # Then the same challenge comes back (no new challenge whose code the window would never let out), no second
    # code is mailed, and the delivered code completes it
    assert second == first
    assert auth_env.mail_count(email, "two_factor_code") == 1
    done = api_call("POST", "/auth/login/two-factor", body={"challenge_id": second, "code": code})
    assert done.status == 200, done.json

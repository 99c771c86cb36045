"""Helpers for the auth tests: settings per test, the mail that was "sent", and signed-in users."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.support import api_call, project_gateway
from tollgate.auth import passwords
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.mail import backends
from tollgate.models.auth import EmailLog

PASSWORD = "correct horse battery staple"
TOKEN_IN_LINK = re.compile(r"token=([A-Za-z0-9_\-%]+)")
CODE_IN_MAIL = re.compile(r"code is (\d{6})")


def clear_caches() -> None:
    get_settings.cache_clear()
    backends.get_backend.cache_clear()
    passwords.hasher.cache_clear()
    passwords._dummy_hash.cache_clear()
    authorizer = project_gateway().runner.module("AuthorizerFunction")
    authorizer.cache.clear()


class AuthEnv:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, mail_dir: Path) -> None:
        self.monkeypatch = monkeypatch
        self.mail_dir = mail_dir

    def set(self, **values: Any) -> None:
        for name, value in values.items():
            self.monkeypatch.setenv(name, str(value))
        clear_caches()

    def last_mail(self, recipient: str, type_: str) -> Message:
        with UnitOfWork() as uow:
            log_id = uow.session.execute(
                select(EmailLog.id)
                .where(EmailLog.recipient == recipient, EmailLog.type == type_, EmailLog.status == "sent")
                .order_by(EmailLog.created_at.desc())
                .limit(1)
            ).scalar_one()
        return message_from_bytes((self.mail_dir / f"{log_id}.eml").read_bytes())

    def mail_count(self, recipient: str, type_: str | None = None, status: str | None = None) -> int:
        with UnitOfWork() as uow:
            query = select(EmailLog).where(EmailLog.recipient == recipient)
            if type_:
                query = query.where(EmailLog.type == type_)
            if status:
                query = query.where(EmailLog.status == status)
            return len(uow.session.execute(query).scalars().all())

    def token_from(self, recipient: str, type_: str) -> str:
        from urllib.parse import unquote

        body = mail_text(self.last_mail(recipient, type_))
        found = TOKEN_IN_LINK.search(body)
        assert found, body
        return unquote(found.group(1))

    def code_from(self, recipient: str) -> str:
        found = CODE_IN_MAIL.search(mail_text(self.last_mail(recipient, "two_factor_code")))
        assert found
        return found.group(1)

    # --- whole flows ----------------------------------------------------------------------------------------
    def register_verified(self, email: str | None = None, password: str = PASSWORD, **extra: Any) -> str:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        response = api_call("POST", "/auth/register", body={"email": email, "password": password, **extra})
        assert response.status == 202, response.json
        token = self.token_from(email, "verify_email")
        verified = api_call("POST", "/auth/verify-email", body={"token": token, "password": password})
        assert verified.status == 200, verified.json
        return email

    def login(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        response = api_call("POST", "/auth/login", body={"email": email, "password": password})
        assert response.status == 200, response.json
        data: dict[str, Any] = response.json
        return data


def mail_text(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


@pytest.fixture
def auth_env(db: Callable[[], UnitOfWork], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[AuthEnv]:
    env = AuthEnv(monkeypatch, tmp_path / "mail")
    env.set(
        TOLLGATE_MAIL_DIR=env.mail_dir,
        MAIL_BACKEND="local",
        AUTH_MODE="builtin",
        ENUMERATION_FLOOR_MS=0,  # test_slow_mail_does_not_reveal... turns it on
        MAIL_REQUESTS_PER_IP=1000,  # every test call comes from one IP; test_mail_requests_are_limited... lowers it
    )
    yield env
    monkeypatch.undo()
    clear_caches()


def bearer(access_token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {access_token}"}

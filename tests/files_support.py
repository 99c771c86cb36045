"""Helpers for the file tests: a storage backend configured per test, users, and browser-shaped uploads."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support import ApiResponse, api_call, make_user, project_gateway
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.storage import get_storage
from tollgate_local.events import HttpRequest

Db = Callable[[], UnitOfWork]
BOUNDARY = "----tollgate-test-boundary"


@dataclass
class FileEnv:
    monkeypatch: pytest.MonkeyPatch
    folder: Path

    def set(self, **values: Any) -> None:
        for name, value in values.items():
            self.monkeypatch.setenv(name, str(value))
        get_settings.cache_clear()
        get_storage.cache_clear()


@pytest.fixture
def files_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FileEnv]:
    """The local backend in a throwaway folder, with small quotas that tests can reach."""
    env = FileEnv(monkeypatch, tmp_path / "files")
    env.set(
        STORAGE_BACKEND="local",
        TOLLGATE_FILES_DIR=env.folder,
        LOCAL_FILES_URL="http://127.0.0.1:3000/_local/files",
        FILE_QUOTA_BYTES="FREE=1000,PRO=100000",
        FILE_MAX_BYTES="FREE=600,PRO=50000",
    )
    yield env
    monkeypatch.undo()
    get_settings.cache_clear()
    get_storage.cache_clear()


def new_user(db: Db, tier: str = "FREE") -> uuid.UUID:
    with db() as uow:
        user = make_user(uow.session, tier=tier)
        uow.commit()
        return user.id


def start(user: uuid.UUID, name: str = "notes.txt", content_type: str = "text/plain", size: int = 5) -> ApiResponse:
    return api_call("POST", "/files", body={"name": name, "content_type": content_type, "size": size}, as_user=user)


def multipart(fields: dict[str, str], data: bytes, filename: str = "upload.bin") -> tuple[str, bytes]:
    """A browser's multipart/form-data body: the fields in order, then the file last (as S3 wants it)."""
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return f"multipart/form-data; boundary={BOUNDARY}", b"".join(parts)


def gateway_request(method: str, url: str, *, body: bytes = b"", content_type: str | None = None) -> ApiResponse:
    """A request to the local gateway at `url` (its path and query), as a browser would send it."""
    parts = urlsplit(url)
    headers = [("content-type", content_type)] if content_type else []
    response = project_gateway().handle(HttpRequest(method, parts.path, parts.query, headers, body, "198.51.100.7"))
    return ApiResponse(response.status, dict(response.headers), response.body)


def upload_through_gateway(upload: dict[str, Any], data: bytes) -> ApiResponse:
    content_type, body = multipart(upload["fields"], data)
    return gateway_request("POST", upload["url"], body=body, content_type=content_type)

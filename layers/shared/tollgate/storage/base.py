"""The storage interface and the choice of backend (STORAGE_BACKEND)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Protocol

from tollgate.config import Settings, get_settings
from tollgate.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class PresignedPost:
    """A browser form upload: POST `fields` and then the file (as the last field, `file`) to `url`."""

    url: str
    fields: dict[str, str]
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    content_type: str | None
    etag: str | None


class Storage(Protocol):
    provider: str  # the `provider` column: s3 | local
    bucket: str  # "" for the local folder

    def presign_post(
        self, key: str, *, content_type: str, size: int, expires_in: int, now: datetime | None = None
    ) -> PresignedPost:
        """A form upload of exactly `size` bytes of `content_type` to `key`, valid `expires_in` seconds."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """What the store holds at `key`, or None."""
        ...

    def presign_get(self, key: str, *, expires_in: int, filename: str, content_type: str) -> str:
        """A URL that downloads `key` for `expires_in` seconds, as an attachment named `filename`."""
        ...

    def delete(self, keys: Sequence[str]) -> None:
        """Remove the objects (absent ones are fine). Never call it inside a transaction that holds locks."""
        ...


class WritableStorage(Storage, Protocol):
    """A store the backend itself may write to (users' bytes never pass through it: they upload directly)."""

    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        """Store `data` at `key`, encrypted at rest as the store is. Never inside a transaction."""
        ...

    def list_keys(self, prefix: str) -> list[str]:
        """The keys of the objects under `prefix` (what the backend wrote there). Never inside a transaction."""
        ...


def build_storage(settings: Settings) -> WritableStorage:
    if settings.storage_backend == "s3":
        from tollgate.storage.s3 import S3Storage

        if not settings.storage_bucket:
            raise ConfigurationError("STORAGE_BACKEND=s3 needs STORAGE_BUCKET")
        return S3Storage(settings.storage_bucket, settings.aws_region)
    from tollgate.storage.local import LocalStorage

    return LocalStorage(settings.files_dir, settings.files_url)


@lru_cache(maxsize=1)
def get_storage() -> WritableStorage:
    return build_storage(get_settings())

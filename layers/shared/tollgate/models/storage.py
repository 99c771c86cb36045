"""Files (DESIGN.md §3 "files & mail"): one row per uploaded object, the union of seed 001 `File` and seeds
002/003 `StorageObject`, with soft delete.

The bytes live in the object store (S3, or a local folder); the row says where (`provider`, `bucket`, `key`),
what the caller declared (name, content type, size) and where it is in its life: PENDING from the presigned
upload until completion found the object, READY, then DELETED (restorable for FILE_RESTORE_DAYS) until
Retention removes object and row.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, UniqueConstraint, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tollgate.db.base import Base, CreatedAt, UpdatedAt, UUIDPk


class FileStatus(enum.StrEnum):
    PENDING = "PENDING"
    READY = "READY"
    DELETED = "DELETED"


class StorageObject(Base):
    __tablename__ = "storage_objects"
    __table_args__ = (
        CheckConstraint("status IN ('PENDING', 'READY', 'DELETED')", name="status"),
        CheckConstraint("size > 0", name="size"),
        CheckConstraint("provider IN ('s3', 'local')", name="provider"),
        CheckConstraint("(status = 'DELETED') = (deleted_at IS NOT NULL)", name="deleted_at"),
        UniqueConstraint("provider", "bucket", "key", name="uq_storage_objects_provider_bucket_key"),
        # The caller's list (newest first, ids are time-ordered) and the quota's sum of live bytes.
        Index("ix_storage_objects_user_id", "user_id", "id"),
        # Retention: soft-deleted rows by age, PENDING rows by age (both small partial indexes).
        Index("ix_storage_objects_deleted_at", "deleted_at", postgresql_where=text("status = 'DELETED'")),
        Index("ix_storage_objects_pending_created_at", "created_at", postgresql_where=text("status = 'PENDING'")),
    )

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(16))  # s3 | local
    bucket: Mapped[str] = mapped_column(String(255), default="", server_default="")  # "" for local
    key: Mapped[str] = mapped_column(String(1024))
    # The file's name made safe for paths and Content-Disposition; `original_name` is what the caller sent.
    pathname: Mapped[str] = mapped_column(String(255))
    original_name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)  # declared at upload start; completion checks the object
    checksum: Mapped[str | None] = mapped_column(String(128))  # the store's ETag, found at completion
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict, server_default="{}")
    status: Mapped[str] = mapped_column(String(16), default=FileStatus.PENDING, server_default="PENDING")
    upload_expires_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]

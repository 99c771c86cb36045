"""Files (API.md "Files"): presigned uploads that never pass through Lambda, completion checked against the
store, the caller's list, short-lived downloads, soft delete and restore, quotas per tier.

Every look-up is by (file id, caller): another user's file id answers `file_not_found`, as a missing one does.

Quota: an upload is admitted by one transaction that locks the caller's `users` row (SELECT ... FOR UPDATE),
sums the bytes of their READY files and of PENDING uploads still inside the completion window, and inserts the
new PENDING row. Two uploads of one user therefore take turns, and the second sees the first's bytes: together
they can never pass the quota. Restore re-checks it the same way. Storage is not charged through the ledger:
the tier's quota bounds what a user can keep.

The store is called outside any transaction that holds locks (HEAD at completion, deletes in Retention and
erasure): a slow S3 never keeps a row locked.

Answers are views (frozen dataclasses of plain values made inside the unit of work), never ORM rows.
"""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from tollgate.config import Settings, get_settings
from tollgate.db import UnitOfWork, new_id
from tollgate.db.base import utcnow
from tollgate.errors import (
    ContentTypeNotAllowed,
    FileNotFound,
    FileTooLarge,
    NotFound,
    QuotaExceeded,
    RestoreWindowPassed,
    UploadExpired,
    UploadIncomplete,
    ValidationFailed,
)
from tollgate.models import User
from tollgate.models.storage import FileStatus, StorageObject
from tollgate.pagination import Page, keyset_page
from tollgate.services.views import plain_json, row_view
from tollgate.storage import PresignedPost, Storage

MAX_NAME = 255
MAX_METADATA_BYTES = 2048  # as S3 bounds an object's user metadata: a label, never a document
# Past the window, Retention waits this long more: a completion or restore admitted just inside the window
# commits within one Lambda invocation (15 minutes at most), so it lands before Retention can choose its row,
# and Retention never deletes the object of a file that became READY.
PURGE_MARGIN = timedelta(minutes=15)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Characters that reorder or hide text (U+202E turns "invoice<RLO>gpj.exe" into "invoiceexe.jpg" on screen).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file's row as read (or as written) in its unit of work."""

    id: uuid.UUID
    key: str
    pathname: str
    original_name: str
    content_type: str
    size: int
    checksum: str | None
    metadata: dict[str, Any]
    status: str
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    deleted_at: datetime | None


@dataclass(frozen=True, slots=True)
class Upload:
    file: StoredFile
    post: PresignedPost
    complete_by: datetime


@dataclass(frozen=True, slots=True)
class FileView:
    file: StoredFile
    download_url: str | None
    download_expires_at: datetime | None
    restorable_until: datetime | None


@dataclass(frozen=True, slots=True)
class Usage:
    used_bytes: int
    quota_bytes: int
    files: int
    max_file_bytes: int
    tier: str


# --- rules ------------------------------------------------------------------------------------------------------
def media_type(content_type: str) -> str:
    """The type/subtype of a content type, lower case, without parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def canonical_type(content_type: str) -> str:
    """One spelling of a content type (`type/subtype; name=value`, lower case): what the upload policy pins, the
    row stores and the list filter compares."""
    media, *params = content_type.lower().split(";")
    cleaned = ["=".join(p.strip() for p in param.split("=", 1)) for param in params if param.strip()]
    return "; ".join([media.strip(), *cleaned])


def check_name(name: str) -> None:
    """A file name is shown to people and sent in Content-Disposition: no control or direction characters."""
    if any(unicodedata.category(ch) == "Cc" or ch in _BIDI for ch in name):
        raise ValidationFailed(
            "a file name may not contain control or text-direction characters", details={"field": "name"}
        )


def check_metadata(metadata: dict[str, Any]) -> None:
    if len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode()) > MAX_METADATA_BYTES:
        raise ValidationFailed(
            f"metadata takes at most {MAX_METADATA_BYTES} bytes as JSON", details={"field": "metadata"}
        )


def safe_pathname(name: str) -> str:
    """A name for paths and Content-Disposition: ASCII letters, digits, `._-`, never empty or a dot name."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    cleaned = _UNSAFE.sub("-", ascii_name).strip("-.")[:MAX_NAME]
    return cleaned or "file"


def quota_for(settings: Settings, tier: str) -> int:
    return settings.file_quota_bytes.get(tier.upper(), settings.file_quota_bytes_default)


def max_file_for(settings: Settings, tier: str) -> int:
    return settings.file_max_bytes.get(tier.upper(), settings.file_max_bytes_default)


def complete_by(settings: Settings, started: datetime) -> datetime:
    return started + timedelta(minutes=settings.file_upload_complete_minutes)


def _counted(settings: Settings, now: datetime) -> ColumnElement[bool]:
    """The files that count against the quota: READY ones, and PENDING uploads that may still complete."""
    window_start = now - timedelta(minutes=settings.file_upload_complete_minutes)
    return or_(
        StorageObject.status == FileStatus.READY,
        and_(StorageObject.status == FileStatus.PENDING, StorageObject.created_at > window_start),
    )


def _used(session: Session, settings: Settings, user_id: uuid.UUID, now: datetime) -> tuple[int, int]:
    used, files = session.execute(
        select(func.coalesce(func.sum(StorageObject.size), 0), func.count()).where(
            StorageObject.user_id == user_id, _counted(settings, now)
        )
    ).one()
    return int(used), int(files)


def _lock_user(session: Session, user_id: uuid.UUID) -> User:
    # The quota's serialization point: every admission of bytes for this user takes this row lock first.
    user = session.get(User, user_id, with_for_update=True)
    if user is None:
        raise NotFound("no such user")
    return user


def _admit(session: Session, settings: Settings, user: User, size: int, now: datetime) -> None:
    quota = quota_for(settings, user.tier)
    used, _ = _used(session, settings, user.id, now)
    if used + size > quota:
        raise QuotaExceeded(
            f"{size} more bytes would pass the {user.tier} storage quota of {quota} bytes ({used} used)",
            details={"used": used, "quota": quota, "requested": size, "tier": user.tier},
        )


def _owned(session: Session, user_id: uuid.UUID, file_id: uuid.UUID, *, lock: bool = False) -> StorageObject:
    query = select(StorageObject).where(StorageObject.id == file_id, StorageObject.user_id == user_id)
    found = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if found is None:
        raise FileNotFound("no such file", details={"file_id": str(file_id)})
    return found


def _stored_file(row: StorageObject) -> StoredFile:
    return row_view(StoredFile, row, metadata=plain_json(row.metadata_))


def _written(uow: UnitOfWork, row: StorageObject) -> StoredFile:
    """The row as the database now holds it (flushed, then read back)."""
    uow.session.flush()
    uow.session.refresh(row)
    return _stored_file(row)


# --- upload ---------------------------------------------------------------------------------------------------
def start_upload(
    uow: UnitOfWork,
    storage: Storage,
    user_id: uuid.UUID,
    *,
    name: str,
    content_type: str,
    size: int,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Upload:
    """A PENDING file and the presigned form the browser uploads it with, if the type, size and quota allow."""
    settings = get_settings()
    now = now or utcnow()
    declared = canonical_type(content_type)
    check_name(name)
    check_metadata(metadata or {})
    if media_type(declared) not in settings.file_content_types:
        raise ContentTypeNotAllowed(
            f"files of type {media_type(declared)!r} are not accepted",
            details={"content_type": content_type, "allowed": sorted(settings.file_content_types)},
        )
    if size < 1:
        raise ValidationFailed("a file has at least one byte", details={"field": "size"})
    with uow:
        session = uow.session
        user = _lock_user(session, user_id)
        largest = max_file_for(settings, user.tier)
        if size > largest:
            raise FileTooLarge(
                f"the {user.tier} tier uploads files of at most {largest} bytes",
                details={"max_bytes": largest, "size": size, "tier": user.tier},
            )
        _admit(session, settings, user, size, now)
        file_id = new_id()
        key = f"users/{user_id}/{file_id}"
        post = storage.presign_post(
            key, content_type=declared, size=size, expires_in=settings.file_upload_expiry_seconds, now=now
        )
        row = StorageObject(
            id=file_id,
            user_id=user_id,
            provider=storage.provider,
            bucket=storage.bucket,
            key=key,
            pathname=safe_pathname(name),
            original_name=name,
            content_type=declared,
            size=size,
            metadata_=metadata or {},
            status=FileStatus.PENDING,
            upload_expires_at=post.expires_at,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        written = _written(uow, row)
        uow.commit()
    return Upload(file=written, post=post, complete_by=complete_by(settings, now))


def complete_upload(
    uow: UnitOfWork, storage: Storage, user_id: uuid.UUID, file_id: uuid.UUID, *, now: datetime | None = None
) -> FileView:
    """Mark an upload READY once the store holds exactly what was declared (size and content type)."""
    settings = get_settings()
    now = now or utcnow()
    with uow:
        row = _stored_file(_owned(uow.session, user_id, file_id))
    if row.status == FileStatus.READY:
        return plain(settings, row)  # completing twice answers the file again
    if row.status == FileStatus.DELETED:
        raise FileNotFound("no such file", details={"file_id": str(file_id)})
    if now >= complete_by(settings, row.created_at):
        raise UploadExpired("the upload was not completed in time: start a new one", details={"file_id": str(file_id)})
    info = storage.head(row.key)  # outside any transaction: nothing is locked while the store answers
    expected = {"size": row.size, "content_type": row.content_type}
    if info is None:
        raise UploadIncomplete("no object was uploaded for this file", details={"reason": "missing", **expected})
    found = {"size": info.size, "content_type": info.content_type}
    if info.size != row.size:
        raise UploadIncomplete(
            "the uploaded object's size differs from the declared size",
            details={"reason": "size_mismatch", "expected": expected, "found": found},
        )
    if (info.content_type or "").strip().lower() != row.content_type:
        raise UploadIncomplete(
            "the uploaded object's content type differs from the declared one",
            details={"reason": "type_mismatch", "expected": expected, "found": found},
        )
    with uow:
        uow.session.execute(
            update(StorageObject)
            .where(StorageObject.id == file_id, StorageObject.status == FileStatus.PENDING)
            .values(status=FileStatus.READY, checksum=info.etag, completed_at=now, updated_at=now)
        )
        current = _owned(uow.session, user_id, file_id)
        if current.status == FileStatus.DELETED:  # deleted while the store answered
            raise FileNotFound("no such file", details={"file_id": str(file_id)})
        written = _written(uow, current)
        uow.commit()
    return plain(settings, written)


# --- read -----------------------------------------------------------------------------------------------------------
def list_files(
    uow: UnitOfWork,
    user_id: uuid.UUID,
    *,
    limit: int,
    cursor: str | None,
    content_type: str | None = None,
    include_deleted: bool = False,
) -> Page[FileView]:
    """The caller's files (without download URLs), newest first; `content_type` is exact (`image/png`) or a
    family (`image/*`)."""
    query = select(StorageObject).where(StorageObject.user_id == user_id)
    if not include_deleted:
        query = query.where(StorageObject.status != FileStatus.DELETED)
    if content_type:
        wanted = content_type.strip().lower()
        if wanted.endswith("/*"):
            family = wanted[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(StorageObject.content_type.like(f"{family}%", escape="\\"))
        else:
            query = query.where(func.split_part(StorageObject.content_type, ";", 1) == media_type(wanted))
    with uow:
        page = keyset_page(uow.session, query, StorageObject.id, cursor=cursor, limit=limit, descending=True)
        rows = [_stored_file(row) for row in page.items]
    settings = get_settings()
    return Page(items=[plain(settings, row) for row in rows], next_cursor=page.next_cursor)


def restorable_until(settings: Settings, row: StorageObject | StoredFile) -> datetime | None:
    if row.status != FileStatus.DELETED or row.deleted_at is None:
        return None
    return row.deleted_at + timedelta(days=settings.file_restore_days)


def plain(settings: Settings, row: StoredFile) -> FileView:
    """A file without a download URL (lists, and the answers of writes)."""
    return FileView(row, None, None, restorable_until(settings, row))


def view(settings: Settings, storage: Storage, row: StoredFile, *, now: datetime | None = None) -> FileView:
    """A file as the API shows it: READY files carry a short-lived download URL."""
    if row.status != FileStatus.READY:
        return FileView(row, None, None, restorable_until(settings, row))
    expires_in = settings.file_download_expiry_seconds
    url = storage.presign_get(row.key, expires_in=expires_in, filename=row.original_name, content_type=row.content_type)
    return FileView(row, url, (now or utcnow()) + timedelta(seconds=expires_in), None)


def get_file(
    uow: UnitOfWork, storage: Storage, user_id: uuid.UUID, file_id: uuid.UUID, *, now: datetime | None = None
) -> FileView:
    with uow:
        row = _stored_file(_owned(uow.session, user_id, file_id))
    return view(get_settings(), storage, row, now=now)


def usage(uow: UnitOfWork, user_id: uuid.UUID, *, now: datetime | None = None) -> Usage:
    settings = get_settings()
    with uow:
        user = uow.session.get(User, user_id)
        if user is None:
            raise NotFound("no such user")
        used, files = _used(uow.session, settings, user_id, now or utcnow())
        return Usage(used, quota_for(settings, user.tier), files, max_file_for(settings, user.tier), user.tier)


# --- delete and restore ------------------------------------------------------------------------------------------
def delete_file(uow: UnitOfWork, user_id: uuid.UUID, file_id: uuid.UUID, *, now: datetime | None = None) -> None:
    """Soft delete: the file stops counting and downloading; it can be restored for FILE_RESTORE_DAYS."""
    now = now or utcnow()
    with uow:
        row = _owned(uow.session, user_id, file_id, lock=True)
        if row.status != FileStatus.DELETED:  # deleting again changes nothing (nor the restore deadline)
            row.status = FileStatus.DELETED
            row.deleted_at = now
            row.updated_at = now
        uow.commit()


def restore_file(uow: UnitOfWork, user_id: uuid.UUID, file_id: uuid.UUID, *, now: datetime | None = None) -> FileView:
    """Undo a soft delete within FILE_RESTORE_DAYS, if the quota still has room for the file."""
    settings = get_settings()
    now = now or utcnow()
    with uow:
        session = uow.session
        user = _lock_user(session, user_id)  # first, as every admission of bytes does (no lock-order cycle)
        row = _owned(session, user_id, file_id, lock=True)
        if row.status != FileStatus.DELETED:
            return plain(settings, _written(uow, row))
        deadline = restorable_until(settings, row)
        if deadline is None or now >= deadline:
            raise RestoreWindowPassed(
                f"files can be restored for {settings.file_restore_days} days after deletion",
                details={"file_id": str(file_id), "restorable_until": deadline.isoformat() if deadline else None},
            )
        completed = row.completed_at is not None
        if not completed and now >= complete_by(settings, row.created_at):
            raise RestoreWindowPassed(
                "the file's upload was never completed and can no longer be", details={"file_id": str(file_id)}
            )
        _admit(session, settings, user, row.size, now)
        row.status = FileStatus.READY if completed else FileStatus.PENDING
        row.deleted_at = None
        row.updated_at = now
        written = _written(uow, row)
        uow.commit()
    return plain(settings, written)


# --- removal (Retention, erasure) ----------------------------------------------------------------------------------
def purgeable_condition(settings: Settings, now: datetime) -> ColumnElement[bool]:
    """Rows whose object and row may go: deleted past the restore window, or uploads past completion whose form
    has expired (each PURGE_MARGIN more, so no restore, completion or upload admitted in time is in flight)."""
    return or_(
        and_(
            StorageObject.status == FileStatus.DELETED,
            StorageObject.deleted_at < now - timedelta(days=settings.file_restore_days) - PURGE_MARGIN,
        ),
        and_(
            StorageObject.status == FileStatus.PENDING,
            StorageObject.created_at < now - timedelta(minutes=settings.file_upload_complete_minutes) - PURGE_MARGIN,
            # and its form can no longer upload: bytes arriving after the row went would be an object no row names
            StorageObject.upload_expires_at < now - PURGE_MARGIN,
        ),
    )


@dataclass(frozen=True, slots=True)
class StoredRef:
    id: uuid.UUID
    provider: str
    bucket: str
    key: str


def purgeable(session: Session, settings: Settings, storage: Storage, now: datetime, limit: int) -> list[StoredRef]:
    """The next `limit` rows of `storage` that may go (a plain read: no lock is taken)."""
    rows = session.execute(
        select(StorageObject.id, StorageObject.provider, StorageObject.bucket, StorageObject.key)
        .where(
            purgeable_condition(settings, now),
            StorageObject.provider == storage.provider,
            StorageObject.bucket == storage.bucket,
        )
        .order_by(StorageObject.id)
        .limit(limit)
    ).all()
    return [StoredRef(r.id, r.provider, r.bucket, r.key) for r in rows]


def purge(
    uow: UnitOfWork,
    storage: Storage,
    refs: Sequence[StoredRef],
    *,
    condition: ColumnElement[bool] | None = None,
) -> int:
    """Delete the objects of `refs` from the store, then their rows (those still meeting `condition`).

    Objects first: a failure leaves rows that the next run finds again, never an object no row names. Call it
    outside any transaction (the store is slow next to a row lock)."""
    mine = [r for r in refs if r.provider == storage.provider and r.bucket == storage.bucket]
    if not mine:
        return 0
    storage.delete([r.key for r in mine])
    with uow:
        statement = delete(StorageObject).where(StorageObject.id.in_([r.id for r in mine]))
        if condition is not None:
            statement = statement.where(condition)
        removed = int(getattr(uow.session.execute(statement), "rowcount", 0) or 0)
        uow.commit()
    return removed


def erase_user_files(uow: UnitOfWork, storage: Storage, user_id: uuid.UUID, *, batch: int = 1000) -> int:
    """GDPR erasure: every object and row of the user's files, whatever their status; how many went."""
    removed = 0
    while True:
        with uow:
            rows = uow.session.execute(
                select(StorageObject.id, StorageObject.provider, StorageObject.bucket, StorageObject.key)
                .where(StorageObject.user_id == user_id)
                .order_by(StorageObject.id)
                .limit(batch)
            ).all()
        refs = [StoredRef(r.id, r.provider, r.bucket, r.key) for r in rows]
        if not refs:
            return removed
        gone = purge(uow, storage, refs)
        removed += gone
        if gone < len(refs):  # rows of another store (the backend changed): not this store's to erase
            return removed

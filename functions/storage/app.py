"""Files (API.md "Files"): presigned uploads straight to the store, completion, the caller's list, one file with a
short-lived download URL, soft delete and restore, and usage against the tier's quota. Each route validates its
input, calls one service function, returns a model."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, Field, StrictInt, StringConstraints

from tollgate.db import UnitOfWork
from tollgate.http.api import create_app, current_principal
from tollgate.http.edge import Cursor, Limit, StrictBody, documented_errors
from tollgate.observability import logger, metrics, tracer
from tollgate.services import files
from tollgate.storage import get_storage

app = create_app("storage")

FileName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
ContentType = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=3, max_length=255, pattern=r"^[\x21-\x7e][\x20-\x7e]*$")
]
ContentTypeFilter = Annotated[str | None, Query(max_length=255, pattern=r"^[\x21-\x7e]+$")]
MAX_DECLARED_BYTES = 5 * 2**40  # far past any tier's limit: the service answers file_too_large with the limit


# --- bodies ---------------------------------------------------------------------------------------------------
class UploadIn(StrictBody):
    name: FileName
    content_type: ContentType
    size: StrictInt = Field(ge=1, le=MAX_DECLARED_BYTES)  # a count of bytes: never "5", 1.0 or true
    metadata: dict[str, Any] | None = None


# --- answers --------------------------------------------------------------------------------------------------
class PresignedPostOut(BaseModel):
    url: str
    fields: dict[str, str]


class UploadOut(BaseModel):
    file_id: uuid.UUID
    upload: PresignedPostOut
    expires_at: datetime
    complete_by: datetime


class FileOut(BaseModel):
    id: uuid.UUID
    name: str
    pathname: str
    content_type: str
    size: int
    status: str
    checksum: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    deleted_at: datetime | None
    restorable_until: datetime | None
    download_url: str | None = None
    download_expires_at: datetime | None = None


class FilePageOut(BaseModel):
    items: list[FileOut]
    next_cursor: str | None


class UsageOut(BaseModel):
    used_bytes: int
    quota_bytes: int
    files: int
    max_file_bytes: int
    tier: str


def _file_out(view: files.FileView) -> FileOut:
    f = view.file
    return FileOut(
        id=f.id,
        name=f.original_name,
        pathname=f.pathname,
        content_type=f.content_type,
        size=f.size,
        status=f.status,
        checksum=f.checksum,
        metadata=f.metadata,
        created_at=f.created_at,
        updated_at=f.updated_at,
        completed_at=f.completed_at,
        deleted_at=f.deleted_at,
        restorable_until=view.restorable_until,
        download_url=view.download_url,
        download_expires_at=view.download_expires_at,
    )


# --- routes ---------------------------------------------------------------------------------------------------
@app.post(
    "/files",
    summary="Start an upload: a presigned POST for the browser, and the file, PENDING",
    responses=documented_errors(
        {
            413: "quota_exceeded (details: used, quota, requested) or file_too_large",
            415: "content_type_not_allowed",
        },
        success=201,
    ),
)
def start_upload(body: UploadIn) -> tuple[UploadOut, int]:
    principal = current_principal(app)
    upload = files.start_upload(
        UnitOfWork(),
        get_storage(),
        principal.user_id,
        name=body.name,
        content_type=body.content_type,
        size=body.size,
        metadata=body.metadata,
    )
    out = UploadOut(
        file_id=upload.file.id,
        upload=PresignedPostOut(url=upload.post.url, fields=upload.post.fields),
        expires_at=upload.post.expires_at,
        complete_by=upload.complete_by,
    )
    return out, 201


@app.post(
    "/files/<file_id>/complete",
    summary="Complete an upload: the store must hold the declared size and type; the file becomes READY",
    responses=documented_errors({404: "file_not_found", 409: "upload_incomplete or upload_expired"}),
)
def complete_upload(file_id: uuid.UUID) -> FileOut:
    principal = current_principal(app)
    return _file_out(files.complete_upload(UnitOfWork(), get_storage(), principal.user_id, file_id))


@app.get("/files", summary="The caller's files, newest first")
def list_files(
    cursor: Cursor = None,
    limit: Limit = 20,
    content_type: ContentTypeFilter = None,
    include_deleted: Annotated[bool, Query()] = False,
) -> FilePageOut:
    principal = current_principal(app)
    page = files.list_files(
        UnitOfWork(),
        principal.user_id,
        limit=limit,
        cursor=cursor,
        content_type=content_type,
        include_deleted=include_deleted,
    )
    return FilePageOut(items=[_file_out(f) for f in page.items], next_cursor=page.next_cursor)


@app.get("/files/usage", summary="Bytes the caller's files take against their tier's quota")
def usage() -> UsageOut:
    principal = current_principal(app)
    found = files.usage(UnitOfWork(), principal.user_id)
    return UsageOut(
        used_bytes=found.used_bytes,
        quota_bytes=found.quota_bytes,
        files=found.files,
        max_file_bytes=found.max_file_bytes,
        tier=found.tier,
    )


@app.get(
    "/files/<file_id>",
    summary="One file; a READY one carries a short-lived download URL",
    responses=documented_errors({404: "file_not_found"}),
)
def get_file(file_id: uuid.UUID) -> FileOut:
    principal = current_principal(app)
    return _file_out(files.get_file(UnitOfWork(), get_storage(), principal.user_id, file_id))


@app.delete(
    "/files/<file_id>",
    summary="Soft delete: restorable for FILE_RESTORE_DAYS",
    responses=documented_errors({404: "file_not_found"}, success=204),
)
def delete_file(file_id: uuid.UUID) -> Response[str]:
    principal = current_principal(app)
    files.delete_file(UnitOfWork(), principal.user_id, file_id)
    return Response(status_code=204, body="")


@app.post(
    "/files/<file_id>/restore",
    summary="Restore a soft-deleted file within FILE_RESTORE_DAYS",
    responses=documented_errors({404: "file_not_found", 409: "restore_window_passed", 413: "quota_exceeded"}),
)
def restore_file(file_id: uuid.UUID) -> FileOut:
    principal = current_principal(app)
    return _file_out(files.restore_file(UnitOfWork(), principal.user_id, file_id))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)

"""Audit (API.md "Back office"): the audit trail (admins read it, newest first, with filters) and workspace
features (admins create, change and delete them; anyone reads a workspace's list). Each route validates its
input, calls one service function and returns a typed model."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from tollgate.db import UnitOfWork
from tollgate.errors import ValidationFailed
from tollgate.http.api import create_app, current_actor
from tollgate.http.edge import Cursor, Limit, OptionalTimestampQuery, StrictBody, documented_errors
from tollgate.models.features import (
    DESCRIPTION_MAX_LENGTH,
    MAX_TAGS,
    NAME_MAX_LENGTH,
    TAG_MAX_LENGTH,
    WORKSPACE_ID_MAX_LENGTH,
)
from tollgate.observability import logger, metrics, tracer
from tollgate.services import audit_trail, features

app = create_app("audit")

WORKSPACE_ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{WORKSPACE_ID_MAX_LENGTH - 1}}}$"
WorkspaceId = Annotated[str, StringConstraints(pattern=WORKSPACE_ID_PATTERN)]


def _visible(limit: int) -> AfterValidator:
    """One spelling per name: NFC, and nothing a reader cannot see (control, format, bidi, zero-width, separators
    other than the space), so no name or tag reads the same as another one that differs from it. The bound is
    checked again on the NFC form, which can be longer than what was sent."""

    def check(value: str) -> str:
        value = unicodedata.normalize("NFC", value)
        if not value.isprintable():
            raise ValueError("may not contain control or invisible characters")
        if len(value) > limit:
            raise ValueError(f"at most {limit} characters (in NFC)")
        return value

    return AfterValidator(check)


FeatureName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_MAX_LENGTH),
    _visible(NAME_MAX_LENGTH),
]
Description = Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX_LENGTH)]
Tag = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=TAG_MAX_LENGTH), _visible(TAG_MAX_LENGTH)
]
Tags = Annotated[list[Tag], Field(max_length=MAX_TAGS)]
# Action and resource names the services write: dotted lower-case words.
Name = Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9_.:-]{0,63}$")]


# --- bodies ---------------------------------------------------------------------------------------------------
class FeatureIn(StrictBody):
    workspace_id: WorkspaceId
    name: FeatureName
    description: Description | None = None
    tags: Tags = Field(default_factory=list)


class FeaturePatch(StrictBody):
    workspace_id: WorkspaceId | None = None
    name: FeatureName | None = None
    description: Description | None = None
    tags: Tags | None = None


# --- answers --------------------------------------------------------------------------------------------------
class AuditLogOut(BaseModel):
    id: uuid.UUID
    created_at: datetime
    actor_id: uuid.UUID | None
    action: str
    resource: str
    resource_id: str | None
    old_values: dict[str, Any] | None
    new_values: dict[str, Any] | None
    details: dict[str, Any]
    ip_address: str | None
    user_agent: str | None


class AuditLogPageOut(BaseModel):
    items: list[AuditLogOut]
    next_cursor: str | None


class FeatureOut(BaseModel):
    id: uuid.UUID
    workspace_id: str
    name: str
    description: str | None
    tags: list[str]
    created_at: datetime
    updated_at: datetime


class FeaturePageOut(BaseModel):
    items: list[FeatureOut]
    next_cursor: str | None


def _feature_out(view: features.FeatureView) -> FeatureOut:
    return FeatureOut(
        id=view.id, workspace_id=view.workspace_id, name=view.name, description=view.description, tags=view.tags,
        created_at=view.created_at, updated_at=view.updated_at,
    )  # fmt: skip


def _audit_out(e: audit_trail.AuditEntry) -> AuditLogOut:
    return AuditLogOut(
        id=e.id, created_at=e.created_at, actor_id=e.actor_id, action=e.action, resource=e.resource,
        resource_id=e.resource_id, old_values=e.old_values, new_values=e.new_values, details=e.details,
        ip_address=e.ip_address, user_agent=e.user_agent,
    )  # fmt: skip


# --- the audit trail ------------------------------------------------------------------------------------------
@app.get(
    "/admin/audit-logs",
    summary="The audit trail, newest first: admin and support actions and security events",
    responses=documented_errors({400: "invalid_cursor", 403: "forbidden", 422: "validation_error"}),
)
def list_audit_logs(
    actor_id: Annotated[uuid.UUID | None, Query()] = None,
    resource: Name = None,
    resource_id: Annotated[str | None, Query(min_length=1, max_length=255)] = None,
    action: Name = None,
    since: OptionalTimestampQuery = None,
    until: OptionalTimestampQuery = None,
    cursor: Cursor = None,
    limit: Limit = 20,
) -> AuditLogPageOut:
    where = audit_trail.AuditFilter(
        actor_id=actor_id, resource=resource, resource_id=resource_id, action=action, since=since, until=until
    )
    page = audit_trail.list_audit_logs(UnitOfWork(), current_actor(app), where, cursor=cursor, limit=limit)
    return AuditLogPageOut(items=[_audit_out(e) for e in page.items], next_cursor=page.next_cursor)


# --- workspace features ---------------------------------------------------------------------------------------
@app.get("/workspaces/<workspace_id>/features", summary="A workspace's features, by name (public)")
def list_workspace_features(
    workspace_id: Annotated[str, Path(pattern=WORKSPACE_ID_PATTERN)], cursor: Cursor = None, limit: Limit = 20
) -> FeaturePageOut:
    page = features.list_workspace_features(UnitOfWork(), workspace_id, cursor=cursor, limit=limit)
    return FeaturePageOut(items=[_feature_out(f) for f in page.items], next_cursor=page.next_cursor)


@app.post(
    "/admin/features",
    summary="Add a feature to a workspace",
    responses=documented_errors({403: "forbidden", 409: "feature_name_taken"}, success=201),
)
def create_feature(body: FeatureIn) -> tuple[FeatureOut, int]:
    view = features.create_feature(
        UnitOfWork(), current_actor(app), workspace_id=body.workspace_id, name=body.name,
        description=body.description, tags=list(body.tags),
    )  # fmt: skip
    return _feature_out(view), 201


@app.patch(
    "/admin/features/<feature_id>",
    summary="Change a feature: only the fields given (description may be null)",
    responses=documented_errors({403: "forbidden", 404: "feature_not_found", 409: "feature_name_taken"}),
)
def update_feature(feature_id: uuid.UUID, body: FeaturePatch) -> FeatureOut:
    given = body.model_fields_set
    nulls = sorted(f for f in given - {"description"} if getattr(body, f) is None)
    if nulls:
        raise ValidationFailed("these fields cannot be null", details={"fields": nulls})
    changes = features.FeatureChanges(
        workspace_id=body.workspace_id, name=body.name, description=body.description,
        description_given="description" in given, tags=None if body.tags is None else list(body.tags),
    )  # fmt: skip
    return _feature_out(features.update_feature(UnitOfWork(), current_actor(app), feature_id, changes))


@app.delete(
    "/admin/features/<feature_id>",
    summary="Delete a feature (the audit trail keeps what it was)",
    responses=documented_errors({403: "forbidden", 404: "feature_not_found"}, success=204),
)
def delete_feature(feature_id: uuid.UUID) -> Response[str]:
    features.delete_feature(UnitOfWork(), current_actor(app), feature_id)
    return Response(status_code=204, body="")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)

"""Workspace features (seeds 002/003 `Feature`): admins create, change and delete them (each change audited with
its old and new values, in its transaction); anyone reads a workspace's list, by name.

`workspace_id` is an opaque identifier of the product's choosing (no workspaces table exists): 1-64 characters of
letters, digits and `_ . : -`, starting with a letter or digit. Names are unique inside a workspace whatever their
case (409 `feature_name_taken`); names and tags arrive NFC-normalised with no control or invisible characters (the
edge's rule: a look-alike of another name is refused); tags are trimmed, de-duplicated in order, at most 20 of
1-50 characters.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import FeatureNameTaken, FeatureNotFound
from tollgate.models.features import Feature
from tollgate.pagination import Page, keyset_page
from tollgate.services import authz
from tollgate.services.authz import ADMIN, Actor, require_role

RESOURCE = "feature"
NAME_CONSTRAINT = "uq_features_workspace_id_name"


@dataclass(frozen=True, slots=True)
class FeatureView:
    id: uuid.UUID
    workspace_id: str
    name: str
    description: str | None
    tags: list[str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, f: Feature) -> FeatureView:
        return cls(f.id, f.workspace_id, f.name, f.description, list(f.tags or []), f.created_at, f.updated_at)


@dataclass(frozen=True, slots=True)
class FeatureChanges:
    """A PATCH: only the fields given change (`description` may be set to None)."""

    workspace_id: str | None = None
    name: str | None = None
    description: str | None = None
    description_given: bool = False
    tags: list[str] | None = None


def _tags(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


def _values(f: Feature) -> dict[str, Any]:
    return {"workspace_id": f.workspace_id, "name": f.name, "description": f.description, "tags": list(f.tags)}


def _taken(exc: IntegrityError) -> bool:
    return NAME_CONSTRAINT in str(exc.orig)


def create_feature(
    uow: UnitOfWork, actor: Actor, *, workspace_id: str, name: str, description: str | None, tags: list[str]
) -> FeatureView:
    require_role(actor, ADMIN)
    with uow:
        feature = Feature(workspace_id=workspace_id, name=name, description=description, tags=_tags(tags))
        uow.session.add(feature)
        try:
            uow.session.flush()
        except IntegrityError as exc:
            if _taken(exc):
                raise FeatureNameTaken(
                    "this workspace already has a feature of that name",
                    details={"workspace_id": workspace_id, "name": name},
                ) from None
            raise
        authz.audit(
            uow.session, actor, action="feature.create", target_type=RESOURCE, target_id=str(feature.id),
            new_values=_values(feature),
        )  # fmt: skip
        view = FeatureView.of(feature)
        uow.commit()
        return view


def _locked(uow: UnitOfWork, feature_id: uuid.UUID) -> Feature:
    feature = uow.session.execute(select(Feature).where(Feature.id == feature_id).with_for_update()).scalar()
    if feature is None:
        raise FeatureNotFound("no such feature", details={"feature_id": str(feature_id)})
    return feature


def update_feature(uow: UnitOfWork, actor: Actor, feature_id: uuid.UUID, changes: FeatureChanges) -> FeatureView:
    require_role(actor, ADMIN)
    with uow:
        feature = _locked(uow, feature_id)
        before = _values(feature)
        if changes.workspace_id is not None:
            feature.workspace_id = changes.workspace_id
        if changes.name is not None:
            feature.name = changes.name
        if changes.description_given:
            feature.description = changes.description
        if changes.tags is not None:
            feature.tags = _tags(changes.tags)
        after = _values(feature)
        if after != before:
            feature.updated_at = utcnow()
            try:
                uow.session.flush()
            except IntegrityError as exc:
                if _taken(exc):  # the failed flush expired `feature`: name it from `after`
                    raise FeatureNameTaken(
                        "this workspace already has a feature of that name",
                        details={"workspace_id": after["workspace_id"], "name": after["name"]},
                    ) from None
                raise
            changed = [key for key in after if after[key] != before[key]]
            authz.audit(
                uow.session, actor, action="feature.update", target_type=RESOURCE, target_id=str(feature_id),
                old_values={k: before[k] for k in changed}, new_values={k: after[k] for k in changed},
            )  # fmt: skip
        view = FeatureView.of(feature)
        uow.commit()
        return view


def delete_feature(uow: UnitOfWork, actor: Actor, feature_id: uuid.UUID) -> None:
    require_role(actor, ADMIN)
    with uow:
        feature = _locked(uow, feature_id)
        before = _values(feature)
        uow.session.delete(feature)
        uow.session.flush()
        authz.audit(
            uow.session, actor, action="feature.delete", target_type=RESOURCE, target_id=str(feature_id),
            old_values=before,
        )  # fmt: skip
        uow.commit()


def list_workspace_features(
    uow: UnitOfWork, workspace_id: str, *, cursor: str | None, limit: int | None
) -> Page[FeatureView]:
    """A workspace's features by name (public: no caller needed). An unknown workspace has none."""
    with uow:
        statement = select(Feature).where(Feature.workspace_id == workspace_id)
        page = keyset_page(uow.session, statement, Feature.name, Feature.id, cursor=cursor, limit=limit)
        return Page([FeatureView.of(f) for f in page.items], page.next_cursor)

"""Workspace features (seeds 002/003 `Feature`): what a workspace's product offers, listed publicly.

There is no workspaces table: `workspace_id` is an opaque, bounded identifier the product chooses (seed 003 keeps
it a plain string with no foreign key). A name is unique inside its workspace, whatever its case. Migration
`0022_audit_trail` creates the table.
"""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from tollgate.db.base import Base, CreatedAt, UpdatedAt, UUIDPk

WORKSPACE_ID_MAX_LENGTH = 64
NAME_MAX_LENGTH = 200
DESCRIPTION_MAX_LENGTH = 2000
TAG_MAX_LENGTH = 50
MAX_TAGS = 20


class Feature(Base):
    __tablename__ = "features"
    __table_args__ = (
        # One name per workspace whatever its case ("Search" and "search" would read as one in the public list).
        Index("uq_features_workspace_id_name", "workspace_id", func.lower(text("name")), unique=True),
        Index("ix_features_workspace_id_name", "workspace_id", "name", "id"),  # the public list, by name
        CheckConstraint(f"cardinality(tags) <= {MAX_TAGS}", name="tags"),
    )

    id: Mapped[UUIDPk]
    workspace_id: Mapped[str] = mapped_column(String(WORKSPACE_ID_MAX_LENGTH))
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    description: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(TAG_MAX_LENGTH)), default=list, server_default="{}")
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]

"""Files: storage_objects, one row per uploaded object (seed 001 File + seeds 002/003 StorageObject), soft delete.

Revision ID: 0014_storage_objects
Revises: 0001_users
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014_storage_objects"
down_revision: str | Sequence[str] | None = "0001_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "storage_objects",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("bucket", sa.String(255), nullable=False, server_default=""),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("pathname", sa.String(255), nullable=False),
        sa.Column("original_name", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(128)),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("status", sa.String(16), nullable=False, server_default="PENDING"),
        sa.Column("upload_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_objects")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], ondelete="CASCADE", name=op.f("fk_storage_objects_user_id_users")
        ),
        sa.UniqueConstraint("provider", "bucket", "key", name="uq_storage_objects_provider_bucket_key"),
        sa.CheckConstraint("status IN ('PENDING', 'READY', 'DELETED')", name=op.f("ck_storage_objects_status")),
        sa.CheckConstraint("size > 0", name=op.f("ck_storage_objects_size")),
        sa.CheckConstraint("provider IN ('s3', 'local')", name=op.f("ck_storage_objects_provider")),
        sa.CheckConstraint(
            "(status = 'DELETED') = (deleted_at IS NOT NULL)", name=op.f("ck_storage_objects_deleted_at")
        ),
    )
    op.create_index("ix_storage_objects_user_id", "storage_objects", ["user_id", "id"])
    op.create_index(
        "ix_storage_objects_deleted_at",
        "storage_objects",
        ["deleted_at"],
        postgresql_where=sa.text("status = 'DELETED'"),
    )
    op.create_index(
        "ix_storage_objects_pending_created_at",
        "storage_objects",
        ["created_at"],
        postgresql_where=sa.text("status = 'PENDING'"),
    )


def downgrade() -> None:
    op.drop_table("storage_objects")

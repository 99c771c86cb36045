"""The vector extension and the users table.

Revision ID: 0001_users
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_users"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "users",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("email_verified_at", sa.DateTime(timezone=True)),
        sa.Column("name", sa.String(200)),
        sa.Column("username", sa.String(64)),
        sa.Column("image", sa.Text()),
        sa.Column("password_hash", sa.Text()),
        sa.Column("role", sa.String(16), nullable=False, server_default="USER"),
        sa.Column("status", sa.String(16), nullable=False, server_default="ACTIVE"),
        sa.Column("two_factor_enabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("clerk_id", sa.String(64)),
        sa.Column("stripe_customer_id", sa.String(64)),
        sa.Column("lemonsqueezy_customer_id", sa.String(64)),
        sa.Column("tier", sa.String(32), nullable=False, server_default="FREE"),
        sa.Column("trial_started_at", sa.DateTime(timezone=True)),
        sa.Column("trial_ends_at", sa.DateTime(timezone=True)),
        sa.Column("trial_used", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("downgrade_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
        sa.Column("language", sa.String(16), nullable=False, server_default="en"),
        sa.Column("last_login_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("role IN ('USER', 'SUPPORT', 'ADMIN')", name=op.f("ck_users_role")),
        sa.CheckConstraint("status IN ('ACTIVE', 'SUSPENDED', 'LOCKED')", name=op.f("ck_users_status")),
        sa.CheckConstraint("downgrade_count >= 0", name=op.f("ck_users_downgrade_count")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
        sa.UniqueConstraint("clerk_id", name=op.f("uq_users_clerk_id")),
        sa.UniqueConstraint("stripe_customer_id", name=op.f("uq_users_stripe_customer_id")),
        sa.UniqueConstraint("lemonsqueezy_customer_id", name=op.f("uq_users_lemonsqueezy_customer_id")),
    )
    op.create_index("uq_users_email_lower", "users", [sa.text("lower(email)")], unique=True)


def downgrade() -> None:
    op.drop_index("uq_users_email_lower", table_name="users")
    op.drop_table("users")
    # The extension stays if another schema object still uses it.
    op.execute("DROP EXTENSION IF EXISTS vector")

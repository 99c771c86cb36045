"""User management and GDPR erasure: seed 004's DELETED status, which an erased account takes for good (the
authorizer and sign-in admit only ACTIVE and LOCKED accounts), and an index for the admin user list (newest
first).

Revision ID: 0021_user_admin
Revises: 0018_plan_changes
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021_user_admin"
down_revision: str | Sequence[str] | None = "0018_plan_changes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(op.f("ck_users_status"), "users", type_="check")
    op.create_check_constraint(
        op.f("ck_users_status"), "users", "status IN ('ACTIVE', 'SUSPENDED', 'LOCKED', 'DELETED')"
    )
    op.create_index("ix_users_created_at_id", "users", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_users_created_at_id", table_name="users")
    # An erased account keeps its erasure as SUSPENDED under the older rule (it still has deleted_at).
    op.execute("UPDATE users SET status = 'SUSPENDED' WHERE status = 'DELETED'")
    op.drop_constraint(op.f("ck_users_status"), "users", type_="check")
    op.create_check_constraint(op.f("ck_users_status"), "users", "status IN ('ACTIVE', 'SUSPENDED', 'LOCKED')")

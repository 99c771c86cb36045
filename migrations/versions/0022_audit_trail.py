"""The audit trail and workspace features: audit_logs gets seed 004's old and new values, IP address and user
agent as columns, the read indexes of GET /admin/audit-logs, and the append-only trigger of
migrations/sql/audit; `features` (seeds 002/003) is created. Downgrading drops them again (the rows' old and new
values go with their columns).

Revision ID: 0022_audit_trail
Revises: 0002_ledger
Create Date: 2026-12-02
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0022_audit_trail"
# audit_logs is created by 0002_ledger; nothing else here depends on another branch.
down_revision: str | Sequence[str] | None = "0002_ledger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL_DIR = Path(__file__).resolve().parents[1] / "sql" / "audit"
FUNCTIONS = ("tollgate_audit_immutable.v1",)

DROP_FUNCTIONS = """
DROP TRIGGER audit_logs_no_truncate ON audit_logs;
DROP TRIGGER audit_logs_immutable ON audit_logs;
DROP FUNCTION tollgate_audit_immutable();
"""


def _sql(names: Sequence[str]) -> str:
    return "\n".join((SQL_DIR / f"{name}.sql").read_text(encoding="utf-8") for name in names)


def upgrade() -> None:
    op.add_column("audit_logs", sa.Column("old_values", postgresql.JSONB()))
    op.add_column("audit_logs", sa.Column("new_values", postgresql.JSONB()))
    op.add_column("audit_logs", sa.Column("ip_address", sa.String(64)))
    op.add_column("audit_logs", sa.Column("user_agent", sa.String(512)))
    op.create_index("ix_audit_logs_action", "audit_logs", ["action", "created_at"])
    op.create_index("ix_audit_logs_created_at", "audit_logs", ["created_at", "id"])
    op.execute(_sql(FUNCTIONS))

    op.create_table(
        "features",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("tags", postgresql.ARRAY(sa.String(50)), nullable=False, server_default="{}"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_features")),
        sa.CheckConstraint("cardinality(tags) <= 20", name=op.f("ck_features_tags")),
    )
    # One name per workspace whatever its case ("Search" and "search" would read as one in the public list);
    # the public list's own order (name, id) has its index.
    op.create_index("uq_features_workspace_id_name", "features", ["workspace_id", sa.text("lower(name)")], unique=True)
    op.create_index("ix_features_workspace_id_name", "features", ["workspace_id", "name", "id"])


def downgrade() -> None:
    op.drop_table("features")
    op.execute(DROP_FUNCTIONS)
    op.drop_index("ix_audit_logs_created_at", table_name="audit_logs")
    op.drop_index("ix_audit_logs_action", table_name="audit_logs")
    op.drop_column("audit_logs", "user_agent")
    op.drop_column("audit_logs", "ip_address")
    op.drop_column("audit_logs", "new_values")
    op.drop_column("audit_logs", "old_values")

"""The support desk and run-time settings (seed 004): `support_tickets` (customer, assignee, status, priority),
`ticket_messages` (public replies and internal notes) and `system_config` (typed key/value settings; the database
refuses a value that is not of its type). Downgrading drops them (tickets and settings go with them).

Revision ID: 0020_support
Revises: 0001_users
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0020_support"
# Only users is needed (customers, assignees, authors, who changed a setting).
down_revision: str | Sequence[str] | None = "0001_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.func.now()
NUMBER_TEXT = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?$"


def _ts(name: str, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    if nullable:
        return sa.Column(name, sa.DateTime(timezone=True))
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=NOW)


def upgrade() -> None:
    op.create_table(
        "support_tickets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.Column("assignee_id", sa.Uuid()),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="OPEN"),
        sa.Column("priority", sa.String(16), nullable=False, server_default="MEDIUM"),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("resolved_at", nullable=True),
        _ts("closed_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_support_tickets")),
        sa.ForeignKeyConstraint(["customer_id"], ["users.id"], name=op.f("fk_support_tickets_customer_id_users")),
        sa.ForeignKeyConstraint(["assignee_id"], ["users.id"], name=op.f("fk_support_tickets_assignee_id_users")),
        sa.CheckConstraint(
            "status IN ('OPEN', 'IN_PROGRESS', 'RESOLVED', 'CLOSED')", name=op.f("ck_support_tickets_status")
        ),
        sa.CheckConstraint("priority IN ('LOW', 'MEDIUM', 'HIGH', 'URGENT')", name=op.f("ck_support_tickets_priority")),
    )
    op.create_index("ix_support_tickets_customer_id", "support_tickets", ["customer_id", "id"])
    op.create_index("ix_support_tickets_status", "support_tickets", ["status", "id"])
    op.create_index("ix_support_tickets_assignee_id", "support_tickets", ["assignee_id", "id"])

    op.create_table(
        "ticket_messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("ticket_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("is_internal", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("from_staff", sa.Boolean(), nullable=False, server_default="false"),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ticket_messages")),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["support_tickets.id"], ondelete="CASCADE",
            name=op.f("fk_ticket_messages_ticket_id_support_tickets"),
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_ticket_messages_user_id_users")),
        # An internal note is always the staff's.
        sa.CheckConstraint("NOT (is_internal AND NOT from_staff)", name=op.f("ck_ticket_messages_internal_is_staff")),
    )  # fmt: skip
    op.create_index("ix_ticket_messages_ticket_id", "ticket_messages", ["ticket_id", "id"])

    op.create_table(
        "system_config",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("description", sa.String(500)),
        sa.Column("updated_by", sa.Uuid()),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_system_config")),
        sa.UniqueConstraint("key", name="uq_system_config_key"),
        sa.ForeignKeyConstraint(["updated_by"], ["users.id"], name=op.f("fk_system_config_updated_by_users")),
        sa.CheckConstraint("type IN ('string', 'number', 'boolean', 'json')", name=op.f("ck_system_config_type")),
        # The value is the canonical text of its type (tollgate/system_config.py writes it so).
        sa.CheckConstraint(
            f"CASE type WHEN 'number' THEN value ~ '{NUMBER_TEXT}' "
            "WHEN 'boolean' THEN value IN ('true', 'false') "
            "WHEN 'json' THEN value IS JSON "
            "ELSE true END",
            name=op.f("ck_system_config_value_matches_type"),
        ),
    )


def downgrade() -> None:
    op.drop_table("system_config")
    op.drop_index("ix_ticket_messages_ticket_id", table_name="ticket_messages")
    op.drop_table("ticket_messages")
    op.drop_index("ix_support_tickets_assignee_id", table_name="support_tickets")
    op.drop_index("ix_support_tickets_status", table_name="support_tickets")
    op.drop_index("ix_support_tickets_customer_id", table_name="support_tickets")
    op.drop_table("support_tickets")

"""Domain events out: outbox_events, webhook_endpoints and outbox_deliveries (one row per event and target), and
tollgate_spend_state (migrations/sql/outbox), the look-up credits.low / credits.depleted decide on after a spend.

Revision ID: 0015_outbox
Revises: 0001_users
Create Date: 2026-12-10
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015_outbox"
down_revision: str | Sequence[str] | None = "0001_users"
branch_labels: str | Sequence[str] | None = None
# tollgate_spend_state reads the ledger's tables: they must exist first.
depends_on: str | Sequence[str] | None = "0002_ledger"

SQL_DIR = Path(__file__).resolve().parents[1] / "sql" / "outbox"
FUNCTIONS = ("tollgate_spend_state.v1",)


def upgrade() -> None:
    op.create_table(
        "outbox_events",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Uuid()),
        sa.Column("data", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("dedupe_key", sa.String(255)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("dispatched_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_events")),
        sa.UniqueConstraint("dedupe_key", name="uq_outbox_events_dedupe_key"),
    )
    op.create_index(
        "ix_outbox_events_undispatched", "outbox_events", ["id"], postgresql_where=sa.text("dispatched_at IS NULL")
    )
    op.create_index("ix_outbox_events_user_id", "outbox_events", ["user_id", "id"])

    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.String(64)), nullable=False),
        sa.Column("secret_sealed", sa.Text(), nullable=False),
        sa.Column("description", sa.String(255), nullable=False, server_default=""),
        sa.Column("created_by", sa.Uuid()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index(
        "ix_webhook_endpoints_active", "webhook_endpoints", ["id"], postgresql_where=sa.text("deleted_at IS NULL")
    )

    op.create_table(
        "outbox_deliveries",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("endpoint_id", sa.Uuid()),
        sa.Column("status", sa.String(16), nullable=False, server_default="PENDING"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text()),
        sa.Column("last_status_code", sa.Integer()),
        sa.Column("last_response", sa.String(512)),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_deliveries")),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["outbox_events.id"],
            ondelete="CASCADE",
            name=op.f("fk_outbox_deliveries_event_id_outbox_events"),
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            ondelete="CASCADE",
            name=op.f("fk_outbox_deliveries_endpoint_id_webhook_endpoints"),
        ),
        sa.UniqueConstraint("event_id", "target", name="uq_outbox_deliveries_event_id"),
        sa.CheckConstraint("status IN ('PENDING', 'DELIVERED', 'DEAD')", name=op.f("ck_outbox_deliveries_status")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_outbox_deliveries_attempts")),
    )
    op.create_index(
        "ix_outbox_deliveries_due",
        "outbox_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    op.create_index("ix_outbox_deliveries_endpoint_id", "outbox_deliveries", ["endpoint_id", "id"])
    op.create_index(
        "ix_outbox_deliveries_dead", "outbox_deliveries", ["id"], postgresql_where=sa.text("status = 'DEAD'")
    )
    for name in FUNCTIONS:
        op.execute((SQL_DIR / f"{name}.sql").read_text(encoding="utf-8"))


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS tollgate_spend_state(uuid, timestamptz, integer)")
    op.drop_table("outbox_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_table("outbox_events")

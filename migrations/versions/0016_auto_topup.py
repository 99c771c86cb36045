"""Auto top-up: each user's setting (threshold, pack, monthly cap in the pack's currency) and the attempts it made,
numbered per user, at most one in flight per user (a partial unique index).

Revision ID: 0016_auto_topup
Revises: 0012_billing_sources
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_auto_topup"
down_revision: str | Sequence[str] | None = "0012_billing_sources"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "auto_topup_settings",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("threshold", sa.Numeric(18, 4), nullable=False),
        sa.Column("pack_id", sa.Uuid(), nullable=False),
        sa.Column("monthly_cap", sa.Numeric(14, 3), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("disabled_reason", sa.Text()),
        sa.Column("disabled_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_auto_topup_settings")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], ondelete="CASCADE", name=op.f("fk_auto_topup_settings_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["pack_id"], ["credit_packs.id"], name=op.f("fk_auto_topup_settings_pack_id_credit_packs")
        ),
        sa.CheckConstraint("threshold >= 0", name=op.f("ck_auto_topup_settings_threshold")),
        sa.CheckConstraint("monthly_cap > 0", name=op.f("ck_auto_topup_settings_monthly_cap")),
    )
    op.create_table(
        "auto_topup_attempts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="requested"),
        sa.Column("pack_id", sa.Uuid(), nullable=False),
        sa.Column("credits", sa.Numeric(18, 4), nullable=False),
        sa.Column("amount", sa.Numeric(14, 3), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("payment_intent_id", sa.String(255)),
        sa.Column("failure_code", sa.String(64)),
        sa.Column("failure_reason", sa.Text()),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auto_topup_attempts")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], ondelete="CASCADE", name=op.f("fk_auto_topup_attempts_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["pack_id"], ["credit_packs.id"], name=op.f("fk_auto_topup_attempts_pack_id_credit_packs")
        ),
        sa.UniqueConstraint("user_id", "sequence", name="uq_auto_topup_attempts_user_id_sequence"),
        sa.CheckConstraint(
            "status IN ('requested', 'processing', 'succeeded', 'failed')", name=op.f("ck_auto_topup_attempts_status")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_auto_topup_attempts_amount")),
    )
    op.create_index(
        "uq_auto_topup_attempts_in_flight",
        "auto_topup_attempts",
        ["user_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('requested', 'processing')"),
    )
    op.create_index("ix_auto_topup_attempts_user_id_created_at", "auto_topup_attempts", ["user_id", "created_at"])
    op.create_index(
        "ix_auto_topup_attempts_payment_intent_id",
        "auto_topup_attempts",
        ["payment_intent_id"],
        unique=True,
        postgresql_where=sa.text("payment_intent_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_table("auto_topup_attempts")
    op.drop_table("auto_topup_settings")

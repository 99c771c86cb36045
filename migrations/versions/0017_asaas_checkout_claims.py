"""Asaas checkouts claimed before Asaas is called: Asaas takes no idempotency header, so two identical checkouts
(the same buyer, item and Idempotency-Key) arriving together would both find no charge and both create one. The
first commits a claim on the charge's externalReference; a concurrent duplicate sees it and makes no call.

Revision ID: 0017_asaas_checkout_claims
Revises: 0012_billing_sources
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_asaas_checkout_claims"
down_revision: str | Sequence[str] | None = "0012_billing_sources"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "asaas_checkout_claims",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("reference", sa.String(128), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.String(64)),
        sa.Column("url", sa.Text()),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_asaas_checkout_claims_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_asaas_checkout_claims")),
        sa.UniqueConstraint("reference", name=op.f("uq_asaas_checkout_claims_reference")),
    )
    op.create_index("ix_asaas_checkout_claims_user_id", "asaas_checkout_claims", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_asaas_checkout_claims_user_id", table_name="asaas_checkout_claims")
    op.drop_table("asaas_checkout_claims")

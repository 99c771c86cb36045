"""The credit ledger: accounts, grants, the immutable transaction log, holds, draws; the catalogue (plans,
credit packs), the admin_settings singleton (feature costs, per-plan overrides) and audit_logs.

The hot paths of the ledger are plpgsql functions (one round trip per charge while the account row is
locked); see `tollgate.ledger` for the rules they implement.

Revision ID: 0002_ledger
Revises: 0001_users
Create Date: 2026-11-24
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_ledger"
down_revision: str | Sequence[str] | None = "0001_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CREDITS = sa.Numeric(18, 4)
MONEY = sa.Numeric(12, 2)
UUID = postgresql.UUID(as_uuid=True)
JSONB = postgresql.JSONB()

GRANT_KINDS = "('signup', 'purchase', 'allowance', 'promo', 'adjustment', 'refund')"
TRANSACTION_TYPES = (
    "('signup', 'usage', 'refund', 'purchase', 'monthly_allowance', 'promo', 'expiry', 'adjustment', "
    "'hold', 'capture', 'release', 'clawback')"
)


def _ts(name: str, *, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    if nullable:
        return sa.Column(name, sa.DateTime(timezone=True))
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


# The ledger's functions as this revision created them: frozen version-1 files (a later revision loads its own
# versions, and its downgrade loads these again).
SQL_DIR = Path(__file__).resolve().parents[1] / "sql" / "ledger"
FUNCTION_FILES = (
    "tollgate_ledger_immutable.v1",
    "tollgate_lock_account.v1",
    "tollgate_pricing.v1",
    "tollgate_plan_draw.v1",
    "tollgate_apply_draw.v1",
    "tollgate_charge.v1",
)
FUNCTIONS = "\n".join((SQL_DIR / f"{name}.sql").read_text(encoding="utf-8") for name in FUNCTION_FILES)

DROP_FUNCTIONS = """
DROP FUNCTION IF EXISTS tollgate_charge(uuid, uuid, text, numeric, numeric, text, text, jsonb, timestamptz);
DROP FUNCTION IF EXISTS tollgate_apply_draw(uuid, uuid, uuid, uuid, uuid[], numeric[], numeric, timestamptz);
DROP FUNCTION IF EXISTS tollgate_plan_draw(uuid, numeric, boolean, timestamptz);
DROP FUNCTION IF EXISTS tollgate_pricing(uuid, text);
DROP FUNCTION IF EXISTS tollgate_lock_account(uuid, timestamptz);
"""


def upgrade() -> None:
    # --- catalogue -------------------------------------------------------------------------------------------
    op.create_table(
        "plans",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("tier", sa.String(32), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("monthly_credits", CREDITS, nullable=False, server_default="0"),
        sa.Column("rollover", sa.String(16), nullable=False, server_default="none"),
        sa.Column("rollover_cap", CREDITS),
        sa.Column("price_monthly", MONEY, nullable=False, server_default="0"),
        sa.Column("price_yearly", MONEY, nullable=False, server_default="0"),
        sa.Column("currency", sa.String(3), nullable=False, server_default="usd"),
        sa.Column("features", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("badge", sa.String(50)),
        sa.Column("highlight", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("cta_type", sa.String(32)),
        sa.Column("cta_label", sa.String(100)),
        sa.Column("cta_url", sa.Text()),
        sa.Column("sort_order", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("billing_source", sa.String(32), nullable=False, server_default="stripe"),
        sa.Column("stripe_price_id_monthly", sa.String(255)),
        sa.Column("stripe_price_id_yearly", sa.String(255)),
        sa.Column("lemonsqueezy_variant_id_monthly", sa.String(64)),
        sa.Column("lemonsqueezy_variant_id_yearly", sa.String(64)),
        sa.Column("clerk_plan_id", sa.String(255)),
        sa.Column("asaas_id", sa.String(255)),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint("monthly_credits >= 0", name=op.f("ck_plans_monthly_credits")),
        sa.CheckConstraint("rollover IN ('none', 'capped', 'full')", name=op.f("ck_plans_rollover")),
        sa.CheckConstraint(
            "rollover <> 'capped' OR (rollover_cap IS NOT NULL AND rollover_cap >= 0)",
            name=op.f("ck_plans_rollover_cap"),
        ),
        sa.CheckConstraint("price_monthly >= 0 AND price_yearly >= 0", name=op.f("ck_plans_prices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
        sa.UniqueConstraint("tier", name=op.f("uq_plans_tier")),
    )
    op.create_table(
        "credit_packs",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("credits", CREDITS, nullable=False),
        sa.Column("price", MONEY, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False, server_default="usd"),
        sa.Column("expires_after_days", sa.Integer()),
        sa.Column("sort_order", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("stripe_price_id", sa.String(255)),
        sa.Column("lemonsqueezy_variant_id", sa.String(64)),
        sa.Column("asaas_id", sa.String(255)),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint("credits > 0", name=op.f("ck_credit_packs_credits")),
        sa.CheckConstraint("price >= 0", name=op.f("ck_credit_packs_price")),
        sa.CheckConstraint(
            "expires_after_days IS NULL OR expires_after_days > 0", name=op.f("ck_credit_packs_expires_after_days")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_packs")),
        sa.UniqueConstraint("name", name=op.f("uq_credit_packs_name")),
    )
    op.create_table(
        "admin_settings",
        # A singleton: its key is the constant 1 (no sequence), enforced by a CHECK.
        sa.Column("id", sa.SmallInteger(), primary_key=True, server_default="1"),
        sa.Column("feature_costs", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("plan_feature_costs", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("allow_bonus_auto_use_toggle", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("updated_by", UUID),
        _ts("updated_at"),
        sa.CheckConstraint("id = 1", name=op.f("ck_admin_settings_singleton")),
        sa.CheckConstraint("jsonb_typeof(feature_costs) = 'object'", name=op.f("ck_admin_settings_feature_costs")),
        sa.CheckConstraint(
            "jsonb_typeof(plan_feature_costs) = 'object'", name=op.f("ck_admin_settings_plan_feature_costs")
        ),
        sa.ForeignKeyConstraint(["updated_by"], ["users.id"], name=op.f("fk_admin_settings_updated_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_settings")),
    )
    op.execute("INSERT INTO admin_settings (id) VALUES (1)")
    op.create_table(
        "audit_logs",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("actor_id", UUID),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(64), nullable=False),
        sa.Column("target_id", sa.String(255)),
        sa.Column("details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["actor_id"], ["users.id"], name=op.f("fk_audit_logs_actor_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_logs")),
    )
    op.create_index("ix_audit_logs_target", "audit_logs", ["target_type", "target_id", "created_at"])
    op.create_index("ix_audit_logs_actor_id", "audit_logs", ["actor_id", "created_at"])

    # --- the ledger ------------------------------------------------------------------------------------------
    op.create_table(
        "credit_accounts",
        sa.Column("user_id", UUID, primary_key=True),
        # Credits the user owns (held ones included); == sum(grant remaining) - debt + held == sum(ledger).
        sa.Column("balance", CREDITS, nullable=False, server_default="0"),
        sa.Column("held", CREDITS, nullable=False, server_default="0"),
        sa.Column("debt", CREDITS, nullable=False, server_default="0"),
        sa.Column("floor", CREDITS, nullable=False, server_default="0"),
        sa.Column("bonus_auto_use", sa.Boolean(), nullable=False, server_default=sa.false()),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint("held >= 0", name=op.f("ck_credit_accounts_held")),
        sa.CheckConstraint("floor <= 0", name=op.f("ck_credit_accounts_floor")),
        sa.CheckConstraint("debt >= 0 AND debt <= -floor", name=op.f("ck_credit_accounts_debt")),
        sa.CheckConstraint("balance - held >= floor", name=op.f("ck_credit_accounts_above_floor")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_credit_accounts_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_credit_accounts")),
        # Room on each page for the next version of a row: balance updates stay HOT (no index writes).
        postgresql_with={"fillfactor": 70},
    )
    op.create_table(
        "credit_grants",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        # 0: free credits (allowance, sign-up, promotions, adjustments); 1: purchased packs, drawn after.
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("amount", CREDITS, nullable=False),
        sa.Column("remaining", CREDITS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("source_key", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("expired_at", sa.DateTime(timezone=True)),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint(f"kind IN {GRANT_KINDS}", name=op.f("ck_credit_grants_kind")),
        sa.CheckConstraint("priority IN (0, 1)", name=op.f("ck_credit_grants_priority")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_credit_grants_amount")),
        sa.CheckConstraint("remaining >= 0 AND remaining <= amount", name=op.f("ck_credit_grants_remaining")),
        sa.CheckConstraint("status IN ('active', 'expired')", name=op.f("ck_credit_grants_status")),
        sa.CheckConstraint("status = 'active' OR remaining = 0", name=op.f("ck_credit_grants_expired_empty")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["credit_accounts.user_id"], name=op.f("fk_credit_grants_user_id_credit_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_grants")),
        sa.UniqueConstraint("user_id", "source_key", name=op.f("uq_credit_grants_user_id")),
        postgresql_with={"fillfactor": 70},
    )
    # The draw order, over active grants. `remaining` is deliberately neither indexed nor in the predicate:
    # a charge's update of a grant then stays a HOT update (no index writes), with fillfactor leaving room.
    op.execute(
        "CREATE INDEX ix_credit_grants_draw ON credit_grants "
        "(user_id, priority, expires_at ASC NULLS LAST, created_at, id) WHERE status = 'active'"
    )
    op.execute("CREATE INDEX ix_credit_grants_due ON credit_grants (expires_at) WHERE status = 'active'")

    op.create_table(
        "credit_holds",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("operation", sa.String(64)),
        sa.Column("quantity", CREDITS),
        sa.Column("amount", CREDITS, nullable=False),
        sa.Column("captured", CREDITS),
        sa.Column("released", CREDITS),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        _ts("created_at"),
        _ts("resolved_at", nullable=True),
        sa.CheckConstraint("amount > 0", name=op.f("ck_credit_holds_amount")),
        sa.CheckConstraint(
            "status IN ('active', 'captured', 'released', 'expired')", name=op.f("ck_credit_holds_status")
        ),
        sa.CheckConstraint(
            "coalesce(captured, 0) + coalesce(released, 0) <= amount", name=op.f("ck_credit_holds_settled")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["credit_accounts.user_id"], name=op.f("fk_credit_holds_user_id_credit_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_holds")),
    )
    op.create_index("ix_credit_holds_user_id", "credit_holds", ["user_id", "status"])
    op.execute("CREATE INDEX ix_credit_holds_due ON credit_holds (expires_at) WHERE status = 'active'")

    op.create_table(
        "credit_transactions",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("amount", CREDITS, nullable=False),
        sa.Column("balance_after", CREDITS, nullable=False),
        sa.Column("operation", sa.String(64)),
        sa.Column("quantity", CREDITS),
        sa.Column("grant_id", UUID),
        sa.Column("hold_id", UUID),
        sa.Column("reverses_id", UUID),
        sa.Column("idempotency_key", sa.String(300)),
        sa.Column("request_hash", sa.String(64)),
        sa.Column("actor_id", UUID),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        _ts("created_at"),
        sa.CheckConstraint(f"type IN {TRANSACTION_TYPES}", name=op.f("ck_credit_transactions_type")),
        sa.CheckConstraint(
            "idempotency_key IS NULL OR request_hash IS NOT NULL", name=op.f("ck_credit_transactions_fingerprint")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["credit_accounts.user_id"], name=op.f("fk_credit_transactions_user_id_credit_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["grant_id"], ["credit_grants.id"], name=op.f("fk_credit_transactions_grant_id_credit_grants")
        ),
        sa.ForeignKeyConstraint(
            ["hold_id"], ["credit_holds.id"], name=op.f("fk_credit_transactions_hold_id_credit_holds")
        ),
        sa.ForeignKeyConstraint(
            ["reverses_id"],
            ["credit_transactions.id"],
            name=op.f("fk_credit_transactions_reverses_id_credit_transactions"),
        ),
        sa.ForeignKeyConstraint(["actor_id"], ["users.id"], name=op.f("fk_credit_transactions_actor_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_transactions")),
    )
    # Idempotency keys are unique per user, forever, in the ledger itself.
    op.execute(
        "CREATE UNIQUE INDEX uq_credit_transactions_idempotency_key ON credit_transactions "
        "(user_id, idempotency_key) WHERE idempotency_key IS NOT NULL"
    )
    op.create_index("ix_credit_transactions_user_created", "credit_transactions", ["user_id", "created_at", "id"])
    op.execute(
        "CREATE INDEX ix_credit_transactions_reverses_id ON credit_transactions (reverses_id) "
        "WHERE reverses_id IS NOT NULL"
    )

    op.create_table(
        "credit_draws",
        # Which grant (or, with no grant, the credit line) each charge or hold drew how much from.
        sa.Column("origin_id", UUID, nullable=False),  # the charge or hold that drew
        sa.Column("seq", sa.Integer(), nullable=False),  # draw order within it
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("grant_id", UUID),
        sa.Column("transaction_id", UUID),  # the charge (or, once captured, the capture)
        sa.Column("hold_id", UUID),
        sa.Column("amount", CREDITS, nullable=False),
        sa.Column("returned", CREDITS, nullable=False, server_default="0"),
        sa.CheckConstraint("amount > 0", name=op.f("ck_credit_draws_amount")),
        sa.CheckConstraint("returned >= 0 AND returned <= amount", name=op.f("ck_credit_draws_returned")),
        sa.CheckConstraint("transaction_id IS NOT NULL OR hold_id IS NOT NULL", name=op.f("ck_credit_draws_owner")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["credit_accounts.user_id"], name=op.f("fk_credit_draws_user_id_credit_accounts")
        ),
        # No foreign keys to grants, transactions or holds: each would cost a row lock (a WAL record) per
        # charge while the account is locked. Only the ledger's own functions write draws, in the same
        # transaction as the rows they name; `reconcile` checks they still add up.
        sa.PrimaryKeyConstraint("origin_id", "seq", name=op.f("pk_credit_draws")),
    )
    # Only the primary key: draws are found by their origin (a charge's own id, or its hold's), and every
    # extra index would be written by each charge while the account row is locked.

    op.execute(FUNCTIONS)


def downgrade() -> None:
    op.execute(DROP_FUNCTIONS)
    op.drop_table("credit_draws")
    op.execute("DROP TRIGGER IF EXISTS credit_transactions_no_truncate ON credit_transactions")
    op.execute("DROP TRIGGER IF EXISTS credit_transactions_immutable ON credit_transactions")
    op.drop_table("credit_transactions")
    op.execute("DROP FUNCTION IF EXISTS tollgate_ledger_immutable()")
    op.drop_table("credit_holds")
    op.drop_table("credit_grants")
    op.drop_table("credit_accounts")
    op.drop_table("audit_logs")
    op.drop_table("admin_settings")
    op.drop_table("credit_packs")
    op.drop_table("plans")

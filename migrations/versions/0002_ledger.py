"""The credit ledger: accounts, grants, the immutable transaction log, holds, draws; the catalogue (plans,
credit packs), the admin_settings singleton (feature costs, per-plan overrides) and audit_logs.

The hot paths of the ledger are plpgsql functions (one round trip per charge while the account row is
locked); see `tollgate.ledger` for the rules they implement.

Revision ID: 0002_ledger
Revises: 0001_users
Create Date: 2026-11-24
"""

from collections.abc import Sequence

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


FUNCTIONS = r"""
-- The ledger refuses UPDATE, DELETE and TRUNCATE: a correction is a new row that reverses an old one.
CREATE FUNCTION tollgate_ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'credit_transactions is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER credit_transactions_immutable BEFORE UPDATE OR DELETE ON credit_transactions
    FOR EACH ROW EXECUTE FUNCTION tollgate_ledger_immutable();
CREATE TRIGGER credit_transactions_no_truncate BEFORE TRUNCATE ON credit_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION tollgate_ledger_immutable();

-- The caller's account row, created on first use (race-safe) and locked FOR UPDATE. Every ledger mutation
-- starts here: the account row is the one lock that serialises a user's credits (grants are touched only
-- while it is held, in draw order).
CREATE FUNCTION tollgate_lock_account(p_user uuid, p_now timestamptz) RETURNS SETOF credit_accounts
LANGUAGE plpgsql AS $$
DECLARE
    a credit_accounts%ROWTYPE;
BEGIN
    SELECT * INTO a FROM credit_accounts WHERE user_id = p_user FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO credit_accounts (user_id, created_at, updated_at) VALUES (p_user, p_now, p_now)
            ON CONFLICT DO NOTHING;
        SELECT * INTO a FROM credit_accounts WHERE user_id = p_user FOR UPDATE;
    END IF;
    RETURN NEXT a;
END $$;

-- The cost of one unit of an operation for the user's plan (a plan override first), and whether users may
-- choose to use purchased credits automatically (when they may not, purchased credits are always used).
CREATE FUNCTION tollgate_pricing(p_user uuid, p_operation text, OUT cost numeric, OUT toggle_allowed boolean)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(s.plan_feature_costs -> u.tier ->> p_operation, s.feature_costs ->> p_operation)::numeric,
           coalesce(s.allow_bonus_auto_use_toggle, true)
    FROM users u LEFT JOIN admin_settings s ON s.id = 1
    WHERE u.id = p_user
$$;

-- Which grants a deduction of p_amount draws from, without writing anything: free grants (allowance,
-- signup, promo, adjustments) before purchased packs (only when p_allow_packs), soonest expiry first, then
-- oldest; what grants cannot cover comes from the account's credit line (floor below zero). When even that
-- is not enough, ok is false and available says what could have been drawn.
CREATE FUNCTION tollgate_plan_draw(
    p_user uuid, p_amount numeric, p_allow_packs boolean, p_now timestamptz,
    OUT ok boolean, OUT grant_ids uuid[], OUT takes numeric[], OUT line numeric, OUT available numeric)
LANGUAGE plpgsql AS $$
DECLARE
    v_need numeric := p_amount;
    v_total numeric := 0;
    v_take numeric;
    v_room numeric;
    r record;
BEGIN
    grant_ids := '{}';
    takes := '{}';
    line := 0;
    IF v_need > 0 THEN
        FOR r IN
            SELECT id, remaining FROM credit_grants
            WHERE user_id = p_user AND status = 'active' AND remaining > 0
              AND (expires_at IS NULL OR expires_at > p_now)
              AND (p_allow_packs OR priority = 0)
            ORDER BY priority, expires_at ASC NULLS LAST, created_at, id
        LOOP
            v_total := v_total + r.remaining;
            IF v_need > 0 THEN
                v_take := least(r.remaining, v_need);
                grant_ids := grant_ids || r.id;
                takes := takes || v_take;
                v_need := v_need - v_take;
            END IF;
            EXIT WHEN v_need = 0;
        END LOOP;
    END IF;
    SELECT -a.floor - a.debt INTO v_room FROM credit_accounts a WHERE a.user_id = p_user;
    IF v_need > 0 THEN
        IF v_need > v_room THEN
            ok := false;
            available := v_total + v_room;
            RETURN;
        END IF;
        line := v_need;
    END IF;
    ok := true;
END $$;

-- Apply a planned draw: take from the grants and record each part (the credit-line part with no grant).
-- The caller updates the account (balance, held, debt).
CREATE FUNCTION tollgate_apply_draw(
    p_user uuid, p_origin uuid, p_transaction uuid, p_hold uuid,
    p_grant_ids uuid[], p_takes numeric[], p_line numeric, p_now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE credit_grants g SET remaining = g.remaining - d.take, updated_at = p_now
        FROM unnest(p_grant_ids, p_takes) AS d(id, take) WHERE g.id = d.id;
    INSERT INTO credit_draws (origin_id, seq, user_id, grant_id, transaction_id, hold_id, amount, returned)
        SELECT p_origin, d.ord, p_user, d.id, p_transaction, p_hold, d.take, 0
        FROM unnest(p_grant_ids, p_takes) WITH ORDINALITY AS d(id, take, ord);
    IF p_line > 0 THEN
        INSERT INTO credit_draws (origin_id, seq, user_id, grant_id, transaction_id, hold_id, amount, returned)
            VALUES (p_origin, coalesce(array_length(p_grant_ids, 1), 0) + 1, p_user, NULL, p_transaction,
                    p_hold, p_line, 0);
    END IF;
END $$;

-- A charge in one round trip: lock the account, answer a repeated idempotency key, price the operation,
-- draw, write the ledger row and the draws, update the account. status is one of ok, replay, conflict,
-- insufficient, unknown_operation; nothing is written unless it is ok (beyond creating an empty account).
-- Inlined (no nested calls) with a fast path for the common case - the first grant in draw order covers
-- the whole charge - because the account row stays locked for as long as this runs.
CREATE FUNCTION tollgate_charge(
    p_user uuid, p_tx uuid, p_operation text, p_quantity numeric, p_amount numeric,
    p_key text, p_hash text, p_metadata jsonb, p_now timestamptz,
    OUT status text, OUT transaction_id uuid, OUT charged numeric, OUT balance numeric,
    OUT available numeric)
LANGUAGE plpgsql AS $$
DECLARE
    a record;
    t record;
    d record;
    v_amount numeric;
    v_allow boolean;
    v_line numeric := 0;
    v_rows integer := 0;
BEGIN
    -- The lock, the price and the bonus rule in one statement.
    SELECT ca.balance, ca.held, ca.debt, ca.bonus_auto_use,
           coalesce(s.plan_feature_costs -> u.tier ->> p_operation, s.feature_costs ->> p_operation)::numeric AS cost,
           coalesce(s.allow_bonus_auto_use_toggle, true) AS toggle_allowed
        INTO a
        FROM credit_accounts ca JOIN users u ON u.id = ca.user_id LEFT JOIN admin_settings s ON s.id = 1
        WHERE ca.user_id = p_user
        FOR UPDATE OF ca;
    IF NOT FOUND THEN
        INSERT INTO credit_accounts (user_id, created_at, updated_at) VALUES (p_user, p_now, p_now)
            ON CONFLICT DO NOTHING;
        SELECT ca.balance, ca.held, ca.debt, ca.bonus_auto_use,
               coalesce(s.plan_feature_costs -> u.tier ->> p_operation, s.feature_costs ->> p_operation)::numeric
                   AS cost,
               coalesce(s.allow_bonus_auto_use_toggle, true) AS toggle_allowed
            INTO a
            FROM credit_accounts ca JOIN users u ON u.id = ca.user_id LEFT JOIN admin_settings s ON s.id = 1
            WHERE ca.user_id = p_user
            FOR UPDATE OF ca;
    END IF;
    IF p_key IS NOT NULL THEN
        SELECT c.id, c.amount, c.balance_after, c.request_hash INTO t FROM credit_transactions c
            WHERE c.user_id = p_user AND c.idempotency_key = p_key;
        IF FOUND THEN
            transaction_id := t.id;
            IF t.request_hash IS DISTINCT FROM p_hash THEN
                status := 'conflict';
                RETURN;
            END IF;
            status := 'replay';
            charged := -t.amount;
            balance := t.balance_after;
            RETURN;
        END IF;
    END IF;
    IF p_amount IS NOT NULL THEN
        v_amount := p_amount;
    ELSIF a.cost IS NULL THEN
        status := 'unknown_operation';
        RETURN;
    ELSE
        -- Over-precise products are rounded up to the ledger's scale (4 decimals).
        v_amount := (ceil(a.cost * p_quantity * 10000) / 10000)::numeric(18, 4);
    END IF;
    v_allow := a.bonus_auto_use OR NOT a.toggle_allowed;
    IF v_amount > 0 THEN
        -- Fast path: the first grant in draw order covers the whole charge.
        WITH g AS (
            UPDATE credit_grants cg SET remaining = cg.remaining - v_amount, updated_at = p_now
            WHERE cg.id = (
                    SELECT x.id FROM credit_grants x
                    WHERE x.user_id = p_user AND x.status = 'active' AND x.remaining > 0
                      AND (x.expires_at IS NULL OR x.expires_at > p_now) AND (v_allow OR x.priority = 0)
                    ORDER BY x.priority, x.expires_at ASC NULLS LAST, x.created_at, x.id
                    LIMIT 1)
              AND cg.remaining >= v_amount
            RETURNING cg.id)
        INSERT INTO credit_draws (origin_id, seq, user_id, grant_id, transaction_id, hold_id, amount, returned)
            SELECT p_tx, 1, p_user, g.id, p_tx, NULL, v_amount, 0 FROM g;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
    END IF;
    IF v_rows = 0 THEN
        SELECT * INTO d FROM tollgate_plan_draw(p_user, v_amount, v_allow, p_now);
        IF NOT d.ok THEN
            status := 'insufficient';
            charged := v_amount;
            balance := a.balance;
            available := d.available;
            RETURN;
        END IF;
        PERFORM tollgate_apply_draw(p_user, p_tx, p_tx, NULL, d.grant_ids, d.takes, d.line, p_now);
        v_line := d.line;
    END IF;
    WITH acc AS (
        UPDATE credit_accounts ca SET balance = ca.balance - v_amount, debt = ca.debt + v_line, updated_at = p_now
        WHERE ca.user_id = p_user
        RETURNING ca.balance)
    INSERT INTO credit_transactions (id, user_id, type, amount, balance_after, operation, quantity,
                                     idempotency_key, request_hash, metadata, created_at)
        SELECT p_tx, p_user, 'usage', -v_amount, acc.balance, p_operation, p_quantity,
               p_key, p_hash, coalesce(p_metadata, '{}'::jsonb), p_now
        FROM acc;
    status := 'ok';
    transaction_id := p_tx;
    charged := v_amount;
    balance := a.balance - v_amount;
END $$;
"""

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

"""The ledger's rules in one place: "is a pack" gets its own column (`credit_grants.is_pack`, replacing the
`priority` that set the draw order and doubled as "not a pack"), and the ledger's functions move to version 2
of their SQL files: one draw order (`tollgate_draw_candidates`) for the charge's fast path and the planned
draw, and one definition each of per-plan pricing, cost rounding and auto-use. Downgrading restores
`priority` (from `is_pack`) and the version-1 functions.

Revision ID: 0007_ledger_rules
Revises: 0005_payments
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0007_ledger_rules"
down_revision: str | Sequence[str] | None = "0005_payments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL_DIR = Path(__file__).resolve().parents[1] / "sql" / "ledger"

# In creation order (each file may call the ones before it).
NEW_FUNCTIONS = (
    "tollgate_unit_cost.v1",
    "tollgate_cost.v1",
    "tollgate_allow_packs.v1",
    "tollgate_draw_candidates.v1",
    "tollgate_pricing.v2",
    "tollgate_plan_draw.v2",
    "tollgate_charge.v2",
)
OLD_FUNCTIONS = ("tollgate_pricing.v1", "tollgate_plan_draw.v1", "tollgate_charge.v1")

DROP_OLD = """
DROP FUNCTION tollgate_charge(uuid, uuid, text, numeric, numeric, text, text, jsonb, timestamptz);
DROP FUNCTION tollgate_plan_draw(uuid, numeric, boolean, timestamptz);
DROP FUNCTION tollgate_pricing(uuid, text);
"""
DROP_NEW = """
DROP FUNCTION tollgate_charge(uuid, uuid, text, numeric, numeric, text, text, jsonb, timestamptz);
DROP FUNCTION tollgate_plan_draw(uuid, numeric, boolean, timestamptz);
DROP FUNCTION tollgate_pricing(uuid, text, numeric);
DROP FUNCTION tollgate_draw_candidates(uuid, boolean, timestamptz);
DROP FUNCTION tollgate_allow_packs(boolean, boolean);
DROP FUNCTION tollgate_cost(numeric, numeric);
DROP FUNCTION tollgate_unit_cost(jsonb, jsonb, text, text);
"""


def _sql(names: Sequence[str]) -> str:
    return "\n".join((SQL_DIR / f"{name}.sql").read_text(encoding="utf-8") for name in names)


def upgrade() -> None:
    op.execute(DROP_OLD)
    # A constant default fills the column without rewriting the table; only packs are then written. The
    # default goes again, so every writer of a grant says whether it is a pack.
    op.execute("ALTER TABLE credit_grants ADD COLUMN is_pack boolean NOT NULL DEFAULT false")
    op.execute("UPDATE credit_grants SET is_pack = true WHERE priority <> 0")
    op.execute("ALTER TABLE credit_grants ALTER COLUMN is_pack DROP DEFAULT")
    op.execute("DROP INDEX ix_credit_grants_draw")
    op.execute("ALTER TABLE credit_grants DROP CONSTRAINT ck_credit_grants_priority")
    op.execute("ALTER TABLE credit_grants DROP COLUMN priority")
    # The draw order of tollgate_draw_candidates, over active grants (`remaining` stays out: see 0002).
    op.execute(
        "CREATE INDEX ix_credit_grants_draw ON credit_grants "
        "(user_id, is_pack, expires_at ASC NULLS LAST, created_at, id) WHERE status = 'active'"
    )
    op.execute(_sql(NEW_FUNCTIONS))


def downgrade() -> None:
    op.execute(DROP_NEW)
    op.execute("ALTER TABLE credit_grants ADD COLUMN priority smallint NOT NULL DEFAULT 0")
    op.execute("UPDATE credit_grants SET priority = 1 WHERE is_pack")
    op.execute("ALTER TABLE credit_grants ALTER COLUMN priority DROP DEFAULT")
    op.execute("ALTER TABLE credit_grants ADD CONSTRAINT ck_credit_grants_priority CHECK (priority IN (0, 1))")
    op.execute("DROP INDEX ix_credit_grants_draw")
    op.execute("ALTER TABLE credit_grants DROP COLUMN is_pack")
    op.execute(
        "CREATE INDEX ix_credit_grants_draw ON credit_grants "
        "(user_id, priority, expires_at ASC NULLS LAST, created_at, id) WHERE status = 'active'"
    )
    op.execute(_sql(OLD_FUNCTIONS))

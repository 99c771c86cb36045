"""Two ledger defaults.

- A bought pack is spendable unless an admin opts in to seed 001's per-user "extra usage" toggle: the toggle's
  default becomes off (`admin_settings.allow_bonus_auto_use_toggle`, and `tollgate_allow_packs` v2 for a missing
  row). A deployment still on the old default (no admin ever set the policy, which the audit log records) moves to
  the new one; one whose admin chose keeps the choice.
- `tollgate_cost` v2 caps a price at the largest NUMERIC(18, 4) amount: a price beyond any balance (a large unit
  cost times a large quantity) is refused as insufficient credits instead of failing with an overflow.

Downgrading restores the old default and v1 of both functions, and leaves the stored value as it is.

Revision ID: 0009_ledger_defaults
Revises: 0007_ledger_rules
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0009_ledger_defaults"
down_revision: str | Sequence[str] | None = "0007_ledger_rules"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL_DIR = Path(__file__).resolve().parents[1] / "sql" / "ledger"
NEW_FUNCTIONS = ("tollgate_allow_packs.v2", "tollgate_cost.v2")
OLD_FUNCTIONS = ("tollgate_allow_packs.v1", "tollgate_cost.v1")
POLICY_ACTION = "credits.bonus_auto_use_policy"  # the audit action of PUT /admin/credits/settings


def _sql(names: Sequence[str]) -> str:
    return "\n".join((SQL_DIR / f"{name}.sql").read_text(encoding="utf-8") for name in names)


def upgrade() -> None:
    op.execute("ALTER TABLE admin_settings ALTER COLUMN allow_bonus_auto_use_toggle SET DEFAULT false")
    op.execute(
        "UPDATE admin_settings SET allow_bonus_auto_use_toggle = false WHERE id = 1 AND allow_bonus_auto_use_toggle "
        f"AND NOT EXISTS (SELECT 1 FROM audit_logs WHERE action = '{POLICY_ACTION}')"
    )
    op.execute(_sql(NEW_FUNCTIONS))


def downgrade() -> None:
    op.execute("ALTER TABLE admin_settings ALTER COLUMN allow_bonus_auto_use_toggle SET DEFAULT true")
    op.execute("DROP FUNCTION tollgate_allow_packs(boolean, boolean)")
    op.execute("DROP FUNCTION tollgate_cost(numeric, numeric)")
    op.execute(_sql(OLD_FUNCTIONS))

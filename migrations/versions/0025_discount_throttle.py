"""Wrong discount codes are throttled like failed sign-ins: two more scopes of `auth_throttles` (per user and
per source IP), and a scope column wide enough for their names.

Revision ID: 0025_discount_throttle
Revises: 0023_reports
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025_discount_throttle"
down_revision: str | Sequence[str] | None = "0023_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_SCOPES = "scope IN ('account', 'ip', 'mail')"
NEW_SCOPES = "scope IN ('account', 'ip', 'mail', 'discount_user', 'discount_ip')"


def _scope_rule(rule: str) -> None:
    # 0003_auth's rule carries the naming convention twice (its name was given without op.f).
    op.execute("ALTER TABLE auth_throttles DROP CONSTRAINT IF EXISTS ck_auth_throttles_ck_auth_throttles_scope")
    op.execute("ALTER TABLE auth_throttles DROP CONSTRAINT IF EXISTS ck_auth_throttles_scope")
    op.execute(f"ALTER TABLE auth_throttles ADD CONSTRAINT ck_auth_throttles_scope CHECK ({rule})")


def upgrade() -> None:
    op.alter_column("auth_throttles", "scope", type_=sa.String(16), existing_type=sa.String(8), existing_nullable=False)
    _scope_rule(NEW_SCOPES)


def downgrade() -> None:
    # The discount counters have no home in the older schema; they only ever slow a guesser down.
    op.execute("DELETE FROM auth_throttles WHERE scope IN ('discount_user', 'discount_ip')")
    _scope_rule(OLD_SCOPES)
    op.alter_column("auth_throttles", "scope", type_=sa.String(8), existing_type=sa.String(16), existing_nullable=False)

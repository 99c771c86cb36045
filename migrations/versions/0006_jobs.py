"""Scheduled jobs: per-period cursors so a job cut short by the Lambda's time limit resumes where it stopped.

Revision ID: 0006_jobs
Revises: 0001_users
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_jobs"
down_revision: str | Sequence[str] | None = "0001_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


ENROL_FUNCTIONS = r"""
-- A time zone PostgreSQL knows, or UTC: a bad value must not stop anyone's allowance.
CREATE FUNCTION tollgate_allowance_zone(p_zone text) RETURNS text LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM now() AT TIME ZONE coalesce(p_zone, 'UTC');
    RETURN coalesce(p_zone, 'UTC');
EXCEPTION WHEN invalid_parameter_value THEN
    RETURN 'UTC';
END $$;

-- Every new user gets an allowance schedule: anchored on the day of the month they signed up (in their time
-- zone), first due at once. A change of time zone moves their resets to midnight in the new zone.
CREATE FUNCTION tollgate_enrol_allowance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_zone text := tollgate_allowance_zone(NEW.timezone);
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO allowance_schedules (user_id, anchor_day, timezone, next_reset_at, updated_at)
        VALUES (NEW.id, extract(day FROM NEW.created_at AT TIME ZONE v_zone), v_zone, NEW.created_at, now())
        ON CONFLICT (user_id) DO NOTHING;
    ELSE
        UPDATE allowance_schedules SET timezone = v_zone, updated_at = now() WHERE user_id = NEW.id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER users_enrol_allowance AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION tollgate_enrol_allowance();
CREATE TRIGGER users_allowance_zone AFTER UPDATE OF timezone ON users
    FOR EACH ROW EXECUTE FUNCTION tollgate_enrol_allowance();
"""


def upgrade() -> None:
    op.create_table(
        "job_cursors",
        sa.Column("job_name", sa.String(64), nullable=False),
        sa.Column("period_key", sa.String(64), nullable=False),
        sa.Column("cursor", sa.Text()),
        sa.Column("batches", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("processed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("stats", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("runs", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("job_name", "period_key", name=op.f("pk_job_cursors")),
    )
    op.create_table(
        "ledger_mismatches",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("problems", postgresql.JSONB(), nullable=False),
        sa.Column("figures", postgresql.JSONB(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_mismatches")),
    )
    op.create_index(op.f("ix_ledger_mismatches_user_id"), "ledger_mismatches", ["user_id"])
    op.create_table(
        "analytics",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("dimension", sa.String(64), nullable=False, server_default=""),
        sa.Column("value", sa.Numeric(20, 4), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_analytics")),
        sa.UniqueConstraint("day", "metric", "dimension", name=op.f("uq_analytics_day")),
    )

    op.create_table(
        "allowance_schedules",
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("anchor_day", sa.SmallInteger(), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("next_reset_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_period_key", sa.String(16)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("anchor_day BETWEEN 1 AND 31", name=op.f("ck_allowance_schedules_anchor_day")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], ondelete="CASCADE", name=op.f("fk_allowance_schedules_user_id_users")
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_allowance_schedules")),
    )
    op.create_index("ix_allowance_schedules_due", "allowance_schedules", ["next_reset_at", "user_id"])
    op.create_table(
        "credit_notices",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("details", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], ondelete="CASCADE", name=op.f("fk_credit_notices_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_notices")),
        sa.UniqueConstraint("user_id", "kind", "key", name=op.f("uq_credit_notices_user_id")),
    )
    op.execute(ENROL_FUNCTIONS)
    # Users who exist already: their first allowance is due now.
    op.execute(
        "INSERT INTO allowance_schedules (user_id, anchor_day, timezone, next_reset_at) "
        "SELECT id, extract(day FROM created_at AT TIME ZONE tollgate_allowance_zone(timezone)), "
        "tollgate_allowance_zone(timezone), now() FROM users ON CONFLICT DO NOTHING"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS users_allowance_zone ON users")
    op.execute("DROP TRIGGER IF EXISTS users_enrol_allowance ON users")
    op.execute("DROP FUNCTION IF EXISTS tollgate_enrol_allowance()")
    op.execute("DROP FUNCTION IF EXISTS tollgate_allowance_zone(text)")
    op.drop_index("ix_allowance_schedules_due", table_name="allowance_schedules")
    op.drop_table("allowance_schedules")
    op.drop_table("credit_notices")
    op.drop_table("analytics")
    op.drop_index(op.f("ix_ledger_mismatches_user_id"), table_name="ledger_mismatches")
    op.drop_table("ledger_mismatches")
    op.drop_table("job_cursors")

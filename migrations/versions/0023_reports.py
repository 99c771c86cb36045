"""What became of sent mail (seed 001's statuses): email logs may also be delivered, bounced or complained (set
from the provider's notifications, stored once each in `mail_events`), and `email_suppressions` keeps the
addresses that bounced for good or complained, which get only essential mail from then on.

Revision ID: 0023_reports
Revises: 0008_auth_hardening
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0023_reports"
down_revision: str | Sequence[str] | None = "0008_auth_hardening"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.func.now()
OLD_STATUSES = "status IN ('pending', 'sent', 'failed', 'suppressed')"
NEW_STATUSES = "status IN ('pending', 'sent', 'failed', 'suppressed', 'delivered', 'bounced', 'complained')"


def _status_rule(rule: str) -> None:
    # 0003_auth's rule carries the naming convention twice (its name was given without op.f).
    op.execute("ALTER TABLE email_logs DROP CONSTRAINT IF EXISTS ck_email_logs_ck_email_logs_status")
    op.execute("ALTER TABLE email_logs DROP CONSTRAINT IF EXISTS ck_email_logs_status")
    op.execute(f"ALTER TABLE email_logs ADD CONSTRAINT ck_email_logs_status CHECK ({rule})")


def upgrade() -> None:
    _status_rule(NEW_STATUSES)
    op.create_index(
        "ix_email_logs_message_id", "email_logs", ["message_id"], postgresql_where=sa.text("message_id IS NOT NULL")
    )
    op.create_table(
        "mail_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("notification_id", sa.String(255), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("email_log_id", sa.Uuid()),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("subtype", sa.String(64)),
        sa.Column("outcome", sa.String(24), nullable=False),
        sa.Column("details", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("occurred_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_mail_events"),
        sa.UniqueConstraint("provider", "notification_id", name="uq_mail_events_provider"),
        sa.ForeignKeyConstraint(
            ["email_log_id"], ["email_logs.id"], name="fk_mail_events_email_log_id_email_logs", ondelete="SET NULL"
        ),
        sa.CheckConstraint("type IN ('delivery', 'bounce', 'complaint', 'other')", name="ck_mail_events_type"),
        sa.CheckConstraint("outcome IN ('applied', 'unknown_message', 'superseded')", name="ck_mail_events_outcome"),
    )
    op.create_index("ix_mail_events_email_log_id", "mail_events", ["email_log_id"])
    op.create_table(
        "email_suppressions",
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("mail_event_id", sa.Uuid()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("email", name="pk_email_suppressions"),
        sa.ForeignKeyConstraint(
            ["mail_event_id"],
            ["mail_events.id"],
            name="fk_email_suppressions_mail_event_id_mail_events",
            ondelete="SET NULL",
        ),
        sa.CheckConstraint("reason IN ('bounce', 'complaint')", name="ck_email_suppressions_reason"),
    )


def downgrade() -> None:
    op.drop_table("email_suppressions")
    op.drop_table("mail_events")
    op.drop_index("ix_email_logs_message_id", table_name="email_logs")
    # Statuses the old rule does not know go back to the nearest it does.
    op.execute("UPDATE email_logs SET status = 'sent' WHERE status IN ('delivered', 'bounced', 'complained')")
    _status_rule(OLD_STATUSES)

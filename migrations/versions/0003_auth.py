"""Identity: sessions, one-time tokens, 2FA challenges and codes, API keys, OAuth links, failed-login
counters, the mail log; and the users columns sign-in needs.

Revision ID: 0003_auth
Revises: 0001_users
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_auth"
down_revision: str | Sequence[str] | None = "0001_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UUID = postgresql.UUID(as_uuid=True)
TS = sa.DateTime(timezone=True)


def _id() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("id", UUID, nullable=False)


def _user_id(table: str, nullable: bool = False, ondelete: str = "CASCADE") -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "user_id",
        UUID,
        sa.ForeignKey("users.id", ondelete=ondelete, name=f"fk_{table}_user_id_users"),
        nullable=nullable,
    )


def _created() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("created_at", TS, nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.add_column("users", sa.Column("two_factor_method", sa.String(8)))
    op.add_column("users", sa.Column("totp_secret", sa.String(64)))
    op.add_column("users", sa.Column("totp_pending_secret", sa.String(64)))
    op.add_column("users", sa.Column("totp_last_step", sa.BigInteger()))
    op.add_column("users", sa.Column("password_changed_at", TS))
    op.create_check_constraint("ck_users_two_factor_method", "users", "two_factor_method IN ('email', 'totp')")

    op.create_table(
        "oauth_accounts",
        _id(),
        _user_id("oauth_accounts"),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("provider_account_id", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column("token_type", sa.String(32)),
        sa.Column("scope", sa.Text()),
        sa.Column("expires_at", TS),
        _created(),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_oauth_accounts"),
        sa.UniqueConstraint("provider", "provider_account_id", name="uq_oauth_accounts_provider_account"),
        sa.CheckConstraint("provider IN ('google', 'github')", name="ck_oauth_accounts_provider"),
    )
    op.create_index("ix_oauth_accounts_user_id", "oauth_accounts", ["user_id"])

    op.create_table(
        "oauth_states",
        _id(),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("state_hash", sa.String(64), nullable=False),
        sa.Column("code_verifier", sa.String(128), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        _created(),
        sa.PrimaryKeyConstraint("id", name="pk_oauth_states"),
        sa.UniqueConstraint("state_hash", name="uq_oauth_states_state_hash"),
    )

    op.create_table(
        "sessions",
        _id(),
        sa.Column("family_id", UUID, nullable=False),
        _user_id("sessions"),
        sa.Column("refresh_token_hash", sa.String(64), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("rotated_at", TS),
        sa.Column("revoked_at", TS),
        sa.Column("revoked_reason", sa.String(32)),
        sa.Column("ip", sa.String(64)),
        sa.Column("user_agent", sa.String(512)),
        sa.Column("last_used_at", TS),
        _created(),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.UniqueConstraint("refresh_token_hash", name="uq_sessions_refresh_token_hash"),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_index("ix_sessions_family_id", "sessions", ["family_id"])

    for table in ("verification_tokens", "password_reset_tokens"):
        columns = [
            _id(),
            _user_id(table),
            sa.Column("token_hash", sa.String(64), nullable=False),
            sa.Column("expires_at", TS, nullable=False),
            sa.Column("used_at", TS),
            _created(),
            sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
            sa.UniqueConstraint("token_hash", name=f"uq_{table}_token_hash"),
        ]
        if table == "verification_tokens":
            columns.insert(2, sa.Column("email", sa.String(320), nullable=False))
        op.create_table(table, *columns)
        op.create_index(f"ix_{table}_user_id", table, ["user_id"])

    op.create_table(
        "two_factor_confirmations",
        _id(),
        _user_id("two_factor_confirmations"),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("ip", sa.String(64)),
        sa.Column("user_agent", sa.String(512)),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("confirmed_at", TS),
        sa.Column("locked_at", TS),
        _created(),
        sa.PrimaryKeyConstraint("id", name="pk_two_factor_confirmations"),
        sa.CheckConstraint("method IN ('email', 'totp')", name="ck_two_factor_confirmations_method"),
        sa.CheckConstraint("attempts >= 0", name="ck_two_factor_confirmations_attempts"),
    )
    op.create_index("ix_two_factor_confirmations_user_id", "two_factor_confirmations", ["user_id"])

    op.create_table(
        "two_factor_tokens",
        _id(),
        _user_id("two_factor_tokens"),
        sa.Column(
            "challenge_id",
            UUID,
            sa.ForeignKey(
                "two_factor_confirmations.id",
                ondelete="CASCADE",
                name="fk_two_factor_tokens_challenge_id_two_factor_confirmations",
            ),
            nullable=False,
        ),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS),
        _created(),
        sa.PrimaryKeyConstraint("id", name="pk_two_factor_tokens"),
    )
    op.create_index("ix_two_factor_tokens_user_id", "two_factor_tokens", ["user_id"])
    op.create_index("ix_two_factor_tokens_challenge_id", "two_factor_tokens", ["challenge_id"])

    op.create_table(
        "api_keys",
        _id(),
        _user_id("api_keys"),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("expires_at", TS),
        sa.Column("last_used_at", TS),
        sa.Column("revoked_at", TS),
        _created(),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])

    op.create_table(
        "auth_throttles",
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("key", sa.String(320), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("window_started_at", TS, nullable=False),
        sa.Column("blocked_until", TS),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("scope", "key", name="pk_auth_throttles"),
        sa.CheckConstraint("scope IN ('account', 'ip', 'mail')", name="ck_auth_throttles_scope"),
    )

    op.create_table(
        "email_logs",
        _id(),
        _user_id("email_logs", nullable=True, ondelete="SET NULL"),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("message_id", sa.String(255)),
        sa.Column("error", sa.Text()),
        sa.Column("metadata", postgresql.JSONB()),
        sa.Column("sent_at", TS),
        _created(),
        sa.PrimaryKeyConstraint("id", name="pk_email_logs"),
        sa.CheckConstraint("status IN ('pending', 'sent', 'failed', 'suppressed')", name="ck_email_logs_status"),
    )
    op.create_index("ix_email_logs_user_id", "email_logs", ["user_id"])
    op.create_index("ix_email_logs_type_recipient_created", "email_logs", ["type", "recipient", "created_at"])


def downgrade() -> None:
    op.drop_table("email_logs")
    op.drop_table("auth_throttles")
    op.drop_table("api_keys")
    op.drop_table("two_factor_tokens")
    op.drop_table("two_factor_confirmations")
    op.drop_table("password_reset_tokens")
    op.drop_table("verification_tokens")
    op.drop_table("sessions")
    op.drop_table("oauth_states")
    op.drop_table("oauth_accounts")
    op.drop_constraint("ck_users_two_factor_method", "users", type_="check")
    for column in (
        "password_changed_at",
        "totp_last_step",
        "totp_pending_secret",
        "totp_secret",
        "two_factor_method",
    ):
        op.drop_column("users", column)

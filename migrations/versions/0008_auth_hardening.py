"""Accounts an attacker cannot take over (issue 11): registrations that carry their own password, step-up
times, scoped API keys, recovery codes, security lock links, sealed secrets.

Data moved on upgrade:
- outstanding verification links are spent, and unverified built-in accounts lose the password and username
  their (unproven) registration set: their owners register again and the new link sets both;
- pending OAuth authorizations (ten-minute lifetime, clear PKCE verifiers) and pending TOTP setups are dropped;
- existing API keys get the default scopes (profile:read, credits:read);
- TOTP secrets still in clear are sealed by the application the next time they are used.

Revision ID: 0008_auth_hardening
Revises: 0003_auth
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008_auth_hardening"
down_revision: str | Sequence[str] | None = "0003_auth"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UUID = postgresql.UUID(as_uuid=True)
TS = sa.DateTime(timezone=True)


def _user_id(table: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "user_id", UUID, sa.ForeignKey("users.id", ondelete="CASCADE", name=f"fk_{table}_user_id_users"), nullable=False
    )


def upgrade() -> None:
    op.alter_column("users", "totp_secret", type_=sa.Text(), existing_type=sa.String(64))
    op.alter_column("users", "totp_pending_secret", type_=sa.Text(), existing_type=sa.String(64))
    op.add_column("users", sa.Column("two_factor_enrolled_at", TS))
    op.add_column("users", sa.Column("password_login_at", TS))
    op.execute("UPDATE users SET totp_pending_secret = NULL WHERE totp_pending_secret IS NOT NULL")
    op.execute(
        "UPDATE users SET password_hash = NULL, username = NULL "
        "WHERE email_verified_at IS NULL AND password_hash IS NOT NULL"
    )

    op.add_column("verification_tokens", sa.Column("password_hash", sa.Text()))
    op.add_column("verification_tokens", sa.Column("name", sa.String(200)))
    op.add_column("verification_tokens", sa.Column("username", sa.String(64)))
    op.execute("UPDATE verification_tokens SET used_at = now() WHERE used_at IS NULL")

    op.add_column("sessions", sa.Column("authenticated_at", TS))

    op.execute("DELETE FROM oauth_states")
    op.alter_column("oauth_states", "code_verifier", type_=sa.Text(), existing_type=sa.String(128))

    op.add_column("api_keys", sa.Column("scopes", postgresql.ARRAY(sa.String(32)), nullable=False, server_default="{}"))
    op.execute("UPDATE api_keys SET scopes = ARRAY['profile:read', 'credits:read']::varchar(32)[]")

    op.create_table(
        "recovery_codes",
        sa.Column("id", UUID, nullable=False),
        _user_id("recovery_codes"),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("used_at", TS),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_recovery_codes"),
        sa.UniqueConstraint("code_hash", name="uq_recovery_codes_code_hash"),
    )
    op.create_index("ix_recovery_codes_user_id", "recovery_codes", ["user_id"])

    op.create_table(
        "security_lock_tokens",
        sa.Column("id", UUID, nullable=False),
        _user_id("security_lock_tokens"),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_security_lock_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_security_lock_tokens_token_hash"),
    )
    op.create_index("ix_security_lock_tokens_user_id", "security_lock_tokens", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_security_lock_tokens_user_id", table_name="security_lock_tokens")
    op.drop_table("security_lock_tokens")
    op.drop_index("ix_recovery_codes_user_id", table_name="recovery_codes")
    op.drop_table("recovery_codes")
    op.drop_column("api_keys", "scopes")
    # Sealed values do not fit (nor mean anything to) the older columns: pending ones are dropped, and TOTP
    # users fall back to no second factor until they enrol again.
    op.execute("DELETE FROM oauth_states")
    op.alter_column("oauth_states", "code_verifier", type_=sa.String(128), existing_type=sa.Text())
    op.drop_column("sessions", "authenticated_at")
    op.drop_column("verification_tokens", "username")
    op.drop_column("verification_tokens", "name")
    op.drop_column("verification_tokens", "password_hash")
    op.execute(
        "UPDATE users SET two_factor_enabled = false, two_factor_method = NULL, totp_secret = NULL "
        "WHERE totp_secret IS NOT NULL AND length(totp_secret) > 64"
    )
    op.execute("UPDATE users SET totp_pending_secret = NULL")
    op.drop_column("users", "password_login_at")
    op.drop_column("users", "two_factor_enrolled_at")
    op.alter_column("users", "totp_pending_secret", type_=sa.String(64), existing_type=sa.Text())
    op.alter_column("users", "totp_secret", type_=sa.String(64), existing_type=sa.Text())

"""The Alembic revisions this code expects the schema to be at (the layer ships no Alembic to ask).

Generated from migrations/versions by `python -m tests.unit.test_schema_heads`; tests/unit/test_schema_heads.py
fails when a revision is added without regenerating it.
"""

# Every head: the schema is current when alembic_version holds exactly these.
SCHEMA_HEADS: tuple[str, ...] = (
    "0004_rag",
    "0015_outbox",
    "0016_auto_topup",
    "0017_asaas_checkout_claims",
    "0019_commerce",
    "0020_support",
    "0021_user_admin",
    "0022_audit_trail",
    "0024_analytics_sql",
    "0025_discount_throttle",
)
# Every revision this code knows: one outside it means the schema is newer than the code.
SCHEMA_REVISIONS: tuple[str, ...] = (
    "0001_users",
    "0002_ledger",
    "0003_auth",
    "0004_rag",
    "0005_payments",
    "0006_jobs",
    "0007_ledger_rules",
    "0008_auth_hardening",
    "0009_ledger_defaults",
    "0010_webhook_early_reversals",
    "0011_invoice_payment_intent",
    "0012_billing_sources",
    "0014_storage_objects",
    "0015_outbox",
    "0016_auto_topup",
    "0017_asaas_checkout_claims",
    "0018_plan_changes",
    "0019_commerce",
    "0020_support",
    "0021_user_admin",
    "0022_audit_trail",
    "0023_reports",
    "0024_analytics_sql",
    "0025_discount_throttle",
)

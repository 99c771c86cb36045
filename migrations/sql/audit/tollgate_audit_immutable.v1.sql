-- The audit trail refuses UPDATE, DELETE and TRUNCATE, like the ledger: a row records what happened, and nothing
-- that happens later may rewrite or remove it. Retention never deletes audit rows, so there is no allowed path.
CREATE FUNCTION tollgate_audit_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_logs is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_logs_immutable BEFORE UPDATE OR DELETE ON audit_logs
    FOR EACH ROW EXECUTE FUNCTION tollgate_audit_immutable();
CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION tollgate_audit_immutable();

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

-- Apply a planned draw: take from the grants and record each part (the credit-line part with no grant).
-- The caller updates the account (balance, held, debt).
CREATE FUNCTION tollgate_apply_draw(
    p_user uuid, p_origin uuid, p_transaction uuid, p_hold uuid,
    p_grant_ids uuid[], p_takes numeric[], p_line numeric, p_now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE credit_grants g SET remaining = g.remaining - d.take, updated_at = p_now
        FROM unnest(p_grant_ids, p_takes) AS d(id, take) WHERE g.id = d.id;
    INSERT INTO credit_draws (origin_id, seq, user_id, grant_id, transaction_id, hold_id, amount, returned)
        SELECT p_origin, d.ord, p_user, d.id, p_transaction, p_hold, d.take, 0
        FROM unnest(p_grant_ids, p_takes) WITH ORDINALITY AS d(id, take, ord);
    IF p_line > 0 THEN
        INSERT INTO credit_draws (origin_id, seq, user_id, grant_id, transaction_id, hold_id, amount, returned)
            VALUES (p_origin, coalesce(array_length(p_grant_ids, 1), 0) + 1, p_user, NULL, p_transaction,
                    p_hold, p_line, 0);
    END IF;
END $$;

-- A charge in one round trip: lock the account, answer a repeated idempotency key, price the operation,
-- draw, write the ledger row and the draws, update the account. status is one of ok, replay, conflict,
-- insufficient, unknown_operation; nothing is written unless it is ok (beyond creating an empty account).
-- Inlined (no nested calls) with a fast path for the common case - the first grant in draw order covers
-- the whole charge - because the account row stays locked for as long as this runs.
CREATE FUNCTION tollgate_charge(
    p_user uuid, p_tx uuid, p_operation text, p_quantity numeric, p_amount numeric,
    p_key text, p_hash text, p_metadata jsonb, p_now timestamptz,
    OUT status text, OUT transaction_id uuid, OUT charged numeric, OUT balance numeric,
    OUT available numeric)
LANGUAGE plpgsql AS $$
DECLARE
    a record;
    t record;
    d record;
    v_amount numeric;
    v_allow boolean;
    v_line numeric := 0;
    v_rows integer := 0;
BEGIN
    -- The lock, the price and the bonus rule in one statement.
    SELECT ca.balance, ca.held, ca.debt, ca.bonus_auto_use,
           coalesce(s.plan_feature_costs -> u.tier ->> p_operation, s.feature_costs ->> p_operation)::numeric AS cost,
           coalesce(s.allow_bonus_auto_use_toggle, true) AS toggle_allowed
        INTO a
        FROM credit_accounts ca JOIN users u ON u.id = ca.user_id LEFT JOIN admin_settings s ON s.id = 1
        WHERE ca.user_id = p_user
        FOR UPDATE OF ca;
    IF NOT FOUND THEN
        INSERT INTO credit_accounts (user_id, created_at, updated_at) VALUES (p_user, p_now, p_now)
            ON CONFLICT DO NOTHING;
        SELECT ca.balance, ca.held, ca.debt, ca.bonus_auto_use,
               coalesce(s.plan_feature_costs -> u.tier ->> p_operation, s.feature_costs ->> p_operation)::numeric
                   AS cost,
               coalesce(s.allow_bonus_auto_use_toggle, true) AS toggle_allowed
            INTO a
            FROM credit_accounts ca JOIN users u ON u.id = ca.user_id LEFT JOIN admin_settings s ON s.id = 1
            WHERE ca.user_id = p_user
            FOR UPDATE OF ca;
    END IF;
    IF p_key IS NOT NULL THEN
        SELECT c.id, c.amount, c.balance_after, c.request_hash INTO t FROM credit_transactions c
            WHERE c.user_id = p_user AND c.idempotency_key = p_key;
        IF FOUND THEN
            transaction_id := t.id;
            IF t.request_hash IS DISTINCT FROM p_hash THEN
                status := 'conflict';
                RETURN;
            END IF;
            status := 'replay';
            charged := -t.amount;
            balance := t.balance_after;
            RETURN;
        END IF;
    END IF;
    IF p_amount IS NOT NULL THEN
        v_amount := p_amount;
    ELSIF a.cost IS NULL THEN
        status := 'unknown_operation';
        RETURN;
    ELSE
        -- Over-precise products are rounded up to the ledger's scale (4 decimals).
        v_amount := (ceil(a.cost * p_quantity * 10000) / 10000)::numeric(18, 4);
    END IF;
    v_allow := a.bonus_auto_use OR NOT a.toggle_allowed;
    IF v_amount > 0 THEN
        -- Fast path: the first grant in draw order covers the whole charge.
        WITH g AS (
            UPDATE credit_grants cg SET remaining = cg.remaining - v_amount, updated_at = p_now
            WHERE cg.id = (
                    SELECT x.id FROM credit_grants x
                    WHERE x.user_id = p_user AND x.status = 'active' AND x.remaining > 0
                      AND (x.expires_at IS NULL OR x.expires_at > p_now) AND (v_allow OR x.priority = 0)
                    ORDER BY x.priority, x.expires_at ASC NULLS LAST, x.created_at, x.id
                    LIMIT 1)
              AND cg.remaining >= v_amount
            RETURNING cg.id)
        INSERT INTO credit_draws (origin_id, seq, user_id, grant_id, transaction_id, hold_id, amount, returned)
            SELECT p_tx, 1, p_user, g.id, p_tx, NULL, v_amount, 0 FROM g;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
    END IF;
    IF v_rows = 0 THEN
        SELECT * INTO d FROM tollgate_plan_draw(p_user, v_amount, v_allow, p_now);
        IF NOT d.ok THEN
            status := 'insufficient';
            charged := v_amount;
            balance := a.balance;
            available := d.available;
            RETURN;
        END IF;
        PERFORM tollgate_apply_draw(p_user, p_tx, p_tx, NULL, d.grant_ids, d.takes, d.line, p_now);
        v_line := d.line;
    END IF;
    WITH acc AS (
        UPDATE credit_accounts ca SET balance = ca.balance - v_amount, debt = ca.debt + v_line, updated_at = p_now
        WHERE ca.user_id = p_user
        RETURNING ca.balance)
    INSERT INTO credit_transactions (id, user_id, type, amount, balance_after, operation, quantity,
                                     idempotency_key, request_hash, metadata, created_at)
        SELECT p_tx, p_user, 'usage', -v_amount, acc.balance, p_operation, p_quantity,
               p_key, p_hash, coalesce(p_metadata, '{}'::jsonb), p_now
        FROM acc;
    status := 'ok';
    transaction_id := p_tx;
    charged := v_amount;
    balance := a.balance - v_amount;
END $$;

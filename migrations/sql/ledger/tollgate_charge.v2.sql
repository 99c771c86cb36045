-- A charge in one round trip: lock the account, answer a repeated idempotency key, price the operation,
-- draw, write the ledger row and the draws, update the account. status is one of ok, replay, conflict,
-- insufficient, unknown_operation; nothing is written unless it is ok (beyond creating an empty account).
-- The rules come from their one definition each (tollgate_unit_cost, tollgate_cost, tollgate_allow_packs,
-- tollgate_draw_candidates; the planner inlines them, so this stays as cheap as written out). A fast path
-- serves the common case - the first grant in draw order covers the whole charge - because the account row
-- stays locked for as long as this runs; otherwise the planned draw splits the charge.
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
    v_line numeric := 0;
    v_rows integer := 0;
BEGIN
    -- The lock, the price and the auto-use rule in one statement; the account is created on first use
    -- (race-safe: a concurrent creator wins and this one then locks its row).
    LOOP
        SELECT ca.balance, ca.held, ca.debt,
               tollgate_unit_cost(s.feature_costs, s.plan_feature_costs, u.tier, p_operation) AS cost,
               tollgate_allow_packs(ca.bonus_auto_use, s.allow_bonus_auto_use_toggle) AS allow_packs
            INTO a
            FROM credit_accounts ca JOIN users u ON u.id = ca.user_id LEFT JOIN admin_settings s ON s.id = 1
            WHERE ca.user_id = p_user
            FOR UPDATE OF ca;
        EXIT WHEN FOUND;
        INSERT INTO credit_accounts (user_id, created_at, updated_at) VALUES (p_user, p_now, p_now)
            ON CONFLICT DO NOTHING;
    END LOOP;
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
        v_amount := tollgate_cost(a.cost, p_quantity);
    END IF;
    IF v_amount > 0 THEN
        -- Fast path: the first grant in draw order covers the whole charge.
        WITH g AS (
            UPDATE credit_grants cg SET remaining = cg.remaining - v_amount, updated_at = p_now
            WHERE cg.id = (SELECT c.grant_id FROM tollgate_draw_candidates(p_user, a.allow_packs, p_now) c LIMIT 1)
              AND cg.remaining >= v_amount
            RETURNING cg.id)
        INSERT INTO credit_draws (origin_id, seq, user_id, grant_id, transaction_id, hold_id, amount, returned)
            SELECT p_tx, 1, p_user, g.id, p_tx, NULL, v_amount, 0 FROM g;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
    END IF;
    IF v_rows = 0 THEN
        SELECT * INTO d FROM tollgate_plan_draw(p_user, v_amount, a.allow_packs, p_now);
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

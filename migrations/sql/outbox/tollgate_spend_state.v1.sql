-- What credits.low / credits.depleted decide on after a spend (tollgate/ledger/balance_events.py): the account's
-- balance and held credits, its episode (the latest grant: a top-up starts a new one), the recent usage (at most
-- p_sample rows since p_since, newest first, so the cost stays flat for heavy users) and whether this episode's
-- events were already emitted (their dedupe keys). STABLE: called in a charge's statement it reads that
-- statement's snapshot. plpgsql, not sql: a sql function would be inlined and planned again on every charge
-- (most of its cost); plpgsql keeps its plan per connection.
CREATE OR REPLACE FUNCTION tollgate_spend_state(p_user uuid, p_since timestamptz, p_sample integer)
RETURNS TABLE (account_balance numeric, held numeric, episode uuid, used numeric, n bigint, oldest timestamptz,
               low_sent boolean, depleted_sent boolean)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT a.balance, a.held, ep.id, u.used, u.n, u.oldest,
           EXISTS (SELECT 1 FROM outbox_events o
                   WHERE o.dedupe_key = 'credits.low:' || a.user_id || ':' || coalesce(ep.id::text, '-')),
           EXISTS (SELECT 1 FROM outbox_events o
                   WHERE o.dedupe_key = 'credits.depleted:' || a.user_id || ':' || coalesce(ep.id::text, '-'))
    FROM credit_accounts a
    LEFT JOIN LATERAL (
        SELECT g.id FROM credit_grants g WHERE g.user_id = a.user_id ORDER BY g.created_at DESC, g.id DESC LIMIT 1
    ) ep ON true
    LEFT JOIN LATERAL (
        SELECT coalesce(-sum(s.amount), 0) AS used, count(*) AS n, min(s.created_at) AS oldest FROM (
            SELECT t.amount, t.created_at FROM credit_transactions t
            WHERE t.user_id = a.user_id AND t.type IN ('usage', 'capture') AND t.created_at >= p_since
            ORDER BY t.created_at DESC LIMIT p_sample
        ) s
    ) u ON true
    WHERE a.user_id = p_user;
END $$;

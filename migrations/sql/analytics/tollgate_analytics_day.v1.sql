-- One day's business metrics (seed 004's daily metrics), from p_start (included) to p_end (excluded): the
-- AnalyticsRollup (tollgate/jobs/analytics.py) upserts each row into `analytics` per (day, metric, dimension).
-- This is the one definition of every metric:
-- - `mrr` per currency: paying subscriptions' unit amount x quantity at the end of the day, yearly plans counted
--   as a twelfth. Paying means a paid status of any provider (`active`, or `past_due` while the provider still
--   retries the charge: it leaves MRR when the provider gives up and cancels), a price above 0 (manual plans and
--   free items are not revenue), out of its trial (`trialing`/`on_trial`, or a trial ending after that day), not
--   set to cancel at the period's end (it will not recur: churn counts it the day it was canceled) and not ended;
-- - `active_subscriptions`: subscriptions live (trials included) at the end of the day;
-- - `new_users`: accounts created that day; `new_customers`: users whose first payment (a completed purchase or
--   a subscription) happened that day;
-- - `churned_subscriptions`: subscriptions that were canceled or ended that day;
-- - `churn_rate`: a ratio (0.05 is 5%): of the subscriptions paying at the start of the day, the share canceled or
--   ended during it (0 when none were paying);
-- - `revenue` per currency: completed purchases paid that day, less what was refunded of them;
-- - `credits_granted`, `credits_used`, `credits_expired`: from the ledger rows of that day.
-- Every metric has a row: a day with nothing still says 0 (under dimension '', as do the metrics without one).
-- Statuses are read as they are at the call, so a day's figures are those of the night after it.
-- STABLE, one statement: every metric reads the same snapshot, so a day's figures agree with each other.
CREATE FUNCTION tollgate_analytics_day(p_start timestamptz, p_end timestamptz)
RETURNS TABLE (metric text, dimension text, value numeric)
LANGUAGE sql STABLE AS $$
WITH statuses (status, paying) AS (
    -- The statuses in which any provider is charging for the subscription, and the trials (live, not paying).
    -- Asaas's `pending` has not been paid once; Lemon Squeezy's `cancelled` and Clerk's `canceled` will not renew.
    VALUES ('active', true), ('past_due', true), ('trialing', false), ('on_trial', false)
),
figures (metric, dimension, value) AS (
    -- A grouped metric is left-joined to one row, so a day with no group still has its row.
    SELECT 'mrr', m.dimension, m.value FROM (VALUES (0)) AS one (n) LEFT JOIN (
        SELECT coalesce(s.currency, 'usd') AS dimension,
               sum(coalesce(s.unit_amount, 0) * s.quantity / CASE WHEN s.interval = 'year' THEN 12 ELSE 1 END)
                   AS value
        FROM subscriptions s
        WHERE s.status IN (SELECT st.status FROM statuses st WHERE st.paying)
          AND coalesce(s.unit_amount, 0) > 0 AND NOT s.cancel_at_period_end
          AND s.created_at < p_end AND (s.ended_at IS NULL OR s.ended_at >= p_end)
          AND (s.trial_end IS NULL OR s.trial_end < p_end)
        GROUP BY 1
    ) AS m ON true
    UNION ALL
    SELECT 'active_subscriptions', '', count(*) FROM subscriptions s
    WHERE s.status IN (SELECT st.status FROM statuses st)
      AND s.created_at < p_end AND (s.ended_at IS NULL OR s.ended_at >= p_end)
    UNION ALL
    SELECT 'new_users', '', count(*) FROM users u WHERE u.created_at >= p_start AND u.created_at < p_end
    UNION ALL
    SELECT 'new_customers', '', count(*) FROM (
        SELECT p.user_id, min(p.at) AS first_paid FROM (
            SELECT user_id, coalesce(paid_at, created_at) AS at FROM purchases WHERE status <> 'pending'
            UNION ALL
            SELECT user_id, created_at FROM subscriptions
        ) AS p GROUP BY p.user_id
    ) AS firsts
    WHERE firsts.first_paid >= p_start AND firsts.first_paid < p_end
    UNION ALL
    SELECT 'churned_subscriptions', '', count(*) FROM subscriptions s
    WHERE coalesce(s.ended_at, s.canceled_at) >= p_start AND coalesce(s.ended_at, s.canceled_at) < p_end
    UNION ALL
    -- Statuses are today's, so the start-of-day base is: paid, past its trial and not stopped by then, and either
    -- still paying or stopped since (what stopped since was live at the start).
    SELECT 'churn_rate', '',
           coalesce(round(count(*) FILTER (WHERE base.stopped < p_end)::numeric / nullif(count(*), 0), 4), 0)
    FROM (
        SELECT coalesce(s.ended_at, s.canceled_at) AS stopped FROM subscriptions s
        WHERE coalesce(s.unit_amount, 0) > 0 AND s.created_at < p_start
          AND (s.trial_end IS NULL OR s.trial_end <= p_start)
          AND (coalesce(s.ended_at, s.canceled_at) IS NULL OR coalesce(s.ended_at, s.canceled_at) >= p_start)
          AND (s.status IN (SELECT st.status FROM statuses st WHERE st.paying)
               OR coalesce(s.ended_at, s.canceled_at) IS NOT NULL)
    ) AS base
    UNION ALL
    SELECT 'revenue', r.dimension, r.value FROM (VALUES (0)) AS one (n) LEFT JOIN (
        SELECT p.currency AS dimension, sum(p.amount - p.refunded_amount) AS value FROM purchases p
        WHERE coalesce(p.paid_at, p.created_at) >= p_start AND coalesce(p.paid_at, p.created_at) < p_end
          AND p.status IN ('completed', 'partially_refunded', 'refunded')
        GROUP BY 1
    ) AS r ON true
    UNION ALL
    SELECT 'credits_granted', '', coalesce(sum(t.amount), 0) FROM credit_transactions t
    WHERE t.created_at >= p_start AND t.created_at < p_end
      AND t.type IN ('signup', 'purchase', 'monthly_allowance', 'promo', 'adjustment') AND t.amount > 0
    UNION ALL
    SELECT 'credits_used', '', coalesce(-sum(t.amount), 0) FROM credit_transactions t
    WHERE t.created_at >= p_start AND t.created_at < p_end AND t.type IN ('usage', 'capture')
    UNION ALL
    SELECT 'credits_expired', '', coalesce(-sum(t.amount), 0) FROM credit_transactions t
    WHERE t.created_at >= p_start AND t.created_at < p_end AND t.type = 'expiry'
)
SELECT f.metric::text, coalesce(f.dimension, '')::text, coalesce(f.value, 0)::numeric FROM figures f
$$;

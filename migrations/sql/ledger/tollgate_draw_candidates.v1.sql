-- The draw order, defined once: the grants a deduction may draw from, in the order it draws them. Free grants
-- (allowance, sign-up, promotions, adjustments, refunds) before purchased packs (packs only when p_allow_packs),
-- each soonest expiry first (no expiry last), then oldest, then by id. Both the charge's fast path
-- (tollgate_charge) and the planned draw (tollgate_plan_draw: holds, adjustments, split charges) read it.
--
-- A plain SQL function (STABLE, not STRICT, no SET clause), so the planner inlines it into its caller: the
-- caller's LIMIT reaches the index scan, and rows arrive in this ORDER BY, which ix_credit_grants_draw serves
-- without a sort. Changing the order means changing that index too (tests/integration/test_ledger_sql_draw_order.py
-- checks they agree).
CREATE FUNCTION tollgate_draw_candidates(p_user uuid, p_allow_packs boolean, p_now timestamptz)
RETURNS TABLE (grant_id uuid, remaining numeric)
LANGUAGE sql STABLE AS $$
    SELECT g.id, g.remaining FROM credit_grants g
    WHERE g.user_id = p_user AND g.status = 'active' AND g.remaining > 0
      AND (g.expires_at IS NULL OR g.expires_at > p_now)
      AND (p_allow_packs OR NOT g.is_pack)
    ORDER BY g.is_pack, g.expires_at ASC NULLS LAST, g.created_at, g.id
$$;

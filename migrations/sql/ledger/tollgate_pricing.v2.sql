-- What p_quantity units of an operation cost the user, at the ledger's scale (NULL: no cost is configured, or
-- no operation was given), and whether a deduction of theirs may draw purchased packs: the rules
-- tollgate_charge applies, for the ledger's other deductions (holds). Read while the account row is locked.
CREATE FUNCTION tollgate_pricing(
    p_user uuid, p_operation text, p_quantity numeric, OUT amount numeric, OUT allow_packs boolean)
LANGUAGE sql STABLE AS $$
    SELECT tollgate_cost(tollgate_unit_cost(s.feature_costs, s.plan_feature_costs, u.tier, p_operation), p_quantity),
           tollgate_allow_packs(ca.bonus_auto_use, s.allow_bonus_auto_use_toggle)
    FROM users u
        LEFT JOIN credit_accounts ca ON ca.user_id = u.id
        LEFT JOIN admin_settings s ON s.id = 1
    WHERE u.id = p_user
$$;

-- The cost of one unit of an operation for the user's plan (a plan override first), and whether users may
-- choose to use purchased credits automatically (when they may not, purchased credits are always used).
CREATE FUNCTION tollgate_pricing(p_user uuid, p_operation text, OUT cost numeric, OUT toggle_allowed boolean)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(s.plan_feature_costs -> u.tier ->> p_operation, s.feature_costs ->> p_operation)::numeric,
           coalesce(s.allow_bonus_auto_use_toggle, true)
    FROM users u LEFT JOIN admin_settings s ON s.id = 1
    WHERE u.id = p_user
$$;

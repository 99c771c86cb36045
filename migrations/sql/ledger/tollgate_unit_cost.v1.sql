-- Per-plan pricing, defined once: the cost of one unit of an operation is the user's plan's override, else the
-- default feature cost; NULL when neither names the operation. Inlined by the planner where it is called.
CREATE FUNCTION tollgate_unit_cost(
    p_feature_costs jsonb, p_plan_feature_costs jsonb, p_tier text, p_operation text) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(p_plan_feature_costs -> p_tier ->> p_operation, p_feature_costs ->> p_operation)::numeric
$$;

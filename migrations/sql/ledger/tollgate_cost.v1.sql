-- Cost rounding, defined once: quantity x unit cost, an over-precise product rounded UP to the ledger's scale
-- (4 decimals), so no charge is ever smaller than its price. Inlined by the planner where it is called.
CREATE FUNCTION tollgate_cost(p_unit_cost numeric, p_quantity numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (ceil(p_unit_cost * p_quantity * 10000) / 10000)::numeric(18, 4)
$$;

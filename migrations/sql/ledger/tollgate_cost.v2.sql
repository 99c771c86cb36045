-- Cost rounding, defined once: quantity x unit cost, an over-precise product rounded UP to the ledger's scale
-- (4 decimals), so no charge is ever smaller than its price. A price beyond what NUMERIC(18, 4) holds (a large
-- unit cost times a large quantity) is the largest amount it holds, which no balance covers (grants stay below
-- 1e12): refused as insufficient credits instead of failing with an overflow. Inlined by the planner where it is
-- called.
CREATE OR REPLACE FUNCTION tollgate_cost(p_unit_cost numeric, p_quantity numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_unit_cost * p_quantity IS NOT NULL  -- no cost configured: no price (least() skips NULL)
        THEN least(ceil(p_unit_cost * p_quantity * 10000) / 10000, 99999999999999.9999)::numeric(18, 4) END
$$;

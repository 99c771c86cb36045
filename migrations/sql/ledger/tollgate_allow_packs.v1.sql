-- Auto-use, defined once: a deduction may draw purchased packs when the user turned bonus auto-use on, or when
-- the deployment does not let users choose (then packs are always used). A missing admin_settings row lets
-- users choose. Inlined by the planner where it is called.
CREATE FUNCTION tollgate_allow_packs(p_bonus_auto_use boolean, p_toggle_allowed boolean) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(p_bonus_auto_use, false) OR NOT coalesce(p_toggle_allowed, true)
$$;

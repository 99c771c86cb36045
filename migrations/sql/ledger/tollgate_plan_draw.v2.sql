-- Which grants a deduction of p_amount draws from, without writing anything: the grants of
-- tollgate_draw_candidates, in its order, until the amount is covered; what grants cannot cover comes from the
-- account's credit line (floor below zero). When even that is not enough, ok is false and available says what
-- could have been drawn.
CREATE FUNCTION tollgate_plan_draw(
    p_user uuid, p_amount numeric, p_allow_packs boolean, p_now timestamptz,
    OUT ok boolean, OUT grant_ids uuid[], OUT takes numeric[], OUT line numeric, OUT available numeric)
LANGUAGE plpgsql AS $$
DECLARE
    v_need numeric := p_amount;
    v_total numeric := 0;
    v_take numeric;
    v_room numeric;
    r record;
BEGIN
    grant_ids := '{}';
    takes := '{}';
    line := 0;
    IF v_need > 0 THEN
        FOR r IN SELECT c.grant_id, c.remaining FROM tollgate_draw_candidates(p_user, p_allow_packs, p_now) c LOOP
            v_total := v_total + r.remaining;
            IF v_need > 0 THEN
                v_take := least(r.remaining, v_need);
                grant_ids := grant_ids || r.grant_id;
                takes := takes || v_take;
                v_need := v_need - v_take;
            END IF;
            EXIT WHEN v_need = 0;
        END LOOP;
    END IF;
    SELECT -a.floor - a.debt INTO v_room FROM credit_accounts a WHERE a.user_id = p_user;
    IF v_need > 0 THEN
        IF v_need > v_room THEN
            ok := false;
            available := v_total + v_room;
            RETURN;
        END IF;
        line := v_need;
    END IF;
    ok := true;
END $$;

"""The catalogue's seed loaders (plans, credit_packs, feature_costs sections of seed.yaml)."""

from __future__ import annotations

from decimal import Decimal

import yaml
from sqlalchemy import select, text

from tollgate.models.credits import AdminSettings, CreditPack, Plan
from tollgate_local.seed import DEFAULT_SEED_FILE, LOADERS
from tollgate_local.seed_catalogue import load_credit_packs, load_feature_costs, load_plans


def test_loaders_are_registered_for_their_sections():
    assert LOADERS["plans"] is load_plans
    assert LOADERS["credit_packs"] is load_credit_packs
    assert LOADERS["feature_costs"] is load_feature_costs


def test_the_shipped_catalogue_loads_once_and_never_overwrites(db):
    data = yaml.safe_load(DEFAULT_SEED_FILE.read_text(encoding="utf-8"))
    # Given the shipped catalogue loaded once
    with db() as uow:
        written = (
            load_plans(uow, data["plans"]),
            load_credit_packs(uow, data["credit_packs"]),
            load_feature_costs(uow, data["feature_costs"]),
        )
        uow.commit()
    assert written == (len(data["plans"]), len(data["credit_packs"]), len(data["feature_costs"]))
    # And an admin then changed a cost
    with db() as uow:
        uow.session.execute(text("""UPDATE admin_settings SET feature_costs = feature_costs || '{"chat": "9"}'"""))
        uow.commit()
    # When it is loaded again
    with db() as uow:
        again = (
            load_plans(uow, data["plans"]),
            load_credit_packs(uow, data["credit_packs"]),
            load_feature_costs(uow, data["feature_costs"]),
        )
        uow.commit()
    # Then nothing is written and nothing is overwritten
    assert again == (0, 0, 0)
    with db() as uow:
        plans = uow.session.execute(select(Plan).order_by(Plan.sort_order)).scalars().all()
        packs = uow.session.execute(select(CreditPack)).scalars().all()
        costs = uow.session.execute(select(AdminSettings.feature_costs)).scalar_one()
        assert [p.tier for p in plans] == [p["tier"] for p in data["plans"]]
        pro = next(p for p in plans if p.tier == "PRO")
        assert (pro.monthly_credits, pro.rollover, pro.rollover_cap) == (Decimal(1000), "capped", Decimal(500))
        assert len(packs) == len(data["credit_packs"])
        assert costs["chat"] == "9"
        assert costs["faq_search"] == "0.2000"

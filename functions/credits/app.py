"""Credits (API.md "Credits"): the caller's balance, usage, holds, history, costs and settings; the public
catalogue; and the admin credit routes. Each route validates its input, calls one service function and
returns a typed model. Amounts are decimal strings."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints, WithJsonSchema, model_validator

from tollgate.db import UnitOfWork
from tollgate.errors import ValidationFailed
from tollgate.http.api import create_app, current_actor, current_principal
from tollgate.http.edge import Cursor, Limit, OptionalTimestampQuery, StrictBody, Timestamp, idempotency_key
from tollgate.ledger import SCALE
from tollgate.observability import logger, metrics, tracer
from tollgate.services import auto_topup, credits, credits_admin

app = create_app("credits")


def _credits_str(value: Decimal) -> str:
    return format(value.quantize(SCALE), "f")


def _money_str(value: Decimal) -> str:
    return format(value.quantize(Decimal("0.01")), "f")


# Decimal strings out (never floats); in, a decimal string or a JSON number.
CreditsOut = Annotated[
    Decimal, PlainSerializer(_credits_str, return_type=str), WithJsonSchema({"type": "string", "example": "1.5000"})
]
MoneyOut = Annotated[
    Decimal, PlainSerializer(_money_str, return_type=str), WithJsonSchema({"type": "string", "example": "19.00"})
]
CreditsIn = Annotated[Decimal, Field(allow_inf_nan=False, max_digits=18, decimal_places=4)]
MoneyIn = Annotated[Decimal, Field(ge=0, allow_inf_nan=False, max_digits=12, decimal_places=2)]
Operation = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.:-]{0,63}$")]
Tier = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9_]{1,32}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$", to_lower=True)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
ProviderId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]


# --- bodies ---------------------------------------------------------------------------------------------------
class UsageIn(StrictBody):
    operation: Operation
    quantity: CreditsIn = Decimal(1)
    metadata: dict[str, Any] | None = None


class HoldIn(StrictBody):
    operation: Operation | None = None
    quantity: CreditsIn = Decimal(1)
    amount: CreditsIn | None = None
    ttl_seconds: int = Field(default=300, ge=1, le=86_400)
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> HoldIn:
        if (self.operation is None) == (self.amount is None):
            raise ValueError("give either operation (with quantity) or amount")
        return self


class CaptureIn(StrictBody):
    amount: CreditsIn


class AutoTopUpIn(StrictBody):
    enabled: bool
    threshold: CreditsIn = Field(ge=0)  # available credits under which a top-up starts
    pack_id: uuid.UUID
    monthly_cap: MoneyIn = Field(gt=0)  # money per calendar month (UTC), in the pack's currency


class SettingsIn(StrictBody):
    bonus_auto_use: bool


class AdjustmentIn(StrictBody):
    amount: CreditsIn
    reason: Reason
    expires_at: Timestamp | None = None


class RefundIn(StrictBody):
    transaction_id: uuid.UUID
    amount: CreditsIn | None = None
    reason: Reason


class FloorIn(StrictBody):
    floor: CreditsIn
    reason: Reason


class CreditSettingsIn(StrictBody):
    allow_bonus_auto_use_toggle: bool


class PlanIn(StrictBody):
    tier: Tier
    name: ShortText
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    monthly_credits: CreditsIn = Field(default=Decimal(0), ge=0)
    rollover: Literal["none", "capped", "full"] = "none"
    rollover_cap: CreditsIn | None = Field(default=None, ge=0)
    price_monthly: MoneyIn = Decimal(0)
    price_yearly: MoneyIn = Decimal(0)
    currency: Currency = "usd"
    features: list[Any] = Field(default_factory=list, max_length=100)
    badge: Annotated[str, StringConstraints(max_length=50)] | None = None
    highlight: bool = False
    cta_type: Annotated[str, StringConstraints(max_length=32)] | None = None
    cta_label: Annotated[str, StringConstraints(max_length=100)] | None = None
    cta_url: Annotated[str, StringConstraints(max_length=2000)] | None = None
    sort_order: int = Field(default=0, ge=-10_000, le=10_000)
    active: bool = True
    billing_source: Annotated[str, StringConstraints(max_length=32)] = "stripe"
    stripe_price_id_monthly: ProviderId | None = None
    stripe_price_id_yearly: ProviderId | None = None
    lemonsqueezy_variant_id_monthly: Annotated[str, StringConstraints(max_length=64)] | None = None
    lemonsqueezy_variant_id_yearly: Annotated[str, StringConstraints(max_length=64)] | None = None
    clerk_plan_id: ProviderId | None = None
    asaas_id: ProviderId | None = None


class PlanPatch(StrictBody):
    tier: Tier | None = None
    name: ShortText | None = None
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    monthly_credits: CreditsIn | None = Field(default=None, ge=0)
    rollover: Literal["none", "capped", "full"] | None = None
    rollover_cap: CreditsIn | None = Field(default=None, ge=0)
    price_monthly: MoneyIn | None = None
    price_yearly: MoneyIn | None = None
    currency: Currency | None = None
    features: list[Any] | None = Field(default=None, max_length=100)
    badge: Annotated[str, StringConstraints(max_length=50)] | None = None
    highlight: bool | None = None
    cta_type: Annotated[str, StringConstraints(max_length=32)] | None = None
    cta_label: Annotated[str, StringConstraints(max_length=100)] | None = None
    cta_url: Annotated[str, StringConstraints(max_length=2000)] | None = None
    sort_order: int | None = Field(default=None, ge=-10_000, le=10_000)
    active: bool | None = None
    billing_source: Annotated[str, StringConstraints(max_length=32)] | None = None
    stripe_price_id_monthly: ProviderId | None = None
    stripe_price_id_yearly: ProviderId | None = None
    lemonsqueezy_variant_id_monthly: Annotated[str, StringConstraints(max_length=64)] | None = None
    lemonsqueezy_variant_id_yearly: Annotated[str, StringConstraints(max_length=64)] | None = None
    clerk_plan_id: ProviderId | None = None
    asaas_id: ProviderId | None = None


class PackIn(StrictBody):
    name: ShortText
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    credits: CreditsIn = Field(gt=0)
    price: MoneyIn
    currency: Currency = "usd"
    expires_after_days: int | None = Field(default=None, ge=1, le=36_500)
    sort_order: int = Field(default=0, ge=-10_000, le=10_000)
    active: bool = True
    stripe_price_id: ProviderId | None = None
    lemonsqueezy_variant_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    asaas_id: ProviderId | None = None


class PackPatch(StrictBody):
    name: ShortText | None = None
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    credits: CreditsIn | None = Field(default=None, gt=0)
    price: MoneyIn | None = None
    currency: Currency | None = None
    expires_after_days: int | None = Field(default=None, ge=1, le=36_500)
    sort_order: int | None = Field(default=None, ge=-10_000, le=10_000)
    active: bool | None = None
    stripe_price_id: ProviderId | None = None
    lemonsqueezy_variant_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    asaas_id: ProviderId | None = None


NOT_NULL_PLAN = frozenset(set(PlanIn.model_fields) - {
    "description", "rollover_cap", "badge", "cta_type", "cta_label", "cta_url", "stripe_price_id_monthly",
    "stripe_price_id_yearly", "lemonsqueezy_variant_id_monthly", "lemonsqueezy_variant_id_yearly", "clerk_plan_id",
    "asaas_id",
})  # fmt: skip
NOT_NULL_PACK = frozenset(
    set(PackIn.model_fields) - {"description", "expires_after_days", "stripe_price_id", "lemonsqueezy_variant_id",
                                "asaas_id"}
)  # fmt: skip


def _no_nulls(body: BaseModel, fields: frozenset[str]) -> None:
    nulls = sorted(f for f in body.model_fields_set & fields if getattr(body, f) is None)
    if nulls:
        raise ValidationFailed("these fields cannot be null", details={"fields": nulls})


# --- answers --------------------------------------------------------------------------------------------------
class BalanceOut(BaseModel):
    balance: CreditsOut
    available: CreditsOut
    allowance: CreditsOut
    bonus: CreditsOut
    promotional: CreditsOut
    held: CreditsOut
    debt: CreditsOut
    floor: CreditsOut
    next_reset_at: datetime | None
    tier: str
    bonus_auto_use: bool
    bonus_auto_use_locked: bool


class ChargeOut(BaseModel):
    transaction_id: uuid.UUID
    charged: CreditsOut
    balance: CreditsOut


class HoldOut(BaseModel):
    hold_id: uuid.UUID
    amount: CreditsOut
    expires_at: datetime


class CaptureOut(BaseModel):
    transaction_id: uuid.UUID
    charged: CreditsOut
    released: CreditsOut
    balance: CreditsOut


class ReleaseOut(BaseModel):
    released: CreditsOut
    balance: CreditsOut


class AutoTopUpAttemptOut(BaseModel):
    id: uuid.UUID
    sequence: int
    status: str
    amount: MoneyOut
    currency: str
    credits: CreditsOut
    payment_intent_id: str | None
    failure_code: str | None
    failure_reason: str | None
    created_at: datetime


class AutoTopUpOut(BaseModel):
    enabled: bool
    threshold: CreditsOut | None
    pack_id: uuid.UUID | None
    monthly_cap: MoneyOut | None
    currency: str | None
    disabled_reason: str | None
    disabled_at: datetime | None
    spent_this_month: MoneyOut
    last_attempt: AutoTopUpAttemptOut | None


class TransactionOut(BaseModel):
    id: uuid.UUID
    type: str
    amount: CreditsOut
    balance_after: CreditsOut
    operation: str | None
    quantity: CreditsOut | None
    hold_id: uuid.UUID | None
    reverses_id: uuid.UUID | None
    metadata: dict[str, Any]
    created_at: datetime


class TransactionPageOut(BaseModel):
    items: list[TransactionOut]
    next_cursor: str | None


class UsageLineOut(BaseModel):
    operation: str
    count: int
    credits: CreditsOut


class SettingsOut(BaseModel):
    bonus_auto_use: bool
    bonus_auto_use_locked: bool


class PlanOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tier: str
    name: str
    description: str | None
    monthly_credits: CreditsOut
    rollover: str
    rollover_cap: CreditsOut | None
    price_monthly: MoneyOut
    price_yearly: MoneyOut
    currency: str
    features: Any
    badge: str | None
    highlight: bool
    cta_type: str | None
    cta_label: str | None
    cta_url: str | None
    sort_order: int
    active: bool
    billing_source: str
    stripe_price_id_monthly: str | None
    stripe_price_id_yearly: str | None
    lemonsqueezy_variant_id_monthly: str | None
    lemonsqueezy_variant_id_yearly: str | None
    clerk_plan_id: str | None
    asaas_id: str | None


class PlanPageOut(BaseModel):
    items: list[PlanOut]
    next_cursor: str | None


class PackOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    credits: CreditsOut
    price: MoneyOut
    currency: str
    expires_after_days: int | None
    sort_order: int
    active: bool
    stripe_price_id: str | None
    lemonsqueezy_variant_id: str | None
    asaas_id: str | None


class PackPageOut(BaseModel):
    items: list[PackOut]
    next_cursor: str | None


class AdjustmentOut(BaseModel):
    transaction_id: uuid.UUID
    amount: CreditsOut
    balance: CreditsOut
    grant_id: uuid.UUID | None


class RefundOut(BaseModel):
    transaction_id: uuid.UUID
    refunded_transaction_id: uuid.UUID
    refunded: CreditsOut
    expired: CreditsOut
    balance: CreditsOut


class GrantOut(BaseModel):
    id: uuid.UUID
    kind: str
    amount: CreditsOut
    remaining: CreditsOut
    status: str
    source_key: str
    expires_at: datetime | None
    expired_at: datetime | None
    created_at: datetime


class UserCreditsOut(BaseModel):
    user_id: uuid.UUID
    balance: CreditsOut
    held: CreditsOut
    debt: CreditsOut
    floor: CreditsOut
    bonus_auto_use: bool
    grants: list[GrantOut]


class FloorOut(BaseModel):
    floor: CreditsOut


class CreditSettingsOut(BaseModel):
    allow_bonus_auto_use_toggle: bool


class MismatchOut(BaseModel):
    user_id: uuid.UUID
    balance: CreditsOut
    ledger_sum: CreditsOut
    grants_remaining: CreditsOut
    debt: CreditsOut
    held: CreditsOut
    active_holds: CreditsOut
    problems: list[str]


class ReconcileOut(BaseModel):
    users_checked: int
    mismatches: list[MismatchOut]


# --- edge helpers ---------------------------------------------------------------------------------------------
def _user_id() -> uuid.UUID:
    return current_principal(app).user_id


def _balance_out(view: credits.BalanceView) -> BalanceOut:
    return BalanceOut(
        balance=view.balance,
        available=view.available,
        allowance=view.allowance,
        bonus=view.bonus,
        promotional=view.promotional,
        held=view.held,
        debt=view.debt,
        floor=view.floor,
        next_reset_at=view.next_reset_at,
        tier=view.tier,
        bonus_auto_use=view.bonus_auto_use,
        bonus_auto_use_locked=view.bonus_auto_use_locked,
    )


def _auto_topup_out(view: auto_topup.AutoTopUpView) -> AutoTopUpOut:
    last = view.last_attempt
    return AutoTopUpOut(
        enabled=view.enabled,
        threshold=view.threshold,
        pack_id=view.pack_id,
        monthly_cap=view.monthly_cap,
        currency=view.currency,
        disabled_reason=view.disabled_reason,
        disabled_at=view.disabled_at,
        spent_this_month=view.spent_this_month,
        last_attempt=AutoTopUpAttemptOut(
            id=last.id, sequence=last.sequence, status=last.status, amount=last.amount, currency=last.currency,
            credits=last.credits, payment_intent_id=last.payment_intent_id, failure_code=last.failure_code,
            failure_reason=last.failure_reason, created_at=last.created_at,
        )
        if last is not None
        else None,
    )  # fmt: skip


def _costs_out(costs: dict[str, Decimal]) -> dict[str, str]:
    return {op: _credits_str(cost) for op, cost in costs.items()}


# --- the caller's credits -------------------------------------------------------------------------------------
@app.get("/credits/balance", summary="The caller's balance")
def get_balance() -> BalanceOut:
    return _balance_out(credits.get_balance(UnitOfWork(), _user_id()))


@app.post("/credits/usage", summary="Charge the caller for an operation", responses={201: {"description": "Charged"}})
def record_usage(body: UsageIn) -> tuple[ChargeOut, int]:
    result = credits.record_usage(
        UnitOfWork(), _user_id(), operation=body.operation, quantity=body.quantity, metadata=body.metadata,
        idempotency_key=idempotency_key(app),
    )  # fmt: skip
    return ChargeOut(transaction_id=result.transaction_id, charged=result.charged, balance=result.balance), 201


@app.post("/credits/holds", summary="Hold credits for an operation whose cost is known afterwards")
def create_hold(body: HoldIn) -> tuple[HoldOut, int]:
    result = credits.create_hold(
        UnitOfWork(), _user_id(), operation=body.operation, quantity=body.quantity, amount=body.amount,
        ttl_seconds=body.ttl_seconds, idempotency_key=idempotency_key(app), metadata=body.metadata,
    )  # fmt: skip
    return HoldOut(hold_id=result.hold_id, amount=result.amount, expires_at=result.expires_at), 201


@app.post("/credits/holds/<hold_id>/capture", summary="Charge part or all of a hold; the rest goes back")
def capture_hold(hold_id: uuid.UUID, body: CaptureIn) -> CaptureOut:
    result = credits.capture_hold(
        UnitOfWork(), _user_id(), hold_id, amount=body.amount, idempotency_key=idempotency_key(app)
    )
    return CaptureOut(
        transaction_id=result.transaction_id, charged=result.charged, released=result.released, balance=result.balance
    )


@app.post("/credits/holds/<hold_id>/release", summary="Give a hold back")
def release_hold(hold_id: uuid.UUID) -> ReleaseOut:
    result = credits.release_hold(UnitOfWork(), _user_id(), hold_id)
    return ReleaseOut(released=result.released, balance=result.balance)


@app.get("/credits/transactions", summary="The caller's ledger, newest first")
def list_transactions(
    type: Annotated[str | None, Query(max_length=32)] = None,
    operation: Annotated[str | None, Query(max_length=64)] = None,
    since: OptionalTimestampQuery = None,
    until: OptionalTimestampQuery = None,
    cursor: Cursor = None,
    limit: Limit = 20,
) -> TransactionPageOut:
    page = credits.list_transactions(
        UnitOfWork(), _user_id(), type_=type, operation=operation, since=since, until=until, cursor=cursor,
        limit=limit,
    )  # fmt: skip
    items = [
        TransactionOut(
            id=t.id,
            type=t.type,
            amount=t.amount,
            balance_after=t.balance_after,
            operation=t.operation,
            quantity=t.quantity,
            hold_id=t.hold_id,
            reverses_id=t.reverses_id,
            metadata=t.metadata,
            created_at=t.created_at,
        )
        for t in page.items
    ]
    return TransactionPageOut(items=items, next_cursor=page.next_cursor)


@app.get("/credits/usage/summary", summary="Credits used per operation over the last days")
def usage_summary(days: Annotated[int, Query(ge=1, le=366)] = 30) -> list[UsageLineOut]:
    lines = credits.usage_summary(UnitOfWork(), _user_id(), days=days)
    return [UsageLineOut(operation=line.operation, count=line.count, credits=line.credits) for line in lines]


@app.get("/credits/costs", summary="The cost per unit of each operation for the caller's plan")
def costs() -> dict[str, str]:
    return _costs_out(credits.costs_for(UnitOfWork(), _user_id()))


@app.get("/credits/auto-topup", summary="The caller's auto top-up setting and its last attempt")
def get_auto_topup() -> AutoTopUpOut:
    return _auto_topup_out(auto_topup.get_auto_topup(UnitOfWork(), _user_id()))


@app.put("/credits/auto-topup", summary="Buy a pack with the saved card whenever the balance runs low")
def put_auto_topup(body: AutoTopUpIn) -> AutoTopUpOut:
    view = auto_topup.update_auto_topup(
        UnitOfWork(), _user_id(), enabled=body.enabled, threshold=body.threshold, pack_id=body.pack_id,
        monthly_cap=body.monthly_cap,
    )  # fmt: skip
    return _auto_topup_out(view)


@app.patch("/credits/settings", summary="Whether purchased credits are used automatically")
def update_settings(body: SettingsIn) -> SettingsOut:
    view = credits.update_settings(UnitOfWork(), _user_id(), bonus_auto_use=body.bonus_auto_use)
    return SettingsOut(bonus_auto_use=view.bonus_auto_use, bonus_auto_use_locked=view.bonus_auto_use_locked)


# --- public catalogue -----------------------------------------------------------------------------------------
@app.get("/plans", summary="The active plans, sorted")
def plans(cursor: Cursor = None, limit: Limit = 20) -> PlanPageOut:
    page = credits.active_plans(UnitOfWork(), cursor=cursor, limit=limit)
    return PlanPageOut(items=[PlanOut.model_validate(p) for p in page.items], next_cursor=page.next_cursor)


@app.get("/credit-packs", summary="The active credit packs, sorted")
def credit_packs(cursor: Cursor = None, limit: Limit = 20) -> PackPageOut:
    page = credits.active_credit_packs(UnitOfWork(), cursor=cursor, limit=limit)
    return PackPageOut(items=[PackOut.model_validate(p) for p in page.items], next_cursor=page.next_cursor)


# --- admin ----------------------------------------------------------------------------------------------------
@app.post("/admin/users/<user_id>/credits/usage", summary="Charge a user on a server's behalf")
def admin_charge(user_id: uuid.UUID, body: UsageIn) -> tuple[ChargeOut, int]:
    result = credits_admin.charge_user(
        UnitOfWork(), current_actor(app), user_id, operation=body.operation, quantity=body.quantity,
        metadata=body.metadata, idempotency_key=idempotency_key(app),
    )  # fmt: skip
    return ChargeOut(transaction_id=result.transaction_id, charged=result.charged, balance=result.balance), 201


@app.post("/admin/users/<user_id>/credits/adjustments", summary="Add (positive) or remove (negative) credits")
def admin_adjust(user_id: uuid.UUID, body: AdjustmentIn) -> tuple[AdjustmentOut, int]:
    result = credits_admin.adjust_user(
        UnitOfWork(), current_actor(app), user_id, amount=body.amount, reason=body.reason, expires_at=body.expires_at,
        idempotency_key=idempotency_key(app),
    )  # fmt: skip
    out = AdjustmentOut(
        transaction_id=result.transaction_id, amount=result.amount, balance=result.balance, grant_id=result.grant_id
    )
    return out, 201


@app.post("/admin/credits/refunds", summary="Refund a charge, in part or whole")
def admin_refund(body: RefundIn) -> tuple[RefundOut, int]:
    result = credits_admin.refund_transaction(
        UnitOfWork(), current_actor(app), transaction_id=body.transaction_id, amount=body.amount, reason=body.reason,
        idempotency_key=idempotency_key(app),
    )  # fmt: skip
    out = RefundOut(
        transaction_id=result.transaction_id, refunded_transaction_id=body.transaction_id, refunded=result.refunded,
        expired=result.expired, balance=result.balance,
    )  # fmt: skip
    return out, 201


@app.get("/admin/users/<user_id>/credits", summary="A user's balance and every grant")
def admin_user_credits(user_id: uuid.UUID) -> UserCreditsOut:
    view = credits_admin.user_credits(UnitOfWork(), current_actor(app), user_id)
    account = view.account
    zero = Decimal(0)
    return UserCreditsOut(
        user_id=user_id,
        balance=account.balance if account else zero,
        held=account.held if account else zero,
        debt=account.debt if account else zero,
        floor=account.floor if account else zero,
        bonus_auto_use=account.bonus_auto_use if account else False,
        grants=[
            GrantOut(
                id=g.id,
                kind=g.kind,
                amount=g.amount,
                remaining=g.remaining,
                status=g.status,
                source_key=g.source_key,
                expires_at=g.expires_at,
                expired_at=g.expired_at,
                created_at=g.created_at,
            )
            for g in view.grants
        ],
    )


@app.put("/admin/users/<user_id>/credits/floor", summary="Open or close a user's credit line")
def admin_set_floor(user_id: uuid.UUID, body: FloorIn) -> FloorOut:
    floor = credits_admin.set_credit_floor(
        UnitOfWork(), current_actor(app), user_id, floor=body.floor, reason=body.reason
    )
    return FloorOut(floor=floor)


@app.get("/admin/feature-costs", summary="The cost table (or, with tier, that plan's overrides)")
def admin_feature_costs(tier: Annotated[str | None, Query(max_length=32)] = None) -> dict[str, str]:
    return _costs_out(credits_admin.feature_costs(UnitOfWork(), current_actor(app), tier=tier))


@app.put("/admin/feature-costs", summary="Replace the cost table (or, with tier, that plan's overrides)")
def admin_replace_feature_costs(
    body: Annotated[dict[str, CreditsIn], Body()],
    tier: Annotated[str | None, Query(max_length=32)] = None,
) -> dict[str, str]:
    return _costs_out(credits_admin.replace_feature_costs(UnitOfWork(), current_actor(app), body, tier=tier))


@app.get("/admin/credits/settings", summary="Credit policy settings")
def admin_credit_settings() -> CreditSettingsOut:
    return CreditSettingsOut(
        allow_bonus_auto_use_toggle=credits_admin.credit_settings(UnitOfWork(), current_actor(app))
    )


@app.put("/admin/credits/settings", summary="Whether users may choose to auto-use purchased credits")
def admin_update_credit_settings(body: CreditSettingsIn) -> CreditSettingsOut:
    value = credits_admin.set_bonus_auto_use_policy(
        UnitOfWork(), current_actor(app), allow_toggle=body.allow_bonus_auto_use_toggle
    )
    return CreditSettingsOut(allow_bonus_auto_use_toggle=value)


@app.get("/admin/plans", summary="Every plan, active or not")
def admin_plans(cursor: Cursor = None, limit: Limit = 20) -> PlanPageOut:
    page = credits_admin.list_plans(UnitOfWork(), current_actor(app), cursor=cursor, limit=limit)
    return PlanPageOut(items=[PlanOut.model_validate(p) for p in page.items], next_cursor=page.next_cursor)


@app.post("/admin/plans", summary="Create a plan")
def admin_create_plan(body: PlanIn) -> tuple[PlanOut, int]:
    plan = credits_admin.create_plan(UnitOfWork(), current_actor(app), body.model_dump())
    return PlanOut.model_validate(plan), 201


@app.patch("/admin/plans/<plan_id>", summary="Change a plan")
def admin_update_plan(plan_id: uuid.UUID, body: PlanPatch) -> PlanOut:
    _no_nulls(body, NOT_NULL_PLAN)
    plan = credits_admin.update_plan(UnitOfWork(), current_actor(app), plan_id, body.model_dump(exclude_unset=True))
    return PlanOut.model_validate(plan)


@app.get("/admin/credit-packs", summary="Every credit pack, active or not")
def admin_packs(cursor: Cursor = None, limit: Limit = 20) -> PackPageOut:
    page = credits_admin.list_packs(UnitOfWork(), current_actor(app), cursor=cursor, limit=limit)
    return PackPageOut(items=[PackOut.model_validate(p) for p in page.items], next_cursor=page.next_cursor)


@app.post("/admin/credit-packs", summary="Create a credit pack")
def admin_create_pack(body: PackIn) -> tuple[PackOut, int]:
    pack = credits_admin.create_pack(UnitOfWork(), current_actor(app), body.model_dump())
    return PackOut.model_validate(pack), 201


@app.patch("/admin/credit-packs/<pack_id>", summary="Change a credit pack")
def admin_update_pack(pack_id: uuid.UUID, body: PackPatch) -> PackOut:
    _no_nulls(body, NOT_NULL_PACK)
    pack = credits_admin.update_pack(UnitOfWork(), current_actor(app), pack_id, body.model_dump(exclude_unset=True))
    return PackOut.model_validate(pack)


@app.post("/admin/credits/reconcile", summary="Check the ledger invariants for every account")
def admin_reconcile() -> ReconcileOut:
    report = credits_admin.reconcile(UnitOfWork(), current_actor(app))
    return ReconcileOut(
        users_checked=report.users_checked,
        mismatches=[
            MismatchOut(
                user_id=m.user_id,
                balance=m.balance,
                ledger_sum=m.ledger_sum,
                grants_remaining=m.grants_remaining,
                debt=m.debt,
                held=m.held,
                active_holds=m.active_holds,
                problems=list(m.problems),
            )
            for m in report.mismatches
        ],
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)

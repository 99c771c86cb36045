"""User management (API.md "Back office"): staff list and read customers; admins change a user's role and status.

- Listing and reading: ADMIN and SUPPORT (a customer's profile, balance, plan, orders, purchases and open
  tickets are what a ticket is usually about). Changing role or status: ADMIN only.
- SUSPENDED revokes every session and API key in the same transaction; the authorizer re-reads the user on
  every verdict it does not have cached, so a suspended user is refused at once by a fresh container and within
  AUTHORIZER_CACHE_SECONDS by one that saw the credential just before.
- Changing access (and exporting or erasing, services/gdpr.py) needs the actor to be an active ADMIN in the
  database at that moment, not only in the authorizer's (cached) verdict.
- An admin never changes their own role or status, and no change leaves the deployment without an active ADMIN.
  Every change that touches an admin locks the active admins' rows (in id order, before the target's), so two
  admins demoting each other at once cannot both succeed.
- Role and status changes are audited with old and new values in the transaction that makes them.
- Answers are views (frozen dataclasses of plain values made inside the unit of work), never ORM rows; the
  session-level helpers below (`find_user`, `lock_for_access_change`, ...) serve other services' transactions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import Forbidden, LastAdmin, OwnAccessChange, UserErased, UserNotFound, ValidationFailed
from tollgate.models.commerce import Order
from tollgate.models.credits import CreditAccount, Plan
from tollgate.models.payments import Purchase, Subscription
from tollgate.models.support import SupportTicket
from tollgate.models.users import User, UserRole, UserStatus
from tollgate.pagination import Page, keyset_page
from tollgate.services import accounts, authz
from tollgate.services.authz import ADMIN, SUPPORT, Actor, require_role
from tollgate.services.credits_admin import TIER_NAME

RECENT = 10  # orders and purchases shown on a user's page
MAX_QUERY = 320
# What an admin may set by hand: LOCKED belongs to the trial job and DELETED to erasure.
SETTABLE_STATUSES = frozenset({UserStatus.ACTIVE.value, UserStatus.SUSPENDED.value})
ROLES = frozenset(r.value for r in UserRole)
STATUSES = frozenset(s.value for s in UserStatus)
OPEN_TICKET_STATUSES = ("OPEN", "IN_PROGRESS")


@dataclass(frozen=True, slots=True)
class UserFilters:
    q: str | None = None
    status: str | None = None
    role: str | None = None
    tier: str | None = None
    created_since: datetime | None = None
    created_until: datetime | None = None


# --- views: plain values made inside the unit of work (no ORM row outlives its session) ------------------------
@dataclass(frozen=True, slots=True)
class UserView:
    id: uuid.UUID
    email: str
    name: str | None
    username: str | None
    role: str
    status: str
    tier: str
    email_verified: bool
    two_factor_enabled: bool
    erased: bool
    created_at: datetime
    last_login_at: datetime | None
    deleted_at: datetime | None


@dataclass(frozen=True, slots=True)
class ProfileView(UserView):
    image: str | None
    timezone: str
    language: str
    clerk_id: str | None
    stripe_customer_id: str | None
    trial_started_at: datetime | None
    trial_ends_at: datetime | None
    trial_used: bool
    downgrade_count: int
    last_plan_change_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class BalanceView:
    balance: Decimal
    held: Decimal
    debt: Decimal
    floor: Decimal
    bonus_auto_use: bool


@dataclass(frozen=True, slots=True)
class PlanView:
    tier: str  # the user's tier
    name: str | None  # None: no plan of that tier


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    id: uuid.UUID
    provider: str
    status: str
    tier: str | None
    interval: str | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class OrderSummary:
    """One line of a customer's recent orders (a user's page, a ticket's context)."""

    id: uuid.UUID
    order_number: str
    status: str
    payment_status: str
    total_amount: Decimal
    currency: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PurchaseSummary:
    """One line of a customer's recent purchases (a user's page, a ticket's context)."""

    id: uuid.UUID
    provider: str
    package_name: str | None
    credits: Decimal
    amount: Decimal
    currency: str
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class UserDetail:
    profile: ProfileView
    account: BalanceView | None
    plan: PlanView
    subscription: SubscriptionView | None
    orders: tuple[OrderSummary, ...]
    purchases: tuple[PurchaseSummary, ...]
    open_tickets: int


def _user_fields(u: User) -> dict[str, Any]:
    return {
        "id": u.id, "email": u.email, "name": u.name, "username": u.username, "role": u.role, "status": u.status,
        "tier": u.tier, "email_verified": u.email_verified, "two_factor_enabled": u.two_factor_enabled,
        "erased": is_erased(u), "created_at": u.created_at, "last_login_at": u.last_login_at,
        "deleted_at": u.deleted_at,
    }  # fmt: skip


def user_view(user: User) -> UserView:
    return UserView(**_user_fields(user))


def _profile_view(u: User) -> ProfileView:
    return ProfileView(
        **_user_fields(u), image=u.image, timezone=u.timezone, language=u.language, clerk_id=u.clerk_id,
        stripe_customer_id=u.stripe_customer_id, trial_started_at=u.trial_started_at, trial_ends_at=u.trial_ends_at,
        trial_used=u.trial_used, downgrade_count=u.downgrade_count, last_plan_change_at=u.last_plan_change_at,
        updated_at=u.updated_at,
    )  # fmt: skip


def _balance_view(a: CreditAccount) -> BalanceView:
    return BalanceView(balance=a.balance, held=a.held, debt=a.debt, floor=a.floor, bonus_auto_use=a.bonus_auto_use)


def _subscription_view(s: Subscription) -> SubscriptionView:
    return SubscriptionView(
        id=s.id, provider=s.provider, status=s.status, tier=s.tier, interval=s.interval,
        current_period_end=s.current_period_end, cancel_at_period_end=s.cancel_at_period_end, created_at=s.created_at,
    )  # fmt: skip


def order_summary(o: Order) -> OrderSummary:
    return OrderSummary(
        id=o.id, order_number=o.order_number, status=o.status, payment_status=o.payment_status,
        total_amount=o.total_amount, currency=o.currency, created_at=o.created_at,
    )  # fmt: skip


def purchase_summary(p: Purchase) -> PurchaseSummary:
    return PurchaseSummary(
        id=p.id, provider=p.provider, package_name=p.package_name, credits=p.credits, amount=p.amount,
        currency=p.currency, status=p.status, created_at=p.created_at,
    )  # fmt: skip


def is_erased(user: User) -> bool:
    return user.status == UserStatus.DELETED


def like_pattern(text: str) -> str:
    """`text` as a contains-pattern for LIKE with `\\` as the escape: the caller's % and _ match themselves."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _check_filters(filters: UserFilters) -> None:
    if filters.q is not None and not 1 <= len(filters.q.strip()) <= MAX_QUERY:
        raise ValidationFailed(f"q must be 1-{MAX_QUERY} characters", details={"field": "q"})
    if filters.status is not None and filters.status not in STATUSES:
        raise ValidationFailed("unknown status", details={"field": "status", "allowed": sorted(STATUSES)})
    if filters.tier is not None and not TIER_NAME.match(filters.tier):
        raise ValidationFailed("tier must be 1-32 of A-Z, 0-9, _", details={"field": "tier"})
    if filters.role is not None and filters.role not in ROLES:
        raise ValidationFailed("unknown role", details={"field": "role", "allowed": sorted(ROLES)})
    since, until = filters.created_since, filters.created_until
    if since is not None and until is not None and since > until:
        raise ValidationFailed("created_since is after created_until", details={"field": "created_since"})


def _filtered(filters: UserFilters) -> Select[Any]:
    statement = select(User)
    if filters.q is not None:
        pattern = like_pattern(filters.q.strip())
        statement = statement.where(
            or_(
                User.email.ilike(pattern, escape="\\"),
                User.name.ilike(pattern, escape="\\"),
                User.username.ilike(pattern, escape="\\"),
            )
        )
    if filters.status is not None:
        statement = statement.where(User.status == filters.status)
    if filters.role is not None:
        statement = statement.where(User.role == filters.role)
    if filters.tier is not None:
        statement = statement.where(User.tier == filters.tier)
    if filters.created_since is not None:
        statement = statement.where(User.created_at >= filters.created_since)
    if filters.created_until is not None:
        statement = statement.where(User.created_at < filters.created_until)
    return statement


def list_users(
    uow: UnitOfWork, actor: Actor, filters: UserFilters, *, cursor: str | None, limit: int | None
) -> Page[UserView]:
    """Users matching `filters`, newest first. `q` matches inside the email, name or username, any case."""
    require_role(actor, ADMIN, SUPPORT)
    _check_filters(filters)
    with uow:
        page: Page[User] = keyset_page(
            uow.session, _filtered(filters), User.created_at, User.id, cursor=cursor, limit=limit, descending=True
        )
        return Page(items=[user_view(u) for u in page.items], next_cursor=page.next_cursor)


def find_user(session: Session, user_id: uuid.UUID, *, lock: bool = False) -> User:
    statement = select(User).where(User.id == user_id)
    if lock:
        statement = statement.with_for_update()
    user = session.execute(statement).scalar_one_or_none()
    if user is None:
        raise UserNotFound("no such user", details={"user_id": str(user_id)})
    return user


def open_ticket_count(session: Session, user_id: uuid.UUID) -> int:
    """The user's support tickets still being worked on (OPEN or IN_PROGRESS)."""
    return int(
        session.execute(
            select(func.count())
            .select_from(SupportTicket)
            .where(SupportTicket.customer_id == user_id, SupportTicket.status.in_(OPEN_TICKET_STATUSES))
        ).scalar_one()
    )


def user_detail(uow: UnitOfWork, actor: Actor, user_id: uuid.UUID) -> UserDetail:
    require_role(actor, ADMIN, SUPPORT)
    with uow:
        session = uow.session
        user = find_user(session, user_id)
        account = session.get(CreditAccount, user_id)
        plan = session.execute(select(Plan).where(Plan.tier == user.tier)).scalar_one_or_none()
        subscription = session.execute(
            select(Subscription)
            .where(Subscription.user_id == user_id)
            .order_by(Subscription.created_at.desc(), Subscription.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        orders = session.execute(
            select(Order)
            .where(Order.user_id == user_id)
            .order_by(Order.created_at.desc(), Order.id.desc())
            .limit(RECENT)
        ).scalars()
        purchases = session.execute(
            select(Purchase)
            .where(Purchase.user_id == user_id)
            .order_by(Purchase.created_at.desc(), Purchase.id.desc())
            .limit(RECENT)
        ).scalars()
        return UserDetail(
            profile=_profile_view(user),
            account=_balance_view(account) if account is not None else None,
            plan=PlanView(tier=user.tier, name=plan.name if plan is not None else None),
            subscription=_subscription_view(subscription) if subscription is not None else None,
            orders=tuple(order_summary(o) for o in orders),
            purchases=tuple(purchase_summary(p) for p in purchases),
            open_tickets=open_ticket_count(session, user_id),
        )


def lock_for_access_change(session: Session, user_id: uuid.UUID) -> tuple[User, list[uuid.UUID]]:
    """Lock the active admins (in id order), then the target; the target and the ids of the active admins."""
    admins = current_admins(session)
    return find_user(session, user_id, lock=True), admins


def require_admin_now(actor: Actor, admins: list[uuid.UUID]) -> None:
    """The actor must still be an active ADMIN in the database, not only in the authorizer's verdict: a verdict is
    cached up to AUTHORIZER_CACHE_SECONDS, and an admin demoted or suspended meanwhile must not use that window to
    promote someone, suspend the admin who acted, export or erase."""
    if actor.user_id not in admins:
        raise Forbidden("this action needs an active ADMIN", details={"required": [ADMIN]})


def current_admins(session: Session, *, lock: bool = True) -> list[uuid.UUID]:
    """The active admins' ids (in id order); locked, no access change can remove one until this transaction ends."""
    statement = (
        select(User.id)
        .where(User.role == ADMIN, User.status == UserStatus.ACTIVE, User.deleted_at.is_(None))
        .order_by(User.id)
    )
    return list(session.execute(statement.with_for_update() if lock else statement).scalars())


def guard_access_loss(actor: Actor, user: User, admins: list[uuid.UUID], *, keeps_admin: bool) -> None:
    """Refuse a change that is the actor's own, one that takes the last active admin away, or one by an actor
    who is no longer an active admin."""
    if actor.user_id == user.id:
        raise OwnAccessChange("you cannot change your own role or status; ask another admin")
    if user.id in admins and not keeps_admin and not [a for a in admins if a != user.id]:
        raise LastAdmin("this is the last active admin; promote another user first")
    require_admin_now(actor, admins)


def update_user(
    uow: UnitOfWork, actor: Actor, user_id: uuid.UUID, *, role: str | None = None, status: str | None = None
) -> UserView:
    """Change a user's role and/or status. SUSPENDED revokes their sessions and API keys at once."""
    require_role(actor, ADMIN)
    if role is None and status is None:
        raise ValidationFailed("nothing to change: give role or status", details={"fields": ["role", "status"]})
    if role is not None and role not in ROLES:
        raise ValidationFailed("unknown role", details={"field": "role", "allowed": sorted(ROLES)})
    if status is not None and status not in SETTABLE_STATUSES:
        raise ValidationFailed(
            "status must be ACTIVE or SUSPENDED", details={"field": "status", "allowed": sorted(SETTABLE_STATUSES)}
        )
    with uow:
        session = uow.session
        user, admins = lock_for_access_change(session, user_id)
        if is_erased(user):
            raise UserErased("this account was erased", details={"user_id": str(user_id)})
        new_role = role if role is not None else user.role
        new_status = status if status is not None else user.status
        if (new_role, new_status) == (user.role, user.status):
            return user_view(user)  # nothing changes: no audit row, no revocation
        guard_access_loss(actor, user, admins, keeps_admin=new_role == ADMIN and new_status == UserStatus.ACTIVE)
        now = utcnow()
        if new_role != user.role:
            authz.audit(
                session, actor, action="user.role_change", target_type="user", target_id=str(user.id),
                old_values={"role": user.role}, new_values={"role": new_role}, now=now,
            )  # fmt: skip
            user.role = new_role
        if new_status != user.status:
            revoked: dict[str, int] = {}
            if new_status == UserStatus.SUSPENDED:
                sessions, keys = accounts.revoke_all_credentials(session, user.id, reason="suspended", now=now)
                revoked = {"sessions_revoked": sessions, "api_keys_revoked": keys}
            authz.audit(
                session, actor, action="user.status_change", target_type="user", target_id=str(user.id),
                old_values={"status": user.status}, new_values={"status": new_status}, details=revoked, now=now,
            )  # fmt: skip
            user.status = new_status
        user.updated_at = now
        session.flush()
        view = user_view(user)
        uow.commit()
    return view

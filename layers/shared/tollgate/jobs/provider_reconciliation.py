"""ProviderReconciliation: apply what no webhook brought, from the providers' own APIs.

Stripe retries a webhook for three days, Lemon Squeezy for about 2.5 minutes; an outage longer than that (or a
misconfigured endpoint) would lose a payment. Every 15 minutes this job lists, over the last
PROVIDER_RECONCILIATION_HOURS:
- Stripe events whose delivery failed (`GET /v1/events?delivery_success=false&created[gte]=...`). Each is the
  very event a webhook would carry, so it goes through `services.webhooks.process_event` unchanged: the event
  store dedupes on Stripe's event id, and a later (or earlier) webhook of the same event is a duplicate.
- Lemon Squeezy orders and subscription invoices (newest first by `created_at`, stopping at the window), and
  subscriptions (every page: the list is ordered by creation, so a change to an old subscription can be anywhere
  in it; only those *updated* inside the window are considered). Orders become `order_created` (paid, no
  purchase yet) or `order_refunded` (more refunded than recorded); subscriptions `subscription_created` (unknown
  here) or `subscription_updated` (changed after what is recorded); invoices `subscription_payment_success`
  (paid, not recorded: the period's allowance) or `subscription_payment_refunded`. Each resource becomes the
  webhook body Lemon Squeezy would have sent (`{"meta": {"event_name", "custom_data", "test_mode"}, "data":
  <resource>}`) with the id `lemonsqueezy_event_id` derives from the event name, resource and `updated_at`: the
  id the webhook of that change gets, so whichever of the two comes second is a duplicate.

Stripe order refunds still PENDING after REFUND_SWEEP_AFTER_MINUTES (the `stripe_refunds` phase, right after the
events, so a refund event replayed there settles its refund first): REFUND_SWEEP_BATCH_SIZE a step, in id order,
each looked up at Stripe and settled through the webhooks' own path (tollgate.services.refund_sweep). Counted as
`refunds_settled`, `refunds_pending_at_stripe`, `refunds_already_settled` (an event won the race), and
`unresolved` (the alarm's figure) for a refund Stripe's answer does not settle.

Transactions. `process_event` opens its own units of work, and in Lambda the pool has ONE connection, so it must
not run inside a job step's transaction. Each step therefore only moves the job cursor (a short transaction
holding the cursor row) and hands the page's work to `after_commit`: list one page from the provider, decide,
and apply each item through `process_event`, with no transaction open in between (the look-ups that decide use
their own short unit of work, closed before `process_event` runs). The counts of a page are carried into the
next step (the runner records a step's counts in its transaction), and that step moves the cursor past the
page. A run cut short (time guard; a Lambda timeout, then the retry of the same scheduled time) resumes at the
page in the cursor and re-does it, which changes nothing: every item is applied through the event store and
business keys (orders, subscriptions' `updated_at`, invoices, refund steps), so at-least-once is exactly-once
here. (The counts of a page worked through just before the time guard stopped a run are not in that run's
report; the re-done page reports its items as `already_known`.)

Lemon Squeezy resources from the API carry no checkout custom data (who bought, which item), so the job finds:
- the pack by the order's variant (`credit_packs.lemonsqueezy_variant_id`); an order of a plan's variant is a
  subscription's first order and is left to the subscription and its invoice, as the webhook handler does;
- the buyer by the Lemon Squeezy customer id already linked to an account, else by the order's / subscription's
  `user_email` matching an account whose email is VERIFIED (an unverified address proves nothing about who
  paid). Anything else is counted `unresolved` and logged with the order / subscription id for an operator
  (`tollgate webhooks send` or the provider's dashboard); nothing is stored for it, so a late webhook still
  applies normally.
Changes younger than PROVIDER_RECONCILIATION_SETTLE_MINUTES are left to their webhook, whose custom data names
the buyer for certain.

Asaas charges (`GET /v3/payments`, newest first, paged by offset), in two passes: those received inside the
window (`paymentDate[ge]`), and those created inside it (`dateCreated[ge]`: a card charge is CONFIRMED days
before it is received). A CONFIRMED / RECEIVED charge that Tollgate has not recorded becomes the webhook body Asaas
would have sent (`{"id", "event": "PAYMENT_CONFIRMED"|"PAYMENT_RECEIVED", "dateCreated", "payment": <charge>}`)
with the id `asaas_reconciliation:<payment id>:<event>`; a REFUNDED charge refunded further than recorded becomes
PAYMENT_REFUNDED. The webhook of the same change has Asaas's own event id, so both may be stored, but the handlers
apply a charge once (its payment id keys the purchase / invoice, each refund step its own key). The charge's
`externalReference` (written by the checkout) names the buyer and the item; a charge without one is not Tollgate's
and is counted `ignored`.

A provider without credentials is skipped (`providers_skipped`); a provider API failure is counted
(`provider_errors`) and the other provider's work goes on; one item that fails to apply is counted (`failed`,
recorded in `webhook_events` for replay) and the rest go on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from tollgate.config import Settings, get_settings
from tollgate.db import UnitOfWork
from tollgate.errors import ProviderNotConfigured, WebhookProcessingFailed
from tollgate.jobs.runner import Step
from tollgate.models.credits import CreditPack, Plan
from tollgate.models.payments import Invoice, Purchase, Subscription
from tollgate.models.users import User
from tollgate.observability import logger
from tollgate.payments.adapters import Page
from tollgate.payments.money import to_major
from tollgate.payments.signatures import VerifiedEvent, lemonsqueezy_event_id, parse_time

if TYPE_CHECKING:
    from tollgate.services.refund_sweep import RefundLookups

STRIPE = "stripe"
STRIPE_REFUNDS = "stripe_refunds"
LS_ORDERS = "lemonsqueezy_orders"
LS_SUBSCRIPTIONS = "lemonsqueezy_subscriptions"
LS_INVOICES = "lemonsqueezy_invoices"
PAID_INVOICE = frozenset({"paid", "partially_refunded", "refunded"})
ASAAS_PAID = "asaas_paid"
ASAAS_CREATED = "asaas_created"
PHASES = (STRIPE, STRIPE_REFUNDS, LS_ORDERS, LS_SUBSCRIPTIONS, LS_INVOICES, ASAAS_PAID, ASAAS_CREATED)
# Where the phases of the next provider start: a provider without credentials is skipped as a whole.
NEXT_PROVIDER = {STRIPE: LS_ORDERS, STRIPE_REFUNDS: LS_ORDERS, LS_ORDERS: ASAAS_PAID, ASAAS_PAID: None}
ASAAS_FILTERS = {ASAAS_PAID: "paymentDate", ASAAS_CREATED: "dateCreated"}
ASAAS_PAID_STATUSES = frozenset({"CONFIRMED", "RECEIVED", "RECEIVED_IN_CASH"})
LS_RESOURCES = {LS_ORDERS: "orders", LS_SUBSCRIPTIONS: "subscriptions", LS_INVOICES: "subscription-invoices"}


class StripeEvents(Protocol):
    def failed_events(self, created_gte: int, starting_after: str | None, limit: int) -> Page: ...


class LemonSqueezyLists(Protocol):
    def list_resources(self, resource: str, page: int, size: int) -> Page: ...


class AsaasPayments(Protocol):
    def payments_since(self, field: str, since: date, offset: int, limit: int) -> Page: ...


def _stripe_source() -> StripeEvents:
    from tollgate.payments.adapters import stripe_events_source

    return stripe_events_source()


def _lemonsqueezy_source() -> LemonSqueezyLists:
    from tollgate.payments.adapters import lemonsqueezy_source

    return lemonsqueezy_source()


def _asaas_source() -> AsaasPayments:
    from tollgate.payments.asaas import asaas_gateway

    return asaas_gateway()


def _refund_gateway() -> RefundLookups:
    from tollgate.payments.adapters import stripe_gateway

    return stripe_gateway()


@dataclass(frozen=True, slots=True)
class Position:
    """Where the job is: a phase, and the page in it (Stripe: after an event id; Lemon Squeezy: a page number)."""

    phase: str
    after: str | None = None
    page: int = 1

    def encode(self) -> str:
        return json.dumps({"phase": self.phase, "after": self.after, "page": self.page}, sort_keys=True)

    @classmethod
    def decode(cls, cursor: str | None) -> Position:
        if not cursor:
            return cls(PHASES[0])
        try:
            raw = json.loads(cursor)
            phase = raw["phase"]
            if phase not in PHASES:
                raise ValueError(phase)
            return cls(phase, raw.get("after"), int(raw.get("page") or 1))
        except (ValueError, KeyError, TypeError):
            return cls(PHASES[0])  # an unreadable cursor: start over (every item is idempotent)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _next_phase(phase: str) -> Position | None:
    index = PHASES.index(phase) + 1
    return Position(PHASES[index]) if index < len(PHASES) else None


@dataclass
class PageResult:
    at: Position
    next: Position | None
    items: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, value: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + value


def quarter_hour(now: datetime) -> str:
    moment = now.astimezone(UTC)
    return moment.replace(minute=moment.minute - moment.minute % 15).strftime("%Y-%m-%dT%H:%M")


class ProviderReconciliation:
    name = "ProviderReconciliation"
    batch_size = 1  # one provider page per step; the page size is PROVIDER_RECONCILIATION_PAGE_SIZE

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        uow_factory: Callable[[], UnitOfWork] = UnitOfWork,
        stripe_source: Callable[[], StripeEvents] = _stripe_source,
        lemonsqueezy_source: Callable[[], LemonSqueezyLists] = _lemonsqueezy_source,
        asaas_source: Callable[[], AsaasPayments] = _asaas_source,
        refund_gateway: Callable[[], RefundLookups] = _refund_gateway,
    ) -> None:
        self.settings = settings or get_settings()
        self.uow_factory = uow_factory
        self.stripe_source = stripe_source
        self.lemonsqueezy_source = lemonsqueezy_source
        self.asaas_source = asaas_source
        self.refund_gateway = refund_gateway
        self._done: PageResult | None = None  # the page the last after_commit worked through

    def period_key(self, now: datetime) -> str:
        return quarter_hour(now)  # the schedule's period: every 15 minutes

    # --- the runner's side: a short transaction that only moves the cursor --------------------------------------
    def step(self, session: Session, now: datetime, cursor: str | None) -> Step:
        position: Position | None = Position.decode(cursor)
        counts: dict[str, int] = {}
        processed = 0
        done, self._done = self._done, None
        if done is not None and done.at == position:
            counts, processed, position = done.counts, done.items, done.next
        if position is None:
            return Step(cursor=None, processed=processed, counts=counts, done=True)
        target = position
        return Step(
            cursor=target.encode(),
            processed=processed,
            counts=counts,
            done=False,
            after_commit=lambda: self._work(target, now),
        )

    # --- after the commit: one provider page, no transaction held ------------------------------------------------
    def _work(self, position: Position, now: datetime) -> None:
        try:
            if position.phase == STRIPE:
                result = self._stripe_page(position, now)
            elif position.phase == STRIPE_REFUNDS:
                result = self._refunds_page(position, now)
            elif position.phase in ASAAS_FILTERS:
                result = self._asaas_page(position, now)
            else:
                result = self._lemonsqueezy_page(position, now)
        except ProviderNotConfigured:
            result = PageResult(at=position, next=_next_phase(position.phase))
            if position.phase in NEXT_PROVIDER:  # one skip per provider, not one per resource list
                following = NEXT_PROVIDER[position.phase]
                result.next = Position(following) if following else None
            result.add("providers_skipped")
            logger.info("provider not configured: skipped", extra={"phase": position.phase})
        except Exception:  # the provider's API failed (or answered nonsense): the other provider still runs
            result = PageResult(at=position, next=_next_phase(position.phase))
            result.add("provider_errors")
            logger.exception("provider reconciliation page failed", extra={"phase": position.phase})
        self._done = result

    def _window_start(self, now: datetime) -> datetime:
        return now - timedelta(hours=self.settings.provider_reconciliation_hours)

    def _settled_before(self, now: datetime) -> datetime:
        return now - timedelta(minutes=self.settings.provider_reconciliation_settle_minutes)

    # --- Stripe --------------------------------------------------------------------------------------------------
    def _stripe_page(self, position: Position, now: datetime) -> PageResult:
        source = self.stripe_source()
        size = self.settings.provider_reconciliation_page_size
        page = source.failed_events(int(self._window_start(now).timestamp()), position.after, size)
        result = PageResult(at=position, next=_next_phase(STRIPE), items=len(page.items))
        for item in page.items:
            result.add(self._guarded(self._apply_stripe, item))
        if page.has_more and page.items:
            result.next = Position(STRIPE, after=str(page.items[-1].get("id")))
        return result

    def _apply_stripe(self, item: dict[str, Any]) -> str:
        event_id, event_type = item.get("id"), item.get("type")
        if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
            return "rejected"
        created = item.get("created")
        event = VerifiedEvent(
            provider=STRIPE,
            event_id=event_id,
            type=event_type,
            livemode=bool(item.get("livemode")),
            payload=item,
            raw=json.dumps(item),
            created_at=datetime.fromtimestamp(created, UTC) if isinstance(created, int) else None,
        )
        return self._process(event, "stripe_events")

    # --- Stripe order refunds no event settled -------------------------------------------------------------------
    def _refunds_page(self, position: Position, now: datetime) -> PageResult:
        from tollgate.services import refund_sweep

        size = self.settings.refund_sweep_batch_size
        after = None
        if position.after:
            try:
                after = uuid.UUID(position.after)
            except ValueError:
                after = None  # an unreadable cursor: start over (settling is idempotent)
        older = timedelta(minutes=self.settings.refund_sweep_after_minutes)
        stale = refund_sweep.stale_refunds(self.uow_factory, now, older_than=older, after=after, limit=size)
        result = PageResult(at=position, next=_next_phase(STRIPE_REFUNDS), items=len(stale))
        if not stale:
            return result  # nothing stale: Stripe is not asked (nor its configuration needed)
        gateway = self.refund_gateway()

        def sweep(item: dict[str, Any]) -> str:
            return refund_sweep.sweep_refund(self.uow_factory, uuid.UUID(item["id"]), gateway, now)

        for refund_id in stale:
            result.add(self._guarded(sweep, {"id": str(refund_id)}))
        if len(stale) == size:
            result.next = Position(STRIPE_REFUNDS, after=str(stale[-1]))
        return result

    # --- Lemon Squeezy -------------------------------------------------------------------------------------------
    def _lemonsqueezy_page(self, position: Position, now: datetime) -> PageResult:
        source = self.lemonsqueezy_source()
        resource = LS_RESOURCES[position.phase]
        size = self.settings.provider_reconciliation_page_size
        page = source.list_resources(resource, position.page, size)
        result = PageResult(at=position, next=_next_phase(position.phase), items=len(page.items))
        window, settled = self._window_start(now), self._settled_before(now)
        reached_end = False
        for item in page.items:
            attrs = _dict(item.get("attributes"))
            created = parse_time(attrs.get("created_at"))
            updated = parse_time(attrs.get("updated_at")) or created
            if created is None or updated is None or item.get("id") is None:
                result.add("rejected")
                continue
            if resource != "subscriptions" and created < window:
                reached_end = True  # newest first: every later order / invoice is older still
                break
            if updated < window:
                continue  # a subscription not changed inside the window
            if updated > settled:
                result.add("left_to_webhook")
                continue
            apply = {"orders": self._apply_order, "subscriptions": self._apply_subscription}.get(
                resource, self._apply_invoice
            )
            result.add(self._guarded(apply, item, attrs))
        if page.has_more and page.items and not reached_end:
            result.next = Position(position.phase, page=position.page + 1)
        return result

    def _apply_order(self, item: dict[str, Any], attrs: dict[str, Any]) -> str:
        decision = self._decide_order(item, attrs)
        if isinstance(decision, str):
            return decision
        name, custom = decision
        return self._process(self._lemonsqueezy_event(name, item, custom), "lemonsqueezy_orders")

    def _decide_order(self, item: dict[str, Any], attrs: dict[str, Any]) -> str | tuple[str, dict[str, Any]]:
        """A count key when there is nothing to apply, else the event to apply (name, custom data). Decided in
        a short unit of work that is closed before anything is applied."""
        order_id = str(item["id"])
        variant = _dict(attrs.get("first_order_item")).get("variant_id")
        with self.uow_factory() as uow:
            s = uow.session
            purchase = s.execute(
                select(Purchase).where(Purchase.provider == "lemonsqueezy", Purchase.provider_order_id == order_id)
            ).scalar_one_or_none()
            if purchase is not None and purchase.status != "pending":
                refunded = to_major(attrs.get("refunded_amount"), purchase.currency)
                if purchase.status in {"completed", "partially_refunded"} and refunded > purchase.refunded_amount:
                    return "order_refunded", {}
                return "already_known"
            if attrs.get("status") != "paid":
                return "ignored"  # not paid (pending, failed) or refunded before any grant: nothing to apply
            if variant is None:
                return self._unresolved("order", order_id, "the order has no variant")
            plan_variant = s.execute(
                select(Plan.id).where(
                    or_(
                        Plan.lemonsqueezy_variant_id_monthly == str(variant),
                        Plan.lemonsqueezy_variant_id_yearly == str(variant),
                    )
                )
            ).first()
            if plan_variant is not None:
                return "ignored"  # a subscription's first order: the subscription and its invoice carry it
            packs = s.execute(select(CreditPack.id).where(CreditPack.lemonsqueezy_variant_id == str(variant))).all()
            if len(packs) != 1:
                reason = "no credit pack sells this variant" if not packs else "several credit packs sell this variant"
                return self._unresolved("order", order_id, reason)
            pack_id = packs[0].id
            user_id = self._buyer(s, attrs)
            if user_id is None:
                return self._unresolved("order", order_id, "no account is linked to the customer or verified email")
        return "order_created", {"user_id": user_id, "kind": "pack", "item_id": str(pack_id)}

    def _apply_subscription(self, item: dict[str, Any], attrs: dict[str, Any]) -> str:
        sub_id = str(item["id"])
        updated = parse_time(attrs.get("updated_at"))
        with self.uow_factory() as uow:
            s = uow.session
            sub = s.execute(
                select(Subscription).where(
                    Subscription.provider == "lemonsqueezy", Subscription.provider_subscription_id == sub_id
                )
            ).scalar_one_or_none()
            if sub is not None:
                if sub.provider_updated_at is not None and updated is not None and sub.provider_updated_at >= updated:
                    return "already_known"
                name, custom = "subscription_updated", {}
            else:
                variant = attrs.get("variant_id")
                plan_id = s.execute(
                    select(Plan.id).where(
                        or_(
                            Plan.lemonsqueezy_variant_id_monthly == str(variant),
                            Plan.lemonsqueezy_variant_id_yearly == str(variant),
                        )
                    )
                ).scalar()
                if plan_id is None:
                    return self._unresolved("subscription", sub_id, "no plan sells this variant")
                user_id = self._buyer(s, attrs)
                if user_id is None:
                    return self._unresolved(
                        "subscription", sub_id, "no account is linked to the customer or verified email"
                    )
                name, custom = "subscription_created", {"user_id": user_id, "kind": "plan", "item_id": str(plan_id)}
        return self._process(self._lemonsqueezy_event(name, item, custom), "lemonsqueezy_subscriptions")

    def _apply_invoice(self, item: dict[str, Any], attrs: dict[str, Any]) -> str:
        invoice_id = str(item["id"])
        status = attrs.get("status")
        with self.uow_factory() as uow:
            s = uow.session
            invoice = s.execute(
                select(Invoice).where(Invoice.provider == "lemonsqueezy", Invoice.provider_invoice_id == invoice_id)
            ).scalar_one_or_none()
            if status in {"refunded", "partial_refund"}:
                if invoice is None or invoice.user_id is None or invoice.status not in PAID_INVOICE:
                    return "ignored"  # refunded before any allowance was granted for it: nothing to take back
                refunded = to_major(attrs.get("refunded_amount"), invoice.currency)
                if refunded <= invoice.refunded_amount:
                    return "already_known"
                name = "subscription_payment_refunded"
            elif status == "paid":
                if invoice is not None and invoice.status in PAID_INVOICE:
                    return "already_known"
                sub_id = attrs.get("subscription_id")
                known_sub = s.execute(
                    select(Subscription.id).where(
                        Subscription.provider == "lemonsqueezy",
                        Subscription.provider_subscription_id == str(sub_id),
                    )
                ).first()
                if known_sub is None:
                    return self._unresolved("invoice", invoice_id, "its subscription is not known")
                name = "subscription_payment_success"
            else:
                return "ignored"  # pending / failed / void: Lemon Squeezy mails the customer about those itself
        return self._process(self._lemonsqueezy_event(name, item, {}), "lemonsqueezy_invoices")

    @staticmethod
    def _buyer(session: Session, attrs: dict[str, Any]) -> str | None:
        customer = attrs.get("customer_id")
        if customer is not None and customer != "":
            linked = session.execute(
                select(User.id).where(User.lemonsqueezy_customer_id == str(customer), User.deleted_at.is_(None))
            ).scalar_one_or_none()
            if linked is not None:
                return str(linked)
        email = attrs.get("user_email")
        if not isinstance(email, str) or "@" not in email:
            return None
        verified = session.execute(
            select(User.id).where(
                func.lower(User.email) == email.strip().lower(),
                User.email_verified_at.is_not(None),
                User.deleted_at.is_(None),
            )
        ).scalar_one_or_none()
        return str(verified) if verified is not None else None

    @staticmethod
    def _lemonsqueezy_event(name: str, item: dict[str, Any], custom: dict[str, Any]) -> VerifiedEvent:
        attrs = item.get("attributes") or {}
        test_mode = attrs.get("test_mode")
        meta: dict[str, Any] = {"event_name": name, "custom_data": custom, "source": "provider_reconciliation"}
        if test_mode is not None:
            meta["test_mode"] = bool(test_mode)
        payload = {"meta": meta, "data": item}
        raw = json.dumps(payload)
        return VerifiedEvent(
            provider="lemonsqueezy",
            event_id=lemonsqueezy_event_id(payload, raw),
            type=name,
            livemode=None if test_mode is None else not bool(test_mode),
            payload=payload,
            raw=raw,
            created_at=parse_time(attrs.get("updated_at")),
        )

    @staticmethod
    def _guarded(apply: Callable[..., str], item: dict[str, Any], *args: Any) -> str:
        """One item's decision and application; whatever goes wrong with it, the page's other items go on."""
        try:
            return apply(item, *args)
        except Exception:
            logger.exception("provider reconciliation item failed", extra={"id": str(item.get("id"))})
            return "failed"

    # --- Asaas ---------------------------------------------------------------------------------------------------
    def _asaas_page(self, position: Position, now: datetime) -> PageResult:
        """One page (offset = (page - 1) x size) of the charges paid / created since the window's first day
        (Asaas filters by date, in Brasília time: a day early is harmless, every item is idempotent)."""
        source = self.asaas_source()
        size = min(self.settings.provider_reconciliation_page_size, 100)
        since = (self._window_start(now) - timedelta(days=1)).date()
        page = source.payments_since(ASAAS_FILTERS[position.phase], since, (position.page - 1) * size, size)
        result = PageResult(at=position, next=_next_phase(position.phase), items=len(page.items))
        for item in page.items:
            result.add(self._guarded(self._apply_asaas, item))
        if page.has_more and page.items:
            result.next = Position(position.phase, page=position.page + 1)
        return result

    def _apply_asaas(self, item: dict[str, Any]) -> str:
        payment_id, status = item.get("id"), str(item.get("status") or "")
        if not isinstance(payment_id, str) or not payment_id:
            return "rejected"
        from tollgate.payments.asaas import Reference

        if Reference.parse(item.get("externalReference")) is None:
            return "ignored"  # not a Tollgate checkout's charge
        with self.uow_factory() as uow:
            s = uow.session
            holder: Purchase | Invoice | None = s.execute(
                select(Purchase).where(Purchase.provider == "asaas", Purchase.provider_order_id == payment_id)
            ).scalar_one_or_none()
            if holder is None:
                holder = s.execute(
                    select(Invoice).where(Invoice.provider == "asaas", Invoice.provider_invoice_id == payment_id)
                ).scalar_one_or_none()
            known = holder is not None and (
                holder.status != "pending" if isinstance(holder, Purchase) else holder.status in PAID_INVOICE
            )
            if status == "REFUNDED":
                if not known or holder is None:
                    return "ignored"  # refunded before any grant: nothing to apply, nothing to take back
                total = holder.amount if isinstance(holder, Purchase) else holder.amount_paid
                if holder.refunded_amount >= total:
                    return "already_known"
                name = "PAYMENT_REFUNDED"
            elif status in ASAAS_PAID_STATUSES:
                if known:
                    return "already_known"
                name = "PAYMENT_CONFIRMED" if status == "CONFIRMED" else "PAYMENT_RECEIVED"
            else:
                return "ignored"  # pending, overdue, deleted: nothing was paid
        payload = {
            "id": f"asaas_reconciliation:{payment_id}:{name}",
            "event": name,
            "dateCreated": None,
            "payment": item,
            "source": "provider_reconciliation",
        }
        event = VerifiedEvent(
            provider="asaas",
            event_id=str(payload["id"]),
            type=name,
            livemode=None,
            payload=payload,
            raw=json.dumps(payload),
            created_at=None,
        )
        return self._process(event, "asaas_payments")

    # --- applying ------------------------------------------------------------------------------------------------
    def _process(self, event: VerifiedEvent, applied_key: str) -> str:
        from tollgate.services.webhooks import process_event

        try:
            receipt = process_event(event, self.uow_factory)
        except WebhookProcessingFailed:
            return "failed"  # recorded in webhook_events (failed, with the payload) for replay; logged there
        except Exception:
            logger.exception("reconciled event failed", extra={"provider": event.provider, "event_id": event.event_id})
            return "failed"
        if receipt.duplicate:
            return "already_known"
        if receipt.status == "processed":
            logger.info(
                "reconciled an event no webhook brought",
                extra={"provider": event.provider, "event_id": event.event_id, "type": event.type},
            )
            return f"{applied_key}_applied"
        return receipt.status  # ignored (other mode, unhandled type) | rejected (see webhook_events.outcome)

    @staticmethod
    def _unresolved(kind: str, resource_id: str, reason: str) -> str:
        logger.warning(
            "provider reconciliation: unresolved Lemon Squeezy " + kind,
            extra={"provider": "lemonsqueezy", "resource": kind, "id": resource_id, "reason": reason},
        )
        return "unresolved"

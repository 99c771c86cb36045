"""Provider amounts are integers in the currency's minor unit; Tollgate stores major units (NUMERIC(14, 3))."""

from __future__ import annotations

from decimal import Decimal

# ISO 4217 currencies without a minor unit, as Stripe lists them, and those with three decimals.
ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def exponent(currency: str) -> int:
    code = currency.lower()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def to_major(minor: int | str | Decimal | None, currency: str) -> Decimal:
    """`minor` units of `currency` as an exact Decimal in major units (None counts as 0)."""
    if minor is None:
        return Decimal(0)
    value = Decimal(str(minor))
    return (value / (Decimal(10) ** exponent(currency))).quantize(Decimal("0.001"))


def to_minor(major: Decimal, currency: str) -> int:
    """`major` units as the integer provider amount; refuses amounts finer than the currency allows."""
    scaled = major * (Decimal(10) ** exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{major} {currency} is finer than the currency's minor unit")
    return int(scaled)

"""Exact conversion between integer minor units and the decimal strings some channels want.

The one place where money changes format: ``to_major(1050, "CNY") == "10.50"`` and back, never via float.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

MINOR_UNIT_EXPONENT = {"CNY": 2, "USD": 2, "EUR": 2, "JPY": 0}


def exponent(currency: str) -> int:
    try:
        return MINOR_UNIT_EXPONENT[currency]
    except KeyError:
        raise ValueError(f"unsupported currency {currency!r}") from None


def to_major(amount: int, currency: str) -> str:
    """``1050, "CNY"`` → ``"10.50"``; ``1, "CNY"`` → ``"0.01"``; ``500, "JPY"`` → ``"500"``."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError("amount must be an integer of minor units")
    places = exponent(currency)
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**places)
    return f"{sign}{whole}.{frac:0{places}d}" if places else f"{sign}{whole}"


def _decimal(value: str) -> Decimal:
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return number


def from_major(value: str, currency: str) -> int:
    """``"10.50", "CNY"`` → ``1050``. Rejects anything that is not an exact amount of minor units."""
    places = exponent(currency)
    scaled = _decimal(value).scaleb(places)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value!r} has more than {places} decimal places for {currency}")
    return int(scaled)


def fee_from_major(value: str, currency: str) -> int:
    """A channel's fee as printed in a bill, in minor units, rounded half up: WeChat Pay prints fees to
    1/1000 fen (``"0.06300"``) and settles them rounded to the fen. ``""`` is no fee."""
    if not str(value).strip():
        return 0
    scaled = _decimal(value).scaleb(exponent(currency))
    return int(scaled.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def format_money(amount: int | None, currency: str) -> str:
    """An amount as people read it, with its currency: ``1050, "CNY"`` → ``"10.50 CNY"``, ``500, "JPY"`` →
    ``"500 JPY"``; ``None`` → ``""``. A currency of unknown minor unit shows its minor units, and says so."""
    if amount is None:
        return ""
    try:
        return f"{to_major(amount, currency)} {currency}"
    except ValueError:
        return f"{amount} (minor units) {currency}".strip()

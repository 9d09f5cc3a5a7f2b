"""Exact conversion between minor units and channel decimal strings, at the edges."""

from __future__ import annotations

import pytest

from channels.money import from_major, to_major


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (1, "CNY", "0.01"),
        (10, "CNY", "0.10"),
        (1050, "CNY", "10.50"),
        (100_000_000, "CNY", "1000000.00"),
        (123_456_789_012_345_678, "CNY", "1234567890123456.78"),
        (500, "JPY", "500"),
        (0, "USD", "0.00"),
    ],
)
def test_round_trip(amount: int, currency: str, text: str) -> None:
    assert to_major(amount, currency) == text
    assert from_major(text, currency) == amount


@pytest.mark.parametrize(
    ("text", "currency"),
    [
        ("10.505", "CNY"), ("0.001", "CNY"), ("1.5", "JPY"), ("abc", "CNY"), ("NaN", "CNY"), ("Infinity", "CNY"),
        ("", "CNY"),
    ],
)
def test_inexact_or_malformed_amounts_are_rejected(text: str, currency: str) -> None:
    with pytest.raises(ValueError):
        from_major(text, currency)


def test_trailing_zeros_and_short_forms_are_exact() -> None:
    assert from_major("10.5", "CNY") == 1050
    assert from_major("10.500", "CNY") == 1050
    assert from_major("10", "CNY") == 1000


def test_floats_and_unknown_currencies_never_pass() -> None:
    with pytest.raises(TypeError):
        to_major(10.5, "CNY")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        to_major(True, "CNY")
    with pytest.raises(ValueError):
        to_major(100, "XXX")

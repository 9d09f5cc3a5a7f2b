"""Which channels exist, built from settings. The only place that knows every channel."""

from __future__ import annotations

from functools import cache

from django.conf import settings

from channels.base import Channel
from channels.http import Timeouts

CHANNEL_NAMES = ("alipay", "wechatpay", "sandbox")


def _timeouts() -> Timeouts:
    return Timeouts(
        connect_s=settings.CHANNEL_CONNECT_TIMEOUT_S,
        read_s=settings.CHANNEL_READ_TIMEOUT_S,
        write_s=settings.CHANNEL_WRITE_TIMEOUT_S,
    )


@cache
def get_channel(name: str) -> Channel:
    if name == "sandbox":
        from channels.sandbox.adapter import SandboxChannel

        return SandboxChannel(
            api_base=settings.SANDBOX_API_BASE,
            merchant_id=settings.SANDBOX_MERCHANT_ID,
            secret=settings.SANDBOX_SECRET,
            timeouts=_timeouts(),
        )
    raise LookupError(f"channel {name!r} is not available")


def available_channels() -> tuple[str, ...]:
    """Channels configured on this deployment."""
    return tuple(name for name in CHANNEL_NAMES if name == "sandbox" and settings.SANDBOX_SECRET)


def currencies(name: str) -> frozenset[str]:
    """Currencies a channel takes (CNY everywhere; the sandbox also takes USD, EUR, JPY)."""
    return frozenset({"CNY", "USD", "EUR", "JPY"}) if name == "sandbox" else frozenset({"CNY"})

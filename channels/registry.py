"""Which channels exist, built from settings. The only place that knows every channel."""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from channels.base import Channel
from channels.breaker import SharedBreaker
from channels.http import Timeouts
from channels.instrumented import InstrumentedChannel, instrumented

CHANNEL_NAMES = ("alipay", "wechatpay", "sandbox")


def _timeouts() -> Timeouts:
    return Timeouts(
        connect_s=settings.CHANNEL_CONNECT_TIMEOUT_S,
        read_s=settings.CHANNEL_READ_TIMEOUT_S,
        write_s=settings.CHANNEL_WRITE_TIMEOUT_S,
    )


@cache
@instrumented  # timing, tracing, logging and the circuit breaker of every call: channels/instrumented.py
def get_channel(name: str) -> Channel:
    if name == "sandbox":
        from channels.sandbox.adapter import SandboxChannel

        return SandboxChannel(
            api_base=settings.SANDBOX_API_BASE,
            merchant_id=settings.SANDBOX_MERCHANT_ID,
            secret=settings.SANDBOX_SECRET,
            timeouts=_timeouts(),
            bill_timezone=getattr(settings, "SANDBOX_BILL_TIMEZONE", "UTC"),
        )
    if name == "alipay":
        from pathlib import Path

        from channels.alipay.adapter import AlipayChannel

        return AlipayChannel(
            gateway_url=settings.ALIPAY_GATEWAY_URL,
            app_id=settings.ALIPAY_APP_ID,
            app_private_key=Path(settings.ALIPAY_APP_PRIVATE_KEY_PATH).read_text(),
            alipay_public_key=Path(settings.ALIPAY_PUBLIC_KEY_PATH).read_text(),
            timeouts=_timeouts(),
        )
    if name == "wechatpay":
        from pathlib import Path

        from channels.wechatpay.adapter import WechatPayChannel

        return WechatPayChannel(
            api_base=settings.WECHATPAY_API_BASE,
            mchid=settings.WECHATPAY_MCHID,
            appid=settings.WECHATPAY_APPID,
            merchant_private_key=Path(settings.WECHATPAY_MERCHANT_PRIVATE_KEY_PATH).read_text(),
            merchant_serial_no=settings.WECHATPAY_MERCHANT_SERIAL_NO,
            apiv3_key=settings.WECHATPAY_APIV3_KEY,
            platform_public_key=Path(settings.WECHATPAY_PLATFORM_PUBLIC_KEY_PATH).read_text(),
            platform_public_key_id=settings.WECHATPAY_PLATFORM_PUBLIC_KEY_ID,
            notify_url=f"{settings.PUBLIC_BASE_URL}/callbacks/wechatpay",  # refund results
            timeouts=_timeouts(),
        )
    raise LookupError(f"channel {name!r} is not available")


def available_channels() -> tuple[str, ...]:
    """Channels configured on this deployment."""
    configured = {
        "sandbox": bool(settings.SANDBOX_SECRET),
        "alipay": all((settings.ALIPAY_APP_ID, settings.ALIPAY_APP_PRIVATE_KEY_PATH, settings.ALIPAY_PUBLIC_KEY_PATH)),
        "wechatpay": all((settings.WECHATPAY_MCHID, settings.WECHATPAY_MERCHANT_PRIVATE_KEY_PATH,
                          settings.WECHATPAY_APIV3_KEY, settings.WECHATPAY_PLATFORM_PUBLIC_KEY_PATH)),
    }
    return tuple(name for name in CHANNEL_NAMES if configured.get(name))


def breakers() -> list[SharedBreaker]:
    """The circuit breaker of every configured channel account (for ops: metrics and the admin)."""
    breakers = []
    for name in available_channels():
        channel = get_channel(name)
        if isinstance(channel, InstrumentedChannel):
            breakers.append(channel.breaker)
    return breakers


def currencies(name: str) -> frozenset[str]:
    """Currencies an available channel takes, as its adapter declares them."""
    return get_channel(name).currencies


# The key files of each channel, by the setting that names them, with what each must hold.
_KEY_FILES = {
    "alipay": {"ALIPAY_APP_PRIVATE_KEY_PATH": "private", "ALIPAY_PUBLIC_KEY_PATH": "public"},
    "wechatpay": {"WECHATPAY_MERCHANT_PRIVATE_KEY_PATH": "private", "WECHATPAY_PLATFORM_PUBLIC_KEY_PATH": "public"},
}


def check_keys() -> None:
    """Read every key file of the configured channels, at start-up (``ChannelsConfig.ready``).

    A missing or malformed key stops the process here, with the setting named, instead of failing the first
    charge of that channel, hours later, in a worker's log."""
    from pathlib import Path

    from channels.rsa import load_private_key, load_public_key

    for channel in available_channels():
        for setting, kind in _KEY_FILES.get(channel, {}).items():
            path = getattr(settings, setting)
            try:
                pem = Path(path).read_text()
                (load_private_key if kind == "private" else load_public_key)(pem)
            except (OSError, ValueError, TypeError) as exc:
                raise ImproperlyConfigured(
                    f"{setting} ({path}) must be a readable PEM file with an RSA {kind} key: {exc}"
                ) from None
    if "wechatpay" in available_channels() and len(settings.WECHATPAY_APIV3_KEY.encode()) != 32:
        raise ImproperlyConfigured("WECHATPAY_APIV3_KEY must be 32 bytes (WeChat Pay's APIv3 key)")

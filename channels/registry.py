"""Which channels exist, built from settings. The only place that knows every channel."""

from __future__ import annotations

import threading

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


# Each channel has a primary account and may have a backup (settings with BACKUP_ after the channel's name).
PRIMARY, BACKUP = "primary", "backup"
SLOTS = (PRIMARY, BACKUP)


def _setting(name: str, slot: str, field: str) -> str:
    """``ALIPAY_APP_ID`` for the primary account, ``ALIPAY_BACKUP_APP_ID`` for the backup."""
    prefix = name.upper() + ("_BACKUP_" if slot == BACKUP else "_")
    return str(getattr(settings, prefix + field))


# The settings an account of each channel needs before it is enabled.
_REQUIRED = {
    "sandbox": ("SECRET", "MERCHANT_ID"),
    "alipay": ("APP_ID", "APP_PRIVATE_KEY_PATH", "PUBLIC_KEY_PATH"),
    "wechatpay": ("MCHID", "MERCHANT_PRIVATE_KEY_PATH", "APIV3_KEY", "PLATFORM_PUBLIC_KEY_PATH"),
}


def configured(name: str, slot: str = PRIMARY) -> bool:
    return name in _REQUIRED and all(_setting(name, slot, field) for field in _REQUIRED[name])


class _Accounts:
    """``get_channel(name, slot="primary")``: the adapter of a channel's account, built once per process (one HTTP
    client, one breaker handle) whatever way the account is named. ``cache_clear()`` forgets them (settings
    changed, in tests)."""

    def __init__(self) -> None:
        self._built: dict[tuple[str, str], Channel] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, slot: str = PRIMARY) -> Channel:
        key = (name, slot)
        channel = self._built.get(key)
        if channel is None:
            with self._lock:  # two threads building it at once would make two clients
                channel = self._built.get(key) or _build(name, slot)
                self._built[key] = channel
        return channel

    def cache_clear(self) -> None:
        with self._lock:
            self._built.clear()


get_channel = _Accounts()


@instrumented  # timing, tracing, logging and the circuit breaker of every call: channels/instrumented.py
def _build(name: str, slot: str) -> Channel:
    if not configured(name, slot):
        raise LookupError(f"channel {name!r} has no {slot} account")

    def setting(field: str) -> str:
        return _setting(name, slot, field)

    if name == "sandbox":
        from channels.sandbox.adapter import SandboxChannel

        return SandboxChannel(
            api_base=settings.SANDBOX_API_BASE,
            merchant_id=setting("MERCHANT_ID"),
            secret=setting("SECRET"),
            timeouts=_timeouts(),
            bill_timezone=getattr(settings, "SANDBOX_BILL_TIMEZONE", "UTC"),
        )
    if name == "alipay":
        from pathlib import Path

        from channels.alipay.adapter import AlipayChannel

        return AlipayChannel(
            gateway_url=settings.ALIPAY_GATEWAY_URL,
            app_id=setting("APP_ID"),
            app_private_key=Path(setting("APP_PRIVATE_KEY_PATH")).read_text(),
            alipay_public_key=Path(setting("PUBLIC_KEY_PATH")).read_text(),
            timeouts=_timeouts(),
        )
    from pathlib import Path

    from channels.wechatpay.adapter import WechatPayChannel

    return WechatPayChannel(
        api_base=settings.WECHATPAY_API_BASE,
        mchid=setting("MCHID"),
        appid=setting("APPID"),
        merchant_private_key=Path(setting("MERCHANT_PRIVATE_KEY_PATH")).read_text(),
        merchant_serial_no=setting("MERCHANT_SERIAL_NO"),
        apiv3_key=setting("APIV3_KEY"),
        platform_public_key=Path(setting("PLATFORM_PUBLIC_KEY_PATH")).read_text(),
        platform_public_key_id=setting("PLATFORM_PUBLIC_KEY_ID"),
        notify_url=f"{settings.PUBLIC_BASE_URL}/callbacks/wechatpay",  # refund results
        timeouts=_timeouts(),
    )


def available_channels() -> tuple[str, ...]:
    """Channels configured on this deployment (their primary account is)."""
    return tuple(name for name in CHANNEL_NAMES if configured(name))


def accounts(name: str) -> list[Channel]:
    """Every configured account of a channel, the primary first."""
    return [get_channel(name, slot) for slot in SLOTS if configured(name, slot)]


def channel_for_account(name: str, account: str) -> Channel:
    """The adapter of the account an order was placed with ("" for orders from before backups: the primary).
    An account that is no longer configured is an error, never a silent switch to another account."""
    if not account:
        return get_channel(name)
    for channel in accounts(name):
        if channel.account == account:
            return channel
    raise LookupError(f"channel {name!r} has no configured account {account!r}")


def channel_for_new_charge(name: str) -> Channel:
    """Where a new charge goes: the primary account, unless its breaker is open and a backup is configured and
    not open itself. An order that may already be at an account stays there (the caller's rule)."""
    primary = get_channel(name)
    if not configured(name, BACKUP) or not _is_open(primary):
        return primary
    backup = get_channel(name, BACKUP)
    return primary if _is_open(backup) else backup


def _is_open(channel: Channel) -> bool:
    breaker = getattr(channel, "breaker", None)
    return breaker is not None and breaker.is_open()


def breakers() -> list[SharedBreaker]:
    """The circuit breaker of every configured channel account (for ops: metrics and the admin)."""
    return [channel.breaker for name in available_channels() for channel in accounts(name)
            if isinstance(channel, InstrumentedChannel)]


def currencies(name: str) -> frozenset[str]:
    """Currencies an available channel takes, as its adapter declares them."""
    return get_channel(name).currencies


# The key files of each channel, by the field of the setting that names them, with what each must hold.
_KEY_FILES = {
    "alipay": {"APP_PRIVATE_KEY_PATH": "private", "PUBLIC_KEY_PATH": "public"},
    "wechatpay": {"MERCHANT_PRIVATE_KEY_PATH": "private", "PLATFORM_PUBLIC_KEY_PATH": "public"},
}


def check_keys() -> None:
    """Read every key file of the configured channel accounts, at start-up (``ChannelsConfig.ready``).

    A missing or malformed key stops the process here, with the setting named, instead of failing the first
    charge of that channel, hours later, in a worker's log."""
    from pathlib import Path

    from channels.rsa import load_private_key, load_public_key

    for channel in available_channels():
        for slot in SLOTS:
            if not configured(channel, slot):
                continue
            prefix = channel.upper() + ("_BACKUP_" if slot == BACKUP else "_")
            for field, kind in _KEY_FILES.get(channel, {}).items():
                path = _setting(channel, slot, field)
                try:
                    pem = Path(path).read_text()
                    (load_private_key if kind == "private" else load_public_key)(pem)
                except (OSError, ValueError, TypeError) as exc:
                    raise ImproperlyConfigured(
                        f"{prefix}{field} ({path}) must be a readable PEM file with an RSA {kind} key: {exc}"
                    ) from None
            if channel == "wechatpay" and len(_setting(channel, slot, "APIV3_KEY").encode()) != 32:
                raise ImproperlyConfigured(f"{prefix}APIV3_KEY must be 32 bytes (WeChat Pay's APIv3 key)")

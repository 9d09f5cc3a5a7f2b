"""`python manage.py run_simulator <channel> [--port N] [--host H]`: one channel simulator (SIMULATORS.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from channels.simulator import ChannelSimulator, run_forever

DEFAULT_PORTS = {"sandbox": 8101, "alipay": 8102, "wechatpay": 8103}
Builder = Callable[[str, int, "str | None"], ChannelSimulator]


def _sandbox(host: str, port: int, public_base_url: str | None) -> ChannelSimulator:
    from channels.sandbox.simulator import SandboxSimulator

    account = {
        getattr(settings, "SANDBOX_MERCHANT_ID", "sbx_m_dev"): getattr(settings, "SANDBOX_SECRET", "dev-sandbox-secret")
    }
    return SandboxSimulator(
        account, host, port, public_base_url, bill_timezone=getattr(settings, "SANDBOX_BILL_TIMEZONE", "UTC")
    )


def _alipay(host: str, port: int, public_base_url: str | None) -> ChannelSimulator:
    from pathlib import Path

    from channels.alipay.simulator import AlipaySimulator, account_from_pems

    app_id = settings.ALIPAY_APP_ID
    app_public, alipay_private = settings.ALIPAY_SIM_APP_PUBLIC_KEY_PATH, settings.ALIPAY_SIM_PRIVATE_KEY_PATH
    if not (app_id and app_public and alipay_private):
        raise CommandError("the alipay simulator needs ALIPAY_APP_ID and ALIPAY_SIM_*_KEY_PATH "
                           "(python manage.py generate_dev_keys writes them)")
    account = account_from_pems(app_id, Path(app_public).read_text(), Path(alipay_private).read_text())
    return AlipaySimulator({app_id: account}, host, port, public_base_url)


def _wechatpay(host: str, port: int, public_base_url: str | None) -> ChannelSimulator:
    from channels.wechatpay.simulator import WechatPaySimulator, account_from_files

    if not (settings.WECHATPAY_MCHID and settings.WECHATPAY_SIM_MERCHANT_PUBLIC_KEY_PATH
            and settings.WECHATPAY_SIM_PLATFORM_PRIVATE_KEY_PATH):
        raise CommandError("the wechatpay simulator needs WECHATPAY_MCHID and WECHATPAY_SIM_*_KEY_PATH "
                           "(python manage.py generate_dev_keys writes them)")
    account = account_from_files(
        mchid=settings.WECHATPAY_MCHID,
        appid=settings.WECHATPAY_APPID,
        merchant_serial_no=settings.WECHATPAY_MERCHANT_SERIAL_NO,
        apiv3_key=settings.WECHATPAY_APIV3_KEY,
        platform_public_key_id=settings.WECHATPAY_PLATFORM_PUBLIC_KEY_ID,
        merchant_public_key_path=settings.WECHATPAY_SIM_MERCHANT_PUBLIC_KEY_PATH,
        platform_private_key_path=settings.WECHATPAY_SIM_PLATFORM_PRIVATE_KEY_PATH,
    )
    return WechatPaySimulator([account], host, port, public_base_url)


# One builder per channel.
BUILDERS: dict[str, Builder] = {"sandbox": _sandbox, "alipay": _alipay, "wechatpay": _wechatpay}


class Command(BaseCommand):
    help = "Run a payment channel simulator until SIGTERM or SIGINT."
    # The simulator is the channel, not part of the project: it must start even while the project's own
    # checks fail (e.g. half-written models), and it never touches the database.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("channel", help=", ".join(BUILDERS))
        parser.add_argument("--port", type=int, help="default: 8101 sandbox, 8102 alipay, 8103 wechatpay")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--public-base-url", help="base of pay_url, default http://<host>:<port>")

    def handle(
        self, *args: Any, channel: str, port: int | None, host: str, public_base_url: str | None, **options: Any
    ) -> None:
        if channel not in BUILDERS:
            raise CommandError(f"unknown channel {channel!r}; choose one of {', '.join(BUILDERS)}")
        simulator = BUILDERS[channel](host, port if port is not None else DEFAULT_PORTS[channel], public_base_url)
        try:
            run_forever(simulator, self.stdout)
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{simulator.port}: {exc}") from exc

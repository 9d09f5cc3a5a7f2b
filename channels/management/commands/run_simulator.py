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
    return SandboxSimulator(account, host, port, public_base_url)


def _not_yet(channel: str) -> Builder:
    def build(host: str, port: int, public_base_url: str | None) -> ChannelSimulator:
        raise CommandError(f"the {channel} simulator is not implemented yet")

    return build


# One builder per channel: the alipay and wechatpay simulators plug in here.
BUILDERS: dict[str, Builder] = {"sandbox": _sandbox, "alipay": _not_yet("alipay"), "wechatpay": _not_yet("wechatpay")}


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

"""The WeChat Pay simulator process for the end-to-end tests, on keys made for the test run."""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterator

import pytest

from channels.management.commands.generate_dev_keys import write_rsa_pair
from tests.e2e.conftest import Simulator, _stop, channel_settings, start_simulator


# Package scope, like the worker that is configured with it.
@pytest.fixture(scope="package")
def wechatpay_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    keys = tmp_path_factory.mktemp("wechatpay_keys")
    merchant_private, merchant_public = write_rsa_pair(keys, "wechatpay_merchant")
    platform_private, platform_public = write_rsa_pair(keys, "wechatpay_platform")
    account = {
        "WECHATPAY_MCHID": "1900000001",
        "WECHATPAY_APPID": "wxd930ea5d5a258f4f",
        "WECHATPAY_MERCHANT_SERIAL_NO": secrets.token_hex(20).upper(),
        "WECHATPAY_APIV3_KEY": "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32)),
        "WECHATPAY_PLATFORM_PUBLIC_KEY_ID": "PUB_KEY_ID_" + secrets.token_hex(16).upper(),
    }
    sim_env = {
        **account,
        "WECHATPAY_SIM_MERCHANT_PUBLIC_KEY_PATH": str(merchant_public),
        "WECHATPAY_SIM_PLATFORM_PRIVATE_KEY_PATH": str(platform_private),
    }
    proc, sim = start_simulator("wechatpay", sim_env, tmp_path_factory.mktemp("wechatpay_sim"))
    sim.worker_env = {
        **account,
        "WECHATPAY_API_BASE": sim.base_url,
        "WECHATPAY_MERCHANT_PRIVATE_KEY_PATH": str(merchant_private),
        "WECHATPAY_PLATFORM_PUBLIC_KEY_PATH": str(platform_public),
    }
    # This process serves the callbacks and closes orders: it uses the same account.
    with channel_settings(sim.worker_env):
        yield sim
    _stop(proc)

"""The Alipay simulator process for the end-to-end tests (imported into tests/e2e/conftest.py for the worker).

Keys are generated for the run: the app's pair (ours; the simulator gets its public half) and Alipay's pair (the
simulator's; we get its public half), exactly as a merchant and Alipay exchange them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from channels.management.commands.generate_dev_keys import write_rsa_pair
from payments_site.celery import app as celery_app
from tests.e2e.conftest import Simulator, _stop, channel_settings, start_simulator

APP_ID = "2021000000000042"


# Package scope, like the worker that reads its settings.
@pytest.fixture(scope="package")
def alipay_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    keys = tmp_path_factory.mktemp("alipay_keys")
    app_private, app_public = write_rsa_pair(keys, "alipay_app")
    alipay_private, alipay_public = write_rsa_pair(keys, "alipay_platform")
    sim_env = {
        "ALIPAY_APP_ID": APP_ID,
        "ALIPAY_SIM_APP_PUBLIC_KEY_PATH": str(app_public),
        "ALIPAY_SIM_PRIVATE_KEY_PATH": str(alipay_private),
    }
    proc, sim = start_simulator("alipay", sim_env, tmp_path_factory.mktemp("alipay_sim"))
    ours = {
        "ALIPAY_GATEWAY_URL": f"{sim.base_url}/gateway.do",
        "ALIPAY_APP_ID": APP_ID,
        "ALIPAY_APP_PRIVATE_KEY_PATH": str(app_private),
        "ALIPAY_PUBLIC_KEY_PATH": str(alipay_public),
    }
    sim.worker_env = dict(ours)
    with channel_settings(ours):
        yield sim
    _stop(proc)


@pytest.fixture
def alipay(transactional_db, worker, alipay_sim: Simulator, live_server) -> Iterator[Simulator]:
    """A clean Alipay simulator (clock fast) and broker for one end-to-end test."""
    alipay_sim.reset()
    celery_app.control.purge()
    yield alipay_sim
    alipay_sim.reset()  # nothing it still meant to send arrives while the test's rows are flushed (Simulator.reset)

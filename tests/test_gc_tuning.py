"""The garbage collector is tuned in every long-running process, once it has started (payments_site/gc_tuning.py).

Each case starts a fresh Python the way that process starts, since freezing is for the life of a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

REPORT = (
    "import gc, json, sys\n"
    "print(json.dumps({'frozen': gc.get_freeze_count(), 'gen0': gc.get_threshold()[0],"
    " 'views_loaded': 'payments.api.views' in sys.modules}))\n"
)


def started(code: str, **env: str) -> dict:
    """What the garbage collector looks like in a fresh process after ``code``."""
    environ = {**os.environ, "DJANGO_SETTINGS_MODULE": "payments_site.settings", "LOG_LEVEL": "WARNING", **env}
    out = subprocess.run([sys.executable, "-c", code + REPORT], cwd=ROOT, env=environ, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_plain_django_process_is_left_as_python_sets_it() -> None:
    # Tests, migrations, the shell: short-lived, nothing to tune.
    assert started("import django; django.setup()\n") == {"frozen": 0, "gen0": 700, "views_loaded": False}


def test_the_web_process_freezes_its_views_too() -> None:
    after = started("import payments_site.wsgi\n")
    assert after["frozen"] > 10_000
    assert after["gen0"] == 10_000
    assert after["views_loaded"]  # the URLconf was imported before the freeze


@pytest.mark.parametrize("signal", ["worker_ready", "worker_process_init", "beat_init"])
def test_celery_processes_tune_once_started(signal: str) -> None:
    after = started(
        "import django; django.setup()\n"
        "from celery import signals\n"
        "from payments_site.celery import app\n"
        f"signals.{signal}.send(sender=None)\n"
    )
    assert after["frozen"] > 10_000 and after["gen0"] == 10_000


@pytest.mark.parametrize("command", ["run_dispatcher", "run_simulator"])
def test_long_running_commands_tune_when_django_is_ready(command: str) -> None:
    after = started(f"import sys; sys.argv = ['manage.py', '{command}']\nimport django; django.setup()\n")
    assert after["frozen"] > 10_000 and after["gen0"] == 10_000


def test_the_threshold_is_a_setting() -> None:
    after = started("import payments_site.wsgi\n", GC_GEN0_THRESHOLD="0")
    assert after["frozen"] > 10_000 and after["gen0"] == 700

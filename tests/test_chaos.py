"""The short fault drill of `make test`: `bench/chaos.py --short` on a stack of its own (its own PostgreSQL cluster and
Redis, so that a FLUSHALL touches nobody else's), 30 orders per scenario. Of the scenarios that restart no service,
the four that `make test`'s ten minutes leave room for: workers SIGKILLed, Redis FLUSHALL, the channel timing out
after processing, forged and tampered notifications (about two minutes in all; `--short` alone runs all eight in
about six). It fails when any order is lost, double-charged or stuck; `make chaos` is the full run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
@pytest.mark.skipif(shutil.which("initdb") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")),
                    reason="PostgreSQL server binaries (initdb) not installed")
def test_short_drill_loses_nothing() -> None:
    drill = subprocess.Popen([sys.executable, "bench/chaos.py", "--short", "--scenarios", "1,2,7,9"], cwd=ROOT,
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = drill.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        drill.terminate()  # SIGTERM: the harness stops the processes it started (they are not its process group)
        out, err = drill.communicate(timeout=60)
        pytest.fail(f"the drill took more than 8 minutes\n{out}\n{err[-6000:]}")
    print(out)
    assert drill.returncode == 0, f"{out}\n{err[-6000:]}"

"""The web server as deployed (gunicorn with ``payments_site/gunicorn.conf.py``), started as a process."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


def test_an_idle_keep_alive_connection_is_left_for_the_client_to_close() -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "payments_site.wsgi", "-c", "payments_site/gunicorn.conf.py",
         "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def answers() -> bool:
            try:
                probe = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                probe.request("GET", "/healthz")
                return probe.getresponse().status == 200
            except OSError:
                return False

        wait_until(answers, timeout_s=30, what="gunicorn")
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        client.request("GET", "/healthz")
        first = client.getresponse()
        assert (first.status, first.read()) == (200, b'{"status": "ok"}')
        # Idle longer than gunicorn's default keep-alive (2 s), as a channel's pooled connection between two
        # notifications: the same connection must still carry the next request.
        time.sleep(3)
        client.request("GET", "/healthz")
        assert client.getresponse().status == 200
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as closed:
        pytest.fail(f"the server closed the idle connection first: {closed!r}")
    finally:
        server.terminate()
        server.wait(timeout=10)

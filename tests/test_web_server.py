"""The web server as deployed (gunicorn with ``payments_site/gunicorn.conf.py``), started as a process."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import json_lines
from tests.e2e.conftest import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A gunicorn on a free port, and the file its output goes to."""
    port = free_port()
    output = tmp_path / "web.log"
    # Every routine line kept, however busy the test machine is: the test counts them.
    env = {**os.environ, "LOG_FORMAT": "json", "LOG_SAMPLE_RATE": "1", "LOG_SAMPLE_LOAD_TIERS": ""}
    with output.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "payments_site.wsgi", "-c", "payments_site/gunicorn.conf.py",
             "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "2"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
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
        yield port, output
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_an_idle_keep_alive_connection_is_left_for_the_client_to_close(server: tuple[int, Path]) -> None:
    port, _ = server
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
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


def test_each_request_is_logged_once_by_the_app_in_its_trace(server: tuple[int, Path]) -> None:
    port, output = server
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    trace_ids = []
    for path in ("/healthz?probe=1", "/no-such-page"):
        client.request("GET", path)
        response = client.getresponse()
        response.read()
        trace_ids.append(response.getheader("X-Trace-Id"))

    def logged() -> list[dict]:
        return [line for line in json_lines(output.read_text()) if line.get("trace_id") in trace_ids]

    wait_until(lambda: len(logged()) >= 2, timeout_s=10, what="the requests' log lines")
    time.sleep(0.5)  # a second line per request would be written by now
    # One line per request, in its trace; a 4xx is a WARNING, which no sampling drops.
    assert [(line["logger"], line["http_path"], line["http_status"], line["level"]) for line in logged()] == [
        ("payments.access", "/healthz", 200, "INFO"), ("payments.access", "/no-such-page", 404, "WARNING"),
    ]
    everything = output.read_text()
    assert "probe=1" not in everything  # no query string: a channel's redirect may carry a signature
    # Neither gunicorn's access line nor Django's "Not Found" (outside the trace) repeats it.
    assert not [line for line in json_lines(everything) if line["logger"] in ("gunicorn.access", "django.request")]

"""The channel calls' transport (``channels.http.send``): kept connections, TLS checked against the name, what each
failure is taken for, and httpx through a proxy from the environment."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from channels.base import Retryable, UnknownOutcome
from channels.http import Timeouts, _proxies, new_client, send
from tests.tls_support import LoopbackCA
from tests.webhook_receiver import running_receiver

CLIENT = new_client(Timeouts(connect_s=1.0, read_s=0.5, write_s=1.0))


def post(url: str, body: bytes = b'{"amount":1050}') -> httpx.Response:
    return send(CLIENT, CLIENT.build_request("POST", url, content=body, headers={"Content-Type": "application/json"}))


def test_calls_share_a_kept_connection_and_connect_again_once_the_channel_closed_it() -> None:
    with running_receiver(keep_alive=True, idle_s=0.3) as receiver:
        receiver.bodies["/v1/trades?sign=abc"] = b'{"status":"WAITING"}'
        answers = [post(receiver.url("/v1/trades?sign=abc")) for _ in range(2)]
        assert receiver.connections == 1
        time.sleep(0.6)  # the channel closes the idle connection: the next call connects again
        answers.append(post(receiver.url("/v1/trades?sign=abc")))
        assert receiver.connections == 2
    assert [(a.status_code, a.json()) for a in answers] == [(200, {"status": "WAITING"})] * 3
    received = receiver.at("/v1/trades?sign=abc")
    assert [r.body for r in received] == [b'{"amount":1050}'] * 3
    assert received[0].headers["Host"] == receiver.url("").removeprefix("http://")
    assert "Accept-Encoding" not in received[0].headers  # an answer is read as sent: nothing to decompress


def test_no_answer_in_time_is_an_unknown_outcome_and_no_connection_is_retryable() -> None:
    with running_receiver(keep_alive=True) as receiver:
        receiver.hang_s["/v1/slow"] = 1.5
        with pytest.raises(UnknownOutcome) as late:
            post(receiver.url("/v1/slow"))
        assert late.value.code == "channel_timeout"
        assert len(receiver.at("/v1/slow")) == 1  # it arrived: only a query can tell what became of it
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(Retryable) as unreachable:
        post(f"http://127.0.0.1:{port}/v1/trades")
    assert unreachable.value.code == "channel_unreachable"


def test_https_is_checked_against_the_host_name(test_ca: LoopbackCA) -> None:
    with running_receiver(keep_alive=True, tls=test_ca.server_context("localhost")) as receiver:
        port = receiver.server.server_address[1] if receiver.server else 0
        assert [post(f"https://localhost:{port}/v1/trades").status_code for _ in range(2)] == [200, 200]
        assert receiver.connections == 1
        # The same server under a name its certificate is not for: nothing is sent, and nothing can have arrived.
        with pytest.raises(Retryable) as refused:
            post(f"https://127.0.0.1:{port}/v1/other")
        assert refused.value.code == "channel_unreachable" and "SSLCertVerificationError" in str(refused.value)
        assert receiver.at("/v1/other") == []


def test_with_a_proxy_in_the_environment_the_call_goes_through_it(monkeypatch) -> None:
    with running_receiver(keep_alive=True) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        _proxies.cache_clear()
        try:
            client = new_client(Timeouts(connect_s=1.0, read_s=1.0))  # httpx reads the proxy when it is made
            answer = send(client, client.build_request("POST", "http://gateway.example/v1/trades", content=b"{}"))
        finally:
            _proxies.cache_clear()
    assert answer.status_code == 200
    assert [r.body for r in proxy.at("http://gateway.example/v1/trades")] == [b"{}"]  # a proxy's absolute form

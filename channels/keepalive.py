"""HTTP/1.1 connections kept open between requests: the channel calls' (``channels.http``) and the webhook POSTs'
(``payments.webhook_http``).

Python's own ``http.client`` rather than httpx for these small requests: httpx spent about three times the CPU on
one (its client, and h11 parsing the answer in Python), and a payment makes one channel call and two webhook POSTs.

A connection is kept per target (scheme, address to connect to, port, host name: a TLS connection was verified for
its name), each with when it was last used. At most ``KEEP_CONNECTIONS`` per target, each for up to ``KEEP_IDLE_S``:
a process's threads call a busy host at once (a charges worker has 48, a simulator's notifier 128), and with fewer
kept, each burst would connect again (a TCP and a TLS handshake each; httpx keeps 20).
"""

from __future__ import annotations

import http.client
import os
import select
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import httpx
from opentelemetry import trace

Target = tuple[str, str, int, str]
KEEP_CONNECTIONS = 128
KEEP_IDLE_S = 5.0
_idle: dict[Target, list[tuple[http.client.HTTPConnection, float]]] = {}
_idle_lock = threading.Lock()
_tracer = trace.get_tracer(__name__)


@cache
def tls_context() -> ssl.SSLContext:
    """Certificates checked against httpx's trust store: certifi's, or the file or directory that ``SSL_CERT_FILE``
    or ``SSL_CERT_DIR`` names."""
    return httpx.create_ssl_context()


class TlsConnection(http.client.HTTPSConnection):
    """TLS to ``address`` with ``server_name`` as the server name: the certificate is checked against the name, also
    when the address is one that was looked up and checked beforehand."""

    def __init__(self, address: str, port: int, *, server_name: str, timeout: float | None) -> None:
        super().__init__(address, port, timeout=timeout, context=tls_context())
        self.server_name = server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = tls_context().wrap_socket(self.sock, server_hostname=self.server_name)


def connection(target: Target, *, timeout: float | None) -> http.client.HTTPConnection:
    """A kept connection to ``target`` that is still open, or a new one (not connected yet)."""
    now = time.monotonic()
    while True:
        with _idle_lock:
            kept = _idle.get(target)
            if not kept:
                _idle.pop(target, None)
                break
            kept_connection, since = kept.pop()  # the one used last: the likeliest to be open still
        if now - since < KEEP_IDLE_S and not closed_by_peer(kept_connection):
            kept_connection.timeout = timeout
            if kept_connection.sock is not None:
                kept_connection.sock.settimeout(timeout)
            return kept_connection
        kept_connection.close()
    scheme, address, port, name = target
    if scheme == "https":
        return TlsConnection(address, port, server_name=name, timeout=timeout)
    return http.client.HTTPConnection(address, port, timeout=timeout)


def closed_by_peer(kept: http.client.HTTPConnection) -> bool:
    """Whether the other side closed (or wrote to) a kept connection while it was idle: it cannot carry a request."""
    sock = kept.sock
    return sock is None or bool(select.select([sock], [], [], 0)[0])


def keep(target: Target, kept: http.client.HTTPConnection) -> None:
    """Keep the connection for the next request to ``target``, and close those kept that were idle too long."""
    now = time.monotonic()
    with _idle_lock:
        kept_list = _idle.setdefault(target, [])
        closing = [c for c, since in kept_list if now - since >= KEEP_IDLE_S]
        kept_list[:] = [(c, since) for c, since in kept_list if now - since < KEEP_IDLE_S]
        if len(kept_list) < KEEP_CONNECTIONS:
            kept_list.append((kept, now))
        else:
            closing.append(kept)
    for idle in closing:
        idle.close()


@contextmanager
def client_span(method: str, url: str, host: str, port: int) -> Iterator[trace.Span]:
    """The client span OpenTelemetry's httpx instrumentation makes, when spans are exported; the URL goes without its
    query string, where a channel's signature or a merchant's token may be."""
    with _tracer.start_as_current_span(method, kind=trace.SpanKind.CLIENT) as span:
        if span.is_recording():
            span.set_attributes({"http.request.method": method, "url.full": url.split("?", 1)[0],
                                 "server.address": host, "server.port": port})
        yield span


def span_answered(span: trace.Span, status: int | None, error: str = "") -> None:
    if span.is_recording():
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        else:
            span.set_attribute("error.type", error.split(":", 1)[0])


def _forget_after_fork() -> None:
    # A forked child (a prefork pool's) must not share its parent's sockets: it starts with none kept.
    global _idle_lock
    _idle.clear()
    _idle_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)

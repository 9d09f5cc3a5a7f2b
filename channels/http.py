"""The HTTP transport shared by the channel adapters, and its timeout classification.

A connect failure or connect timeout means the request never arrived: safe to send again (retryable).
Once the request has been written, a read timeout or a dropped connection leaves the outcome unknown:
the channel may have acted on it, so the caller must query before anything else.
"""

from __future__ import annotations

import http.client
import urllib.request
from dataclasses import dataclass
from functools import cache
from typing import IO

import httpx

from channels import keepalive
from channels.base import Retryable, UnknownOutcome, new_spool


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 3.0
    read_s: float = 10.0
    write_s: float = 5.0
    pool_s: float = 3.0

    def as_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect_s, read=self.read_s, write=self.write_s, pool=self.pool_s)


def new_client(timeouts: Timeouts) -> httpx.Client:
    return httpx.Client(timeout=timeouts.as_httpx(), follow_redirects=False)


def send(client: httpx.Client, request: httpx.Request) -> httpx.Response:
    """Send a request built by ``client`` and read its answer, on a connection kept between calls
    (``channels.keepalive``); raise what went wrong as ``Retryable`` or ``UnknownOutcome`` (module docstring).

    Python's ``http.client``, not ``client.send``: for one small call, httpx's client and its HTTP parsing cost
    about three times the CPU (1.6 ms against 0.56 on loopback, measured on a slow day), and every payment makes a
    channel call. The request and the answer stay httpx's, for the adapters. httpx still sends when a proxy is set
    in the environment (``HTTPS_PROXY`` and the like), which it knows how to go through, and streams the bill
    downloads (``download`` below)."""
    url = request.url
    if _proxied(url.scheme, url.host):
        return _send_with_httpx(client, request)
    timeouts = request.extensions.get("timeout") or client.timeout.as_dict()
    port = url.port or (443 if url.scheme == "https" else 80)
    target = (url.scheme, url.host, port, url.host)
    with keepalive.client_span(request.method, str(url), url.host, port) as span:
        connection = keepalive.connection(target, timeout=timeouts["connect"])
        if connection.sock is None:
            try:
                connection.connect()
            except OSError as exc:  # refused, unreachable, timed out, a TLS handshake or certificate that failed
                connection.close()  # a TLS handshake that failed leaves the TCP connection open
                kind = "ConnectTimeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                raise Retryable(f"channel unreachable: {kind}", code="channel_unreachable") from exc
        sock = connection.sock
        try:
            sock.settimeout(timeouts["write"])
            connection.putrequest(request.method, url.raw_path.decode("ascii"), skip_host=True,
                                  skip_accept_encoding=True)
            for name, value in request.headers.raw:
                if name.lower() != b"accept-encoding":  # the answer comes as it is: nothing to decompress
                    connection.putheader(name, value)
            connection.endheaders(request.content)
        except TimeoutError as exc:
            # The body was not fully written, so the channel cannot have accepted the request.
            connection.close()
            raise Retryable("channel write timed out", code="channel_timeout") from exc
        except (OSError, http.client.HTTPException) as exc:
            # A kept connection the channel closed at that moment: part of the request may have arrived.
            connection.close()
            raise UnknownOutcome(f"channel transport error: {type(exc).__name__}", code="channel_error") from exc
        try:
            sock.settimeout(timeouts["read"])
            answer = connection.getresponse()
            content = answer.read()
        except TimeoutError as exc:
            connection.close()
            raise UnknownOutcome("no answer from channel: ReadTimeout", code="channel_timeout") from exc
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise UnknownOutcome(f"no answer from channel: {type(exc).__name__}", code="channel_timeout") from exc
        keepalive.span_answered(span, answer.status)
    if answer.will_close:
        connection.close()
    else:
        keepalive.keep(target, connection)
    return httpx.Response(answer.status, headers=answer.getheaders(), content=content, request=request)


@cache
def _proxies() -> dict[str, str]:
    return urllib.request.getproxies()  # the environment's, as httpx reads them


def _proxied(scheme: str, host: str) -> bool:
    proxies = _proxies()
    return bool(proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host)


def _send_with_httpx(client: httpx.Client, request: httpx.Request) -> httpx.Response:
    try:
        return client.send(request)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise Retryable(f"channel unreachable: {type(exc).__name__}", code="channel_unreachable") from exc
    except httpx.WriteTimeout as exc:
        raise Retryable("channel write timed out", code="channel_timeout") from exc
    except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError) as exc:
        raise UnknownOutcome(f"no answer from channel: {type(exc).__name__}", code="channel_timeout") from exc
    except httpx.HTTPError as exc:
        raise UnknownOutcome(f"channel transport error: {type(exc).__name__}", code="channel_error") from exc


@dataclass
class Download:
    """A streamed answer: status, headers, and the body spooled to a file (memory up to a bound, then disk)."""

    status_code: int
    headers: httpx.Headers
    file: IO[bytes]

    def small_body(self, limit: int = 65536) -> bytes:
        """The start of the body, to read an error answer."""
        self.file.seek(0)
        return self.file.read(limit)


def download(client: httpx.Client, request: httpx.Request) -> Download:
    """Send a read-only request (a bill download) and spool its body as it arrives. Reading is safe to repeat,
    so a transfer cut off half way is retryable, not an unknown outcome."""
    file = new_spool()
    try:
        response = client.send(request, stream=True)
        try:
            for chunk in response.iter_bytes(1 << 16):
                file.write(chunk)
        finally:
            response.close()
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        file.close()
        raise Retryable(f"channel unreachable: {type(exc).__name__}", code="channel_unreachable") from exc
    except httpx.HTTPError as exc:
        file.close()
        raise Retryable(f"download failed: {type(exc).__name__}", code="bill_unavailable") from exc
    file.seek(0)
    return Download(response.status_code, response.headers, file)

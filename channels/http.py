"""The HTTP transport shared by the channel adapters, and its timeout classification.

A connect failure or connect timeout means the request never arrived: safe to send again (retryable).
Once the request has been written, a read timeout or a dropped connection leaves the outcome unknown:
the channel may have acted on it, so the caller must query before anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO

import httpx

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
    try:
        return client.send(request)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise Retryable(f"channel unreachable: {type(exc).__name__}", code="channel_unreachable") from exc
    except httpx.WriteTimeout as exc:
        # The body was not fully written, so the channel cannot have accepted the request.
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

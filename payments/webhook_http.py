"""Merchant webhook URLs and the POST that delivers an event: checked, signed, sent to the address checked.

Merchants choose these URLs, so a URL is untrusted: it must not make our servers talk to our own network (SSRF).
A URL is refused when its host is, or resolves to, a private, loopback, link-local (169.254.0.0/16, where cloud
metadata lives), multicast, reserved or unspecified address, unless ``WEBHOOK_ALLOWED_HOSTS`` lists it. The check
runs when a merchant gives the URL, and again at each send: a name may resolve elsewhere by then, so the send
connects to the address it checked, never to a second lookup's answer.

Signing is the Standard Webhooks reference library's, nothing hand-written: ``webhook-id`` (the event id, the same
on every attempt), ``webhook-timestamp`` and ``webhook-signature``, with one signature per valid secret.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from standardwebhooks import Webhook

from channels import keepalive

USER_AGENT = "payments-processor-webhooks/1.0 (+https://github.com/payments-processor)"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeUrl(Exception):
    """A webhook URL we must not send to; the message says why, in words a merchant can act on."""


def _allowed(host: str, address: Address | None) -> bool:
    for entry in settings.WEBHOOK_ALLOWED_HOSTS:
        if entry.lower() == host.lower():
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue  # a host name, compared above
    return False


def _forbidden(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    return (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified)


def _parts(url: str, *, live: bool) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeUrl("the URL must be http(s) with a host")
    if live and parts.scheme != "https":
        raise UnsafeUrl("with a live key the URL must be https")
    if parts.username or parts.password:
        raise UnsafeUrl("the URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeUrl("the URL's port is not valid") from None
    return parts.scheme, parts.hostname, port


def _check_addresses(host: str, addresses: Sequence[Address]) -> None:
    for address in addresses:
        if _forbidden(address) and not _allowed(host, address):
            raise UnsafeUrl(f"the URL's host {host} is or resolves to a private or reserved address ({address})")


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` has now (a literal address is itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def check_url(url: str, *, live: bool) -> None:
    """Refuse (``UnsafeUrl``) a webhook URL that points where we must not send. A name that does not resolve now
    is let through: it cannot reach anything yet, and the send checks it again."""
    _, host, port = _parts(url, live=live)
    if host.lower() == "localhost" and not _allowed(host, None):
        raise UnsafeUrl("the URL's host is localhost")
    try:
        addresses = resolve(host, port)
    except OSError:
        return
    _check_addresses(host, addresses)


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no answer (timeout, refused connection, unsafe address)
    latency_ms: int
    error: str = ""

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def signature(body: bytes, *, msg_id: str, at: dt.datetime, secrets: Sequence[str]) -> str:
    """``webhook-signature``: one ``v1,<base64>`` per valid secret, space-separated (the current one first)."""
    return " ".join(Webhook(secret).sign(msg_id, at, body) for secret in secrets)


def post(url: str, body: bytes, *, msg_id: str, secrets: Sequence[str], live: bool) -> Answer:
    """POST ``body`` to ``url`` signed with ``secrets``; never raises. Connects to the address that was checked.

    Python's own ``http.client`` on connections ``channels.keepalive`` keeps, not httpx: a webhook is one small POST
    on a kept connection, and httpx spent four times the CPU on it (350 µs against 90 on loopback); the webhooks
    worker went from 3.2 to 2.3 ms of CPU per payment (two sends, ``make bench-e2e``).
    Redirects are never followed: a 3xx is not a delivery, and following one would skip the address check."""
    started = time.monotonic()

    def answer(status: int | None, error: str = "") -> Answer:
        return Answer(status, int((time.monotonic() - started) * 1000), error[:200])

    try:
        scheme, host, port = _parts(url, live=live)
        addresses = resolve(host, port)
        _check_addresses(host, addresses)
    except UnsafeUrl as unsafe:
        return answer(None, f"refused: {unsafe}")
    except OSError as exc:
        return answer(None, f"could not resolve {host}: {exc}")
    at = dt.datetime.now(dt.UTC)
    headers = {
        "Host": host if port in (80, 443) else f"{host}:{port}",
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature(body, msg_id=msg_id, at=at, secrets=secrets),
    }
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # The request goes to the checked address; the name still travels as the Host header and, for https, as
    # the TLS server name (so the certificate is checked against the name, not the address).
    target = (scheme, str(addresses[0]), port, host)
    with keepalive.client_span("POST", url, host, port) as span:
        status, error = _send(target, path, body, headers, started)
        keepalive.span_answered(span, status, error)
    return answer(status, error)


def _send(target: keepalive.Target, path: str, body: bytes, headers: dict[str, str],
          started: float) -> tuple[int | None, str]:
    """(status, error) of the POST, on a kept connection to ``target`` or a new one."""
    connection = keepalive.connection(target, timeout=settings.WEBHOOK_TIMEOUT_S)
    try:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
    except TimeoutError:
        connection.close()
        return None, f"no answer within {settings.WEBHOOK_TIMEOUT_S:g} s"
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        return None, f"{type(exc).__name__}: {exc}"
    status = response.status  # only the status decides; the body is read only to keep the connection
    if _finish(response, started):
        keepalive.keep(target, connection)
    else:
        connection.close()
    return status, "" if 200 <= status < 300 else f"HTTP {status}"


# How much of an answer's body is read, and for how long, so that its connection can carry the next send.
KEEP_BODY_BYTES = 64 * 1024


def _finish(response: http.client.HTTPResponse, started: float) -> bool:
    """Read the answer's body (a small one) and close it; whether its connection can carry the next send. A
    connection is kept only once the answer on it was read to its end. A body over ``KEEP_BODY_BYTES``, or one
    still arriving when the send's timeout has passed, is left unread and its connection dropped: a receiver
    cannot hold a thread by answering slowly or at length."""
    read = 0
    try:
        while chunk := response.read(16384):
            read += len(chunk)
            if read > KEEP_BODY_BYTES or time.monotonic() - started > settings.WEBHOOK_TIMEOUT_S:
                return False
    except (OSError, http.client.HTTPException):
        return False  # the status arrived; a body cut short only costs the connection
    finally:
        response.close()
    return not response.will_close  # the receiver closes it (Connection: close, HTTP/1.0)

"""The HTTP server, routing, request-level faults and `/_sim/` control endpoints of a channel simulator.

A channel simulator subclasses `ChannelSimulator`, registers its protocol's routes with `route()` and fills in
the hooks (authentication, fault answers, account opening, snapshots). Standard library only for serving; no
Django, nothing from `payments/` or `reconciliation/`: a simulator is the channel, not part of us.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import TextIOBase
from typing import Any, Self, TextIO
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx

from .faults import REQUEST_MODES, Clock, FaultBook, parse_fault
from .notifier import Notification, Notifier

log = logging.getLogger(__name__)

HOLD_S = 60.0  # how long timeout_after_processing keeps a connection without answering
MAX_BODY = 1 << 20
DATE_RE = r"\d{4}-\d{2}-\d{2}"


class BadRequest(ValueError):
    """A request the channel would refuse as malformed; each simulator answers it in its own protocol."""


@dataclass
class Request:
    method: str
    target: str  # path with query, exactly as sent (what signatures cover)
    headers: Any  # email.message.Message: case-insensitive .get()
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query))

    def json(self) -> Any:
        """The JSON body; ValueError if it is not JSON."""
        return json.loads(self.body) if self.body.strip() else None

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object, or ``BadRequest``."""
        try:
            body = self.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8", "replace")))


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False  # timeout_after_processing: never answer

    @classmethod
    def json(cls, status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
        body = json.dumps(obj, ensure_ascii=False).encode()
        return cls(status, body, {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def html(cls, status: int, text: str) -> Response:
        return cls(status, text.encode(), {"Content-Type": "text/html; charset=utf-8"})


def sim_error(status: int, message: str) -> Response:
    """An error of the control endpoints (not of any channel's protocol)."""
    return Response.json(status, {"error": {"code": "SIM_ERROR", "message": message}})


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[..., Response]
    operation: str | None  # a channel operation: authentication and faults apply


@dataclass
class BillAdjustment:
    drop: set[str] = field(default_factory=set)
    amount: dict[str, int] = field(default_factory=dict)
    add: list[dict[str, Any]] = field(default_factory=list)


def added_row_time(extra: dict[str, Any], day: str, zone: dt.tzinfo) -> float:
    """When a row added to a bill by ``/_sim/bills/<day>/adjust`` happened: its optional ``"at"`` (RFC 3339, e.g.
    a second before midnight, to test the business day's edges), else noon of the bill's day in its zone."""
    if extra.get("at"):
        return dt.datetime.fromisoformat(str(extra["at"]).replace("Z", "+00:00")).timestamp()
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(12), zone).timestamp()


def _aware_time(value: Any) -> bool:
    try:
        return isinstance(value, str) and dt.datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False


class ChannelSimulator:
    name = "channel"
    retry_schedule: tuple[float, ...] = ()  # seconds between notification attempts

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        public_base_url: str | None = None,
        notify_hosts: Iterable[str] = (),
    ) -> None:
        self.host, self.port = host, port
        self._public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.lock = threading.RLock()  # guards the channel's ledger: handlers run on many threads
        self.faults = FaultBook()
        self.clock = Clock()
        self.notifier = Notifier(self.faults, self.clock, self.retry_schedule, self.acknowledged, notify_hosts)
        self.create_calls: dict[str, int] = {}
        self.bill_adjustments: dict[str, BillAdjustment] = {}
        self.stopping = threading.Event()
        self._routes: list[Route] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.route("GET", r"/_sim/trades/(?P<out_trade_no>[^/]+)", self._sim_trade)
        self.route("GET", r"/_sim/faults", lambda req: Response.json(200, {"faults": self.faults.listing()}))
        self.route("POST", r"/_sim/faults", self._sim_arm)
        self.route("DELETE", r"/_sim/faults", self._sim_clear)
        self.route("POST", r"/_sim/clock", self._sim_clock)
        self.route("POST", rf"/_sim/bills/(?P<day>{DATE_RE})/adjust", self._sim_adjust)
        self.route("POST", r"/_sim/accounts", self._sim_accounts)
        self.route("POST", r"/_sim/reset", self._sim_reset)

    # -- hooks for the channel -------------------------------------------------------------------------------

    def authenticate(self, req: Request) -> tuple[Any, Response | None]:
        """(context passed to the operation handler, or the channel's rejection)."""
        raise NotImplementedError

    def before_operation(self, operation: str, req: Request, ctx: Any) -> None:
        """Runs after authentication and before faults, e.g. to count create calls."""

    def fault_response(self, mode: str, operation: str, ctx: Any) -> Response:
        """The channel's answer for refuse, http_500 or rate_limit."""
        raise NotImplementedError

    def acknowledged(self, response: httpx.Response) -> bool:
        return 200 <= response.status_code < 300

    def trade_snapshot(self, out_trade_no: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def open_account(self, body: Any) -> dict[str, Any]:
        raise NotImplementedError

    def reset_state(self) -> None:
        """Forget the channel's trades and refunds (accounts stay)."""

    # -- for the channel ------------------------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Callable[..., Response], operation: str | None = None) -> None:
        self._routes.append(Route(method, re.compile(pattern), handler, operation))

    def count_create(self, out_trade_no: str) -> None:
        with self.lock:
            self.create_calls[out_trade_no] = self.create_calls.get(out_trade_no, 0) + 1

    def notify(self, notification: Notification) -> None:
        self.notifier.submit(notification)

    def notification_attempts(self, notifications: Iterable[Notification]) -> list[dict[str, Any]]:
        return self.notifier.attempts(notifications)

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    @property
    def public_base_url(self) -> str:
        return self._public_base_url or self.base_url

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen and serve in background threads; returns at once. One start per instance."""
        self._server = _Server((self.host, self.port), _Handler)
        self._server.simulator = self
        self.port = self._server.server_address[1]
        self.notifier.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"{self.name}-sim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # releases connections held by timeout_after_processing
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.notifier.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.clock.set_speed(1.0)
            self.notifier.reset()
            self.create_calls.clear()
            self.bill_adjustments.clear()
            self.reset_state()

    # -- dispatch ------------------------------------------------------------------------------------------

    def dispatch(self, req: Request) -> Response:
        allowed: list[str] = []
        for route in self._routes:
            match = route.pattern.fullmatch(req.path)
            if match is None:
                continue
            if route.method != req.method:
                allowed.append(route.method)
                continue
            params = {key: unquote(value) for key, value in match.groupdict().items()}
            try:
                if route.operation is None:
                    return route.handler(req, **params)
                return self._operate(route, req, params)
            except Exception:
                log.exception("%s simulator: %s %s failed", self.name, req.method, req.path)
                return sim_error(500, "simulator bug, see its log")
        if allowed:
            return Response(405, headers={"Allow": ", ".join(allowed)})
        return sim_error(404, "no such endpoint")

    def _operate(self, route: Route, req: Request, params: dict[str, str]) -> Response:
        assert route.operation is not None
        ctx, rejection = self.authenticate(req)
        if rejection is not None:
            return rejection
        self.before_operation(route.operation, req, ctx)
        latency = self.faults.take(route.operation, ("latency",))
        if latency is not None:
            time.sleep(latency.latency_ms / 1000)
        fault = self.faults.take(route.operation, REQUEST_MODES)
        if fault is not None and fault.mode != "timeout_after_processing":
            return self.fault_response(fault.mode, route.operation, ctx)
        response = route.handler(req, ctx, **params)
        # The work is committed in our state; the client just never learns the outcome.
        return Response(0, hold=True) if fault is not None else response

    # -- /_sim/ control endpoints ---------------------------------------------------------------------------

    def _sim_trade(self, req: Request, out_trade_no: str) -> Response:
        with self.lock:
            snapshot = self.trade_snapshot(out_trade_no)
            if snapshot is None:
                calls = self.create_calls.get(out_trade_no, 0)
                return Response.json(
                    404, {"error": {"code": "SIM_ERROR", "message": "no such trade"}, "create_calls": calls}
                )
        return Response.json(200, snapshot)

    def _sim_arm(self, req: Request) -> Response:
        try:
            fault = parse_fault(req.json())
        except ValueError as exc:
            return sim_error(400, str(exc))
        self.faults.arm(fault)
        return Response.json(200, {"faults": self.faults.listing()})

    def _sim_clear(self, req: Request) -> Response:
        self.faults.clear()
        return Response.json(200, {"faults": []})

    def _sim_clock(self, req: Request) -> Response:
        try:
            speed = (req.json() or {}).get("speed")
        except (ValueError, AttributeError):
            speed = None
        if not (isinstance(speed, (int, float)) and not isinstance(speed, bool) and 0 < speed <= 1e6):
            return sim_error(400, "speed must be a number in (0, 1e6]")
        self.clock.set_speed(float(speed))
        self.notifier.wake()
        return Response.json(200, {"speed": self.clock.speed})

    def _sim_adjust(self, req: Request, day: str) -> Response:
        try:
            body = req.json() or {}
            drop, amount, add = body.get("drop", []), body.get("amount", {}), body.get("add", [])
            ok = (
                isinstance(drop, list)
                and all(isinstance(x, str) for x in drop)
                and isinstance(amount, dict)
                and all(type(v) is int for v in amount.values())
                and isinstance(add, list)
                and all(
                    isinstance(r, dict) and isinstance(r.get("out_trade_no"), str) and type(r.get("amount")) is int
                    and (r.get("at") is None or _aware_time(r["at"]))
                    for r in add
                )
            )
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            return sim_error(
                400,
                'expected {"drop": [str], "amount": {str: int}, "add": [{"out_trade_no", "amount", "status", "at"}]}',
            )
        with self.lock:
            adjustment = self.bill_adjustments.setdefault(day, BillAdjustment())
            adjustment.drop.update(drop)
            adjustment.amount.update(amount)
            adjustment.add.extend(add)
            summary = {"drop": sorted(adjustment.drop), "amount": adjustment.amount, "add": adjustment.add}
        return Response.json(200, summary)

    def _sim_accounts(self, req: Request) -> Response:
        try:
            body = req.json()
        except ValueError:
            return sim_error(400, "body must be JSON")
        with self.lock:
            return Response.json(200, self.open_account(body))

    def _sim_reset(self, req: Request) -> Response:
        self.reset()
        return Response.json(200, {"reset": True})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog. socketserver's default is 5: when more connections arrive at once than the accepting
    # thread takes, the kernel drops their SYNs and each client tries again a second later (a create_trade that
    # took 1 s, for nothing on our side). A channel's gateway takes thousands at once; the kernel caps this at
    # net.core.somaxconn.
    request_queue_size = 1024
    simulator: ChannelSimulator


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients and benchmarks reuse connections
    server_version = "ChannelSimulator/1"
    sys_version = ""
    server: _Server

    def _handle(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            self._write(sim_error(413 if length > 0 else 400, "bad or too large Content-Length"))
            return
        req = Request(self.command, self.path, self.headers, self.rfile.read(length))
        response = self.server.simulator.dispatch(req)
        if response.hold:
            self._hold()
        else:
            self._write(response)

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def _hold(self) -> None:
        """Keep the connection open without answering until the client leaves, HOLD_S passes or we stop."""
        self.close_connection = True
        deadline = time.monotonic() + HOLD_S
        while time.monotonic() < deadline and not self.server.simulator.stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.25)
            if not readable:
                continue
            try:
                if not self.connection.recv(1, socket.MSG_PEEK):
                    return  # the client gave up and closed
            except OSError:
                return
            time.sleep(0.25)  # the client sent more bytes; we still ignore it

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s simulator: " + format, self.server.simulator.name, *args)


def run_forever(simulator: ChannelSimulator, out: TextIO | TextIOBase) -> None:
    """Serve until SIGTERM or SIGINT (how honcho and test fixtures stop a simulator), then stop cleanly."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        simulator.start()
        try:
            out.write(f"{simulator.name} simulator listening on {simulator.base_url}\n")
            out.flush()
            while not stop.wait(0.5):
                pass
        finally:
            simulator.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

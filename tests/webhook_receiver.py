"""A merchant's webhook endpoint for the tests: a real HTTP server on loopback that records what it receives and
answers as each path is scripted to (statuses in turn, or a hang)."""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)
    wall: float = field(default_factory=time.time)  # to compare with the database's timestamps


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: dict[str, list[int]] = defaultdict(list)  # path → statuses to answer in turn; then 200
        self.hang_s: dict[str, float] = {}
        self.bodies: dict[str, bytes] = {}  # path → the body to answer with; b"ok" otherwise
        self.on_post: dict[str, Callable[[], None]] = {}  # path → run while the request is in, before answering
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.connections = 0  # TCP connections accepted

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def answer(self, path: str) -> int:
        with self.lock:
            return self.script[path].pop(0) if self.script[path] else 200

    def clear(self) -> None:
        with self.lock:
            self.received.clear()
            self.script.clear()
            self.hang_s.clear()
            self.bodies.clear()
            self.on_post.clear()


@contextlib.contextmanager
def running_receiver(*, keep_alive: bool = False, idle_s: float | None = None,
                     tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """The receiver, running; with ``keep_alive``, it speaks HTTP/1.1 and keeps connections open, as most do (and
    with ``idle_s``, closes one idle that long); with ``tls``, it speaks https with that server context."""
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"
        timeout = idle_s

        def setup(self) -> None:
            with receiver.lock:
                receiver.connections += 1
            super().setup()

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with receiver.lock:
                receiver.received.append(Received(self.path, dict(self.headers.items()), body))
            hook = receiver.on_post.get(self.path)
            if hook is not None:
                hook()
            hang = receiver.hang_s.get(self.path)
            if hang:
                time.sleep(hang)
            status = receiver.answer(self.path)
            reply = receiver.bodies.get(self.path, b"ok")
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    receiver.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()

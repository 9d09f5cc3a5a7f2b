"""A process's LISTEN on one of the outbox's channels (``payments.outbox``), kept up across lost connections.

Two kinds listen: the dispatcher (``payments.dispatcher``), which publishes tasks to Celery, one active per
database; and the webhook sender of each webhooks worker (``payments.webhook_sender``), which sends deliveries
itself, all active at once. Both find in the rows, when they start listening, the work whose notification was
sent while nobody listened: PostgreSQL keeps no notification for a listener that was not there.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg
from django.db import connection

log = logging.getLogger(__name__)

# Which listener is active is rare news that ops need: never sampled away (payments_site.logs).
ALWAYS = {"key_path": True}


def conninfo(application_name: str = "payments-dispatcher") -> dict[str, Any]:
    """Connection parameters of Django's default database, for a psycopg connection of our own."""
    params = connection.get_connection_params()
    for django_only in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(django_only, None)
    # Keepalives both ways: a LISTENing connection only reads, so a peer that vanished is noticed by TCP or
    # never. Ours reconnects; the server's ends the session of a listener that vanished, and so frees its
    # advisory lock for a standby (otherwise held until the server's own keepalive, two hours by default).
    server = "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"
    return {
        **params, "application_name": application_name,
        "options": f"{params.get('options', '')} {server}".strip(),
        "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
    }


class Listener:
    """LISTEN on ``channel`` and ``dispatch`` each notification's payload, until ``stop`` is set.

    With a ``lock_key``, one listener is active per database: it holds that session advisory lock, and the
    others stand by and try the lock every ``standby_retry_s``. A standby does not LISTEN (PostgreSQL keeps
    the queue for every listener, and one that never reads would hold it); the one that takes over catches up
    from the rows. Without one, every listener is active.
    """

    channel: str
    role: str  # who listens, in the log lines
    application_name: str
    lock_key: int | None = None
    poll_s = 1.0  # how often the loop looks at ``stop`` and calls ``tick``

    def __init__(self, *, stop: threading.Event | None = None, standby_retry_s: float = 5.0) -> None:
        self.stop = stop or threading.Event()
        self.standby_retry_s = standby_retry_s
        self.listening = threading.Event()  # set while this one is active

    def dispatch(self, payload: str) -> bool:
        """Act on one notification; never raises."""
        raise NotImplementedError

    def catch_up(self) -> int:
        """Act on the work whose notification may have been lost (sent while nobody listened), found in the rows.
        Runs once listening, so that nothing falls between the two: what was sent before is in the rows, what is
        sent after arrives as a notification. Returns how many it acted on."""
        raise NotImplementedError

    def tick(self) -> None:
        """Called between notifications, at least every ``poll_s``."""

    def run(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                with psycopg.connect(**conninfo(self.application_name), autocommit=True) as conn:
                    if self._wait_for_lock(conn):
                        conn.execute(f"LISTEN {self.channel}")
                        self.listening.set()
                        log.info("%s active: listening on %s", self.role, self.channel, extra=ALWAYS)
                        self.catch_up()
                        backoff = 1.0
                        self._listen(conn)
            except psycopg.Error as exc:
                log.warning("%s: database connection lost (%s); reconnecting in %.0fs", self.role, exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                self.listening.clear()
        log.info("%s stopped", self.role, extra=ALWAYS)

    def _wait_for_lock(self, conn: psycopg.Connection) -> bool:
        if self.lock_key is None:
            return True
        said = False
        while not self.stop.is_set():
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", [self.lock_key]).fetchone()
            if row and row[0]:
                return True
            if not said:
                log.info("%s on standby: another one is active; trying every %ss", self.role, self.standby_retry_s,
                         extra=ALWAYS)
                said = True
            self.stop.wait(self.standby_retry_s)
        return False

    def _listen(self, conn: psycopg.Connection) -> None:
        # psycopg keeps what arrives between two notifies() calls, so leaving the generator to look at
        # ``stop`` loses nothing.
        while not self.stop.is_set():
            for notify in conn.notifies(timeout=self.poll_s):
                self.dispatch(notify.payload)
                if self.stop.is_set():
                    break
            self.tick()

"""Django's PostgreSQL backend (``ENGINE: payments_site.db_backend``), checking the health only of idle connections.

With ``CONN_HEALTH_CHECKS``, Django sends ``SELECT 1`` at the start of every request and task that uses the
database: a round trip each, some seven per payment, a fifteenth of the web's CPU (py-spy, make bench-e2e).
A connection that ran a statement less than ``FRESH_S`` ago is not checked: under load that is every
connection, and when it is idle the check is as before. What this gives up: after PostgreSQL restarts, each
connection busy at that moment fails once instead of being replaced unseen. That request answers 503 (retry
with the same key, API.md), a task retries (``OperationalError`` is in every task's retry policy), a channel
sends its notification again; and Django drops the connection when the request or task ends, as after any
database error (make chaos, scenario 4)."""

from __future__ import annotations

import time
from typing import Any

from django.db.backends.postgresql import base

FRESH_S = 5.0


class DatabaseWrapper(base.DatabaseWrapper):
    _used_at = 0.0
    health_check_done: bool  # Django's, which its type stubs do not declare

    def create_cursor(self, name: Any = None) -> Any:
        self._used_at = time.monotonic()
        return super().create_cursor(name)

    def close_if_health_check_failed(self) -> None:
        if (self.connection is not None and not self.health_check_done
                and time.monotonic() - self._used_at < FRESH_S):
            self.health_check_done = True  # used a moment ago, by this thread: presumed alive
            return
        super().close_if_health_check_failed()

"""Gunicorn settings: its own log lines (start-up, workers, errors) in the same format as the app's,
JSON lines by default (LOG_FORMAT=console for `make run`). Used as `gunicorn -c payments_site/gunicorn.conf.py`."""

import os

from gunicorn.glogging import Logger

_json = os.environ.get("LOG_FORMAT", "json") == "json"

# An idle keep-alive connection is closed by the client, not by us: a server that closes first races a request the
# client sends on it at that moment, which the client sees as a reset. A channel then retries its notification
# minutes later (the sandbox simulator 15 s later: make bench-e2e caught that at the start of a run). Longer than
# clients keep theirs (httpx 5 s) and than load balancers' idle timeouts (60 s is common); gthread holds an idle
# connection in its poller, not in a thread.
keepalive = 75
# The app writes the access log (payments_site.logs.AccessLogMiddleware): with the request's trace id, merchant
# and order, and sampled under load like every routine line.
accesslog = None


class _Logger(Logger):
    """Gunicorn's logger without its access log. With ``logconfig_dict`` set, gunicorn takes access logging for on
    even with ``accesslog = None``: it built each request's log fields and a record that no handler wrote, a tenth
    of the web's CPU per request by profile."""

    def access(self, resp: object, req: object, environ: object, request_time: object) -> None:
        pass


logger_class = _Logger
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": True,
            "static_fields": {"service": "web"},
        },
        "console": {"format": "%(asctime)s %(levelname)-7s web    %(name)s %(message)s"},
    },
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "json" if _json else "console",
        },
    },
    # Replaces gunicorn's default root (the app's Django LOGGING configures the root in each worker).
    "root": {"level": "INFO", "handlers": []},
    "loggers": {
        "gunicorn.error": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
    },
}

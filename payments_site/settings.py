"""Settings, all from the environment (django-environ).

Development defaults point at the local PostgreSQL and Redis. With DEBUG off there is no default for
secrets: a missing SECRET_KEY fails loudly instead of running with a guessable one. `make run` writes the
development values to ``.env``, read here when present (variables already set win).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

# Development without exports: `make run` writes .env (DEBUG=1, a secret key, the channels' development keys)
# so that `manage.py createsuperuser` works in any shell. ENV_FILE names another file, or none when empty.
# Tests never read one: a developer's DEBUG=1 must not change what they check. Under pytest ENV_FILE is
# emptied here, and the processes the tests start (worker, dispatcher, simulators) inherit that.
if "pytest" in sys.modules:
    os.environ["ENV_FILE"] = ""
ENV_FILE = env.str("ENV_FILE", default=str(BASE_DIR / ".env"))
if ENV_FILE and os.path.isfile(ENV_FILE):
    environ.Env.read_env(ENV_FILE)  # overwrite=False: what the environment already says wins

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"

# Production sets the public host names; these defaults serve development and the tests, and
# `check --deploy` warns while they are all there is (payments_site/checks.py).
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
# Origins the admin's forms may be posted from, when they are not the host itself (https://ops.example.com).
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# HTTPS (README "Running in production"; `manage.py check --deploy --fail-level WARNING` passes with them).
# TLS ends at a proxy or load balancer, which says so in X-Forwarded-Proto: it must set that header itself,
# never pass on a client's. An empty SECURE_PROXY_SSL_HEADER trusts no header (TLS ends in gunicorn).
_proxy_ssl_header = env.str("SECURE_PROXY_SSL_HEADER", default="" if DEBUG else "HTTP_X_FORWARDED_PROTO")
SECURE_PROXY_SSL_HEADER = (_proxy_ssl_header, "https") if _proxy_ssl_header else None
# Off unless set, because `make run` and the tests speak plain HTTP; production sets it (or its proxy
# redirects). Probes and Prometheus reach a web process over plain HTTP inside the network: never redirected.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
# Browsers remember HSTS for this long: only HTTPS from then on, for this host and its subdomains.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
# The admin's session and CSRF cookies never travel over plain HTTP.
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",  # finance's tokens for the reconciliation API
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "payments",
    "reconciliation",
    "payments_site",  # observability set up when Django is ready (payments_site/apps.py)
]

MIDDLEWARE = [
    "payments_site.tracing.TraceIdMiddleware",  # after OpenTelemetry's, which the instrumentation puts first
    "payments_site.logs.AccessLogMiddleware",  # inside the request's trace and log context
    "payments.api.middleware.ApiRequestGuardMiddleware",  # NULs and oversized bodies under /api/: 400/413
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "payments_site.urls"
WSGI_APPLICATION = "payments_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/payments")}
# Never on: a request must not hold a transaction across a channel call.
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Django's PostgreSQL backend, checking only connections idle for a few seconds (payments_site/db_backend).
DATABASES["default"]["ENGINE"] = "payments_site.db_backend"
# Django turns psycopg's prepared statements off (prepare_threshold None) and its own cursors never use them.
# Turned on, they apply only where we ask, with a server-binding cursor: the order-create statement
# (payments.db), prepared once per connection, which halves what it costs PostgreSQL.
DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 5
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Allocations between two young collections of Python's garbage collector, set once a process has started
# (payments_site/gc_tuning.py); 0 keeps Python's 700.
GC_GEN0_THRESHOLD = env.int("GC_GEN0_THRESHOLD", default=10000)

REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
# Celery's broker (celeryconfig.py): Redis by default.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# Where `collectstatic` puts them (the image does it at build: docker/Dockerfile).
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / ".dev" / "static")))
# The admin's and the API docs' static files, served by the web process itself (WhiteNoise).
WHITENOISE_USE_FINDERS = DEBUG

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["payments.api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["payments.api.parsers.DepthLimitedJSONParser"],
    "EXCEPTION_HANDLER": "payments.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["payments.api.auth.MerchantRateThrottle"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Payment processor API",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # Serve Swagger UI from our own static files, not a CDN: the docs work offline and leak nothing.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # The schema is API.md's contract (payments/api/schema.py): request and answer shapes apart, named enums,
    # links between operations, and the endpoints that are not DRF views.
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "payments.api.schema.postprocess"],
    "ENUM_NAME_OVERRIDES": {
        "OrderStatusEnum": "payments.models.OrderStatus",
        "RefundStatusEnum": "payments.models.RefundState",
        "DeliveryStateEnum": "payments.models.WebhookDelivery.State",
        "CurrencyEnum": ["CNY", "EUR", "JPY", "USD"],
        "ChannelEnum": ["alipay", "wechatpay", "sandbox"],
        "EventTypeEnum": "payments.api.schema.EVENT_TYPES",
        "ErrorTypeEnum": "payments.api.schema.ERROR_TYPES",
        "OrderObjectEnum": ["order"], "RefundObjectEnum": ["refund"], "EventObjectEnum": ["event"],
        "ListObjectEnum": ["list"],
    },
    "TAGS": [{"name": "orders"}, {"name": "refunds"}, {"name": "events"}, {"name": "reconciliation"},
             {"name": "operations"}, {"name": "callbacks"}],
}
# drf-spectacular's deploy check generates the schema and reports each gap in the API docs as a warning.
# Those are documentation, not deployment safety: `check --deploy --fail-level WARNING` gates a release on
# the latter. A schema that fails to generate is still an error (drf_spectacular.E001); the gaps are listed
# by `python manage.py spectacular --validate --file /dev/null`.
SILENCED_SYSTEM_CHECKS = ["drf_spectacular.W001", "drf_spectacular.W002"]

# Payments
DEFAULT_PER_ORDER_LIMIT = env.int("DEFAULT_PER_ORDER_LIMIT", default=100_000_000)
# The largest request body the API reads (a create is well under 10 KB); larger ones are 413. Channel callbacks
# are bounded by Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) instead.
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=1024 * 1024)
DEFAULT_RATE_LIMIT_PER_S = env.int("DEFAULT_RATE_LIMIT_PER_S", default=100)
IDEMPOTENCY_TTL_S = env.int("IDEMPOTENCY_TTL_S", default=24 * 3600)
# How long a web process trusts a key it has read: a revoked key is refused everywhere within this time.
API_KEY_CACHE_TTL_S = env.float("API_KEY_CACHE_TTL_S", default=5.0)
# A web process reserves a merchant's rate-limit tokens in Redis this many leases per window (payments.api.auth).
RATE_LIMIT_LEASES_PER_S = env.int("RATE_LIMIT_LEASES_PER_S", default=50)
# Channel tasks retry with exponential backoff and jitter, then flag the order or refund for ops.
TASK_RETRY_BACKOFF_S = env.int("TASK_RETRY_BACKOFF_S", default=2)
TASK_RETRY_BACKOFF_MAX_S = env.int("TASK_RETRY_BACKOFF_MAX_S", default=300)
TASK_MAX_RETRIES = env.int("TASK_MAX_RETRIES", default=8)
# Sweeps: how long work may sit before beat rebuilds it from the database. The created-order threshold is
# longer than TASK_RETRY_BACKOFF_MAX_S, so that the sweep does not undercut a charge's own backoff.
SWEEP_CREATED_AFTER_S = env.int("SWEEP_CREATED_AFTER_S", default=600)
SWEEP_PENDING_QUERY_AFTER_S = env.int("SWEEP_PENDING_QUERY_AFTER_S", default=120)
SWEEP_REFUND_AFTER_S = env.int("SWEEP_REFUND_AFTER_S", default=60)
SWEEP_NOTIFICATION_AFTER_S = env.int("SWEEP_NOTIFICATION_AFTER_S", default=30)
SWEEP_INTERVAL_S = env.int("SWEEP_INTERVAL_S", default=30)

# Merchant webhooks (payments/services/webhooks.py, payments/webhook_http.py; API.md "Events and merchant webhooks").
# The delays between attempts, in seconds (API.md's, at least 24 h in all); tests compress them.
WEBHOOK_RETRY_SCHEDULE_S = [
    int(delay) for delay in env.list(
        "WEBHOOK_RETRY_SCHEDULE_S",
        default=["15", "15", "30", "180", "600", "1200", "1800", "1800", "1800", "3600", "10800", "10800", "10800",
                 "21600", "21600"],
    )
]
# A 2xx answer within this many seconds is a delivery.
WEBHOOK_TIMEOUT_S = env.float("WEBHOOK_TIMEOUT_S", default=10.0)
# How often beat sends the deliveries that are due.
WEBHOOK_SWEEP_INTERVAL_S = env.float("WEBHOOK_SWEEP_INTERVAL_S", default=5.0)
# A first attempt is enqueued through the outbox; the sweep sends it again only once it has waited this long (a
# broker that lost it). Shorter, and a busy moment's backlog would be sent twice, and grow.
WEBHOOK_SWEEP_FIRST_ATTEMPT_AFTER_S = env.int("WEBHOOK_SWEEP_FIRST_ATTEMPT_AFTER_S", default=300)
# The sweep queues each due attempt once; one whose task was lost anyway (a worker killed holding it) is queued
# again after this long.
WEBHOOK_SWEEP_REQUEUE_S = env.int("WEBHOOK_SWEEP_REQUEUE_S", default=120)
# A rotated secret keeps signing (a second signature) this long.
WEBHOOK_SECRET_GRACE_S = env.int("WEBHOOK_SECRET_GRACE_S", default=24 * 3600)
# Hosts (names, addresses or networks) that merchant webhook URLs may point at although they are private,
# loopback or link-local. None in production; development lists loopback, for a receiver on this machine.
WEBHOOK_ALLOWED_HOSTS = env.list(
    "WEBHOOK_ALLOWED_HOSTS", default=["localhost", "127.0.0.0/8", "::1"] if DEBUG else []
)

# Channels
CHANNEL_CONNECT_TIMEOUT_S = env.float("CHANNEL_CONNECT_TIMEOUT_S", default=3.0)
CHANNEL_READ_TIMEOUT_S = env.float("CHANNEL_READ_TIMEOUT_S", default=10.0)
CHANNEL_WRITE_TIMEOUT_S = env.float("CHANNEL_WRITE_TIMEOUT_S", default=5.0)
SANDBOX_API_BASE = env.str("SANDBOX_API_BASE", default="http://127.0.0.1:8101").rstrip("/")
SANDBOX_MERCHANT_ID = env.str("SANDBOX_MERCHANT_ID", default="sbx_m_dev")
SANDBOX_SECRET = env.str("SANDBOX_SECRET", default="dev-sandbox-secret" if DEBUG else "")
# Alipay and WeChat Pay are enabled when their account is configured (`make run` generates development keys
# for the simulators: channels/management/commands/generate_dev_keys.py).
ALIPAY_GATEWAY_URL = env.str("ALIPAY_GATEWAY_URL", default="http://127.0.0.1:8102/gateway.do")
ALIPAY_APP_ID = env.str("ALIPAY_APP_ID", default="")
ALIPAY_APP_PRIVATE_KEY_PATH = env.str("ALIPAY_APP_PRIVATE_KEY_PATH", default="")
ALIPAY_PUBLIC_KEY_PATH = env.str("ALIPAY_PUBLIC_KEY_PATH", default="")
WECHATPAY_API_BASE = env.str("WECHATPAY_API_BASE", default="http://127.0.0.1:8103").rstrip("/")
WECHATPAY_MCHID = env.str("WECHATPAY_MCHID", default="")
WECHATPAY_APPID = env.str("WECHATPAY_APPID", default="")
WECHATPAY_MERCHANT_PRIVATE_KEY_PATH = env.str("WECHATPAY_MERCHANT_PRIVATE_KEY_PATH", default="")
WECHATPAY_MERCHANT_SERIAL_NO = env.str("WECHATPAY_MERCHANT_SERIAL_NO", default="")
WECHATPAY_APIV3_KEY = env.str("WECHATPAY_APIV3_KEY", default="")
WECHATPAY_PLATFORM_PUBLIC_KEY_PATH = env.str("WECHATPAY_PLATFORM_PUBLIC_KEY_PATH", default="")
WECHATPAY_PLATFORM_PUBLIC_KEY_ID = env.str("WECHATPAY_PLATFORM_PUBLIC_KEY_ID", default="")
# A backup account per channel (optional; the seed design's automatic switch): while the primary account's circuit
# breaker is open, new charges go to the backup. The same settings with BACKUP_ after the channel's name; the
# gateway is the channel's. An order keeps the account it was placed with (Order.channel_account).
SANDBOX_BACKUP_MERCHANT_ID = env.str("SANDBOX_BACKUP_MERCHANT_ID", default="")
SANDBOX_BACKUP_SECRET = env.str("SANDBOX_BACKUP_SECRET", default="")
ALIPAY_BACKUP_APP_ID = env.str("ALIPAY_BACKUP_APP_ID", default="")
ALIPAY_BACKUP_APP_PRIVATE_KEY_PATH = env.str("ALIPAY_BACKUP_APP_PRIVATE_KEY_PATH", default="")
ALIPAY_BACKUP_PUBLIC_KEY_PATH = env.str("ALIPAY_BACKUP_PUBLIC_KEY_PATH", default="")
WECHATPAY_BACKUP_MCHID = env.str("WECHATPAY_BACKUP_MCHID", default="")
WECHATPAY_BACKUP_APPID = env.str("WECHATPAY_BACKUP_APPID", default="")
WECHATPAY_BACKUP_MERCHANT_PRIVATE_KEY_PATH = env.str("WECHATPAY_BACKUP_MERCHANT_PRIVATE_KEY_PATH", default="")
WECHATPAY_BACKUP_MERCHANT_SERIAL_NO = env.str("WECHATPAY_BACKUP_MERCHANT_SERIAL_NO", default="")
WECHATPAY_BACKUP_APIV3_KEY = env.str("WECHATPAY_BACKUP_APIV3_KEY", default="")
WECHATPAY_BACKUP_PLATFORM_PUBLIC_KEY_PATH = env.str("WECHATPAY_BACKUP_PLATFORM_PUBLIC_KEY_PATH", default="")
WECHATPAY_BACKUP_PLATFORM_PUBLIC_KEY_ID = env.str("WECHATPAY_BACKUP_PLATFORM_PUBLIC_KEY_ID", default="")
# The simulators' own side of the development accounts (only `run_simulator` reads these).
ALIPAY_SIM_APP_PUBLIC_KEY_PATH = env.str("ALIPAY_SIM_APP_PUBLIC_KEY_PATH", default="")
ALIPAY_SIM_PRIVATE_KEY_PATH = env.str("ALIPAY_SIM_PRIVATE_KEY_PATH", default="")
WECHATPAY_SIM_MERCHANT_PUBLIC_KEY_PATH = env.str("WECHATPAY_SIM_MERCHANT_PUBLIC_KEY_PATH", default="")
WECHATPAY_SIM_PLATFORM_PRIVATE_KEY_PATH = env.str("WECHATPAY_SIM_PLATFORM_PRIVATE_KEY_PATH", default="")

# Logs: JSON lines by default, a console format for `make run` (LOG_FORMAT=console). One handler on the root
# logger for web, worker and beat (celery.py keeps Celery from installing its own). The context filter
# stamps service, trace and the bound ids; the sampling filter runs first so that dropped lines cost little.
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# Sampling of routine INFO/DEBUG lines (section 2.4 of the seed design, ../shared/seed/): a fixed rate, times the
# rate of the load tier the process is in ("<load %>:<rate>", load = max(its CPU of one core, the machine's CPU,
# log lines/s against LOG_SAMPLE_BUSY_LINES_PER_S)).
# Key paths (extra={"key_path": True}) and WARNING+ are always kept. An empty LOG_SAMPLE_LOAD_TIERS turns the
# load-based part off.
LOG_SAMPLE_RATE = env.float("LOG_SAMPLE_RATE", default=1.0)
LOG_SAMPLE_LOAD_TIERS = env.str("LOG_SAMPLE_LOAD_TIERS", default="60:0.5,80:0.1")
LOG_SAMPLE_BUSY_LINES_PER_S = env.float("LOG_SAMPLE_BUSY_LINES_PER_S", default=1000.0)
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "sampling": {
            "()": "payments_site.logs.SamplingFilter",
            "rate": LOG_SAMPLE_RATE,
            "load_tiers": LOG_SAMPLE_LOAD_TIERS,
            "busy_lines_per_s": LOG_SAMPLE_BUSY_LINES_PER_S,
        },
        "context": {"()": "payments_site.logs.ContextFilter"},
        "drop_task_success": {"()": "payments_site.logs.DropTaskSuccess"},
    },
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": True,  # RFC 3339 in UTC, from the record's own time
        },
        "console": {"format": "%(asctime)s %(levelname)-7s %(service)-6s %(name)s [%(trace_id)s] %(message)s"},
    },
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "json" if LOG_FORMAT == "json" else "console",
            "filters": ["sampling", "context"],
        }
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own default handler prints django.* lines a second time, unformatted, when DEBUG is on.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.db.backends": {"level": "INFO"},
        # Django's "Not Found: /path" and the like, outside the request's trace: the access log has each 4xx as a
        # WARNING with the trace id (payments_site.logs.AccessLogMiddleware). A 5xx's ERROR, with its traceback,
        # stays.
        "django.request": {"level": "ERROR"},
        # httpx logs every request's full URL, query string (and an Alipay signature) included; the channel
        # wrapper logs each call without it.
        "httpx": {"level": "WARNING"},
        # "Task … received": one line per task that its "succeeded" (or retry, or failure) line repeats, with the
        # duration. A line per task and worker, under load, that no one reads.
        "celery.worker.strategy": {"level": "WARNING"},
        # "Task … succeeded in …": the same, after the task; its retries and failures stay (payments_site/logs.py).
        "celery.app.trace": {"filters": ["drop_task_success"]},
    },
}

# Sentry: off unless SENTRY_DSN is set (payments_site/telemetry.py).
SENTRY_DSN = env.str("SENTRY_DSN", default="")
SENTRY_ENVIRONMENT = env.str("SENTRY_ENVIRONMENT", default="development" if DEBUG else "production")
SENTRY_RELEASE = env.str("SENTRY_RELEASE", default="")

# The admin links an order to its trace with this URL, "{trace_id}" filled in (Jaeger:
# http://jaeger:16686/trace/{trace_id}, Grafana Tempo: its explore URL); empty shows no link.
TRACE_URL_TEMPLATE = env.str("TRACE_URL_TEMPLATE", default="")

# Metrics (prometheus_client multiprocess mode): every process of a host writes its samples under one
# directory, which /metrics reads. Deployments set it to a directory emptied when the host's processes start
# (`make run` does); without one, this process and its children (the tests' worker) share a fresh one.
PROMETHEUS_MULTIPROC_DIR = (
    env.str("PROMETHEUS_MULTIPROC_DIR", default="") or tempfile.mkdtemp(prefix="payments-metrics-")
)
os.makedirs(PROMETHEUS_MULTIPROC_DIR, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR  # read when prometheus_client is imported
# A worker on a host without a web process serves its own metrics on this port (0: off).
WORKER_METRICS_PORT = env.int("WORKER_METRICS_PORT", default=0)
WORKER_METRICS_ADDR = env.str("WORKER_METRICS_ADDR", default="127.0.0.1")

# Channel circuit breakers, one per channel account, shared through Redis (channels/breaker.py). Over the last
# WINDOW_S seconds, once MIN_CALLS calls were made, a breaker opens when FAILURE_RATE of them ended retryable or
# unknown, or when their p95 latency is above SLOW_CALL_S. It stays open OPEN_S seconds, then lets PROBES
# calls through at once: a success closes it, a failure opens it again. With Redis unreachable, each process
# opens its own after MIN_CALLS failures in a row.
CHANNEL_BREAKER_WINDOW_S = env.int("CHANNEL_BREAKER_WINDOW_S", default=30)
CHANNEL_BREAKER_MIN_CALLS = env.int("CHANNEL_BREAKER_MIN_CALLS", default=10)
CHANNEL_BREAKER_FAILURE_RATE = env.float("CHANNEL_BREAKER_FAILURE_RATE", default=0.5)
CHANNEL_BREAKER_SLOW_CALL_S = env.float("CHANNEL_BREAKER_SLOW_CALL_S", default=3.0)
CHANNEL_BREAKER_OPEN_S = env.float("CHANNEL_BREAKER_OPEN_S", default=30.0)
CHANNEL_BREAKER_PROBES = env.int("CHANNEL_BREAKER_PROBES", default=3)

# -- Reconciliation (reconciliation/; README "Reconciliation") ---------------------------------------------
# Beat starts each channel's run for the previous business day at this time of the channel's own zone
# (the bills exist from about 09:00-10:00 the next morning in Beijing).
RECONCILIATION_TIME = env.str("RECONCILIATION_TIME", default="10:30")
# The sandbox's bill days (its simulator must be started with the same value).
SANDBOX_BILL_TIMEZONE = env.str("SANDBOX_BILL_TIMEZONE", default="UTC")
# A bill that is not ready is asked for again after this many seconds (doubling, up to the max), for as
# long as RECONCILIATION_NOT_READY_GIVE_UP_S; then the run fails and alerts.
RECONCILIATION_RETRY_S = env.int("RECONCILIATION_RETRY_S", default=600)
RECONCILIATION_RETRY_MAX_S = env.int("RECONCILIATION_RETRY_MAX_S", default=3600)
RECONCILIATION_NOT_READY_GIVE_UP_S = env.int("RECONCILIATION_NOT_READY_GIVE_UP_S", default=8 * 3600)
# A payment whose channel time and ours fall this close to midnight on either side is matched against
# the neighbouring day before it is reported (clocks and the channel's own booking differ by seconds).
RECONCILIATION_CARRY_OVER_S = env.int("RECONCILIATION_CARRY_OVER_S", default=300)
# PostgreSQL work_mem of the session that matches a run (its sorts and hashes stay in memory).
RECONCILIATION_WORK_MEM = env.str("RECONCILIATION_WORK_MEM", default="256MB")

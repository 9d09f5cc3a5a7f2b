"""What `manage.py check --deploy` adds to Django's own checks: settings whose development defaults would
run, but wrongly, in production."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Warning

# The defaults of ALLOWED_HOSTS (settings.py): development's and the tests' names.
LOCAL_HOSTS = {"127.0.0.1", "localhost", "testserver", "::1", "[::1]"}


def deployment_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if settings.DEBUG:
        return []  # Django's own check already says that DEBUG must be off
    found: list[CheckMessage] = []
    if not set(settings.ALLOWED_HOSTS) - LOCAL_HOSTS:
        found.append(Warning(
            "ALLOWED_HOSTS names only local hosts: requests to the public host name are refused.",
            hint="Set ALLOWED_HOSTS to the host names clients use, comma-separated.",
            id="payments_site.W001",
        ))
    if not settings.PUBLIC_BASE_URL.startswith("https://"):
        found.append(Warning(
            f"PUBLIC_BASE_URL is {settings.PUBLIC_BASE_URL!r}: channels send payment notifications there, "
            "and must reach it over HTTPS.",
            hint="Set PUBLIC_BASE_URL to the public https:// address of the web processes.",
            id="payments_site.W002",
        ))
    return found

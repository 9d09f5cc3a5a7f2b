"""The project as an app, only so that observability is set up once Django is ready, in every process (and the
garbage collector in the long-running management commands)."""

from __future__ import annotations

import os
import sys

from django.apps import AppConfig


class SiteConfig(AppConfig):
    name = "payments_site"
    label = "payments_site"
    verbose_name = "Payment processor site"

    def ready(self) -> None:
        from django.core import checks as django_checks

        from payments_site import celery, checks, logs, telemetry

        django_checks.register(checks.deployment_settings, django_checks.Tags.security, deploy=True)

        if celery.started_as("worker"):
            logs.set_service("worker")
            # Tracing waits for the worker's pool processes (payments_site.celery).
        else:
            if celery.started_as("beat"):
                logs.set_service("beat")
            telemetry.setup_tracing()
        telemetry.setup_sentry()
        if _running_command(LONG_RUNNING_COMMANDS):
            # Web and Celery processes tune once they have loaded what they serve with (wsgi.py, celery.py).
            from payments_site.gc_tuning import tune_after_startup

            tune_after_startup()


# The management commands that serve until stopped.
LONG_RUNNING_COMMANDS = ("run_dispatcher", "run_simulator")


def _running_command(names: tuple[str, ...]) -> bool:
    return os.path.basename(sys.argv[0]) == "manage.py" and len(sys.argv) > 1 and sys.argv[1] in names

"""The project as an app, only so that observability is set up once Django is ready, in every process."""

from __future__ import annotations

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

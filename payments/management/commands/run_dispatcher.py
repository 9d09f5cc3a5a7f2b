"""`python manage.py run_dispatcher`: publish the tasks that services enqueue through ``payments.outbox``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from payments.dispatcher import run_dispatcher


class Command(BaseCommand):
    help = ("LISTEN for the tasks services enqueue and publish them to Celery, until SIGTERM or SIGINT. "
            "Run one or more per database: one is active, the others stand by.")

    def handle(self, *args: Any, **options: Any) -> None:
        run_dispatcher()

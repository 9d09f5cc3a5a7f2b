"""Idempotent demo setup for `make run`: an admin user (development only) and a demo merchant whose key is kept
in a local file."""

from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from payments import services
from payments.models import Merchant

DEMO_NAME = "Demo merchant"


class Command(BaseCommand):
    help = "Create the admin user (with DEBUG on) and the demo merchant if missing; print the demo key."

    def add_arguments(self, parser):
        parser.add_argument("--key-file", default=".dev/demo_key")

    def handle(self, *args, **options):
        # A known password is for a developer's own machine only: anywhere else, `createsuperuser`.
        User = get_user_model()
        if not settings.DEBUG:
            self.stderr.write("DEBUG is off: no admin user made (python manage.py createsuperuser makes one)")
        elif not User.objects.filter(username="admin").exists():
            User.objects.create_superuser("admin", "admin@example.invalid", "admin")
            self.stderr.write("created admin user admin / admin (development only)")
        key_file = Path(options["key_file"])
        merchant = Merchant.objects.filter(name=DEMO_NAME).first()
        if merchant is None:
            merchant, secret_key = services.merchant_create(name=DEMO_NAME)
        elif key_file.exists() and merchant.api_keys.filter(
            key_hash=services.hash_key(key_file.read_text().strip()), revoked_at__isnull=True
        ).exists():
            secret_key = key_file.read_text().strip()
        else:
            secret_key = services.api_key_rotate(merchant=merchant)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secret_key + "\n")
        self.stdout.write(secret_key)

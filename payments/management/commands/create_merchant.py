from django.core.management.base import BaseCommand, CommandError

from payments import services
from payments.models import Merchant


class Command(BaseCommand):
    help = "Create a merchant and print its id, secret key and webhook secret (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--live", action="store_true", help="issue an sk_live_ key")

    def handle(self, *args, **options):
        if Merchant.objects.filter(name=options["name"]).exists():
            raise CommandError(f"a merchant named {options['name']!r} exists")
        merchant, secret_key = services.merchant_create(name=options["name"], live=options["live"])
        self.stdout.write(f"merchant_id:    {merchant.public_id}")
        self.stdout.write(f"secret_key:     {secret_key}")
        self.stdout.write(f"webhook_secret: {merchant.webhook_secret}")
        self.stdout.write("Store both secrets now: they are not shown again.")

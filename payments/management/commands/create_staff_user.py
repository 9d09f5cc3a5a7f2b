"""``manage.py create_staff_user NAME --group finance``: a staff user of one of the staff groups that the data
migration made (payments/staff.py says what each may do), and its API token, printed once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from payments.staff import STAFF_GROUPS, NotAStaffGroup, create_staff_user


class Command(BaseCommand):
    help = "Create (or update) a staff user in a staff group (ops, finance, support) and print its API token."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name")
        parser.add_argument("--group", required=True, choices=STAFF_GROUPS)
        parser.add_argument("--password", help="for the admin login (default: generated and printed)")

    def handle(self, *args: Any, name: str, group: str, password: str | None, **options: Any) -> None:
        try:
            _, password, token = create_staff_user(name, group=group, password=password)
        except NotAStaffGroup as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"user: {name} (group {group})")
        self.stdout.write(f"password: {password}")
        self.stdout.write(f"token: {token}")

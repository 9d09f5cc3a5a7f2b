"""``manage.py create_staff_user NAME --group finance``: a staff user of one of the staff groups (created if
missing, with the permissions that group needs), and its API token, printed once."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth.models import Group, Permission, User
from django.core.management.base import BaseCommand
from django.db import transaction
from rest_framework.authtoken.models import Token

# What each group may do in the admin, as "<app>.<codename>".
GROUP_PERMISSIONS = {
    "finance": [
        "reconciliation.view_run", "reconciliation.view_discrepancy", "reconciliation.resolve_discrepancy",
        "payments.view_order", "payments.view_refund",
    ],
    "ops": [
        "payments.view_order", "payments.change_order", "payments.view_refund", "payments.change_refund",
        "payments.view_merchant", "reconciliation.view_run", "reconciliation.view_discrepancy",
        "reconciliation.resolve_discrepancy",
    ],
    "support": ["payments.view_order", "payments.view_refund", "payments.view_merchant"],
}


class Command(BaseCommand):
    help = "Create (or update) a staff user in a group and print its API token."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name")
        parser.add_argument("--group", required=True, choices=sorted(GROUP_PERMISSIONS))
        parser.add_argument("--password", help="for the admin login (default: generated and printed)")

    def handle(self, *args: Any, name: str, group: str, password: str | None, **options: Any) -> None:
        password = password or secrets.token_urlsafe(12)
        with transaction.atomic():
            staff_group, _ = Group.objects.get_or_create(name=group)
            for label in GROUP_PERMISSIONS[group]:
                app, codename = label.split(".")
                permission = Permission.objects.filter(content_type__app_label=app, codename=codename).first()
                if permission is not None:
                    staff_group.permissions.add(permission)
            user, _ = User.objects.get_or_create(username=name)
            user.is_staff, user.is_active = True, True
            user.set_password(password)
            user.save()
            user.groups.add(staff_group)
            token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(f"user: {name} (group {group})")
        self.stdout.write(f"password: {password}")
        self.stdout.write(f"token: {token.key}")

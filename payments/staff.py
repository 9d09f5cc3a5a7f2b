"""The staff groups of the admin and what each may do; created by a data migration (payments/migrations/0008),
and staff users are put in them by ``manage.py create_staff_user NAME --group G``.

- ``ops`` operate: re-query, close, retry and refund orders, decide on late payments, redeliver webhooks,
  force circuit breakers, resolve reconciliation discrepancies;
- ``finance`` read everything, download reconciliation reports, resolve discrepancies;
- ``support`` read everything, change nothing.

Nobody but a superuser adds, edits or deletes rows, or rotates merchants' keys and webhook secrets.
"""

from __future__ import annotations

import secrets
from typing import Any

# Every model the admin shows; each group may view all of them.
VIEWED = {
    "payments": ["merchant", "order", "refund", "transitionlog", "channelnotification", "event", "webhookdelivery",
                 "webhookattempt"],
    "reconciliation": ["run", "discrepancy"],
}
# What each group may do besides, as "<app>.<codename>" (custom permissions are in the models' Meta).
ACTIONS = {
    "ops": ["payments.operate_order", "payments.redeliver_event", "payments.operate_breaker",
            "reconciliation.resolve_discrepancy"],
    "finance": ["reconciliation.download_report", "reconciliation.resolve_discrepancy"],
    "support": [],
}
STAFF_GROUPS = tuple(sorted(ACTIONS))


def group_permissions(group: str) -> list[tuple[str, str]]:
    """(app label, codename) of every permission of ``group``."""
    viewed = [(app, f"view_{model}") for app, models in VIEWED.items() for model in models]
    return viewed + [tuple(label.split(".", 1)) for label in ACTIONS[group]]  # type: ignore[misc]


def sync_groups(apps: Any) -> None:
    """Create the staff groups with exactly their permissions (``apps``: a migration's, or ``django.apps.apps``).

    Permissions are made first when they are not there yet: on a new database they are created only after the
    last migration (post_migrate), and a data migration runs before that."""
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        # A migration's app configs have no models module, which makes create_permissions skip them.
        module = getattr(app_config, "models_module", None)
        app_config.models_module = module or True
        try:
            create_permissions(app_config, apps=apps, verbosity=0)
        finally:
            app_config.models_module = module
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name in STAFF_GROUPS:
        group, _ = Group.objects.get_or_create(name=name)
        wanted = group_permissions(name)
        found = [p for p in Permission.objects.filter(content_type__app_label__in={app for app, _ in wanted})
                 .select_related("content_type") if (p.content_type.app_label, p.codename) in wanted]
        missing = set(wanted) - {(p.content_type.app_label, p.codename) for p in found}
        if missing:
            raise LookupError(f"permissions missing for group {name}: {sorted(missing)}")
        group.permissions.set(found)


class NotAStaffGroup(ValueError):
    pass


def create_staff_user(name: str, *, group: str, password: str | None = None) -> tuple[Any, str, str]:
    """Create (or update) staff user ``name`` in ``group``, one of the migration's groups, with ``password`` (or
    a generated one). Returns (user, password, API token)."""
    from django.contrib.auth.models import Group, User
    from django.db import transaction
    from rest_framework.authtoken.models import Token

    if group not in STAFF_GROUPS:
        raise NotAStaffGroup(f"{group!r} is not a staff group ({', '.join(STAFF_GROUPS)})")
    staff_group = Group.objects.filter(name=group).first()
    if staff_group is None:
        raise NotAStaffGroup(f"group {group!r} does not exist: run `manage.py migrate`")
    password = password or secrets.token_urlsafe(12)
    with transaction.atomic():
        user, _ = User.objects.get_or_create(username=name)
        user.is_staff, user.is_active = True, True
        user.set_password(password)
        user.save()
        # One staff group at a time (a move from support to ops drops support); other groups are kept.
        user.groups.remove(*Group.objects.filter(name__in=STAFF_GROUPS).exclude(pk=staff_group.pk))
        user.groups.add(staff_group)
        token, _ = Token.objects.get_or_create(user=user)
    return user, password, token.key

"""The admin's staff groups (ops, finance, support) with their permissions: payments/staff.py."""

from django.db import migrations


def create_groups(apps, schema_editor):
    from payments.staff import sync_groups

    sync_groups(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("payments", "0007_admin_permissions"),
        ("reconciliation", "0002_admin_permissions"),
    ]

    operations = [migrations.RunPython(create_groups, migrations.RunPython.noop)]

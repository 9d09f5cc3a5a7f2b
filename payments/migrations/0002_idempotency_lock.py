"""Idempotency keys are held by an advisory lock while a request runs, so a record now only ever holds a
finished answer: in-flight rows (and their state column) go."""

from django.db import migrations, models


def drop_unfinished(apps, schema_editor):
    apps.get_model("payments", "IdempotencyRecord").objects.filter(response_status__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("payments", "0001_initial")]

    operations = [
        migrations.RunPython(drop_unfinished, migrations.RunPython.noop),
        migrations.RemoveField(model_name="idempotencyrecord", name="state"),
        migrations.AlterField(
            model_name="idempotencyrecord", name="response_status", field=models.PositiveSmallIntegerField()
        ),
        migrations.AlterField(model_name="idempotencyrecord", name="response_body", field=models.JSONField()),
    ]

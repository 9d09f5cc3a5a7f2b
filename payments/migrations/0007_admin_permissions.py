# The admin's custom permissions (payments/staff.py gives them to the staff groups) and the BRIN index of its day.

import django.contrib.postgres.indexes
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('payments', '0006_reconciliation_indexes'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='event',
            options={'permissions': [('redeliver_event', "Can send an event's webhooks again")]},
        ),
        migrations.AlterModelOptions(
            name='order',
            options={'permissions': [('operate_order', 'Can re-query, close, retry and refund orders and decide on late payments'), ('operate_breaker', 'Can force a channel circuit breaker open or closed')]},
        ),
        migrations.AlterModelOptions(
            name='webhookdelivery',
            options={'verbose_name_plural': 'webhook deliveries'},
        ),
        migrations.AddIndex(
            model_name='order',
            index=django.contrib.postgres.indexes.BrinIndex(fields=['created_at'], name='order_created_brin'),
        ),
    ]

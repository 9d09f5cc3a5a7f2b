# Reconciliation selects one channel's paid orders and the succeeded refunds of a business day
# (reconciliation/matching.py OURS_SQL). Partial: an order is created with paid_at NULL and a refund with
# succeeded_at NULL, so the create's INSERT writes no entry to either.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('payments', '0005_webhook_deliveries'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='order',
            index=models.Index(condition=models.Q(('paid_at__isnull', False)), fields=['channel', 'paid_at'], name='order_channel_paid'),
        ),
        migrations.AddIndex(
            model_name='refund',
            index=models.Index(condition=models.Q(('succeeded_at__isnull', False)), fields=['succeeded_at'], name='refund_succeeded'),
        ),
    ]

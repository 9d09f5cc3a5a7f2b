"""The transaction engine: the only code that changes money state, one module per thing it serves.

- ``transitions``: what every change of state goes through (the FSM transition on a locked row, its log
  row, the event merchants hear about, the metric);
- ``orders``, ``refunds``, ``notifications`` (inbound from channels), ``merchants`` (and their keys),
  ``webhooks`` (outbound to merchants);
- ``errors``: what the services refuse, which the API maps onto its envelope.

Callers use the names below, ``payments.services.<name>``.
"""

from payments.services.admin_actions import admin_action_log
from payments.services.errors import DuplicateError, NoEndpoint, OrderStateError, RefundExceedsAmount
from payments.services.merchants import api_key_create, api_key_rotate, hash_key, merchant_create
from payments.services.notifications import notification_apply, notification_receive
from payments.services.orders import (
    channel_notify_url,
    channel_of,
    order_accept_late_payment,
    order_apply_trade,
    order_charge,
    order_close,
    order_create,
    order_expire,
    order_flag,
    order_query,
    order_retry,
)
from payments.services.refunds import (
    order_refund_late_payment,
    refund_apply_result,
    refund_flag,
    refund_request,
    refund_submit,
)
from payments.services.transitions import acting_as
from payments.services.webhooks import (
    event_redeliver,
    webhook_deliver,
    webhook_secret_rotate,
)

__all__ = [
    "acting_as", "admin_action_log",
    "DuplicateError", "NoEndpoint", "OrderStateError", "RefundExceedsAmount",
    "api_key_create", "api_key_rotate", "hash_key", "merchant_create",
    "notification_apply", "notification_receive",
    "channel_notify_url", "channel_of", "order_accept_late_payment", "order_apply_trade", "order_charge", "order_close",
    "order_create", "order_expire", "order_flag", "order_query", "order_retry",
    "order_refund_late_payment", "refund_apply_result", "refund_flag", "refund_request", "refund_submit",
    "event_redeliver", "webhook_deliver", "webhook_secret_rotate",
]

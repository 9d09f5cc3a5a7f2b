from django.urls import path

from payments.api import views

urlpatterns = [
    path("orders", views.OrdersView.as_view(), name="orders"),
    path("orders/<str:order_id>", views.OrderView.as_view(), name="order"),
    path("orders/<str:order_id>/close", views.OrderCloseView.as_view(), name="order-close"),
    path("orders/<str:order_id>/refunds", views.OrderRefundsView.as_view(), name="order-refunds"),
    path("refunds/<str:refund_id>", views.RefundView.as_view(), name="refund"),
    path("events", views.EventsView.as_view(), name="events"),
    path("events/<str:event_id>", views.EventView.as_view(), name="event"),
    path("events/<str:event_id>/redeliver", views.EventRedeliverView.as_view(), name="event-redeliver"),
    path("webhook_secret/rotate", views.WebhookSecretRotateView.as_view(), name="webhook-secret-rotate"),
]

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from payments import admin_breakers, callbacks, health
from payments_site.dashboard import dashboard_view
from payments_site.metrics import metrics_view

urlpatterns = [
    path("api/v1/reconciliation/", include("reconciliation.urls")),
    path("api/v1/", include("payments.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("callbacks/<str:channel>", callbacks.channel_callback, name="channel-callback"),
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", metrics_view),
    path("admin/dashboard/", admin.site.admin_view(dashboard_view), name="admin-dashboard"),
    path("admin/breakers/", admin.site.admin_view(admin_breakers.breakers_view), name="admin-breakers"),
    path("admin/", admin.site.urls),
]

# Under /api/ every answer is the error envelope, also for paths no view matches and for crashes outside a view.
handler404 = "payments.api.errors.handler404"
handler500 = "payments.api.errors.handler500"

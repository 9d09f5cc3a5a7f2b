from django.urls import path

from reconciliation import api

urlpatterns = [
    path("runs", api.RunsView.as_view(), name="reconciliation-runs"),
    path("runs/<str:run_id>", api.RunView.as_view(), name="reconciliation-run"),
    path("runs/<str:run_id>/report.csv", api.RunReportCsvView.as_view(), name="reconciliation-report-csv"),
    path("runs/<str:run_id>/report.xlsx", api.RunReportXlsxView.as_view(), name="reconciliation-report-xlsx"),
]

"""The finance API (API.md "Reconciliation (finance)"): staff users of the ``finance`` group, with DRF token
authentication. A merchant's key authenticates (so it is told 403, not 401); no credentials is 401."""

from __future__ import annotations

from django.http import FileResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import authentication, permissions, serializers
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments.api.auth import ApiKeyAuthentication
from payments.api.schema import errors, id_path
from reconciliation import reports, selectors
from reconciliation.models import Run

FINANCE_GROUP = "finance"


class IsFinance(permissions.BasePermission):
    message = "Reconciliation is for staff users of the finance group."

    def has_permission(self, request: Request, view: object) -> bool:
        user = request.user
        return bool(
            getattr(user, "is_staff", False) and getattr(user, "is_active", False)
            and user.groups.filter(name=FINANCE_GROUP).exists()
        )


class FinanceView(APIView):
    authentication_classes = [authentication.TokenAuthentication, ApiKeyAuthentication]
    permission_classes = [IsFinance]
    throttle_classes: list = []

    def get_run(self, run_id: str) -> Run:
        run = Run.objects.filter(public_id=run_id).first()
        if run is None:
            raise NotFound("no such reconciliation run")
        return run


# Runs are described loosely (their totals and counts are keyed by kind and currency): an object with an id.
RUN = OpenApiResponse(OpenApiTypes.OBJECT, description="A reconciliation run: totals and discrepancy counts")
RUNS = OpenApiResponse(OpenApiTypes.OBJECT, description='`{"object": "list", "data": [runs], "has_more": bool}`')
FINANCE_ERRORS = errors(403, 404)


class RunsView(FinanceView):
    class InputSerializer(serializers.Serializer):
        date = serializers.DateField(required=False)
        channel = serializers.CharField(required=False, max_length=16)
        limit = serializers.IntegerField(required=False, min_value=1, max_value=100, default=20)
        starting_after = serializers.CharField(required=False, max_length=32)

    @extend_schema(operation_id="reconciliation_runs_list", tags=["reconciliation"], parameters=[InputSerializer],
                   responses={200: RUNS, **FINANCE_ERRORS})
    def get(self, request: Request) -> Response:
        query = self.InputSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        runs = Run.objects.order_by("-id")
        if params.get("date"):
            runs = runs.filter(business_date=params["date"])
        if params.get("channel"):
            runs = runs.filter(channel=params["channel"])
        if params.get("starting_after"):
            runs = runs.filter(id__lt=self.get_run(params["starting_after"]).pk)
        page = list(runs[: params["limit"] + 1])
        data = [selectors.run_json(run) for run in page[: params["limit"]]]
        return Response({"object": "list", "data": data, "has_more": len(page) > params["limit"]})


class RunView(FinanceView):
    @extend_schema(operation_id="reconciliation_runs_get", tags=["reconciliation"],
                   parameters=[id_path("run_id", "rec")], responses={200: RUN, **FINANCE_ERRORS})
    def get(self, request: Request, run_id: str) -> Response:
        return Response(selectors.run_json(self.get_run(run_id)))


class RunReportCsvView(FinanceView):
    @extend_schema(operation_id="reconciliation_report_csv", tags=["reconciliation"],
                   parameters=[id_path("run_id", "rec")],
                   responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="Every discrepancy"),
                              **FINANCE_ERRORS})
    def get(self, request: Request, run_id: str) -> StreamingHttpResponse:
        run = self.get_run(run_id)
        response = StreamingHttpResponse(reports.csv_chunks(run), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{reports.filename(run, "csv")}"'
        return response


class RunReportXlsxView(FinanceView):
    @extend_schema(operation_id="reconciliation_report_xlsx", tags=["reconciliation"],
                   parameters=[id_path("run_id", "rec")],
                   responses={(200, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"):
                              OpenApiResponse(OpenApiTypes.BINARY, description="Every discrepancy"),
                              **FINANCE_ERRORS})
    def get(self, request: Request, run_id: str) -> FileResponse:
        run = self.get_run(run_id)
        return FileResponse(
            reports.xlsx_file(run), as_attachment=True, filename=reports.filename(run, "xlsx"),
            content_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        )



"""The bench baseline: a bare DRF endpoint that INSERTs one row (table made by bench/api_create.py).

With ``BENCH_LADDER=1`` the bench also measures rungs between it and the real create, to show what each
part of a create costs (``make bench-api-ladder``): the project's authentication and rate limit, then the
create's validation, then the order written by the service without an Idempotency-Key. The last rung is the
real endpoint, which adds the key's stored answer.
"""

from django.db import connection
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from payments import services
from payments.api.views import OrdersView
from payments.representations import order_json


def _insert(request) -> Response:
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO bench_insert (ref) VALUES (%s) RETURNING id",
                       [str(request.data.get("merchant_order_no", ""))[:64]])
        (row_id,) = cursor.fetchone()
    return Response({"id": row_id}, status=201)


class InsertView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    def post(self, request):
        return _insert(request)


class AuthenticatedInsertView(APIView):
    """Rung 1: the same INSERT behind the API's authentication and rate limit (the project's defaults)."""

    def post(self, request):
        return _insert(request)


def _validated(request) -> dict:
    data = OrdersView.InputSerializer(data=request.data, context={"merchant": request.user})
    data.is_valid(raise_exception=True)
    return data.validated_data


class ValidatedInsertView(APIView):
    """Rung 2: and the create's validation."""

    def post(self, request):
        _validated(request)
        return _insert(request)


class ServiceCreateView(APIView):
    """Rung 3: the order written by the service (its log row, the outbox notification, the log line),
    without an Idempotency-Key."""

    def post(self, request):
        order, _ = services.order_create(merchant=request.user, **_validated(request))
        return Response(order_json(order), status=201)


urlpatterns = [
    path("bench/insert", InsertView.as_view()),
    path("bench/ladder/1", AuthenticatedInsertView.as_view()),
    path("bench/ladder/2", ValidatedInsertView.as_view()),
    path("bench/ladder/3", ServiceCreateView.as_view()),
]

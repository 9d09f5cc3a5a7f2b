"""The bench baseline: a bare DRF endpoint that INSERTs one row (table made by bench/api_create.py)."""

from django.db import connection
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView


class InsertView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    def post(self, request):
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO bench_insert (ref) VALUES (%s) RETURNING id",
                           [str(request.data.get("merchant_order_no", ""))[:64]])
            (row_id,) = cursor.fetchone()
        return Response({"id": row_id}, status=201)


urlpatterns = [path("bench/insert", InsertView.as_view())]

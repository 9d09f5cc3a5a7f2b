"""Reconciliation in the admin: finance reads every run, downloads its reports, and decides on discrepancies
(accept, refund, write off, with a reason); who decided and when is recorded."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.urls import reverse
from django.utils.html import format_html

from reconciliation import services
from reconciliation.models import Discrepancy, Run


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DiscrepancyInline(admin.TabularInline):
    model = Discrepancy
    fields = ("kind", "status", "out_trade_no", "out_refund_no", "channel_amount", "internal_amount", "resolution")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(ReadOnly):
    list_display = ["public_id", "channel", "business_date", "version", "status", "bill_rows", "reports"]
    list_filter = ["channel", "status", "business_date"]
    search_fields = ["public_id"]
    readonly_fields = [f.name for f in Run._meta.fields] + ["reports"]
    inlines = [DiscrepancyInline]

    @admin.display(description="report")
    def reports(self, run: Run) -> str:
        return format_html(
            '<a href="{}">CSV</a> · <a href="{}">XLSX</a>',
            reverse("admin:reconciliation_run_report", args=[run.pk, "csv"]),
            reverse("admin:reconciliation_run_report", args=[run.pk, "xlsx"]),
        )

    def get_urls(self) -> list[Any]:
        from django.urls import path

        return [path("<int:run_pk>/report.<str:fmt>", self.admin_site.admin_view(self.report),
                     name="reconciliation_run_report"), *super().get_urls()]

    def report(self, request: HttpRequest, run_pk: int, fmt: str) -> HttpResponseBase:
        from django.core.exceptions import PermissionDenied
        from django.http import FileResponse, Http404, StreamingHttpResponse

        from reconciliation import reports

        if not self.has_view_permission(request):
            raise PermissionDenied
        run = Run.objects.filter(pk=run_pk).first()
        if run is None or fmt not in ("csv", "xlsx"):
            raise Http404
        if fmt == "csv":
            response = StreamingHttpResponse(reports.csv_chunks(run), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="{reports.filename(run, "csv")}"'
            return response
        return FileResponse(reports.xlsx_file(run), as_attachment=True, filename=reports.filename(run, "xlsx"))


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=Discrepancy.Decision.choices)
    reason = forms.CharField(max_length=200)


@admin.register(Discrepancy)
class DiscrepancyAdmin(ReadOnly):
    list_display = ["id", "run", "kind", "status", "out_trade_no", "channel_amount", "internal_amount", "decision",
                    "resolved_by"]
    list_filter = ["status", "kind", "run__channel", "run__business_date"]
    search_fields = ["out_trade_no", "out_refund_no", "channel_trade_no"]
    readonly_fields = [f.name for f in Discrepancy._meta.fields]
    actions = ["decide"]

    @admin.action(description="Decide (accept, refund, write off) with a reason", permissions=["resolve"])
    def decide(self, request: HttpRequest, queryset: QuerySet[Discrepancy]) -> HttpResponse | None:
        if "apply" in request.POST:
            form = DecisionForm(request.POST)
            if form.is_valid():
                for d in queryset:
                    services.discrepancy_resolve(
                        discrepancy_id=d.pk, decision=form.cleaned_data["decision"],
                        reason=form.cleaned_data["reason"], by=request.user.get_username(),
                    )
                self.message_user(request, f"{queryset.count()} discrepancies decided", messages.SUCCESS)
                return None
        else:
            form = DecisionForm()
        return render(request, "admin/reconciliation/decide.html", {
            "form": form, "discrepancies": queryset, "title": "Decide on discrepancies",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        })

    def has_resolve_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("reconciliation.resolve_discrepancy")

"""Reconciliation in the admin: staff read every run; finance downloads its reports
(``reconciliation.download_report``); finance and ops decide on discrepancies (accept, refund, write off, with a
reason; ``reconciliation.resolve_discrepancy``). Who decided and when is recorded on the discrepancy and in the
transition log."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.urls import reverse
from django.utils.html import format_html

from channels.money import format_money
from channels.registry import CHANNEL_NAMES
from payments import services as payment_services
from payments.admin import ReadOnlyAdmin, ReadOnlyInline, choices_filter
from reconciliation import services
from reconciliation.models import Discrepancy, Run


def money(field: str, description: str) -> Any:
    @admin.display(description=description, ordering=field)
    def show(self: Any, d: Discrepancy) -> str:
        return format_money(getattr(d, field), d.currency) if d.currency else str(getattr(d, field) or "")

    return show


class DiscrepancyInline(ReadOnlyInline):
    model = Discrepancy
    fields = ("kind", "status", "out_trade_no", "out_refund_no", "channel_money", "internal_money", "resolution")
    readonly_fields = fields
    show_change_link = True
    channel_money = money("channel_amount", "channel")
    internal_money = money("internal_amount", "ours")


def can_download(request: HttpRequest) -> bool:
    return request.user.has_perm("reconciliation.download_report")


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "channel", "account", "business_date", "version", "status", "bill_rows",
                    "open_discrepancies", "finished_at", "reports"]
    list_filter = [choices_filter("channel", "channel", CHANNEL_NAMES), "status", "business_date", "created_at"]
    date_hierarchy = "created_at"
    search_fields = ["=public_id"]
    search_help_text = "The run's id (rec_…)."
    readonly_fields = [f.name for f in Run._meta.fields] + ["reports"]
    inlines = [DiscrepancyInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Run]:
        return super().get_queryset(request).annotate(
            discrepancies_open=Count("discrepancies", filter=Q(discrepancies__status=Discrepancy.Status.OPEN)))

    @admin.display(description="open discrepancies", ordering="discrepancies_open")
    def open_discrepancies(self, run: Run) -> int:
        return getattr(run, "discrepancies_open", 0)

    def get_list_display(self, request: HttpRequest) -> Any:
        shown = list(super().get_list_display(request))
        return shown if can_download(request) else [name for name in shown if name != "reports"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        shown = list(super().get_readonly_fields(request, obj))
        return shown if can_download(request) else [name for name in shown if name != "reports"]

    @admin.display(description="report")
    def reports(self, run: Run) -> str:
        return format_html(
            '<a href="{}" class="report-csv">CSV</a> · <a href="{}" class="report-xlsx">XLSX</a>',
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

        if not can_download(request):
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
class DiscrepancyAdmin(ReadOnlyAdmin):
    list_display = ["id", "run", "kind", "status", "out_trade_no", "channel_money", "internal_money", "decision",
                    "resolved_by", "created_at"]
    list_select_related = ["run"]
    list_filter = ["status", "kind", choices_filter("channel", "run__channel", CHANNEL_NAMES), "run__business_date",
                   "created_at"]
    date_hierarchy = "created_at"
    search_fields = ["out_trade_no"]
    search_help_text = "Our order id (out_trade_no), the refund's, the channel's trade number, or the merchant's " \
                       "order number."
    readonly_fields = [f.name for f in Discrepancy._meta.fields if f.name not in ("channel_amount", "internal_amount")]
    exclude = ["channel_amount", "internal_amount"]
    actions = ["decide"]
    channel_money = money("channel_amount", "channel amount")
    internal_money = money("internal_amount", "our amount")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*super().get_readonly_fields(request, obj), "channel_money", "internal_money"]

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(out_trade_no=term) | Q(out_refund_no=term) | Q(channel_trade_no=term)
                               | Q(order__merchant_order_no=term)), False

    @admin.action(description="Decide (accept, refund, write off) with a reason", permissions=["resolve"])
    def decide(self, request: HttpRequest, queryset: QuerySet[Discrepancy]) -> HttpResponse | None:
        if "apply" in request.POST:
            form = DecisionForm(request.POST)
            if form.is_valid():
                by = request.user.get_username()
                decision, reason = form.cleaned_data["decision"], form.cleaned_data["reason"]
                for d in queryset:
                    with payment_services.acting_as(by):
                        decided = services.discrepancy_resolve(discrepancy_id=d.pk, decision=decision, reason=reason,
                                                               by=by)
                    payment_services.admin_action_log(
                        object_type="discrepancy", object_id=str(d.pk), action="resolve_discrepancy", by=by,
                        from_state=d.status, to_state=decided.status, outcome=f"{decision}: {decided.resolution}",
                        order=d.out_trade_no,
                    )
                self.message_user(request, f"{queryset.count()} discrepancies decided", messages.SUCCESS)
                return None
        else:
            form = DecisionForm()
        return render(request, "admin/reconciliation/decide.html", {
            **self.admin_site.each_context(request), "form": form, "discrepancies": queryset,
            "title": "Decide on discrepancies", "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        })

    def has_resolve_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("reconciliation.resolve_discrepancy")

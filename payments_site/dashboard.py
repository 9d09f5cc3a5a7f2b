"""The admin's dashboard (``/admin/dashboard/``, linked from the admin index): today at a glance for ops.

Volume and success rate per channel, the hourly volume as a small server-rendered SVG chart (no script, no
CDN: it works offline), the open orders by age, the circuit breakers, the latest reconciliation runs. A few
aggregate queries: today's orders through the BRIN index on created_at, the open ones through the status index.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import redis
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncHour
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from channels.money import format_money
from channels.registry import breakers
from payments.models import OPEN_ORDER_STATES, Order, OrderStatus
from reconciliation.models import Discrepancy, Run

PAID = [OrderStatus.SUCCEEDED, OrderStatus.PARTIALLY_REFUNDED, OrderStatus.REFUNDED]
# The open orders' age buckets: (label, lower bound).
AGES = [("< 5 min", dt.timedelta(0)), ("5-30 min", dt.timedelta(minutes=5)), ("30 min-2 h", dt.timedelta(minutes=30)),
        ("2-24 h", dt.timedelta(hours=2)), ("> 24 h", dt.timedelta(hours=24))]


def dashboard_view(request: HttpRequest) -> HttpResponse:
    from django.contrib import admin

    if not request.user.has_perm("payments.view_order"):
        raise PermissionDenied
    now = timezone.now()
    start = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    today = Order.objects.filter(created_at__gte=start)
    context = {
        **admin.site.each_context(request),
        "title": "Today",
        "day": start.date(),
        "now": now,
        "channels": channel_rows(today),
        "chart": hourly_chart(today, start),
        "backlog": backlog(now),
        "ages": [label for label, _ in AGES],
        "breakers": breaker_rows(),
        "runs": latest_runs(),
    }
    return TemplateResponse(request, "admin/dashboard.html", context)


def channel_rows(today: Any) -> list[dict[str, Any]]:
    """Per channel (and currency): orders created today, how many are paid, failed, closed, still open; the rate
    of success among those that finished."""
    rows = (today.values("channel", "currency").order_by("channel", "currency").annotate(
        total=Count("id"),
        paid=Count("id", filter=Q(status__in=PAID)),
        failed=Count("id", filter=Q(status=OrderStatus.FAILED)),
        closed=Count("id", filter=Q(status=OrderStatus.CLOSED)),
        open=Count("id", filter=Q(status__in=OPEN_ORDER_STATES)),
        paid_amount=Sum("amount", filter=Q(status__in=PAID)),
    ))
    found = []
    for row in rows:
        finished = row["paid"] + row["failed"] + row["closed"]
        rate = row["paid"] / finished if finished else None
        found.append({**row, "paid_money": format_money(row["paid_amount"] or 0, row["currency"]),
                      "rate": f"{rate:.1%}" if rate is not None else "-", "rate_pct": round((rate or 0) * 100)})
    return found


def hourly_chart(today: Any, start: dt.datetime) -> SafeString:
    """Orders created in each hour of today, paid ones darker: a bar chart in SVG, drawn here."""
    counts = {
        timezone.localtime(row["hour"]).hour: row
        for row in today.annotate(hour=TruncHour("created_at")).values("hour").order_by("hour")
        .annotate(total=Count("id"), paid=Count("id", filter=Q(status__in=PAID)))
    }
    width, height, left, bottom, top = 720, 180, 36, 22, 10
    peak = max((row["total"] for row in counts.values()), default=0) or 1
    bar = (width - left) / 24
    scale = (height - bottom - top) / peak
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="Orders per hour today" class="chart" font-size="10" font-family="sans-serif">']
    for tick in (0, peak // 2, peak):
        y = height - bottom - tick * scale
        parts.append(f'<line x1="{left}" x2="{width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" fill="#666">{tick}</text>')
    for hour in range(24):
        x = left + hour * bar
        row = counts.get(hour, {"total": 0, "paid": 0})
        total_h, paid_h = row["total"] * scale, row["paid"] * scale
        label = escape(f"{hour:02d}:00 {row['total']} orders, {row['paid']} paid")
        parts.append(f'<g><title>{label}</title>'
                     f'<rect x="{x + 2:.1f}" y="{height - bottom - total_h:.1f}" width="{bar - 4:.1f}" '
                     f'height="{total_h:.1f}" fill="#9ec5e8"/>'
                     f'<rect x="{x + 2:.1f}" y="{height - bottom - paid_h:.1f}" width="{bar - 4:.1f}" '
                     f'height="{paid_h:.1f}" fill="#417690"/></g>')
        if hour % 3 == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - 6}" text-anchor="middle" fill="#666">'
                         f'{hour:02d}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # numbers, and labels escaped above


def backlog(now: dt.datetime) -> list[dict[str, Any]]:
    """Open orders (created, pending) per channel and status, counted by age."""
    buckets = {}
    for i, (_, lower) in enumerate(AGES):
        upper = AGES[i + 1][1] if i + 1 < len(AGES) else None
        window = Q(created_at__lte=now - lower)
        if upper is not None:
            window &= Q(created_at__gt=now - upper)
        buckets[f"age{i}"] = Count("id", filter=window)
    rows = (Order.objects.filter(status__in=OPEN_ORDER_STATES).values("channel", "status")
            .order_by("channel", "status").annotate(total=Count("id"), flagged=Count("id", filter=~Q(attention="")),
                                                     **buckets))
    found: list[dict[str, Any]] = [dict(row) for row in rows]
    return [{**row, "ages": [row[f"age{i}"] for i in range(len(AGES))]} for row in found]


def breaker_rows() -> list[dict[str, Any]]:
    rows = []
    for breaker in breakers():
        try:
            status = breaker.status()
        except redis.RedisError:
            status = {"effective": "unknown (Redis unreachable)", "mode": "?", "reason": ""}
        rows.append({"channel": breaker.channel, "account": breaker.account, **status})
    return rows


def latest_runs(limit: int = 8) -> list[Run]:
    open_ = Discrepancy.Status.OPEN
    return list(Run.objects.order_by("-created_at").annotate(
        discrepancies_open=Count("discrepancies", filter=Q(discrepancies__status=open_)),
        discrepancies_total=Count("discrepancies"),
    )[:limit])


"""The admin page of the channels' circuit breakers (``/admin/breakers/``): each configured channel account
with its shared state, and, for ops, the buttons that force it open or closed or give it back to the
automatic rules. Breakers have no model: their state is in Redis (``channels/breaker.py``). Forcing one takes the
permission ``payments.operate_breaker`` (the ops group, and superusers)."""

from __future__ import annotations

import datetime as dt
import logging

import redis
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.views.decorators.http import require_http_methods

from channels.breaker import MODES
from channels.registry import breakers
from payments import services

log = logging.getLogger(__name__)


@require_http_methods(["GET", "POST"])
def breakers_view(request: HttpRequest) -> HttpResponse:
    by_key = {breaker.key: breaker for breaker in breakers()}
    if request.method == "POST":
        # Forcing a breaker stops or lets through every payment of an account: ops only.
        if not request.user.has_perm("payments.operate_breaker"):
            raise PermissionDenied
        breaker, mode = by_key.get(request.POST.get("key", "")), request.POST.get("mode", "")
        if breaker is None or mode not in MODES:
            messages.error(request, "Unknown breaker or mode.")
        else:
            try:
                breaker.set_mode(mode)
            except redis.RedisError as exc:
                messages.error(request, f"Redis is unreachable; nothing changed ({exc}).")
            else:
                log.warning(
                    "%s set the circuit breaker of %s %s to %s", request.user.get_username(), breaker.channel,
                    breaker.account, mode, extra={"channel": breaker.channel, "breaker_mode": mode, "key_path": True},
                )
                services.admin_action_log(object_type="breaker", object_id=f"{breaker.channel}:{breaker.account}",
                                          action="breaker_mode", by=request.user.get_username(), outcome=mode)
                messages.success(request, f"{breaker.channel} {breaker.account}: {mode}.")
        return HttpResponseRedirect(request.path)
    rows = []
    for breaker in by_key.values():
        try:
            status = breaker.status()
        except redis.RedisError as exc:
            status = {"mode": "?", "state": "?", "effective": f"unknown (Redis unreachable: {exc})", "reason": "",
                      "since": None, "open_until": None}
        rows.append({
            "key": breaker.key, "channel": breaker.channel, "account": breaker.account, **status,
            "since": _when(status["since"]), "open_until": _when(status["open_until"]),
        })
    context = {
        **admin.site.each_context(request), "title": "Channel circuit breakers", "rows": rows, "modes": MODES,
        "can_change": request.user.has_perm("payments.operate_breaker"),
    }
    return TemplateResponse(request, "admin/breakers.html", context)


def _when(epoch: float | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(epoch, dt.UTC) if epoch is not None else None

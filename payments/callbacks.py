"""Inbound channel notifications: ``POST /callbacks/<channel>``.

Verify, store, enqueue, answer the way the channel expects; the work happens in a worker.
"""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from channels.registry import available_channels, get_channel
from payments import services


@csrf_exempt
@require_POST
def channel_callback(request: HttpRequest, channel: str) -> HttpResponse:
    if channel not in available_channels():
        raise Http404(channel)
    try:
        body = request.body
    except RequestDataTooBig:
        # Over DATA_UPLOAD_MAX_MEMORY_SIZE: no channel sends that much; the channel's own failure reply, as 413.
        reply = get_channel(channel).notification_reply(accepted=False)
        return HttpResponse(reply.body, status=413, content_type=reply.content_type)
    _, accepted = services.notification_receive(channel=channel, headers=dict(request.headers), body=body)
    reply = get_channel(channel).notification_reply(accepted=accepted)
    return HttpResponse(reply.body, status=reply.status, content_type=reply.content_type)

"""Beat entries of the nightly reconciliation: one per channel, daily at RECONCILIATION_TIME of the channel's
bill zone (celeryconfig.py adds them). Beat runs in UTC, so the local time is turned into UTC here: exact for
Beijing (no daylight saving since 1991), and for a sandbox zone with daylight saving, right for the offset
of the day beat starts."""

from __future__ import annotations

import datetime as dt
from typing import Any

from celery.schedules import crontab

from channels.base import bill_zone


def daily_entries(at: str, zones: dict[str, str]) -> dict[str, dict[str, Any]]:
    hour, minute = (int(part) for part in at.split(":"))
    entries = {}
    for channel, zone in zones.items():
        local = dt.datetime.combine(dt.date.today(), dt.time(hour, minute), bill_zone(zone))
        utc = local.astimezone(dt.UTC)
        entries[f"reconcile-{channel}"] = {
            "task": "reconciliation.tasks.reconcile_channel",
            "schedule": crontab(minute=utc.minute, hour=utc.hour),
            "args": (channel,),
        }
    return entries

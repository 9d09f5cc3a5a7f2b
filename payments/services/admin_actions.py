"""The transition log's record of a staff user's action in the admin (re-query, close, retry, refund, redeliver,
a discrepancy's decision), whatever it changed: one row of transition ``admin_action``, source ``admin``, with
who did it, what was asked and what came of it. Transitions the action fired have their own rows, with the same
user as ``by`` (``acting_as``)."""

from __future__ import annotations

from typing import Any

from payments.models import TransitionLog
from payments.observability import current_trace_id

ADMIN_ACTION = "admin_action"


def admin_action_log(
    *, object_type: str, object_id: str, action: str, by: str, from_state: str = "", to_state: str = "",
    outcome: str = "", **detail: Any,
) -> TransitionLog:
    """Write the log row of ``action`` done by staff user ``by`` on an order (``object_type="order"``, its public
    id), a refund, an event or a discrepancy; ``outcome`` says what came of it in a few words."""
    return TransitionLog.objects.create(
        object_type=object_type, object_id=object_id[:32], transition=ADMIN_ACTION, from_state=from_state,
        to_state=to_state or from_state, source=TransitionLog.Source.ADMIN, trace_id=current_trace_id(),
        detail={"action": action, "by": by, "outcome": outcome[:200], **detail},
    )

"""What a service refuses, in the service's words. ``payments.api.errors`` maps each onto the API's envelope."""

from __future__ import annotations


class OrderStateError(Exception):
    """The order's state does not allow the operation (API: 409 ``order_state``)."""


class DuplicateError(Exception):
    """A merchant number reused with different parameters (API: 409 ``duplicate_<param>``)."""

    def __init__(self, param: str) -> None:
        super().__init__(f"{param} was already used with different parameters")
        self.param = param  # merchant_order_no or merchant_refund_no

    @property
    def code(self) -> str:
        return f"duplicate_{self.param}"


class NoEndpoint(Exception):
    """The event's order has no notify_url and its merchant no default endpoint: there is nowhere to send it."""


class RefundExceedsAmount(Exception):
    """The refunds would exceed what was paid (API: 422 ``refund_exceeds_amount``)."""

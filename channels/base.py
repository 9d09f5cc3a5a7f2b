"""The one interface every payment channel implements, and the four kinds of outcome.

Every channel call ends in exactly one of:
- a definite answer: the method returns a result (accepted, paid, closed, refunded, not found);
- ``Refused``: the channel said no for good (risk control, trade closed, amount too large); do not retry;
- ``Retryable``: the request did not take effect (connect failure, 5xx, SYSTEM_ERROR, rate limited);
  retry later with backoff;
- ``UnknownOutcome``: the request may or may not have taken effect (read timeout after sending, an answer
  whose signature does not verify); never resend blindly, query the channel first.
Callers act on these kinds only; raw channel codes stay inside each channel's package.
"""

from __future__ import annotations

import abc
import datetime as dt
import enum
import hashlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

# Alipay's and WeChat Pay's times and bill days are Beijing time. China has kept +08:00 all year since 1991,
# so a fixed offset is exact (and needs no time zone database).
CHINA_TIME = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")


def bill_zone(name: str) -> dt.tzinfo:
    """The tzinfo of a channel's ``bill_timezone``: fixed offsets for UTC and Beijing, the system's zone
    database for any other name (a sandbox configured otherwise)."""
    if name in ("UTC", "Etc/UTC"):
        return dt.UTC
    if name == "Asia/Shanghai":
        return CHINA_TIME
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


class ChannelError(Exception):
    """Base of the channel outcome errors. ``code`` is our internal failure code."""

    def __init__(self, message: str, *, code: str = "channel_error", retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


class Retryable(ChannelError):
    """The request did not take effect; the same request may be sent again later."""


class CircuitOpen(Retryable):
    """Not sent: the channel account's circuit breaker is open (``channels/breaker.py``). Nothing reached the
    channel; hold the work and try again after ``retry_after_s``, without counting it as a failed attempt."""


class BillNotReady(Retryable):
    """The day's bill is not there yet: being generated (``code="bill_creating"``), or not found
    (``code="bill_not_found"``: not generated yet, or no bill because the day had no trades). Ask again later."""


class UnknownOutcome(ChannelError):
    """The request may have taken effect; query before doing anything else."""


class Refused(ChannelError):
    """A definite no from the channel. ``code`` says why, in our words."""


class InvalidNotification(Exception):
    """An inbound notification that failed verification or parsing; nothing in it may be trusted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TradeStatus(enum.StrEnum):
    WAITING = "waiting"  # the channel holds the trade and waits for the payer
    SUCCEEDED = "succeeded"
    CLOSED = "closed"
    NOT_FOUND = "not_found"


class RefundStatus(enum.StrEnum):
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class TradeResult:
    out_trade_no: str
    status: TradeStatus
    amount: int | None = None
    currency: str | None = None
    pay_url: str | None = None
    channel_trade_no: str | None = None
    paid_at: dt.datetime | None = None


@dataclass(frozen=True)
class RefundResult:
    out_refund_no: str
    status: RefundStatus
    amount: int | None = None
    currency: str | None = None
    channel_refund_no: str | None = None
    succeeded_at: dt.datetime | None = None
    failure_code: str | None = None


@dataclass(frozen=True)
class Notification:
    """A verified inbound notification. ``notification_id`` is the channel's own id, stable across retries.
    With neither ``trade`` nor ``refund`` it is an event we do not act on: acknowledged and kept, nothing more."""

    notification_id: str
    out_trade_no: str
    trade: TradeResult | None = None
    refund: RefundResult | None = None


@dataclass(frozen=True)
class NotificationReply:
    """What the channel expects to hear back for a notification."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain"


@dataclass(frozen=True)
class BillRow:
    """One line of a channel's bill, in our words: ``kind`` is "payment" or "refund", ``status`` a
    ``TradeStatus`` or ``RefundStatus`` value (a bill lists completed ones: "succeeded"). ``fee`` is the
    channel's service fee for the row in minor units, positive for a fee charged (negative when a refund gives
    some back), 0 where the format has none."""

    kind: str
    out_trade_no: str
    amount: int
    currency: str
    status: str
    channel_trade_no: str | None = None
    out_refund_no: str | None = None
    channel_refund_no: str | None = None
    completed_at: dt.datetime | None = None
    fee: int = 0


class BillMalformed(Retryable):
    """A bill file that does not parse (found while its rows are read)."""


# Bills are spooled: this much stays in memory, the rest goes to a temporary file.
BILL_SPOOL_MEMORY = 8 * 1024 * 1024


def new_spool() -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=BILL_SPOOL_MEMORY)


def file_digest(file: IO[bytes], algorithm: Callable[[], Any] = hashlib.sha1) -> str:
    """Hex digest of a spooled file, read in chunks from the start."""
    file.seek(0)
    digest = algorithm()
    while chunk := file.read(1 << 16):
        digest.update(chunk)
    return str(digest.hexdigest())


@dataclass(frozen=True)
class BillCsv:
    """How PostgreSQL can read a bill that is one plain CSV file by itself, faster than parsing it row by row.

    Reconciliation then COPYs the file as it is into a table of ``columns`` (SQL column definitions in the file's
    order; their types and constraints are the checks a row must pass) and normalises it in SQL with ``select``
    (a SELECT over ``{raw}`` giving what the parser gives: kind, key, out_trade_no, out_refund_no,
    channel_trade_no, amount, fee, currency, status, completed_at). Text columns read an empty field as "" (as
    the parser does); others as NULL. Used only when the file's first line is ``header`` exactly; a file whose
    COPY fails is parsed row by row instead (which raises ``BillMalformed`` or yields what it accepts), so this
    never refuses a bill the parser accepts. ``tests/test_reconciliation_load.py`` checks both give equal rows."""

    header: bytes
    columns: str
    select: str
    encoding: str = "UTF8"


class BillFile:
    """A downloaded bill, spooled to disk: iterating it parses the rows one at a time, so that a bill of
    millions of rows never sits in memory. Close it (or use it as a context manager) to drop the file.

    The download and its checks (signature, hash) happen before a ``BillFile`` exists, so only parsing is
    left; a row that does not parse raises ``BillMalformed`` (retryable: a new download may be whole). ``csv``,
    when the format has one, lets reconciliation COPY the file without parsing it (``BillCsv``)."""

    def __init__(
        self, file: IO[bytes] | None, parse: Callable[[IO[bytes]], Iterator[BillRow]], csv: BillCsv | None = None
    ) -> None:
        self.file = file
        self._parse = parse
        self.csv = csv

    @classmethod
    def empty(cls) -> BillFile:
        return cls(None, lambda file: iter(()))

    def __iter__(self) -> Iterator[BillRow]:
        if self.file is None:
            return
        self.file.seek(0)
        try:
            yield from self._parse(self.file)
        except (KeyError, ValueError, IndexError, StopIteration, UnicodeDecodeError) as exc:
            raise BillMalformed(f"bill file is malformed ({exc!r})", code="bill_malformed") from exc

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> BillFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Channel(abc.ABC):
    """One payment channel. Implementations are stateless apart from configuration and an HTTP client."""

    name: str
    currencies: frozenset[str]
    # The account the adapter acts for at the channel (Alipay app_id, WeChat Pay mchid, sandbox merchant id):
    # circuit breakers are kept per account.
    account: str = ""
    # The zone whose calendar days the channel's bills cover (Alipay and WeChat Pay: Beijing time).
    bill_timezone: str = "UTC"

    @abc.abstractmethod
    def create_trade(
        self,
        *,
        out_trade_no: str,
        amount: int,
        currency: str,
        description: str,
        notify_url: str,
        expires_at: dt.datetime,
    ) -> TradeResult: ...

    @abc.abstractmethod
    def query_trade(self, *, out_trade_no: str) -> TradeResult: ...

    @abc.abstractmethod
    def close_trade(self, *, out_trade_no: str) -> TradeResult:
        """Close an unpaid trade. Answers the trade as the channel now has it: a paid trade comes back
        ``SUCCEEDED`` rather than as an error, because the caller must then record the payment."""

    @abc.abstractmethod
    def refund(
        self, *, out_trade_no: str, out_refund_no: str, amount: int, total_amount: int, currency: str, reason: str
    ) -> RefundResult: ...

    @abc.abstractmethod
    def query_refund(self, *, out_trade_no: str, out_refund_no: str) -> RefundResult: ...

    @abc.abstractmethod
    def parse_notification(self, *, headers: Mapping[str, str], body: bytes) -> Notification:
        """Verify and parse an inbound notification; raise ``InvalidNotification`` if anything is off."""

    @abc.abstractmethod
    def notification_reply(self, *, accepted: bool) -> NotificationReply: ...

    @abc.abstractmethod
    def download_bill(self, *, day: dt.date) -> BillFile:
        """The channel's trade bill of ``day`` (a day of ``bill_timezone``), downloaded and verified. Raises
        ``BillNotReady`` while the channel has not made it yet."""


def notification_to_dict(notification: Notification) -> dict:
    """A JSON-safe form of a verified notification, to store and apply later without re-verifying."""

    def plain(obj: object) -> dict | None:
        if obj is None:
            return None
        return {k: (v.isoformat() if isinstance(v, dt.datetime) else str(v) if isinstance(v, enum.Enum) else v)
                for k, v in vars(obj).items()}

    return {
        "notification_id": notification.notification_id,
        "out_trade_no": notification.out_trade_no,
        "trade": plain(notification.trade),
        "refund": plain(notification.refund),
    }


def notification_from_dict(data: Mapping) -> Notification:
    def when(value: str | None) -> dt.datetime | None:
        return dt.datetime.fromisoformat(value) if value else None

    trade = refund = None
    if data.get("trade"):
        t = dict(data["trade"])
        trade = TradeResult(**{**t, "status": TradeStatus(t["status"]), "paid_at": when(t.get("paid_at"))})
    if data.get("refund"):
        r = dict(data["refund"])
        refund = RefundResult(
            **{**r, "status": RefundStatus(r["status"]), "succeeded_at": when(r.get("succeeded_at"))}
        )
    return Notification(data["notification_id"], data["out_trade_no"], trade=trade, refund=refund)

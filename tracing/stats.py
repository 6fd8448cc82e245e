"""Management statistics per authority and period, worked out from the trace store.

Why: an authority wants to see what going digital did for it: how many letters went
out digitally, on paper and as NemSMS, what they cost and saved at the unit prices
(MEMO.md: 8.00 kr per physical letter, 0.65 kr per digital one, configurable), how
many were read and how soon, whether notifications reached people, and why messages
were rejected. The trace already holds every lifecycle event, so the figures are a
query over it rather than one more projection to keep in step; a replay of
dp2.lifecycle rebuilds them with the store.

How a message is counted (one rule each, so every figure of a period is about the
same set of messages):

* **Period**: the UTC day, ISO week or month holding the message's *first event*
  (the summary's firstSeen, normally its SUBMITTED). Everything about the message
  (channel, read, notifications, rejection) counts in that period even when it
  happened later: a period is a cohort. The figures of recent periods therefore
  still grow as reads and late events arrive.
* **Sender**: the first senderID on the message's timeline (the summary's senderID):
  the CVR for an authority, a pseudonym for a citizen. ``sender=None`` counts every
  message; ``sender=cvr`` only that sender's (the dashboard's access rule). A message
  with no senderID yet (only SUBMITTED seen) counts only in the "all" figures.
* **Channel**, at most one per message: PRINTED makes it print (a paper letter was
  paid for, even after a digital delivery); else DELIVERED makes it NemSMS when the
  delivery's messageType is NEMSMS, otherwise digital; else the channel of its last
  ROUTED, unless a FAILED or EXPIRED follows it (routed, outcome not yet reported);
  else none (rejected, scheduled, recalled, failed, not yet routed).
* **Read**: a digital message (NemSMS excluded: the text *is* the notification) with
  a READ. Time to read runs from its first DELIVERED to its first READ, 0 when the
  actors' clocks put the READ first.
* **Notification**: a message with a NOTIFIED succeeded; one with NOTIFICATION_FAILED
  and no NOTIFIED failed.
* **Rejection**: a message with a REJECTED, once, under its first reasonCode.

One pass over the window's events, from the store's columns; a record is decoded
only for what they lack: the channel of a message that is routed but has no outcome
yet, and the messageType of a delivery that may be a NemSMS.
"""

from __future__ import annotations

import bisect
import csv
import io
import itertools
import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from brokers.runtime.records import iso_z
from schemas import codec
from schemas.models import LifecycleEvent, LifecycleState
from tracing.store import BadQueryError, StatsRow, TraceStore

S = LifecycleState
KINDS = ("day", "week", "month")
MAX_PERIODS = 1000
"""More periods than this in one query is a mistake (a day's bucket over decades)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CENT = Decimal("0.01")


@dataclass(frozen=True)
class Prices:
    """What one letter costs, in kroner: a physical one and a digital one."""

    physical: Decimal = Decimal("8.00")
    digital: Decimal = Decimal("0.65")

    def __post_init__(self) -> None:
        for name, value in (("physical", self.physical), ("digital", self.digital)):
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise BadQueryError(
                    f"the {name} price {value!r} is not an amount of kroner",
                    hint="Give prices as non-negative decimals, e.g. 8.00 and 0.65.",
                )


DEFAULT_PRICES = Prices()


@dataclass(frozen=True)
class PeriodStats:
    """The figures of one sender (or all, when None) for one period; see the module."""

    period: str  # "2026-11-27" (day), "2026-W48" (ISO week), "2026-11" (month)
    start: datetime  # UTC
    end: datetime  # UTC, exclusive
    sender: str | None
    messages: int
    digital: int
    print: int
    nemsms: int
    digital_share: float | None  # (digital + nemsms) / (digital + nemsms + print), in %
    cost: Decimal
    savings: Decimal  # against sending all of them on paper
    read: int
    read_rate: float | None  # read / digital, in %
    median_time_to_read_s: float | None
    notified: int
    notification_failed: int  # messages whose every notification failed
    notification_success: float | None  # notified / (notified + failed), in %
    rejections: dict[str, int]


def period_bounds(kind: str, moment: datetime) -> tuple[str, datetime, datetime]:
    """The label, start and (exclusive) end of the UTC period of `kind` holding `moment`."""
    moment = _utc(moment)
    day = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    try:
        if kind == "day":
            return day.date().isoformat(), day, day + timedelta(days=1)
        if kind == "week":
            year, week, weekday = day.isocalendar()
            monday = day - timedelta(days=weekday - 1)
            return f"{year:04d}-W{week:02d}", monday, monday + timedelta(days=7)
        if kind == "month":
            first = day.replace(day=1)
            following = (first + timedelta(days=32)).replace(day=1)
            return f"{first.year:04d}-{first.month:02d}", first, following
    except OverflowError as exc:
        raise BadQueryError(
            f"the {kind} of {_iso(moment)} runs past the year 9999",
            hint="Give times before 9999-12.",
        ) from exc
    raise BadQueryError(
        f"period {kind!r} is not one of {', '.join(KINDS)}",
        hint="Choose day, week or month.",
    )


def compute(
    store: TraceStore,
    *,
    kind: str,
    start: datetime,
    end: datetime,
    sender: str | None = None,
    prices: Prices = DEFAULT_PRICES,
) -> list[PeriodStats]:
    """One entry per period touching [start, end), oldest first, empty periods included.

    `store` is the trace store (SQLite or PostgreSQL: tracing.store). Each period
    counts all of its messages, also those before `start` or after `end` within it.
    """
    periods = _periods(kind, _utc(start), _utc(end))
    starts = [_micros(p_start) for _, p_start, _ in periods]
    tallies = [_Tally() for _ in periods]
    for first_seen, rows in _messages(store, periods[0][1], periods[-1][2], sender):
        tallies[bisect.bisect_right(starts, first_seen) - 1].add(_facts(rows))
    return [
        tally.stats(label, p_start, p_end, sender, prices)
        for (label, p_start, p_end), tally in zip(periods, tallies, strict=True)
    ]


def senders(store: TraceStore) -> list[str]:
    """The authorities (8-digit CVR senders) the trace has seen, in order."""
    return store.authority_senders()


FIELDS = (
    "period",
    "start",
    "end",
    "sender",
    "messages",
    "digital",
    "print",
    "nemsms",
    "digital_share",
    "cost",
    "savings",
    "read",
    "read_rate",
    "median_time_to_read_s",
    "notified",
    "notification_failed",
    "notification_success",
    "rejections",
)
"""The fields of `to_json`'s objects and the columns of `to_csv`, in order."""


def to_json(stats: list[PeriodStats]) -> list[dict[str, Any]]:
    """JSON-ready dicts: amounts as strings with 2 decimals, % to 2 decimals, times ISO Z."""
    return [
        {
            "period": s.period,
            "start": _iso(s.start),
            "end": _iso(s.end),
            "sender": s.sender,
            "messages": s.messages,
            "digital": s.digital,
            "print": s.print,
            "nemsms": s.nemsms,
            "digital_share": _round(s.digital_share),
            "cost": _kroner(s.cost),
            "savings": _kroner(s.savings),
            "read": s.read,
            "read_rate": _round(s.read_rate),
            "median_time_to_read_s": _round(s.median_time_to_read_s, 3),
            "notified": s.notified,
            "notification_failed": s.notification_failed,
            "notification_success": _round(s.notification_success),
            "rejections": dict(s.rejections),
        }
        for s in stats
    ]


def to_csv(stats: list[PeriodStats]) -> str:
    """A header row and one row per period, as `to_json`; rejections as "CODE:n;CODE:n"."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(FIELDS)
    for row in to_json(stats):
        row["rejections"] = ";".join(f"{code}:{n}" for code, n in row["rejections"].items())
        writer.writerow("" if row[name] is None else row[name] for name in FIELDS)
    return out.getvalue()


# --- counting ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Facts:
    """What one message contributes to its period's figures."""

    channel: str | None  # "digital", "print", "nemsms" or None
    read_delay_s: float | None
    read: bool
    notified: bool
    notification_failed: bool
    rejection: str | None


@dataclass(slots=True)
class _Tally:
    messages: int = 0
    channels: Counter[str] = field(default_factory=Counter)
    read: int = 0
    delays: list[float] = field(default_factory=list)
    notified: int = 0
    notification_failed: int = 0
    rejections: Counter[str] = field(default_factory=Counter)

    def add(self, facts: _Facts) -> None:
        self.messages += 1
        if facts.channel is not None:
            self.channels[facts.channel] += 1
        if facts.read:
            self.read += 1
            if facts.read_delay_s is not None:
                self.delays.append(facts.read_delay_s)
        self.notified += facts.notified
        self.notification_failed += facts.notification_failed
        if facts.rejection is not None:
            self.rejections[facts.rejection] += 1

    def stats(
        self, label: str, start: datetime, end: datetime, sender: str | None, prices: Prices
    ) -> PeriodStats:
        digital, printed, nemsms = (self.channels[c] for c in ("digital", "print", "nemsms"))
        electronic = digital + nemsms
        return PeriodStats(
            period=label,
            start=start,
            end=end,
            sender=sender,
            messages=self.messages,
            digital=digital,
            print=printed,
            nemsms=nemsms,
            digital_share=_percent(electronic, electronic + printed),
            cost=printed * prices.physical + electronic * prices.digital,
            savings=electronic * (prices.physical - prices.digital),
            read=self.read,
            read_rate=_percent(self.read, digital),
            median_time_to_read_s=statistics.median(self.delays) if self.delays else None,
            notified=self.notified,
            notification_failed=self.notification_failed,
            notification_success=_percent(self.notified, self.notified + self.notification_failed),
            rejections=dict(sorted(self.rejections.items())),
        )


_Row = StatsRow


def _messages(
    store: TraceStore, since: datetime, until: datetime, sender: str | None
) -> Iterator[tuple[int, list[_Row]]]:
    """(firstSeen, events in timeline order) of each message first seen in [since, until)."""
    rows = iter(store.stats_rows(since, until, sender))
    for _, group in itertools.groupby(rows, key=lambda row: row[0]):
        events = list(group)
        yield events[0][1], events


def _facts(rows: list[_Row]) -> _Facts:
    """The message's contribution, by the module's rules, from its timeline."""
    printed = nemsms = notified = notification_failed = False
    delivered_at: int | None = None
    read_at: int | None = None
    routed: bytes | None = None  # the last ROUTED's record, decoded only when it decides
    rejection: str | None = None
    for _, _, state, occurred_at, reason_code, record in rows:
        if state == S.PRINTED:
            printed = True
        elif state == S.DELIVERED and record is not None:
            delivered_at = occurred_at if delivered_at is None else delivered_at
            # Avro keeps strings as plain UTF-8: a record without these bytes cannot
            # say NEMSMS, so only the few that contain them are decoded (decoding is
            # most of the cost of the statistics).
            nemsms = nemsms or (b"NEMSMS" in record and _message_type(record) == "NEMSMS")
        elif state == S.ROUTED:
            routed = record
        elif state in (S.FAILED, S.EXPIRED):
            routed = None
        elif state == S.READ:
            read_at = occurred_at if read_at is None else read_at
        elif state == S.NOTIFIED:
            notified = True
        elif state == S.NOTIFICATION_FAILED:
            notification_failed = True
        elif state == S.REJECTED and rejection is None:
            rejection = reason_code or "UNKNOWN"
    channel = _channel(
        printed=printed, delivered=delivered_at is not None, nemsms=nemsms, routed=routed
    )
    read = channel == "digital" and read_at is not None
    delay = (
        max(0, read_at - delivered_at) / 1e6
        if read and read_at is not None and delivered_at is not None
        else None
    )
    return _Facts(
        channel=channel,
        read_delay_s=delay,
        read=read,
        notified=notified,
        notification_failed=notification_failed and not notified,
        rejection=rejection,
    )


def _channel(*, printed: bool, delivered: bool, nemsms: bool, routed: bytes | None) -> str | None:
    """PRINTED over DELIVERED over the last ROUTED still standing (see the module)."""
    if printed:
        return "print"
    if delivered:
        return "nemsms" if nemsms else "digital"
    if routed is None:
        return None
    routed_to = codec.decode(routed, LifecycleEvent).channel
    return routed_to if routed_to in ("digital", "print") else None


def _message_type(record: bytes) -> str | None:
    return codec.decode(record, LifecycleEvent).attributes.get("messageType")


# --- helpers -----------------------------------------------------------------------------


def _periods(kind: str, start: datetime, end: datetime) -> list[tuple[str, datetime, datetime]]:
    if end <= start:
        raise BadQueryError(
            f"the window ends ({_iso(end)}) before it starts ({_iso(start)})",
            hint="Give an end after the start.",
        )
    periods = [period_bounds(kind, start)]
    while periods[-1][2] < end:
        if len(periods) == MAX_PERIODS:
            raise BadQueryError(
                f"the window holds more than {MAX_PERIODS} {kind}s",
                hint="Shorten the window or choose a longer period (week, month).",
            )
        periods.append(period_bounds(kind, periods[-1][2]))
    return periods


def _utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive time counts as UTC, as in tracing.store."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _micros(moment: datetime) -> int:
    return (_utc(moment) - _EPOCH) // timedelta(microseconds=1)


def _iso(moment: datetime) -> str:
    return iso_z(_utc(moment), "auto")


def _percent(part: int, whole: int) -> float | None:
    return None if whole == 0 else 100 * part / whole


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _kroner(amount: Decimal) -> str:
    return str(amount.quantize(_CENT, rounding=ROUND_HALF_UP))

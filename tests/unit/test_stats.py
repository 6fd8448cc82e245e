"""Management statistics match a known set of messages, and the monitoring files hold together.

The known set (two authorities over two days, Mon 2026-11-30 in November and
Tue 2026-12-01 in December, both in ISO week 2026-W49):

| message | sender | day | outcome                              | notification                |
|---------|--------|-----|--------------------------------------|-----------------------------|
| a1      | A      | 1   | digital, read after 60 s             | SMS failed, e-mail NOTIFIED |
| a2      | A      | 1   | digital, read after 120 s            | NOTIFIED                    |
| a3      | A      | 1   | digital, read after 180 s            | NOTIFIED                    |
| a4      | A      | 1   | digital, read after 600 s (on day 2) | NOTIFIED                    |
| a5      | A      | 1   | digital, not read                    | NOTIFIED                    |
| a6      | A      | 1   | printed                              |                             |
| a7      | A      | 1   | rejected INVALID_CVR                 |                             |
| a8      | A      | 2   | digital, not read                    | NOTIFICATION_FAILED         |
| a9      | A      | 2   | NemSMS                               |                             |
| b1      | B      | 2   | printed                              |                             |
| b2      | B      | 2   | rejected SIGNATURE_INVALID           |                             |

A is CVR 29189846, B is CVR 12345678.

So overall: 11 messages, 6 digital (4 read), 2 printed, 1 NemSMS, 2 rejected,
5 messages notified and 1 whose only notification failed.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from brokers.stack.supervisor import PORT_OFFSETS
from schemas.models import LifecycleEvent, LifecycleState
from tracing.stats import (
    FIELDS,
    MAX_PERIODS,
    PeriodStats,
    Prices,
    compute,
    period_bounds,
    senders,
    to_csv,
    to_json,
)
from tracing.store import BadQueryError, SqliteTraceStore, TraceStore

S = LifecycleState
ROOT = Path(__file__).resolve().parents[2]
A = "29189846"
B = "12345678"
DAY1 = datetime(2026, 11, 30, tzinfo=UTC)  # Monday, ISO week 49, November
DAY2 = datetime(2026, 12, 1, tzinfo=UTC)  # Tuesday, ISO week 49, December
WEEK_END = datetime(2026, 12, 7, tzinfo=UTC)


class Timeline:
    """Builds the lifecycle events of messages, as the services would emit them."""

    def __init__(self) -> None:
        self.events: list[LifecycleEvent] = []

    def ev(
        self,
        message: str,
        state: LifecycleState,
        at: datetime,
        *,
        sender: str | None,
        channel: str | None = None,
        reason: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> None:
        self.events.append(
            LifecycleEvent(
                eventId=f"{message}/{state.value}/{len(self.events)}",
                messageUUID=message,
                state=state,
                actor="test",
                occurredAt=at,
                sequence=len(self.events),
                senderID=sender,
                channel=channel,
                reasonCode=reason,
                attributes=attributes or {},
            )
        )

    def submitted(self, message: str, sender: str, at: datetime) -> None:
        # The SDK's SUBMITTED carries no sender; the validator's ACCEPTED does.
        self.ev(message, S.SUBMITTED, at, sender=None)
        self.ev(message, S.ACCEPTED, at + timedelta(seconds=1), sender=sender)

    def digital(
        self,
        message: str,
        sender: str,
        at: datetime,
        *,
        read_after_s: int | None = None,
        notified: bool = False,
        notification_failed: bool = False,
        message_type: str = "DIGITALPOST",
        label: str | None = None,
    ) -> None:
        self.submitted(message, sender, at)
        self.ev(message, S.ROUTED, at + timedelta(seconds=2), sender=sender, channel="digital")
        delivered = at + timedelta(seconds=3)
        facts = {"provider": "mitpost", "messageType": message_type}
        if label is not None:
            facts["label"] = label
        self.ev(message, S.DELIVERED, delivered, sender=sender, channel="digital", attributes=facts)
        if notification_failed:
            self.ev(message, S.NOTIFICATION_FAILED, delivered, sender=sender, channel="SMS")
        if notified:
            self.ev(message, S.NOTIFIED, delivered, sender=sender, channel="EMAIL")
        if read_after_s is not None:
            self.ev(message, S.READ, delivered + timedelta(seconds=read_after_s), sender=sender)

    def printed(self, message: str, sender: str, at: datetime) -> None:
        self.submitted(message, sender, at)
        self.ev(message, S.ROUTED, at + timedelta(seconds=2), sender=sender, channel="print")
        self.ev(message, S.PRINTED, at + timedelta(seconds=60), sender=sender, channel="print")

    def rejected(self, message: str, sender: str, at: datetime, reason: str) -> None:
        self.ev(message, S.SUBMITTED, at, sender=None)
        self.ev(message, S.REJECTED, at + timedelta(seconds=1), sender=sender, reason=reason)


def known_set() -> list[LifecycleEvent]:
    """The events of the module docstring's table."""
    t = Timeline()
    h = timedelta(hours=1)
    t.digital("a1", A, DAY1 + 9 * h, read_after_s=60, notified=True, notification_failed=True)
    t.digital("a2", A, DAY1 + 10 * h, read_after_s=120, notified=True)
    t.digital("a3", A, DAY1 + 11 * h, read_after_s=180, notified=True)
    # Delivered at 23:50:03, read at 00:00:03 the next day: still day 1's message.
    t.digital("a4", A, DAY1 + timedelta(hours=23, minutes=50), read_after_s=600, notified=True)
    t.digital("a5", A, DAY1 + 12 * h, notified=True)
    t.printed("a6", A, DAY1 + 13 * h)
    t.rejected("a7", A, DAY1 + 14 * h, "INVALID_CVR")
    t.digital("a8", A, DAY2 + 9 * h, notification_failed=True)
    t.digital("a9", A, DAY2 + 10 * h, message_type="NEMSMS")
    t.printed("b1", B, DAY2 + 11 * h)
    t.rejected("b2", B, DAY2 + 12 * h, "SIGNATURE_INVALID")
    return t.events


def add_known_set(store: TraceStore) -> TraceStore:
    """`store` with the known set added, newest first and one event twice."""
    events = known_set()
    for event in reversed(events):  # arrival order must not matter
        store.add(event)
    store.add(events[0])  # a Kafka redelivery must not count twice
    return store


@pytest.fixture
def empty() -> Iterator[TraceStore]:
    """An empty trace store (tests/contract runs these cases on PostgreSQL too)."""
    with SqliteTraceStore(":memory:") as store:
        yield store


@pytest.fixture
def db(empty: TraceStore) -> TraceStore:
    """A trace store holding the known set."""
    return add_known_set(empty)


def only(stats: list[PeriodStats]) -> PeriodStats:
    assert len(stats) == 1
    return stats[0]


def test_whole_week_for_everyone_matches_the_hand_count(db: TraceStore) -> None:
    """Every figure of the week over all senders equals the one worked out by hand."""
    s = only(compute(db, kind="week", start=DAY1, end=DAY2))
    assert (s.period, s.start, s.end, s.sender) == ("2026-W49", DAY1, WEEK_END, None)
    assert s.messages == 11  # a1..a9, b1, b2
    assert (s.digital, s.print, s.nemsms) == (6, 2, 1)  # a1-a5 + a8; a6 + b1; a9
    # (6 + 1) / (6 + 1 + 2) = 7 / 9 = 77.777... %
    assert s.digital_share == pytest.approx(77.7778, abs=1e-4)
    assert s.cost == Decimal("20.55")  # 2 x 8.00 + 7 x 0.65 = 16.00 + 4.55
    assert s.savings == Decimal("51.45")  # 7 x (8.00 - 0.65) = 7 x 7.35
    assert s.read == 4  # a1..a4
    assert s.read_rate == pytest.approx(66.6667, abs=1e-4)  # 4 / 6
    assert s.median_time_to_read_s == 150.0  # median of 60, 120, 180, 600 = (120 + 180) / 2
    # a1..a5 notified (a1's failed SMS does not matter, its e-mail went out); a8 failed only.
    assert (s.notified, s.notification_failed) == (5, 1)
    assert s.notification_success == pytest.approx(83.3333, abs=1e-4)  # 5 / 6
    assert s.rejections == {"INVALID_CVR": 1, "SIGNATURE_INVALID": 1}


def test_days_split_by_first_event_and_late_reads_stay_in_their_day(
    db: TraceStore,
) -> None:
    """Each day counts the messages first seen that day, with everything that befell them later."""
    day1, day2 = compute(db, kind="day", start=DAY1, end=DAY2 + timedelta(hours=1))
    assert (day1.period, day2.period) == ("2026-11-30", "2026-12-01")
    assert (day1.start, day1.end, day2.start, day2.end) == (
        DAY1,
        DAY2,
        DAY2,
        DAY2 + timedelta(days=1),
    )
    # Day 1: a1..a7.
    assert day1.messages == 7
    assert (day1.digital, day1.print, day1.nemsms) == (5, 1, 0)
    assert day1.digital_share == pytest.approx(83.3333, abs=1e-4)  # 5 / 6
    assert day1.cost == Decimal("11.25")  # 8.00 + 5 x 0.65 = 8.00 + 3.25
    assert day1.savings == Decimal("36.75")  # 5 x 7.35
    assert day1.read == 4  # a4 was read after midnight, but it is day 1's message
    assert day1.read_rate == 80.0  # 4 / 5
    assert day1.median_time_to_read_s == 150.0
    assert (day1.notified, day1.notification_failed, day1.notification_success) == (5, 0, 100.0)
    assert day1.rejections == {"INVALID_CVR": 1}
    # Day 2: a8, a9, b1, b2.
    assert day2.messages == 4
    assert (day2.digital, day2.print, day2.nemsms) == (1, 1, 1)
    assert day2.digital_share == pytest.approx(66.6667, abs=1e-4)  # (1 + 1) / 3
    assert day2.cost == Decimal("9.30")  # 8.00 + 2 x 0.65
    assert day2.savings == Decimal("14.70")  # 2 x 7.35
    assert (day2.read, day2.read_rate, day2.median_time_to_read_s) == (0, 0.0, None)
    assert (day2.notified, day2.notification_failed, day2.notification_success) == (0, 1, 0.0)
    assert day2.rejections == {"SIGNATURE_INVALID": 1}
    # The days add up to the week: 11.25 + 9.30 = 20.55 and 36.75 + 14.70 = 51.45.
    assert day1.cost + day2.cost == Decimal("20.55")
    assert day1.savings + day2.savings == Decimal("51.45")


def test_months_split_at_the_month_boundary(db: TraceStore) -> None:
    """A window over the turn of the month gives November and December, each whole."""
    nov, dec = compute(
        db, kind="month", start=DAY1 + timedelta(hours=5), end=DAY2 + timedelta(hours=1)
    )
    assert (nov.period, nov.start, nov.end) == ("2026-11", datetime(2026, 11, 1, tzinfo=UTC), DAY2)
    assert (dec.period, dec.start, dec.end) == (
        "2026-12",
        DAY2,
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert (nov.messages, nov.cost, dec.messages, dec.cost) == (
        7,
        Decimal("11.25"),
        4,
        Decimal("9.30"),
    )


def test_an_authority_sees_only_its_own_messages(db: TraceStore) -> None:
    """Filtering by a CVR counts that sender's messages and nobody else's."""
    a = only(compute(db, kind="week", start=DAY1, end=DAY2, sender=A))
    assert a.sender == A
    assert a.messages == 9  # a1..a9
    assert (a.digital, a.print, a.nemsms) == (6, 1, 1)
    assert a.digital_share == 87.5  # 7 / 8
    assert a.cost == Decimal("12.55")  # 8.00 + 7 x 0.65
    assert a.savings == Decimal("51.45")  # 7 x 7.35
    assert (a.read, a.median_time_to_read_s) == (4, 150.0)
    assert (a.notified, a.notification_failed) == (5, 1)
    assert a.rejections == {"INVALID_CVR": 1}

    b = only(compute(db, kind="week", start=DAY1, end=DAY2, sender=B))
    assert b.messages == 2  # b1, b2
    assert (b.digital, b.print, b.nemsms, b.digital_share) == (0, 1, 0, 0.0)
    assert (b.cost, b.savings) == (Decimal("8.00"), Decimal("0.00"))
    assert (b.read_rate, b.median_time_to_read_s, b.notification_success) == (None, None, None)
    assert b.rejections == {"SIGNATURE_INVALID": 1}

    stranger = only(compute(db, kind="week", start=DAY1, end=DAY2, sender="87654321"))
    assert (stranger.messages, stranger.digital_share, stranger.rejections) == (0, None, {})


def test_prices_are_configurable(db: TraceStore) -> None:
    """Other unit prices change cost and savings and nothing else."""
    prices = Prices(physical=Decimal("10.00"), digital=Decimal("0.50"))
    s = only(compute(db, kind="week", start=DAY1, end=DAY2, prices=prices))
    assert s.cost == Decimal("23.50")  # 2 x 10.00 + 7 x 0.50
    assert s.savings == Decimal("66.50")  # 7 x (10.00 - 0.50)
    assert (s.messages, s.digital, s.print, s.nemsms) == (11, 6, 2, 1)


def test_nonsense_prices_fail_fast() -> None:
    """A negative or non-finite price is refused with a how-to-fix hint."""
    for bad in (Decimal("-1"), Decimal("NaN"), Decimal("Infinity")):
        with pytest.raises(BadQueryError):
            Prices(physical=bad)


def test_every_period_of_the_window_is_listed_even_empty(db: TraceStore) -> None:
    """Periods without messages are listed with zeros and no shares, oldest first."""
    stats = compute(db, kind="day", start=DAY1 - timedelta(days=1), end=DAY2 + timedelta(days=2))
    assert [s.period for s in stats] == ["2026-11-29", "2026-11-30", "2026-12-01", "2026-12-02"]
    empty = stats[0]
    assert (empty.messages, empty.cost, empty.savings) == (0, Decimal(0), Decimal(0))
    assert (empty.digital_share, empty.read_rate, empty.notification_success) == (None, None, None)


def test_senders_lists_only_authorities(empty: TraceStore) -> None:
    """senders() lists 8-digit CVRs in order; a citizen's pseudonym counts only under "all"."""
    t = Timeline()
    t.digital("m1", B, DAY1)
    t.digital("m2", A, DAY1)
    t.digital("m3", "pseudo-4f1c9a", DAY1)  # a citizen writing to an authority
    t.ev("m4", S.SUBMITTED, DAY1, sender=None)  # no sender known yet
    for event in t.events:
        empty.add(event)
    assert senders(empty) == [B, A]  # 12345678 before 29189846
    everyone = only(compute(empty, kind="day", start=DAY1, end=DAY2))
    assert (everyone.messages, everyone.digital) == (4, 3)


def test_channel_rules_for_messages_in_transit_failed_or_printed_after_delivery(
    empty: TraceStore,
) -> None:
    """A message counts once: PRINTED over DELIVERED over its last ROUTED not followed by FAILED."""
    t = Timeline()
    t.submitted("in-transit", A, DAY1)
    t.ev("in-transit", S.ROUTED, DAY1 + timedelta(seconds=2), sender=A, channel="digital")
    t.submitted("failed", A, DAY1)
    t.ev("failed", S.ROUTED, DAY1 + timedelta(seconds=2), sender=A, channel="digital")
    t.ev("failed", S.FAILED, DAY1 + timedelta(seconds=3), sender=A, reason="MAILBOX_DOWN")
    t.digital("resent-on-paper", A, DAY1)
    t.ev("resent-on-paper", S.PRINTED, DAY1 + timedelta(days=8), sender=A, channel="print")
    t.submitted("print-pending", A, DAY1)
    t.ev("print-pending", S.ROUTED, DAY1 + timedelta(seconds=2), sender=A, channel="print")
    t.submitted("scheduled", A, DAY1)
    t.ev("scheduled", S.SCHEDULED, DAY1 + timedelta(seconds=2), sender=A)
    # Clocks differ: the app says it was read 5 s before the mailbox says delivered.
    t.digital("skewed", A, DAY1 + timedelta(hours=1), read_after_s=-5)
    t.digital("says-nemsms", A, DAY1, label="NEMSMS fees from 2027")  # a letter, not a NemSMS
    for event in t.events:
        empty.add(event)
    s = only(compute(empty, kind="day", start=DAY1, end=DAY2))
    assert s.messages == 7
    # digital: in-transit, skewed, says-nemsms; print: resent-on-paper, print-pending;
    # none: failed, scheduled
    assert (s.digital, s.print, s.nemsms) == (3, 2, 0)
    assert (s.read, s.median_time_to_read_s) == (1, 0.0)
    assert s.cost == Decimal("17.95")  # 2 x 8.00 + 3 x 0.65


def test_period_bounds_use_utc_iso_weeks_and_calendar_months() -> None:
    """Days, ISO weeks (week 53 across New Year) and months have the expected labels and bounds."""
    new_year = datetime(2027, 1, 1, 15, tzinfo=UTC)
    assert period_bounds("day", new_year) == (
        "2027-01-01",
        datetime(2027, 1, 1, tzinfo=UTC),
        datetime(2027, 1, 2, tzinfo=UTC),
    )
    assert period_bounds("week", new_year) == (
        "2026-W53",
        datetime(2026, 12, 28, tzinfo=UTC),
        datetime(2027, 1, 4, tzinfo=UTC),
    )
    assert period_bounds("month", datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == (
        "2026-12",
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_bounds("week", datetime(2026, 11, 27, tzinfo=UTC))[0] == "2026-W48"
    # 00:30 in Copenhagen on 1 December is still 30 November in UTC; naive times are UTC.
    cph = timezone(timedelta(hours=1))
    assert period_bounds("month", datetime(2026, 12, 1, 0, 30, tzinfo=cph))[0] == "2026-11"
    assert period_bounds("day", datetime(2026, 12, 1, 0, 30))[0] == "2026-12-01"


def test_malformed_queries_are_refused(db: TraceStore) -> None:
    """An unknown period kind, an empty window or far too many periods raise BadQueryError."""
    with pytest.raises(BadQueryError, match="year"):
        compute(db, kind="year", start=DAY1, end=DAY2)
    with pytest.raises(BadQueryError, match="before it starts"):
        compute(db, kind="day", start=DAY2, end=DAY1)
    with pytest.raises(BadQueryError, match=str(MAX_PERIODS)):
        compute(db, kind="day", start=DAY1, end=DAY1 + timedelta(days=MAX_PERIODS + 1))
    with pytest.raises(BadQueryError, match="9999"):
        compute(db, kind="month", start=datetime(9999, 12, 2), end=datetime(9999, 12, 30))


def test_json_export_round_trips_with_money_as_strings(db: TraceStore) -> None:
    """to_json survives json.dumps/loads, with kroner to 2 decimals and Z times."""
    rows = to_json(compute(db, kind="week", start=DAY1, end=DAY2, sender=A))
    assert json.loads(json.dumps(rows)) == rows
    (row,) = rows
    assert list(row) == list(FIELDS)
    assert row["start"] == "2026-11-30T00:00:00Z"
    assert row["end"] == "2026-12-07T00:00:00Z"
    assert (row["cost"], row["savings"]) == ("12.55", "51.45")
    assert row["digital_share"] == 87.5
    assert row["read_rate"] == 66.67
    assert row["rejections"] == {"INVALID_CVR": 1}


def test_csv_export_has_a_header_and_a_row_per_period(db: TraceStore) -> None:
    """to_csv writes the field names, then one row per period with rejections as CODE:n;CODE:n."""
    text = to_csv(compute(db, kind="day", start=DAY1, end=DAY2 + timedelta(hours=1)))
    header, day1, day2 = list(csv.reader(io.StringIO(text)))
    assert header == list(FIELDS)
    assert (day1[0], day1[9], day1[-1]) == ("2026-11-30", "11.25", "INVALID_CVR:1")
    assert day2 == [
        "2026-12-01",
        "2026-12-01T00:00:00Z",
        "2026-12-02T00:00:00Z",
        "",  # all senders
        "4",
        "1",
        "1",
        "1",
        "66.67",
        "9.30",
        "14.70",
        "0",
        "0.0",
        "",  # no median: nothing read
        "0",
        "1",
        "0.0",
        "SIGNATURE_INVALID:1",
    ]
    week = to_csv(compute(db, kind="week", start=DAY1, end=DAY2))
    assert list(csv.reader(io.StringIO(week)))[1][-1] == "INVALID_CVR:1;SIGNATURE_INVALID:1"


# --- deploy/: Prometheus and Grafana ------------------------------------------------------

DASHBOARD = ROOT / "deploy" / "grafana" / "dp2-overview.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _declared_metrics() -> set[str]:
    """Every metric name given as a string literal in the packages' source."""
    names: set[str] = set()
    for package in ("brokers", "connectors", "tracing"):
        for path in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"\"(dp2_[a-z0-9_]+)\"", path.read_text(encoding="utf-8")))
    return names


def _exprs(dashboard: dict[str, object]) -> list[str]:
    panels = dashboard["panels"]
    assert isinstance(panels, list)
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_dashboard_has_the_panels_asked_for_on_the_prometheus_variable() -> None:
    """The Grafana JSON parses and has the five panels asked for, on the data-source variable."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["schemaVersion"] >= 36
    titles = " | ".join(panel["title"] for panel in dashboard["panels"])
    for wanted in ("Throughput", "Rejections by reason", "Consumer lag", "Notification success"):
        assert wanted in titles
    assert "Digital share" in titles
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert panel["targets"], panel["title"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_every_dashboard_query_names_a_metric_the_code_exports() -> None:
    """Each dp2_ series in the dashboard is declared in the code, each state label is a state."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    declared = _declared_metrics()
    assert {"dp2_records_in", "dp2_rejections", "dp2_trace_events"} <= declared  # grep works
    for expr in _exprs(dashboard):
        series = re.findall(r"\b(dp2_[a-z0-9_]+)", expr)
        assert series or expr.startswith("up{"), expr
        for name in series:
            base = next((name.removesuffix(s) for s in _SUFFIXES if name.endswith(s)), name)
            assert base in declared, f"{name} in {expr!r} is not exported by any service"
        for state in re.findall(r'state="([A-Z_]+)"', expr):
            assert state in LifecycleState.__members__, expr


def test_prometheus_scrapes_the_core_services_on_their_dp2_up_ports() -> None:
    """prometheus.yml parses, labels each target with its service, and uses dp2 up's ports."""
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    targets: dict[str, str] = {}
    for job in config["scrape_configs"]:
        assert job["job_name"].startswith("dp2-")  # the dashboard's "Services up" selects these
        assert job["honor_labels"] is True
        for static in job["static_configs"]:
            for target in static["targets"]:
                targets[static["labels"]["service"]] = target
    for service, offset in PORT_OFFSETS.items():
        assert targets[service] == f"127.0.0.1:{8470 + offset}"
    roles = {name.split("-")[0] for name in targets}
    assert roles == {"tracing", "validator", "router", "mailbox", "notifier", "connector"}

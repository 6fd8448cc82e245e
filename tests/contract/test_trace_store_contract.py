"""The TraceStore contract, the same for SQLite and PostgreSQL: idempotent, ordered, and
correct for any arrival order; search, notifications, throughput and statistics alike.

Each test runs once per backend (the ``store`` fixture); the PostgreSQL one is a
fresh database on the session's real server (tests/conftest.py). What only SQLite
has (WAL files, upgrading old files) stays in tests/unit/test_trace_store.py.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fastavro
import psycopg
import pytest

from brokers.runtime import postgres
from schemas import codec
from schemas.codec import MAGIC, REGISTRY
from schemas.errors import Dp2Error
from schemas.models import LifecycleEvent, LifecycleState, to_avro
from tests.unit import test_stats as stats_cases
from tracing.lifecycle import order_timeline
from tracing.store import BadQueryError, MessageSummary, SqliteTraceStore, TraceStore
from tracing.store_postgres import STORE, PgTraceStore

S = LifecycleState
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def ev(
    message: str,
    state: LifecycleState,
    minutes: int,
    *,
    sender: str | None = "29189846",
    reason: str | None = None,
    recipient: str | None = "ref-abc",
) -> LifecycleEvent:
    return LifecycleEvent(
        eventId=f"{message}/{state.value}/{minutes}",
        messageUUID=message,
        state=state,
        actor="test",
        occurredAt=T0 + timedelta(minutes=minutes),
        sequence=minutes,
        senderID=sender,
        recipientRef=recipient,
        reasonCode=reason,
    )


def delivered_then_late_failure(message: str = "m-1") -> list[LifecycleEvent]:
    """A normal delivery, plus a FAILED that another system reports afterwards."""
    return [
        ev(message, S.SUBMITTED, 0, sender=None, recipient=None),
        ev(message, S.ACCEPTED, 1, recipient=None),
        ev(message, S.ROUTED, 2),
        ev(message, S.DELIVERED, 3),
        ev(message, S.FAILED, 4, reason="MAILBOX_TIMEOUT"),
    ]


Opener = Callable[[], TraceStore]


@pytest.fixture(params=BACKENDS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the backend's store; each call opens the same (at first empty) storage again."""
    opened: list[TraceStore] = []

    def sqlite() -> TraceStore:
        return SqliteTraceStore(tmp_path / "trace" / "trace.sqlite")

    def pg() -> TraceStore:
        return PgTraceStore(request.getfixturevalue("database_url"))

    def open_() -> TraceStore:
        store = sqlite() if request.param == "sqlite" else pg()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Opener) -> TraceStore:
    """A fresh, empty store of the backend."""
    return open_store()


def test_add_is_idempotent_per_event_id(store: TraceStore) -> None:
    """Adding an event again (a Kafka redelivery) returns False and changes nothing."""
    event = ev("m-1", S.SUBMITTED, 0)
    assert store.add(event) is True
    assert store.add(event) is False
    summary = store.summary("m-1")
    assert summary is not None
    assert summary.eventCount == 1
    assert store.timeline("m-1") == [event]


def test_an_event_is_kept_as_the_bytes_it_was_read_from(store: TraceStore) -> None:
    """add(event, raw): tracing hands over the record as read (an older writer's bytes
    among them), and the timeline reads it back as that event."""
    event = ev("m-raw", S.ACCEPTED, 1)
    out = io.BytesIO()
    v1 = REGISTRY.versions("lifecycle_event")[0]
    out.write(MAGIC + v1.fingerprint)
    fastavro.schemaless_writer(out, v1.parsed, to_avro(event))
    assert store.add(event, out.getvalue()) is True
    assert store.add(event, codec.encode(event)) is False
    assert store.timeline("m-raw") == [event]


def test_timeline_is_in_lifecycle_order(store: TraceStore) -> None:
    """The timeline comes back in order_timeline order, whatever the insert order."""
    events = delivered_then_late_failure()
    for event in [events[3], events[0], events[4], events[2], events[1]]:
        store.add(event)
    assert store.timeline("m-1") == events == order_timeline(events)


def test_lookups_fold_the_uuid_to_lower_case(store: TraceStore) -> None:
    """A UUID asked for in upper case finds the message's (lower-case) timeline and summary."""
    events = delivered_then_late_failure("ab-cd")
    for event in events:
        store.add(event)
    assert store.timeline("AB-CD") == events
    assert store.summary("AB-CD") == store.summary("ab-cd") is not None


def test_summary_is_correct_for_out_of_order_arrival(store: TraceStore) -> None:
    """Events arriving newest first still give the derived state, times and first known facts."""
    for event in reversed(delivered_then_late_failure()):
        store.add(event)
    assert store.summary("m-1") == MessageSummary(
        messageUUID="m-1",
        state=S.DELIVERED,
        senderID="29189846",
        recipientRef="ref-abc",
        firstSeen=T0,
        lastUpdate=T0 + timedelta(minutes=4),
        eventCount=5,
        lastReasonCode="MAILBOX_TIMEOUT",
    )


def test_summary_is_the_same_for_every_arrival_order(store: TraceStore) -> None:
    """Every one of the 120 arrival orders of five events gives the same summary and timeline."""
    for event in delivered_then_late_failure("ref"):
        store.add(event)
    reference = store.summary("ref")
    assert reference is not None
    for n, arrival in enumerate(itertools.permutations(range(5))):
        message = f"p-{n:03d}"
        events = delivered_then_late_failure(message)
        for i in arrival:
            store.add(events[i])
        assert store.summary(message) == dataclasses.replace(reference, messageUUID=message)
        assert store.timeline(message) == events


def test_unknown_message_has_no_summary_and_an_empty_timeline(store: TraceStore) -> None:
    """A message without events is None / [], not an error."""
    assert store.summary("nope") is None
    assert store.timeline("nope") == []


def _fill(store: TraceStore) -> None:
    """23 messages ten minutes apart; every third from sender B; every fourth also FAILED late."""
    for i in range(23):
        message = f"m-{i:02d}"
        sender = "B" if i % 3 == 0 else "A"
        store.add(ev(message, S.SUBMITTED, 10 * i, sender=sender))
        store.add(ev(message, S.DELIVERED, 10 * i + 1, sender=sender))
        if i % 4 == 0:
            store.add(ev(message, S.FAILED, 10 * i + 2, sender=sender, reason="X"))
        if i % 5 == 0:
            store.add(ev(message, S.READ, 10 * i + 3, sender=sender))


def _all_pages(store: TraceStore, limit: int, **filters: object) -> list[MessageSummary]:
    items: list[MessageSummary] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = store.search(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        items += page.items
        pages += 1
        assert len(page.items) <= limit
        if page.next is None:
            return items
        assert len(page.items) == limit
        cursor = page.next
        assert pages < 100, "paging does not end"


def _ids(items: list[MessageSummary]) -> list[str]:
    return [s.messageUUID for s in items]


def test_search_pages_through_everything_newest_first(store: TraceStore) -> None:
    """Paging with a small limit visits every message once, newest firstSeen first."""
    _fill(store)
    everything = [f"m-{i:02d}" for i in reversed(range(23))]
    assert _ids(_all_pages(store, limit=5)) == everything
    assert _ids(_all_pages(store, limit=23)) == everything
    assert store.search(limit=23).next is None


def test_search_breaks_ties_of_first_seen_by_uuid(store: TraceStore) -> None:
    """Messages first seen at the same moment page in descending UUID order (bytewise)."""
    names = ["b", "B-upper", "a", "a-", "_x", "z"]
    for name in names:
        store.add(ev(name, S.SUBMITTED, 0))
    expected = sorted((n.lower() for n in names), reverse=True)
    assert _ids(_all_pages(store, limit=2)) == expected


def test_search_by_sender_state_and_time(store: TraceStore) -> None:
    """Filters combine; state matches the DERIVED state; since is inclusive, until exclusive."""
    _fill(store)
    from_b = _ids(_all_pages(store, limit=2, sender="B"))
    assert from_b == [f"m-{i:02d}" for i in reversed(range(23)) if i % 3 == 0]
    read = _ids(_all_pages(store, limit=2, state=S.READ))
    assert read == ["m-20", "m-15", "m-10", "m-05", "m-00"]
    assert _all_pages(store, limit=3, state=S.FAILED) == []  # FAILED after DELIVERED is not it
    delivered = _ids(_all_pages(store, limit=3, state=S.DELIVERED, sender="A"))
    assert delivered == [f"m-{i:02d}" for i in reversed(range(23)) if i % 3 and i % 5]
    window = _all_pages(
        store, limit=2, since=T0 + timedelta(minutes=50), until=T0 + timedelta(minutes=100)
    )
    assert _ids(window) == ["m-09", "m-08", "m-07", "m-06", "m-05"]


def test_search_rejects_a_bad_cursor_and_limit(store: TraceStore) -> None:
    """A cursor not handed out by the store, or a limit out of range, is BAD_QUERY."""
    for cursor in ("garbage!", "bm90IGpzb24", "WyJhIiwxXQ"):  # not base64, not JSON, wrong types
        with pytest.raises(BadQueryError) as caught:
            store.search(cursor=cursor)
        assert caught.value.reason_code == "BAD_QUERY"
    for limit in (0, 501):
        with pytest.raises(BadQueryError):
            store.search(limit=limit)


def test_notifications_are_newest_first_and_per_sender(store: TraceStore) -> None:
    """NOTIFIED and NOTIFICATION_FAILED events only, newest first, by the message's sender."""
    for i, sender in enumerate(["A", "B", "A", "B", "A"]):
        message = f"n-{i}"
        store.add(ev(message, S.SUBMITTED, 10 * i, sender=sender))
        store.add(ev(message, S.DELIVERED, 10 * i + 1, sender=sender))
        state = S.NOTIFICATION_FAILED if i == 3 else S.NOTIFIED
        store.add(ev(message, state, 10 * i + 2, sender=sender))
    everyone = store.notifications()
    assert [(e.messageUUID, e.state) for e in everyone] == [
        ("n-4", S.NOTIFIED),
        ("n-3", S.NOTIFICATION_FAILED),
        ("n-2", S.NOTIFIED),
        ("n-1", S.NOTIFIED),
        ("n-0", S.NOTIFIED),
    ]
    assert [e.messageUUID for e in store.notifications(sender="B")] == ["n-3", "n-1"]
    assert [e.messageUUID for e in store.notifications(limit=2)] == ["n-4", "n-3"]
    assert store.notifications(sender="nobody") == []


def test_throughput_counts_events_per_minute_and_state(store: TraceStore) -> None:
    """(minute, state, count) from `since` on, oldest minute first; one sender's if asked."""
    _fill(store)
    minute0 = int(T0.timestamp()) // 60
    rows = store.throughput(T0 + timedelta(minutes=200))
    assert rows == [
        (minute0 + 200, "SUBMITTED", 1),
        (minute0 + 201, "DELIVERED", 1),
        (minute0 + 202, "FAILED", 1),
        (minute0 + 203, "READ", 1),
        (minute0 + 210, "SUBMITTED", 1),
        (minute0 + 211, "DELIVERED", 1),
        (minute0 + 220, "SUBMITTED", 1),
        (minute0 + 221, "DELIVERED", 1),
    ]
    from_b = store.throughput(T0, sender="B")
    assert sum(count for _, state, count in from_b if state == "SUBMITTED") == 8  # 0, 3, ..., 21
    assert store.throughput(T0 + timedelta(days=1)) == []


@pytest.mark.parametrize(
    "case",
    [
        stats_cases.test_whole_week_for_everyone_matches_the_hand_count,
        stats_cases.test_days_split_by_first_event_and_late_reads_stay_in_their_day,
        stats_cases.test_months_split_at_the_month_boundary,
        stats_cases.test_an_authority_sees_only_its_own_messages,
        stats_cases.test_prices_are_configurable,
        stats_cases.test_every_period_of_the_window_is_listed_even_empty,
        stats_cases.test_malformed_queries_are_refused,
        stats_cases.test_json_export_round_trips_with_money_as_strings,
        stats_cases.test_csv_export_has_a_header_and_a_row_per_period,
    ],
    ids=lambda case: case.__name__.removeprefix("test_"),
)
def test_statistics_of_the_known_set(store: TraceStore, case: Callable[[TraceStore], None]) -> None:
    """Each hand-counted figure of tests/unit/test_stats.py holds on this backend."""
    case(stats_cases.add_known_set(store))


@pytest.mark.parametrize(
    "case",
    [
        stats_cases.test_senders_lists_only_authorities,
        stats_cases.test_channel_rules_for_messages_in_transit_failed_or_printed_after_delivery,
    ],
    ids=lambda case: case.__name__.removeprefix("test_"),
)
def test_statistics_rules(store: TraceStore, case: Callable[[TraceStore], None]) -> None:
    """The statistics' counting rules of tests/unit/test_stats.py hold on this backend."""
    case(store)


def test_reopening_keeps_every_event(open_store: Opener) -> None:
    """What one store wrote, the next one opened on the same storage has, and dedupes."""
    first = open_store()
    for event in delivered_then_late_failure():
        first.add(event)
    first.close()
    again = open_store()
    assert again.timeline("m-1") == delivered_then_late_failure()
    assert again.add(delivered_then_late_failure()[0]) is False


def test_two_stores_on_one_storage_see_each_others_events(open_store: Opener) -> None:
    """Two instances sharing the storage derive one summary from both instances' events."""
    one, two = open_store(), open_store()
    events = delivered_then_late_failure()
    for i, event in enumerate(events):
        (one if i % 2 else two).add(event)
    assert one.summary("m-1") == two.summary("m-1") is not None
    assert two.timeline("m-1") == events
    summary = one.summary("m-1")
    assert summary is not None and summary.eventCount == 5


def test_close_is_safe_twice(store: TraceStore) -> None:
    """Closing twice is harmless; using a closed store is a clear Dp2Error."""
    store.close()
    store.close()
    with pytest.raises(Dp2Error) as caught:
        store.summary("m-1")
    assert caught.value.reason_code == "STORE_CLOSED"


@pytest.mark.postgres
def test_the_postgres_schema_is_versioned(database_url: str) -> None:
    """Opening records each migration once in dp2.schema_migrations; a newer one is refused."""
    PgTraceStore(database_url).close()
    PgTraceStore(database_url).close()  # nothing applied twice
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert postgres.applied(conn, STORE) == [(1, "events and summaries")]
        conn.execute(
            "INSERT INTO dp2.schema_migrations (store, version, name) VALUES (%s, 99, 'future')",
            (STORE,),
        )
    with pytest.raises(postgres.SchemaTooNew) as caught:
        PgTraceStore(database_url)
    assert caught.value.reason_code == "SCHEMA_TOO_NEW"


def test_adds_in_a_batch_are_kept_when_it_ends(open_store: Opener) -> None:
    """The tracing worker adds a fetched batch inside ``batch()``: inside, the store
    reads its own adds and dedupes them; after, another store on the storage has them."""
    first = open_store()
    with first.batch():
        for event in delivered_then_late_failure():
            assert first.add(event) is True
        assert first.add(delivered_then_late_failure()[0]) is False
        assert first.timeline("m-1") == delivered_then_late_failure()
    assert open_store().timeline("m-1") == delivered_then_late_failure()


def test_a_failed_sqlite_batch_leaves_nothing(tmp_path: Path) -> None:
    """On SQLite a batch is one transaction: when the worker's batch raises (to be
    retried whole), none of its adds stays."""
    store = SqliteTraceStore(tmp_path / "trace.sqlite")
    try:
        with pytest.raises(RuntimeError), store.batch():
            for event in delivered_then_late_failure():
                store.add(event)
            raise RuntimeError("the produce round failed")
        assert store.timeline("m-1") == [] and store.summary("m-1") is None
        store.add(delivered_then_late_failure()[0])  # the retry
        assert store.summary("m-1") is not None
    finally:
        store.close()

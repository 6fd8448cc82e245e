"""The SQLite trace store: idempotent, ordered, and correct for any arrival order."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import LifecycleEvent, LifecycleState
from tracing.lifecycle import order_timeline
from tracing.store import BadQueryError, MessageSummary, SqliteTraceStore

S = LifecycleState
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


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


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteTraceStore]:
    """A fresh store, in memory and on disk."""
    path = ":memory:" if request.param == "memory" else tmp_path / "trace" / "trace.sqlite"
    with SqliteTraceStore(path) as opened:
        yield opened


def test_add_is_idempotent_per_event_id(store: SqliteTraceStore) -> None:
    """Adding an event again (a Kafka redelivery) returns False and changes nothing."""
    event = ev("m-1", S.SUBMITTED, 0)
    assert store.add(event) is True
    assert store.add(event) is False
    summary = store.summary("m-1")
    assert summary is not None
    assert summary.eventCount == 1
    assert store.timeline("m-1") == [event]


def test_timeline_is_in_lifecycle_order(store: SqliteTraceStore) -> None:
    """The timeline comes back in order_timeline order, whatever the insert order."""
    events = delivered_then_late_failure()
    for event in [events[3], events[0], events[4], events[2], events[1]]:
        store.add(event)
    assert store.timeline("m-1") == events == order_timeline(events)


def test_summary_is_correct_for_out_of_order_arrival(store: SqliteTraceStore) -> None:
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


@settings(max_examples=30, deadline=None)
@given(st.permutations(delivered_then_late_failure()))
def test_summary_is_the_same_for_every_arrival_order(arrival: list[LifecycleEvent]) -> None:
    """Any permutation of the events gives the same summary and timeline."""
    with SqliteTraceStore(":memory:") as reference, SqliteTraceStore(":memory:") as shuffled:
        for event in delivered_then_late_failure():
            reference.add(event)
        for event in arrival:
            shuffled.add(event)
        assert shuffled.summary("m-1") == reference.summary("m-1")
        assert shuffled.timeline("m-1") == reference.timeline("m-1")


def test_unknown_message_has_no_summary_and_an_empty_timeline(store: SqliteTraceStore) -> None:
    """A message without events is None / [], not an error."""
    assert store.summary("nope") is None
    assert store.timeline("nope") == []


def _fill(store: SqliteTraceStore) -> None:
    """23 messages a minute apart; every third from sender B; every fourth also FAILED late."""
    for i in range(23):
        message = f"m-{i:02d}"
        sender = "B" if i % 3 == 0 else "A"
        store.add(ev(message, S.SUBMITTED, 10 * i, sender=sender))
        store.add(ev(message, S.DELIVERED, 10 * i + 1, sender=sender))
        if i % 4 == 0:
            store.add(ev(message, S.FAILED, 10 * i + 2, sender=sender, reason="X"))
        if i % 5 == 0:
            store.add(ev(message, S.READ, 10 * i + 3, sender=sender))


def _all_pages(store: SqliteTraceStore, limit: int, **filters: object) -> list[MessageSummary]:
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


def test_search_pages_through_everything_newest_first(store: SqliteTraceStore) -> None:
    """Paging with a small limit visits every message once, newest firstSeen first."""
    _fill(store)
    everything = [f"m-{i:02d}" for i in reversed(range(23))]
    assert _ids(_all_pages(store, limit=5)) == everything
    assert _ids(_all_pages(store, limit=23)) == everything
    assert store.search(limit=23).next is None


def test_search_by_sender_state_and_time(store: SqliteTraceStore) -> None:
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


def test_search_rejects_a_bad_cursor_and_limit(store: SqliteTraceStore) -> None:
    """A cursor not handed out by the store, or a limit out of range, is BAD_QUERY."""
    for cursor in ("garbage!", "bm90IGpzb24", "WyJhIiwxXQ"):  # not base64, not JSON, wrong types
        with pytest.raises(BadQueryError) as caught:
            store.search(cursor=cursor)
        assert caught.value.reason_code == "BAD_QUERY"
    for limit in (0, 501):
        with pytest.raises(BadQueryError):
            store.search(limit=limit)


def test_file_store_uses_wal_and_survives_reopening(tmp_path: Path) -> None:
    """Events written to a file are there after reopening, and the file is in WAL mode."""
    path = tmp_path / "trace.sqlite"
    with SqliteTraceStore(path) as first:
        for event in delivered_then_late_failure():
            first.add(event)
        assert (tmp_path / "trace.sqlite-wal").exists()
    with SqliteTraceStore(path) as again:
        assert again.timeline("m-1") == delivered_then_late_failure()
        assert again.add(delivered_then_late_failure()[0]) is False


def test_close_is_safe_twice() -> None:
    """Closing twice is harmless; using a closed store is a clear Dp2Error."""
    store = SqliteTraceStore(":memory:")
    store.close()
    store.close()
    with pytest.raises(Dp2Error) as caught:
        store.summary("m-1")
    assert caught.value.reason_code == "STORE_CLOSED"


def test_a_store_from_before_the_summary_columns_is_upgraded(tmp_path: Path) -> None:
    """A trace file written by the older five-column schema opens, fills in, and summarises."""
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE events (event_id TEXT PRIMARY KEY, message_uuid TEXT NOT NULL,"
        " state TEXT NOT NULL, occurred_at INTEGER NOT NULL, record BLOB NOT NULL)"
    )
    events = delivered_then_late_failure()
    for event in events[:-1]:
        old.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
            (event.eventId, event.messageUUID, event.state.value, 0, codec.encode(event)),
        )
    old.commit()
    old.close()
    with SqliteTraceStore(path) as upgraded:
        assert upgraded.add(events[-1]) is True
        summary = upgraded.summary("m-1")
        assert summary is not None and summary.state is S.DELIVERED
        assert summary.senderID == "29189846" and summary.lastReasonCode == "MAILBOX_TIMEOUT"
        assert summary.eventCount == len(events)

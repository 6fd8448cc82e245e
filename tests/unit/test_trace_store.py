"""What only the SQLite trace store has: WAL files, and upgrading files of older releases.

The behaviour every TraceStore shares (idempotence, order, summaries for any arrival
order, search, notifications, statistics) is tests/contract/test_trace_store_contract.py,
which runs it on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from schemas import codec
from schemas.models import LifecycleState
from tests.contract import test_trace_store_contract as cases
from tracing.store import SqliteTraceStore

S = LifecycleState
delivered_then_late_failure = cases.delivered_then_late_failure


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

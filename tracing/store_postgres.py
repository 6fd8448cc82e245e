"""The trace store in PostgreSQL: what lets several tracing instances answer every query.

Why: each instance of the tracing service consumes some of dp2.lifecycle's
partitions; with a shared store every instance holds every message's timeline,
so any of them answers any query (DP2_DATABASE_URL, brokers.runtime.settings).

The tables, their columns and the queries are those of tracing.store's SQLite
store (the read queries are the very same text), in the schema ``trace``. Text
keys sort bytewise (``COLLATE "C"``), as in SQLite, so pages and cursors run in the
same order on both. Adding an event and refreshing its message's summary is one
transaction that holds an advisory lock on the message: two instances that get
two events of one message at once (a partition moving between them) each see the
other's event when they derive the summary, so it never misses one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from brokers.runtime.postgres import Connection, Database, Migration
from schemas.models import LifecycleEvent, LifecycleState
from schemas.values import canonical_uuid
from tracing import lifecycle
from tracing.store import (
    NOTIFICATIONS_SQL,
    REFRESH_SQL,
    SUMMARY_SQL,
    THROUGHPUT_SQL,
    TIMELINE_SQL,
    MessageSummary,
    Page,
    StatsRow,
    decode_events,
    event_values,
    micros,
    page_of,
    search_query,
    stats_query,
    summary_of,
    summary_values,
)

STORE = "trace"

MIGRATIONS = (
    Migration(
        1,
        "events and summaries",
        """
        CREATE TABLE events (
            event_id      TEXT COLLATE "C" PRIMARY KEY,
            message_uuid  TEXT COLLATE "C" NOT NULL,
            state         TEXT NOT NULL,
            occurred_at   BIGINT NOT NULL,  -- microseconds since the epoch, UTC
            record        BYTEA NOT NULL,   -- schemas.codec single-object encoding
            rank          INTEGER NOT NULL,
            sequence      BIGINT NOT NULL,
            sender_id     TEXT COLLATE "C",
            recipient_ref TEXT,
            reason_code   TEXT
        );
        CREATE INDEX events_by_message ON events (message_uuid);
        CREATE INDEX events_by_state ON events (state, occurred_at);
        CREATE INDEX events_by_time ON events (occurred_at);
        CREATE TABLE summaries (
            message_uuid     TEXT COLLATE "C" PRIMARY KEY,
            state            TEXT NOT NULL,
            sender_id        TEXT COLLATE "C",
            recipient_ref    TEXT,
            first_seen       BIGINT NOT NULL,
            last_update      BIGINT NOT NULL,
            event_count      INTEGER NOT NULL,
            last_reason_code TEXT
        );
        CREATE INDEX summaries_newest ON summaries (first_seen, message_uuid);
        CREATE INDEX summaries_by_sender ON summaries (sender_id, first_seen);
        CREATE INDEX summaries_by_state ON summaries (state, first_seen);
        """,
    ),
)


def pg(query: str) -> str:
    """A query of tracing.store (``?`` placeholders) for psycopg (``%s``)."""
    if "%" in query:
        raise ValueError("a shared query must not contain %")
    return query.replace("?", "%s")


class PgTraceStore:
    """`TraceStore` on PostgreSQL (psycopg 3); ``url`` is DP2_DATABASE_URL."""

    def __init__(self, url: str) -> None:
        self._db = Database(url, STORE, MIGRATIONS)

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Each add is its own transaction here, under its message's lock (see the module):
        one long transaction would hold those locks across the batch."""
        return contextlib.nullcontext()

    def add(self, event: LifecycleEvent, raw: bytes | None = None) -> bool:
        with self._db.transaction() as conn:
            self._db.lock(conn, event.messageUUID)
            inserted = conn.execute(
                "INSERT INTO events (event_id, message_uuid, state, occurred_at, record, rank,"
                " sequence, sender_id, recipient_ref, reason_code)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (event_id) DO NOTHING",
                event_values(event, raw),
            ).rowcount
            if inserted:
                self._refresh_summary(conn, event.messageUUID)
        return inserted == 1

    def timeline(self, message_uuid: str) -> list[LifecycleEvent]:
        with self._db.use() as conn:
            rows = conn.execute(pg(TIMELINE_SQL), (canonical_uuid(message_uuid),)).fetchall()
        return lifecycle.order_timeline(decode_events(rows))

    def summary(self, message_uuid: str) -> MessageSummary | None:
        with self._db.use() as conn:
            row = conn.execute(pg(SUMMARY_SQL), (canonical_uuid(message_uuid),)).fetchone()
        return summary_of(row)

    def search(
        self,
        *,
        sender: str | None = None,
        state: LifecycleState | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        query, params = search_query(
            sender=sender, state=state, since=since, until=until, limit=limit, cursor=cursor
        )
        with self._db.use() as conn:
            return page_of(conn.execute(pg(query), params).fetchall(), limit)

    def notifications(self, *, sender: str | None = None, limit: int = 100) -> list[LifecycleEvent]:
        with self._db.use() as conn:
            rows = conn.execute(pg(NOTIFICATIONS_SQL), (sender, sender, limit)).fetchall()
        return decode_events(rows)

    def throughput(self, since: datetime, sender: str | None = None) -> list[tuple[int, str, int]]:
        with self._db.use() as conn:
            rows = conn.execute(pg(THROUGHPUT_SQL), (micros(since), sender, sender)).fetchall()
        return [(int(minute), str(state), int(count)) for minute, state, count in rows]

    def stats_rows(
        self, since: datetime, until: datetime, sender: str | None
    ) -> Iterable[StatsRow]:
        query, params = stats_query(since, until, sender)
        with self._db.use() as conn:
            rows: list[Any] = conn.execute(pg(query), params).fetchall()
        return rows

    def authority_senders(self) -> list[str]:
        with self._db.use() as conn:
            rows = conn.execute(
                "SELECT DISTINCT sender_id FROM summaries"
                " WHERE sender_id ~ '^[0-9]{8}$' ORDER BY sender_id"
            ).fetchall()
        return [str(row[0]) for row in rows]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PgTraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _refresh_summary(conn: Connection, message_uuid: str) -> None:
        rows = conn.execute(pg(REFRESH_SQL), (message_uuid,)).fetchall()
        conn.execute(
            "INSERT INTO summaries (message_uuid, state, sender_id, recipient_ref, first_seen,"
            " last_update, event_count, last_reason_code)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (message_uuid) DO UPDATE SET state = EXCLUDED.state,"
            " sender_id = EXCLUDED.sender_id, recipient_ref = EXCLUDED.recipient_ref,"
            " first_seen = EXCLUDED.first_seen, last_update = EXCLUDED.last_update,"
            " event_count = EXCLUDED.event_count, last_reason_code = EXCLUDED.last_reason_code",
            summary_values(message_uuid, rows),
        )

"""Where the trace keeps lifecycle events: the `TraceStore` seam and its SQLite implementation.

The PostgreSQL implementation (tracing.store_postgres, chosen by DP2_DATABASE_URL)
runs the same queries, written once here with ``?`` placeholders, so that both
answer alike; tests/contract/test_trace_store_contract.py holds both to it.

The store is a projection of dp2.lifecycle. It keeps every event (once per eventId,
so a Kafka redelivery is harmless) and one summary row per message, and recomputes
that row from all of the message's events on each add, using `tracing.lifecycle`.
The summary is therefore the same whatever order the events arrived in, and
replaying the topic into an empty store rebuilds it exactly. For that reason
`firstSeen` and `lastUpdate` are the earliest and latest `occurredAt` of the
message's events, not the times the store received them. Message UUIDs are kept
and looked up in lower case (schemas.values.canonical_uuid); a store written before
that is folded once when opened, merging the timelines of one message.

Search pages run newest first by firstSeen, then by messageUUID. The cursor is
opaque to callers: it encodes the last row of the page. A late event that moves a
message's firstSeen while someone is paging can move that message across the cursor.

Why one module over 500 lines: the queries written once for both backends, the
Protocol they answer and the SQLite implementation are one contract; the PostgreSQL
module imports the queries from here, so splitting them off would leave each half
unreadable without the other.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from brokers.runtime import sqlite
from brokers.runtime.private import private_dir
from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import LifecycleEvent, LifecycleState
from schemas.values import canonical_uuid
from tracing import lifecycle

MAX_PAGE = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadQueryError(Dp2Error):
    """A search asked for something malformed: a bad cursor, limit or time."""

    reason_code = "BAD_QUERY"
    hint = "Fix the query parameter named in the message."


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageSummary:
    """What the trace knows about one message, derived from all of its events."""

    messageUUID: str
    state: LifecycleState
    senderID: str | None
    recipientRef: str | None  # keyed pseudonym, never a CPR number
    firstSeen: datetime
    lastUpdate: datetime
    eventCount: int
    lastReasonCode: str | None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of search results; `next` is the cursor of the following page, or None."""

    items: list[MessageSummary]
    next: str | None


class TraceStore(Protocol):
    """The trace's storage seam; the HTTP API and the consumer depend only on this."""

    def add(self, event: LifecycleEvent, raw: bytes | None = None) -> bool:
        """Store `event`; False when its eventId is already stored (nothing changes).

        ``raw``: the bytes it was read from (they decode to ``event``), kept as they are
        instead of encoding the event again."""
        ...

    def timeline(self, message_uuid: str) -> list[LifecycleEvent]:
        """The message's events in `lifecycle.order_timeline` order; empty when unknown."""
        ...

    def summary(self, message_uuid: str) -> MessageSummary | None:
        """The message's summary, or None when no event of it is stored."""
        ...

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
        """Summaries newest first; `state` is the derived state, since <= firstSeen < until."""
        ...

    def notifications(self, *, sender: str | None = None, limit: int = 100) -> list[LifecycleEvent]:
        """The newest NOTIFIED and NOTIFICATION_FAILED events (one sender's if given)."""
        ...

    def throughput(self, since: datetime, sender: str | None = None) -> list[tuple[int, str, int]]:
        """(minute since the epoch, state, events) from ``since`` on; one sender's if given."""
        ...

    def stats_rows(
        self, since: datetime, until: datetime, sender: str | None
    ) -> Iterable[StatsRow]:
        """The events of messages first seen in [since, until), for tracing.stats:
        (messageUUID, firstSeen, state, occurredAt, reasonCode, record of a DELIVERED
        or ROUTED), grouped by message and in timeline order within each."""
        ...

    def authority_senders(self) -> list[str]:
        """The 8-digit CVR senders of the trace's messages, in order."""
        ...

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """The adds inside the block commit together (one per fetched batch), or not at all."""
        ...

    def close(self) -> None:
        """Release the store; safe to call twice."""
        ...


#: One event as tracing.stats reads it (see TraceStore.stats_rows); times in microseconds.
StatsRow = tuple[str, int, str, int, str | None, bytes | None]

# The queries both implementations run (``?`` placeholders; tracing.store_postgres
# turns them into ``%s``). Text compared with NULL is cast, for PostgreSQL's sake.
SUMMARY_COLUMNS = (
    "message_uuid, state, sender_id, recipient_ref, first_seen, last_update, event_count,"
    " last_reason_code"
)
TIMELINE_SQL = "SELECT record FROM events WHERE message_uuid = ?"
SUMMARY_SQL = f"SELECT {SUMMARY_COLUMNS} FROM summaries WHERE message_uuid = ?"  # noqa: S608 - constants
# Timeline order as in lifecycle.timeline_key, from the copied columns.
REFRESH_SQL = (
    "SELECT state, occurred_at, sender_id, recipient_ref, reason_code FROM events"
    " WHERE message_uuid = ? ORDER BY occurred_at, rank, sequence, event_id"
)
NOTIFICATIONS_SQL = (
    "SELECT e.record FROM events e"
    " LEFT JOIN summaries s ON s.message_uuid = e.message_uuid"
    " WHERE e.state IN ('NOTIFIED', 'NOTIFICATION_FAILED')"
    " AND (CAST(? AS TEXT) IS NULL OR s.sender_id = ?)"
    " ORDER BY e.occurred_at DESC, e.event_id DESC LIMIT ?"
)
THROUGHPUT_SQL = (
    "SELECT e.occurred_at / 60000000, e.state, COUNT(*) FROM events e"
    " LEFT JOIN summaries s ON s.message_uuid = e.message_uuid"
    " WHERE e.occurred_at >= ? AND (CAST(? AS TEXT) IS NULL OR s.sender_id = ?)"
    " GROUP BY 1, 2 ORDER BY 1, 2"
)


def search_query(
    *,
    sender: str | None,
    state: LifecycleState | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    cursor: str | None,
) -> tuple[str, list[Any]]:
    """The SQL and parameters of `TraceStore.search` (one row more than `limit`)."""
    if not 1 <= limit <= MAX_PAGE:
        raise BadQueryError(f"limit {limit} is not from 1 to {MAX_PAGE}")
    where: list[str] = []
    params: list[Any] = []
    for clause, value in (
        ("sender_id = ?", sender),
        ("state = ?", state.value if state is not None else None),
        ("first_seen >= ?", micros(since) if since is not None else None),
        ("first_seen < ?", micros(until) if until is not None else None),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    if cursor is not None:
        first_seen, message_uuid = _decode_cursor(cursor)
        where.append("(first_seen < ? OR (first_seen = ? AND message_uuid < ?))")
        params += [first_seen, first_seen, message_uuid]
    sql = f"SELECT {SUMMARY_COLUMNS} FROM summaries"  # noqa: S608 - constants and clauses above
    if where:
        sql += " WHERE " + " AND ".join(where)
    # One row more than asked tells whether a next page exists.
    sql += " ORDER BY first_seen DESC, message_uuid DESC LIMIT ?"
    return sql, [*params, limit + 1]


def page_of(rows: Sequence[tuple[Any, ...]], limit: int) -> Page:
    """The page of `search_query`'s rows, with the cursor of the next one."""
    items = [_summary_from_row(row) for row in rows[:limit]]
    if len(rows) <= limit:
        return Page(items, None)
    last = items[-1]
    return Page(items, _encode_cursor(micros(last.firstSeen), last.messageUUID))


def stats_query(since: datetime, until: datetime, sender: str | None) -> tuple[str, list[Any]]:
    """The SQL and parameters of `TraceStore.stats_rows`."""
    sql = (
        "SELECT s.message_uuid, s.first_seen, e.state, e.occurred_at, e.reason_code,"
        " CASE WHEN e.state IN ('DELIVERED', 'ROUTED') THEN e.record END"
        " FROM summaries AS s JOIN events AS e ON e.message_uuid = s.message_uuid"
        " WHERE s.first_seen >= ? AND s.first_seen < ?"
    )
    params: list[Any] = [micros(since), micros(until)]
    if sender is not None:
        sql += " AND s.sender_id = ?"
        params.append(sender)
    sql += " ORDER BY s.message_uuid, e.occurred_at, e.rank, e.sequence, e.event_id"
    return sql, params


def summary_values(message_uuid: str, rows: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The summaries row of a message from its REFRESH_SQL rows (at least one)."""
    reasons = [r[4] for r in rows if r[4] is not None]
    return (
        message_uuid,
        lifecycle.current_state_of({LifecycleState(r[0]) for r in rows}).value,
        _first(r[2] for r in rows),
        _first(r[3] for r in rows),
        rows[0][1],
        max(r[1] for r in rows),
        len(rows),
        reasons[-1] if reasons else None,
    )


def event_values(event: LifecycleEvent, raw: bytes | None = None) -> tuple[Any, ...]:
    """The events row of `event` (read from ``raw``, if given), in the order of the
    events table's columns."""
    return (
        event.eventId,
        event.messageUUID,
        event.state.value,
        micros(event.occurredAt),
        codec.encode(event) if raw is None else raw,
        *_summary_fields(event),
    )


def decode_events(records: Iterable[tuple[Any, ...]]) -> list[LifecycleEvent]:
    return [codec.decode(bytes(row[0]), LifecycleEvent) for row in records]


def summary_of(row: tuple[Any, ...] | None) -> MessageSummary | None:
    return None if row is None else _summary_from_row(row)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id      TEXT PRIMARY KEY,
    message_uuid  TEXT NOT NULL,
    state         TEXT NOT NULL,
    occurred_at   INTEGER NOT NULL,  -- microseconds since the epoch, UTC
    record        BLOB NOT NULL,     -- schemas.codec single-object encoding
    -- Copies of the fields the summary needs, so that an event's arrival refreshes
    -- its message's summary without decoding the message's whole timeline.
    rank          INTEGER,
    sequence      INTEGER,
    sender_id     TEXT,
    recipient_ref TEXT,
    reason_code   TEXT
);
CREATE INDEX IF NOT EXISTS events_by_message ON events (message_uuid);
-- The dashboard's Notifications page: the newest NOTIFIED and NOTIFICATION_FAILED.
CREATE INDEX IF NOT EXISTS events_by_state ON events (state, occurred_at);
CREATE TABLE IF NOT EXISTS summaries (
    message_uuid     TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    sender_id        TEXT,
    recipient_ref    TEXT,
    first_seen       INTEGER NOT NULL,
    last_update      INTEGER NOT NULL,
    event_count      INTEGER NOT NULL,
    last_reason_code TEXT
);
CREATE INDEX IF NOT EXISTS summaries_newest ON summaries (first_seen, message_uuid);
CREATE INDEX IF NOT EXISTS summaries_by_sender ON summaries (sender_id, first_seen);
CREATE INDEX IF NOT EXISTS summaries_by_state ON summaries (state, first_seen);
"""


class SqliteTraceStore:
    """`TraceStore` on stdlib sqlite3, in WAL mode; `path` may be ":memory:".

    Not thread-safe: it holds one connection, which must be used from one thread
    (sqlite3 checks this). In the tracing service that is the event loop's thread,
    used by one asyncio task at a time. The calls block, which is fine because each one
    is a few index lookups on a local file.
    """

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            private_dir(Path(path).parent)
        self._db: sqlite3.Connection | None = sqlite.connect(path)
        self._batched = False
        self._db.executescript(_SCHEMA)
        self._add_summary_columns(self._db)
        sqlite.migrate_once(self._db, "lowercase-message-uuids", self._lowercase_uuids)

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise Dp2Error(
                "the trace store is closed",
                reason_code="STORE_CLOSED",
                hint="Open a new SqliteTraceStore.",
            )
        return self._db

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for every add inside (a commit per event was half of an add's
        CPU); rolled back whole when the block raises, as the worker then retries it."""
        if self._batched:
            yield
            return
        db = self._conn
        db.execute("BEGIN")
        self._batched = True
        try:
            yield
        except BaseException:
            db.rollback()
            raise
        else:
            db.commit()
        finally:
            self._batched = False

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A transaction of its own, or a part of the open batch."""
        db = self._conn
        if self._batched:
            yield db
        else:
            with db:
                yield db

    def add(self, event: LifecycleEvent, raw: bytes | None = None) -> bool:
        with self._tx() as db:  # one transaction: the event and its message's summary, or neither
            inserted = db.execute(
                "INSERT OR IGNORE INTO events (event_id, message_uuid, state, occurred_at,"
                " record, rank, sequence, sender_id, recipient_ref, reason_code)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                event_values(event, raw),
            ).rowcount
            if inserted:
                self._refresh_summary(db, event.messageUUID)
        return inserted == 1

    def timeline(self, message_uuid: str) -> list[LifecycleEvent]:
        rows = self._conn.execute(TIMELINE_SQL, (canonical_uuid(message_uuid),)).fetchall()
        return lifecycle.order_timeline(decode_events(rows))

    def summary(self, message_uuid: str) -> MessageSummary | None:
        return summary_of(
            self._conn.execute(SUMMARY_SQL, (canonical_uuid(message_uuid),)).fetchone()
        )

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
        sql, params = search_query(
            sender=sender, state=state, since=since, until=until, limit=limit, cursor=cursor
        )
        return page_of(self._conn.execute(sql, params).fetchall(), limit)

    def notifications(self, *, sender: str | None = None, limit: int = 100) -> list[LifecycleEvent]:
        return decode_events(self._conn.execute(NOTIFICATIONS_SQL, (sender, sender, limit)))

    def throughput(self, since: datetime, sender: str | None = None) -> list[tuple[int, str, int]]:
        rows = self._conn.execute(THROUGHPUT_SQL, (micros(since), sender, sender))
        return [(int(minute), str(state), int(count)) for minute, state, count in rows]

    def stats_rows(
        self, since: datetime, until: datetime, sender: str | None
    ) -> Iterable[StatsRow]:
        sql, params = stats_query(since, until, sender)
        return iter(self._conn.execute(sql, params))

    def authority_senders(self) -> list[str]:
        rows = self._conn.execute(
            "SELECT DISTINCT sender_id FROM summaries"
            " WHERE sender_id GLOB '[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]' ORDER BY sender_id"
        ).fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def __enter__(self) -> SqliteTraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _refresh_summary(self, db: sqlite3.Connection, message_uuid: str) -> None:
        rows = db.execute(REFRESH_SQL, (message_uuid,)).fetchall()
        db.execute(
            "INSERT OR REPLACE INTO summaries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            summary_values(message_uuid, rows),
        )

    def _lowercase_uuids(self) -> None:
        """Fold the message UUIDs of a store written before they were folded (once).

        Events of one message under two spellings become one timeline, and its summary
        is derived again from all of them; the stored records are folded when decoded.
        """
        db = self._conn
        changed = sqlite.lowercase_column(db, "events", "message_uuid")
        db.execute("DELETE FROM summaries WHERE message_uuid != lower(message_uuid)")
        for message_uuid in changed:
            self._refresh_summary(db, message_uuid)

    @staticmethod
    def _add_summary_columns(db: sqlite3.Connection) -> None:
        """Fill the summary columns of a store written before they existed (once)."""
        columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
        for name, kind in _SUMMARY_COLUMNS:
            if name not in columns:
                db.execute(f"ALTER TABLE events ADD COLUMN {name} {kind}")
        missing = db.execute("SELECT COUNT(*) FROM events WHERE rank IS NULL").fetchone()[0]
        if not missing:
            return
        with db:
            for event_id, record in db.execute(
                "SELECT event_id, record FROM events WHERE rank IS NULL"
            ).fetchall():
                event = codec.decode(record, LifecycleEvent)
                db.execute(
                    "UPDATE events SET rank = ?, sequence = ?, sender_id = ?, recipient_ref = ?,"
                    " reason_code = ? WHERE event_id = ?",
                    (*_summary_fields(event), event_id),
                )


_SUMMARY_COLUMNS = (
    ("rank", "INTEGER"),
    ("sequence", "INTEGER"),
    ("sender_id", "TEXT"),
    ("recipient_ref", "TEXT"),
    ("reason_code", "TEXT"),
)


def _summary_fields(event: LifecycleEvent) -> tuple[int, int, str | None, str | None, str | None]:
    return (
        lifecycle.RANK[event.state],
        event.sequence,
        event.senderID,
        event.recipientRef,
        event.reasonCode,
    )


def _first(values: Any) -> str | None:
    """The first value that is not None (in timeline order)."""
    return next((v for v in values if v is not None), None)


def micros(moment: datetime) -> int:
    """Microseconds since the epoch; a naive time counts as UTC, as in schemas.codec."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _frommicros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _summary_from_row(row: tuple[Any, ...]) -> MessageSummary:
    uuid, state, sender, recipient, first_seen, last_update, count, reason = row
    return MessageSummary(
        messageUUID=uuid,
        state=LifecycleState(state),
        senderID=sender,
        recipientRef=recipient,
        firstSeen=_frommicros(first_seen),
        lastUpdate=_frommicros(last_update),
        eventCount=count,
        lastReasonCode=reason,
    )


def _encode_cursor(first_seen: int, message_uuid: str) -> str:
    raw = json.dumps([first_seen, message_uuid], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    bad = BadQueryError(
        "cursor is not one this service handed out",
        hint="Pass the `next` value of the previous page unchanged, or leave cursor out.",
    )
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        first_seen, message_uuid = json.loads(raw)
    except (ValueError, TypeError) as exc:  # base64, UTF-8 and JSON errors are ValueErrors
        raise bad from exc
    if type(first_seen) is not int or not isinstance(message_uuid, str):
        raise bad
    return first_seen, message_uuid

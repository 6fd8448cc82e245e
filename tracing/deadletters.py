"""Dead letters as operators see them: kept, inspectable, and re-drivable.

Why it exists: a record no service could handle is parked on ``dp2.deadletter``
with why (brokers.runtime.worker) — never lost, never blocking its partition. Someone has
to look at it and, once the cause is fixed, send it back. The tracing service keeps
every dead letter here (SQLite, keyed by where it came from), the dashboard lists
and inspects them (headers, reason, size — never the body, which may hold
personal data), and a re-drive produces the original bytes, key and headers back
to the topic it came from, where the service that failed takes it again.

A tombstone (a record without a value) is kept as a tombstone (``value`` NULL) and
re-driven as one; an empty value stays an empty value. Letters parked before this
distinction was kept have an empty value either way. Message UUIDs are kept in lower
case, as everywhere (schemas.values.canonical_uuid).

Where: ``deadletters.sqlite`` (the embedded default), or with DP2_DATABASE_URL the
schema ``deadletters`` in PostgreSQL, shared by every tracing instance, so each
instance's dashboard lists every dead letter, whichever instance parked it. A dead
letter is kept once, keyed by where it came from (a second instance reading the
same parked record adds nothing).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer, ConsumerRecord

from brokers.runtime import sqlite
from brokers.runtime.postgres import Database, Migration
from brokers.runtime.settings import Settings
from schemas.errors import Dp2Error
from schemas.values import canonical_uuid
from schemas.vocabulary import (
    DEADLETTER_HEADERS,
    MESSAGE_UUID_HEADER,
    REASON_CODE_HEADER,
    REASON_HEADER,
    SERVICE_HEADER,
    SOURCE_HEADER,
)

# Headers the dead-letter step added; a re-drive sends the record without them.
_PARKING_HEADERS = DEADLETTER_HEADERS

# ``value`` is NULL for a tombstone.
_TABLE = """deadletters (
    source TEXT PRIMARY KEY, topic TEXT NOT NULL, service TEXT, reason_code TEXT,
    reason TEXT, message_uuid TEXT, key BLOB, value BLOB, headers TEXT NOT NULL,
    parked_at TEXT NOT NULL, redriven_at TEXT, redriven_by TEXT)"""
_SCHEMA = f"CREATE TABLE IF NOT EXISTS {_TABLE};"
# A store from before tombstones were kept had ``value BLOB NOT NULL``: rebuild it.
_NULLABLE_VALUE = f"""
BEGIN;
ALTER TABLE deadletters RENAME TO deadletters_before_tombstones;
CREATE TABLE {_TABLE};
INSERT INTO deadletters SELECT * FROM deadletters_before_tombstones;
DROP TABLE deadletters_before_tombstones;
COMMIT;
"""  # noqa: S608 - this module's own constants, no input


@dataclass(frozen=True, slots=True)
class DeadLetter:
    source: str  # topic/partition/offset it was read from
    topic: str
    service: str | None
    reason_code: str | None
    reason: str | None
    message_uuid: str | None
    size: int
    header_names: list[str]
    parked_at: str
    redriven_at: str | None
    redriven_by: str | None
    tombstone: bool = False  # parked without a value; a re-drive sends a tombstone

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "topic": self.topic,
            "service": self.service,
            "reasonCode": self.reason_code,
            "reason": self.reason,
            "messageUUID": self.message_uuid,
            "size": self.size,
            "headers": self.header_names,
            "parkedAt": self.parked_at,
            "redrivenAt": self.redriven_at,
            "redrivenBy": self.redriven_by,
            "tombstone": self.tombstone,
        }


class DeadLetters(Protocol):
    """Every dead letter, by where it came from: kept, listed, inspected, re-driven."""

    def park(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Keep one dead letter; False if it was kept already."""
        ...

    def list(self, *, include_redriven: bool = True, limit: int = 200) -> list[DeadLetter]:
        """The newest first."""
        ...

    def get(self, source: str) -> DeadLetter | None:
        """The dead letter from ``source`` (topic/partition/offset), if kept."""
        ...

    async def redrive(self, source: str, producer: AIOKafkaProducer, by: str) -> DeadLetter:
        """Send the original record back to its topic, and note who did it and when."""
        ...

    def close(self) -> None:
        """Release the store; safe to call twice."""
        ...


def _park_values(record: ConsumerRecord[bytes, bytes]) -> tuple[Any, ...]:
    """The row of one dead letter (its ten columns before the re-drive's two)."""
    headers = {k: v for k, v in (record.headers or ())}
    text = {k: v.decode("utf-8", "replace") for k, v in headers.items()}
    source = text.get(SOURCE_HEADER) or f"{record.topic}/{record.partition}/{record.offset}"
    return (
        source,
        source.rsplit("/", 2)[0],
        text.get(SERVICE_HEADER),
        text.get(REASON_CODE_HEADER),
        text.get(REASON_HEADER),
        canonical_uuid(text[MESSAGE_UUID_HEADER]) if MESSAGE_UUID_HEADER in text else None,
        record.key,
        record.value,  # None: a tombstone, kept as one
        _encode_headers(record.headers or ()),
        datetime.now(UTC).isoformat(),
    )


def _unknown() -> Dp2Error:
    return Dp2Error(
        "there is no dead letter from that source",
        reason_code="UNKNOWN_DEAD_LETTER",
        hint="Pick one from the dead-letter list.",
    )


async def _send_back(producer: AIOKafkaProducer, row: tuple[Any, ...]) -> None:
    """Produce a kept (topic, key, value, headers) again, without the parking headers."""
    topic, key, value, headers = row
    kept = [(k, v) for k, v in _decode_headers(headers) if k not in _PARKING_HEADERS]
    await producer.send_and_wait(topic, value, key=key, headers=kept)


class DeadLetterStore:
    """`DeadLetters` in one SQLite file (the embedded default)."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite.connect(str(path))
        self._db.executescript(_SCHEMA)
        columns = {row[1]: row[3] for row in self._db.execute("PRAGMA table_info(deadletters)")}
        if columns.get("value"):  # notnull: a store from before tombstones were kept
            self._db.executescript(_NULLABLE_VALUE)
        sqlite.migrate_once(
            self._db,
            "lowercase-message-uuids",
            lambda: sqlite.lowercase_column(self._db, "deadletters", "message_uuid"),
        )

    def close(self) -> None:
        self._db.close()

    def park(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Keep one dead letter (a redelivery of the same one changes nothing)."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO deadletters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
            _park_values(record),
        )
        self._db.commit()
        return cursor.rowcount == 1

    def list(self, *, include_redriven: bool = True, limit: int = 200) -> list[DeadLetter]:
        rows = self._db.execute(
            _SELECT + " WHERE ? OR redriven_at IS NULL ORDER BY parked_at DESC LIMIT ?",
            (include_redriven, limit),
        ).fetchall()
        return [_letter(r) for r in rows]

    def get(self, source: str) -> DeadLetter | None:
        row = self._db.execute(_SELECT + " WHERE source = ?", (source,)).fetchone()
        return None if row is None else _letter(row)

    async def redrive(self, source: str, producer: AIOKafkaProducer, by: str) -> DeadLetter:
        """Send the original record back to its topic, and note who did it and when."""
        row = self._db.execute(
            "SELECT topic, key, value, headers FROM deadletters WHERE source = ?", (source,)
        ).fetchone()
        if row is None:
            raise _unknown()
        await _send_back(producer, row)
        self._db.execute(
            "UPDATE deadletters SET redriven_at = ?, redriven_by = ? WHERE source = ?",
            (datetime.now(UTC).isoformat(), by, source),
        )
        self._db.commit()
        letter = self.get(source)
        assert letter is not None  # noqa: S101 - read back what was just updated
        return letter


_SELECT = (
    "SELECT source, topic, service, reason_code, reason, message_uuid,"
    " coalesce(length(value), 0), headers, parked_at, redriven_at, redriven_by,"
    " value IS NULL FROM deadletters"
)

MIGRATIONS = (
    Migration(
        1,
        "deadletters",
        """
        CREATE TABLE deadletters (
            source       TEXT COLLATE "C" PRIMARY KEY,  -- topic/partition/offset
            topic        TEXT NOT NULL,
            service      TEXT,
            reason_code  TEXT,
            reason       TEXT,
            message_uuid TEXT COLLATE "C",
            key          BYTEA,
            value        BYTEA,  -- NULL: a tombstone
            headers      TEXT NOT NULL,
            parked_at    TEXT NOT NULL,
            redriven_at  TEXT,
            redriven_by  TEXT
        );
        CREATE INDEX deadletters_newest ON deadletters (parked_at);
        """,
    ),
)


class PgDeadLetterStore:
    """`DeadLetters` in PostgreSQL, shared by every tracing instance."""

    def __init__(self, url: str) -> None:
        self._db = Database(url, "deadletters", MIGRATIONS)

    def close(self) -> None:
        self._db.close()

    def park(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        with self._db.use() as conn:
            inserted = conn.execute(
                "INSERT INTO deadletters VALUES"
                " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, NULL)"
                " ON CONFLICT (source) DO NOTHING",
                _park_values(record),
            ).rowcount
        return inserted == 1

    def list(self, *, include_redriven: bool = True, limit: int = 200) -> list[DeadLetter]:
        with self._db.use() as conn:
            rows = conn.execute(
                _SELECT + " WHERE %s OR redriven_at IS NULL ORDER BY parked_at DESC LIMIT %s",
                (include_redriven, limit),
            ).fetchall()
        return [_letter(r) for r in rows]

    def get(self, source: str) -> DeadLetter | None:
        with self._db.use() as conn:
            row = conn.execute(_SELECT + " WHERE source = %s", (source,)).fetchone()
        return None if row is None else _letter(row)

    async def redrive(self, source: str, producer: AIOKafkaProducer, by: str) -> DeadLetter:
        with self._db.use() as conn:
            row = conn.execute(
                "SELECT topic, key, value, headers FROM deadletters WHERE source = %s", (source,)
            ).fetchone()
        if row is None:
            raise _unknown()
        await _send_back(producer, row)
        with self._db.use() as conn:
            conn.execute(
                "UPDATE deadletters SET redriven_at = %s, redriven_by = %s WHERE source = %s",
                (datetime.now(UTC).isoformat(), by, source),
            )
        letter = self.get(source)
        assert letter is not None  # noqa: S101 - read back what was just updated
        return letter


def open_deadletters(settings: Settings, path: Path) -> DeadLetters:
    """PostgreSQL when DP2_DATABASE_URL is set, else the SQLite file ``path``."""
    if settings.database_url:
        return PgDeadLetterStore(settings.database_url)
    return DeadLetterStore(path)


def _letter(row: sqlite3.Row | tuple[Any, ...]) -> DeadLetter:
    (source, topic, service, code, reason, uuid, size, headers, parked, redriven, by, none) = row
    names = [k for k, _ in _decode_headers(headers)]
    return DeadLetter(
        source, topic, service, code, reason, uuid, size, names, parked, redriven, by, bool(none)
    )


def _encode_headers(headers: Any) -> str:
    return json.dumps([[k, v.hex()] for k, v in headers])


def _decode_headers(text: str) -> list[tuple[str, bytes]]:
    return [(k, bytes.fromhex(v)) for k, v in json.loads(text)]

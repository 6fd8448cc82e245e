"""The router's schedule: letters held until their ``doNotDeliverUntilDate``, in SQLite or
PostgreSQL.

A held letter is ``waiting`` until it is ``released`` (its date came) or
``recalled`` (its sender took it back). Every change of state is one conditional
statement — "to released, if still waiting" — and only the caller whose statement
changed the row acts on it: so of two routers releasing due letters at once, each
letter is released by one, and a recall that loses the race to a release (or the
other way round) is told so. The schedule is a projection of ``dp2.scheduled``
(brokers.router.rules.Router.restore).

Where: ``router.sqlite`` (the embedded default), or with DP2_DATABASE_URL the schema
``router`` in PostgreSQL, shared by every router instance.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Protocol

from brokers.runtime import sqlite
from brokers.runtime.postgres import Database, Migration
from brokers.runtime.settings import Settings
from schemas.values import canonical_uuid


class Schedule(Protocol):
    """Messages waiting for their ``doNotDeliverUntilDate``; survives restarts."""

    def hold(self, message_uuid: str, due: date, sender_id: str, ref: str, raw: bytes) -> bool:
        """Store a message until ``due``; False if it was already held (redelivery)."""
        ...

    def due(self, today: date) -> list[tuple[str, bytes]]:
        """(UUID, envelope) of every waiting message due by ``today``, earliest first."""
        ...

    def mark(self, message_uuid: str, state: str, only_if: str = "waiting") -> bool:
        """Move the message to ``state`` if it is in ``only_if``; True for the one caller
        whose change it was."""
        ...

    def sender_of(self, message_uuid: str) -> tuple[str, str] | None:
        """(sender id, state) of a held message, or None."""
        ...

    def close(self) -> None:
        """Release the store; safe to call twice."""
        ...


class ScheduleStore:
    """`Schedule` in one SQLite file (the embedded default)."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite.connect(str(path))
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS scheduled ("
            " message_uuid TEXT PRIMARY KEY, due TEXT NOT NULL, sender_id TEXT NOT NULL,"
            " recipient_ref TEXT NOT NULL, envelope BLOB NOT NULL,"
            " state TEXT NOT NULL DEFAULT 'waiting')"
        )
        self._db.commit()
        # Two spellings of one UUID are one letter: one already released or recalled
        # stays so, and the other is never delivered.
        sqlite.migrate_once(
            self._db,
            "lowercase-message-uuids",
            lambda: sqlite.lowercase_column(
                self._db,
                "scheduled",
                "message_uuid",
                keep_first="CASE state WHEN 'released' THEN 0 WHEN 'recalled' THEN 1 ELSE 2 END,"
                " rowid",
            ),
        )

    def hold(self, message_uuid: str, due: date, sender_id: str, ref: str, raw: bytes) -> bool:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO scheduled (message_uuid, due, sender_id, recipient_ref,"
            " envelope) VALUES (?, ?, ?, ?, ?)",
            (canonical_uuid(message_uuid), due.isoformat(), sender_id, ref, raw),
        )
        self._db.commit()
        return cursor.rowcount == 1

    def due(self, today: date) -> list[tuple[str, bytes]]:
        return list(
            self._db.execute(
                "SELECT message_uuid, envelope FROM scheduled"
                " WHERE state = 'waiting' AND due <= ? ORDER BY due",
                (today.isoformat(),),
            )
        )

    def mark(self, message_uuid: str, state: str, only_if: str = "waiting") -> bool:
        cursor = self._db.execute(
            "UPDATE scheduled SET state = ? WHERE message_uuid = ? AND state = ?",
            (state, canonical_uuid(message_uuid), only_if),
        )
        self._db.commit()
        return cursor.rowcount == 1

    def sender_of(self, message_uuid: str) -> tuple[str, str] | None:
        row = self._db.execute(
            "SELECT sender_id, state FROM scheduled WHERE message_uuid = ?",
            (canonical_uuid(message_uuid),),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def close(self) -> None:
        self._db.close()


MIGRATIONS = (
    Migration(
        1,
        "scheduled",
        """
        CREATE TABLE scheduled (
            message_uuid  TEXT COLLATE "C" PRIMARY KEY,
            due           DATE NOT NULL,
            sender_id     TEXT NOT NULL,
            recipient_ref TEXT NOT NULL,
            envelope      BYTEA NOT NULL,
            state         TEXT NOT NULL DEFAULT 'waiting'  -- waiting | released | recalled
        );
        CREATE INDEX scheduled_due ON scheduled (state, due);
        """,
    ),
)


class PgScheduleStore:
    """`Schedule` in PostgreSQL, shared by every router instance."""

    def __init__(self, url: str) -> None:
        self._db = Database(url, "router", MIGRATIONS)

    def hold(self, message_uuid: str, due: date, sender_id: str, ref: str, raw: bytes) -> bool:
        with self._db.use() as conn:
            inserted = conn.execute(
                "INSERT INTO scheduled (message_uuid, due, sender_id, recipient_ref, envelope)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (message_uuid) DO NOTHING",
                (canonical_uuid(message_uuid), due, sender_id, ref, raw),
            ).rowcount
        return inserted == 1

    def due(self, today: date) -> list[tuple[str, bytes]]:
        with self._db.use() as conn:
            rows = conn.execute(
                "SELECT message_uuid, envelope FROM scheduled"
                " WHERE state = 'waiting' AND due <= %s ORDER BY due, message_uuid",
                (today,),
            ).fetchall()
        return [(str(uuid), bytes(raw)) for uuid, raw in rows]

    def mark(self, message_uuid: str, state: str, only_if: str = "waiting") -> bool:
        # Under READ COMMITTED a second router's UPDATE waits for the first to commit,
        # then finds the state changed and changes nothing: one caller wins.
        with self._db.use() as conn:
            changed = conn.execute(
                "UPDATE scheduled SET state = %s WHERE message_uuid = %s AND state = %s",
                (state, canonical_uuid(message_uuid), only_if),
            ).rowcount
        return changed == 1

    def sender_of(self, message_uuid: str) -> tuple[str, str] | None:
        with self._db.use() as conn:
            row = conn.execute(
                "SELECT sender_id, state FROM scheduled WHERE message_uuid = %s",
                (canonical_uuid(message_uuid),),
            ).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def close(self) -> None:
        self._db.close()


def open_schedule(settings: Settings, path: Path) -> Schedule:
    """PostgreSQL when DP2_DATABASE_URL is set, else the SQLite file ``path``."""
    if settings.database_url:
        return PgScheduleStore(settings.database_url)
    return ScheduleStore(path)

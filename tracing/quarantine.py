"""Lifecycle events the authority table refused: kept for operators, believed by no one.

Why it exists: a forged or misattributed event (unsigned, a bad signature, an
unknown or revoked signer, the wrong actor for its state or message;
brokers.security.authority) must never change a trace, send a notification or a
receipt — but it must not vanish either: it is evidence of a misbehaving party.
The tracing service keeps each one here with its reason, counts it in
``dp2_quarantined_events_total{reason}``, and the dashboard lists them
(``/dashboard/quarantine``, operators only).

Each refused record is kept once, keyed by where it was read (topic/partition/
offset): a re-read, or a second tracing instance that reads the same record after a
partition moved, adds nothing and counts nothing. In SQLite (``quarantine.sqlite``,
the embedded default) or, with DP2_DATABASE_URL, in PostgreSQL (schema
``quarantine``), shared by every tracing instance; the dashboard of any instance
lists them all.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from brokers.runtime.postgres import Database, Migration
from brokers.runtime.records import iso_z, now
from brokers.runtime.settings import Settings
from brokers.runtime.sqlite import connect
from brokers.security.authority import Verdict
from schemas.models import LifecycleEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    event_id TEXT NOT NULL,
    message_uuid TEXT NOT NULL,
    state TEXT NOT NULL,
    actor TEXT NOT NULL,
    signer TEXT NOT NULL,
    reason_code TEXT NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL PRIMARY KEY,
    quarantined_at TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Quarantined:
    event_id: str
    message_uuid: str
    state: str
    actor: str
    signer: str
    reason_code: str
    reason: str
    source: str
    quarantined_at: str


class Quarantine(Protocol):
    """Refused events, one per position read (a re-read adds nothing)."""

    def add(self, event: LifecycleEvent, verdict: Verdict, source: str) -> bool:
        """Keep a refused event read at ``source``; False if that position is kept already."""
        ...

    def recent(self, limit: int = 200) -> list[Quarantined]:
        """The newest first."""
        ...

    def of_message(self, message_uuid: str) -> list[Quarantined]:
        """Those of one message, oldest first."""
        ...

    def close(self) -> None:
        """Release the store; safe to call twice."""
        ...


def _values(event: LifecycleEvent, verdict: Verdict, source: str) -> tuple[str, ...]:
    return (
        event.eventId,
        event.messageUUID,
        event.state.value,
        event.actor,
        verdict.signer,
        verdict.reason_code or "",
        verdict.reason or "",
        source,
        iso_z(now()),
    )


class QuarantineStore:
    """`Quarantine` in one SQLite file (the embedded default)."""

    def __init__(self, path: Path | str) -> None:
        self._db: sqlite3.Connection = connect(path)
        self._db.executescript(_SCHEMA)

    def add(self, event: LifecycleEvent, verdict: Verdict, source: str) -> bool:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _values(event, verdict, source),
        )
        self._db.commit()
        return cursor.rowcount == 1

    def recent(self, limit: int = 200) -> list[Quarantined]:
        rows = self._db.execute(
            "SELECT * FROM quarantine ORDER BY quarantined_at DESC LIMIT ?", (limit,)
        ).fetchall()
        return [Quarantined(*row) for row in rows]

    def of_message(self, message_uuid: str) -> list[Quarantined]:
        rows = self._db.execute(
            "SELECT * FROM quarantine WHERE message_uuid = ? ORDER BY quarantined_at",
            (message_uuid.lower(),),
        ).fetchall()
        return [Quarantined(*row) for row in rows]

    def close(self) -> None:
        self._db.close()


MIGRATIONS = (
    Migration(
        1,
        "quarantine",
        """
        CREATE TABLE quarantine (
            event_id       TEXT NOT NULL,
            message_uuid   TEXT COLLATE "C" NOT NULL,
            state          TEXT NOT NULL,
            actor          TEXT NOT NULL,
            signer         TEXT NOT NULL,
            reason_code    TEXT NOT NULL,
            reason         TEXT NOT NULL,
            source         TEXT COLLATE "C" PRIMARY KEY,
            quarantined_at TEXT NOT NULL
        );
        CREATE INDEX quarantine_newest ON quarantine (quarantined_at);
        CREATE INDEX quarantine_by_message ON quarantine (message_uuid, quarantined_at);
        """,
    ),
)
_COLUMNS = (
    "event_id, message_uuid, state, actor, signer, reason_code, reason, source, quarantined_at"
)


class PgQuarantineStore:
    """`Quarantine` in PostgreSQL, shared by every tracing instance."""

    def __init__(self, url: str) -> None:
        self._db = Database(url, "quarantine", MIGRATIONS)

    def add(self, event: LifecycleEvent, verdict: Verdict, source: str) -> bool:
        with self._db.use() as conn:
            inserted = conn.execute(
                "INSERT INTO quarantine VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (source) DO NOTHING",
                _values(event, verdict, source),
            ).rowcount
        return inserted == 1

    def recent(self, limit: int = 200) -> list[Quarantined]:
        return self._select("ORDER BY quarantined_at DESC LIMIT %s", (limit,))

    def of_message(self, message_uuid: str) -> list[Quarantined]:
        return self._select(
            "WHERE message_uuid = %s ORDER BY quarantined_at", (message_uuid.lower(),)
        )

    def _select(self, rest: str, params: tuple[Any, ...]) -> list[Quarantined]:
        with self._db.use() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM quarantine {rest}", params).fetchall()  # noqa: S608 - this module's own SQL
        return [Quarantined(*row) for row in rows]

    def close(self) -> None:
        self._db.close()


def open_quarantine(settings: Settings, path: Path) -> Quarantine:
    """PostgreSQL when DP2_DATABASE_URL is set, else the SQLite file ``path``."""
    if settings.database_url:
        return PgQuarantineStore(settings.database_url)
    return QuarantineStore(path)

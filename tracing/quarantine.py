"""Lifecycle events the authority table refused: kept for operators, believed by no one.

Why it exists: a forged or misattributed event (unsigned, a bad signature, an
unknown or revoked signer, the wrong actor for its state or message;
brokers.security.authority) must never change a trace, send a notification or a
receipt — but it must not vanish either: it is evidence of a misbehaving party.
The tracing service keeps each one here with its reason, counts it in
``dp2_quarantined_events_total{reason}``, and the dashboard lists them
(``/dashboard/quarantine``, operators only).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from brokers.runtime.records import iso_z, now
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


class QuarantineStore:
    """One row per refused event, keyed by where it was read (a re-read adds nothing)."""

    def __init__(self, path: Path | str) -> None:
        self._db: sqlite3.Connection = connect(path)
        self._db.executescript(_SCHEMA)

    def add(self, event: LifecycleEvent, verdict: Verdict, source: str) -> bool:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.eventId,
                event.messageUUID,
                event.state.value,
                event.actor,
                verdict.signer,
                verdict.reason_code or "",
                verdict.reason or "",
                source,
                iso_z(now()),
            ),
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

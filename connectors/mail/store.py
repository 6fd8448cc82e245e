"""The mail connector's durable state: post waiting to be forwarded, and each citizen's choice.

Why SQLite: as a mailbox provider the connector must keep a letter before the Kafka
offset is committed (connectors.base), and a relay that is down must not lose one —
each letter is a row until the relay has taken it. The citizen's forwarding mode is
kept here too, keyed by their pseudonym: no CPR number is stored outside the letters
themselves (``outbox.envelope``, the citizen's own post).

Tables: ``outbox`` (received letters: pending, then forwarded / kept / unaddressed /
failed, with attempts and the next try) and ``forwarding`` (mode per citizen).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from brokers.runtime import sqlite
from connectors.mail.mime import MODES, Mode

DEFAULT_MODE: Mode = "notice"
Outcome = Literal["forwarded", "kept", "unaddressed", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, message_uuid TEXT UNIQUE NOT NULL,
    citizen_ref TEXT NOT NULL, envelope BLOB NOT NULL, received_at TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', mode TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0, last_error TEXT, done_at TEXT);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (state, next_at, seq);
CREATE TABLE IF NOT EXISTS forwarding (
    citizen_ref TEXT PRIMARY KEY, mode TEXT NOT NULL, updated_at TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Pending:
    seq: int
    message_uuid: str
    citizen_ref: str
    envelope: bytes
    attempts: int


class MailStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite.connect(path)
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    # --- the citizen's choice -----------------------------------------------------
    def mode(self, citizen_ref: str) -> Mode:
        row = self._db.execute(
            "SELECT mode FROM forwarding WHERE citizen_ref = ?", (citizen_ref,)
        ).fetchone()
        found = row[0] if row else DEFAULT_MODE
        return next((m for m in MODES if m == found), DEFAULT_MODE)

    def set_mode(self, citizen_ref: str, mode: Mode) -> None:
        self._db.execute(
            "INSERT INTO forwarding VALUES (?, ?, ?) ON CONFLICT (citizen_ref)"
            " DO UPDATE SET mode = excluded.mode, updated_at = excluded.updated_at",
            (citizen_ref, mode, _now()),
        )
        self._db.commit()

    # --- the outbox ---------------------------------------------------------------
    def queue(self, message_uuid: str, citizen_ref: str, envelope: bytes) -> bool:
        """Keep a received letter for forwarding; False when it was kept before."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO outbox (message_uuid, citizen_ref, envelope, received_at)"
            " VALUES (?, ?, ?, ?)",
            (message_uuid, citizen_ref, envelope, _now()),
        )
        self._db.commit()
        return cursor.rowcount == 1

    def due(self, now: float, limit: int = 20) -> list[Pending]:
        rows = self._db.execute(
            "SELECT seq, message_uuid, citizen_ref, envelope, attempts FROM outbox"
            " WHERE state = 'pending' AND next_at <= ? ORDER BY seq LIMIT ?",
            (now, limit),
        ).fetchall()
        return [Pending(*row) for row in rows]

    def finish(
        self, seq: int, outcome: Outcome, *, mode: Mode | None = None, error: str | None = None
    ) -> None:
        self._db.execute(
            "UPDATE outbox SET state = ?, mode = ?, last_error = COALESCE(?, last_error),"
            " done_at = ? WHERE seq = ?",
            (outcome, mode, error, _now(), seq),
        )
        self._db.commit()

    def retry_later(self, seq: int, error: str, next_at: float) -> None:
        self._db.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_at = ? WHERE seq = ?",
            (error, next_at, seq),
        )
        self._db.commit()

    def state(self, message_uuid: str) -> tuple[str, int, str | None] | None:
        """(state, attempts, last error) of a received letter, for tests and operators."""
        row = self._db.execute(
            "SELECT state, attempts, last_error FROM outbox WHERE message_uuid = ?",
            (message_uuid,),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), row[2])

    def backlog(self) -> dict[str, int]:
        """Counts for health and metrics: waiting, waiting after a failure, given up."""
        pending, failing, failed = self._db.execute(
            "SELECT COALESCE(SUM(state = 'pending'), 0),"
            " COALESCE(SUM(state = 'pending' AND attempts > 0), 0),"
            " COALESCE(SUM(state = 'failed'), 0) FROM outbox"
        ).fetchone()
        return {
            "forwardPending": int(pending),
            "forwardFailing": int(failing),
            "forwardFailed": int(failed),
        }


def _now() -> str:
    return datetime.now(UTC).isoformat()

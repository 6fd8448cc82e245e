"""The mail connector's durable state: post waiting to be forwarded, and each citizen's choice.

Why a database: as a mailbox provider the connector must keep a letter before the Kafka
offset is committed (connectors.base), and a relay that is down must not lose one —
each letter is a row until the relay has taken it. The citizen's forwarding mode is
kept here too, keyed by their pseudonym: no CPR number is stored outside the letters
themselves (``outbox.envelope``, the citizen's own post).

Tables: ``outbox`` (received letters: pending, then forwarded / kept / unaddressed /
failed, with attempts and the next try) and ``forwarding`` (mode per citizen), in
``mail.sqlite`` or, with DP2_DATABASE_URL, the PostgreSQL schema ``mail_<connector>``
shared by the connector's instances; one of them at a time forwards (``leads``,
brokers.runtime.sqlstore).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from brokers.runtime.postgres import Migration
from brokers.runtime.sqlstore import SqliteStore, SqlStore, Tables, open_store, schema_name
from connectors.mail.mime import MODES, Mode
from schemas.values import canonical_uuid

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

_POSTGRES = (
    Migration(
        1,
        "outbox, forwarding",
        """
        CREATE TABLE outbox (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            message_uuid TEXT COLLATE "C" UNIQUE NOT NULL, citizen_ref TEXT NOT NULL,
            envelope BYTEA NOT NULL, received_at TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending', mode TEXT,
            attempts INTEGER NOT NULL DEFAULT 0, next_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_error TEXT, done_at TEXT);
        CREATE INDEX outbox_pending ON outbox (state, next_at, seq);
        CREATE TABLE forwarding (
            citizen_ref TEXT COLLATE "C" PRIMARY KEY, mode TEXT NOT NULL,
            updated_at TEXT NOT NULL);
        """,
    ),
)
TABLES = Tables(_SCHEMA, _POSTGRES)
#: The drain that hands letters to the mail relay, one instance at a time.
DRAIN = "mail-forwarding"


@dataclass(frozen=True, slots=True)
class Pending:
    seq: int
    message_uuid: str
    citizen_ref: str
    envelope: bytes
    attempts: int


class MailStore:
    """The connector's rows in SQLite (a path) or in a shared :class:`SqlStore`."""

    def __init__(self, where: Path | SqlStore) -> None:
        self._db: SqlStore = SqliteStore(where, TABLES) if isinstance(where, Path) else where

    @classmethod
    def open(cls, database_url: str | None, data_dir: Path, connector: str) -> MailStore:
        """PostgreSQL (schema ``mail_<connector>``) with a database URL, else mail.sqlite."""
        return cls(
            open_store(
                database_url, data_dir / "mail.sqlite", schema_name("mail", connector), TABLES
            )
        )

    def leads(self) -> bool:
        """Whether this instance forwards to the relay (brokers.runtime.sqlstore)."""
        return self._db.leads(DRAIN)

    def close(self) -> None:
        self._db.close()

    # --- the citizen's choice -----------------------------------------------------
    def mode(self, citizen_ref: str) -> Mode:
        row = self._db.one("SELECT mode FROM forwarding WHERE citizen_ref = ?", (citizen_ref,))
        found = row[0] if row else DEFAULT_MODE
        return next((m for m in MODES if m == found), DEFAULT_MODE)

    def set_mode(self, citizen_ref: str, mode: Mode) -> None:
        self._db.run(
            "INSERT INTO forwarding VALUES (?, ?, ?) ON CONFLICT (citizen_ref)"
            " DO UPDATE SET mode = excluded.mode, updated_at = excluded.updated_at",
            (citizen_ref, mode, _now()),
        )

    # --- the outbox ---------------------------------------------------------------
    def queue(self, message_uuid: str, citizen_ref: str, envelope: bytes) -> bool:
        """Keep a received letter for forwarding; False when it was kept before."""
        inserted = self._db.run(
            "INSERT INTO outbox (message_uuid, citizen_ref, envelope, received_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (canonical_uuid(message_uuid), citizen_ref, envelope, _now()),
        )
        return inserted == 1

    def due(self, now: float, limit: int = 20) -> list[Pending]:
        rows = self._db.all(
            "SELECT seq, message_uuid, citizen_ref, envelope, attempts FROM outbox"
            " WHERE state = 'pending' AND next_at <= ? ORDER BY seq LIMIT ?",
            (now, limit),
        )
        return [Pending(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    def finish(
        self, seq: int, outcome: Outcome, *, mode: Mode | None = None, error: str | None = None
    ) -> None:
        self._db.run(
            "UPDATE outbox SET state = ?, mode = ?, last_error = COALESCE(?, last_error),"
            " done_at = ? WHERE seq = ?",
            (outcome, mode, error, _now(), seq),
        )

    def retry_later(self, seq: int, error: str, next_at: float) -> None:
        self._db.run(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_at = ? WHERE seq = ?",
            (error, next_at, seq),
        )

    def state(self, message_uuid: str) -> tuple[str, int, str | None] | None:
        """(state, attempts, last error) of a received letter, for tests and operators."""
        row = self._db.one(
            "SELECT state, attempts, last_error FROM outbox WHERE message_uuid = ?",
            (canonical_uuid(message_uuid),),
        )
        return None if row is None else (str(row[0]), int(row[1]), row[2])

    def backlog(self) -> dict[str, int]:
        """Counts for health and metrics: waiting, waiting after a failure, given up."""
        row = self._db.one(
            "SELECT COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN state = 'pending' AND attempts > 0 THEN 1 ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0) FROM outbox"
        ) or (0, 0, 0)
        return {
            "forwardPending": int(row[0]),
            "forwardFailing": int(row[1]),
            "forwardFailed": int(row[2]),
        }


def _now() -> str:
    return datetime.now(UTC).isoformat()

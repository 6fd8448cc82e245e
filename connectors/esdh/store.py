"""The ESDH connector's durable state: what it sent, receipts owed, post to journal.

Why a database and not memory: the connector promises an authority three things that
must survive a restart — a resend of a MeMo message is recognised as the same
message; every business receipt reaches the case system, however long it is down;
and no reply is lost between Kafka and the journal. Each of those is a row here,
written before the Kafka offset or HTTP answer that depends on it.

Tables: ``sent`` (message UUID → digest, case, receipt), ``receipts`` (lifecycle
events of sent messages, each delivered to the ESDH callback until acknowledged),
``journal`` (received post, journaled into the ESDH until acknowledged).
The rows are in ``esdh.sqlite`` on the embedded default, or in the PostgreSQL schema
``esdh_<connector>`` when DP2_DATABASE_URL is set, so that several instances of the
connector share them; one instance at a time makes the calls to the ESDH (``leads``,
brokers.runtime.sqlstore), in the queue's order.
Nothing here holds a CPR number outside ``journal.memo`` (the authority's own copy).
Message UUIDs are kept and looked up in lower case (schemas.values.canonical_uuid); a
store from before that is folded once when opened, merging rows of one message.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from brokers.runtime import sqlite
from brokers.runtime.postgres import Migration
from brokers.runtime.sqlstore import SqliteStore, SqlStore, Tables, open_store, schema_name
from schemas.values import canonical_uuid

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    message_uuid TEXT PRIMARY KEY, digest TEXT NOT NULL, case_id TEXT, case_system TEXT,
    status TEXT NOT NULL, receipt TEXT, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS receipts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE NOT NULL,
    message_uuid TEXT NOT NULL, payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0, last_error TEXT, delivered_at TEXT);
CREATE INDEX IF NOT EXISTS receipts_pending ON receipts (delivered_at, seq);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, message_uuid TEXT UNIQUE NOT NULL,
    case_id TEXT, case_system TEXT, reply_to TEXT, sender_ref TEXT NOT NULL,
    memo BLOB NOT NULL, received_at TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0, last_error TEXT, journaled_at TEXT);
"""

_POSTGRES = (
    Migration(
        1,
        "sent, receipts, journal",
        """
        CREATE TABLE sent (
            message_uuid TEXT COLLATE "C" PRIMARY KEY, digest TEXT NOT NULL, case_id TEXT,
            case_system TEXT, status TEXT NOT NULL, receipt TEXT, created_at TEXT NOT NULL);
        CREATE TABLE receipts (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id TEXT UNIQUE NOT NULL, message_uuid TEXT NOT NULL, payload TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, next_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_error TEXT, delivered_at TEXT);
        CREATE INDEX receipts_pending ON receipts (delivered_at, seq);
        CREATE INDEX receipts_message ON receipts (message_uuid, seq);
        CREATE TABLE journal (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            message_uuid TEXT COLLATE "C" UNIQUE NOT NULL, case_id TEXT, case_system TEXT,
            reply_to TEXT, sender_ref TEXT NOT NULL, memo BYTEA NOT NULL,
            received_at TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            next_at DOUBLE PRECISION NOT NULL DEFAULT 0, last_error TEXT, journaled_at TEXT);
        """,
    ),
)


def _lowercase_uuids(db: sqlite3.Connection) -> None:
    """Fold the UUIDs of a SQLite store from before they were folded: one message, one
    row (the first sent, and a journal entry already journaled, stay)."""
    sqlite.lowercase_column(db, "sent", "message_uuid", keep_first="created_at, rowid")
    sqlite.lowercase_column(db, "receipts", "message_uuid")
    sqlite.lowercase_column(db, "journal", "message_uuid", keep_first="journaled_at IS NULL, seq")
    db.execute("UPDATE journal SET reply_to = lower(reply_to) WHERE reply_to != lower(reply_to)")


TABLES = Tables(_SCHEMA, _POSTGRES, (("lowercase-message-uuids", _lowercase_uuids),))
#: The drain that calls the ESDH (receipts and journal), one instance at a time.
DRAIN = "esdh-calls"

Claim = Literal["new", "duplicate", "conflict"]


@dataclass(frozen=True, slots=True)
class PendingReceipt:
    seq: int
    message_uuid: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class JournalEntry:
    seq: int
    message_uuid: str
    case_id: str | None
    case_system: str | None
    reply_to: str | None
    sender_ref: str
    memo: bytes
    received_at: str
    attempts: int


class EsdhStore:
    """The connector's rows in SQLite (a path) or in a shared :class:`SqlStore`."""

    def __init__(self, where: Path | SqlStore) -> None:
        self._db: SqlStore = SqliteStore(where, TABLES) if isinstance(where, Path) else where

    @classmethod
    def open(cls, database_url: str | None, data_dir: Path, connector: str) -> EsdhStore:
        """PostgreSQL (schema ``esdh_<connector>``) with a database URL, else esdh.sqlite."""
        return cls(
            open_store(
                database_url, data_dir / "esdh.sqlite", schema_name("esdh", connector), TABLES
            )
        )

    def leads(self) -> bool:
        """Whether this instance makes the calls to the ESDH (brokers.runtime.sqlstore)."""
        return self._db.leads(DRAIN)

    def close(self) -> None:
        self._db.close()

    # --- sent ---------------------------------------------------------------------
    def claim(
        self, message_uuid: str, digest: str, case_id: str | None, case_system: str | None
    ) -> tuple[Claim, dict[str, Any] | None]:
        """Reserve a UUID for sending: new, a duplicate of the same content (with the
        first receipt), or a conflict (the UUID was used for other content). Of two
        instances claiming one UUID at once, one gets "new"."""
        message_uuid = canonical_uuid(message_uuid)
        while True:
            if self._db.run(
                "INSERT INTO sent VALUES (?, ?, ?, ?, 'sending', NULL, ?) ON CONFLICT DO NOTHING",
                (message_uuid, digest, case_id, case_system, _now()),
            ):
                return "new", None
            row = self._db.one(
                "SELECT digest, receipt FROM sent WHERE message_uuid = ?", (message_uuid,)
            )
            if row is not None:  # else released in between: claim it again
                receipt = json.loads(row[1]) if row[1] else None
                return ("duplicate" if row[0] == digest else "conflict"), receipt

    def sent(self, message_uuid: str, receipt: dict[str, Any]) -> None:
        self._db.run(
            "UPDATE sent SET status = 'sent', receipt = ? WHERE message_uuid = ?",
            (json.dumps(receipt), canonical_uuid(message_uuid)),
        )

    def release(self, message_uuid: str) -> None:
        """Forget a claim whose send failed, so that the resend is a first send."""
        self._db.run(
            "DELETE FROM sent WHERE message_uuid = ? AND status = 'sending'",
            (canonical_uuid(message_uuid),),
        )

    def is_ours(self, message_uuid: str) -> bool:
        row = self._db.one(
            "SELECT 1 FROM sent WHERE message_uuid = ?", (canonical_uuid(message_uuid),)
        )
        return row is not None

    def case_of(self, message_uuid: str) -> tuple[str | None, str | None] | None:
        row = self._db.one(
            "SELECT case_id, case_system FROM sent WHERE message_uuid = ?",
            (canonical_uuid(message_uuid),),
        )
        return None if row is None else (row[0], row[1])

    def message(self, message_uuid: str) -> dict[str, Any] | None:
        """A sent message's receipt and its business receipts so far."""
        message_uuid = canonical_uuid(message_uuid)
        row = self._db.one(
            "SELECT case_id, case_system, status, receipt, created_at FROM sent"
            " WHERE message_uuid = ?",
            (message_uuid,),
        )
        if row is None:
            return None
        receipts = [
            {**json.loads(payload), "deliveredToEsdh": delivered is not None}
            for payload, delivered in self._db.all(
                "SELECT payload, delivered_at FROM receipts WHERE message_uuid = ? ORDER BY seq",
                (message_uuid,),
            )
        ]
        return {
            "messageUUID": message_uuid,
            "caseID": row[0],
            "caseSystem": row[1],
            "status": row[2],
            "receipt": json.loads(row[3]) if row[3] else None,
            "createdAt": row[4],
            "businessReceipts": receipts,
        }

    # --- receipts -----------------------------------------------------------------
    def queue_receipt(self, event_id: str, message_uuid: str, payload: dict[str, Any]) -> bool:
        return (
            self._db.run(
                "INSERT INTO receipts (event_id, message_uuid, payload) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (event_id, canonical_uuid(message_uuid), json.dumps(payload)),
            )
            == 1
        )

    def due_receipts(self, now: float, limit: int = 100) -> list[PendingReceipt]:
        rows = self._db.all(
            "SELECT seq, message_uuid, payload, attempts FROM receipts"
            " WHERE delivered_at IS NULL AND next_at <= ? ORDER BY seq LIMIT ?",
            (now, limit),
        )
        return [PendingReceipt(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    def receipt_delivered(self, seq: int) -> None:
        self._db.run("UPDATE receipts SET delivered_at = ? WHERE seq = ?", (_now(), seq))

    def receipt_failed(self, seq: int, error: str, next_at: float) -> None:
        self._db.run(
            "UPDATE receipts SET attempts = attempts + 1, last_error = ?, next_at = ?"
            " WHERE seq = ?",
            (error, next_at, seq),
        )

    # --- journal ------------------------------------------------------------------
    def queue_journal(
        self,
        message_uuid: str,
        *,
        case_id: str | None,
        case_system: str | None,
        reply_to: str | None,
        sender_ref: str,
        memo: bytes,
    ) -> bool:
        return (
            self._db.run(
                "INSERT INTO journal (message_uuid, case_id, case_system, reply_to,"
                " sender_ref, memo, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (
                    canonical_uuid(message_uuid),
                    case_id,
                    case_system,
                    reply_to,
                    sender_ref,
                    memo,
                    _now(),
                ),
            )
            == 1
        )

    def due_journal(self, now: float, limit: int = 20) -> list[JournalEntry]:
        rows = self._db.all(
            "SELECT seq, message_uuid, case_id, case_system, reply_to, sender_ref, memo,"
            " received_at, attempts FROM journal"
            " WHERE journaled_at IS NULL AND next_at <= ? ORDER BY seq LIMIT ?",
            (now, limit),
        )
        return [
            JournalEntry(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), r[7], r[8]) for r in rows
        ]

    def journaled(self, seq: int) -> None:
        self._db.run("UPDATE journal SET journaled_at = ? WHERE seq = ?", (_now(), seq))

    def journal_failed(self, seq: int, error: str, next_at: float) -> None:
        self._db.run(
            "UPDATE journal SET attempts = attempts + 1, last_error = ?, next_at = ? WHERE seq = ?",
            (error, next_at, seq),
        )

    def journal_list(self, status: str) -> list[dict[str, Any]]:
        """Journal entries without content: ``pending``, ``journaled`` or ``all``."""
        rows = self._db.all(
            "SELECT message_uuid, case_id, case_system, reply_to, received_at, attempts,"
            " last_error, journaled_at FROM journal WHERE ? = 'all'"
            " OR (? = 'pending' AND journaled_at IS NULL)"
            " OR (? = 'journaled' AND journaled_at IS NOT NULL) ORDER BY seq",
            (status, status, status),
        )
        return [
            {
                "messageUUID": r[0],
                "caseID": r[1],
                "caseSystem": r[2],
                "replyTo": r[3],
                "receivedAt": r[4],
                "attempts": r[5],
                "lastError": r[6],
                "journaledAt": r[7],
                "status": "pending" if r[7] is None else "journaled",
            }
            for r in rows
        ]

    def backlog(self) -> dict[str, int]:
        """Counts for health and metrics: what waits, and what has failed at least once."""
        failing = "COALESCE(SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), 0)"
        receipts = self._db.one(
            f"SELECT COUNT(*), {failing} FROM receipts WHERE delivered_at IS NULL"  # noqa: S608
        ) or (0, 0)
        journal = self._db.one(
            f"SELECT COUNT(*), {failing} FROM journal WHERE journaled_at IS NULL"  # noqa: S608
        ) or (0, 0)
        return {
            "receiptsPending": int(receipts[0]),
            "receiptsFailing": int(receipts[1]),
            "journalPending": int(journal[0]),
            "journalFailing": int(journal[1]),
        }


def _now() -> str:
    return datetime.now(UTC).isoformat()

"""The print connector's durable job queue: one row per message.

Why: a rendered letter must outlive a print provider that is down — for a minute or
a day — and the Kafka offset of its message is committed only once the row is
written. Unlike DP2's projections (brokers.runtime.sqlite), a job is not rebuilt by
replaying a topic once its offset is committed, so the SQLite file (``print.sqlite``,
the embedded default) uses ``synchronous=FULL``: a committed job survives power loss
too. Print volume makes the fsync cheap. With DP2_DATABASE_URL the rows are in the
PostgreSQL schema ``print_<connector>``, shared by the connector's instances; one of
them at a time hands letters over (``leads``, brokers.runtime.sqlstore), so instances
on different hosts share the spool folder as a volume, as they share the blob store.

A job goes ``queued`` (rendered, waiting for the provider) → ``handed`` (the provider
has it; PRINTED not yet on Kafka) → ``printed``; or it is ``failed`` (never printable,
with its reason, kept so a redelivered message re-emits the same FAILED). The PDF
itself is a file in the connector's spool (connectors.print.spool), on disk before
its row is committed; the row keeps the file's name and SHA-256, and forgets the name
as soon as the provider has it (the file is deleted then). A queue from before the
spool holds its waiting PDFs as BLOBs (``pdf``): the connector moves each to the spool
(:meth:`PrintStore.spooled`) before handing it over. Nothing here holds a CPR number:
recipients are pseudonyms, and the metadata is what the print provider gets beside
the PDF. Message UUIDs are kept in lower case; a queue from before that is folded once.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from brokers.runtime import sqlite
from brokers.runtime.postgres import Migration
from brokers.runtime.sqlstore import SqliteStore, SqlStore, Tables, open_store, schema_name
from schemas.values import canonical_uuid

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, message_uuid TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL, sender_id TEXT, recipient_ref TEXT, pages INTEGER NOT NULL DEFAULT 0,
    pdf BLOB, pdf_file TEXT, pdf_sha256 TEXT, meta TEXT, reason_code TEXT, reason_text TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL DEFAULT 0, last_error TEXT,
    created_at TEXT NOT NULL, done_at TEXT);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_at);
"""


_COUNTS = {  # each one walks the jobs_due index, not the table
    "queued": "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'handed')",
    "retrying": "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND attempts > 0",
    "printed": "SELECT COUNT(*) FROM jobs WHERE state = 'printed'",
    "failed": "SELECT COUNT(*) FROM jobs WHERE state = 'failed'",
}


@dataclass(frozen=True, slots=True)
class Job:
    message_uuid: str
    state: str
    sender_id: str | None
    recipient_ref: str | None
    pages: int
    meta: dict[str, Any]
    attempts: int
    pdf_file: str | None = None  # its rendered PDF in the spool; None: a BLOB from before
    pdf_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Known:
    """What the queue already knows of a message (a redelivery)."""

    state: str
    reason_code: str | None
    reason_text: str | None


def _lowercase_uuids(db: sqlite3.Connection) -> None:
    """Two spellings of one UUID are one letter: the one furthest along stays."""
    sqlite.lowercase_column(
        db,
        "jobs",
        "message_uuid",
        keep_first="CASE state WHEN 'printed' THEN 0 WHEN 'handed' THEN 1"
        " WHEN 'queued' THEN 2 ELSE 3 END, seq",
    )


def _add_spool_columns(db: sqlite3.Connection) -> None:
    """A queue from before the spool: its rows get the PDF file's name and SHA-256."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    for name in ("pdf_file", "pdf_sha256"):
        if name not in columns:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {name} TEXT")


_POSTGRES = (
    Migration(
        1,
        "jobs",
        """
        CREATE TABLE jobs (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            message_uuid TEXT COLLATE "C" UNIQUE NOT NULL, state TEXT NOT NULL,
            sender_id TEXT, recipient_ref TEXT, pages INTEGER NOT NULL DEFAULT 0,
            pdf BYTEA, pdf_file TEXT, pdf_sha256 TEXT, meta TEXT, reason_code TEXT,
            reason_text TEXT, attempts INTEGER NOT NULL DEFAULT 0,
            next_at DOUBLE PRECISION NOT NULL DEFAULT 0, last_error TEXT,
            created_at TEXT NOT NULL, done_at TEXT);
        CREATE INDEX jobs_due ON jobs (state, next_at);
        """,
    ),
)
TABLES = Tables(
    _SCHEMA,
    _POSTGRES,
    (("lowercase-message-uuids", _lowercase_uuids), ("spooled-pdfs", _add_spool_columns)),
)
#: The drain that hands letters to the print provider, one instance at a time.
DRAIN = "print-handover"


class PrintStore:
    """The queue's rows in SQLite (a path) or in a shared :class:`SqlStore`."""

    def __init__(self, where: Path | SqlStore) -> None:
        self._db: SqlStore = (
            SqliteStore(where, TABLES, durable=True) if isinstance(where, Path) else where
        )

    @classmethod
    def open(cls, database_url: str | None, data_dir: Path, connector: str) -> PrintStore:
        """PostgreSQL (schema ``print_<connector>``) with a database URL, else print.sqlite."""
        return cls(
            open_store(
                database_url,
                data_dir / "print.sqlite",
                schema_name("print", connector),
                TABLES,
                durable=True,
            )
        )

    def leads(self) -> bool:
        """Whether this instance hands letters over (brokers.runtime.sqlstore)."""
        return self._db.leads(DRAIN)

    def close(self) -> None:
        self._db.close()

    def known(self, message_uuid: str) -> Known | None:
        row = self._db.one(
            "SELECT state, reason_code, reason_text FROM jobs WHERE message_uuid = ?",
            (canonical_uuid(message_uuid),),
        )
        return None if row is None else Known(row[0], row[1], row[2])

    def queue(
        self,
        message_uuid: str,
        *,
        sender_id: str,
        recipient_ref: str,
        pages: int,
        pdf_file: str,
        pdf_sha256: str,
        meta: dict[str, Any],
    ) -> None:
        """Keep a rendered letter (its PDF is the spool file ``pdf_file``, already on disk)
        until the provider has it (a repeat changes nothing)."""
        self._db.run(
            "INSERT INTO jobs (message_uuid, state, sender_id, recipient_ref, pages,"
            " pdf_file, pdf_sha256, meta, created_at) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (
                canonical_uuid(message_uuid),
                sender_id,
                recipient_ref,
                pages,
                pdf_file,
                pdf_sha256,
                json.dumps(meta),
                _now(),
            ),
        )

    def fail(
        self, message_uuid: str, *, sender_id: str, recipient_ref: str, code: str, text: str
    ) -> None:
        self._db.run(
            "INSERT INTO jobs (message_uuid, state, sender_id, recipient_ref,"
            " reason_code, reason_text, created_at, done_at)"
            " VALUES (?, 'failed', ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (canonical_uuid(message_uuid), sender_id, recipient_ref, code, text, _now(), _now()),
        )

    def due(self, now: float, limit: int = 20) -> list[Job]:
        """Jobs to hand over (queued) or to announce (handed), oldest first."""
        rows = self._db.all(
            "SELECT message_uuid, state, sender_id, recipient_ref, pages, meta, attempts,"
            " pdf_file, pdf_sha256 FROM jobs WHERE state IN ('queued', 'handed') AND next_at <= ?"
            " ORDER BY seq LIMIT ?",
            (now, limit),
        )
        return [
            Job(r[0], r[1], r[2], r[3], r[4], json.loads(r[5] or "{}"), r[6], r[7], r[8])
            for r in rows
        ]

    def pdf(self, message_uuid: str) -> bytes:
        """The PDF of a job queued before the spool (a BLOB in its row); else empty."""
        row = self._db.one(
            "SELECT pdf FROM jobs WHERE message_uuid = ?", (canonical_uuid(message_uuid),)
        )
        return bytes(row[0]) if row and row[0] is not None else b""

    def spooled(self, message_uuid: str, pdf_file: str, pdf_sha256: str) -> None:
        """A job queued before the spool has its PDF in the spool now: the BLOB goes."""
        self._db.run(
            "UPDATE jobs SET pdf_file = ?, pdf_sha256 = ?, pdf = NULL WHERE message_uuid = ?",
            (pdf_file, pdf_sha256, canonical_uuid(message_uuid)),
        )

    def spooled_files(self) -> list[str]:
        """The spool files that queued jobs still need (every other one may go)."""
        rows = self._db.all(
            "SELECT pdf_file FROM jobs WHERE state = 'queued' AND pdf_file IS NOT NULL"
        )
        return [str(row[0]) for row in rows]

    def retry(self, message_uuid: str, error: str, next_at: float) -> None:
        self._db.run(
            "UPDATE jobs SET attempts = attempts + 1, next_at = ?, last_error = ?"
            " WHERE message_uuid = ?",
            (next_at, error, canonical_uuid(message_uuid)),
        )

    def handed(self, message_uuid: str) -> None:
        """The provider has the letter: its PDF (the plaintext) is no longer kept."""
        self._db.run(
            "UPDATE jobs SET state = 'handed', pdf = NULL, pdf_file = NULL, next_at = 0"
            " WHERE message_uuid = ?",
            (canonical_uuid(message_uuid),),
        )

    def printed(self, message_uuid: str) -> None:
        self._db.run(
            "UPDATE jobs SET state = 'printed', done_at = ? WHERE message_uuid = ?",
            (_now(), canonical_uuid(message_uuid)),
        )

    def counts(self) -> dict[str, int]:
        """queued (not yet announced), retrying (the provider refused them), printed, failed."""
        return {name: int((self._db.one(query) or (0,))[0]) for name, query in _COUNTS.items()}

    def last_error(self) -> str | None:
        row = self._db.one(
            "SELECT last_error FROM jobs WHERE state = 'queued' AND attempts > 0"
            " ORDER BY seq DESC LIMIT 1"
        )
        return None if row is None else str(row[0])


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")

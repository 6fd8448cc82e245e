"""The print connector's durable job queue: one SQLite row per message.

Why: a rendered letter must outlive a print provider that is down — for a minute or
a day — and the Kafka offset of its message is committed only once the row is
written. Unlike DP2's projections (brokers.runtime.sqlite), a job is not rebuilt by replaying
a topic once its offset is committed, so this connection uses ``synchronous=FULL``:
a committed job survives power loss too. Print volume makes the fsync cheap.

A job goes ``queued`` (rendered, waiting for the provider) → ``handed`` (the provider
has it; PRINTED not yet on Kafka) → ``printed``; or it is ``failed`` (never printable,
with its reason, kept so a redelivered message re-emits the same FAILED). The PDF is
deleted as soon as the provider has it. Nothing here holds a CPR number: recipients
are pseudonyms, and the metadata is what the print provider gets beside the PDF.
Message UUIDs are kept in lower case; a queue from before that is folded once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from brokers.runtime import sqlite
from schemas.values import canonical_uuid

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, message_uuid TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL, sender_id TEXT, recipient_ref TEXT, pages INTEGER NOT NULL DEFAULT 0,
    pdf BLOB, meta TEXT, reason_code TEXT, reason_text TEXT,
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


@dataclass(frozen=True, slots=True)
class Known:
    """What the queue already knows of a message (a redelivery)."""

    state: str
    reason_code: str | None
    reason_text: str | None


class PrintStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite.connect(str(path))
        self._db.execute("PRAGMA synchronous=FULL")  # see the module docstring
        self._db.executescript(_SCHEMA)
        self._db.commit()
        # Two spellings of one UUID are one letter: the one furthest along stays.
        sqlite.migrate_once(
            self._db,
            "lowercase-message-uuids",
            lambda: sqlite.lowercase_column(
                self._db,
                "jobs",
                "message_uuid",
                keep_first="CASE state WHEN 'printed' THEN 0 WHEN 'handed' THEN 1"
                " WHEN 'queued' THEN 2 ELSE 3 END, seq",
            ),
        )

    def close(self) -> None:
        self._db.close()

    def known(self, message_uuid: str) -> Known | None:
        row = self._db.execute(
            "SELECT state, reason_code, reason_text FROM jobs WHERE message_uuid = ?",
            (canonical_uuid(message_uuid),),
        ).fetchone()
        return None if row is None else Known(row[0], row[1], row[2])

    def queue(
        self,
        message_uuid: str,
        *,
        sender_id: str,
        recipient_ref: str,
        pages: int,
        pdf: bytes,
        meta: dict[str, Any],
    ) -> None:
        """Keep a rendered letter until the provider has it (a repeat changes nothing)."""
        self._db.execute(
            "INSERT OR IGNORE INTO jobs (message_uuid, state, sender_id, recipient_ref, pages,"
            " pdf, meta, created_at) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
            (
                canonical_uuid(message_uuid),
                sender_id,
                recipient_ref,
                pages,
                pdf,
                json.dumps(meta),
                _now(),
            ),
        )
        self._db.commit()

    def fail(
        self, message_uuid: str, *, sender_id: str, recipient_ref: str, code: str, text: str
    ) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO jobs (message_uuid, state, sender_id, recipient_ref,"
            " reason_code, reason_text, created_at, done_at)"
            " VALUES (?, 'failed', ?, ?, ?, ?, ?, ?)",
            (canonical_uuid(message_uuid), sender_id, recipient_ref, code, text, _now(), _now()),
        )
        self._db.commit()

    def due(self, now: float, limit: int = 20) -> list[Job]:
        """Jobs to hand over (queued) or to announce (handed), oldest first."""
        rows = self._db.execute(
            "SELECT message_uuid, state, sender_id, recipient_ref, pages, meta, attempts"
            " FROM jobs WHERE state IN ('queued', 'handed') AND next_at <= ?"
            " ORDER BY seq LIMIT ?",
            (now, limit),
        ).fetchall()
        return [Job(r[0], r[1], r[2], r[3], r[4], json.loads(r[5] or "{}"), r[6]) for r in rows]

    def pdf(self, message_uuid: str) -> bytes:
        row = self._db.execute(
            "SELECT pdf FROM jobs WHERE message_uuid = ?", (canonical_uuid(message_uuid),)
        ).fetchone()
        return bytes(row[0]) if row and row[0] is not None else b""

    def retry(self, message_uuid: str, error: str, next_at: float) -> None:
        self._db.execute(
            "UPDATE jobs SET attempts = attempts + 1, next_at = ?, last_error = ?"
            " WHERE message_uuid = ?",
            (next_at, error, canonical_uuid(message_uuid)),
        )
        self._db.commit()

    def handed(self, message_uuid: str) -> None:
        """The provider has the letter: the PDF (the plaintext) is no longer kept."""
        self._db.execute(
            "UPDATE jobs SET state = 'handed', pdf = NULL, next_at = 0 WHERE message_uuid = ?",
            (canonical_uuid(message_uuid),),
        )
        self._db.commit()

    def printed(self, message_uuid: str) -> None:
        self._db.execute(
            "UPDATE jobs SET state = 'printed', done_at = ? WHERE message_uuid = ?",
            (_now(), canonical_uuid(message_uuid)),
        )
        self._db.commit()

    def counts(self) -> dict[str, int]:
        """queued (not yet announced), retrying (the provider refused them), printed, failed."""
        return {name: int(self._db.execute(query).fetchone()[0]) for name, query in _COUNTS.items()}

    def last_error(self) -> str | None:
        row = self._db.execute(
            "SELECT last_error FROM jobs WHERE state = 'queued' AND attempts > 0"
            " ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return None if row is None else str(row[0])


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")

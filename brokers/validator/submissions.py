"""The validator's submission log: the first outcome per message UUID, in SQLite or PostgreSQL.

It is what makes a resubmission a DUPLICATE: the first submission of a UUID is
recorded, keyed by the UUID, with the Kafka position (``source``) it came from.
``record`` answers with the submission that stands after it, so that of two
validator instances judging two submissions of one UUID at once (SQLite cannot be
shared; PostgreSQL can), exactly one is first and the other sees a DUPLICATE.
UUIDs are kept in lower case (schemas.values.canonical_uuid).

The PostgreSQL log (DP2_DATABASE_URL) keeps its table in the schema ``validator``;
tests/contract/test_submission_log_contract.py holds both to the same behaviour.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from brokers.runtime import sqlite
from brokers.runtime.postgres import Database, Migration
from brokers.runtime.settings import Settings
from schemas.values import canonical_uuid

#: (source, outcome, reason code, first seen at, ISO 8601) of a UUID's first submission.
First = tuple[str, str, str | None, str]


class SubmissionLog(Protocol):
    """First outcome per message UUID: what makes a resubmission a DUPLICATE."""

    def first(self, message_uuid: str) -> First | None:
        """The first submission of the UUID, or None when it was never recorded."""
        ...

    def record(self, message_uuid: str, source: str, outcome: str, reason: str | None) -> First:
        """Record this submission unless one of the UUID is recorded; the one that stands."""
        ...

    def close(self) -> None:
        """Release the log; safe to call twice."""
        ...


def _now() -> str:
    return datetime.now(UTC).isoformat()


class SqliteSubmissionLog:
    """`SubmissionLog` in one SQLite file (the embedded default)."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite.connect(str(path))
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS submissions (message_uuid TEXT PRIMARY KEY,"
            " source TEXT NOT NULL, outcome TEXT NOT NULL, reason_code TEXT,"
            " first_at TEXT NOT NULL)"
        )
        self._db.commit()
        # A log from before UUIDs were folded: the first submission of each stands.
        sqlite.migrate_once(
            self._db,
            "lowercase-message-uuids",
            lambda: sqlite.lowercase_column(
                self._db, "submissions", "message_uuid", keep_first="first_at, rowid"
            ),
        )

    def first(self, message_uuid: str) -> First | None:
        row = self._db.execute(
            "SELECT source, outcome, reason_code, first_at FROM submissions WHERE message_uuid = ?",
            (canonical_uuid(message_uuid),),
        ).fetchone()
        return (row[0], row[1], row[2], row[3]) if row else None

    def record(self, message_uuid: str, source: str, outcome: str, reason: str | None) -> First:
        uuid = canonical_uuid(message_uuid)
        mine = (source, outcome, reason, _now())
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO submissions VALUES (?, ?, ?, ?, ?)", (uuid, *mine)
            )
        return self.first(uuid) or mine

    def close(self) -> None:
        self._db.close()


MIGRATIONS = (
    Migration(
        1,
        "submissions",
        """
        CREATE TABLE submissions (
            message_uuid TEXT COLLATE "C" PRIMARY KEY,
            source       TEXT NOT NULL,
            outcome      TEXT NOT NULL,
            reason_code  TEXT,
            first_at     TEXT NOT NULL
        );
        """,
    ),
)


class PgSubmissionLog:
    """`SubmissionLog` in PostgreSQL, shared by every validator instance."""

    def __init__(self, url: str) -> None:
        self._db = Database(url, "validator", MIGRATIONS)

    def first(self, message_uuid: str) -> First | None:
        with self._db.use() as conn:
            row = conn.execute(
                "SELECT source, outcome, reason_code, first_at FROM submissions"
                " WHERE message_uuid = %s",
                (canonical_uuid(message_uuid),),
            ).fetchone()
        return (row[0], row[1], row[2], row[3]) if row else None

    def record(self, message_uuid: str, source: str, outcome: str, reason: str | None) -> First:
        uuid = canonical_uuid(message_uuid)
        mine = (source, outcome, reason, _now())
        with self._db.transaction() as conn:
            # The conflict waits for a concurrent insert of the UUID to commit, so the
            # row read next is the one that stands for every instance.
            conn.execute(
                "INSERT INTO submissions VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (message_uuid) DO NOTHING",
                (uuid, *mine),
            )
            row = conn.execute(
                "SELECT source, outcome, reason_code, first_at FROM submissions"
                " WHERE message_uuid = %s",
                (uuid,),
            ).fetchone()
        return (row[0], row[1], row[2], row[3]) if row else mine

    def close(self) -> None:
        self._db.close()


def open_submission_log(settings: Settings, data_dir: Path) -> SubmissionLog:
    """PostgreSQL when DP2_DATABASE_URL is set, else ``validator.sqlite`` in ``data_dir``."""
    if settings.database_url:
        return PgSubmissionLog(settings.database_url)
    return SqliteSubmissionLog(data_dir / "validator.sqlite")

"""The evidence log's storage: one append-only Merkle log, in SQLite or PostgreSQL.

Why two: SQLite is the embedded default (``evidence.sqlite``); with
DP2_DATABASE_URL the log lives in PostgreSQL (schema ``evidence``), so that every
tracing instance appends to one log and hands out receipts of every message. What
the log means, its tree heads and receipts are in tracing.evidence; this module
only keeps the entries.

The rules that make several writers safe, on both backends:

* **The database assigns the index.** An append takes the log's write lock (SQLite:
  ``BEGIN IMMEDIATE``; PostgreSQL: an advisory transaction lock), reads the next
  index and inserts, in one transaction. Appends commit in index order, so every
  reader sees a gap-free prefix of the log.
* **An event is logged once.** Entries are keyed by the event's id as well: an
  event read twice (a redelivery, a partition moving to another instance) keeps
  its first index.
* **No stale leaves.** Each log keeps the leaf hashes it has read, and reads the
  ones appended since (by any instance) before it signs a head or builds a proof.
* **One head per size.** Two instances that sign a head over the same size at once
  both keep the one stored first (the other's signature is over the same root).
"""

from __future__ import annotations

import contextlib
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from brokers.runtime import sqlite
from brokers.runtime.postgres import Database, Migration
from brokers.runtime.records import iso_z
from brokers.runtime.settings import Settings
from brokers.security import merkle, signing
from brokers.security.pki import Identity
from brokers.security.signing import certificate_fingerprint
from schemas import codec
from schemas.models import LifecycleEvent
from tracing.evidence import EVIDENCE_SCHEMA, TreeHead, head_input, receipt_document

#: (index, the event's bytes, its signer's fingerprint) of one logged entry.
Entry = tuple[int, bytes, str]


class VerifiableLog(Protocol):
    """The tracing service's append-only log of believed events (tracing.evidence)."""

    @property
    def size(self) -> int:
        """How many entries the log holds (every instance's)."""
        ...

    def append(self, event: LifecycleEvent, raw: bytes, signer: x509.Certificate) -> int:
        """Log one believed event as it was read; its index (the first one, if logged)."""
        ...

    def keep_certificate(self, cert: x509.Certificate) -> None:
        """Keep a certificate next to the entries (the log's own, for its heads)."""
        ...

    def latest_head(self) -> TreeHead | None:
        """The signed head over the most entries, or None before the first."""
        ...

    def sign_head(self, identity: Identity) -> TreeHead | None:
        """A signed head over everything logged, unless the latest one covers it already."""
        ...

    def receipt(self, message_uuid: str, identity: Identity) -> dict[str, Any] | None:
        """The self-contained receipt of one message (None if nothing of it was logged)."""
        ...

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """The appends inside the block commit together, or not at all."""
        ...

    def close(self) -> None:
        """Release the log; safe to call twice."""
        ...


class _MerkleLog(ABC):
    """What both backends share: the leaf cache, heads and receipts over their storage."""

    def __init__(self) -> None:
        self._leaves = merkle.LeafLog()  # every leaf so far, and the root over them
        # The few signers sign every event: keep each certificate once, not per event.
        self._kept: set[str] = set()
        self._fingerprints = signing.Fingerprints(256)

    # --- the storage of a backend -----------------------------------------------------
    @abstractmethod
    def _insert(
        self, event_id: str, values: tuple[str, bytes, bytes, str], signer: x509.Certificate
    ) -> int:
        """Implemented by each backend (``values[3]`` is ``signer``'s fingerprint; its DER
        is stored only the first time)."""

    @abstractmethod
    def _leaves_from(self, start: int) -> list[tuple[int, bytes]]:
        """Implemented by each backend."""

    @abstractmethod
    def _store_certificate(self, fingerprint: str, der: bytes) -> None:
        """Implemented by each backend."""

    @abstractmethod
    def _latest(self) -> TreeHead | None:
        """Implemented by each backend."""

    @abstractmethod
    def _store_head(self, head: TreeHead) -> TreeHead:
        """Implemented by each backend."""

    @abstractmethod
    def _entries_of(self, message_uuid: str, below: int) -> list[Entry]:
        """Implemented by each backend."""

    @abstractmethod
    def _certificates(self, fingerprints: Sequence[str]) -> dict[str, bytes]:
        """Implemented by each backend."""

    # --- the log ----------------------------------------------------------------------
    @property
    def size(self) -> int:
        self._refresh()
        return len(self._leaves)

    def append(self, event: LifecycleEvent, raw: bytes, signer: x509.Certificate) -> int:
        values = (event.messageUUID.lower(), raw, merkle.leaf_hash(raw), self._fingerprints(signer))
        return self._insert(event.eventId, values, signer)

    def keep_certificate(self, cert: x509.Certificate) -> None:
        fingerprint = certificate_fingerprint(cert)
        self._store_certificate(fingerprint, cert.public_bytes(Encoding.DER))
        self._kept.add(fingerprint)

    def latest_head(self) -> TreeHead | None:
        return self._latest()

    def sign_head(self, identity: Identity) -> TreeHead | None:
        latest = self._latest()
        self._refresh()  # after the head: the leaves always cover the latest head
        size = len(self._leaves)
        if latest is not None and latest.size >= size:
            return latest
        if size == 0:
            return None
        root = self._leaves.root()
        at = iso_z(datetime.now(UTC))
        signature = signing.sign_bytes(identity.private_key, head_input(size, root, at))
        return self._store_head(TreeHead(size, root, at, signature))

    def receipt(self, message_uuid: str, identity: Identity) -> dict[str, Any] | None:
        uuid = message_uuid.lower()
        if not self._entries_of(uuid, below=-1):
            return None
        head = self.sign_head(identity)
        if head is None:
            return None
        # Read after the head is fixed: the statement names every entry of the message
        # below the head, also those another instance appended a moment ago.
        entries = self._entries_of(uuid, below=head.size)
        certs = self._certificates(sorted({signer for _, _, signer in entries}))
        return receipt_document(
            uuid,
            entries,
            head,
            self._leaves.prefix(head.size),
            certificates=certs,
            identity=identity,
        )

    def _refresh(self) -> None:
        """Read the leaves appended since the last read (by this log or another)."""
        for index, leaf in self._leaves_from(len(self._leaves)):
            if index != len(self._leaves):
                break  # never past a gap: appends commit in index order
            self._leaves.append(leaf)


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY, message_uuid TEXT NOT NULL, event BLOB NOT NULL,
    leaf BLOB NOT NULL, signer TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entries_by_message ON entries (message_uuid);
CREATE TABLE IF NOT EXISTS heads (
    size INTEGER PRIMARY KEY, root BLOB NOT NULL, at TEXT NOT NULL, signature BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS certs (fingerprint TEXT PRIMARY KEY, der BLOB NOT NULL);
"""


class EvidenceLog(_MerkleLog):
    """`VerifiableLog` in one SQLite file (the embedded default; processes may share it)."""

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self._db: sqlite3.Connection = sqlite.connect(path)
        self._batched = False
        self._db.executescript(_SQLITE_SCHEMA)
        sqlite.migrate_once(self._db, "entries-by-event-id", self._add_event_ids)
        self._kept = {str(row[0]) for row in self._db.execute("SELECT fingerprint FROM certs")}

    def _add_event_ids(self) -> None:
        """A log from before entries were keyed by event id: give each entry its id."""
        self._db.execute("ALTER TABLE entries ADD COLUMN event_id TEXT")
        rows = self._db.execute("SELECT idx, event FROM entries").fetchall()
        self._db.executemany(
            "UPDATE entries SET event_id = ? WHERE idx = ?",
            [(codec.decode(bytes(raw), LifecycleEvent).eventId, idx) for idx, raw in rows],
        )
        self._db.execute("CREATE UNIQUE INDEX entries_by_event ON entries (event_id)")

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Every append inside in one transaction that holds the file's write lock (one
        commit per fetched batch, not per event); rolled back whole when it raises."""
        if self._batched:
            yield
            return
        self._batched = True
        try:
            with self._write_lock():
                yield
        finally:
            self._batched = False

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[sqlite3.Connection]:
        """One transaction holding the file's write lock from its first statement (or
        the open batch's)."""
        if self._batched and self._db.in_transaction:
            yield self._db
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.rollback()
            # Certificates inserted in the rolled-back transaction are gone again.
            self._kept = {str(r[0]) for r in self._db.execute("SELECT fingerprint FROM certs")}
            raise
        self._db.commit()

    def _insert(
        self, event_id: str, values: tuple[str, bytes, bytes, str], signer: x509.Certificate
    ) -> int:
        with self._write_lock() as db:
            found = db.execute("SELECT idx FROM entries WHERE event_id = ?", (event_id,)).fetchone()
            if found is not None:
                return int(found[0])
            index = int(db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries").fetchone()[0])
            if values[3] not in self._kept:
                der = signer.public_bytes(Encoding.DER)
                db.execute("INSERT OR IGNORE INTO certs VALUES (?, ?)", (values[3], der))
            db.execute(
                "INSERT INTO entries (idx, message_uuid, event, leaf, signer, event_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (index, *values, event_id),
            )
        self._kept.add(values[3])
        return index

    def _leaves_from(self, start: int) -> list[tuple[int, bytes]]:
        rows = self._db.execute(
            "SELECT idx, leaf FROM entries WHERE idx >= ? ORDER BY idx", (start,)
        ).fetchall()
        return [(int(idx), bytes(leaf)) for idx, leaf in rows]

    def _store_certificate(self, fingerprint: str, der: bytes) -> None:
        with self._write_lock() as db:
            db.execute("INSERT OR IGNORE INTO certs VALUES (?, ?)", (fingerprint, der))

    def _latest(self) -> TreeHead | None:
        row = self._db.execute(
            "SELECT size, root, at, signature FROM heads ORDER BY size DESC LIMIT 1"
        ).fetchone()
        return None if row is None else TreeHead(row[0], bytes(row[1]), row[2], bytes(row[3]))

    def _store_head(self, head: TreeHead) -> TreeHead:
        with self._write_lock():
            self._db.execute(
                "INSERT OR IGNORE INTO heads VALUES (?, ?, ?, ?)",
                (head.size, head.root, head.at, head.signature),
            )
            row = self._db.execute(
                "SELECT size, root, at, signature FROM heads WHERE size = ?", (head.size,)
            ).fetchone()
        return TreeHead(row[0], bytes(row[1]), row[2], bytes(row[3]))

    def _entries_of(self, message_uuid: str, below: int) -> list[Entry]:
        rows = self._db.execute(
            "SELECT idx, event, signer FROM entries WHERE message_uuid = ? AND (? < 0 OR idx < ?)"
            " ORDER BY idx",
            (message_uuid, below, below),
        ).fetchall()
        return [(int(idx), bytes(raw), str(signer)) for idx, raw, signer in rows]

    def _certificates(self, fingerprints: Sequence[str]) -> dict[str, bytes]:
        return {
            str(fp): bytes(der)
            for fp, der in self._db.execute(
                f"SELECT fingerprint, der FROM certs WHERE fingerprint IN "  # noqa: S608 - placeholders only
                f"({','.join('?' * len(fingerprints))})",
                list(fingerprints),
            )
        }

    def close(self) -> None:
        self._db.close()


MIGRATIONS = (
    Migration(
        1,
        "entries, heads and certificates",
        """
        CREATE TABLE entries (
            idx          BIGINT PRIMARY KEY,
            event_id     TEXT COLLATE "C" NOT NULL UNIQUE,
            message_uuid TEXT COLLATE "C" NOT NULL,
            event        BYTEA NOT NULL,  -- as read: the signed single-object encoding
            leaf         BYTEA NOT NULL,  -- brokers.security.merkle.leaf_hash(event)
            signer       TEXT NOT NULL    -- fingerprint, a key of certs
        );
        CREATE INDEX entries_by_message ON entries (message_uuid, idx);
        CREATE TABLE heads (
            size      BIGINT PRIMARY KEY,
            root      BYTEA NOT NULL,
            at        TEXT NOT NULL,
            signature BYTEA NOT NULL
        );
        CREATE TABLE certs (fingerprint TEXT COLLATE "C" PRIMARY KEY, der BYTEA NOT NULL);
        """,
    ),
)


class PgEvidenceLog(_MerkleLog):
    """`VerifiableLog` in PostgreSQL, appended to by every tracing instance."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self._db = Database(url, EVIDENCE_SCHEMA, MIGRATIONS)
        with self._db.use() as conn:
            self._kept = {str(row[0]) for row in conn.execute("SELECT fingerprint FROM certs")}

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Each append is its own transaction here: the index lock is shared by every
        instance, and one held across a batch would make the others wait for it."""
        return contextlib.nullcontext()

    def _insert(
        self, event_id: str, values: tuple[str, bytes, bytes, str], signer: x509.Certificate
    ) -> int:
        with self._db.transaction() as conn:
            self._db.lock(conn, "evidence-append")  # until commit: the next index is ours
            found = conn.execute(
                "SELECT idx FROM entries WHERE event_id = %s", (event_id,)
            ).fetchone()
            if found is not None:
                return int(found[0])
            row = conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries").fetchone()
            index = int(row[0]) if row else 0
            if values[3] not in self._kept:
                der = signer.public_bytes(Encoding.DER)
                conn.execute(
                    "INSERT INTO certs VALUES (%s, %s) ON CONFLICT DO NOTHING", (values[3], der)
                )
            conn.execute(
                "INSERT INTO entries (idx, message_uuid, event, leaf, signer, event_id)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (index, *values, event_id),
            )
        self._kept.add(values[3])
        return index

    def _leaves_from(self, start: int) -> list[tuple[int, bytes]]:
        with self._db.use() as conn:
            rows = conn.execute(
                "SELECT idx, leaf FROM entries WHERE idx >= %s ORDER BY idx", (start,)
            ).fetchall()
        return [(int(idx), bytes(leaf)) for idx, leaf in rows]

    def _store_certificate(self, fingerprint: str, der: bytes) -> None:
        with self._db.use() as conn:
            conn.execute(
                "INSERT INTO certs VALUES (%s, %s) ON CONFLICT DO NOTHING", (fingerprint, der)
            )

    def _latest(self) -> TreeHead | None:
        with self._db.use() as conn:
            row = conn.execute(
                "SELECT size, root, at, signature FROM heads ORDER BY size DESC LIMIT 1"
            ).fetchone()
        return None if row is None else TreeHead(int(row[0]), bytes(row[1]), row[2], bytes(row[3]))

    def _store_head(self, head: TreeHead) -> TreeHead:
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO heads VALUES (%s, %s, %s, %s) ON CONFLICT (size) DO NOTHING",
                (head.size, head.root, head.at, head.signature),
            )
            row = conn.execute(
                "SELECT size, root, at, signature FROM heads WHERE size = %s", (head.size,)
            ).fetchone()
        assert row is not None  # noqa: S101 - inserted or already there, in this transaction
        return TreeHead(int(row[0]), bytes(row[1]), row[2], bytes(row[3]))

    def _entries_of(self, message_uuid: str, below: int) -> list[Entry]:
        with self._db.use() as conn:
            rows = conn.execute(
                "SELECT idx, event, signer FROM entries WHERE message_uuid = %s"
                " AND (%s < 0 OR idx < %s) ORDER BY idx",
                (message_uuid, below, below),
            ).fetchall()
        return [(int(idx), bytes(raw), str(signer)) for idx, raw, signer in rows]

    def _certificates(self, fingerprints: Sequence[str]) -> dict[str, bytes]:
        with self._db.use() as conn:
            rows = conn.execute(
                "SELECT fingerprint, der FROM certs WHERE fingerprint = ANY(%s)",
                (list(fingerprints),),
            ).fetchall()
        return {str(fp): bytes(der) for fp, der in rows}

    def close(self) -> None:
        self._db.close()


def open_evidence_log(settings: Settings, path: Path) -> VerifiableLog:
    """PostgreSQL when DP2_DATABASE_URL is set, else the SQLite file ``path``."""
    if settings.database_url:
        return PgEvidenceLog(settings.database_url)
    return EvidenceLog(path)

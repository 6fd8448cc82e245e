"""Reference mailbox provider: where a digital letter finally lands, in clear.

Why it exists: it is the other end of the encryption — the only place (with the
recipient's own apps) where documents and the recipient's CPR number are in clear —
and the model for real providers' connectors. connectors.delivery does the
security work (verify again, decrypt, DELIVERED signed by the provider); this
module is the store it hands plain messages to, and the facts it lets the
notifier use.

Documents stay out of memory: the store keeps a plaintext folder of its own next to
its SQLite (``mailbox-<provider>.documents/``, content-addressed by the plaintext's
SHA-256, files 0600 in 0700 folders: brokers.runtime.blobstore.FileBlobStore), and
the delivery handler decrypts every blob-stored document a chunk at a time into it
(connectors.delivery). The stored envelope names such a file by reference (a
``BlobContent`` without a nonce), so a 99.5 MB letter is a small row; readers stream
it back with :meth:`MailboxStore.chunks`, checked against its size and SHA-256
(connectors.documents). Small documents stay inline in the row, as before. A file in
the folder is never deleted by a failed delivery: its address may be shared with a
letter already stored, and a redelivery writes the same bytes to the same name.

Exactly once, under Kafka redelivery: the store's primary key is the message UUID
in lower case (``ON CONFLICT DO NOTHING``; an upper-case spelling is the same letter), and
the DELIVERED event's id is derived from provider and message, so re-processing after
a crash re-emits the *same* event, which the trace keeps once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from brokers.runtime import sqlite
from brokers.runtime.blobstore import FileBlobStore
from brokers.runtime.host import ServiceContext
from brokers.runtime.kafka import ensure_topics
from brokers.runtime.postgres import Migration
from brokers.runtime.sqlstore import SqliteStore, Tables, open_store, schema_name
from brokers.runtime.tasks import AsyncResource
from connectors import documents
from connectors.delivery import DeliveryHandler
from schemas import codec
from schemas.errors import ConfigError
from schemas.models import Envelope, File, IdType, MessageType
from schemas.values import canonical_uuid
from schemas.vocabulary import provider_topic

log = structlog.get_logger("dp2.mailbox")
_PIECE = 1024 * 1024


def documents_dir(store_path: Path) -> Path:
    """The plaintext folder of the mailbox store at `store_path` (next to it)."""
    return store_path.with_name(store_path.stem + ".documents")


def _lowercase_uuids(db: sqlite3.Connection) -> None:
    """A SQLite mailbox from before UUIDs were folded: a letter stored twice is kept once."""
    sqlite.lowercase_column(db, "messages", "message_uuid", keep_first="received_at, rowid")


_SQLITE = """
CREATE TABLE IF NOT EXISTS messages (message_uuid TEXT PRIMARY KEY,
    recipient_id TEXT NOT NULL, sender_id TEXT NOT NULL, label TEXT NOT NULL,
    received_at TEXT NOT NULL, envelope BLOB NOT NULL);
"""
_POSTGRES = (
    Migration(
        1,
        "messages",
        """
        CREATE TABLE messages (
            seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
            message_uuid TEXT COLLATE "C" PRIMARY KEY, recipient_id TEXT NOT NULL,
            sender_id TEXT NOT NULL, label TEXT NOT NULL, received_at TEXT NOT NULL,
            envelope BYTEA NOT NULL);
        CREATE INDEX messages_recipient ON messages (recipient_id, seq);
        """,
    ),
)
TABLES = Tables(_SQLITE, _POSTGRES, (("lowercase-message-uuids", _lowercase_uuids),))


class MailboxStore:
    """Delivered messages of one provider, plain, keyed by message UUID; big documents
    in :attr:`documents`, named from the stored envelope by reference.

    The rows are in ``mailbox-<provider>.sqlite`` or, with DP2_DATABASE_URL, in the
    PostgreSQL schema ``mailbox_<provider>``, shared by every instance of the mailbox
    and by the apps connector that reads it (the documents folder is then a volume
    they share, as the blob store is).
    """

    def __init__(self, path: Path | str, database_url: str | None = None) -> None:
        path = Path(path)
        self.documents = FileBlobStore(documents_dir(path))
        self._db = open_store(database_url, path, schema_name(path.stem), TABLES)
        # The order letters arrived in: SQLite's rowid, PostgreSQL's identity column.
        self._position = "rowid" if isinstance(self._db, SqliteStore) else "seq"

    async def receive(self, message: Envelope) -> None:
        """The Receiver side of connectors.delivery: store it (a repeat changes nothing)."""
        stored = self.put(message)
        log.info("stored", message_id=message.header.messageUUID, first_time=stored)

    def put(self, envelope: Envelope) -> bool:
        """Store a plain envelope; False if this UUID is already in the mailbox.

        Big documents are in :attr:`documents` already (the envelope names them), so
        the row is small; an envelope handed over with every file inline (a caller
        other than the delivery handler) is still written into SQLite as a zeroblob of
        its size a piece at a time (incremental blob I/O): bound as a parameter, SQLite
        would copy a big letter twice more on its way to the page.
        """
        header = envelope.header
        encoded = memoryview(codec.encode(envelope))
        row = (
            canonical_uuid(header.messageUUID),
            header.recipient.recipientID,
            header.sender.senderID,
            header.label,
            datetime.now(UTC).isoformat(),
        )
        insert = (
            "INSERT INTO messages (message_uuid, recipient_id, sender_id, label, received_at,"
            " envelope) VALUES (?, ?, ?, ?, ?, {}) ON CONFLICT DO NOTHING"
        )
        if not isinstance(self._db, SqliteStore):
            return self._db.run(insert.format("?"), (*row, bytes(encoded))) == 1
        db = self._db.connection
        with db:  # one transaction: the row appears whole or not at all
            cursor = db.execute(insert.format("zeroblob(?)"), (*row, len(encoded)))
            if cursor.rowcount != 1:
                return False
            assert cursor.lastrowid is not None  # noqa: S101 - the row was just inserted
            with db.blobopen("messages", "envelope", cursor.lastrowid) as blob:
                for start in range(0, len(encoded), _PIECE):
                    blob.write(encoded[start : start + _PIECE])
        return True

    def get(self, message_uuid: str, recipient_id: str | None = None) -> Envelope | None:
        """The stored envelope (only if addressed to ``recipient_id``, when given); a file
        kept by reference is read with ``chunks``."""
        query, params = (
            "SELECT envelope FROM messages WHERE message_uuid = ?",
            [canonical_uuid(message_uuid)],
        )
        if recipient_id is not None:
            query, params = query + " AND recipient_id = ?", [*params, recipient_id]
        row = self._db.one(query, params)
        return codec.decode(bytes(row[0]), Envelope) if row else None

    def page(
        self, recipient_id: str, before: int | None, limit: int
    ) -> list[tuple[str, str, Envelope, int]]:
        """A recipient's letters, newest first: (UUID, received at, envelope, position),
        from those older than position ``before`` when it is given."""
        position = self._position  # the store's own column name, never input
        older = f" AND {position} < ?" if before is not None else ""
        rows = self._db.all(
            f"SELECT message_uuid, received_at, envelope, {position} FROM messages"  # noqa: S608
            f" WHERE recipient_id = ?{older} ORDER BY {position} DESC LIMIT ?",
            [recipient_id, *([before] if before is not None else []), limit],
        )
        return [(r[0], r[1], codec.decode(bytes(r[2]), Envelope), int(r[3])) for r in rows]

    def chunks(self, file: File) -> Iterator[bytes]:
        """A stored file's bytes in pieces, checked as they are read (BLOB_CORRUPT)."""
        return documents.chunks(file, self.documents)

    def read(self, file: File) -> bytes:
        """A stored file's bytes whole (small files: big ones stream with ``chunks``)."""
        return documents.read(file, self.documents)

    def count(self, message_uuid: str | None = None) -> int:
        if message_uuid is None:
            row = self._db.one("SELECT COUNT(*) FROM messages")
        else:
            row = self._db.one(
                "SELECT COUNT(*) FROM messages WHERE message_uuid = ?",
                (canonical_uuid(message_uuid),),
            )
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._db.close()


def notification_facts(plain: Envelope, provider_id: str) -> dict[str, str]:
    """What the notifier may say about a delivered message, and nothing more.

    The sender's name when the sender is an authority (a citizen's name would reach
    dp2.lifecycle in clear); the label only when the sender marked it non-sensitive;
    a NemSMS's own text (it *is* the notification). Never document content, never an
    identifier of the recipient.
    """
    header = plain.header
    facts = {"provider": provider_id, "messageType": header.messageType.value}
    if header.sender.label and header.sender.idType is IdType.CVR:
        facts["senderLabel"] = header.sender.label
    if not header.labelIsSensitive:
        facts["label"] = header.label
    if header.messageType is MessageType.NEMSMS and header.notification:
        facts["nemSmsText"] = header.notification
    return facts


class MailboxService(AsyncResource):
    """The reference mailbox of one provider: connectors.delivery into a MailboxStore."""

    def __init__(self, ctx: ServiceContext) -> None:
        if not ctx.provider:
            raise ConfigError(
                "a mailbox needs --provider",
                hint="Run: dp2 run mailbox --provider ID",
            )
        provider = ctx.provider
        self.name = f"mailbox-{provider}"
        self._kafka = ctx.settings.kafka
        self._topic = provider_topic(provider)
        self.store = MailboxStore(
            ctx.data_dir / f"mailbox-{provider}.sqlite", ctx.settings.database_url
        )
        self._delivery = DeliveryHandler.for_provider(
            ctx.settings,
            provider,
            self.store,
            facts=lambda plain: notification_facts(plain, provider),
            documents=self.store.documents,
        )
        self.workers = [ctx.worker(self.name, [self._topic.name], self._delivery.handle)]

    async def start(self) -> None:
        await ensure_topics(self._kafka, [self._topic])  # before the worker subscribes

    async def stop(self) -> None:
        await self._delivery.close()
        self.store.close()

    def health(self) -> dict[str, Any]:
        return {"status": "ok"}


def create(ctx: ServiceContext) -> MailboxService:
    return MailboxService(ctx)

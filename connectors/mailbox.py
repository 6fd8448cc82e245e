"""Reference mailbox provider: where a digital letter finally lands and is decrypted.

Why it exists: it is the other end of the encryption — the only place (with the
recipient's own apps) where documents and the recipient's CPR number are in clear —
and the model for real providers' connectors. It consumes
``dp2.deliver.<provider>``, verifies the sender's signature again (end-to-end
authenticity: the backbone is not trusted with integrity either), decrypts with
the provider's X25519 key, stores the plain message in SQLite, and emits DELIVERED
signed by the provider.

Exactly once, under Kafka redelivery: the store's primary key is the message UUID
(``INSERT OR IGNORE``), and the DELIVERED event's id is derived from provider and
message, so re-processing after a crash re-emits the *same* event, which the trace
keeps once. A message that cannot be opened gets FAILED with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiokafka import ConsumerRecord
from cryptography import x509

from brokers import crypto, sqlite
from brokers.blobstore import BlobStore
from brokers.pki import Identity, TrustStore
from brokers.service import Output, lifecycle_output, source_of
from brokers.validator import SIGNER_CERT_HEADER
from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import Envelope, LifecycleEvent, LifecycleState, MessageType
from tracing import context

log = structlog.get_logger("dp2.mailbox")


class MailboxStore:
    """Delivered messages of one provider, plain, keyed by message UUID."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite.connect(str(path))
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS messages (message_uuid TEXT PRIMARY KEY,"
            " recipient_id TEXT NOT NULL, sender_id TEXT NOT NULL, label TEXT NOT NULL,"
            " received_at TEXT NOT NULL, envelope BLOB NOT NULL)"
        )
        self._db.commit()

    def put(self, envelope: Envelope) -> bool:
        """Store a plain envelope; False if this UUID is already in the mailbox."""
        header = envelope.header
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?)",
            (
                header.messageUUID,
                header.recipient.recipientID,
                header.sender.senderID,
                header.label,
                datetime.now(UTC).isoformat(),
                codec.encode(envelope),
            ),
        )
        self._db.commit()
        return cursor.rowcount == 1

    def get(self, message_uuid: str) -> Envelope | None:
        row = self._db.execute(
            "SELECT envelope FROM messages WHERE message_uuid = ?", (message_uuid,)
        ).fetchone()
        return codec.decode(row[0], Envelope) if row else None

    def count(self, message_uuid: str | None = None) -> int:
        if message_uuid is None:
            return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        return int(
            self._db.execute(
                "SELECT COUNT(*) FROM messages WHERE message_uuid = ?", (message_uuid,)
            ).fetchone()[0]
        )

    def close(self) -> None:
        self._db.close()


class MailboxProvider:
    """The handler of a provider's delivery topic."""

    def __init__(
        self,
        provider_id: str,
        identity: Identity,
        trust: TrustStore,
        store: MailboxStore,
        blob_store: BlobStore,
        *,
        pseudonyms: crypto.Pseudonymizer,
    ) -> None:
        if identity.encryption_key is None:
            raise Dp2Error(
                f"identity {identity.name!r} has no encryption key",
                reason_code="NOT_A_PROVIDER",
                hint="Issue it with: dp2 pki issue provider --id " + provider_id,
            )
        self.provider_id = provider_id
        self.actor = f"mailbox:{provider_id}"
        self._identity = identity
        self._decryption_key = identity.encryption_key
        self._trust = trust
        self._store = store
        self._blobs = blob_store
        self._pseudonyms = pseudonyms

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> Sequence[Output]:
        sealed = codec.decode(record.value or b"", Envelope)
        header = sealed.header
        common: dict[str, Any] = {
            "sender_id": header.sender.senderID,
            "recipient_ref": header.recipient.recipientID,
        }
        try:
            certificate = self._signer(sealed, record)
            self._trust.reload()
            self._trust.verify_certificate(certificate, datetime.now(UTC))
            crypto.verify_envelope(sealed, certificate)
            plain = crypto.open_envelope(
                sealed, self._decryption_key, self._blobs, pseudonymizer=self._pseudonyms
            )
        except Dp2Error as exc:
            if exc.retriable:
                raise
            return [
                lifecycle_output(
                    header.messageUUID,
                    LifecycleState.FAILED,
                    self.actor,
                    reason_code=exc.reason_code,
                    reason_text=f"{exc.message.rstrip('.')}. {exc.hint}",
                    source=source_of(record),
                    **common,
                )
            ]
        stored = self._store.put(plain)
        log.info("delivered", message_id=header.messageUUID, first_time=stored)
        event_output = lifecycle_output(
            header.messageUUID,
            LifecycleState.DELIVERED,
            self.actor,
            channel="digital",
            attributes=notification_facts(plain, self.provider_id),
            source="delivered",  # one DELIVERED per message and provider, however often
            **common,
        )
        event = codec.decode(event_output.value, LifecycleEvent)
        signed = crypto.sign_event(event, self._identity.private_key, self._identity.fingerprint)
        return [Output(event_output.topic, codec.encode(signed), key=event_output.key)]

    def _signer(self, sealed: Envelope, record: ConsumerRecord[bytes, bytes]) -> x509.Certificate:
        der = context.header_value(record.headers, SIGNER_CERT_HEADER)
        if der is not None:
            return x509.load_der_x509_certificate(der)
        if sealed.signature is None:
            raise crypto.SecurityError(
                "the envelope is not signed",
                reason_code="SIGNATURE_MISSING",
                hint="Only signed envelopes are delivered.",
            )
        return self._trust.certificate(sealed.signature.signerCertificate)


def notification_facts(plain: Envelope, provider_id: str) -> dict[str, str]:
    """What the notifier may say about a delivered message, and nothing more.

    The sender's name always; the label only when the sender marked it
    non-sensitive; a NemSMS's own text (it *is* the notification). Never document
    content, never an identifier of the recipient.
    """
    header = plain.header
    facts = {"provider": provider_id, "messageType": header.messageType.value}
    if header.sender.label:
        facts["senderLabel"] = header.sender.label
    if not header.labelIsSensitive:
        facts["label"] = header.label
    if header.messageType is MessageType.NEMSMS and header.notification:
        facts["nemSmsText"] = header.notification
    return facts

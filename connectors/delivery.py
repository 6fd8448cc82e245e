"""The receiving end of the backbone, shared by every connector that gets post.

Why it exists: whoever receives a message — the reference mailbox, an authority's
ESDH connector, a vendor's mailbox app — must do the same security work before
trusting it, and it must not be re-implemented (and got wrong) per vendor. A
``DeliveryHandler`` consumes ``dp2.deliver.<provider>``, and for each envelope:

1. verifies the sender's signature and certificate (chain, validity, revocation)
   again — end-to-end authenticity: the backbone is not trusted with integrity —
   and that the signer may send as the sender, within Digital Post's limits (the
   validator's own rules: a record that skipped the validator is refused here). A
   citizen's message must come from the provider the register names for that
   citizen, or a citizen gateway (``NOT_CITIZENS_PROVIDER``): the handler reads the
   register's directory once the first citizen's message arrives, so a mailbox that
   only ever gets authorities' post keeps no copy of it;
2. re-checks what a store or a folder drop builds names from: the message UUID
   (``INVALID_MESSAGE_UUID``) and every file name (``INVALID_FILENAME``,
   ``UNSAFE_FILENAME``, ``TEXT_TOO_LONG``), with the validator's own rules, since a
   record on a delivery topic may not have passed the validator (file names travel
   in clear, so they are checked before anything is decrypted); then decrypts the
   documents with the provider's X25519 key and restores the sealed personal data
   (CPR numbers, and the names, addresses, e-mail and phone of
   brokers.security.personal) field for field, as the sender built the envelope —
   the plaintext exists only from here on. A receiver that keeps a plaintext store
   of its own (``documents``, e.g. the reference mailbox's) gets each blob-stored
   document decrypted a chunk at a time into it and named there by reference
   (connectors.documents reads it), so a 99.5 MB letter is never held whole; any
   other receiver gets every file inline;
3. hands the plain message to the receiver (``await receiver.receive(message)``),
   which stores it durably and idempotently;
4. emits DELIVERED signed by the provider, with the facts the notifier may use.

A message that cannot be verified or opened gets FAILED with its reason (and is
not handed over). Exactly once under Kafka redelivery: the DELIVERED event's id is
derived from provider and message, so re-processing re-emits the *same* event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import structlog
from aiokafka import ConsumerRecord
from cryptography import x509

from brokers.contacts.register import ContactRegister
from brokers.runtime import context
from brokers.runtime.blobstore import BlobStore, FileBlobStore
from brokers.runtime.records import Output, lifecycle_output, source_of
from brokers.runtime.settings import Settings
from brokers.security import sealing, signing
from brokers.security.pki import EventSigner, Identity, Pki, provider_identity_name
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from brokers.security.trust import TrustStore
from brokers.validator.rules import (
    Directory,
    check_filenames,
    check_limits,
    check_message_uuid,
    check_sender,
)
from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import ContactRecord, Envelope, IdType, LifecycleState
from schemas.vocabulary import SIGNER_CERT_HEADER

log = structlog.get_logger("dp2.delivery")


class Receiver(Protocol):
    """Where verified, decrypted post goes (a mailbox store, an ESDH journal queue)."""

    async def receive(self, message: Envelope) -> None: ...


Facts = Callable[[Envelope], dict[str, str]]


class _NoDirectory:
    """A register that names no provider for anyone (fails closed)."""

    def get(self, recipient_ref: str) -> ContactRecord | None:
        return None


_NOBODY: Final = _NoDirectory()


class DeliveryHandler:
    """The handler of one provider's delivery topic (see the module docstring)."""

    def __init__(
        self,
        provider_id: str,
        identity: Identity,
        trust: TrustStore,
        receiver: Receiver | Callable[[Envelope], Awaitable[None]],
        blob_store: BlobStore,
        *,
        pseudonyms: Pseudonymizer,
        actor: str | None = None,
        facts: Facts | None = None,
        directory: ContactRegister | None = None,
        documents: BlobStore | None = None,
    ) -> None:
        """``directory``: the register (not yet started: the handler starts it when a
        citizen's message first arrives, and ``close`` stops it); without one, no
        citizen's message is accepted except from a citizen gateway. ``documents``:
        the receiver's own plaintext store, where blob-stored documents are opened
        into (never the deployment's shared blob store); without it, inline."""
        if identity.encryption_key is None:
            raise Dp2Error(
                f"identity {identity.name!r} has no encryption key",
                reason_code="NOT_A_PROVIDER",
                hint="Issue it with: dp2 pki issue provider --id " + provider_id,
            )
        self.provider_id = provider_id
        self.actor = actor or f"mailbox:{provider_id}"
        self._identity = identity
        self._event_signer = EventSigner(identity)
        self._decryption_key = identity.encryption_key
        self._trust = trust
        self._receive = receiver.receive if hasattr(receiver, "receive") else receiver
        self._blobs = blob_store
        self._documents = documents
        self._pseudonyms = pseudonyms
        self._facts = facts or (lambda plain: {"provider": provider_id})
        self._directory: Directory = directory if directory is not None else _NOBODY
        self._register = directory
        self._register_started = False

    @classmethod
    def for_provider(
        cls,
        settings: Settings,
        provider_id: str,
        receiver: Receiver | Callable[[Envelope], Awaitable[None]],
        **kwargs: Any,
    ) -> DeliveryHandler:
        """The handler of ``provider_id`` in the deployment of ``settings`` (its PKI,
        blob store and pseudonym key); ``kwargs`` as for the constructor."""
        pki_root = settings.pki_dir
        return cls(
            provider_id,
            Pki(pki_root).identity(provider_identity_name(provider_id)),
            TrustStore(pki_root),
            receiver,
            FileBlobStore(settings.home / "blobs"),
            pseudonyms=Pseudonymizer(pseudonym_key(settings.home)),
            directory=ContactRegister(settings.kafka),
            **kwargs,
        )

    async def prepare(self, sealed: Envelope) -> None:
        """Make ready what ``open`` needs for this envelope: the register, for a citizen's."""
        if (
            sealed.header.sender.idType is IdType.CPR
            and self._register is not None
            and not self._register_started
        ):
            await self._register.start()
            self._register_started = True

    async def close(self) -> None:
        """Stop the register's cache if a citizen's message started it."""
        if self._register is not None and self._register_started:
            self._register_started = False
            await self._register.stop()

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> Sequence[Output]:
        sealed = codec.decode(record.value or b"", Envelope)
        header = sealed.header
        common: dict[str, Any] = {
            "sender_id": header.sender.senderID,
            "recipient_ref": header.recipient.recipientID,
        }
        await self.prepare(sealed)  # a register that cannot start fails the batch, not the letter
        try:
            plain = self.open(sealed, record)
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
        await self._receive(plain)
        log.info("delivered", message_id=header.messageUUID, provider=self.provider_id)
        event_output = lifecycle_output(
            header.messageUUID,
            LifecycleState.DELIVERED,
            self.actor,
            channel="digital",
            attributes=self._facts(plain),
            source="delivered",  # one DELIVERED per message and provider, however often
            **common,
        )
        # Signed by this provider when the round is produced, with the other DELIVERED
        # of the batch under one signature (brokers.runtime.kafka.sign_round).
        return [dataclasses.replace(event_output, sign_as=self._event_signer)]

    def open(self, sealed: Envelope, record: ConsumerRecord[bytes, bytes]) -> Envelope:
        """The verified, decrypted message (raises a Dp2Error saying what failed)."""
        check_message_uuid(sealed.header.messageUUID)
        certificate = self._signer(sealed, record)
        self._trust.reload()
        self._trust.verify_certificate(certificate, datetime.now(UTC))
        signing.verify_envelope(sealed, certificate)
        # Defence in depth: the validator's authorisation and limits, again.
        check_sender(self._trust, certificate, sealed, self._directory)
        check_limits(sealed, datetime.now(UTC))
        if sealed.body is not None:  # names are in clear: nothing is opened for a bad one
            check_filenames(sealing.files_of(sealed.body))
        return sealing.open_envelope(
            sealed,
            self._decryption_key,
            self._blobs,
            pseudonymizer=self._pseudonyms,
            documents=self._documents,
        )

    def signed(self, event_output: Output) -> Output:
        """A lifecycle output signed by this provider (a receipt others can verify)."""
        value = self._event_signer.sign_encoded(event_output.value)
        return Output(event_output.topic, value, key=event_output.key)

    def _signer(self, sealed: Envelope, record: ConsumerRecord[bytes, bytes]) -> x509.Certificate:
        der = context.header_value(record.headers, SIGNER_CERT_HEADER)
        if der is not None:
            try:
                return signing.load_certificate_der(der)
            except ValueError as exc:
                raise signing.SecurityError(
                    "the dp2-signer-cert header is not a DER certificate",
                    reason_code="UNKNOWN_CERTIFICATE",
                    hint="The validator should have rejected this; re-drive it through it.",
                ) from exc
        if sealed.signature is None:
            raise signing.SecurityError(
                "the envelope is not signed",
                reason_code="SIGNATURE_MISSING",
                hint="Only signed envelopes are delivered.",
            )
        return self._trust.certificate(sealed.signature.signerCertificate)

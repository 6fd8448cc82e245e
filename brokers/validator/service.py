"""Validator: the gate between what connectors submit and what the backbone carries.

Consumes ``dp2.submitted``; forwards valid envelopes to ``dp2.accepted`` with an
ACCEPTED event, and answers everything else with REJECTED carrying a stable reason
code and a sentence saying how to fix it. It works on the sealed envelope only:
signatures, certificates and metadata, never a document's plaintext.

Checks, in order (the first failure decides):

| code | what was wrong |
|---|---|
| INVALID_MESSAGE_UUID | messageUUID is not a version-4 UUID |
| TOO_MANY_HEADERS, HEADERS_TOO_LARGE | over 32 headers or 64 KiB of them (runtime.headers) |
| DUPLICATE (event, not a rejection) | the UUID was submitted before; the first outcome stands |
| SIGNATURE_MISSING / CERTIFICATE_MISMATCH / SIGNATURE_INVALID | see brokers.security |
| CERTIFICATE_TOO_LARGE | a dp2-signer-cert header over 16 KiB (never parsed) |
| UNKNOWN_CERTIFICATE / UNTRUSTED_ISSUER / CERTIFICATE_EXPIRED /        | see brokers.security.pki |
| CERTIFICATE_NOT_YET_VALID / CERTIFICATE_REVOKED                        |                 |
| SENDER_NOT_AUTHORISED | the signer may not send as the sender CVR, or for a citizen (CPR) |
| NOT_CITIZENS_PROVIDER | a citizen's message from a provider the register does not name for them |
| UNKNOWN_MESSAGE_TYPE, NEMSMS_INVALID, BODY_MISSING, NO_DOCUMENT_FILE | MeMo structure |
| LABEL_TOO_LONG, NOTIFICATION_TOO_LONG, TEXT_TOO_LONG | MeMo text limits (256 / 160) |
| TOO_MANY_ATTACHMENTS | more than 10 additional documents |
| TOO_MANY_TECHNICAL_DOCUMENTS, TOO_MANY_FILES | over 10 technical documents; 10 files a document |
| MESSAGE_TOO_LARGE | over 99.5 MB (authority) or 60 MB (citizen), as claimed or as stored |
| BLOB_CLAIM_INVALID | a blob claim with a negative size, a SHA-256 not 32 bytes, another ref |
| BLOB_MISSING, BLOB_CORRUPT | a claimed blob not in the store, or not as claimed (.blobs) |
| INVALID_CVR, CPR_IN_CLEAR, INVALID_ID | identifiers: CVR 8 digits; CPR only as pseudonym |
| INVALID_FILENAME | a file name with ``< > : " / \\ | ? *``, control or odd space characters |
| UNSAFE_FILENAME | an empty file name, or ``.``, ``..`` (a file system reads them as folders) |
| ENCRYPTION_MISSING | documents not encrypted for a mailbox provider |
| SCHEDULE_TOO_FAR | doNotDeliverUntilDate more than a year ahead (NemSMS too) |
| CREATED_IN_FUTURE, CREATED_TOO_OLD | createdDateTime over 15 minutes ahead, or over 366 days old |
| REPLY_BY_BEFORE_CREATED | replyByDateTime before createdDateTime |

Over the header budget, a record is rejected before its signer is looked at, on its own
timeline naming the UUID it claimed (as an unverified one is), and nothing is recorded:
its envelope was never judged, so the same message sent again with DP2's own headers
is not a DUPLICATE, and nobody can pin a REJECTED on another's message with a header.
What the blob store holds is read last — after the signature, and only for a blob
within the size limit — in a thread, a piece at a time.

A tombstone (a record without a value) is no message: it is dead-lettered as
MALFORMED_RECORD and kept as a tombstone, so a re-drive sends a tombstone again.

Message UUIDs are compared in lower case (schemas.models folds them when a record is
decoded), so a resubmission in upper case is the same message: a DUPLICATE.

Duplicates: the first submission of a UUID is recorded (brokers.validator.submissions:
SQLite, or PostgreSQL shared by every instance, keyed by UUID, with the Kafka
position it came from). A later submission of the same UUID from another position
gets DUPLICATE on the first message's timeline, pointing at the first outcome, and
is not forwarded; so does one that another instance recorded first while this one
judged it. The same position seen again is a Kafka redelivery: the outputs are
recomputed and re-sent with the same event ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRecord
from cryptography import x509

from brokers.contacts.register import ContactRegister
from brokers.runtime import context, headers
from brokers.runtime.blobstore import BlobStore, FileBlobStore, MemoryBlobStore
from brokers.runtime.host import ServiceContext
from brokers.runtime.records import (
    Output,
    lifecycle_output,
    rejection_output,
    source_of,
    unverified_rejection,
)
from brokers.runtime.tasks import AsyncResource
from brokers.security import sealing, signing
from brokers.security.trust import TrustStore
from brokers.validator.blobs import check_held
from brokers.validator.rules import (
    Directory,
    check_limits,
    check_message_uuid,
    check_sender,
    reject,
)
from brokers.validator.submissions import First, SubmissionLog, open_submission_log
from schemas import codec
from schemas.errors import Dp2Error, MalformedRecordError
from schemas.models import (
    BlobContent,
    Envelope,
    LifecycleState,
)
from schemas.vocabulary import ACCEPTED_TOPIC, SIGNER_CERT_HEADER, SUBMITTED_TOPIC


class Validator:
    """The validator's handler: one submitted record in, lifecycle and forward out."""

    actor = "validator"

    def __init__(
        self,
        trust: TrustStore,
        submissions: SubmissionLog,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        directory: Directory,
        blobs: BlobStore | None = None,
    ) -> None:
        """``directory``: the register, which names each citizen's provider (a citizen's
        message is accepted from that provider or a citizen gateway only);
        ``blobs``: the deployment's blob store; without one, every blob is missing."""
        self._trust = trust
        self._directory = directory
        self._submissions = submissions
        self._clock = clock
        self._blobs = blobs if blobs is not None else MemoryBlobStore()

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> Sequence[Output]:
        if record.value is None:
            # The worker parks it as it came, a tombstone (brokers.runtime.worker).
            raise MalformedRecordError(
                "the record is a tombstone (it has no value), not a message",
                hint="Publish the encoded, signed envelope to dp2.submitted; the topic is "
                "not compacted, so a tombstone deletes nothing there.",
            )
        envelope = codec.decode(record.value, Envelope)
        header = envelope.header
        message_uuid = header.messageUUID  # lower case: schemas.models folds it
        source = source_of(record)
        common: dict[str, Any] = {"sender_id": header.sender.senderID, "source": source}
        try:
            check_message_uuid(message_uuid)
        except Dp2Error as exc:
            # No UUID to de-duplicate on: reject under the given id without recording it.
            return [rejection_output(message_uuid, self.actor, exc, **common)]
        try:
            headers.check(record.headers)
        except Dp2Error as exc:
            # Over the header budget the record is never judged (nor its signature
            # read): like an unverified one, on its own timeline, naming its UUID.
            return [unverified_rejection(record, self.actor, exc, message_uuid)]
        self._trust.reload()
        try:
            self._check_signer(envelope, record)
        except Dp2Error as exc:
            if exc.retriable:
                raise
            # Whoever wrote these bytes is not who they claim: never record the UUID
            # (a forger must not squat it) nor put REJECTED on its timeline (nor pin
            # one on another message). The REJECTED goes on the record's own
            # timeline, derived from its position, naming the UUID it claimed.
            return [unverified_rejection(record, self.actor, exc, message_uuid)]
        first = self._submissions.first(message_uuid)
        if first is not None and first[0] != source:
            return [self._duplicate(message_uuid, first, common)]
        return self._decided(record, message_uuid, await self._content_rejection(envelope), common)

    async def _content_rejection(self, envelope: Envelope) -> Dp2Error | None:
        """What is wrong with a signed submission's content, or None: limits, then blobs."""
        try:
            self._check_content(envelope)
            if any(isinstance(f.content, BlobContent) for f in sealing.files_of(envelope.body)):
                await asyncio.to_thread(check_held, envelope, self._blobs)
        except Dp2Error as exc:
            if exc.retriable:
                raise
            return exc
        return None

    def _decided(
        self,
        record: ConsumerRecord[bytes, bytes],
        message_uuid: str,
        rejection: Dp2Error | None,
        common: dict[str, Any],
    ) -> list[Output]:
        """Record the outcome; it stands unless another instance recorded the UUID first."""
        source = common["source"]
        outcome, reason = ("ACCEPTED", None) if rejection is None else ("REJECTED", rejection)
        first = self._submissions.record(
            message_uuid, source, outcome, reason.reason_code if reason else None
        )
        if first[0] != source:
            return [self._duplicate(message_uuid, first, common)]
        if rejection is not None:
            return [rejection_output(message_uuid, self.actor, rejection, **common)]
        forward_headers = [(k, v) for k, v in (record.headers or ()) if k != context.HEADER]
        return [
            Output(ACCEPTED_TOPIC, record.value, key=record.key, headers=forward_headers),
            lifecycle_output(message_uuid, LifecycleState.ACCEPTED, self.actor, **common),
        ]

    def _duplicate(self, message_uuid: str, first: First, common: dict[str, Any]) -> Output:
        """DUPLICATE on the first message's timeline, pointing at its outcome."""
        first_source, outcome, reason, first_at = first
        return lifecycle_output(
            message_uuid,
            LifecycleState.DUPLICATE,
            self.actor,
            reason_code="DUPLICATE",
            reason_text=(
                f"this UUID was first submitted at {first_at} and {outcome}"
                + (f" ({reason})" if reason else "")
                + "; the first outcome stands and nothing is delivered twice"
            ),
            related=message_uuid,
            attributes={"firstSource": first_source, "firstOutcome": outcome},
            **common,
        )

    def _signer_certificate(
        self, envelope: Envelope, record: ConsumerRecord[bytes, bytes]
    ) -> x509.Certificate:
        if envelope.signature is None:
            raise reject(
                "SIGNATURE_MISSING",
                "the envelope is not signed",
                "Sign the envelope with your organisation's or connector's certificate.",
            )
        der = context.header_value(record.headers, SIGNER_CERT_HEADER)
        if der is not None:
            try:
                return signing.load_certificate_der(der)
            except ValueError as exc:
                raise reject(
                    "UNKNOWN_CERTIFICATE",
                    "the dp2-signer-cert header is not a DER certificate",
                    "Send the signer's certificate in DER form, or omit the header.",
                ) from exc
        return self._trust.certificate(envelope.signature.signerCertificate)

    def _check_signer(
        self, envelope: Envelope, record: ConsumerRecord[bytes, bytes]
    ) -> x509.Certificate:
        """The signer's certificate, if it is trusted, signed this and may send as the sender."""
        certificate = self._signer_certificate(envelope, record)
        self._trust.verify_certificate(certificate, self._clock())
        signing.verify_envelope(envelope, certificate)
        check_sender(self._trust, certificate, envelope, self._directory)
        return certificate

    def _check_content(self, envelope: Envelope) -> None:
        """What a signed submission must also be: within the limits of Digital Post."""
        check_limits(envelope, self._clock())


class ValidatorService(AsyncResource):
    """The validator as a service: one worker on dp2.submitted, the submission log and
    a cache of the register's directory (whose provider may send for which citizen)."""

    name = "validator"

    def __init__(self, ctx: ServiceContext) -> None:
        self._submissions = open_submission_log(ctx.settings, ctx.data_dir)
        self._directory = ContactRegister(ctx.settings.kafka)
        validator = Validator(
            TrustStore(ctx.settings.pki_dir),
            self._submissions,
            directory=self._directory,
            blobs=FileBlobStore(ctx.settings.home / "blobs"),
        )
        self.workers = [ctx.worker("validator", [SUBMITTED_TOPIC], validator.handle)]

    async def start(self) -> None:
        """The directory is read to its end before the worker starts judging."""
        await self._directory.start()

    async def stop(self) -> None:
        await self._directory.stop()
        self._submissions.close()

    def health(self) -> dict[str, Any]:
        return {"status": "ok"}


def create(ctx: ServiceContext) -> ValidatorService:
    return ValidatorService(ctx)

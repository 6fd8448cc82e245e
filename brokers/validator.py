"""Validator: the gate between what connectors submit and what the backbone carries.

Consumes ``dp2.submitted``; forwards valid envelopes to ``dp2.accepted`` with an
ACCEPTED event, and answers everything else with REJECTED carrying a stable reason
code and a sentence saying how to fix it. It works on the sealed envelope only:
signatures, certificates and metadata, never a document's plaintext.

Checks, in order (the first failure decides):

| code | what was wrong |
|---|---|
| INVALID_MESSAGE_UUID | messageUUID is not a version-4 UUID |
| DUPLICATE (event, not a rejection) | the UUID was submitted before; the first outcome stands |
| SIGNATURE_MISSING / CERTIFICATE_MISMATCH / SIGNATURE_INVALID | see brokers.crypto |
| UNKNOWN_CERTIFICATE / UNTRUSTED_ISSUER / CERTIFICATE_EXPIRED /        | see brokers.pki |
| CERTIFICATE_NOT_YET_VALID / CERTIFICATE_REVOKED                        |                 |
| SENDER_NOT_AUTHORISED | the signer may not send as the sender CVR, or for a citizen (CPR) |
| UNKNOWN_MESSAGE_TYPE, NEMSMS_INVALID, BODY_MISSING, NO_DOCUMENT_FILE | MeMo structure |
| LABEL_TOO_LONG, NOTIFICATION_TOO_LONG, TEXT_TOO_LONG | MeMo text limits (256 / 160) |
| TOO_MANY_ATTACHMENTS | more than 10 additional documents |
| MESSAGE_TOO_LARGE | over 99.5 MB from an authority, 60 MB from a citizen |
| INVALID_CVR, CPR_IN_CLEAR, INVALID_ID | identifiers: CVR 8 digits; CPR only as pseudonym |
| INVALID_FILENAME | a file name with ``< > : " / \\ | ? *``, control or odd space characters |
| ENCRYPTION_MISSING | documents not encrypted for a mailbox provider |
| SCHEDULE_TOO_FAR | doNotDeliverUntilDate more than a year ahead |

Duplicates: the first submission of a UUID is recorded (SQLite, keyed by UUID,
with the Kafka position it came from). A later submission of the same UUID from
another position gets DUPLICATE on the first message's timeline, pointing at the
first outcome, and is not forwarded. The same position seen again is a Kafka
redelivery: the outputs are recomputed and re-sent with the same event ids.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import ConsumerRecord
from cryptography import x509

from brokers import crypto, sqlite
from brokers.pki import PROVIDER, TrustStore, kind_of
from brokers.service import Output, lifecycle_output, rejection_output, source_of
from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import (
    BlobContent,
    Envelope,
    File,
    IdType,
    InlineContent,
    LifecycleState,
    MessageType,
)
from tracing import context

ACCEPTED_TOPIC = "dp2.accepted"
SIGNER_CERT_HEADER = "dp2-signer-cert"
MAX_TEXT = 256
MAX_NOTIFICATION = 160
MAX_ATTACHMENTS = 10
MAX_AUTHORITY_BYTES = 99_500_000
MAX_CITIZEN_BYTES = 10_000_000
# A citizen's message may be up to 10 MB unless the authority allows up to 60 MB. The
# backbone holds the ceiling; the citizen connectors hold each authority's own limit.
MAX_CITIZEN_BYTES_CEILING = 60_000_000
_FILENAME_FORBIDDEN = re.compile(r'[<>:"/\\|?*\r\n\t]')


class Rejection(Dp2Error):
    """A submitted message that will not be carried, with why and how to fix it."""

    reason_code = "REJECTED"


def _reject(code: str, message: str, hint: str) -> Rejection:
    return Rejection(message, reason_code=code, hint=hint)


class SubmissionLog:
    """First outcome per message UUID: what makes a resubmission a DUPLICATE."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite.connect(str(path))
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS submissions (message_uuid TEXT PRIMARY KEY,"
            " source TEXT NOT NULL, outcome TEXT NOT NULL, reason_code TEXT,"
            " first_at TEXT NOT NULL)"
        )
        self._db.commit()

    def first(self, message_uuid: str) -> tuple[str, str, str | None, str] | None:
        row = self._db.execute(
            "SELECT source, outcome, reason_code, first_at FROM submissions WHERE message_uuid = ?",
            (message_uuid,),
        ).fetchone()
        return (row[0], row[1], row[2], row[3]) if row else None

    def record(self, message_uuid: str, source: str, outcome: str, reason: str | None) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO submissions VALUES (?, ?, ?, ?, ?)",
            (message_uuid, source, outcome, reason, datetime.now(UTC).isoformat()),
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()


def _content_size(file: File) -> int:
    content = file.content
    if isinstance(content, BlobContent):
        return content.size
    assert isinstance(content, InlineContent)  # noqa: S101 - the union has two members
    return len(content.data)


def _check_id(role: str, identifier: str, id_type: IdType) -> None:
    if id_type is IdType.CVR:
        if len(identifier) != 8 or not identifier.isdigit():
            raise _reject(
                "INVALID_CVR",
                f"the {role}'s CVR number {identifier!r} is not 8 digits",
                "Write CVR numbers as 8-digit strings, keeping leading zeros.",
            )
    elif id_type is IdType.CPR:
        if identifier.isdigit():
            raise _reject(
                "CPR_IN_CLEAR",
                f"the {role}'s CPR number is in clear in the envelope",
                "Seal the envelope with the DP2 SDK: it moves CPR numbers into the "
                "encrypted part and puts their pseudonym in the header.",
            )
        if not identifier.startswith("psn-"):
            raise _reject(
                "INVALID_ID",
                f"the {role}'s id is neither a CPR pseudonym nor a CVR number",
                "Use the SDK to seal the envelope.",
            )
    else:
        raise _reject(
            "INVALID_ID", f"the {role}'s idType is not CPR or CVR", "Set idType to CPR or CVR."
        )


def check_limits(envelope: Envelope, today: datetime) -> None:
    """MeMo's rules that can be checked on the sealed envelope's metadata."""
    header = envelope.header
    if header.messageType is MessageType.UNKNOWN:
        raise _reject(
            "UNKNOWN_MESSAGE_TYPE",
            "messageType is not DIGITALPOST or NEMSMS",
            "Set messageType to DIGITALPOST (a letter) or NEMSMS (a text message).",
        )
    _check_id("sender", header.sender.senderID, header.sender.idType)
    _check_id("recipient", header.recipient.recipientID, header.recipient.idType)
    if len(header.label) > MAX_TEXT:
        raise _reject(
            "LABEL_TOO_LONG",
            f"the label has {len(header.label)} characters; MeMo allows {MAX_TEXT}",
            "Shorten the label (the letter's title) to 256 characters or fewer.",
        )
    notification = header.notification or ""
    if len(notification) > MAX_NOTIFICATION:
        raise _reject(
            "NOTIFICATION_TOO_LONG",
            f"the notification has {len(notification)} characters; the limit is 160",
            "Shorten the notification text to 160 characters (one SMS).",
        )
    if header.messageType is MessageType.NEMSMS:
        if envelope.body is not None or not notification.strip():
            raise _reject(
                "NEMSMS_INVALID",
                "a NEMSMS message has a body or no notification text",
                "Send NemSMS with the text in notification (1-160 characters) and no body.",
            )
        return
    if envelope.body is None:
        raise _reject(
            "BODY_MISSING",
            "a DIGITALPOST message has no body",
            "Add a MessageBody with a MainDocument holding at least one File.",
        )
    if not envelope.body.mainDocument.file:
        raise _reject(
            "NO_DOCUMENT_FILE",
            "the main document has no file",
            "Attach the letter itself as a File of the MainDocument.",
        )
    attachments = len(envelope.body.additionalDocument)
    if attachments > MAX_ATTACHMENTS:
        raise _reject(
            "TOO_MANY_ATTACHMENTS",
            f"the message has {attachments} attachments; at most {MAX_ATTACHMENTS} are allowed",
            "Merge attachments or send them in more than one message.",
        )
    files = crypto.files_of(envelope.body)
    limit = MAX_CITIZEN_BYTES_CEILING if header.sender.idType is IdType.CPR else MAX_AUTHORITY_BYTES
    size = sum(_content_size(f) for f in files)
    if size > limit:
        raise _reject(
            "MESSAGE_TOO_LARGE",
            f"the documents total {size:,} bytes; the limit for this sender is {limit:,}",
            "Reduce the documents' size (compress scans, split the message).",
        )
    for file in files:
        name = file.filename
        if _FILENAME_FORBIDDEN.search(name) or any(
            unicodedata.category(c) in {"Zs", "Cc", "Cf"} and c != " " for c in name
        ):
            raise _reject(
                "INVALID_FILENAME",
                f"the file name {name!r} contains a character MeMo forbids",
                'Remove < > : " / \\ | ? *, line breaks and unusual spaces from file names.',
            )
        if len(name) > MAX_TEXT:
            raise _reject("TEXT_TOO_LONG", "a file name is over 256 characters", "Shorten it.")
    if files and (envelope.encryption is None or any(f.nonce is None for f in files)):
        raise _reject(
            "ENCRYPTION_MISSING",
            "the documents are not encrypted for the recipient's mailbox provider",
            "Send through the DP2 SDK, which encrypts documents before signing.",
        )
    due = header.doNotDeliverUntilDate
    if due is not None and due > (today + timedelta(days=366)).date():
        raise _reject(
            "SCHEDULE_TOO_FAR",
            f"doNotDeliverUntilDate {due.isoformat()} is more than a year ahead",
            "Choose a delivery date within the next year.",
        )


class Validator:
    """The validator's handler: one submitted record in, lifecycle and forward out."""

    actor = "validator"

    def __init__(
        self,
        trust: TrustStore,
        submissions: SubmissionLog,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._trust = trust
        self._submissions = submissions
        self._clock = clock

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> Sequence[Output]:
        envelope = codec.decode(record.value or b"", Envelope)
        header = envelope.header
        message_uuid = header.messageUUID
        source = source_of(record)
        common: dict[str, Any] = {"sender_id": header.sender.senderID, "source": source}
        try:
            parsed = uuid.UUID(message_uuid)
        except ValueError:
            parsed = None
        if parsed is None or parsed.version != 4 or str(parsed) != message_uuid.lower():
            # No UUID to de-duplicate on: reject under the given id without recording it.
            return [
                rejection_output(
                    message_uuid,
                    self.actor,
                    _reject(
                        "INVALID_MESSAGE_UUID",
                        f"messageUUID {message_uuid!r} is not a version-4 UUID",
                        "Generate messageUUID with uuid4 (e.g. Python's uuid.uuid4()).",
                    ),
                    **common,
                )
            ]
        first = self._submissions.first(message_uuid)
        if first is not None and first[0] != source:
            first_source, outcome, reason, first_at = first
            return [
                lifecycle_output(
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
            ]
        self._trust.reload()
        try:
            self._check(envelope, record)
        except Dp2Error as exc:
            if exc.retriable:
                raise
            self._submissions.record(message_uuid, source, "REJECTED", exc.reason_code)
            return [rejection_output(message_uuid, self.actor, exc, **common)]
        self._submissions.record(message_uuid, source, "ACCEPTED", None)
        forward_headers = [(k, v) for k, v in (record.headers or ()) if k != context.HEADER]
        return [
            Output(ACCEPTED_TOPIC, record.value or b"", key=record.key, headers=forward_headers),
            lifecycle_output(message_uuid, LifecycleState.ACCEPTED, self.actor, **common),
        ]

    def _signer_certificate(
        self, envelope: Envelope, record: ConsumerRecord[bytes, bytes]
    ) -> x509.Certificate:
        if envelope.signature is None:
            raise _reject(
                "SIGNATURE_MISSING",
                "the envelope is not signed",
                "Sign the envelope with your organisation's or connector's certificate.",
            )
        der = context.header_value(record.headers, SIGNER_CERT_HEADER)
        if der is not None:
            try:
                return crypto.load_certificate_der(der)
            except ValueError as exc:
                raise _reject(
                    "UNKNOWN_CERTIFICATE",
                    "the dp2-signer-cert header is not a DER certificate",
                    "Send the signer's certificate in DER form, or omit the header.",
                ) from exc
        return self._trust.certificate(envelope.signature.signerCertificate)

    def _check(self, envelope: Envelope, record: ConsumerRecord[bytes, bytes]) -> None:
        certificate = self._signer_certificate(envelope, record)
        self._trust.verify_certificate(certificate, self._clock())
        crypto.verify_envelope(envelope, certificate)
        sender = envelope.header.sender
        if sender.idType is IdType.CVR and not self._trust.may_send_as(
            certificate, sender.senderID
        ):
            raise _reject(
                "SENDER_NOT_AUTHORISED",
                f"the signing certificate may not send on behalf of CVR {sender.senderID}",
                "Sign with that authority's certificate, or have your vendor certificate "
                "issued with this CVR among those it sends for.",
            )
        if sender.idType is IdType.CPR and kind_of(certificate) != PROVIDER:
            # A citizen's message is signed by the connector that authenticated the
            # citizen — a mailbox provider or a citizen-facing connector, both holding
            # provider certificates — never by an authority's or a vendor's key.
            raise _reject(
                "SENDER_NOT_AUTHORISED",
                "only a provider's certificate may send on behalf of a citizen",
                "Send citizens' messages through a citizen-facing connector that signs with "
                "a provider identity (dp2 pki issue provider --id ...).",
            )
        check_limits(envelope, self._clock())

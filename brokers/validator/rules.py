"""The validator's rules: what MeMo and Danish Digital Post allow, checked on the sealed envelope.

Pure functions over the envelope's metadata (no Kafka, no store, no clock of their
own), so connectors can hold the same limits before they send and the receiving
side can re-check them (connectors.delivery re-checks the UUID and the file names).
brokers.validator.service runs them for dp2.submitted.

Bounds that MeMo leaves open, chosen here (docs/connectors.md, section 3):

- createdDateTime may be at most ``CLOCK_SKEW`` (15 minutes) ahead of the validator's
  clock — senders' clocks drift, but a letter is never written in the future — and at
  most ``MAX_CREATED_AGE`` (366 days) old: a new message is created now, and a date far
  back (1900) is a default that would be printed as the letter's date.
- replyByDateTime may not be before createdDateTime.
- At most ``MAX_TECHNICAL_DOCUMENTS`` (10) technical documents, as for attachments
  (MEMO.md: "at most 10 attachments"; the XSD leaves both unbounded), and at most
  ``MAX_FILES_PER_DOCUMENT`` (10) files per document: a document's files are renderings
  of one document (PDF, HTML, text, languages), never a folder of attachments.
- doNotDeliverUntilDate at most 366 days ahead, for NemSMS as for letters.
- The size limits count the documents' own bytes: a file's ciphertext size less the
  AEAD overhead of the envelope's ``contentAlgorithm`` (brokers.security.streaming).
  A blob-stored file's claim must be a claim at all (``BLOB_CLAIM_INVALID``: a size
  below zero, a SHA-256 that is not 32 bytes, a ref that is not the content address
  of that SHA-256); what the store holds is checked against the claim by
  brokers.validator.blobs, after these rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509

from brokers.security import personal, sealing, streaming
from brokers.security.trust import (
    PROVIDER,
    TrustStore,
    is_citizen_gateway,
    kind_of,
    principal_name,
)
from schemas.errors import Dp2Error
from schemas.models import (
    AdditionalDocument,
    BlobContent,
    ContactRecord,
    ContactStatus,
    Envelope,
    File,
    IdType,
    InlineContent,
    MainDocument,
    MessageBody,
    MessageType,
    TechnicalDocument,
)
from schemas.values import filename_problem, is_ascii_digits, is_message_uuid

MAX_TEXT = 256
MAX_NOTIFICATION = 160
MAX_ATTACHMENTS = 10
MAX_TECHNICAL_DOCUMENTS = 10
MAX_FILES_PER_DOCUMENT = 10
MAX_AUTHORITY_BYTES = 99_500_000
MAX_CITIZEN_BYTES = 10_000_000
# A citizen's message may be up to 10 MB unless the authority allows up to 60 MB. The
# backbone holds the ceiling; the citizen connectors hold each authority's own limit.
MAX_CITIZEN_BYTES_CEILING = 60_000_000
MAX_SCHEDULE_AHEAD = timedelta(days=366)
CLOCK_SKEW = timedelta(minutes=15)
MAX_CREATED_AGE = timedelta(days=366)


class Rejection(Dp2Error):
    """A submitted message that will not be carried, with why and how to fix it."""

    reason_code = "REJECTED"


def reject(code: str, message: str, hint: str) -> Rejection:
    return Rejection(message, reason_code=code, hint=hint)


def document_size(ciphertext_size: int, envelope: Envelope) -> int:
    """The document bytes in a file of `ciphertext_size` sealed as `envelope` says."""
    algorithm = envelope.encryption.contentAlgorithm if envelope.encryption else None
    return streaming.plaintext_size(ciphertext_size, algorithm)


def _claimed_size(file: File) -> int:
    content = file.content
    if isinstance(content, BlobContent):
        return content.size
    assert isinstance(content, InlineContent)  # noqa: S101 - the union has two members
    return len(content.data)


def size_limit(envelope: Envelope) -> int:
    """The most document bytes this envelope's sender may send (authority or citizen)."""
    citizen = envelope.header.sender.idType is IdType.CPR
    return MAX_CITIZEN_BYTES_CEILING if citizen else MAX_AUTHORITY_BYTES


def too_large(size: int, limit: int) -> Rejection:
    return reject(
        "MESSAGE_TOO_LARGE",
        f"the documents total {size:,} bytes; the limit for this sender is {limit:,}",
        "Reduce the documents' size (compress scans, split the message).",
    )


def check_claims(files: Sequence[File]) -> None:
    """Every blob-stored file's claim (size, SHA-256, ref) is one a store could hold."""
    for index, file in enumerate(files):
        content = file.content
        if not isinstance(content, BlobContent):
            continue
        problem = None
        if content.size < 0:
            problem = f"claims a size of {content.size} bytes"
        elif len(content.sha256) != 32:
            problem = f"claims a SHA-256 of {len(content.sha256)} bytes, not 32"
        elif content.ref != "sha256:" + content.sha256.hex():
            problem = "names a blob other than its SHA-256"
        if problem is not None:
            raise reject(
                "BLOB_CLAIM_INVALID",
                f"file {index} is in the blob store but {problem}",
                "Send through the DP2 SDK: it stores the encrypted file and claims its "
                "real size and SHA-256, with ref = sha256:<that digest in hex>.",
            )


def _check_id(role: str, identifier: str, id_type: IdType) -> None:
    if id_type is IdType.CVR:
        if not is_ascii_digits(identifier, 8):
            raise reject(
                "INVALID_CVR",
                f"the {role}'s CVR number is not 8 digits",
                "Write CVR numbers as 8-digit strings, keeping leading zeros.",
            )
    elif id_type is IdType.CPR:
        if is_ascii_digits(identifier):
            raise reject(
                "CPR_IN_CLEAR",
                f"the {role}'s CPR number is in clear in the envelope",
                "Seal the envelope with the DP2 SDK: it moves CPR numbers into the "
                "encrypted part and puts their pseudonym in the header.",
            )
        if not identifier.startswith("psn-"):
            raise reject(
                "INVALID_ID",
                f"the {role}'s id is neither a CPR pseudonym nor a CVR number",
                "Use the SDK to seal the envelope.",
            )
    else:
        raise reject(
            "INVALID_ID", f"the {role}'s idType is not CPR or CVR", "Set idType to CPR or CVR."
        )


def check_message_uuid(message_uuid: str) -> None:
    """The UUID must be a canonical version-4 UUID: it names folders, files and keys."""
    if not is_message_uuid(message_uuid):
        raise reject(
            "INVALID_MESSAGE_UUID",
            f"messageUUID {message_uuid[:60]!r} is not a version-4 UUID",
            "Generate messageUUID with uuid4 (e.g. Python's uuid.uuid4()).",
        )


def check_filenames(files: Sequence[File]) -> None:
    """Every file name is one a mailbox and a folder drop can store as it is."""
    for file in files:
        problem = filename_problem(file.filename)
        if problem is not None:
            raise reject(
                problem.code,
                problem.message,
                "Name every file like brev.pdf: no empty or dot-only names, no "
                '< > : " / \\ | ? *, line breaks, control characters or unusual spaces.',
            )
        if len(file.filename) > MAX_TEXT:
            raise reject(
                "TEXT_TOO_LONG",
                f"a file name has {len(file.filename)} characters; MeMo allows {MAX_TEXT}",
                "Shorten the file name to 256 characters or fewer.",
            )


class Directory(Protocol):
    """Who is on digital post with which provider: the register's ``dp2.directory``
    (brokers.contacts.register.ContactRegister), keyed by the recipient's pseudonym."""

    def get(self, recipient_ref: str) -> ContactRecord | None: ...


def check_sender(
    trust: TrustStore,
    certificate: x509.Certificate,
    envelope: Envelope,
    directory: Directory,
) -> None:
    """May ``certificate`` (verified already) send as this envelope's sender?

    An authority (CVR) sends with its own certificate or a vendor's that lists it. A
    citizen (CPR) sends through a provider certificate: the mailbox provider the
    register names for that citizen (``directory``, by the sealed header's pseudonym),
    or a citizen gateway — a connector that logs each citizen in itself, such as
    self-service forms (brokers.security.trust.is_citizen_gateway). A provider's
    certificate never sends as another provider's customer.

    The validator asks first; every receiving side asks again (connectors.delivery),
    since a record on a delivery topic may not have passed the validator.
    """
    sender = envelope.header.sender
    if sender.idType is IdType.CVR and not trust.may_send_as(certificate, sender.senderID):
        # An authority's CVR is public, but a malformed one may be anything (a CPR).
        cvr = sender.senderID
        who = f"CVR {cvr}" if is_ascii_digits(cvr, 8) else "the senderID (not 8 digits)"
        raise reject(
            "SENDER_NOT_AUTHORISED",
            f"the signing certificate may not send on behalf of {who}",
            "Sign with that authority's certificate, or have your vendor certificate "
            "issued with this CVR among those it sends for.",
        )
    if sender.idType is IdType.CPR and kind_of(certificate) != PROVIDER:
        # A citizen's message is signed by the connector that authenticated the
        # citizen — a mailbox provider or a citizen-facing connector, both holding
        # provider certificates — never by an authority's or a vendor's key.
        raise reject(
            "SENDER_NOT_AUTHORISED",
            "only a provider's certificate may send on behalf of a citizen",
            "Send citizens' messages through a citizen-facing connector that signs with "
            "a provider identity (dp2 pki issue provider --id ...).",
        )
    if sender.idType is IdType.CPR and not is_citizen_gateway(certificate):
        record = directory.get(sender.senderID)
        registered = record is not None and record.status is ContactStatus.REGISTERED
        provider = record.mailboxProvider if record is not None and registered else None
        if provider is None or principal_name(certificate) != f"{PROVIDER}:{provider}":
            raise reject(
                "NOT_CITIZENS_PROVIDER",
                "the signing provider is not the mailbox provider the register names for "
                "this citizen"
                + ("" if registered else " (the citizen has no mailbox on digital post)"),
                "Send a citizen's message from their own mailbox provider, or through a "
                "connector issued as a citizen gateway "
                "(dp2 pki issue provider --id ID --citizen-gateway).",
            )


def check_limits(envelope: Envelope, today: datetime) -> None:
    """MeMo's rules that can be checked on the sealed envelope's metadata.

    ``today`` is the validator's clock (an aware datetime), against which dates are held.
    """
    header = envelope.header
    if header.messageType is MessageType.UNKNOWN:
        raise reject(
            "UNKNOWN_MESSAGE_TYPE",
            "messageType is not DIGITALPOST or NEMSMS",
            "Set messageType to DIGITALPOST (a letter) or NEMSMS (a text message).",
        )
    _check_id("sender", header.sender.senderID, header.sender.idType)
    _check_id("recipient", header.recipient.recipientID, header.recipient.idType)
    check_sealed_fields(envelope)
    if len(header.label) > MAX_TEXT:
        raise reject(
            "LABEL_TOO_LONG",
            f"the label has {len(header.label)} characters; MeMo allows {MAX_TEXT}",
            "Shorten the label (the letter's title) to 256 characters or fewer.",
        )
    notification = header.notification or ""
    if len(notification) > MAX_NOTIFICATION:
        raise reject(
            "NOTIFICATION_TOO_LONG",
            f"the notification has {len(notification)} characters; the limit is 160",
            "Shorten the notification text to 160 characters (one SMS).",
        )
    due = header.doNotDeliverUntilDate
    if due is not None and due > (today + MAX_SCHEDULE_AHEAD).date():
        raise reject(
            "SCHEDULE_TOO_FAR",
            f"doNotDeliverUntilDate {due.isoformat()} is more than a year ahead",
            "Choose a delivery date within the next year.",
        )
    if header.messageType is MessageType.NEMSMS:
        if envelope.body is not None or not notification.strip():
            raise reject(
                "NEMSMS_INVALID",
                "a NEMSMS message has a body or no notification text",
                "Send NemSMS with the text in notification (1-160 characters) and no body.",
            )
        return
    body = envelope.body
    if body is None:
        raise reject(
            "BODY_MISSING",
            "a DIGITALPOST message has no body",
            "Add a MessageBody with a MainDocument holding at least one File.",
        )
    check_dates(envelope, today)
    check_documents(body)
    files = sealing.files_of(body)
    check_claims(files)
    limit = size_limit(envelope)
    size = sum(document_size(_claimed_size(f), envelope) for f in files)
    if size > limit:  # as claimed; brokers.validator.blobs holds the store to it
        raise too_large(size, limit)
    check_filenames(files)
    if files and (envelope.encryption is None or any(f.nonce is None for f in files)):
        raise reject(
            "ENCRYPTION_MISSING",
            "the documents are not encrypted for the recipient's mailbox provider",
            "Send through the DP2 SDK, which encrypts documents before signing.",
        )


def check_sealed_fields(envelope: Envelope) -> None:
    """No personal value of the header (brokers.security.personal) is in clear.

    The reason names the field, never its value: it goes to dp2.lifecycle.
    """
    in_clear = personal.in_clear(envelope.header)
    if in_clear:
        more = f" (and {len(in_clear) - 1} more)" if len(in_clear) > 1 else ""
        raise reject(
            "PERSONAL_DATA_IN_CLEAR",
            f"the header's {in_clear[0]}{more} holds personal data in clear",
            "Seal the envelope with the DP2 SDK: it moves names, addresses, e-mail, phone "
            "and CPR numbers into the encrypted part and leaves pseudonyms in the header.",
        )


def check_dates(envelope: Envelope, now: datetime) -> None:
    """createdDateTime within the clock skew of now and not older than a year;
    replyByDateTime not before it (see the module docstring for the bounds)."""
    body = envelope.body
    if body is None:
        return
    created = body.createdDateTime
    if created > now + CLOCK_SKEW:
        raise reject(
            "CREATED_IN_FUTURE",
            f"createdDateTime {created.isoformat()} is in the future "
            f"(more than {CLOCK_SKEW.seconds // 60} minutes ahead of DP2's clock)",
            "Set createdDateTime to the time the letter was made, in UTC with a Z, "
            "and check the sending system's clock.",
        )
    if created < now - MAX_CREATED_AGE:
        raise reject(
            "CREATED_TOO_OLD",
            f"createdDateTime {created.isoformat()} is more than {MAX_CREATED_AGE.days} days ago",
            "Set createdDateTime to the time this message was made; a copy of an old "
            "letter is a new message made now (say the original date in its text).",
        )
    reply_by = envelope.header.replyByDateTime
    if reply_by is not None and reply_by < created:
        raise reject(
            "REPLY_BY_BEFORE_CREATED",
            f"replyByDateTime {reply_by.isoformat()} is before createdDateTime "
            f"{created.isoformat()}",
            "Set replyByDateTime after the letter's createdDateTime, or leave it out.",
        )


def check_documents(body: MessageBody) -> None:
    """MeMo's document structure and DP2's limits on how many documents and files."""
    if not body.mainDocument.file:
        raise reject(
            "NO_DOCUMENT_FILE",
            "the main document has no file",
            "Attach the letter itself as a File of the MainDocument.",
        )
    attachments = len(body.additionalDocument)
    if attachments > MAX_ATTACHMENTS:
        raise reject(
            "TOO_MANY_ATTACHMENTS",
            f"the message has {attachments} attachments; at most {MAX_ATTACHMENTS} are allowed",
            "Merge attachments or send them in more than one message.",
        )
    technical = len(body.technicalDocument)
    if technical > MAX_TECHNICAL_DOCUMENTS:
        raise reject(
            "TOO_MANY_TECHNICAL_DOCUMENTS",
            f"the message has {technical} technical documents; at most "
            f"{MAX_TECHNICAL_DOCUMENTS} are allowed",
            "Put the machine-readable data in fewer technical documents, or send it in "
            "more than one message.",
        )
    documents: list[tuple[str, MainDocument | AdditionalDocument | TechnicalDocument]] = [
        ("the main document", body.mainDocument),
        *((f"attachment {n}", d) for n, d in enumerate(body.additionalDocument, 1)),
        *((f"technical document {n}", d) for n, d in enumerate(body.technicalDocument, 1)),
    ]
    for where, document in documents:
        if len(document.file) > MAX_FILES_PER_DOCUMENT:
            raise reject(
                "TOO_MANY_FILES",
                f"{where} has {len(document.file)} files; at most "
                f"{MAX_FILES_PER_DOCUMENT} are allowed per document",
                "Give a document only its renderings (e.g. PDF and HTML) as files; make "
                "each further file an attachment of its own.",
            )

"""The validator's rules: what MeMo and Danish Digital Post allow, checked on the sealed envelope.

Pure functions over the envelope's metadata (no Kafka, no store, no clock of their
own), so connectors can hold the same limits before they send and the receiving
side can re-check them. brokers.validator.service runs them for dp2.submitted.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timedelta

from brokers.security import sealing
from schemas.errors import Dp2Error
from schemas.models import (
    BlobContent,
    Envelope,
    File,
    IdType,
    InlineContent,
    MessageType,
)

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


def reject(code: str, message: str, hint: str) -> Rejection:
    return Rejection(message, reason_code=code, hint=hint)


def _content_size(file: File) -> int:
    content = file.content
    if isinstance(content, BlobContent):
        return content.size
    assert isinstance(content, InlineContent)  # noqa: S101 - the union has two members
    return len(content.data)


def _check_id(role: str, identifier: str, id_type: IdType) -> None:
    if id_type is IdType.CVR:
        if len(identifier) != 8 or not identifier.isdigit():
            raise reject(
                "INVALID_CVR",
                f"the {role}'s CVR number {identifier!r} is not 8 digits",
                "Write CVR numbers as 8-digit strings, keeping leading zeros.",
            )
    elif id_type is IdType.CPR:
        if identifier.isdigit():
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


def check_limits(envelope: Envelope, today: datetime) -> None:
    """MeMo's rules that can be checked on the sealed envelope's metadata."""
    header = envelope.header
    if header.messageType is MessageType.UNKNOWN:
        raise reject(
            "UNKNOWN_MESSAGE_TYPE",
            "messageType is not DIGITALPOST or NEMSMS",
            "Set messageType to DIGITALPOST (a letter) or NEMSMS (a text message).",
        )
    _check_id("sender", header.sender.senderID, header.sender.idType)
    _check_id("recipient", header.recipient.recipientID, header.recipient.idType)
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
    if header.messageType is MessageType.NEMSMS:
        if envelope.body is not None or not notification.strip():
            raise reject(
                "NEMSMS_INVALID",
                "a NEMSMS message has a body or no notification text",
                "Send NemSMS with the text in notification (1-160 characters) and no body.",
            )
        return
    if envelope.body is None:
        raise reject(
            "BODY_MISSING",
            "a DIGITALPOST message has no body",
            "Add a MessageBody with a MainDocument holding at least one File.",
        )
    if not envelope.body.mainDocument.file:
        raise reject(
            "NO_DOCUMENT_FILE",
            "the main document has no file",
            "Attach the letter itself as a File of the MainDocument.",
        )
    attachments = len(envelope.body.additionalDocument)
    if attachments > MAX_ATTACHMENTS:
        raise reject(
            "TOO_MANY_ATTACHMENTS",
            f"the message has {attachments} attachments; at most {MAX_ATTACHMENTS} are allowed",
            "Merge attachments or send them in more than one message.",
        )
    files = sealing.files_of(envelope.body)
    limit = MAX_CITIZEN_BYTES_CEILING if header.sender.idType is IdType.CPR else MAX_AUTHORITY_BYTES
    size = sum(_content_size(f) for f in files)
    if size > limit:
        raise reject(
            "MESSAGE_TOO_LARGE",
            f"the documents total {size:,} bytes; the limit for this sender is {limit:,}",
            "Reduce the documents' size (compress scans, split the message).",
        )
    for file in files:
        name = file.filename
        if _FILENAME_FORBIDDEN.search(name) or any(
            unicodedata.category(c) in {"Zs", "Cc", "Cf"} and c != " " for c in name
        ):
            raise reject(
                "INVALID_FILENAME",
                f"the file name {name!r} contains a character MeMo forbids",
                'Remove < > : " / \\ | ? *, line breaks and unusual spaces from file names.',
            )
        if len(name) > MAX_TEXT:
            raise reject("TEXT_TOO_LONG", "a file name is over 256 characters", "Shorten it.")
    if files and (envelope.encryption is None or any(f.nonce is None for f in files)):
        raise reject(
            "ENCRYPTION_MISSING",
            "the documents are not encrypted for the recipient's mailbox provider",
            "Send through the DP2 SDK, which encrypts documents before signing.",
        )
    due = header.doNotDeliverUntilDate
    if due is not None and due > (today + timedelta(days=366)).date():
        raise reject(
            "SCHEDULE_TOO_FAR",
            f"doNotDeliverUntilDate {due.isoformat()} is more than a year ahead",
            "Choose a delivery date within the next year.",
        )

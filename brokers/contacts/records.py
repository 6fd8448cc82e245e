"""Contact records from a register file, and the pseudonymous reference a message is routed by.

Pure: reading a CSV/JSON contact file into ContactRecords (every identifier
pseudonymised, every row checked with its row number in the error) and deriving a
message's recipient reference. brokers.contacts.register publishes and follows them
on Kafka.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from brokers.security.pseudonyms import Pseudonymizer
from schemas.errors import Dp2Error
from schemas.models import (
    ContactChannel,
    ContactRecord,
    ContactStatus,
    Envelope,
    IdType,
    NotificationChannel,
    PostalAddress,
)
from schemas.values import is_ascii_digits


class ContactFileError(Dp2Error):
    reason_code = "BAD_CONTACT_FILE"
    hint = "Fix the named row of the contact file and load it again."


def _id_type(value: str, row: int) -> IdType:
    try:
        return IdType(value.upper())
    except ValueError as exc:
        raise ContactFileError(f"row {row}: idType {value!r} is not CPR or CVR") from exc


def _check_id(identifier: str, id_type: IdType, row: int) -> None:
    digits = 10 if id_type is IdType.CPR else 8
    if not is_ascii_digits(identifier, digits):
        raise ContactFileError(
            f"row {row}: a {id_type.value} number is {digits} digits as text "
            f"(leading zeros kept); got {len(identifier)} characters"
        )


def record_from_row(row: dict[str, Any], number: int, pseudonyms: Pseudonymizer) -> ContactRecord:
    """One contact record from a JSON object or CSV row (raises ContactFileError)."""
    identifier = str(row.get("id", "")).strip()
    id_type = _id_type(str(row.get("idType", "CPR")), number)
    _check_id(identifier, id_type, number)
    try:
        status = ContactStatus(str(row.get("status", "REGISTERED")).upper())
    except ValueError as exc:
        raise ContactFileError(
            f"row {number}: status {row.get('status')!r} is not REGISTERED, EXEMPT or UNKNOWN"
        ) from exc
    provider = row.get("provider") or None
    if status is ContactStatus.REGISTERED and not provider:
        raise ContactFileError(f"row {number}: a REGISTERED recipient needs a provider")
    channels_raw = row.get("channels") or []
    if isinstance(channels_raw, str):  # CSV: "email:a@b.dk;sms:+4512345678"
        channels_raw = [
            {"channel": part.split(":", 1)[0], "address": part.split(":", 1)[1]}
            for part in channels_raw.split(";")
            if ":" in part
        ]
    channels = [
        ContactChannel(channel=NotificationChannel(c["channel"].upper()), address=c["address"])
        for c in channels_raw
    ]
    address_raw = row.get("address")
    if isinstance(address_raw, dict):
        address: PostalAddress | None = PostalAddress(**address_raw)
    elif row.get("street"):
        address = PostalAddress(
            street=row["street"], postcode=row.get("postcode", ""), city=row.get("city", "")
        )
    else:
        address = None
    consent = row.get("readReceiptsConsent", False)
    return ContactRecord(
        recipientRef=pseudonyms.ref(id_type.value, identifier),
        idType=id_type,
        status=status,
        statusReason=row.get("statusReason") or None,
        mailboxProvider=provider,
        name=row.get("name") or None,
        address=address,
        channels=channels,
        language=row.get("language") or "da",
        readReceiptsConsent=consent if isinstance(consent, bool) else str(consent) == "true",
        updatedAt=datetime.now(UTC),
    )


def read_contact_file(path: Path, pseudonyms: Pseudonymizer) -> list[ContactRecord]:
    """Parse a JSON or CSV contact file into pseudonymised records."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        rows: list[dict[str, Any]] = list(csv.DictReader(text.splitlines()))
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContactFileError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(rows, list):
            raise ContactFileError(f"{path} must hold a JSON list of contact objects")
    return [record_from_row(row, n, pseudonyms) for n, row in enumerate(rows, start=1)]


def recipient_ref(envelope: Envelope, pseudonyms: Pseudonymizer) -> str:
    """The contact-register key of a sealed envelope's recipient.

    A sealed envelope already carries a CPR recipient as its pseudonym; CVR numbers
    are public and travel in clear, so they are pseudonymised here.
    """
    recipient = envelope.header.recipient
    if recipient.idType is IdType.CPR:
        return recipient.recipientID
    return pseudonyms.ref(recipient.idType.value, recipient.recipientID)

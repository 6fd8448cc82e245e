"""MeMo's rule book: the model fields as MeMo elements, the reason codes, the business rules.

`schemas.memo` maps XML to the models and back and `schemas.memo_structure` holds XML to
the official XSDs; this module says which element each model field is (`slots`), lists
every reason code DP2 reports on MeMo with the hint that says how to fix it (`HINTS`),
and checks the NgDP business rules that go beyond the XSDs on a model alone
(`business_rules`): CPR/CVR digits, https links, file names, the NemSMS shape, the
attachment limit, dates. Keeping those on the model, not in the XML reader, means an
Envelope built in code (by the SDK, a form, a test) is held to the same rules as one
parsed from a case system's XML.

The element table is generic: a field whose type is a model class is the element named
like the class (`attentionData` <- AttentionData, `cprData` <- CPRdata), any other field
is the element named like the field (senderID, idType, label). The exceptions are the
explicit sets below: root attributes, DP2-only fields, File/content (base64) and the
documents' identifiers, which the Avro schema calls documentID.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from schemas.models import (
    Action,
    ActionCode,
    AdditionalDocument,
    CPRdata,
    CVRdata,
    EntryPoint,
    Envelope,
    File,
    IdType,
    MainDocument,
    MessageHeader,
    MessageType,
    Recipient,
    Representative,
    Reservation,
    Sender,
    TechnicalDocument,
)

MAX_TEXT = 256
MAX_COMMENT = 512
MAX_NOTIFICATION = 160
MAX_ATTACHMENTS = 10
MAX_SCHEDULE_DAYS = 366
_FILENAME_FORBIDDEN = frozenset('<>:"/\\|?*\r\n')

ROOT_ATTRIBUTES = ("memoVersion", "memoSchVersion")
DP2_ONLY = frozenset(
    {
        (Envelope, "encryption"),
        (Envelope, "sealedPersonalData"),
        (Envelope, "signature"),
        (MessageHeader, "labelIsSensitive"),
        (File, "nonce"),
    }
)
# The Avro schema names the documents' identifiers documentID; MeMo names each its own.
ELEMENT_NAMES = {
    (MainDocument, "documentID"): "mainDocumentID",
    (AdditionalDocument, "documentID"): "additionalDocumentID",
    (TechnicalDocument, "documentID"): "technicalDocumentID",
}
# Fields the model requires but MeMo lets a sender leave out (e.g. AttentionPerson/personID,
# Representative/idType) hold this value when the element is absent; it is not written.
ABSENT: dict[type[Any], Any] = {str: "", IdType: IdType.UNKNOWN}
# Enumerations that MeMo's XSD leaves free text but NgDP restricts, with the code for a
# value outside them.
ENUM_CODES: dict[type[Any], str] = {
    IdType: "MEMO_INVALID_ID_TYPE",
    ActionCode: "MEMO_INVALID_ACTION_CODE",
}

# Every code DP2 reports on MeMo, with the default hint; a rule may give a sharper one.
HINTS: dict[str, str] = {
    # the XML itself, found by schemas.memo while reading
    "MEMO_MALFORMED_XML": "Send well-formed XML: look at the line and column given "
    "(an unclosed or mismatched tag, or an unescaped & or <).",
    "MEMO_DOCTYPE_FORBIDDEN": "Remove the <!DOCTYPE ...> and any entity declarations; "
    "MeMo needs neither and DP2 refuses them.",
    # the official XSDs, found by schemas.memo_structure.check
    "MEMO_WRONG_ROOT": 'Make the root element Message in the namespace "https://DigitalPost.dk/'
    'MeMo-1", e.g. <memo:Message xmlns:memo="https://DigitalPost.dk/MeMo-1" memoVersion="1.2">.',
    "MEMO_UNSUPPORTED_VERSION": 'Set memoVersion="1.2", or "1.1" with memoSchVersion="1.1.0".',
    "MEMO_MISSING_ELEMENT": "Add the element named in the path; MeMo requires it there.",
    "MEMO_UNKNOWN_ELEMENT": "Remove the element or correct its name; MeMo names are "
    "case-sensitive (e.g. senderID, CPRdata) and each belongs under one parent.",
    "MEMO_UNKNOWN_ATTRIBUTE": "Remove the attribute; MeMo has attributes only on Message "
    "(memoVersion, and memoSchVersion in 1.1).",
    "MEMO_WRONG_NAMESPACE": "Write the element in the namespace MeMo's XSD declares it in; "
    "the vocabularies keep their own (grd, kle, form, dmv, gln, udd, sor).",
    "MEMO_WRONG_ORDER": "Put the elements in the order of MeMo's XSD; the hint of each "
    "violation lists it.",
    "MEMO_TOO_MANY": "Remove the extra elements; the message says how many are allowed.",
    "MEMO_INVALID_VALUE": "Write the value in the form MeMo defines for the element.",
    "MEMO_TIME_NOT_UTC": "Write timestamps in UTC ending in Z, e.g. 2026-11-27T10:00:00Z "
    "(11:00+01:00 becomes 10:00Z).",
    "MEMO_ACTION_ON_TECHNICAL_DOCUMENT": "Move the Action to the MainDocument or an "
    "AdditionalDocument; a TechnicalDocument cannot carry actions.",
    "MEMO_NOT_IN_VERSION": 'Set memoVersion="1.2" to use Representative and '
    "originalRepresentative (1.2 has no memoSchVersion), or remove them.",
    "MEMO_TEXT_TOO_LONG": f"Shorten the text to {MAX_TEXT} characters or fewer.",
    "MEMO_COMMENT_TOO_LONG": f"Shorten the comment to {MAX_COMMENT} characters or fewer.",
    "MEMO_NOTIFICATION_TOO_LONG": f"Shorten the notification to {MAX_NOTIFICATION} "
    "characters (one SMS) and put the rest in the letter.",
    "MEMO_LANGUAGE_INVALID": "Write the language as an ISO 639-1 code of two letters, "
    "e.g. da or en.",
    "MEMO_UUID_NOT_V4": "Generate the UUID with a version-4 generator (e.g. Python's "
    "uuid.uuid4()), written like 5b1c4a0e-8f2d-4c1e-9a3b-2d7e6f8a9b0c.",
    "MEMO_NO_FILE": "Add at least one File (encodingFormat, filename, language, content) to "
    "the document.",
    # NgDP's business rules, found by business_rules (and the reader, for enumerations)
    "MEMO_INVALID_ID_TYPE": "Write idType as CPR (a person) or CVR (a business or authority).",
    "MEMO_INVALID_ACTION_CODE": "Write actionCode as one of "
    f"{', '.join(m.value for m in ActionCode if m is not ActionCode.UNKNOWN)}.",
    "MEMO_INVALID_CPR": "Write the CPR number as 10 digits without a hyphen, keeping "
    "leading zeros, e.g. 0101011234.",
    "MEMO_INVALID_CVR": "Write the CVR number as 8 digits, keeping leading zeros, e.g. 01234567.",
    "MEMO_ENTRYPOINT_NOT_HTTPS": "Give an absolute https:// URL, "
    "e.g. https://www.aarhus.dk/selvbetjening.",
    "MEMO_INVALID_FILENAME": 'Remove < > : " / \\ | ? *, line breaks, control characters and '
    "unusual spaces from the file name (a plain space is fine).",
    "MEMO_NEMSMS_HAS_BODY": "Remove the MessageBody from the NEMSMS message, or send it "
    "as DIGITALPOST.",
    "MEMO_NEMSMS_NOTIFICATION_MISSING": f"Put the text message (1-{MAX_NOTIFICATION} "
    "characters) in MessageHeader/notification.",
    "MEMO_BODY_MISSING": "Add a MessageBody with a MainDocument holding at least one File, "
    "or send a text-only message as NEMSMS.",
    "MEMO_ACTION_TARGET": "Give the Action exactly one of Reservation (an appointment) and "
    "EntryPoint (a link).",
    "MEMO_DELIVERY_DATE_PAST": "Set doNotDeliverUntilDate to today or later, or leave it "
    "out to deliver at once.",
    "MEMO_DELIVERY_DATE_TOO_FAR": f"Choose a doNotDeliverUntilDate at most {MAX_SCHEDULE_DAYS} "
    "days from today.",
    "MEMO_REPLY_BY_PAST": "Set replyByDateTime to a time in the future, or leave it out.",
    "MEMO_TOO_MANY_ATTACHMENTS": f"Send at most {MAX_ATTACHMENTS} AdditionalDocuments: merge "
    "attachments or split them over several messages.",
    "MEMO_RESERVATION_TIMES": "Set the Reservation's endDateTime at or after its startDateTime.",
}


@dataclass(frozen=True, slots=True)
class Violation:
    """One thing wrong with a MeMo message: a stable code, where, what, and how to fix it."""

    code: str
    path: str
    message: str
    hint: str

    def as_dict(self) -> dict[str, str]:
        """The violation as plain strings, e.g. for a JSON answer or a lifecycle event."""
        return {"code": self.code, "path": self.path, "message": self.message, "hint": self.hint}


def violation(code: str, path: str, message: str, hint: str | None = None) -> Violation:
    """A Violation with the code's default hint unless a sharper one is given."""
    return Violation(code, path, message, hint if hint is not None else HINTS[code])


@dataclass(frozen=True, slots=True)
class Slot:
    """One model field as a MeMo element: its local name, its value type, whether a list."""

    field: str
    element: str
    kind: type[Any]  # a model class, an Enum, str, bool, date, datetime, or bytes (base64)
    many: bool
    required: bool  # by the model (MeMo's XSD may still let the element out, see ABSENT)
    default: Any  # the value that is not written (the model's default), or MISSING

    @property
    def is_record(self) -> bool:
        return dataclasses.is_dataclass(self.kind)


def slots(cls: type[Any]) -> tuple[Slot, ...]:
    """The MeMo elements of model class `cls`, in field order."""
    cached = _SLOTS.get(cls)
    if cached is None:
        cached = _SLOTS[cls] = _slots(cls)
    return cached


# Built once per class on first use; a race only builds the same tuple twice.
_SLOTS: dict[type[Any], tuple[Slot, ...]] = {}


def _slots(cls: type[Any]) -> tuple[Slot, ...]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a model dataclass")
    hints = typing.get_type_hints(cls)
    result = []
    for f in dataclasses.fields(cls):
        if (cls, f.name) in DP2_ONLY or (cls is Envelope and f.name in ROOT_ATTRIBUTES):
            continue
        hint, many = hints[f.name], False
        if typing.get_origin(hint) is list:
            hint, many = typing.get_args(hint)[0], True
        if typing.get_origin(hint) in (types.UnionType, typing.Union):
            options = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = options[0] if len(options) == 1 else None
        if cls is File and f.name == "content":
            hint = bytes  # MeMo carries the plaintext bytes as base64
        if not isinstance(hint, type):
            raise TypeError(f"no MeMo mapping for {cls.__name__}.{f.name}")
        element = hint.__name__ if dataclasses.is_dataclass(hint) else f.name
        result.append(
            Slot(
                field=f.name,
                element=ELEMENT_NAMES.get((cls, f.name), element),
                kind=hint,
                many=many,
                required=f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING,
                default=f.default,
            )
        )
    return tuple(result)


def join(path: str, element: str, index: int | None = None) -> str:
    """`path/element`, with an XPath-style 1-based `[index]` for repeated elements."""
    step = element if index is None else f"{element}[{index}]"
    return f"{path}/{step}" if path else step


def walk(record: object, path: str = "") -> Iterator[tuple[str, object]]:
    """Every model record in `record`'s tree (itself first) with its element path."""
    yield path, record
    for slot in slots(type(record)):
        value = getattr(record, slot.field)
        if not slot.is_record or value is None:
            continue
        if slot.many:
            for index, item in enumerate(value, 1):
                yield from walk(item, join(path, slot.element, index))
        else:
            yield from walk(value, join(path, slot.element))


def business_rules(envelope: Envelope, *, now: datetime) -> list[Violation]:
    """Every NgDP business rule beyond the XSDs that `envelope` breaks (empty when none)."""
    now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    found = _message_rules(envelope, now)
    for path, record in walk(envelope):
        found.extend(_record_rules(record, path))
    return found


def _message_rules(envelope: Envelope, now: datetime) -> list[Violation]:
    found: list[Violation] = []
    header, body = envelope.header, envelope.body
    if header.messageType is MessageType.NEMSMS:
        if body is not None:
            found.append(
                violation("MEMO_NEMSMS_HAS_BODY", "MessageBody", "a NEMSMS message has a body")
            )
        if header.notification is None or not header.notification.strip():
            found.append(
                violation(
                    "MEMO_NEMSMS_NOTIFICATION_MISSING",
                    "MessageHeader/notification",
                    "a NEMSMS message has no notification text",
                )
            )
    elif header.messageType is MessageType.DIGITALPOST and body is None:
        found.append(
            violation("MEMO_BODY_MISSING", "MessageBody", "a DIGITALPOST message has no body")
        )
    if body is not None and len(body.additionalDocument) > MAX_ATTACHMENTS:
        found.append(
            violation(
                "MEMO_TOO_MANY_ATTACHMENTS",
                f"MessageBody/AdditionalDocument[{MAX_ATTACHMENTS + 1}]",
                f"the message has {len(body.additionalDocument)} attachments; "
                f"MeMo allows {MAX_ATTACHMENTS}",
            )
        )
    found.extend(_time_rules(header, now))
    return found


def _time_rules(header: MessageHeader, now: datetime) -> list[Violation]:
    found: list[Violation] = []
    today = now.astimezone(UTC).date()
    due: date | None = header.doNotDeliverUntilDate
    where = "MessageHeader/doNotDeliverUntilDate"
    if due is not None and due < today:
        found.append(
            violation(
                "MEMO_DELIVERY_DATE_PAST",
                where,
                f"doNotDeliverUntilDate {due.isoformat()} is before today ({today.isoformat()})",
            )
        )
    if due is not None and due > today + timedelta(days=MAX_SCHEDULE_DAYS):
        found.append(
            violation(
                "MEMO_DELIVERY_DATE_TOO_FAR",
                where,
                f"doNotDeliverUntilDate {due.isoformat()} is more than {MAX_SCHEDULE_DAYS} "
                "days ahead",
            )
        )
    # Checked whether or not `reply` is set: the recipient sees the deadline either way.
    if header.replyByDateTime is not None and header.replyByDateTime < now:
        found.append(
            violation(
                "MEMO_REPLY_BY_PAST",
                "MessageHeader/replyByDateTime",
                "replyByDateTime is in the past",
            )
        )
    return found


# Characters that XML 1.0 cannot carry: an Envelope built in code (a form, a mail)
# holding one could never be journaled as MeMo, so it is refused before sending.
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _ids_of(record: object) -> tuple[str, IdType, str] | None:
    """(identifier, its type, its element) of a record that carries a CPR or CVR number."""
    if isinstance(record, Sender):
        return record.senderID, record.idType, "senderID"
    if isinstance(record, Recipient):
        return record.recipientID, record.idType, "recipientID"
    if isinstance(record, Representative) and record.representativeID:
        return record.representativeID, record.idType, "representativeID"
    if isinstance(record, CPRdata):
        return record.cprNumber, IdType.CPR, "cprNumber"
    if isinstance(record, CVRdata):
        return record.cvrNumber, IdType.CVR, "cvrNumber"
    return None


def _record_rules(record: object, path: str) -> list[Violation]:  # noqa: PLR0911 (a rule per kind)
    ids = _ids_of(record)
    if isinstance(record, Sender | Recipient) and record.idType is IdType.UNKNOWN:
        where = join(path, "idType")
        return [violation("MEMO_INVALID_ID_TYPE", where, _not_one_of("idType", IdType))]
    if ids is not None:
        return _id_rules(ids[0], ids[1], join(path, ids[2]))
    if isinstance(record, File):
        return _filename_rules(record.filename, join(path, "filename"))
    if isinstance(record, Action):
        if record.actionCode is ActionCode.UNKNOWN:
            where = join(path, "actionCode")
            message = _not_one_of("actionCode", ActionCode)
            return [violation("MEMO_INVALID_ACTION_CODE", where, message)]
        if record.reservation is None and record.entryPoint is None:
            # The XSD lets both out (and refuses both in); NgDP wants one.
            return [
                violation(
                    "MEMO_ACTION_TARGET", path, "the Action has neither Reservation nor EntryPoint"
                )
            ]
        return []
    if isinstance(record, EntryPoint):
        parts = urlsplit(record.url.strip())
        if parts.scheme.lower() == "https" and parts.netloc:
            return []
        return [
            violation(
                "MEMO_ENTRYPOINT_NOT_HTTPS",
                join(path, "url"),
                f"the URL is not an absolute https URL (scheme {parts.scheme or 'missing'!r})",
            )
        ]
    if isinstance(record, Reservation) and record.endDateTime < record.startDateTime:
        return [
            violation(
                "MEMO_RESERVATION_TIMES",
                join(path, "endDateTime"),
                "the Reservation ends before it starts",
            )
        ]
    return []


def _id_rules(value: str, id_type: IdType, where: str) -> list[Violation]:
    # Never echo the value: a CPR number is personal data, and a misplaced one may hide
    # in any identifier field.
    digits = {IdType.CPR: 10, IdType.CVR: 8}.get(id_type)
    if digits is None or (len(value) == digits and value.isascii() and value.isdigit()):
        return []
    if value.isascii() and value.isdigit():
        detail = f"it has {len(value)} digits"
    else:
        detail = f"it has {len(value)} characters, not all digits"
    return [
        violation(
            f"MEMO_INVALID_{id_type.value}",
            where,
            f"the {id_type.value} number must be {digits} digits; {detail}",
        )
    ]


def _filename_rules(name: str, where: str) -> list[Violation]:
    # Never echo the name: file names often carry a CPR number or a case subject.
    for position, char in enumerate(name, 1):
        odd_space = unicodedata.category(char) in {"Zs", "Cc", "Cf"} and char != " "
        if char in _FILENAME_FORBIDDEN or odd_space:
            shown = repr(char) if char.isprintable() and not odd_space else ""
            label = unicodedata.name(char, "control character")
            return [
                violation(
                    "MEMO_INVALID_FILENAME",
                    where,
                    f"the file name has U+{ord(char):04X} {label} {shown}".rstrip()
                    + f" at position {position}",
                )
            ]
    return []


def enum_values(kind: type[Enum]) -> list[str]:
    """The values MeMo allows for an enum (the models' UNKNOWN is DP2's, not MeMo's)."""
    return [member.value for member in kind if member.value != "UNKNOWN"]


def _not_one_of(element: str, kind: type[Enum]) -> str:
    """The message for a value outside an NgDP enumeration (never echoing the value)."""
    return f"{element} is none of {', '.join(enum_values(kind))}"

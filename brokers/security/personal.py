"""Where a MeMo header holds personal data beyond its two parties' ids, and how it is
taken out for the sealed part and put back.

Why it exists: DESIGN.md ("Messages") wants every personal identifier and contact
detail to travel sealed, and the clear header to carry only pseudonyms and routing
facts. brokers.security.sealing moves the recipient's id, a citizen sender's id and
ContentData's CPRdata itself; this module names every *other* personal field, once,
so that sealing, opening and the validator cannot disagree about them:

=====================================================  ==============================
field of MessageHeader                                 in the clear header
=====================================================  ==============================
sender.label, recipient.label (party not a CVR)        ``SEALED``
sender/recipient.attentionData, every text in it       ``SEALED``
sender/recipient.contactPoint.contactInfo[].value      ``SEALED``
sender.representative.representativeID (not a CVR)     pseudonym of its idType
sender.representative.label (not a CVR)                ``SEALED``
contentData.address, .unstructuredAddress, every text  ``SEALED``
contentData.additionalContentData[].contentDataValue   ``SEALED``
forwardData.originalSender, .originalRepresentative    pseudonym, unless a CVR
forwardData.originalContentResponsible, .comment       ``SEALED``
replyData[].senderID, .recipientID                     pseudonym, unless a CVR
replyData[].comment, .additionalReplyData[].value      ``SEALED``
=====================================================  ==============================

Identifiers become their keyed pseudonym, so one person keeps one pseudonym (a
representative's CPR number has the pseudonym the same number has as a recipient).
An identifier without an idType is a CVR number (public, left in clear) when it is 8
ASCII digits, a CPR number when 10, and of unknown type otherwise. Contact details —
names, addresses, e-mail, phone, free text — become the constant ``SEALED``: nothing
routes on them, and a constant links no two messages. What stays in clear is what
the backbone works with: the header's label and notification, CVR numbers, names of
data (``ContactInfo.label``, ``contentDataName``), case, system and contact point ids,
dates and file names. Values are addressed by a dotted path from the header
(``replyData.0.senderID``), as the sealed part records them.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from brokers.security.pseudonyms import Pseudonymizer
from schemas.models import IdType, MessageHeader
from schemas.values import is_ascii_digits

SEALED: Final = "(sealed)"
"""What a contact detail reads in the clear header; the value is in the sealed part."""

DETAIL: Final = "detail"
"""The kind of a contact detail (replaced by ``SEALED``)."""
UNTYPED: Final = "untyped"
"""The kind of an identifier without an idType (see the module docstring)."""

Path = tuple[str | int, ...]


class NotFitting(ValueError):
    """The sealed values do not fit the clear header (sealing says DECRYPTION_FAILED)."""


class Mismatch(ValueError):
    """A sealed identifier is not the one its pseudonym in the clear header stands for."""


@dataclass(frozen=True, slots=True)
class Field:
    """One personal value of a header: where it is, what kind it is, what it holds now."""

    path: Path
    kind: str  # DETAIL, UNTYPED, or the IdType value of a typed identifier
    value: str

    @property
    def name(self) -> str:
        return ".".join(str(step) for step in self.path)

    def id_type(self, original: str) -> str | None:
        """The pseudonym's id type for the plain value ``original``; None for a detail."""
        if self.kind == DETAIL:
            return None
        if self.kind == UNTYPED:
            return IdType.CPR.value if is_ascii_digits(original, 10) else IdType.UNKNOWN.value
        return self.kind


def fields(header: MessageHeader) -> list[Field]:
    """Every personal value of ``header`` named in the module docstring, plain or sealed."""
    return list(_fields(header))


def _fields(header: MessageHeader) -> Iterator[Field]:
    sender, recipient = header.sender, header.recipient
    for role, id_type, label, attention, contact in (
        ("sender", sender.idType, sender.label, sender.attentionData, sender.contactPoint),
        (
            "recipient",
            recipient.idType,
            recipient.label,
            recipient.attentionData,
            recipient.contactPoint,
        ),
    ):
        if id_type is not IdType.CVR and label is not None:
            yield Field((role, "label"), DETAIL, label)
        yield from _texts((role, "attentionData"), attention)
        for i, info in enumerate(contact.contactInfo if contact is not None else []):
            yield Field((role, "contactPoint", "contactInfo", i, "value"), DETAIL, info.value)
    representative = sender.representative
    if representative is not None and representative.idType is not IdType.CVR:
        where = ("sender", "representative")
        kind = representative.idType.value
        yield Field((*where, "representativeID"), kind, representative.representativeID)
        yield from _texts((*where, "label"), representative.label)
    content = header.contentData
    if content is not None:
        yield from _texts(("contentData", "address"), content.address)
        yield from _texts(("contentData", "unstructuredAddress"), content.unstructuredAddress)
        for i, extra in enumerate(content.additionalContentData):
            path = ("contentData", "additionalContentData", i, "contentDataValue")
            yield Field(path, DETAIL, extra.contentDataValue)
    forward = header.forwardData
    if forward is not None:
        yield from _untyped(("forwardData", "originalSender"), forward.originalSender)
        yield from _untyped(
            ("forwardData", "originalRepresentative"), forward.originalRepresentative
        )
        responsible = forward.originalContentResponsible
        yield from _texts(("forwardData", "originalContentResponsible"), responsible)
        yield from _texts(("forwardData", "comment"), forward.comment)
    for i, reply in enumerate(header.replyData):
        yield from _untyped(("replyData", i, "senderID"), reply.senderID)
        yield from _untyped(("replyData", i, "recipientID"), reply.recipientID)
        yield from _texts(("replyData", i, "comment"), reply.comment)
        for j, more in enumerate(reply.additionalReplyData):
            yield Field(("replyData", i, "additionalReplyData", j, "value"), DETAIL, more.value)


def _texts(path: Path, value: object) -> Iterator[Field]:
    """Every text in ``value`` (a text, a record or a list of them) as a contact detail."""
    if isinstance(value, str) and not isinstance(value, Enum):
        yield Field(path, DETAIL, value)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _texts((*path, i), item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _texts((*path, f.name), getattr(value, f.name))


def _untyped(path: Path, value: str | None) -> Iterator[Field]:
    if value is not None and not is_ascii_digits(value, 8):  # a CVR number is public
        yield Field(path, UNTYPED, value)


def seal(
    header: MessageHeader, pseudonymizer: Pseudonymizer
) -> tuple[MessageHeader, dict[str, str]]:
    """``header`` with its personal values replaced, and the originals by field name."""
    clear, originals = header, {}
    for field in fields(header):
        id_type = field.id_type(field.value)
        stand_in = SEALED if id_type is None else pseudonymizer.ref(id_type, field.value)
        clear = _replace(clear, field.path, stand_in)
        originals[field.name] = field.value
    return clear, originals


def restore(
    clear: MessageHeader, originals: dict[str, str], pseudonymizer: Pseudonymizer | None
) -> MessageHeader:
    """The clear header with the sealed ``originals`` put back where :func:`seal` took them.

    A name that is no personal field of the clear header, or a detail whose clear value
    is not ``SEALED``, raises NotFitting; given the deployment's ``pseudonymizer``, an
    identifier whose pseudonym is not the clear value raises Mismatch. Fields that an
    older sealer left in clear stay as they are.
    """
    by_name = {field.name: field for field in fields(clear)}
    header = clear
    for name, original in originals.items():
        field = by_name.get(name)
        if field is None:
            raise NotFitting("the sealed personal data names a field the clear header lacks")
        id_type = field.id_type(original)
        if id_type is None:
            if field.value != SEALED:
                raise NotFitting("a sealed contact detail is also in the clear header")
        elif pseudonymizer is not None and not hmac.compare_digest(
            pseudonymizer.ref(id_type, original).encode(), field.value.encode()
        ):
            raise Mismatch(name)
        header = _replace(header, field.path, original)
    return header


def in_clear(header: MessageHeader) -> list[str]:
    """The names of the personal fields of a sealed header that hold a value in clear."""
    return [
        field.name
        for field in fields(header)
        if (field.value != SEALED if field.kind == DETAIL else not _is_pseudonym(field.value))
    ]


def _is_pseudonym(value: str) -> bool:
    return value.startswith(Pseudonymizer.PREFIX)


def _replace(node: Any, path: Path, value: str) -> Any:
    """``node`` (a frozen record or a list) with the text at ``path`` set to ``value``."""
    if not path:
        return value
    step, rest = path[0], path[1:]
    if isinstance(step, int):
        items = list(node)
        items[step] = _replace(items[step], rest, value)
        return items
    return dataclasses.replace(node, **{step: _replace(getattr(node, step), rest, value)})

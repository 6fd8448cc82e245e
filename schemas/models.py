"""Typed models of the Avro records: one frozen dataclass per named record, one StrEnum per enum.

Attribute names are the Avro field names (camelCase, MeMo's spelling) on purpose: the model
is the schema, no name mapping can drift, and MeMo XML names map one to one. The
converter pair at the bottom (`to_avro` / `from_avro`) is generic, driven by the
dataclass fields and their type hints; tests/unit/test_schema_compat.py checks that
every class matches its schema field by field.

Conventions: timestamps are aware UTC `datetime`s (Avro timestamp-micros), dates are
`datetime.date`, identifiers such as CPR/CVR are `str` (leading zeros matter). Every
enum has UNKNOWN, the Avro default a reader uses for a symbol added after it was built;
producers should not write UNKNOWN.

Message UUIDs are held in one canonical form (DESIGN.md, "Message flow"): every model
field that names a message (``messageUUID``, ``relatedMessageUUID``) is folded to lower
case when the model is built — by a decoder, the MeMo reader or code — so no service can
compare or store an upper-case spelling of a UUID as another message
(schemas.values.canonical_uuid). A signer therefore signs the lower-case form.

Why one module over 500 lines: the models mirror the *.avsc files field for field,
and the codec and the compatibility guard walk them as one set.
"""

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum, StrEnum
from typing import Any, ClassVar, TypeVar

from schemas.values import canonical_uuid

NAMESPACE = "dk.dp2"


def _canonical_uuids(record: Any, *names: str) -> None:
    """Fold the message UUID fields ``names`` of a frozen model to their canonical form."""
    for name in names:
        value = getattr(record, name)
        if isinstance(value, str):
            object.__setattr__(record, name, canonical_uuid(value))


class MessageType(StrEnum):
    """MeMo messageType: a letter with documents, or a NemSMS text without a body."""

    DIGITALPOST = "DIGITALPOST"
    NEMSMS = "NEMSMS"
    UNKNOWN = "UNKNOWN"


class IdType(StrEnum):
    """Kind of party identifier (CPR for persons, CVR for businesses and authorities)."""

    CPR = "CPR"
    CVR = "CVR"
    UNKNOWN = "UNKNOWN"


class ActionCode(StrEnum):
    """MeMo Action/actionCode: what the recipient is asked to do."""

    AFTALE = "AFTALE"
    BEKRAEFT = "BEKRAEFT"
    BETALING = "BETALING"
    FORBEREDELSE = "FORBEREDELSE"
    INFORMATION = "INFORMATION"
    SELVBETJENING = "SELVBETJENING"
    TILMELDING = "TILMELDING"
    UNDERSKRIV = "UNDERSKRIV"
    UNKNOWN = "UNKNOWN"


class LifecycleState(StrEnum):
    """The steps of a message's life (DESIGN.md, Lifecycle); the projection orders them."""

    SUBMITTED = "SUBMITTED"
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"
    SCHEDULED = "SCHEDULED"
    RECALLED = "RECALLED"
    ROUTED = "ROUTED"
    DELIVERED = "DELIVERED"
    PRINTED = "PRINTED"
    FAILED = "FAILED"
    NOTIFIED = "NOTIFIED"
    NOTIFICATION_FAILED = "NOTIFICATION_FAILED"
    READ = "READ"
    REPLIED = "REPLIED"
    JOURNALED = "JOURNALED"
    EXPIRED = "EXPIRED"
    DUPLICATE = "DUPLICATE"
    UNKNOWN = "UNKNOWN"


class NotificationChannel(StrEnum):
    """How a recipient is alerted of new post."""

    EMAIL = "EMAIL"
    SMS = "SMS"
    APP = "APP"
    UNKNOWN = "UNKNOWN"


class NotificationOutcome(StrEnum):
    """What happened to a notification; FAILED_TEMPORARY may be retried."""

    SENT = "SENT"
    FAILED_TEMPORARY = "FAILED_TEMPORARY"
    FAILED_PERMANENT = "FAILED_PERMANENT"
    FAILED_TECHNICAL = "FAILED_TECHNICAL"
    UNKNOWN = "UNKNOWN"


class ContactStatus(StrEnum):
    """Registered for digital post, exempt (paper letter), or unknown (paper letter)."""

    REGISTERED = "REGISTERED"
    EXEMPT = "EXEMPT"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttentionPerson:
    personID: str
    label: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductionUnit:
    productionUnitNumber: str
    productionUnitName: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalLocationNumber:
    globalLocationNumber: str
    location: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EMail:
    emailAddress: str
    relatedAgent: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SEnumber:
    seNumber: str
    companyName: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Telephone:
    telephoneNumber: str
    relatedAgent: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EID:
    eID: str
    label: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentResponsible:
    contentResponsibleID: str
    label: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GeneratingSystem:
    generatingSystemID: str
    label: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SORdata:
    sorIdentifier: str
    entryName: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressPoint:
    geographicEastingMeasure: str
    geographicNorthingMeasure: str
    geographicHeightMeasure: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    id: str | None = None
    addressLabel: str | None = None
    houseNumber: str | None = None
    door: str | None = None
    floor: str | None = None
    co: str | None = None
    zipCode: str | None = None
    city: str | None = None
    country: str | None = None
    addressPoint: AddressPoint | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UnstructuredAddress:
    unstructured: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AttentionData:
    """MeMo AttentionData: who or what within the party the message is for."""

    attentionPerson: AttentionPerson | None = None
    productionUnit: ProductionUnit | None = None
    globalLocationNumber: GlobalLocationNumber | None = None
    email: EMail | None = None
    seNumber: SEnumber | None = None
    telephone: Telephone | None = None
    eid: EID | None = None
    contentResponsible: ContentResponsible | None = None
    generatingSystem: GeneratingSystem | None = None
    sorData: SORdata | None = None
    address: Address | None = None
    unstructuredAddress: UnstructuredAddress | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactInfo:
    label: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactPoint:
    """MeMo ContactPoint: a channel at the party for this case (0..2 ContactInfo)."""

    contactGroup: str | None = None
    contactPointID: str
    label: str | None = None
    contactInfo: list[ContactInfo] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Representative:
    representativeID: str
    idType: IdType
    idTypeLabel: str | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Sender:
    """MeMo Sender; `representative` exists from MeMo 1.2."""

    senderID: str
    idType: IdType
    idTypeLabel: str | None = None
    label: str
    attentionData: AttentionData | None = None
    contactPoint: ContactPoint | None = None
    representative: Representative | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipient:
    """MeMo Recipient; `recipientID` is CPR/CVR text, or a pseudonym once sealed."""

    recipientID: str
    idType: IdType
    idTypeLabel: str | None = None
    label: str | None = None
    attentionData: AttentionData | None = None
    contactPoint: ContactPoint | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CPRdata:
    cprNumber: str
    name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CVRdata:
    cvrNumber: str
    companyName: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MotorVehicle:
    licenseNumber: str | None = None
    chassisNumber: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PropertyNumber:
    propertyNumber: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseID:
    caseID: str
    caseSystem: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KLEdata:
    subjectKey: str
    version: str | None = None
    activityFacet: str | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FORMdata:
    taskKey: str
    version: str | None = None
    activityFacet: str | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Education:
    educationCode: str
    educationName: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AdditionalContentData:
    contentDataType: str | None = None
    contentDataName: str
    contentDataValue: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentData:
    """MeMo ContentData: what the message is about (case, subject keys, vehicle...)."""

    cprData: CPRdata | None = None
    cvrData: CVRdata | None = None
    motorVehicle: MotorVehicle | None = None
    propertyNumber: PropertyNumber | None = None
    caseID: CaseID | None = None
    kleData: KLEdata | None = None
    formData: FORMdata | None = None
    productionUnit: ProductionUnit | None = None
    education: Education | None = None
    address: Address | None = None
    unstructuredAddress: UnstructuredAddress | None = None
    additionalContentData: list[AdditionalContentData] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardData:
    """MeMo ForwardData: the message is forwarded from another sender."""

    messageUUID: str
    originalMessageDateTime: datetime
    originalSender: str
    originalContentResponsible: str | None = None
    originalRepresentative: str | None = None
    contactPointID: str | None = None
    comment: str | None = None

    def __post_init__(self) -> None:
        _canonical_uuids(self, "messageUUID")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdditionalReplyData:
    label: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyData:
    """MeMo ReplyData: the conversation this message answers or belongs to."""

    messageID: str | None = None
    messageUUID: str
    replyUUID: str | None = None
    senderID: str | None = None
    recipientID: str | None = None
    caseID: str | None = None
    contactPointID: str | None = None
    generatingSystemID: str | None = None
    comment: str | None = None
    additionalReplyData: list[AdditionalReplyData] = field(default_factory=list)

    def __post_init__(self) -> None:
        _canonical_uuids(self, "messageUUID")


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageHeader:
    """MeMo MessageHeader, plus DP2's `labelIsSensitive`."""

    messageType: MessageType
    messageUUID: str
    messageID: str | None = None
    messageCode: str | None = None
    label: str
    notification: str | None = None
    additionalNotification: str | None = None
    reply: bool = False
    replyByDateTime: datetime | None = None
    doNotDeliverUntilDate: date | None = None
    mandatory: bool | None = None
    legalNotification: bool | None = None
    postType: str | None = None
    sender: Sender
    recipient: Recipient
    contentData: ContentData | None = None
    forwardData: ForwardData | None = None
    replyData: list[ReplyData] = field(default_factory=list)
    labelIsSensitive: bool = True

    def __post_init__(self) -> None:
        _canonical_uuids(self, "messageUUID")


@dataclass(frozen=True, slots=True, kw_only=True)
class InlineContent:
    """File bytes carried in the envelope (encrypted when `File.nonce` is set)."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobContent:
    """Claim check: the file's bytes are in the blob store under `ref`."""

    ref: str
    sha256: bytes
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class File:
    """MeMo File; `content` is inline or a blob reference, `nonce` set when encrypted."""

    encodingFormat: str
    filename: str
    language: str | None = None
    content: InlineContent | BlobContent
    nonce: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    description: str | None = None
    reservationUUID: str
    abstract: str | None = None
    location: str | None = None
    startDateTime: datetime
    endDateTime: datetime
    organizerMail: str | None = None
    organizerName: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryPoint:
    url: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """MeMo Action; exactly one of `reservation` and `entryPoint` is set."""

    label: str
    actionCode: ActionCode
    startDateTime: datetime | None = None
    endDateTime: datetime | None = None
    reservation: Reservation | None = None
    entryPoint: EntryPoint | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MainDocument:
    """MeMo MainDocument (exactly one per body)."""

    documentID: str | None = None
    label: str | None = None
    file: list[File] = field(default_factory=list)
    action: list[Action] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdditionalDocument:
    """MeMo AdditionalDocument (attachments)."""

    documentID: str | None = None
    label: str | None = None
    file: list[File] = field(default_factory=list)
    action: list[Action] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class TechnicalDocument:
    """MeMo TechnicalDocument (machine-readable; no actions)."""

    documentID: str | None = None
    label: str | None = None
    file: list[File] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageBody:
    """MeMo MessageBody; absent for NEMSMS."""

    createdDateTime: datetime
    mainDocument: MainDocument
    additionalDocument: list[AdditionalDocument] = field(default_factory=list)
    technicalDocument: list[TechnicalDocument] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Encryption:
    """How the documents are encrypted for the recipient's mailbox provider."""

    contentAlgorithm: str
    keyWrapAlgorithm: str
    wrappedKey: bytes
    recipientKeyId: str
    ephemeralPublicKey: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Signature:
    """Over the canonical encoding of the envelope without its signature."""

    algorithm: str
    value: bytes
    signerCertificate: str
    batchRoot: bytes | None = None
    inclusionProof: list[bytes] = field(default_factory=list)
    leafIndex: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A MeMo 1.1/1.2 message plus DP2's encryption, sealed personal data and signature."""

    SCHEMA_NAME: ClassVar[str] = "envelope"
    memoVersion: str
    memoSchVersion: str | None = None
    header: MessageHeader
    body: MessageBody | None = None
    encryption: Encryption | None = None
    sealedPersonalData: bytes | None = None
    signature: Signature | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LifecycleEvent:
    """One step in a message's life, on dp2.lifecycle (keyed by messageUUID)."""

    SCHEMA_NAME: ClassVar[str] = "lifecycle_event"
    eventId: str
    messageUUID: str
    state: LifecycleState
    reasonCode: str | None = None
    reasonText: str | None = None
    actor: str
    occurredAt: datetime
    sequence: int
    senderID: str | None = None
    recipientRef: str | None = None
    channel: str | None = None
    relatedMessageUUID: str | None = None
    traceparent: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _canonical_uuids(self, "messageUUID", "relatedMessageUUID")


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationRequest:
    """Ask a notifier to alert a recipient; never carries message content."""

    SCHEMA_NAME: ClassVar[str] = "notification_request"
    requestId: str
    messageUUID: str
    recipientRef: str
    channel: NotificationChannel
    address: str
    language: str = "da"
    templateId: str
    label: str | None = None
    senderLabel: str | None = None
    nemSmsText: str | None = None
    messageCount: int = 1
    requestedAt: datetime

    def __post_init__(self) -> None:
        _canonical_uuids(self, "messageUUID")


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationResult:
    """The outcome of a NotificationRequest."""

    SCHEMA_NAME: ClassVar[str] = "notification_result"
    requestId: str
    messageUUID: str
    channel: NotificationChannel
    provider: str | None = None
    outcome: NotificationOutcome
    reasonCode: str | None = None
    reasonText: str | None = None
    attempts: int
    completedAt: datetime

    def __post_init__(self) -> None:
        _canonical_uuids(self, "messageUUID")


@dataclass(frozen=True, slots=True, kw_only=True)
class PostalAddress:
    """Where a paper letter goes."""

    co: str | None = None
    street: str
    postcode: str
    city: str
    country: str = "DK"


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactChannel:
    """One notification address the recipient chose."""

    channel: NotificationChannel
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Delegation:
    """Read access (læseadgang) granted to another person; readers cannot reply."""

    delegateRef: str
    grantedAt: datetime
    revokedAt: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactRecord:
    """A recipient in the contact register (topic keyed by recipientRef)."""

    SCHEMA_NAME: ClassVar[str] = "contact_record"
    recipientRef: str
    idType: IdType
    status: ContactStatus
    statusReason: str | None = None
    mailboxProvider: str | None = None
    name: str | None = None
    address: PostalAddress | None = None
    channels: list[ContactChannel] = field(default_factory=list)
    language: str = "da"
    readReceiptsConsent: bool = False
    delegations: list[Delegation] = field(default_factory=list)
    updatedAt: datetime


Record = Envelope | LifecycleEvent | NotificationRequest | NotificationResult | ContactRecord
"""A top-level record: one that the codec encodes on its own and that names its schema family."""

RECORD_TYPES: tuple[type[Record], ...] = (
    Envelope,
    LifecycleEvent,
    NotificationRequest,
    NotificationResult,
    ContactRecord,
)

# --- generic conversion between models and the plain values fastavro reads and writes ---

T = TypeVar("T")
_Convert = Callable[[Any], Any]


def to_avro(record: Any) -> dict[str, Any]:
    """The Avro-ready dict of a model instance (nested models, enums and lists converted)."""
    return _record_converters(type(record))[0](record)  # type: ignore[no-any-return]


def from_avro(cls: type[T], data: dict[str, Any]) -> T:
    """The model instance of `cls` for a dict fastavro read with `return_record_name=True`."""
    return _record_converters(cls)[1](data)  # type: ignore[no-any-return]


# Built once per class on first use; a race only builds the same pair twice.
_RECORD_CONVERTERS: dict[type, tuple[_Convert, _Convert]] = {}


def _record_converters(cls: type) -> tuple[_Convert, _Convert]:
    cached = _RECORD_CONVERTERS.get(cls)
    if cached is not None:
        return cached
    fields = [(f.name, *_converters(hint)) for f, hint in _fields(cls)]

    def to_dict(record: Any) -> dict[str, Any]:
        return {name: to_value(getattr(record, name)) for name, to_value, _ in fields}

    def from_dict(data: dict[str, Any]) -> Any:
        return cls(**{name: from_value(data[name]) for name, _, from_value in fields})

    _RECORD_CONVERTERS[cls] = (to_dict, from_dict)
    return to_dict, from_dict


def _fields(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _identity(value: Any) -> Any:
    return value


@functools.cache
def _converters(hint: Any) -> tuple[_Convert, _Convert]:  # noqa: PLR0911 (a return per kind of type)
    """(to Avro, from Avro) for one type hint; identity for values fastavro handles itself."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is types.UnionType or origin is typing.Union:
        return _union_converters(args)
    if origin is list:
        to_item, from_item = _converters(args[0])
        if to_item is _identity and from_item is _identity:
            return _identity, _identity
        return (lambda v: [to_item(x) for x in v]), (lambda v: [from_item(x) for x in v])
    if origin is dict:
        to_val, from_val = _converters(args[1])
        if to_val is _identity and from_val is _identity:
            return _identity, _identity
        return (
            lambda v: {k: to_val(x) for k, x in v.items()},
            lambda v: {k: from_val(x) for k, x in v.items()},
        )
    if isinstance(hint, type) and issubclass(hint, Enum):
        return (lambda v: v.value), hint
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _record_converters(hint)
    if hint in (str, bytes, int, float, bool, datetime, date):
        return _identity, _identity
    raise TypeError(f"no Avro mapping for {hint!r}")


def _union_converters(args: tuple[Any, ...]) -> tuple[_Convert, _Convert]:
    # A record in a union is written as fastavro's (full name, dict) tuple: the branch is
    # then explicit, and fastavro skips validating the value against every branch, which
    # costs more than the whole encoding for a nested envelope.
    options = [a for a in args if a is not type(None)]
    if len(options) == 1 and not dataclasses.is_dataclass(options[0]):  # scalar | None
        to_x, from_x = _converters(options[0])
        if to_x is _identity and from_x is _identity:
            return _identity, _identity
        return (
            lambda v: None if v is None else to_x(v),
            lambda v: None if v is None else from_x(v),
        )
    if not all(isinstance(o, type) and dataclasses.is_dataclass(o) for o in options):
        raise TypeError(f"only unions of records are supported, not {args!r}")
    by_name = {f"{NAMESPACE}.{o.__name__}": o for o in options}

    def to_branch(value: Any) -> Any:
        if value is None:
            return None
        cls = type(value)
        return (f"{NAMESPACE}.{cls.__name__}", _record_converters(cls)[0](value))

    def from_branch(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, tuple):  # X | None reads as a plain dict
            return _record_converters(options[0])[1](value)
        name, data = value
        return _record_converters(by_name[name])[1](data)

    return to_branch, from_branch

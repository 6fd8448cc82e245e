"""The official MeMo 1.1 and 1.2 XSDs as DP2's own table, and the check that holds XML to it.

Why: DP2 must accept every message the official XSDs accept and emit only messages they
accept, yet it ships neither the XSD files nor an XSD engine (stdlib XML only). The table
below was written by reading each version's MeMo_core.xsd and the vocabularies it imports
(grd, kle, form, dmv, gln, udd, sor; dt declares only simple types). `schemas.memo` reads
and writes in its order and namespaces, and `check` tells any tree where it departs
from it, so the reader, the writer and the tests agree on one description.

Notation: `Parent = child child? child* child+ child{0,4} (A|B)?` lists a complex
element's children in the XSD's sequence order with their occurrences; a child without
a prefix is in its parent's namespace. Elements that are no key of the table are simple;
their XSD type is in `_LEAF_TYPES` (otherwise memoTextType, at most 256 characters).

    check(root) -> [Violation]     every departure from the XSD of the root's memoVersion

| code | what `check` found |
|---|---|
| MEMO_WRONG_ROOT | the root is not memo:Message |
| MEMO_UNSUPPORTED_VERSION | memoVersion is not 1.1 or 1.2 (the rest is checked as 1.2) |
| MEMO_MISSING_ELEMENT, MEMO_NO_FILE | a required element or attribute is absent |
| MEMO_NOT_IN_VERSION | an element or attribute of the other MeMo version |
| MEMO_UNKNOWN_ELEMENT, MEMO_UNKNOWN_ATTRIBUTE | not declared at that place |
| MEMO_WRONG_NAMESPACE | the right name in the wrong namespace (e.g. memo:CPRdata) |
| MEMO_WRONG_ORDER | an element before one the sequence puts ahead of it |
| MEMO_TOO_MANY | more occurrences than maxOccurs |
| MEMO_ACTION_TARGET | an Action with both Reservation and EntryPoint (the XSD's choice) |
| MEMO_ACTION_ON_TECHNICAL_DOCUMENT | an Action in a TechnicalDocument |
| MEMO_INVALID_VALUE, MEMO_TIME_NOT_UTC | a value outside its simple type; a time not in Z |
| MEMO_TEXT_TOO_LONG, MEMO_COMMENT_TOO_LONG, MEMO_NOTIFICATION_TOO_LONG | maxLength |
| MEMO_LANGUAGE_INVALID, MEMO_UUID_NOT_V4 | memoLanguageType, memoUuidType |

Known limits against an XSD engine: years outside 0001-9999 and the time 24:00:00 are
refused (Python's datetime holds neither), xs:anyURI is held to RFC 3986 as libxml2 and
Xerces hold it (a valid scheme and port, % followed by two hex digits), and of
the xsi attributes only xsi:schemaLocation and xsi:noNamespaceSchemaLocation are let
through (an xsi:type naming the declared type itself would be valid, but is refused).

Why one module over 500 lines: the table's notation means only what `check` makes of
it (occurrences, the choice, a prefix-less child in its parent's namespace), so the two
are read and changed together.
"""

from __future__ import annotations

import base64
import re
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

from schemas.memo_rules import NOT_XML, Violation, join, violation

NAMESPACES = {
    "memo": "https://DigitalPost.dk/MeMo-1",
    "grd": "https://data.gov.dk/model/core/",
    "kle": "http://kle-online.dk/",
    "form": "http://www.form-online.dk/",
    "dmv": "https://motorregister.skat.dk/",
    "gln": "https://www.gs1.dk/gs1-standarder/identifikation/gln-global-location-number/",
    "udd": "https://www.dst.dk/da/TilSalg/Forskningsservice/Dokumentation/hoejkvalitetsvariable/"
    "elevregister-2/udd#",
    "sor": "https://services.nsi.dk/en/Services/SOR",
}
PREFIXES = {uri: prefix for prefix, uri in NAMESPACES.items()}
XSI = "http://www.w3.org/2001/XMLSchema-instance"
# The xsi attributes that only point at a schema; xsi:type and xsi:nil would change what
# the XSD allows, so DP2 refuses them with the other undeclared attributes.
_XSI_HINTS = frozenset({f"{{{XSI}}}schemaLocation", f"{{{XSI}}}noNamespaceSchemaLocation"})
VERSIONS = ("1.1", "1.2")
LATEST = VERSIONS[-1]  # its sequences hold every element of the older version, in order

# MeMo_core.xsd version 1.1 and the vocabularies it imports.
_MEMO_1_1 = {
    "memo:Message": "MessageHeader MessageBody?",
    "memo:MessageHeader": "messageType messageUUID messageID? messageCode? label notification? "
    "additionalNotification? reply? replyByDateTime? doNotDeliverUntilDate? mandatory "
    "legalNotification postType? Sender Recipient ContentData? ForwardData? ReplyData*",
    "memo:Sender": "senderID idType idTypeLabel? label AttentionData? ContactPoint?",
    "memo:Recipient": "recipientID idType idTypeLabel? label? AttentionData? ContactPoint?",
    "memo:AttentionData": "AttentionPerson? grd:ProductionUnit? gln:GlobalLocationNumber? EMail? "
    "grd:SEnumber? Telephone? grd:EID? ContentResponsible? GeneratingSystem? sor:SORdata? "
    "grd:Address? grd:UnstructuredAddress?",
    "memo:AttentionPerson": "personID? label?",
    "memo:EMail": "emailAddress relatedAgent?",
    "memo:Telephone": "telephoneNumber relatedAgent?",
    "memo:ContentResponsible": "contentResponsibleID? label?",
    "memo:GeneratingSystem": "generatingSystemID label?",
    "memo:ContactPoint": "contactGroup? contactPointID label? ContactInfo{0,2}",
    "memo:ContactInfo": "label value",
    "memo:ContentData": "grd:CPRdata? grd:CVRdata? dmv:MotorVehicle? grd:PropertyNumber? CaseID? "
    "kle:KLEdata? form:FORMdata? grd:ProductionUnit? udd:Education? grd:Address? "
    "grd:UnstructuredAddress? AdditionalContentData{0,10}",
    "memo:CaseID": "caseID caseSystem",
    "memo:AdditionalContentData": "contentDataType? contentDataName contentDataValue",
    "memo:ForwardData": "messageUUID originalMessageDateTime originalSender "
    "originalContentResponsible? contactPointID? comment?",
    "memo:ReplyData": "messageID? messageUUID replyUUID? senderID? recipientID? caseID? "
    "contactPointID? generatingSystemID? comment? AdditionalReplyData{0,4}",
    "memo:AdditionalReplyData": "label value",
    "memo:MessageBody": "createdDateTime MainDocument AdditionalDocument* TechnicalDocument*",
    "memo:MainDocument": "mainDocumentID? label? File+ Action*",
    "memo:AdditionalDocument": "additionalDocumentID? label? File+ Action*",
    "memo:TechnicalDocument": "technicalDocumentID? label? File+",
    "memo:File": "encodingFormat filename language content",
    "memo:Action": "label actionCode startDateTime? endDateTime? (Reservation|EntryPoint)?",
    "memo:Reservation": "description reservationUUID abstract location startDateTime "
    "endDateTime organizerMail? organizerName?",
    "memo:EntryPoint": "url",
    "grd:CPRdata": "cprNumber name?",
    "grd:CVRdata": "cvrNumber companyName?",
    "grd:PropertyNumber": "propertyNumber",
    "grd:ProductionUnit": "productionUnitNumber productionUnitName?",
    "grd:SEnumber": "seNumber companyName?",
    "grd:EID": "eID label?",
    "grd:Address": "id? addressLabel? houseNumber? door? floor? co? zipCode? city? country? "
    "AddressPoint?",
    "grd:AddressPoint": "geographicEastingMeasure? geographicNorthingMeasure? "
    "geographicHeightMeasure?",
    "grd:UnstructuredAddress": "unstructured",
    "dmv:MotorVehicle": "licenseNumber chassisNumber?",
    "kle:KLEdata": "subjectKey version activityFacet? label",
    "form:FORMdata": "taskKey version activityFacet? label",
    "gln:GlobalLocationNumber": "globalLocationNumber location?",
    "udd:Education": "educationCode educationName?",
    "sor:SORdata": "sorIdentifier entryName?",
}
# Version1.2/MeMo_core.xsd: what changed (it imports the same vocabularies).
_MEMO_1_2 = {
    **_MEMO_1_1,
    "memo:MessageHeader": "messageType messageUUID messageID? messageCode? label notification? "
    "additionalNotification? reply? replyByDateTime? doNotDeliverUntilDate? mandatory? "
    "legalNotification? postType? Sender Recipient ContentData? ForwardData? ReplyData*",
    "memo:Sender": "senderID idType idTypeLabel? label AttentionData? ContactPoint? "
    "Representative?",
    "memo:Representative": "representativeID? idType? idTypeLabel? label?",
    "memo:ForwardData": "messageUUID originalMessageDateTime originalSender "
    "originalContentResponsible? originalRepresentative? contactPointID? comment?",
}
# Message's attributes, and whether each is required.
ROOT_ATTRIBUTES = {
    "1.1": {"memoVersion": True, "memoSchVersion": True},
    "1.2": {"memoVersion": True},
}
# Simple elements not of memoTextType (dt = MeMo_dataTypes.xsd).
_LEAF_TYPES = {
    "memo:messageType": "messageType",  # dt:memoMessageType, an enumeration
    "memo:messageUUID": "uuid",  # dt:memoUuidType, a version-4 pattern
    "memo:replyUUID": "uuid",
    "memo:reservationUUID": "uuid",
    "memo:notification": "notification",  # dt:memoNotificationType, at most 160
    "memo:comment": "comment",  # dt:memoCommentType, at most 512
    "memo:reply": "boolean",
    "memo:mandatory": "boolean",
    "memo:legalNotification": "boolean",
    "memo:replyByDateTime": "dateTime",  # dt:memoDateTimeType, ending in Z
    "memo:createdDateTime": "dateTime",
    "memo:originalMessageDateTime": "dateTime",
    "memo:startDateTime": "dateTime",
    "memo:endDateTime": "dateTime",
    "memo:doNotDeliverUntilDate": "date",
    "memo:language": "language",  # dt:memoLanguageType, xs:language of at most 2
    "memo:content": "base64Binary",
    "memo:url": "anyURI",  # dt:memoUriType, at most 256
    "dmv:licenseNumber": "licenseNumber",  # dt:memoLicenseNumberType, at most 7
    "gln:globalLocationNumber": "gln",  # dt:memoGLNType, xs:long up to 13 digits
    "grd:productionUnitNumber": "pNumber",  # dt:memoPNumberType, xs:long up to 10 digits
}
# Elements with a default="..." in the XSD: an empty one has that value.
_DEFAULTS = {"memo:reply": "false", "memo:mandatory": "false", "memo:legalNotification": "false"}
# Types whose whitespace the XSD collapses before checking (the others preserve it).
COLLAPSED = frozenset(
    {"boolean", "date", "dateTime", "language", "base64Binary", "anyURI", "gln", "pNumber"}
)
_MAX_LENGTH = {
    "text": 256,
    "notification": 160,
    "comment": 512,
    "anyURI": 256,
    "licenseNumber": 7,
}
_LENGTH_CODES = {"notification": "MEMO_NOTIFICATION_TOO_LONG", "comment": "MEMO_COMMENT_TOO_LONG"}
_LONG_MAXIMUM = {"gln": 9_999_999_999_999, "pNumber": 9_999_999_999}
_MESSAGE_TYPES = ("DIGITALPOST", "NEMSMS")


@dataclass(frozen=True, slots=True)
class Particle:
    """One place in a parent's sequence: an element, or a choice of elements, and its counts."""

    names: tuple[str, ...]  # {namespace}local; more than one for a choice
    min: int
    max: int | None  # None is unbounded

    @property
    def many(self) -> bool:
        """Whether the place may hold more than one element (a list in the model)."""
        return self.max is None or self.max > 1


def qualified(name: str, default_prefix: str = "memo") -> str:
    """`{namespace}local` of a `prefix:local` (or bare `local`) name of the table."""
    prefix, _, local_name = name.rpartition(":")
    return f"{{{NAMESPACES[prefix or default_prefix]}}}{local_name}"


def local(tag: str) -> str:
    """The local name of a `{namespace}local` tag."""
    return tag.rpartition("}")[2]


def namespace(tag: str) -> str | None:
    """The namespace of a `{namespace}local` tag, None if it has none."""
    return tag[1:].partition("}")[0] if tag.startswith("{") else None


MESSAGE = qualified("Message")
_TECHNICAL_DOCUMENT = qualified("TechnicalDocument")
_TOKEN = re.compile(r"(?:\((?P<choice>[\w:|]+)\)|(?P<name>[\w:]+))(?P<occurs>[?*+]|\{\d+,\d+\})?")


def _particles(parent: str, sequence: str) -> tuple[Particle, ...]:
    prefix = parent.partition(":")[0]
    result = []
    for token in sequence.split():
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise ValueError(f"bad token {token!r} in the MeMo table at {parent}")
        names = (match["choice"] or match["name"]).split("|")
        occurs = match["occurs"] or ""
        low, high = {"": (1, 1), "?": (0, 1), "*": (0, None), "+": (1, None)}.get(occurs, (0, 0))
        if occurs.startswith("{"):
            low, high = (int(n) for n in occurs[1:-1].split(","))
        result.append(Particle(tuple(qualified(n, prefix) for n in names), low, high))
    return tuple(result)


_TABLES = {
    version: {qualified(parent): _particles(parent, sequence) for parent, sequence in table.items()}
    for version, table in (("1.1", _MEMO_1_1), ("1.2", _MEMO_1_2))
}
_LEAVES = {qualified(name): kind for name, kind in _LEAF_TYPES.items()}
DEFAULTS = {qualified(name): value for name, value in _DEFAULTS.items()}


def children(version: str, tag: str) -> tuple[Particle, ...] | None:
    """The sequence of complex element `tag` in MeMo `version`; None for a simple element."""
    return _TABLES[version].get(tag)


def particle(version: str, parent: str, tag: str) -> Particle | None:
    """The place of `tag` among the children of `parent` in `version`, None if it has none."""
    return next((p for p in children(version, parent) or () if tag in p.names), None)


def leaf_type(tag: str) -> str:
    """The XSD type of simple element `tag`: text (memoTextType) unless `_LEAF_TYPES` says."""
    return _LEAVES.get(tag, "text")


def version_of(raw: str) -> str | None:
    """The supported version that the xs:decimal `raw` is (1.20 is 1.2), None if none."""
    text = collapse(raw)
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", text, re.ASCII):
        return None
    return next((v for v in VERSIONS if Decimal(v) == Decimal(text)), None)


# --- simple values: the lexical forms of the XSD types, shared with the reader -------------


def collapse(raw: str) -> str:
    """`raw` with XML whitespace collapsed, as the XSD does for non-string types."""
    return re.sub(r"[ \t\n\r]+", " ", raw).strip(" ")


_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?", re.ASCII
)
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:Z|[+-]\d{2}:\d{2})?", re.ASCII)
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
_UUID = re.compile(
    "[a-fA-F0-9]{8}-[a-fA-F0-9]{4}-4[a-fA-F0-9]{3}-[aAbB89][a-fA-F0-9]{3}-[a-fA-F0-9]{12}"
)
_LANGUAGE = re.compile(r"[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*")  # xs:language
# xs:base64Binary without its spaces: whole quanta, the last with canonical padding bits.
_BASE64 = re.compile(
    r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=|[A-Za-z0-9+/][AQgw]==)?"
)


def read_datetime(raw: str) -> tuple[datetime, str | None]:
    """An xs:dateTime as an aware UTC datetime, with its zone as written (None if none)."""
    match = _DATETIME.fullmatch(collapse(raw))
    if match is None:
        raise ValueError("not an xs:dateTime")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    value = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=UTC
    )
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        value -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    return value, zone


def read_date(raw: str) -> date:
    """An xs:date (a zone, if written, does not move the day)."""
    match = _DATE.fullmatch(collapse(raw))
    if match is None:
        raise ValueError("not an xs:date")
    return date(int(match[1]), int(match[2]), int(match[3]))


def read_boolean(raw: str) -> bool:
    """An xs:boolean: true, false, 1 or 0."""
    value = _BOOLEANS.get(collapse(raw))
    if value is None:
        raise ValueError("not an xs:boolean")
    return value


def read_base64(raw: str) -> bytes:
    """The bytes of an xs:base64Binary, line breaks and spaces allowed."""
    text = collapse(raw).replace(" ", "")
    if not _BASE64.fullmatch(text):
        raise ValueError("not an xs:base64Binary")
    return base64.b64decode(text, validate=True)


def _read_uri(raw: str) -> str:
    """An xs:anyURI: a URI reference once characters outside RFC 3986 are %-escaped."""
    head = re.match(r"[^/?#]*", raw)
    scheme = head[0].partition(":") if head else ("", "", "")
    if re.search("%(?![0-9A-Fa-f]{2})", raw) or raw.count("#") > 1:
        raise ValueError("a stray % or #")
    if scheme[1] and not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme[0]):
        raise ValueError("not a scheme")
    urlsplit(raw).port  # noqa: B018 (raises ValueError for a bad host or port)
    return raw


def _read_long(raw: str, maximum: int) -> int:
    value = int(raw) if re.fullmatch(r"[+-]?\d+", raw, re.ASCII) else None
    if value is None or not -(2**63) <= value <= maximum:
        raise ValueError("not an xs:long in range")
    return value


def _read_message_type(raw: str) -> str:
    if raw not in _MESSAGE_TYPES:
        raise ValueError("not a memoMessageType")
    return raw


_READERS: dict[str, Callable[[str], object]] = {
    "boolean": read_boolean,
    "date": read_date,
    "dateTime": read_datetime,
    "base64Binary": read_base64,
    "anyURI": _read_uri,
    "messageType": _read_message_type,
    "gln": lambda raw: _read_long(raw, _LONG_MAXIMUM["gln"]),
    "pNumber": lambda raw: _read_long(raw, _LONG_MAXIMUM["pNumber"]),
}


_EXPECTED = {
    "dateTime": ("a timestamp", "Write a UTC timestamp such as 2026-11-27T10:00:00Z."),
    "date": ("a date", "Write the date as YYYY-MM-DD, e.g. 2027-01-04."),
    "boolean": ("a boolean", "Write true or false."),
    "base64Binary": ("valid base64", "Encode the file's bytes as standard base64 (RFC 4648)."),
    "anyURI": (
        "a URI",
        "Write an absolute URL such as https://www.aarhus.dk/selvbetjening (a literal % as %25).",
    ),
    "messageType": (
        f"one of {', '.join(_MESSAGE_TYPES)}",
        f"Write exactly one of {', '.join(_MESSAGE_TYPES)} (upper case).",
    ),
    **{
        kind: (
            f"a whole number of at most {len(str(top))} digits",
            f"Write the number in at most {len(str(top))} digits, e.g. {str(top)[:4]}.",
        )
        for kind, top in _LONG_MAXIMUM.items()
    },
}
"""What a value of each checked XSD type should be, and the hint that says how to write one."""


# --- the check -------------------------------------------------------------------------------


def check(root: ET.Element) -> list[Violation]:
    """Every way the tree `root` departs from the MeMo XSD of its memoVersion (empty if none)."""
    return _Checker().message(root)


class _Checker:
    """One walk over a tree against the table of one version, collecting violations."""

    def __init__(self) -> None:
        self.found: list[Violation] = []
        self.version = LATEST

    def report(self, code: str, path: str, message: str, hint: str | None = None) -> None:
        self.found.append(violation(code, path, message, hint))

    def message(self, root: ET.Element) -> list[Violation]:
        if root.tag != MESSAGE:
            where = namespace(root.tag) or "no namespace"
            self.report(
                "MEMO_WRONG_ROOT",
                "Message",
                f"the root element is {local(root.tag)} in {where}; "
                f"MeMo's is Message in {NAMESPACES['memo']}",
            )
            return self.found
        self.version = self._version(root)
        self._root_attributes(root)
        self._complex(root, MESSAGE, "")
        return self.found

    def _version(self, root: ET.Element) -> str:
        raw = root.get("memoVersion")
        if raw is None:
            self.report(
                "MEMO_MISSING_ELEMENT", "Message/@memoVersion", "Message has no memoVersion"
            )
            return LATEST
        version = version_of(raw)
        if version is None:
            shown = f" {raw.strip()}" if re.fullmatch(r"[0-9.]{1,10}", raw.strip()) else ""
            self.report(
                "MEMO_UNSUPPORTED_VERSION",
                "Message/@memoVersion",
                f"memoVersion{shown} is not one DP2 supports ({', '.join(VERSIONS)})",
            )
            return LATEST
        return version

    def _root_attributes(self, root: ET.Element) -> None:
        declared = ROOT_ATTRIBUTES[self.version]
        for name, value in root.attrib.items():
            where = f"Message/@{local(name)}"
            if name in declared:
                if name != "memoVersion":
                    self._value(value, "text", local(name), where)
            elif any(name in attributes for attributes in ROOT_ATTRIBUTES.values()):
                self.report(
                    "MEMO_NOT_IN_VERSION",
                    where,
                    f"{name} belongs to another MeMo version; this message is {self.version}",
                    f"Remove {name} from a {self.version} message, or declare the version "
                    f"that has it ({name} is MeMo 1.1's).",
                )
            elif name not in _XSI_HINTS:
                self.report("MEMO_UNKNOWN_ATTRIBUTE", where, f"Message has no attribute {name}")
        for name, required in declared.items():
            if required and name not in root.attrib:
                self.report(
                    "MEMO_MISSING_ELEMENT",
                    f"Message/@{name}",
                    f"Message has no {name}",
                    'Add memoSchVersion="1.1.0" to a MeMo 1.1 Message, or declare it '
                    'memoVersion="1.2".'
                    if name == "memoSchVersion"
                    else None,
                )

    def _attributes(self, elem: ET.Element, path: str) -> None:
        for name in elem.attrib:
            if name not in _XSI_HINTS:
                self.report(
                    "MEMO_UNKNOWN_ATTRIBUTE",
                    f"{path}/@{local(name)}",
                    f"{local(elem.tag)} has no attribute {local(name)}",
                )

    def _element(self, elem: ET.Element, tag: str, path: str) -> None:
        """Check `elem`, standing where the table expects `tag` (its namespace may differ)."""
        self._attributes(elem, path)
        if children(self.version, tag) is None:
            self._leaf(elem, tag, path)
        else:
            self._complex(elem, tag, path)

    def _leaf(self, elem: ET.Element, tag: str, path: str) -> None:
        for child in elem:
            self.report(
                "MEMO_UNKNOWN_ELEMENT",
                join(path, local(child.tag)),
                f"{local(tag)} holds text, not elements",
                f"Remove the elements inside {local(tag)}; it holds a value.",
            )
        self._value(elem.text or DEFAULTS.get(tag, ""), leaf_type(tag), local(tag), path)

    def _complex(self, elem: ET.Element, tag: str, path: str) -> None:
        if (elem.text or "").strip() or any((c.tail or "").strip() for c in elem):
            self.report(
                "MEMO_INVALID_VALUE",
                path or "Message",
                "text where only child elements belong",
                "Put text only inside simple elements such as label.",
            )
        particles = children(self.version, tag) or ()
        counts = [0] * len(particles)
        strangers: Counter[str] = Counter()
        position = 0
        for child in elem:
            index = self._place(particles, child.tag)
            if index is None:
                strangers[local(child.tag)] += 1
                self._stranger(child.tag, tag, path, strangers[local(child.tag)])
                continue
            slot = particles[index]
            counts[index] += 1
            expected = next(n for n in slot.names if local(n) == local(child.tag))
            name = local(expected)
            where = join(path, name, counts[index] if slot.many or counts[index] > 1 else None)
            if child.tag != expected:
                self._wrong_namespace(child.tag, expected, where)
            if slot.max is not None and counts[index] > slot.max:
                if counts[index] == slot.max + 1:
                    self._too_many(elem, slot, path, where)
                continue
            if index < position:
                order = ", ".join(local(n) for p in particles for n in p.names)
                self.report(
                    "MEMO_WRONG_ORDER",
                    where,
                    f"{name} comes after {local(particles[position].names[0])}; "
                    "MeMo's sequence puts it before",
                    f"Put the children of {local(tag)} in MeMo's order: {order}.",
                )
            position = max(position, index)
            self._element(child, expected, where)
        for slot, count in zip(particles, counts, strict=True):
            if count < slot.min:
                self._missing(local(slot.names[0]), tag, path)

    def _place(self, particles: tuple[Particle, ...], child: str) -> int | None:
        """The index of the particle `child` fills (by local name if the namespace is
        wrong), None if it fills none."""
        name = local(child)
        for index, slot in enumerate(particles):
            if child in slot.names:
                return index
        for index, slot in enumerate(particles):
            if any(local(n) == name for n in slot.names):
                return index
        return None

    def _stranger(self, child: str, parent: str, path: str, count: int) -> None:
        """Report `child`, which has no place in `parent`: the other version's, or unknown."""
        name = local(child)
        others = [v for v in VERSIONS if v != self.version and particle(v, parent, child)]
        if others:
            where = join(path, name, count if count > 1 else None)
            message = f"{name} exists in MeMo {others[0]}; this message is {self.version}"
            self.report("MEMO_NOT_IN_VERSION", where, message)
        elif parent == _TECHNICAL_DOCUMENT and name == "Action":
            where = join(path, name, count)  # an Action is counted wherever it is allowed
            self.report(
                "MEMO_ACTION_ON_TECHNICAL_DOCUMENT", where, "a TechnicalDocument has an Action"
            )
        else:
            where = join(path, name, count if count > 1 else None)
            parent_name = "Message" if parent == MESSAGE else local(parent)
            self.report("MEMO_UNKNOWN_ELEMENT", where, f"{parent_name} has no element {name}")

    def _wrong_namespace(self, tag: str, expected: str, where: str) -> None:
        name, uri = local(expected), namespace(expected) or ""
        self.report(
            "MEMO_WRONG_NAMESPACE",
            where,
            f"{name} is in {namespace(tag) or 'no namespace'}; MeMo puts it in {uri}",
            f'Write {name} in the namespace {uri}: declare xmlns:{PREFIXES[uri]}="{uri}" '
            f"and write <{PREFIXES[uri]}:{name}>.",
        )

    def _too_many(self, elem: ET.Element, slot: Particle, path: str, where: str) -> None:
        if len(slot.names) > 1:
            both = " and ".join(local(n) for n in slot.names)
            self.report(
                "MEMO_ACTION_TARGET",
                path,
                f"the {local(elem.tag)} has both {both}; MeMo allows one of them",
            )
            return
        name = local(slot.names[0])
        total = sum(1 for c in elem if local(c.tag) == name)
        allowed = "one" if slot.max == 1 else str(slot.max)
        self.report(
            "MEMO_TOO_MANY",
            where,
            f"{total} {name} elements; MeMo allows {allowed}",
            f"Keep at most {allowed} {name} here.",
        )

    def _missing(self, name: str, parent: str, path: str) -> None:
        parent_name = "Message" if parent == MESSAGE else local(parent)
        if name == "File":
            self.report("MEMO_NO_FILE", join(path, name), f"{parent_name} has no File")
            return
        self.report(
            "MEMO_MISSING_ELEMENT",
            join(path, name),
            f"{parent_name} has no {name}",
            f"Add {name} to {parent_name}; MeMo {self.version} requires it there.",
        )

    def _value(self, raw: str, kind: str, name: str, where: str) -> None:
        """Check the text `raw` of simple element (or attribute) `name` against XSD type `kind`."""
        bad = NOT_XML.search(raw)
        if bad is not None:
            self.report(
                "MEMO_INVALID_VALUE",
                where,
                f"{name} holds the character U+{ord(bad.group()):04X}, which XML cannot carry",
                "Remove control characters other than tab and line breaks from the text.",
            )
            return
        value = collapse(raw) if kind in COLLAPSED else raw
        limit = _MAX_LENGTH.get(kind)
        if limit is not None and len(value) > limit:
            self.report(
                _LENGTH_CODES.get(kind, "MEMO_TEXT_TOO_LONG"),
                where,
                f"{name} has {len(value)} characters; MeMo allows {limit}",
                f"Shorten {name} to {limit} characters or fewer."
                if kind == "licenseNumber"
                else None,
            )
        elif kind == "uuid" and not _UUID.fullmatch(value):
            self.report("MEMO_UUID_NOT_V4", where, f"{name} is {_uuid_kind(value)}")
        elif kind == "language" and not (_LANGUAGE.fullmatch(value) and len(value) <= 2):
            self.report(
                "MEMO_LANGUAGE_INVALID",
                where,
                f"language has {len(value)} characters; MeMo wants a code of one or two letters",
            )
        elif kind in _READERS:
            self._typed(_READERS[kind], value, kind, name, where)

    def _typed(
        self, read: Callable[[str], object], value: str, kind: str, name: str, where: str
    ) -> None:
        try:
            read(value)
        except (ValueError, OverflowError):
            what, hint = _EXPECTED[kind]
            self.report("MEMO_INVALID_VALUE", where, f"{name} is not {what}", hint)
            return
        if kind == "dateTime" and not value.endswith("Z"):
            zone = read_datetime(value)[1]
            offset = f"the offset {zone}" if zone else "no time zone"
            self.report("MEMO_TIME_NOT_UTC", where, f"{name} has {offset}, not Z")


def _uuid_kind(value: str) -> str:
    """What a value that is not a MeMo UUID is, without echoing it."""
    try:
        version = uuid.UUID(value).version
    except ValueError:
        return "not a UUID in 8-4-4-4-12 hexadecimal form; MeMo wants version 4"
    if version is None or version == 4:
        return "not a version-4 UUID of the RFC 4122 variant written 8-4-4-4-12"
    return f"a version-{version} UUID; MeMo wants version 4"

"""MeMo 1.1/1.2 XML to DP2's Envelope and back, exactly as the official XSDs, every problem at once.

Why: MeMo is the XML that Danish case systems (ESDH) already send to Digital Post. DP2
accepts and emits it so that moving to DP2 does not make an authority rebuild its
integration; and since ESDH integrators fix what an error tells them and resend, every
violation is collected in one pass and each says where, what and how to fix it.

Pure code over bytes and models, no I/O; stdlib XML only. The XSDs' element names,
namespaces, order and counts come from `schemas.memo_structure`; which model field is
which element from `schemas.memo_rules.slots`. Reading first checks the tree against the
XSD of its memoVersion, then builds the model by local name, so a message with a
misplaced element still yields a model and its business rules are reported too. Writing
follows the XSD's order, each element in its namespace (memo, grd, kle, form, dmv, gln,
udd, sor, with those prefixes), timestamps in UTC with Z, file content as base64, and
checks the result against the table before returning it: what DP2 writes is valid MeMo.
DP2-only fields (encryption, sealedPersonalData, signature, labelIsSensitive, File.nonce)
are not MeMo: `parse` leaves them at their defaults, `to_xml` omits them and refuses
still-encrypted files.

    parse(xml) -> Envelope                XSD problems -> MemoError
    validate(envelope, now=) -> [Violation]   XSD and business rules on the model
    parse_and_validate(xml, now=)         both; MemoError lists every violation
    to_xml(envelope) -> bytes             XSD-valid MeMo, else MemoError (MEMO_NOT_PLAIN ...)
    to_xml_chunks(envelope) -> Iterator[bytes]   the same bytes, a piece at a time
    check(xml) -> [Violation]             the XSD problems of any MeMo XML
    equivalent(a, b) -> bool              the round-trip contract, see below

Big messages: `parse` and `parse_and_validate` read bytes or a binary file (read in
1 MiB pieces), and decode each file's base64 as the parser delivers it
(schemas.memo_base64), so a 99.5 MB letter is held once, as its decoded bytes, never
also as its 133 MB of text; `to_xml_chunks` writes it back without building that text,
and `validate` checks file content without encoding it (bytes are always valid base64).

Round trip: for XML that `parse` accepts, `equivalent(xml, to_xml(parse(xml)))` holds
(an empty element where MeMo allows none, such as <personID/>, reads as absent), and
`parse(to_xml(e)) == e` for every plaintext Envelope that `to_xml` accepts.

| code | found by | what was wrong |
|---|---|---|
| MEMO_MALFORMED_XML | parse | not well-formed XML (message gives line and column) |
| MEMO_DOCTYPE_FORBIDDEN | parse | a DOCTYPE or entity declaration (refused before any tree) |
| MEMO_WRONG_ROOT ... MEMO_UUID_NOT_V4 | check | the XSD codes listed in schemas.memo_structure |
| MEMO_INVALID_ID_TYPE | parse, validate | an idType that is not CPR or CVR |
| MEMO_INVALID_ACTION_CODE | parse, validate | an actionCode that NgDP does not know |
| MEMO_INVALID_CPR, MEMO_INVALID_CVR | validate | not 10 / 8 digits (by idType; CPRdata, CVRdata) |
| MEMO_ENTRYPOINT_NOT_HTTPS | validate | an EntryPoint url that is not absolute https |
| MEMO_INVALID_FILENAME | validate | < > : " / \\ ? * or the bar, CR/LF, control or odd spaces |
| MEMO_NEMSMS_HAS_BODY, MEMO_NEMSMS_NOTIFICATION_MISSING | validate | NemSMS shape |
| MEMO_BODY_MISSING | validate | DIGITALPOST without body |
| MEMO_ACTION_TARGET | check, validate | an Action with both (XSD) or neither (NgDP) target |
| MEMO_TOO_MANY_ATTACHMENTS | validate | more than 10 AdditionalDocuments |
| MEMO_RESERVATION_TIMES | validate | a Reservation ending before it starts |
| MEMO_DELIVERY_DATE_PAST, MEMO_DELIVERY_DATE_TOO_FAR | validate | before today; > 366 days |
| MEMO_REPLY_BY_PAST | validate | replyByDateTime before `now` (whether or not reply is set) |
| MEMO_NOT_PLAIN | to_xml (Dp2Error) | a file still encrypted or in the blob store |

`validate` writes the model as a tree and checks it like parsed XML, so an Envelope built
in code meets exactly the rules a case system's XML meets, with the same paths.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from enum import Enum
from typing import IO, Any, NoReturn
from xml.parsers import expat

from schemas import memo_structure as xsd
from schemas.errors import Dp2Error
from schemas.memo_base64 import Builder, encode_chunks
from schemas.memo_rules import (
    ABSENT,
    ENUM_CODES,
    Slot,
    Violation,
    business_rules,
    enum_values,
    join,
    slots,
    violation,
)
from schemas.models import Envelope, File, InlineContent

__all__ = [
    "NS",
    "SUPPORTED_VERSIONS",
    "MemoError",
    "Violation",
    "check",
    "equivalent",
    "parse",
    "parse_and_validate",
    "to_xml",
    "to_xml_chunks",
    "validate",
]

NS = xsd.NAMESPACES["memo"]
SUPPORTED_VERSIONS = xsd.VERSIONS


class MemoError(Dp2Error):
    """MeMo XML that DP2 cannot accept; `violations` lists every problem found."""

    reason_code = "MEMO_INVALID"
    hint = "Fix every problem listed in violations (each has its own hint) and send again."

    def __init__(self, violations: Sequence[Violation]) -> None:
        if not violations:
            raise ValueError("a MemoError needs at least one violation")
        self.violations = list(violations)
        first = self.violations[0]
        if len(self.violations) == 1:
            super().__init__(
                f"{first.path}: {first.message}", reason_code=first.code, hint=first.hint
            )
        else:
            super().__init__(
                f"{len(self.violations)} problems in the MeMo message; the first, "
                f"{first.code} at {first.path}: {first.message}"
            )


Source = bytes | IO[bytes]
"""MeMo XML as bytes, or a binary file positioned at its start."""
_READ_SIZE = 1024 * 1024


def parse(xml: Source) -> Envelope:
    """The Envelope in MeMo `xml`; MemoError lists every way it departs from the XSD."""
    envelope, found = _read(xml)
    if envelope is None or found:
        raise MemoError(found)
    return envelope


def parse_and_validate(xml: Source, *, now: datetime) -> Envelope:
    """The Envelope in `xml` if it breaks no MeMo rule at `now`; else MemoError with all."""
    envelope, found = _read(xml)
    if envelope is not None:
        found.extend(business_rules(envelope, now=now))
    if envelope is None or found:
        raise MemoError(found)
    return envelope


def validate(envelope: Envelope, *, now: datetime) -> list[Violation]:
    """Every MeMo rule, of the XSDs and of NgDP, that `envelope` breaks (empty when none)."""
    return xsd.check(_tree(envelope, plain=False)) + business_rules(envelope, now=now)


def check(xml: bytes) -> list[Violation]:
    """Every way MeMo `xml` departs from the official XSD of its memoVersion (empty if none)."""
    return xsd.check(_read_tree(xml))


def to_xml(envelope: Envelope) -> bytes:
    """MeMo XML (UTF-8) of a plaintext envelope; MemoError if the XSDs would refuse it."""
    return b"".join(to_xml_chunks(envelope))


def to_xml_chunks(envelope: Envelope) -> Iterator[bytes]:
    """The bytes of ``to_xml(envelope)`` in pieces, file content base64-encoded as it is
    written (hash or send a big message without holding its text); MemoError first."""
    contents: list[tuple[ET.Element, bytes]] = []
    root = _tree(envelope, plain=True, contents=contents)
    found = xsd.check(root)  # content is checked empty: bytes are always valid base64
    if found:
        raise MemoError(found)
    used = set()
    for elem in root.iter():
        uri = xsd.namespace(elem.tag) or NS
        used.add(uri)
        elem.tag = f"{xsd.PREFIXES[uri]}:{xsd.local(elem.tag)}"
    attributes = dict(root.attrib)
    root.attrib.clear()
    for prefix, uri in xsd.NAMESPACES.items():
        if uri in used:
            root.set(f"xmlns:{prefix}", uri)
    root.attrib.update(attributes)
    # A NUL marks where each file's base64 goes: the check above refused any in the text.
    for number, (elem, data) in enumerate(contents):
        if data:
            elem.text = f"\0{number}\0"
    ET.indent(root)
    # ET writes CR as is and a parser would read it as LF; a character reference keeps it.
    text = ET.tostring(root, encoding="unicode").replace("\r", "&#13;")
    yield b'<?xml version="1.0" encoding="UTF-8"?>\n'
    for index, part in enumerate(text.split("\0")):
        if index % 2:
            yield from encode_chunks(contents[int(part)][1])
        else:
            yield part.encode()
    yield b"\n"


def equivalent(a: bytes, b: bytes) -> bool:
    """Whether two MeMo documents carry the same elements, in order, with the same values.

    Compared by namespace and local name, ignoring prefixes and namespaced attributes;
    text is whitespace-trimmed, timestamps compare as instants, booleans as values
    (1 = true), UUIDs in any case, base64 content decoded, and a boolean at the XSD's
    default (false) counts as absent. Raises MemoError if either is not well-formed.
    """
    return _normalised(_read_tree(a)) == _normalised(_read_tree(b))


# --- reading ---------------------------------------------------------------------------


class _Refused(Exception):
    """Raised from the expat handler that sees a DOCTYPE or an entity declaration."""


def _refuse(*_: object) -> NoReturn:
    raise _Refused


def _read_tree(xml: Source, decoded: dict[ET.Element, bytes] | None = None) -> ET.Element:
    """The element tree of `xml`, refusing DOCTYPEs before any entity could expand
    (file content decoded into `decoded` when given, see memo_base64.Builder)."""
    builder = Builder(decoded)
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    parser.buffer_size = 64 * 1024  # fewer, larger pieces of a file's base64
    try:
        if isinstance(xml, bytes | bytearray | memoryview):
            parser.Parse(xml, True)
        else:
            while piece := xml.read(_READ_SIZE):
                parser.Parse(piece, False)
            parser.Parse(b"", True)
    except _Refused:
        message = f"the document declares a DOCTYPE or entity at line {parser.CurrentLineNumber}"
        raise MemoError([violation("MEMO_DOCTYPE_FORBIDDEN", "Message", message)]) from None
    except expat.ExpatError as exc:
        where = f"line {exc.lineno}, column {exc.offset + 1}"
        message = f"the XML is not well-formed: {expat.ErrorString(exc.code)} at {where}"
        raise MemoError([violation("MEMO_MALFORMED_XML", "Message", message)]) from exc
    return builder.tree.close()


def _read(xml: Source) -> tuple[Envelope | None, list[Violation]]:
    """The model of `xml` (None if its problems leave none) and every XSD problem found."""
    decoded: dict[ET.Element, bytes] = {}
    root = _read_tree(xml, decoded)
    found = xsd.check(root)
    if root.tag != xsd.MESSAGE:
        return None, found
    version = xsd.version_of(root.get("memoVersion") or "")
    reader = _Reader(version or xsd.LATEST, decoded)
    given = {
        "memoVersion": version or (root.get("memoVersion") or "").strip(),
        "memoSchVersion": root.get("memoSchVersion"),
    }
    envelope = reader.record(Envelope, root, xsd.MESSAGE, "", given)
    found.extend(reader.violations)
    if envelope is None and not found:  # the check explains every failure; never silent
        found.append(violation("MEMO_INVALID_VALUE", "Message", "DP2 could not read the message"))
    return envelope if isinstance(envelope, Envelope) else None, found


class _Reader:
    """Builds the model from a checked tree, by local name; the check reported the problems.

    A value the model cannot hold (a bad date, a missing required element) leaves its
    record None; an enumeration NgDP narrows (idType, actionCode) is reported here.
    """

    def __init__(self, version: str, decoded: dict[ET.Element, bytes]) -> None:
        self.version = version
        self.violations: list[Violation] = []
        self._decoded = decoded  # file content, decoded while parsing

    def record(
        self,
        cls: type[Any],
        elem: ET.Element,
        tag: str,
        path: str,
        given: dict[str, Any] | None = None,
    ) -> object | None:
        """The model `cls` read from `elem` (standing for `tag`), None if it cannot be built."""
        by_element = {slot.element: slot for slot in slots(cls)}
        values: dict[str, Any] = dict(given or {})
        seen: Counter[str] = Counter()
        failed = False
        for child in elem:
            name = xsd.local(child.tag)
            slot = by_element.get(name)
            seen[name] += 1
            if slot is None or (not slot.many and seen[name] > 1):
                continue  # unknown, or a repeat: the check reported it
            where = join(path, name, seen[name] if slot.many else None)
            place = _child_tag(self.version, tag, name)
            if slot.is_record:
                value = self.record(slot.kind, child, place, where)
            else:
                value = self.leaf(slot, child, place, where)
            if value is None:
                failed = True
            elif slot.many:
                values.setdefault(slot.field, []).append(value)
            else:
                values[slot.field] = value
        for slot in slots(cls):
            if slot.required and slot.field not in values:
                spot = xsd.particle(self.version, tag, _child_tag(self.version, tag, slot.element))
                if slot.kind in ABSENT and spot is not None and spot.min == 0:
                    values[slot.field] = ABSENT[slot.kind]
                else:
                    failed = True
        return None if failed else cls(**values)

    def leaf(self, slot: Slot, elem: ET.Element, tag: str, where: str) -> object | None:
        """The value of simple element `elem`, or None if the model cannot hold it."""
        if slot.kind is bytes and elem in self._decoded:
            return InlineContent(data=self._decoded[elem])
        text = elem.text or xsd.DEFAULTS.get(tag, "")
        kind = xsd.leaf_type(tag)
        if slot.kind is str:
            return xsd.collapse(text) if kind in xsd.COLLAPSED else text
        read = _LEAF_READERS.get(slot.kind)
        if read is not None:
            try:
                return read(text)
            except (ValueError, OverflowError):
                return None
        if not issubclass(slot.kind, Enum):
            raise TypeError(f"no MeMo reader for {slot.kind!r}")
        raw = text if kind == "messageType" else text.strip()
        if raw in enum_values(slot.kind):
            return slot.kind(raw)
        code = ENUM_CODES.get(slot.kind)
        if code is not None:  # the XSD allows any text here; NgDP does not
            allowed = ", ".join(enum_values(slot.kind))
            self.violations.append(violation(code, where, f"{slot.element} is none of {allowed}"))
        return None


_LEAF_READERS: dict[type[Any], Callable[[str], object]] = {
    bool: xsd.read_boolean,
    datetime: lambda text: xsd.read_datetime(text)[0],
    date: xsd.read_date,
    bytes: lambda text: InlineContent(data=xsd.read_base64(text)),
}


def _child_tag(version: str, parent: str, name: str) -> str:
    """The qualified tag the XSD gives child `name` of `parent` (memo if it gives none)."""
    for place in xsd.children(version, parent) or xsd.children(xsd.LATEST, parent) or ():
        for tag in place.names:
            if xsd.local(tag) == name:
                return tag
    return xsd.qualified(name)


# --- writing ---------------------------------------------------------------------------


def _tree(
    envelope: Envelope,
    *,
    plain: bool,
    contents: list[tuple[ET.Element, bytes]] | None = None,
) -> ET.Element:
    """The MeMo tree of `envelope` in the XSD's order; `plain` refuses encrypted files.

    File content is left empty in the tree (the check needs no base64 of bytes); with
    `contents`, each content element and its bytes are listed there, in order.
    """
    root = ET.Element(xsd.MESSAGE, {"memoVersion": envelope.memoVersion})
    if envelope.memoSchVersion is not None:
        root.set("memoSchVersion", envelope.memoSchVersion)
    _write(root, envelope, xsd.MESSAGE, "", plain, [] if contents is None else contents)
    return root


def _write(  # noqa: PLR0917 - one recursion, its place and what it collects
    parent: ET.Element,
    record: object,
    tag: str,
    path: str,
    plain: bool,
    contents: list[tuple[ET.Element, bytes]],
) -> None:
    if plain and isinstance(record, File) and not _is_plain(record):
        raise Dp2Error(
            f"{path} is encrypted or in the blob store; only plaintext maps to MeMo",
            reason_code="MEMO_NOT_PLAIN",
            hint="Decrypt the envelope and inline its files before converting it to MeMo XML.",
        )
    by_element = {slot.element: slot for slot in slots(type(record))}
    # The latest version's sequences hold every element in order; the check then says
    # which of them the envelope's own version has not got.
    for place in xsd.children(xsd.LATEST, tag) or ():
        for name in place.names:
            slot = by_element[xsd.local(name)]
            items = _items(slot, getattr(record, slot.field), place)
            for index, item in enumerate(items, 1):
                child = ET.SubElement(parent, name)
                where = join(path, slot.element, index if slot.many else None)
                if slot.is_record:
                    _write(child, item, name, where, plain, contents)
                elif slot.kind is bytes:
                    if isinstance(item, InlineContent):
                        contents.append((child, item.data))
                else:
                    child.text = _format(slot.kind, item)


def _items(slot: Slot, value: Any, place: xsd.Particle) -> list[Any]:
    """The values to write for one slot: none for None, a default or an absent marker."""
    if value is None or (slot.default is not dataclasses.MISSING and value == slot.default):
        return []
    if slot.required and place.min == 0 and slot.kind in ABSENT and value == ABSENT[slot.kind]:
        return []
    return list(value) if slot.many else [value]


def _is_plain(file: File) -> bool:
    return file.nonce is None and isinstance(file.content, InlineContent)


def _format(kind: type[Any], value: Any) -> str:
    if kind is bool:
        return "true" if value else "false"
    if issubclass(kind, Enum):
        return str(value.value)
    if kind is datetime:
        aware: datetime = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        utc = aware.astimezone(UTC).replace(tzinfo=None)
        return utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds") + "Z"
    if kind is date:
        return str(value.isoformat())
    return str(value)


# --- comparing -------------------------------------------------------------------------


def _normalised(elem: ET.Element) -> tuple[Any, ...]:
    attributes = sorted((k, v.strip()) for k, v in elem.attrib.items() if not k.startswith("{"))
    children = [c for c in elem if not _at_default(c)]
    if children:
        return (elem.tag, attributes, tuple(_normalised(c) for c in children))
    return (elem.tag, attributes, _value(elem))


def _at_default(elem: ET.Element) -> bool:
    default = xsd.DEFAULTS.get(elem.tag)
    return default is not None and len(elem) == 0 and _value(elem) == _value(elem, default)


def _value(elem: ET.Element, text: str | None = None) -> object:
    raw = (text if text is not None else elem.text or xsd.DEFAULTS.get(elem.tag, "")).strip()
    kind = xsd.leaf_type(elem.tag)
    try:
        if kind == "dateTime":
            return xsd.read_datetime(raw)[0]
        if kind == "boolean":
            return xsd.read_boolean(raw)
        if kind == "base64Binary":
            return xsd.read_base64(raw)
    except (ValueError, OverflowError):
        return raw
    if kind == "uuid":  # the models hold message UUIDs in lower case
        return raw.lower()
    return xsd.collapse(raw) if kind in xsd.COLLAPSED else raw

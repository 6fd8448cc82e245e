"""MeMo 1.1/1.2 XML to DP2's Envelope and back, with every problem reported at once.

Why: MeMo is the XML that Danish case systems (ESDH) already send to Digital Post. DP2
accepts and emits it so that moving to DP2 does not make an authority rebuild its
integration; and since ESDH integrators fix what an error tells them and resend, every
violation is collected in one pass and each says where, what and how to fix it.

Pure code over bytes and models, no I/O; stdlib XML only. The element table comes from
the model dataclasses (`schemas.memo_rules.slots`): complex elements are named
like the model class (MessageHeader, AttentionData, CPRdata, File), simple elements like
the field (senderID, label), in field order. Children are matched by local name, so
MeMo's imported vocabularies (grd, dt, kle, form, dmv, gln, udd, sor) may use their own
namespaces; only the root must be `{https://DigitalPost.dk/MeMo-1}Message`. Input
element order is not checked; output is in MeMo's order, every element with the `memo`
prefix, timestamps in UTC with Z, file content as base64. DP2-only fields (encryption,
sealedPersonalData, signature, labelIsSensitive, File.nonce) are not MeMo: `parse` leaves
them at their defaults, `to_xml` omits them and refuses still-encrypted files.

    parse(xml) -> Envelope                structural problems -> MemoError
    validate(envelope, now=) -> [Violation]   business rules on the model
    parse_and_validate(xml, now=)         both; MemoError lists every violation
    to_xml(envelope) -> bytes             plaintext envelopes only (MEMO_NOT_PLAIN)
    equivalent(a, b) -> bool              the round-trip contract, see below

Round trip: for XML that `parse` accepts and whose elements are in MeMo's order,
`equivalent(xml, to_xml(parse(xml)))` holds, and `parse(to_xml(e)) == e` for every
plaintext Envelope of MeMo values.

| code | checked in | what was wrong |
|---|---|---|
| MEMO_MALFORMED_XML | parse | not well-formed XML (message gives line and column) |
| MEMO_DOCTYPE_FORBIDDEN | parse | a DOCTYPE or entity declaration (refused before any tree) |
| MEMO_WRONG_ROOT | parse | the root is not Message in the MeMo namespace |
| MEMO_UNSUPPORTED_VERSION | parse, validate | memoVersion is not 1.1 or 1.2 |
| MEMO_MISSING_ELEMENT | parse | a required element (or @memoVersion) is absent |
| MEMO_UNKNOWN_ELEMENT | parse | an element MeMo has not got at that place |
| MEMO_TOO_MANY | parse, validate | a one-only element repeated; a list over its maximum |
| MEMO_INVALID_VALUE | parse, validate | a bad enum, number, date or base64; a non-XML char |
| MEMO_TIME_NOT_UTC | parse | a timestamp not ending in Z (needs the raw text) |
| MEMO_ACTION_ON_TECHNICAL_DOCUMENT | parse | an Action in a TechnicalDocument |
| MEMO_NOT_IN_VERSION | validate | a 1.2 element in 1.1, or memoSchVersion in 1.2 |
| MEMO_TEXT_TOO_LONG | validate | a text over 256 characters |
| MEMO_COMMENT_TOO_LONG, MEMO_NOTIFICATION_TOO_LONG | validate | over 512 / 160 |
| MEMO_LANGUAGE_INVALID | validate | language is not a two-letter code |
| MEMO_UUID_NOT_V4 | validate | message, reply, forward or reservation UUID not version 4 |
| MEMO_INVALID_CPR, MEMO_INVALID_CVR | validate | not 10 / 8 digits (by idType; CPRdata, CVRdata) |
| MEMO_ENTRYPOINT_NOT_HTTPS | validate | an EntryPoint url that is not absolute https |
| MEMO_INVALID_FILENAME | validate | < > : " / \\ ? * or the bar, CR/LF, control or odd spaces |
| MEMO_NEMSMS_HAS_BODY, MEMO_NEMSMS_NOTIFICATION_MISSING | validate | NemSMS shape |
| MEMO_BODY_MISSING, MEMO_NO_FILE | validate | DIGITALPOST without body; document without File |
| MEMO_ACTION_TARGET | validate | an Action without exactly one of Reservation, EntryPoint |
| MEMO_TOO_MANY_ATTACHMENTS | validate | more than 10 AdditionalDocuments |
| MEMO_RESERVATION_TIMES | validate | a Reservation ending before it starts |
| MEMO_DELIVERY_DATE_PAST, MEMO_DELIVERY_DATE_TOO_FAR | validate | before today; > 366 days |
| MEMO_REPLY_BY_PAST | validate | replyByDateTime before `now` (whether or not reply is set) |
| MEMO_NOT_PLAIN | to_xml (Dp2Error) | a file still encrypted or in the blob store |
| MEMO_INVALID_VALUE | to_xml (Dp2Error) | a character XML cannot carry (e.g. NUL) |

`validate` holds whatever can be seen on the model, so an Envelope built in code meets
the same rules; `parse` holds only what the model cannot show. `parse_and_validate` runs
the business rules too when the structural problems still left a faithful model (a
non-UTC time, an unknown or repeated element), so one answer lists everything.

Why one module over 500 lines: reading and writing MeMo are mirror images over the
same slots, and are checked against each other line by line.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import Any, NoReturn
from xml.parsers import expat

from schemas.errors import Dp2Error
from schemas.memo_rules import (
    NOT_XML,
    SUPPORTED_VERSIONS,
    Slot,
    Violation,
    enum_values,
    join,
    slots,
    validate,
    violation,
)
from schemas.models import Envelope, File, InlineContent, TechnicalDocument

__all__ = [
    "NS",
    "SUPPORTED_VERSIONS",
    "MemoError",
    "Violation",
    "equivalent",
    "parse",
    "parse_and_validate",
    "to_xml",
    "validate",
]

NS = "https://DigitalPost.dk/MeMo-1"
_ROOT = f"{{{NS}}}Message"
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?", re.ASCII
)
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


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


def parse(xml: bytes) -> Envelope:
    """The Envelope in MeMo `xml`; MemoError lists every structural problem."""
    reader = _Reader()
    envelope = reader.envelope(_read_tree(xml))
    if envelope is None or reader.violations:
        raise MemoError(reader.violations)
    return envelope


def parse_and_validate(xml: bytes, *, now: datetime) -> Envelope:
    """The Envelope in `xml` if it breaks no MeMo rule at `now`; else MemoError with all."""
    reader = _Reader()
    envelope = reader.envelope(_read_tree(xml))
    found = list(reader.violations)
    if envelope is not None:
        found.extend(validate(envelope, now=now))
    if envelope is None or found:
        raise MemoError(found)
    return envelope


def to_xml(envelope: Envelope) -> bytes:
    """MeMo XML (UTF-8) of a plaintext envelope; Dp2Error MEMO_NOT_PLAIN if still encrypted."""
    root = ET.Element("memo:Message", {"xmlns:memo": NS})
    root.set("memoVersion", _checked_text(envelope.memoVersion, "Message/@memoVersion"))
    if envelope.memoSchVersion is not None:
        root.set(
            "memoSchVersion", _checked_text(envelope.memoSchVersion, "Message/@memoSchVersion")
        )
    _write(root, envelope, "")
    ET.indent(root)
    # ET writes CR as is and a parser would read it as LF; a character reference keeps it.
    text = ET.tostring(root, encoding="unicode").replace("\r", "&#13;")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{text}\n'.encode()


def equivalent(a: bytes, b: bytes) -> bool:
    """Whether two MeMo documents carry the same elements, in order, with the same values.

    Compared by local name, ignoring namespaces, prefixes and namespaced attributes;
    text is whitespace-trimmed, timestamps compare as instants, booleans as values
    (1 = true), base64 content decoded, and an element at MeMo's default (reply=false)
    counts as absent. Raises MemoError if either is not well-formed.
    """
    return _normalised(_read_tree(a)) == _normalised(_read_tree(b))


# --- reading ---------------------------------------------------------------------------


class _Refused(Exception):
    """Raised from the expat handler that sees a DOCTYPE or an entity declaration."""


def _refuse(*_: object) -> NoReturn:
    raise _Refused


def _qualified(name: str) -> str:
    uri, _, local = name.rpartition(" ")
    return f"{{{uri}}}{local}" if uri else local


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _read_tree(xml: bytes) -> ET.Element:
    """The element tree of `xml`, refusing DOCTYPEs before any entity could expand."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.StartElementHandler = lambda name, attributes: builder.start(
        _qualified(name), {_qualified(k): v for k, v in attributes.items()}
    )
    parser.EndElementHandler = lambda name: builder.end(_qualified(name))
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        parser.Parse(xml, True)
    except _Refused:
        message = f"the document declares a DOCTYPE or entity at line {parser.CurrentLineNumber}"
        raise MemoError([violation("MEMO_DOCTYPE_FORBIDDEN", "Message", message)]) from None
    except expat.ExpatError as exc:
        where = f"line {exc.lineno}, column {exc.offset + 1}"
        message = f"the XML is not well-formed: {expat.ErrorString(exc.code)} at {where}"
        raise MemoError([violation("MEMO_MALFORMED_XML", "Message", message)]) from exc
    return builder.close()


class _Reader:
    """One pass over a tree: builds the Envelope and collects every violation on the way.

    `fail` records a problem that leaves no faithful model (the Envelope is then None but
    the walk goes on to find more); `note` one after which the model is still faithful,
    so business rules can run on it too.
    """

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.complete = True

    def fail(self, code: str, path: str, message: str, hint: str | None = None) -> None:
        self.violations.append(violation(code, path, message, hint))
        self.complete = False

    def note(self, code: str, path: str, message: str, hint: str | None = None) -> None:
        self.violations.append(violation(code, path, message, hint))

    def envelope(self, root: ET.Element) -> Envelope | None:
        if root.tag != _ROOT:
            uri = root.tag[1:].partition("}")[0] if root.tag.startswith("{") else "no namespace"
            self.fail(
                "MEMO_WRONG_ROOT",
                "Message",
                f"the root element is {_local(root.tag)} in {uri}; MeMo's is Message in {NS}",
            )
            return None
        version = (root.get("memoVersion") or "").strip()
        if "memoVersion" not in root.attrib:
            self.fail("MEMO_MISSING_ELEMENT", "Message/@memoVersion", "Message has no memoVersion")
        elif version not in SUPPORTED_VERSIONS:
            shown = f" {version}" if re.fullmatch(r"[0-9.]{1,10}", version) else ""
            self.fail(
                "MEMO_UNSUPPORTED_VERSION",
                "Message/@memoVersion",
                f"memoVersion{shown} is not one DP2 supports (1.1, 1.2)",
            )
        sch_version = root.get("memoSchVersion")
        given = {
            "memoVersion": version,
            "memoSchVersion": sch_version.strip() if sch_version is not None else None,
        }
        result = self.record(Envelope, root, "", given)
        return result if self.complete and isinstance(result, Envelope) else None

    def record(
        self, cls: type[Any], elem: ET.Element, path: str, given: dict[str, Any] | None = None
    ) -> object | None:
        """The model `cls` read from `elem`, or None if a problem inside leaves none."""
        by_element = {slot.element: slot for slot in slots(cls)}
        values: dict[str, Any] = dict(given or {})
        seen: Counter[str] = Counter()
        failed = False
        if (elem.text or "").strip() or any((c.tail or "").strip() for c in elem):
            self.note(
                "MEMO_INVALID_VALUE",
                path or "Message",
                "text where only child elements belong",
                "Put text only inside simple elements such as label.",
            )
        for child in elem:
            local = _local(child.tag)
            seen[local] += 1
            slot = by_element.get(local)
            repeated = seen[local] if seen[local] > 1 else None
            if slot is None:
                self._unexpected(cls, local, path, seen[local])
                continue
            if not slot.many and repeated:
                self.note(
                    "MEMO_TOO_MANY",
                    join(path, local, repeated),
                    f"{local} appears more than once; MeMo allows one",
                    f"Keep one {local} here.",
                )
                continue
            where = join(path, local, seen[local] if slot.many else None)
            if slot.is_record:
                value = self.record(slot.kind, child, where)
            else:
                value = self.scalar(slot, child, where)
            if value is None:
                failed = True
            elif slot.many:
                values.setdefault(slot.field, []).append(value)
            else:
                values[slot.field] = value
        for slot in slots(cls):
            if slot.required and slot.element not in seen:
                parent = path.rpartition("/")[2] or "Message"
                self.fail(
                    "MEMO_MISSING_ELEMENT",
                    join(path, slot.element),
                    f"{parent} has no {slot.element}",
                )
                failed = True
        return None if failed else cls(**values)

    def _unexpected(self, cls: type[Any], local: str, path: str, count: int) -> None:
        if cls is TechnicalDocument and local == "Action":
            self.note(
                "MEMO_ACTION_ON_TECHNICAL_DOCUMENT",
                join(path, local, count),
                "a TechnicalDocument has an Action",
            )
        else:
            where = join(path, local, count if count > 1 else None)
            parent = "Message" if cls is Envelope else cls.__name__
            self.note("MEMO_UNKNOWN_ELEMENT", where, f"{parent} has no element {local}")

    def scalar(self, slot: Slot, elem: ET.Element, where: str) -> object | None:
        """The value of simple element `elem`, or None after recording why it has none."""
        for child in elem:
            self.note(
                "MEMO_UNKNOWN_ELEMENT",
                join(where, _local(child.tag)),
                f"{slot.element} holds text, not elements",
            )
        text = elem.text or ""
        if slot.kind is str:
            return text
        try:
            if slot.kind is datetime:
                value, zone = _read_datetime(text.strip())
                if zone != "Z":
                    offset = f"the offset {zone}" if zone else "no time zone"
                    self.note("MEMO_TIME_NOT_UTC", where, f"{slot.element} has {offset}, not Z")
                return value
            return _read_value(slot.kind, text.strip())
        except (ValueError, OverflowError):
            what, hint = _describe(slot.kind)
            self.fail("MEMO_INVALID_VALUE", where, f"{slot.element} is not {what}", hint)
            return None


def _read_value(kind: type[Any], raw: str) -> object:
    if kind is bool:
        return _BOOLEANS[raw] if raw in _BOOLEANS else _invalid()
    if issubclass(kind, Enum):
        return kind(raw) if raw in enum_values(kind) else _invalid()
    if kind is date:
        return (
            date.fromisoformat(raw)
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw, re.ASCII)
            else _invalid()
        )
    if kind is int:
        return int(raw) if re.fullmatch(r"[+-]?\d+", raw, re.ASCII) else _invalid()
    if kind is bytes:
        return InlineContent(data=base64.b64decode("".join(raw.split()), validate=True))
    raise TypeError(f"no MeMo reader for {kind!r}")


def _invalid() -> NoReturn:
    raise ValueError


def _read_datetime(raw: str) -> tuple[datetime, str | None]:
    """An xs:dateTime as an aware UTC datetime, with its zone as written (None if none)."""
    match = _DATETIME.fullmatch(raw)
    if match is None:
        raise ValueError(raw)
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    value = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=UTC
    )
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        value -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    return value, zone


def _describe(kind: type[Any]) -> tuple[str, str]:
    """What a value of `kind` should be, and the hint that says how to write one."""
    if kind is datetime:
        return "a timestamp", "Write a UTC timestamp such as 2026-11-27T10:00:00Z."
    if kind is date:
        return "a date", "Write the date as YYYY-MM-DD, e.g. 2027-01-04."
    if kind is bool:
        return "a boolean", "Write true or false."
    if kind is int:
        return "a whole number", "Write a whole number in digits."
    if kind is bytes:
        return "valid base64", "Encode the file's bytes as standard base64 (RFC 4648)."
    allowed = ", ".join(enum_values(kind))
    return f"one of {allowed}", f"Write exactly one of {allowed} (upper case)."


# --- writing ---------------------------------------------------------------------------


def _write(parent: ET.Element, record: object, path: str) -> None:
    if isinstance(record, File) and (
        record.nonce is not None or not isinstance(record.content, InlineContent)
    ):
        raise Dp2Error(
            f"{path} is encrypted or in the blob store; only plaintext maps to MeMo",
            reason_code="MEMO_NOT_PLAIN",
            hint="Decrypt the envelope and inline its files before converting it to MeMo XML.",
        )
    for slot in slots(type(record)):
        value = getattr(record, slot.field)
        if value is None or (slot.default is not dataclasses.MISSING and value == slot.default):
            continue
        for index, item in enumerate(value if slot.many else [value], 1):
            where = join(path, slot.element, index if slot.many else None)
            child = ET.SubElement(parent, f"memo:{slot.element}")
            if slot.is_record:
                _write(child, item, where)
            else:
                child.text = _checked_text(_format(slot.kind, item), where)


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
    if kind is bytes:
        return base64.b64encode(value.data).decode("ascii")
    return str(value)


def _checked_text(text: str, where: str) -> str:
    bad = NOT_XML.search(text)
    if bad is not None:
        raise Dp2Error(
            f"{where} holds U+{ord(bad.group()):04X}, which XML cannot carry",
            reason_code="MEMO_INVALID_VALUE",
            hint="Remove control characters other than tab and line breaks from the text.",
        )
    return text


# --- comparing -------------------------------------------------------------------------


@functools.cache
def _leaf_kinds() -> tuple[dict[str, type[Any]], dict[str, Any]]:
    """Value type of every simple element by local name, and the ones with a MeMo default."""
    kinds: dict[str, type[Any]] = {}
    defaults: dict[str, Any] = {}
    todo, done = [Envelope], set()
    while todo:
        cls = todo.pop()
        done.add(cls)
        for slot in slots(cls):
            if slot.is_record:
                todo.extend([slot.kind] if slot.kind not in done else [])
                continue
            if kinds.setdefault(slot.element, slot.kind) is not slot.kind:
                raise TypeError(f"MeMo element {slot.element} has two value types")
            if slot.default not in (dataclasses.MISSING, None):
                defaults[slot.element] = slot.default
    return kinds, defaults


def _normalised(elem: ET.Element) -> tuple[Any, ...]:
    local = _local(elem.tag)
    attributes = sorted((k, v.strip()) for k, v in elem.attrib.items() if not k.startswith("{"))
    defaults = _leaf_kinds()[1]
    children = [
        c
        for c in elem
        if not (
            len(c) == 0
            and _local(c.tag) in defaults
            and _value(_local(c.tag), c.text) == defaults[_local(c.tag)]
        )
    ]
    if children:
        return (local, attributes, tuple(_normalised(c) for c in children))
    return (local, attributes, _value(local, elem.text))


def _value(local: str, text: str | None) -> object:
    raw = (text or "").strip()
    kind = _leaf_kinds()[0].get(local, str)
    try:
        if kind is datetime:
            return _read_datetime(raw)[0]
        if kind is bool:
            return _BOOLEANS.get(raw, raw)
        if kind is bytes:
            return base64.b64decode("".join(raw.split()), validate=True)
    except (ValueError, OverflowError):
        return raw
    return raw

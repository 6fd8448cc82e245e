"""MeMo XML <-> Envelope: samples round-trip, each rule has its coded violation, prefixes fit."""

import dataclasses
import re
import typing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from schemas import memo_structure
from schemas.errors import Dp2Error
from schemas.memo import NS, MemoError, equivalent, parse, parse_and_validate, to_xml, validate
from schemas.memo_rules import HINTS, Violation
from schemas.models import (
    BlobContent,
    Encryption,
    Envelope,
    File,
    InlineContent,
    MessageHeader,
    Signature,
)

SAMPLES = Path(__file__).parent.parent / "data" / "memo"
NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
SAMPLE_NAMES = sorted(p.name for p in SAMPLES.glob("*.xml"))
DP2_ONLY = {
    (Envelope, "encryption"),
    (Envelope, "sealedPersonalData"),
    (Envelope, "signature"),
    (MessageHeader, "labelIsSensitive"),
    (File, "nonce"),
}


def sample(name: str) -> str:
    return (SAMPLES / name).read_text(encoding="utf-8")


def codes(violations: list[Violation]) -> set[str]:
    return {v.code for v in violations}


# --- the samples ----------------------------------------------------------------------


def test_the_samples_are_the_ones_documented() -> None:
    """The sample folder holds the nine documented samples."""
    documented = {
        "attachments.xml",
        "entrypoint.xml",
        "forward.xml",
        "full_1_1.xml",
        "full_1_2.xml",
        "minimal.xml",
        "nemsms.xml",
        "reply.xml",
        "reservation.xml",
    }
    assert set(SAMPLE_NAMES) == documented


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_parses_validates_and_round_trips(name: str) -> None:
    """A sample is valid MeMo, and to_xml(parse(x)) is equivalent to x and parses the same."""
    xml = (SAMPLES / name).read_bytes()
    envelope = parse_and_validate(xml, now=NOW)
    assert validate(envelope, now=NOW) == []
    again = to_xml(envelope)
    assert equivalent(xml, again)
    assert parse(again) == envelope
    assert envelope.header.labelIsSensitive is True


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_output_prefixes_every_element_by_its_namespace_and_writes_zulu_times(name: str) -> None:
    """Each output element has its namespace's prefix (memo: for MeMo's own), times end in Z."""
    out = to_xml(parse((SAMPLES / name).read_bytes())).decode("utf-8")
    assert out.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<memo:Message ')
    declared = dict(re.findall(r'xmlns:(\w+)="([^"]*)"', out.splitlines()[1]))
    assert declared["memo"] == NS
    assert all(memo_structure.NAMESPACES[p] == uri for p, uri in declared.items())
    tags = re.findall(r"</?([^\s>/?!]+)", out)
    assert tags and all(tag.partition(":")[0] in declared for tag in tags)
    zulu = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z"
    times = re.findall(r"<memo:\w*DateTime>([^<]*)<", out)
    assert len(times) == out.count("DateTime>") // 2
    assert all(re.fullmatch(zulu, t) for t in times)
    assert "labelIsSensitive" not in out


def test_output_writes_the_vocabularies_in_their_own_namespaces() -> None:
    """CPRdata, KLEdata, FORMdata, GLN, SEnumber, Education, SORdata... keep grd, kle, form etc."""
    out = to_xml(parse((SAMPLES / "full_1_2.xml").read_bytes())).decode("utf-8")
    for tag in (
        "grd:CPRdata",
        "grd:cprNumber",
        "grd:CVRdata",
        "grd:ProductionUnit",
        "grd:SEnumber",
        "grd:EID",
        "grd:Address",
        "grd:AddressPoint",
        "grd:UnstructuredAddress",
        "grd:PropertyNumber",
        "gln:GlobalLocationNumber",
        "gln:globalLocationNumber",
        "kle:KLEdata",
        "form:FORMdata",
        "dmv:MotorVehicle",
        "udd:Education",
        "sor:SORdata",
        "memo:mainDocumentID",
        "memo:additionalDocumentID",
        "memo:technicalDocumentID",
    ):
        assert f"<{tag}>" in out, tag
    assert "documentID>" not in out.replace("DocumentID>", "")


def test_output_converts_times_to_utc_and_keeps_only_nonzero_microseconds() -> None:
    """Aware non-UTC datetimes are written as the same instant in Z, seconds-only when whole."""
    envelope = parse((SAMPLES / "full_1_1.xml").read_bytes())
    assert envelope.memoSchVersion == "1.1.0"
    out = to_xml(envelope).decode()
    assert "<memo:createdDateTime>2026-11-26T13:45:10.250000Z<" in out
    body = envelope.body
    assert body is not None
    cet = timezone(timedelta(hours=1))
    moved = dataclasses.replace(body, createdDateTime=datetime(2026, 11, 27, 11, 0, tzinfo=cet))
    out = to_xml(dataclasses.replace(envelope, body=moved)).decode()
    assert "<memo:createdDateTime>2026-11-27T10:00:00Z<" in out
    assert 'memoSchVersion="1.1.0"' in out


def _reachable_fields() -> set[tuple[str, str]]:
    """(class, field) of every MeMo field reachable from Envelope, walking the dataclasses."""
    found: set[tuple[str, str]] = set()
    todo: list[type[Any]] = [Envelope]
    while todo:
        cls = todo.pop()
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if (cls, f.name) in DP2_ONLY or (cls.__name__, f.name) in found:
                continue
            found.add((cls.__name__, f.name))
            if cls is File and f.name == "content":
                continue  # base64 in MeMo: a leaf, not a record
            for arg in [hints[f.name], *typing.get_args(hints[f.name])]:
                if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                    todo.append(arg)
    return found


def _used_fields(record: object, used: set[tuple[str, str]]) -> None:
    """Mark every field of `record` (recursively) whose value is not the field's default."""
    for f in dataclasses.fields(record):  # type: ignore[arg-type]  # a model instance
        value = getattr(record, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value != default:
            used.add((type(record).__name__, f.name))
        for item in value if isinstance(value, list) else [value]:
            if dataclasses.is_dataclass(item) and not isinstance(item, InlineContent):
                _used_fields(item, used)


def test_samples_use_every_memo_element() -> None:
    """Together the samples set every MeMo field of the model (DP2-only fields excepted)."""
    used: set[tuple[str, str]] = set()
    for name in SAMPLE_NAMES:
        _used_fields(parse((SAMPLES / name).read_bytes()), used)
    missing = _reachable_fields() - used
    assert not missing, f"no sample uses {sorted(missing)}"


# --- one broken variant per rule -------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    code: str
    stage: str  # "parse": parse() refuses it; "validate": parse() accepts, validate() reports
    name: str  # sample it is made from
    old: str | re.Pattern[str]
    new: str
    path: str
    also: tuple[tuple[str, str], ...] = ()  # further (old, new) edits, each once in the sample

    def xml(self) -> bytes:
        text = sample(self.name)
        for old, new in self.also:
            assert text.count(old) == 1, f"{old!r} is not once in {self.name}"
            text = text.replace(old, new)
        if isinstance(self.old, str):
            assert text.count(self.old) == 1, f"{self.old!r} is not once in {self.name}"
            return text.replace(self.old, self.new).encode()
        changed, count = self.old.subn(self.new, text, count=1)
        assert count == 1, f"{self.old.pattern!r} does not match {self.name}"
        return changed.encode()


ACTION = (
    "<memo:Action><memo:label>Læs mere</memo:label><memo:actionCode>INFORMATION"
    "</memo:actionCode><memo:EntryPoint><memo:url>https://aarhus.dk</memo:url></memo:EntryPoint>"
    "</memo:Action>"
)
ATTACHMENT = (
    "<memo:AdditionalDocument><memo:File><memo:encodingFormat>text/plain</memo:encodingFormat>"
    "<memo:filename>bilag.txt</memo:filename><memo:language>da</memo:language>"
    "<memo:content>QmlsYWc=</memo:content></memo:File></memo:AdditionalDocument>"
)
CONTACT_INFO = (
    "<memo:ContactInfo><memo:label>E-mail</memo:label><memo:value>bs@aarhus.dk</memo:value>"
    "</memo:ContactInfo></memo:ContactPoint>"
)
REPLY_DATA = (
    "<memo:AdditionalReplyData><memo:label>Ekstra</memo:label><memo:value>1</memo:value>"
    "</memo:AdditionalReplyData>"
)
CONTENT_DATA = (
    "<memo:AdditionalContentData><memo:contentDataName>n</memo:contentDataName>"
    "<memo:contentDataValue>v</memo:contentDataValue></memo:AdditionalContentData>"
)
NEMSMS_TEXT = re.compile(r"<memo:notification>[^<]*</memo:notification>")
SENDER_IDS = "<memo:senderID>29189846</memo:senderID>\n      <memo:idType>CVR</memo:idType>"
KLE_KEYS = "<kle:subjectKey>03.22.04</kle:subjectKey>\n        <kle:version>2.26</kle:version>"
BOOLEANS_1_1 = (
    "<memo:Sender>",
    "<memo:mandatory>false</memo:mandatory><memo:legalNotification>false"
    "</memo:legalNotification><memo:Sender>",
)
LONG_URL = "https://aarhus.dk/" + "sfo/" * 61

# fmt: off
VARIANTS = [
    # the XML itself
    Variant("MEMO_MALFORMED_XML", "parse", "minimal.xml", "flytning</memo:label>",
            "flytning</memo:labl>", "Message"),
    Variant("MEMO_DOCTYPE_FORBIDDEN", "parse", "minimal.xml", "?>\n",
            '?>\n<!DOCTYPE m [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>\n', "Message"),
    Variant("MEMO_DOCTYPE_FORBIDDEN", "parse", "minimal.xml", "?>\n",
            '?>\n<!DOCTYPE m SYSTEM "file:///etc/passwd">\n', "Message"),
    # the XSDs: root and version
    Variant("MEMO_WRONG_ROOT", "parse", "minimal.xml", f'xmlns:memo="{NS}"',
            'xmlns:memo="https://DigitalPost.dk/MeMo-2"', "Message"),
    Variant("MEMO_UNSUPPORTED_VERSION", "parse", "minimal.xml", 'memoVersion="1.2"',
            'memoVersion="1.3"', "Message/@memoVersion"),
    Variant("MEMO_NOT_IN_VERSION", "parse", "full_1_2.xml", 'memoVersion="1.2"',
            'memoVersion="1.1" memoSchVersion="1.1.0"', "MessageHeader/Sender/Representative"),
    Variant("MEMO_NOT_IN_VERSION", "parse", "forward.xml", 'memoVersion="1.2"',
            'memoVersion="1.1" memoSchVersion="1.1.0"',
            "MessageHeader/ForwardData/originalRepresentative", also=(BOOLEANS_1_1,)),
    Variant("MEMO_NOT_IN_VERSION", "parse", "full_1_1.xml", 'memoVersion="1.1"',
            'memoVersion="1.2"', "Message/@memoSchVersion"),
    # the XSDs: required elements and attributes
    Variant("MEMO_MISSING_ELEMENT", "parse", "minimal.xml",
            "<memo:senderID>29189846</memo:senderID>", "", "MessageHeader/Sender/senderID"),
    Variant("MEMO_MISSING_ELEMENT", "parse", "minimal.xml", ' memoVersion="1.2"', "",
            "Message/@memoVersion"),
    Variant("MEMO_MISSING_ELEMENT", "parse", "full_1_1.xml", ' memoSchVersion="1.1.0"', "",
            "Message/@memoSchVersion"),
    Variant("MEMO_MISSING_ELEMENT", "parse", "full_1_1.xml",
            "<mandatory>true</mandatory>", "", "MessageHeader/mandatory"),
    Variant("MEMO_MISSING_ELEMENT", "parse", "minimal.xml", "<memo:language>da</memo:language>",
            "", "MessageBody/MainDocument/File[1]/language"),
    Variant("MEMO_MISSING_ELEMENT", "parse", "reply.xml",
            "<memo:caseSystem>Acadre</memo:caseSystem>", "",
            "MessageHeader/ContentData/CaseID/caseSystem"),
    Variant("MEMO_MISSING_ELEMENT", "parse", "full_1_1.xml", "<kle:version>2.26</kle:version>",
            "", "MessageHeader/ContentData/KLEdata/version"),
    Variant("MEMO_MISSING_ELEMENT", "parse", "reservation.xml", re.compile(
            r"<memo:location>[^<]*</memo:location>"), "",
            "MessageBody/MainDocument/Action[1]/Reservation/location"),
    Variant("MEMO_NO_FILE", "parse", "attachments.xml",
            re.compile(r"(<memo:label>Klagevejledning</memo:label>)\s*<memo:File>.*?</memo:File>",
                       re.DOTALL), r"\1", "MessageBody/AdditionalDocument[1]/File"),
    # the XSDs: names, attributes, namespaces, order, counts
    Variant("MEMO_UNKNOWN_ELEMENT", "parse", "full_1_2.xml",
            "<memo:postType>MYNDIGHEDSPOST</memo:postType>",
            "<memo:postKind>MYNDIGHEDSPOST</memo:postKind>", "MessageHeader/postKind"),
    Variant("MEMO_UNKNOWN_ELEMENT", "parse", "attachments.xml", "additionalDocumentID>",
            "documentID>", "MessageBody/AdditionalDocument[2]/documentID",
            also=(("<memo:additionalDocumentID>", "<memo:documentID>"),)),
    Variant("MEMO_UNKNOWN_ATTRIBUTE", "parse", "minimal.xml", "<memo:File>", '<memo:File id="1">',
            "MessageBody/MainDocument/File[1]/@id"),
    Variant("MEMO_UNKNOWN_ATTRIBUTE", "parse", "minimal.xml", 'memoVersion="1.2"',
            'memoVersion="1.2" xml:lang="da"', "Message/@lang"),
    Variant("MEMO_WRONG_NAMESPACE", "parse", "full_1_2.xml", re.compile(
            r"<grd:CPRdata>(.*?)</grd:CPRdata>", re.DOTALL), r"<memo:CPRdata>\1</memo:CPRdata>",
            "MessageHeader/ContentData/CPRdata"),
    Variant("MEMO_WRONG_NAMESPACE", "parse", "full_1_2.xml", re.compile(
            r"<kle:KLEdata>(.*?)</kle:KLEdata>", re.DOTALL), r"<memo:KLEdata>\1</memo:KLEdata>",
            "MessageHeader/ContentData/KLEdata"),
    Variant("MEMO_WRONG_NAMESPACE", "parse", "full_1_2.xml",
            "<gln:globalLocationNumber>5798005770005</gln:globalLocationNumber>",
            "<memo:globalLocationNumber>5798005770005</memo:globalLocationNumber>",
            "MessageHeader/Sender/AttentionData/GlobalLocationNumber/globalLocationNumber"),
    Variant("MEMO_WRONG_NAMESPACE", "parse", "minimal.xml",
            "<memo:label>Kvittering for flytning</memo:label>",
            "<label>Kvittering for flytning</label>", "MessageHeader/label"),
    Variant("MEMO_WRONG_ORDER", "parse", "minimal.xml", SENDER_IDS,
            "<memo:idType>CVR</memo:idType><memo:senderID>29189846</memo:senderID>",
            "MessageHeader/Sender/senderID"),
    Variant("MEMO_WRONG_ORDER", "parse", "full_1_2.xml",
            "<memo:mandatory>true</memo:mandatory>\n"
            "    <memo:legalNotification>true</memo:legalNotification>",
            "<memo:legalNotification>true</memo:legalNotification>"
            "<memo:mandatory>true</memo:mandatory>", "MessageHeader/mandatory"),
    Variant("MEMO_WRONG_ORDER", "parse", "full_1_2.xml", KLE_KEYS,
            "<kle:version>2.26</kle:version><kle:subjectKey>03.22.04</kle:subjectKey>",
            "MessageHeader/ContentData/KLEdata/subjectKey"),
    Variant("MEMO_WRONG_ORDER", "parse", "reservation.xml", re.compile(
            r"(<memo:File>.*?</memo:File>)(\s*)(<memo:Action>.*?</memo:Action>)", re.DOTALL),
            r"\3\2\1", "MessageBody/MainDocument/File[1]"),
    Variant("MEMO_TOO_MANY", "parse", "attachments.xml", "</memo:MainDocument>",
            "</memo:MainDocument><memo:MainDocument><memo:File><memo:encodingFormat>text/plain"
            "</memo:encodingFormat><memo:filename>igen.txt</memo:filename><memo:language>da"
            "</memo:language><memo:content>SWdlbg==</memo:content></memo:File>"
            "</memo:MainDocument>", "MessageBody/MainDocument[2]"),
    Variant("MEMO_TOO_MANY", "parse", "minimal.xml", "<memo:label>Kvittering for flytning",
            "<memo:label>Kvittering</memo:label><memo:label>Kvittering for flytning",
            "MessageHeader/label[2]"),
    Variant("MEMO_TOO_MANY", "parse", "full_1_2.xml", "</memo:ContactPoint>", CONTACT_INFO,
            "MessageHeader/Sender/ContactPoint/ContactInfo[3]"),
    Variant("MEMO_TOO_MANY", "parse", "full_1_2.xml", "</memo:ReplyData>",
            REPLY_DATA * 3 + "</memo:ReplyData>",
            "MessageHeader/ReplyData[1]/AdditionalReplyData[5]"),
    Variant("MEMO_TOO_MANY", "parse", "full_1_2.xml", "</memo:ContentData>",
            CONTENT_DATA * 9 + "</memo:ContentData>",
            "MessageHeader/ContentData/AdditionalContentData[11]"),
    Variant("MEMO_ACTION_TARGET", "parse", "reservation.xml", "</memo:Reservation>",
            "</memo:Reservation><memo:EntryPoint><memo:url>https://aarhus.dk</memo:url>"
            "</memo:EntryPoint>", "MessageBody/MainDocument/Action[1]"),
    Variant("MEMO_ACTION_ON_TECHNICAL_DOCUMENT", "parse", "full_1_2.xml",
            "</memo:TechnicalDocument>", ACTION + "</memo:TechnicalDocument>",
            "MessageBody/TechnicalDocument[1]/Action[1]"),
    # the XSDs: simple types
    Variant("MEMO_INVALID_VALUE", "parse", "full_1_2.xml", "<memo:reply>true<",
            "<memo:reply>yes<", "MessageHeader/reply"),
    Variant("MEMO_INVALID_VALUE", "parse", "minimal.xml", ">DIGITALPOST<", ">Digital Post<",
            "MessageHeader/messageType"),
    Variant("MEMO_INVALID_VALUE", "parse", "entrypoint.xml", ">2027-11-26<", ">26-11-2027<",
            "MessageHeader/doNotDeliverUntilDate"),
    Variant("MEMO_INVALID_VALUE", "parse", "minimal.xml", ">2026-11-27T08:00:00Z<",
            ">27/11/2026 08:00<", "MessageBody/createdDateTime"),
    Variant("MEMO_INVALID_VALUE", "parse", "minimal.xml", re.compile(r"<memo:content>[^<]*<"),
            "<memo:content>ikke base64!<", "MessageBody/MainDocument/File[1]/content"),
    Variant("MEMO_INVALID_VALUE", "parse", "full_1_2.xml", ">5798005770005<", ">57980057700051<",
            "MessageHeader/Sender/AttentionData/GlobalLocationNumber/globalLocationNumber"),
    Variant("MEMO_INVALID_VALUE", "parse", "full_1_2.xml", re.compile(
            ">1003376284<"), ">P1003376284<",
            "MessageHeader/Sender/AttentionData/ProductionUnit/productionUnitNumber"),
    Variant("MEMO_INVALID_VALUE", "parse", "entrypoint.xml", "/sfo/tilmelding<",
            "/sfo/tilmelding%zz<", "MessageBody/MainDocument/Action[1]/EntryPoint/url"),
    Variant("MEMO_TIME_NOT_UTC", "parse", "minimal.xml", ">2026-11-27T08:00:00Z<",
            ">2026-11-27T09:00:00+01:00<", "MessageBody/createdDateTime"),
    Variant("MEMO_TIME_NOT_UTC", "parse", "minimal.xml", ">2026-11-27T08:00:00Z<",
            ">2026-11-27T08:00:00<", "MessageBody/createdDateTime"),
    Variant("MEMO_TEXT_TOO_LONG", "parse", "minimal.xml", ">Kvittering for flytning<",
            f">{'Kvittering ' * 24}<", "MessageHeader/label"),
    Variant("MEMO_TEXT_TOO_LONG", "parse", "full_1_2.xml", ">AB12345<", ">AB123456<",
            "MessageHeader/ContentData/MotorVehicle/licenseNumber"),
    Variant("MEMO_TEXT_TOO_LONG", "parse", "entrypoint.xml", re.compile(
            r"<memo:url>[^<]*<"), f"<memo:url>{LONG_URL}<",
            "MessageBody/MainDocument/Action[1]/EntryPoint/url"),
    Variant("MEMO_COMMENT_TOO_LONG", "parse", "forward.xml", "sendt videre.<",
            f"sendt videre.{' Tak.' * 80}<", "MessageHeader/ForwardData/comment"),
    Variant("MEMO_NOTIFICATION_TOO_LONG", "parse", "attachments.xml", "tilskud til briller.<",
            f"tilskud til briller.{' Læs det.' * 12}<", "MessageHeader/notification"),
    Variant("MEMO_LANGUAGE_INVALID", "parse", "attachments.xml", ">en<", ">eng<",
            "MessageBody/MainDocument/File[2]/language"),
    Variant("MEMO_UUID_NOT_V4", "parse", "minimal.xml", "096a47d4-8548-4eec",
            "096a47d4-8548-1eec", "MessageHeader/messageUUID"),
    Variant("MEMO_UUID_NOT_V4", "parse", "reservation.xml", "43d6597b-9b01-48ab-887d-",
            "43d6597b9b0148ab887d-",
            "MessageBody/MainDocument/Action[1]/Reservation/reservationUUID"),
    Variant("MEMO_UUID_NOT_V4", "parse", "full_1_2.xml", "<memo:replyUUID>75f5d216",
            "<memo:replyUUID>REPLY-75f5d216", "MessageHeader/ReplyData[1]/replyUUID"),
    # NgDP's business rules
    Variant("MEMO_INVALID_ID_TYPE", "parse", "minimal.xml", "<memo:idType>CPR<",
            "<memo:idType>CPR-nummer<", "MessageHeader/Recipient/idType"),
    Variant("MEMO_INVALID_ID_TYPE", "parse", "minimal.xml", "<memo:idType>CVR<",
            "<memo:idType>UNKNOWN<", "MessageHeader/Sender/idType"),
    Variant("MEMO_INVALID_ACTION_CODE", "parse", "entrypoint.xml", ">TILMELDING<", ">RING<",
            "MessageBody/MainDocument/Action[1]/actionCode"),
    Variant("MEMO_INVALID_CPR", "validate", "minimal.xml", "<memo:recipientID>0101011234<",
            "<memo:recipientID>101011234<", "MessageHeader/Recipient/recipientID"),
    Variant("MEMO_INVALID_CPR", "validate", "full_1_2.xml", "<grd:cprNumber>0101011234<",
            "<grd:cprNumber>010101-1234<", "MessageHeader/ContentData/CPRdata/cprNumber"),
    Variant("MEMO_INVALID_CVR", "validate", "minimal.xml", "<memo:senderID>29189846<",
            "<memo:senderID>2918984<", "MessageHeader/Sender/senderID"),
    Variant("MEMO_INVALID_CVR", "validate", "reply.xml",
            "<memo:recipientID>29189846</memo:recipientID>\n      <memo:idType>",
            "<memo:recipientID>DK29189846</memo:recipientID>\n      <memo:idType>",
            "MessageHeader/Recipient/recipientID"),
    Variant("MEMO_ENTRYPOINT_NOT_HTTPS", "validate", "entrypoint.xml", "<memo:url>https:",
            "<memo:url>http:", "MessageBody/MainDocument/Action[1]/EntryPoint/url"),
    Variant("MEMO_INVALID_FILENAME", "validate", "minimal.xml", "kvittering.txt",
            "kvittering?.txt", "MessageBody/MainDocument/File[1]/filename"),
    Variant("MEMO_INVALID_FILENAME", "validate", "minimal.xml", "kvittering.txt",
            "kvittering\u00a0.txt", "MessageBody/MainDocument/File[1]/filename"),
    Variant("MEMO_INVALID_FILENAME", "validate", "minimal.xml", "kvittering.txt",
            "kvittering&#10;.txt", "MessageBody/MainDocument/File[1]/filename"),
    Variant("MEMO_NEMSMS_HAS_BODY", "validate", "attachments.xml", ">DIGITALPOST<", ">NEMSMS<",
            "MessageBody"),
    Variant("MEMO_NEMSMS_NOTIFICATION_MISSING", "validate", "nemsms.xml", NEMSMS_TEXT, "",
            "MessageHeader/notification"),
    Variant("MEMO_BODY_MISSING", "validate", "nemsms.xml", ">NEMSMS<", ">DIGITALPOST<",
            "MessageBody"),
    Variant("MEMO_ACTION_TARGET", "validate", "entrypoint.xml",
            re.compile(r"<memo:EntryPoint>.*?</memo:EntryPoint>", re.DOTALL), "",
            "MessageBody/MainDocument/Action[1]"),
    Variant("MEMO_DELIVERY_DATE_PAST", "validate", "entrypoint.xml", ">2027-11-26<",
            ">2026-11-26<", "MessageHeader/doNotDeliverUntilDate"),
    Variant("MEMO_DELIVERY_DATE_TOO_FAR", "validate", "entrypoint.xml", ">2027-11-26<",
            ">2027-11-29<", "MessageHeader/doNotDeliverUntilDate"),
    Variant("MEMO_REPLY_BY_PAST", "validate", "full_1_2.xml", ">2030-01-15T11:00:00Z<",
            ">2026-11-27T11:59:59Z<", "MessageHeader/replyByDateTime"),
    Variant("MEMO_TOO_MANY_ATTACHMENTS", "validate", "attachments.xml", "</memo:MainDocument>",
            "</memo:MainDocument>" + ATTACHMENT * 8, "MessageBody/AdditionalDocument[11]"),
    Variant("MEMO_RESERVATION_TIMES", "validate", "reservation.xml", ">2027-01-12T08:15:00Z<",
            ">2027-01-12T07:15:00Z<", "MessageBody/MainDocument/Action[1]/Reservation/endDateTime"),
]
# fmt: on


def test_every_reason_code_has_a_broken_variant() -> None:
    """Each code DP2 declares for MeMo is exercised by at least one variant below."""
    assert {v.code for v in VARIANTS} == set(HINTS)


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=[f"{v.code}-{v.name}-{i}" for i, v in enumerate(VARIANTS)]
)
def test_broken_variant_reports_exactly_its_code(variant: Variant) -> None:
    """A sample broken in one way is refused with that one code, at that path, with a hint."""
    xml = variant.xml()
    with pytest.raises(MemoError) as caught:
        parse_and_validate(xml, now=NOW)
    violations = caught.value.violations
    assert codes(violations) == {variant.code}
    assert variant.path in {v.path for v in violations}
    assert caught.value.reason_code in {variant.code, "MEMO_INVALID"}
    for v in violations:
        assert v.hint and v.message
        assert not re.search(r"\d{9}", v.message), "a message may echo a CPR number"
    if variant.stage == "parse":
        with pytest.raises(MemoError) as at_parse:
            parse(xml)
        assert variant.code in codes(at_parse.value.violations)
    else:
        assert codes(validate(parse(xml), now=NOW)) == {variant.code}


def test_malformed_xml_names_line_and_column() -> None:
    """A well-formedness error says where it is."""
    with pytest.raises(MemoError) as caught:
        parse(VARIANTS[0].xml())
    assert caught.value.reason_code == "MEMO_MALFORMED_XML"
    assert re.search(r"line 6, column \d+", caught.value.message)


def test_wrong_root_names_the_namespace() -> None:
    """A root in another namespace is refused with a message naming both namespaces."""
    variant = next(v for v in VARIANTS if v.code == "MEMO_WRONG_ROOT")
    with pytest.raises(MemoError) as caught:
        parse(variant.xml())
    assert "https://DigitalPost.dk/MeMo-2" in caught.value.message
    assert NS in caught.value.message


def test_one_error_carries_the_violation_code_and_hint() -> None:
    """With one violation the MemoError's reason code and hint are the violation's."""
    variant = next(v for v in VARIANTS if v.code == "MEMO_INVALID_CVR")
    with pytest.raises(MemoError) as caught:
        parse_and_validate(variant.xml(), now=NOW)
    error = caught.value
    assert error.reason_code == "MEMO_INVALID_CVR"
    assert error.hint == HINTS["MEMO_INVALID_CVR"]
    assert error.violations[0].as_dict() == {
        "code": "MEMO_INVALID_CVR",
        "path": "MessageHeader/Sender/senderID",
        "message": "the CVR number must be 8 digits; it has 7 digits",
        "hint": "Write the CVR number as 8 digits, keeping leading zeros, e.g. 01234567.",
    }
    assert isinstance(error, Dp2Error) and not error.retriable


def test_three_problems_are_all_reported() -> None:
    """A parse-level, a header and a body problem come back together in one MemoError."""
    xml = (
        sample("full_1_2.xml")
        .replace("om boligstøtte.</memo:notification>", f"{'x' * 130}</memo:notification>")
        .replace(">Afgørelse om boligstøtte.pdf<", ">Afgørelse: boligstøtte.pdf<")
        .replace(">2026-11-27T09:15:00Z<", ">2026-11-27T10:15:00+01:00<")
        .encode()
    )
    with pytest.raises(MemoError) as caught:
        parse_and_validate(xml, now=NOW)
    assert codes(caught.value.violations) == {
        "MEMO_NOTIFICATION_TOO_LONG",
        "MEMO_INVALID_FILENAME",
        "MEMO_TIME_NOT_UTC",
    }
    assert caught.value.reason_code == "MEMO_INVALID"
    assert "3 problems" in caught.value.message


def test_three_structural_problems_are_all_reported() -> None:
    """An unknown element, a bad value and a missing element are found in the same pass."""
    xml = (
        sample("full_1_2.xml")
        .replace("<memo:postType>", "<memo:postTyp>")
        .replace("</memo:postType>", "</memo:postTyp>")
        .replace("<memo:mandatory>true<", "<memo:mandatory>ja<")
        .replace("<memo:label>Aarhus Kommune</memo:label>", "")
        .encode()
    )
    with pytest.raises(MemoError) as caught:
        parse(xml)
    assert {(v.code, v.path) for v in caught.value.violations} == {
        ("MEMO_UNKNOWN_ELEMENT", "MessageHeader/postTyp"),
        ("MEMO_INVALID_VALUE", "MessageHeader/mandatory"),
        ("MEMO_MISSING_ELEMENT", "MessageHeader/Sender/label"),
    }


def test_validate_checks_envelopes_built_in_code() -> None:
    """An unsupported memoVersion set in code is a violation, not only in XML."""
    envelope = parse((SAMPLES / "minimal.xml").read_bytes())
    assert codes(validate(dataclasses.replace(envelope, memoVersion="2.0"), now=NOW)) == {
        "MEMO_UNSUPPORTED_VERSION"
    }


# --- to_xml refuses what MeMo cannot carry ---------------------------------------------


def _with_file(envelope: Envelope, file: File) -> Envelope:
    body = envelope.body
    assert body is not None
    main = dataclasses.replace(body.mainDocument, file=[file])
    return dataclasses.replace(envelope, body=dataclasses.replace(body, mainDocument=main))


def test_to_xml_refuses_encrypted_or_blob_files() -> None:
    """Only plaintext inline files map to MeMo; others raise MEMO_NOT_PLAIN."""
    envelope = parse((SAMPLES / "minimal.xml").read_bytes())
    assert envelope.body is not None
    plain = envelope.body.mainDocument.file[0]
    blob = BlobContent(ref="sha256/ab", sha256=b"\x01" * 32, size=7)
    for file in (
        dataclasses.replace(plain, nonce=b"\x00" * 12),
        dataclasses.replace(plain, content=blob),
    ):
        with pytest.raises(Dp2Error) as caught:
            to_xml(_with_file(envelope, file))
        assert caught.value.reason_code == "MEMO_NOT_PLAIN"


def test_to_xml_leaves_out_dp2_only_fields() -> None:
    """Encryption, signature, sealed data and labelIsSensitive do not appear in MeMo."""
    envelope = parse((SAMPLES / "minimal.xml").read_bytes())
    sealed = dataclasses.replace(
        envelope,
        encryption=Encryption(
            contentAlgorithm="A256GCM", keyWrapAlgorithm="X", wrappedKey=b"k", recipientKeyId="r"
        ),
        sealedPersonalData=b"sealed",
        signature=Signature(algorithm="ES256", value=b"v", signerCertificate="c"),
        header=dataclasses.replace(envelope.header, labelIsSensitive=False),
    )
    assert to_xml(sealed) == to_xml(envelope)


def test_to_xml_refuses_characters_xml_cannot_carry() -> None:
    """A control character in a text is refused rather than written as broken XML."""
    envelope = parse((SAMPLES / "minimal.xml").read_bytes())
    header = dataclasses.replace(envelope.header, label="Kvittering\x00")
    with pytest.raises(Dp2Error) as caught:
        to_xml(dataclasses.replace(envelope, header=header))
    assert caught.value.reason_code == "MEMO_INVALID_VALUE"
    assert "MessageHeader/label" in caught.value.message


# --- equivalent can fail ---------------------------------------------------------------


def test_equivalent_ignores_prefixes_whitespace_and_notation() -> None:
    """Prefixes, trimmed whitespace, 1/true, offsets of one instant and base64 wrapping match."""
    original = sample("full_1_2.xml")
    content = re.search(r"<memo:content>([^<]*)<", original)
    assert content is not None
    wrapped = "\n".join(content[1][i : i + 40] for i in range(0, len(content[1]), 40))
    other = (
        original.replace("xmlns:memo=", "xmlns:m=")
        .replace("<memo:", "<m:")
        .replace("</memo:", "</m:")
        .replace("<m:reply>true<", "<m:reply> 1 <")
        .replace(">2026-11-27T09:15:00Z<", ">2026-11-27T10:15:00.000+01:00<")
        .replace(content[1], wrapped, 1)
    )
    assert equivalent(original.encode(), other.encode())


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (">Afgørelse om boligstøtte<", ">Afgørelse om boligsikring<"),
        ("<memo:messageCode>BOLIGSTOETTE-AFG</memo:messageCode>", ""),
        (
            "<memo:mandatory>true</memo:mandatory>\n"
            "    <memo:legalNotification>true</memo:legalNotification>",
            "<memo:legalNotification>true</memo:legalNotification>\n"
            "    <memo:mandatory>true</memo:mandatory>",
        ),
        (">2027-01-11T09:30:00Z<", ">2027-01-11T09:30:01Z<"),
    ],
    ids=["changed-value", "missing-element", "reordered", "other-instant"],
)
def test_equivalent_notices_differences(old: str, new: str) -> None:
    """A changed value, a missing element or two swapped elements are not equivalent."""
    original = sample("full_1_2.xml")
    assert old in original
    assert not equivalent(original.encode(), original.replace(old, new, 1).encode())


def test_validate_refuses_text_that_xml_cannot_carry() -> None:
    """An envelope built in code with a control character is refused before it is sent."""
    envelope = parse(sample("minimal.xml").encode())
    broken = dataclasses.replace(
        envelope, header=dataclasses.replace(envelope.header, label="Brev\x1bom flytning")
    )
    found = validate(broken, now=NOW)
    assert [(v.code, v.path) for v in found] == [("MEMO_INVALID_VALUE", "MessageHeader/label")]
    assert "U+001B" in found[0].message

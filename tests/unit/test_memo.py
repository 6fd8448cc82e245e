"""MeMo XML <-> Envelope: samples round-trip, each rule has its coded violation, output is memo:."""

import dataclasses
import re
import typing
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.errors import Dp2Error
from schemas.memo import NS, MemoError, equivalent, parse, parse_and_validate, to_xml
from schemas.memo_rules import HINTS, SUPPORTED_VERSIONS, Violation, validate
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
def test_output_prefixes_every_element_with_memo_and_writes_zulu_times(name: str) -> None:
    """Every element of the output is memo:-prefixed and every timestamp ends in Z."""
    out = to_xml(parse((SAMPLES / name).read_bytes())).decode("utf-8")
    assert out.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<memo:Message ')
    assert f'xmlns:memo="{NS}"' in out.splitlines()[1]
    tags = re.findall(r"</?([^\s>/?!]+)", out)
    assert tags and all(tag.startswith("memo:") for tag in tags)
    zulu = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z"
    times = re.findall(r"<memo:\w*DateTime>([^<]*)<", out)
    assert len(times) == out.count("DateTime>") // 2
    assert all(re.fullmatch(zulu, t) for t in times)
    assert "labelIsSensitive" not in out


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

    def xml(self) -> bytes:
        text = sample(self.name)
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
    "<memo:filename>bilag.txt</memo:filename><memo:content>QmlsYWc=</memo:content></memo:File>"
    "</memo:AdditionalDocument>"
)
CONTACT_INFO = (
    "<memo:ContactInfo><memo:label>E-mail</memo:label><memo:value>bs@aarhus.dk</memo:value>"
    "</memo:ContactInfo></memo:ContactPoint>"
)
NEMSMS_TEXT = re.compile(r"<memo:notification>[^<]*</memo:notification>")

# fmt: off
VARIANTS = [
    Variant("MEMO_MALFORMED_XML", "parse", "minimal.xml", "flytning</memo:label>",
            "flytning</memo:labl>", "Message"),
    Variant("MEMO_DOCTYPE_FORBIDDEN", "parse", "minimal.xml", "?>\n",
            '?>\n<!DOCTYPE m [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>\n', "Message"),
    Variant("MEMO_DOCTYPE_FORBIDDEN", "parse", "minimal.xml", "?>\n",
            '?>\n<!DOCTYPE m SYSTEM "file:///etc/passwd">\n', "Message"),
    Variant("MEMO_WRONG_ROOT", "parse", "minimal.xml", f'xmlns:memo="{NS}"',
            'xmlns:memo="https://DigitalPost.dk/MeMo-2"', "Message"),
    Variant("MEMO_UNSUPPORTED_VERSION", "parse", "minimal.xml", 'memoVersion="1.2"',
            'memoVersion="1.3"', "Message/@memoVersion"),
    Variant("MEMO_MISSING_ELEMENT", "parse", "minimal.xml",
            "<memo:senderID>29189846</memo:senderID>", "", "MessageHeader/Sender/senderID"),
    Variant("MEMO_MISSING_ELEMENT", "parse", "minimal.xml", ' memoVersion="1.2"', "",
            "Message/@memoVersion"),
    Variant("MEMO_UNKNOWN_ELEMENT", "parse", "full_1_2.xml",
            "<memo:postType>MYNDIGHEDSPOST</memo:postType>",
            "<memo:postKind>MYNDIGHEDSPOST</memo:postKind>", "MessageHeader/postKind"),
    Variant("MEMO_TOO_MANY", "parse", "attachments.xml", "</memo:MainDocument>",
            "</memo:MainDocument><memo:MainDocument><memo:File><memo:encodingFormat>text/plain"
            "</memo:encodingFormat><memo:filename>igen.txt</memo:filename><memo:content>SWdlbg=="
            "</memo:content></memo:File></memo:MainDocument>", "MessageBody/MainDocument[2]"),
    Variant("MEMO_TOO_MANY", "validate", "full_1_2.xml", "</memo:ContactPoint>", CONTACT_INFO,
            "MessageHeader/Sender/ContactPoint/ContactInfo[3]"),
    Variant("MEMO_INVALID_VALUE", "parse", "full_1_2.xml", "<memo:reply>true<",
            "<memo:reply>yes<", "MessageHeader/reply"),
    Variant("MEMO_INVALID_VALUE", "parse", "minimal.xml", "<memo:idType>CPR<",
            "<memo:idType>CPR-nummer<", "MessageHeader/Recipient/idType"),
    Variant("MEMO_INVALID_VALUE", "parse", "entrypoint.xml", ">2027-11-26<", ">26-11-2027<",
            "MessageHeader/doNotDeliverUntilDate"),
    Variant("MEMO_INVALID_VALUE", "parse", "minimal.xml", ">2026-11-27T08:00:00Z<",
            ">27/11/2026 08:00<", "MessageBody/createdDateTime"),
    Variant("MEMO_INVALID_VALUE", "parse", "minimal.xml", re.compile(r"<memo:content>[^<]*<"),
            "<memo:content>ikke base64!<", "MessageBody/MainDocument/File[1]/content"),
    Variant("MEMO_INVALID_VALUE", "parse", "minimal.xml", "<memo:idType>CVR<",
            "<memo:idType>UNKNOWN<", "MessageHeader/Sender/idType"),
    Variant("MEMO_TIME_NOT_UTC", "parse", "minimal.xml", ">2026-11-27T08:00:00Z<",
            ">2026-11-27T09:00:00+01:00<", "MessageBody/createdDateTime"),
    Variant("MEMO_TIME_NOT_UTC", "parse", "minimal.xml", ">2026-11-27T08:00:00Z<",
            ">2026-11-27T08:00:00<", "MessageBody/createdDateTime"),
    Variant("MEMO_ACTION_ON_TECHNICAL_DOCUMENT", "parse", "full_1_2.xml",
            "</memo:TechnicalDocument>", ACTION + "</memo:TechnicalDocument>",
            "MessageBody/TechnicalDocument[1]/Action[1]"),
    Variant("MEMO_NOT_IN_VERSION", "validate", "full_1_2.xml", 'memoVersion="1.2"',
            'memoVersion="1.1" memoSchVersion="1.1.0"', "MessageHeader/Sender/Representative"),
    Variant("MEMO_NOT_IN_VERSION", "validate", "forward.xml", 'memoVersion="1.2"',
            'memoVersion="1.1"', "MessageHeader/ForwardData/originalRepresentative"),
    Variant("MEMO_NOT_IN_VERSION", "validate", "full_1_1.xml", 'memoVersion="1.1"',
            'memoVersion="1.2"', "Message/@memoSchVersion"),
    Variant("MEMO_TEXT_TOO_LONG", "validate", "minimal.xml", ">Kvittering for flytning<",
            f">{'Kvittering ' * 24}<", "MessageHeader/label"),
    Variant("MEMO_COMMENT_TOO_LONG", "validate", "forward.xml", "sendt videre.<",
            f"sendt videre.{' Tak.' * 80}<", "MessageHeader/ForwardData/comment"),
    Variant("MEMO_NOTIFICATION_TOO_LONG", "validate", "attachments.xml", "tilskud til briller.<",
            f"tilskud til briller.{' Læs det.' * 12}<", "MessageHeader/notification"),
    Variant("MEMO_LANGUAGE_INVALID", "validate", "attachments.xml", ">en<", ">eng<",
            "MessageBody/MainDocument/File[2]/language"),
    Variant("MEMO_UUID_NOT_V4", "validate", "minimal.xml", "096a47d4-8548-4eec",
            "096a47d4-8548-1eec", "MessageHeader/messageUUID"),
    Variant("MEMO_UUID_NOT_V4", "validate", "reservation.xml", "43d6597b-9b01-48ab-887d-",
            "43d6597b9b0148ab887d-",
            "MessageBody/MainDocument/Action[1]/Reservation/reservationUUID"),
    Variant("MEMO_UUID_NOT_V4", "validate", "full_1_2.xml", "<memo:replyUUID>75f5d216",
            "<memo:replyUUID>REPLY-75f5d216", "MessageHeader/ReplyData[1]/replyUUID"),
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
    Variant("MEMO_NO_FILE", "validate", "attachments.xml",
            re.compile(r"(<memo:label>Klagevejledning</memo:label>)\s*<memo:File>.*?</memo:File>",
                       re.DOTALL), r"\1", "MessageBody/AdditionalDocument[1]/File"),
    Variant("MEMO_ACTION_TARGET", "validate", "reservation.xml", "</memo:Reservation>",
            "</memo:Reservation><memo:EntryPoint><memo:url>https://aarhus.dk</memo:url>"
            "</memo:EntryPoint>", "MessageBody/MainDocument/Action[1]"),
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


# --- property: any plaintext envelope survives the trip --------------------------------

_XML_CHAR = st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff")
_TEXT = st.text(st.one_of(_XML_CHAR, st.sampled_from("\t\n\r")), max_size=6)
_OVERRIDES: dict[tuple[type[Any], str], st.SearchStrategy[Any]] = {
    (Envelope, "memoVersion"): st.sampled_from(SUPPORTED_VERSIONS),
    (Envelope, "memoSchVersion"): st.sampled_from([None, "1.1.0"]),
    **{key: st.none() for key in DP2_ONLY - {(MessageHeader, "labelIsSensitive")}},
    (MessageHeader, "labelIsSensitive"): st.just(True),
    (File, "content"): st.builds(InlineContent, data=st.binary(max_size=12)),
}
_SCALARS: dict[Any, st.SearchStrategy[Any]] = {
    str: _TEXT,
    bool: st.booleans(),
    datetime: st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    date: st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 1, 1)),
}


@cache
def _strategy(hint: Any) -> st.SearchStrategy[Any]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        return st.lists(_strategy(args[0]), max_size=2)
    if args:  # X | None
        return st.one_of(st.none(), *(_strategy(a) for a in args if a is not type(None)))
    if isinstance(hint, type) and issubclass(hint, Enum):
        return st.sampled_from([m for m in hint if m.value != "UNKNOWN"])
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = typing.get_type_hints(hint)
        return st.builds(
            hint,
            **{
                f.name: _OVERRIDES[(hint, f.name)]
                if (hint, f.name) in _OVERRIDES
                else _strategy(hints[f.name])
                for f in dataclasses.fields(hint)
            },
        )
    return _SCALARS[hint]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_strategy(Envelope))
def test_any_plaintext_envelope_round_trips(envelope: Envelope) -> None:
    """parse(to_xml(e)) == e for every plaintext envelope of MeMo values."""
    assert parse(to_xml(envelope)) == envelope


def test_validate_refuses_text_that_xml_cannot_carry() -> None:
    """An envelope built in code with a control character is refused before it is sent."""
    envelope = parse(sample("minimal.xml").encode())
    broken = dataclasses.replace(
        envelope, header=dataclasses.replace(envelope.header, label="Brev\x1bom flytning")
    )
    found = validate(broken, now=NOW)
    assert [(v.code, v.path) for v in found] == [("MEMO_INVALID_VALUE", "MessageHeader/label")]
    assert "U+001B" in found[0].message

"""MeMo in and out matches the project's description of the official XSDs (schemas.memo_structure).

The description is checked against the models (every field an element, every element a
field) and against the facts MEMO.md states; DP2's output, for the samples and for
generated envelopes, is then held to it. The official XSD files are not read here.
"""

import dataclasses
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from schemas import memo_structure as xsd
from schemas.memo import MemoError, check, equivalent, parse, to_xml, validate
from schemas.memo_rules import HINTS, slots
from schemas.models import Envelope, File
from tests.strategies import memo_envelopes

SAMPLES = Path(__file__).parent.parent / "data" / "memo"
SAMPLE_NAMES = sorted(p.name for p in SAMPLES.glob("*.xml"))
NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
# Codes of the XSDs (found by memo_structure.check); the rest are NgDP's business rules.
XSD_CODES = {
    "MEMO_WRONG_ROOT",
    "MEMO_UNSUPPORTED_VERSION",
    "MEMO_MISSING_ELEMENT",
    "MEMO_NO_FILE",
    "MEMO_NOT_IN_VERSION",
    "MEMO_UNKNOWN_ELEMENT",
    "MEMO_UNKNOWN_ATTRIBUTE",
    "MEMO_WRONG_NAMESPACE",
    "MEMO_WRONG_ORDER",
    "MEMO_TOO_MANY",
    "MEMO_ACTION_ON_TECHNICAL_DOCUMENT",
    "MEMO_INVALID_VALUE",
    "MEMO_TIME_NOT_UTC",
    "MEMO_TEXT_TOO_LONG",
    "MEMO_COMMENT_TOO_LONG",
    "MEMO_NOTIFICATION_TOO_LONG",
    "MEMO_LANGUAGE_INVALID",
    "MEMO_UUID_NOT_V4",
}


def sample(name: str) -> str:
    return (SAMPLES / name).read_text(encoding="utf-8")


def _records(version: str) -> list[tuple[type[Any], str]]:
    """(model class, element tag) of every complex element reachable from Message."""
    found: list[tuple[type[Any], str]] = []
    todo: list[tuple[type[Any], str]] = [(Envelope, xsd.MESSAGE)]
    while todo:
        cls, tag = todo.pop()
        if (cls, tag) in found:
            continue
        found.append((cls, tag))
        by_element = {slot.element: slot for slot in slots(cls)}
        for place in xsd.children(version, tag) or ():
            for name in place.names:
                slot = by_element.get(xsd.local(name))
                if slot is not None and slot.is_record:
                    todo.append((slot.kind, name))
    return found


# --- the description against the models and MEMO.md ----------------------------------


@pytest.mark.parametrize("version", xsd.VERSIONS)
def test_every_element_of_the_description_is_a_model_field_and_back(version: str) -> None:
    """Each complex element's children are exactly its model class's fields, lists where
    maxOccurs > 1, and each class is named like its element."""
    for cls, tag in _records(version):
        assert (cls.__name__ if cls is not Envelope else "Message") == xsd.local(tag)
        places = {xsd.local(n): p for p in xsd.children(version, tag) or () for n in p.names}
        fields = {slot.element: slot for slot in slots(cls)}
        only_1_2 = {"Representative", "originalRepresentative"} if version == "1.1" else set()
        assert set(places) == set(fields) - only_1_2, cls.__name__
        for name, place in places.items():
            assert fields[name].many == place.many, f"{cls.__name__}.{name}"
            if xsd.children(version, place.names[0]) is None:
                assert not fields[name].is_record, f"{cls.__name__}.{name}"


def test_the_imported_vocabularies_keep_their_namespaces() -> None:
    """The elements MEMO.md names, and all their children, are in grd, kle, form, dmv, gln,
    udd or sor; everything else is in memo."""
    homes = {
        "grd": {
            "CPRdata",
            "CVRdata",
            "ProductionUnit",
            "SEnumber",
            "EID",
            "Address",
            "AddressPoint",
            "UnstructuredAddress",
            "PropertyNumber",
        },
        "kle": {"KLEdata"},
        "form": {"FORMdata"},
        "dmv": {"MotorVehicle"},
        "gln": {"GlobalLocationNumber"},
        "udd": {"Education"},
        "sor": {"SORdata"},
    }
    home_of = {name: prefix for prefix, names in homes.items() for name in names}
    for version in xsd.VERSIONS:
        for _, tag in _records(version):
            expected = home_of.get(xsd.local(tag), "memo")
            assert xsd.namespace(tag) == xsd.NAMESPACES[expected], tag
            if expected != "memo":
                for place in xsd.children(version, tag) or ():
                    assert all(xsd.namespace(n) == xsd.NAMESPACES[expected] for n in place.names)


def test_the_versions_differ_where_the_xsds_do() -> None:
    """1.2 adds Representative and originalRepresentative, drops memoSchVersion and makes
    mandatory and legalNotification optional; nothing else differs."""
    header = xsd.qualified("MessageHeader")
    for name, required_in_1_1 in (("mandatory", 1), ("legalNotification", 1)):
        tag = xsd.qualified(name)
        assert getattr(xsd.particle("1.1", header, tag), "min", None) == required_in_1_1
        assert getattr(xsd.particle("1.2", header, tag), "min", None) == 0
    for parent, name in (("Sender", "Representative"), ("ForwardData", "originalRepresentative")):
        assert xsd.particle("1.1", xsd.qualified(parent), xsd.qualified(name)) is None
        assert xsd.particle("1.2", xsd.qualified(parent), xsd.qualified(name)) is not None
    assert xsd.ROOT_ATTRIBUTES == {
        "1.1": {"memoVersion": True, "memoSchVersion": True},
        "1.2": {"memoVersion": True},
    }
    differing = {
        tag
        for tag in {*xsd._TABLES["1.1"], *xsd._TABLES["1.2"]}
        if xsd.children("1.1", tag) != xsd.children("1.2", tag)
    }
    assert {xsd.local(t) for t in differing} == {
        "MessageHeader",
        "Sender",
        "ForwardData",
        "Representative",
    }


def test_required_elements_match_memo_md() -> None:
    """File/language, CaseID/caseSystem and KLEdata/version are required; a MainDocument
    needs a File; ContactInfo, AdditionalContentData and AdditionalReplyData are capped."""
    cases = [
        ("File", "language", 1, 1),
        ("CaseID", "caseSystem", 1, 1),
        ("kle:KLEdata", "kle:version", 1, 1),
        ("MainDocument", "File", 1, None),
        ("TechnicalDocument", "File", 1, None),
        ("ContactPoint", "ContactInfo", 0, 2),
        ("ContentData", "AdditionalContentData", 0, 10),
        ("ReplyData", "AdditionalReplyData", 0, 4),
        ("MessageBody", "MainDocument", 1, 1),
    ]
    for parent, child, low, high in cases:
        prefix = parent.partition(":")[0] if ":" in parent else "memo"
        place = xsd.particle("1.2", xsd.qualified(parent), xsd.qualified(child, prefix))
        assert place is not None and (place.min, place.max) == (low, high), (parent, child)


# --- DP2's XML against the description -------------------------------------------------


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_conforms_to_the_description(name: str) -> None:
    """Every sample in tests/data/memo is valid MeMo by the project's description."""
    assert check((SAMPLES / name).read_bytes()) == []


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_output_conforms_and_round_trips(name: str) -> None:
    """to_xml of a parsed sample conforms, is equivalent to the sample and parses the same."""
    xml = (SAMPLES / name).read_bytes()
    out = to_xml(parse(xml))
    assert check(out) == []
    assert equivalent(xml, out)
    assert parse(out) == parse(xml)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(memo_envelopes())
def test_generated_envelopes_are_written_as_conforming_memo(envelope: Envelope) -> None:
    """For any envelope of MeMo values, to_xml conforms to the description and parses back."""
    out = to_xml(envelope)
    assert check(out) == []
    assert parse(out) == envelope


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(memo_envelopes())
def test_validate_finds_no_xsd_problem_in_conforming_envelopes(envelope: Envelope) -> None:
    """validate holds a model to the same description: a conforming one breaks business
    rules at most."""
    assert not {v.code for v in validate(envelope, now=NOW)} & XSD_CODES


def test_the_xsd_codes_are_declared() -> None:
    """Every code this file treats as the XSDs' has a hint in the rule book."""
    assert set(HINTS) >= XSD_CODES


# --- envelopes built in code that MeMo cannot carry --------------------------------------


def _first_file(envelope: Envelope, **changes: Any) -> Envelope:
    body = envelope.body
    assert body is not None
    file: File = dataclasses.replace(body.mainDocument.file[0], **changes)
    main = dataclasses.replace(body.mainDocument, file=[file])
    return dataclasses.replace(envelope, body=dataclasses.replace(body, mainDocument=main))


def test_a_file_without_language_is_refused_by_validate_and_to_xml() -> None:
    """The XSD requires File/language: validate reports it and to_xml will not write it."""
    envelope = _first_file(parse(sample("minimal.xml").encode()), language=None)
    path = "MessageBody/MainDocument/File[1]/language"
    assert [(v.code, v.path) for v in validate(envelope, now=NOW)] == [
        ("MEMO_MISSING_ELEMENT", path)
    ]
    with pytest.raises(MemoError) as caught:
        to_xml(envelope)
    assert caught.value.reason_code == "MEMO_MISSING_ELEMENT"
    assert path in caught.value.message


def test_a_1_1_envelope_with_1_2_elements_is_not_written() -> None:
    """Representative exists from MeMo 1.2, so a 1.1 envelope holding one is refused."""
    envelope = parse(sample("full_1_2.xml").encode())
    old = dataclasses.replace(envelope, memoVersion="1.1", memoSchVersion="1.1.0")
    with pytest.raises(MemoError) as caught:
        to_xml(old)
    assert [(v.code, v.path) for v in caught.value.violations] == [
        ("MEMO_NOT_IN_VERSION", "MessageHeader/Sender/Representative")
    ]


def test_a_1_1_envelope_needs_mandatory_legal_notification_and_sch_version() -> None:
    """MeMo 1.1 requires mandatory, legalNotification and memoSchVersion; 1.2 does not."""
    envelope = parse(sample("full_1_1.xml").encode())
    header = dataclasses.replace(envelope.header, mandatory=None, legalNotification=None)
    bare = dataclasses.replace(envelope, header=header, memoSchVersion=None)
    assert {(v.code, v.path) for v in validate(bare, now=NOW)} == {
        ("MEMO_MISSING_ELEMENT", "MessageHeader/mandatory"),
        ("MEMO_MISSING_ELEMENT", "MessageHeader/legalNotification"),
        ("MEMO_MISSING_ELEMENT", "Message/@memoSchVersion"),
    }
    assert check(to_xml(dataclasses.replace(bare, memoVersion="1.2"))) == []


# --- XSD-valid messages that DP2 must read -------------------------------------------------


def test_optional_elements_the_model_requires_read_as_empty_and_stay_absent() -> None:
    """An AttentionPerson without personID (the XSD allows it) reads as "" and is written
    without one."""
    xml = sample("full_1_2.xml").replace("<memo:personID>AAK-BS-4711</memo:personID>", "")
    envelope = parse(xml.encode())
    attention = envelope.header.sender.attentionData
    assert attention is not None and attention.attentionPerson is not None
    assert attention.attentionPerson.personID == ""
    out = to_xml(envelope)
    assert b"personID" not in out
    assert equivalent(xml.encode(), out)


def test_an_empty_boolean_has_the_xsd_default() -> None:
    """<mandatory/> is valid (default="false") and reads as False."""
    xml = sample("full_1_2.xml").replace(
        "<memo:mandatory>true</memo:mandatory>", "<memo:mandatory/>"
    )
    assert check(xml.encode()) == []
    assert parse(xml.encode()).header.mandatory is False


def test_lexical_variants_the_xsd_allows_are_read() -> None:
    """memoVersion 1.20, a date with a zone, padded booleans and xsi:schemaLocation are valid."""
    xml = (
        sample("entrypoint.xml")
        .replace('memoVersion="1.2"', 'memoVersion="1.20"')
        .replace(">2027-11-26<", ">2027-11-26Z<")
        .replace("<memo:reply>false<", "<memo:reply> 0 <")
        .replace(
            'xmlns:memo="https://DigitalPost.dk/MeMo-1"',
            'xmlns:memo="https://DigitalPost.dk/MeMo-1" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xsi:schemaLocation="https://DigitalPost.dk/MeMo-1 MeMo_core.xsd"',
        )
    )
    envelope = parse(xml.encode())
    assert envelope.memoVersion == "1.2"
    assert envelope.header.doNotDeliverUntilDate == date(2027, 11, 26)
    assert envelope.header.reply is False


def test_a_wrong_order_says_the_order() -> None:
    """The hint of MEMO_WRONG_ORDER lists the parent's children in the XSD's order."""
    xml = sample("minimal.xml").replace(
        "<memo:senderID>29189846</memo:senderID>\n      <memo:idType>CVR</memo:idType>",
        "<memo:idType>CVR</memo:idType><memo:senderID>29189846</memo:senderID>",
    )
    [found] = check(xml.encode())
    assert (found.code, found.path) == ("MEMO_WRONG_ORDER", "MessageHeader/Sender/senderID")
    assert "senderID, idType, idTypeLabel, label, AttentionData, ContactPoint" in found.hint


def test_a_wrong_namespace_says_which_one() -> None:
    """The hint of MEMO_WRONG_NAMESPACE names the namespace and shows the prefixed element."""
    xml = (
        sample("full_1_2.xml")
        .replace("<grd:CPRdata>", "<memo:CPRdata>")
        .replace("</grd:CPRdata>", "</memo:CPRdata>")
    )
    [found] = check(xml.encode())
    assert (found.code, found.path) == ("MEMO_WRONG_NAMESPACE", "MessageHeader/ContentData/CPRdata")
    assert xsd.NAMESPACES["grd"] in found.hint and "<grd:CPRdata>" in found.hint

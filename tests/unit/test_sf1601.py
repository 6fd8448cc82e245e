"""SF1601's shape, without a broker: reading kombi_request, the channel rules, the answer."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from connectors.esdh import sf1601
from connectors.esdh.sf1601 import KombiValgKode, Sf1601Error
from connectors.sdk import Document, build_message
from schemas import memo
from schemas.models import ContactRecord, ContactStatus, IdType, LifecycleState, MessageType

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def _memo(message_type: MessageType = MessageType.DIGITALPOST) -> bytes:
    message = build_message(
        sender_cvr="29189846",
        sender_label="Aarhus Kommune",
        recipient_id="0101901234",
        label="Afgørelse",
        notification="Husk tandlægen" if message_type is MessageType.NEMSMS else None,
        documents=[Document("brev.txt", "text/plain", b"Hej")],
        message_type=message_type,
    )
    return memo.to_xml(message).split(b"?>", 1)[1]


def _kombi(code: str, inner: bytes | None = None) -> bytes:
    body = _memo() if inner is None else inner
    return (
        b"<kombi_request><KombiValgKode>" + code.encode() + b"</KombiValgKode>" + body
    ) + b"</kombi_request>"


def _read(xml: bytes) -> ET.Element:
    """An answer DP2 itself wrote, read back."""
    return ET.fromstring(xml)  # noqa: S314 - our own output, not untrusted input


def _record(status: ContactStatus, id_type: IdType = IdType.CPR) -> ContactRecord:
    return ContactRecord(
        recipientRef="psn-test",
        idType=id_type,
        status=status,
        mailboxProvider="mitpost" if status is ContactStatus.REGISTERED else None,
        updatedAt=NOW,
    )


@pytest.mark.parametrize("choice", list(KombiValgKode))
def test_each_kombivalgkode_is_read_with_its_memo_message(choice: KombiValgKode) -> None:
    """Each of the four codes is read, and the MeMo message inside is the one sent."""
    inner = _memo()
    request = sf1601.parse_kombi(_kombi(choice.value, inner))
    assert request.choice is choice
    assert memo.parse(request.memo) == memo.parse(inner)


def test_the_code_is_read_whatever_its_case_and_spacing() -> None:
    """'automatisk  valg' in other case and spacing is Automatisk Valg."""
    assert sf1601.choice_of("  automatisk \n valg ") is KombiValgKode.AUTOMATISK_VALG


def test_a_namespace_declared_on_the_wrapper_reaches_the_message() -> None:
    """xmlns:memo on kombi_request (not on Message) still gives a readable MeMo message."""
    inner = _memo().replace(b' xmlns:memo="https://DigitalPost.dk/MeMo-1"', b"", 1)
    xml = (
        b'<kombi_request xmlns:memo="https://DigitalPost.dk/MeMo-1">'
        b"<KombiValgKode>Digital Post</KombiValgKode>" + inner + b"</kombi_request>"
    )
    request = sf1601.parse_kombi(xml)
    assert memo.parse(request.memo).header.label == "Afgørelse"


@pytest.mark.parametrize(
    ("xml", "code"),
    [
        (b"<kombi_request><KombiValgKode>", "SF1601_KOMBI_MALFORMED"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><kombi_request/>', "SF1601_KOMBI_MALFORMED"),
        (b"<request><KombiValgKode>NemSMS</KombiValgKode></request>", "SF1601_KOMBI_MALFORMED"),
        (b"<kombi_request>" + _memo() + b"</kombi_request>", "SF1601_KOMBI_CODE_INVALID"),
        (_kombi("Brevdue"), "SF1601_KOMBI_CODE_INVALID"),
        (_kombi("Digital Post", b""), "SF1601_MEMO_MISSING"),
        (_kombi("Digital Post", _memo() + _memo()), "SF1601_MEMO_MISSING"),
        (
            _kombi("Fysisk Post", b'<ForsendelseISamling xmlns="urn:oio:fjernprint:1.0.0"/>'),
            "SF1601_MEMO_MISSING",
        ),
    ],
)
def test_a_request_out_of_shape_is_refused_with_its_code(xml: bytes, code: str) -> None:
    """Broken XML, a DOCTYPE, another root, no or an unknown code, no or two messages,
    and the fjernprint form each get their reason code, 400, and a hint."""
    with pytest.raises(Sf1601Error) as caught:
        sf1601.parse_kombi(xml)
    assert caught.value.reason_code == code and caught.value.status == 400
    assert caught.value.hint


def test_nemsms_needs_a_nemsms_message_and_a_letter_a_letter() -> None:
    """NemSMS with DIGITALPOST, and Digital Post with NEMSMS, are 422 mismatches."""
    letter = memo.parse(_memo())
    text = memo.parse(_memo(MessageType.NEMSMS))
    for choice, message in ((KombiValgKode.NEMSMS, letter), (KombiValgKode.DIGITAL_POST, text)):
        with pytest.raises(Sf1601Error) as caught:
            sf1601.check_message_type(choice, message)
        assert caught.value.reason_code == "SF1601_MESSAGE_TYPE_MISMATCH"
        assert caught.value.status == 422
    sf1601.check_message_type(KombiValgKode.NEMSMS, text)
    for choice in (KombiValgKode.DIGITAL_POST, KombiValgKode.FYSISK_POST):
        sf1601.check_message_type(choice, letter)


def test_each_code_maps_to_its_route() -> None:
    """Digital Post and NemSMS need digital post, only Fysisk Post is sealed for paper."""
    routes = sf1601.ROUTES
    assert routes[KombiValgKode.DIGITAL_POST] == sf1601.Route(MessageType.DIGITALPOST, True, False)
    assert routes[KombiValgKode.NEMSMS] == sf1601.Route(MessageType.NEMSMS, True, False)
    assert routes[KombiValgKode.FYSISK_POST] == sf1601.Route(MessageType.DIGITALPOST, False, True)
    assert routes[KombiValgKode.AUTOMATISK_VALG] == sf1601.Route(
        MessageType.DIGITALPOST, False, False
    )


@pytest.mark.parametrize(
    ("choice", "id_type", "record", "code"),
    [
        (KombiValgKode.DIGITAL_POST, IdType.CPR, None, "SF1601_RECIPIENT_NOT_DIGITAL"),
        (
            KombiValgKode.DIGITAL_POST,
            IdType.CPR,
            _record(ContactStatus.EXEMPT),
            "SF1601_RECIPIENT_NOT_DIGITAL",
        ),
        (KombiValgKode.DIGITAL_POST, IdType.CPR, _record(ContactStatus.REGISTERED), None),
        (KombiValgKode.NEMSMS, IdType.CPR, _record(ContactStatus.REGISTERED), None),
        (
            KombiValgKode.NEMSMS,
            IdType.CPR,
            _record(ContactStatus.UNKNOWN),
            "SF1601_NEMSMS_UNAVAILABLE",
        ),
        (
            KombiValgKode.NEMSMS,
            IdType.CVR,
            _record(ContactStatus.REGISTERED, IdType.CVR),
            "SF1601_NEMSMS_UNAVAILABLE",
        ),
        (KombiValgKode.FYSISK_POST, IdType.CPR, _record(ContactStatus.REGISTERED), None),
        (KombiValgKode.AUTOMATISK_VALG, IdType.CPR, None, None),
    ],
)
def test_a_channel_that_cannot_reach_the_recipient_is_refused(
    choice: KombiValgKode, id_type: IdType, record: ContactRecord | None, code: str | None
) -> None:
    """Digital Post needs a registered recipient, NemSMS a registered person; paper and
    the automatic choice are never refused for the register's sake."""
    refused = sf1601.refusal(choice, id_type, record)
    assert (refused.reason_code if refused else None) == code
    if refused is not None:
        assert refused.status == 422 and "PostForespoerg" in refused.hint


def test_postforespoerg_says_registered_or_not_and_nemsms_only_for_persons() -> None:
    """digitalpost is true only when registered; nemsms only for a registered CPR."""
    registered = _record(ContactStatus.REGISTERED)
    assert sf1601.digital_post_available(registered)
    for record in (None, _record(ContactStatus.EXEMPT), _record(ContactStatus.UNKNOWN)):
        assert not sf1601.digital_post_available(record)
        assert not sf1601.nemsms_available(IdType.CPR, record)
    assert sf1601.nemsms_available(IdType.CPR, registered)
    assert not sf1601.nemsms_available(IdType.CVR, _record(ContactStatus.REGISTERED, IdType.CVR))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"cprNumber": "0101901234"}, (IdType.CPR, "0101901234")),
        ({"cvrNumber": "01234567"}, (IdType.CVR, "01234567")),
        ({}, None),
        ({"cprNumber": "0101901234", "cvrNumber": "29189846"}, None),
        ({"cprNumber": "010190-1234"}, None),
        ({"cprNumber": "٠١٠١٩٠١٢٣٤"}, None),
        ({"cvrNumber": "2918984"}, None),
    ],
)
def test_postforespoerg_takes_one_identifier_of_ascii_digits(
    query: dict[str, str], expected: tuple[IdType, str] | None
) -> None:
    """Exactly one of cprNumber (10 digits) and cvrNumber (8), in ASCII digits, else 400."""
    if expected is not None:
        assert sf1601.lookup_identifier(query) == expected
        return
    with pytest.raises(Sf1601Error) as caught:
        sf1601.lookup_identifier(query)
    assert caught.value.reason_code == "SF1601_BAD_IDENTIFIER" and caught.value.status == 400


@pytest.mark.parametrize("value", ["", "   ", "a\r\nX-Evil: 1", "x" * 129, "æøå", "-leading"])
def test_a_missing_or_unechoable_transaction_id_is_refused(value: str) -> None:
    """No X-TransaktionsId, or one that could not be echoed safely, is 400."""
    with pytest.raises(Sf1601Error) as caught:
        sf1601.transaction_id({"X-TransaktionsId": value} if value else {})
    assert caught.value.reason_code == "SF1601_TRANSACTION_ID_MISSING"


def test_a_uuid_transaction_id_is_taken() -> None:
    """A UUID, as SF1601 clients send, is the id the answer echoes."""
    value = "5b1c4a0e-8f2d-4c1e-9a3b-2d7e6f8a9b0c"
    assert sf1601.transaction_id({"X-TransaktionsId": f" {value} "}) == value


def test_business_receipts_name_ngdps_events_where_one_fits() -> None:
    """The eight NgDP event names come from their DP2 states; ROUTED has none."""
    assert {state: sf1601.ngdp_event(state) for state in sf1601.NGDP_EVENTS} == {
        LifecycleState.SUBMITTED: "MEMO_SEND_RECEIVED",
        LifecycleState.ACCEPTED: "MEMO_SEND_VALIDATED",
        LifecycleState.DELIVERED: "MEMO_AVAILABLE_TO_RECIPIENT",
        LifecycleState.READ: "MESSAGE_READ",
        LifecycleState.PRINTED: "PHYSICAL_LETTER_SENT",
        LifecycleState.NOTIFIED: "NOTIFICATION_SENT",
        LifecycleState.NOTIFICATION_FAILED: "NOTIFICATION_FAILED",
        LifecycleState.RECALLED: "DELAYED_MEMO_MESSAGE_RECALLED",
    }
    assert sf1601.ngdp_event(LifecycleState.ROUTED) is None


def test_the_answer_is_a_kombi_response_that_sf1601_clients_read() -> None:
    """Result true, the UUID as TransmissionID, AdvisTekst Received, the id echoed."""
    root = _read(sf1601.to_xml(sf1601.success_body("u-1", "t-1", NOW)))
    assert root.tag == "kombi_response"
    assert root.findtext("Result") == "true" and root.findtext("TransmissionID") == "u-1"
    context = root.find("HovedoplysningerSvarREST")
    assert context is not None and context.findtext("TransaktionsId") == "t-1"
    assert context.findtext("TransaktionsTid") == "2026-12-01T09:30:00Z"
    assert context.findtext("SvarReaktion/Advis/AdvisTekst") == sf1601.RECEIVED


def test_a_refusal_carries_the_reason_code_in_sf1601s_and_dp2s_words() -> None:
    """Result false, FejlId = reasonCode, and every violation, in XML as in JSON."""
    error = {
        "reasonCode": "MEMO_INVALID",
        "message": "2 problems",
        "hint": "Fix them.",
        "violations": [{"code": "MEMO_TEXT_TOO_LONG", "path": "x", "message": "m", "hint": "h"}],
    }
    body = sf1601.error_answer_body(error, None, NOW)
    assert body["Result"] is False and body["reasonCode"] == "MEMO_INVALID"
    root = _read(sf1601.to_xml(body))
    assert root.findtext("Result") == "false"
    assert root.findtext("HovedoplysningerSvarREST/SvarReaktion/Fejl/FejlId") == "MEMO_INVALID"
    assert root.find("HovedoplysningerSvarREST/TransaktionsId") is None, "none to echo"
    assert root.findtext("violations/violation/code") == "MEMO_TEXT_TOO_LONG"


def test_json_only_when_xml_is_not_accepted() -> None:
    """Accept: application/json gives JSON; XML, */* or both give SF1601's XML."""
    assert sf1601.wants_json("application/json")
    for accept in ("", "*/*", "application/xml", "application/json, application/xml"):
        assert not sf1601.wants_json(accept)


def test_a_resend_through_another_channel_is_another_message() -> None:
    """Automatisk Valg digests as POST /memo; every other code adds its own variant."""
    variants = {choice: sf1601.KombiRequest(choice, b"").digest_variant for choice in KombiValgKode}
    assert variants[KombiValgKode.AUTOMATISK_VALG] == b""
    assert len(set(variants.values())) == len(KombiValgKode)

"""Personal data in Kafka only where it is needed: sealed in the envelope, named (never
echoed) in reasons, and kept on disk in files only their owner may read."""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from hypothesis import HealthCheck, given, settings

from brokers.runtime import sqlite
from brokers.runtime.blobstore import FileBlobStore, MemoryBlobStore
from brokers.runtime.private import private_dir
from brokers.security import personal, sealing, signing
from brokers.security.pki import Identity, Pki
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from brokers.security.signing import SecurityError
from brokers.security.tokens import secret_key_file
from brokers.validator.rules import Rejection, check_limits
from connectors.mailbox import notification_facts
from schemas import codec
from schemas.models import (
    EID,
    AdditionalContentData,
    AdditionalReplyData,
    Address,
    AddressPoint,
    AttentionData,
    AttentionPerson,
    ContactInfo,
    ContactPoint,
    ContentData,
    ContentResponsible,
    CPRdata,
    CVRdata,
    EMail,
    Envelope,
    File,
    ForwardData,
    GeneratingSystem,
    GlobalLocationNumber,
    IdType,
    InlineContent,
    MainDocument,
    MessageBody,
    MessageHeader,
    MessageType,
    ProductionUnit,
    Recipient,
    ReplyData,
    Representative,
    Sender,
    SEnumber,
    SORdata,
    Telephone,
    UnstructuredAddress,
)
from tests.strategies import envelopes, memo_envelopes

PSEUDONYMS = Pseudonymizer(b"unit-test-pseudonym-key-32-bytes")
PROVIDER = x25519.X25519PrivateKey.generate()
NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)
AUTHORITY_CVR = "55133018"
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Every personal value the letter below carries, each distinctive enough that finding
#: it in the encoded bytes can only mean it travels in clear.
PERSONAL: set[str] = set()


def pii(value: str) -> str:
    """``value``, remembered as personal data that must not travel in clear."""
    PERSONAL.add(value)
    return value


def attention(n: int) -> AttentionData:
    """AttentionData with every element set, values unique to party ``n``."""
    return AttentionData(
        attentionPerson=AttentionPerson(
            personID=pii(f"{n}{n}0180{n}{n}{n}{n}"), label=pii(f"Anne Att{n}")
        ),
        productionUnit=ProductionUnit(
            productionUnitNumber=pii(f"10033{n}8493"), productionUnitName=pii(f"Afdeling {n}nord")
        ),
        globalLocationNumber=GlobalLocationNumber(
            globalLocationNumber=pii(f"57900001{n}3456"), location=pii(f"Lokation {n}x")
        ),
        email=EMail(
            emailAddress=pii(f"anne.{n}@privat.example"), relatedAgent=pii(f"Agent {n}mail")
        ),
        seNumber=SEnumber(seNumber=pii(f"SE{n}2345678"), companyName=pii(f"Firma {n}se")),
        telephone=Telephone(
            telephoneNumber=pii(f"+45 2{n}34 5678"), relatedAgent=pii(f"Agent {n}tlf")
        ),
        eid=EID(eID=pii(f"eid-anne-{n}"), label=pii(f"eid label {n}")),
        contentResponsible=ContentResponsible(
            contentResponsibleID=pii(f"CR-signe-{n}"), label=pii(f"Signe Sagsbeh{n}")
        ),
        generatingSystem=GeneratingSystem(
            generatingSystemID=pii(f"GEN-sys-{n}"), label=pii(f"Systemnavn {n}")
        ),
        sorData=SORdata(sorIdentifier=pii(f"SOR-{n}23456789"), entryName=pii(f"Enhed {n}sor")),
        address=address(n),
        unstructuredAddress=UnstructuredAddress(unstructured=pii(f"Skjultgade {n}, Aarhus")),
    )


def address(n: int) -> Address:
    """An Address with every element set, values unique to ``n``."""
    return Address(
        id=pii(f"addr-id-{n}"),
        addressLabel=pii(f"Hemmeligvej {n}"),
        houseNumber=pii(f"house-{n}7B"),
        door=pii(f"door-{n}tv"),
        floor=pii(f"floor-{n}nd"),
        co=pii(f"c/o Ole Olsen {n}"),
        zipCode=pii(f"zip-{n}8000"),
        city=pii(f"Aarhus By {n}"),
        country=pii(f"Danmark {n}"),
        addressPoint=AddressPoint(
            geographicEastingMeasure=pii(f"east-{n}56789"),
            geographicNorthingMeasure=pii(f"north-{n}6789"),
            geographicHeightMeasure=pii(f"height-{n}789"),
        ),
    )


def contact_point(n: int) -> ContactPoint:
    """A contact point whose e-mail, phone and CPR values are personal; labels are not."""
    return ContactPoint(
        contactPointID="kontakt-1",
        label="Borgerservice",
        contactInfo=[
            ContactInfo(label="E-mail", value=pii(f"karen.{n}@privat.example")),
            ContactInfo(label="CPR", value=pii(f"0{n}0{n}80{n}{n}{n}{n}")),
        ],
    )


def personal_letter(sender_cvr: bool = False) -> Envelope:
    """A plain letter carrying personal data in every field that can hold it."""
    if sender_cvr:
        sender = Sender(senderID=AUTHORITY_CVR, idType=IdType.CVR, label="Aarhus Kommune")
    else:
        sender = Sender(senderID=pii("1203801234"), idType=IdType.CPR, label=pii("Karen Borger"))
    sender = dataclasses.replace(
        sender,
        attentionData=attention(1),
        contactPoint=contact_point(1),
        representative=Representative(
            representativeID=pii("1304801234"), idType=IdType.CPR, label=pii("Verner Værge")
        ),
    )
    header = MessageHeader(
        messageType=MessageType.DIGITALPOST,
        messageUUID="7d3e4c2a-1b0f-4e8d-9c7b-6a5f4e3d2c1b",
        label="Afgørelse om boligstøtte",
        notification="Du har fået post",
        sender=sender,
        recipient=Recipient(
            recipientID=pii("1405801234"),
            idType=IdType.CPR,
            label=pii("Mette Modtager"),
            attentionData=attention(2),
            contactPoint=contact_point(2),
        ),
        contentData=ContentData(
            cprData=CPRdata(cprNumber=pii("1506801234"), name=pii("Sofie Sagspart")),
            cvrData=CVRdata(cvrNumber=AUTHORITY_CVR, companyName="Aarhus Kommune"),
            address=address(3),
            unstructuredAddress=UnstructuredAddress(unstructured=pii("Lønligvej 9, 8000 Aarhus")),
            additionalContentData=[
                AdditionalContentData(
                    contentDataName="Barnets CPR", contentDataValue=pii("1607801234")
                )
            ],
        ),
        forwardData=ForwardData(
            messageUUID="0f3e4c2a-1b0f-4e8d-9c7b-6a5f4e3d2c1b",
            originalMessageDateTime=NOW,
            originalSender=pii("1708801234"),
            originalRepresentative=pii("1809801234"),
            originalContentResponsible=pii("Sagsbehandler Signe"),
            comment=pii("Videresendt af Bo Bramsen"),
        ),
        replyData=[
            ReplyData(
                messageUUID="1f3e4c2a-1b0f-4e8d-9c7b-6a5f4e3d2c1b",
                senderID=pii("1910801234"),
                recipientID=AUTHORITY_CVR,
                comment=pii("Svar fra Karen Borger"),
                additionalReplyData=[AdditionalReplyData(label="tlf", value=pii("+45 8765 4321"))],
            )
        ],
    )
    body = MessageBody(
        createdDateTime=NOW,
        mainDocument=MainDocument(
            file=[
                File(
                    encodingFormat="text/plain",
                    filename="brev.txt",
                    content=InlineContent(data=b"Hej"),
                )
            ]
        ),
    )
    return Envelope(memoVersion="1.2", header=header, body=body)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    """A sender identity to sign the sealed letters with."""
    pki = Pki(tmp_path_factory.mktemp("pki"))
    pki.init(signing.ED25519)
    return pki.issue_sender(AUTHORITY_CVR, "aarhus", algorithm=signing.ED25519)


def seal(envelope: Envelope) -> Envelope:
    return sealing.seal_envelope(
        envelope, PROVIDER.public_key(), "k1", PSEUDONYMS, MemoryBlobStore()
    )


def open_(sealed: Envelope) -> Envelope:
    return sealing.open_envelope(sealed, PROVIDER, MemoryBlobStore(), pseudonymizer=PSEUDONYMS)


def at(record: Any, path: str) -> Any:
    """The value at a dotted path (``replyData.0.senderID``) of a record."""
    for step in path.split("."):
        record = record[int(step)] if step.isdigit() else getattr(record, step)
    return record


def put(record: Any, path: tuple[str | int, ...], value: str) -> Any:
    """``record`` (frozen) with the text at ``path`` replaced by ``value``."""
    if not path:
        return value
    step, rest = path[0], path[1:]
    if isinstance(step, int):
        return [put(item, rest, value) if i == step else item for i, item in enumerate(record)]
    return dataclasses.replace(record, **{step: put(getattr(record, step), rest, value)})


def plain(envelope: Envelope) -> Envelope:
    """``envelope`` made sealable: inline file bytes, no nonces, encryption or signature."""

    def inline(_: int, file: File) -> File:
        content = file.content
        data = content.data if isinstance(content, InlineContent) else content.ref.encode()
        return dataclasses.replace(file, content=InlineContent(data=data), nonce=None)

    return dataclasses.replace(
        envelope,
        body=sealing.map_files(envelope.body, inline),
        encryption=None,
        sealedPersonalData=None,
        signature=None,
    )


# --- sealed on the wire, restored exactly ----------------------------------------------
@pytest.mark.parametrize("sender_cvr", [False, True], ids=["citizen-sender", "authority-sender"])
def test_no_personal_value_is_in_the_encoded_envelope(sender_cvr: bool, signer: Identity) -> None:
    """Sealed, signed and encoded, the envelope holds none of its personal values in clear."""
    PERSONAL.clear()
    letter = personal_letter(sender_cvr)
    values = set(PERSONAL)
    assert all(value.encode() in codec.encode(letter) for value in values)  # findable at all
    signed = signing.sign_envelope(seal(letter), signer.private_key, signer.fingerprint)
    raw = codec.encode(signed)
    leaked = sorted(value for value in values if value.encode() in raw)
    assert not leaked, f"in clear: {leaked}"
    assert b"Aarhus Kommune" in raw and AUTHORITY_CVR.encode() in raw  # public, in clear


@pytest.mark.parametrize("sender_cvr", [False, True], ids=["citizen-sender", "authority-sender"])
def test_opening_restores_the_envelope_field_for_field(sender_cvr: bool, signer: Identity) -> None:
    """Decoded, verified and opened, the sealed letter equals the plain one in every field."""
    letter = personal_letter(sender_cvr)
    signed = signing.sign_envelope(seal(letter), signer.private_key, signer.fingerprint)
    received = codec.decode(codec.encode(signed), Envelope)
    signing.verify_envelope(received, signer.certificate)
    assert open_(received) == letter


def test_the_validator_checks_the_sealed_form_as_before() -> None:
    """A sealed letter full of personal data passes the validator's rules; nothing is in clear."""
    sealed = seal(personal_letter(sender_cvr=True))
    assert personal.in_clear(sealed.header) == []
    check_limits(sealed, NOW)


PLAIN = "<the plain value: public, it stays>"
CLEAR_HEADER: dict[str, str | None] = {
    # field: what the clear header holds there
    "sender.label": personal.SEALED,
    "sender.attentionData.email.emailAddress": personal.SEALED,
    "sender.attentionData.telephone.telephoneNumber": personal.SEALED,
    "sender.attentionData.attentionPerson.personID": personal.SEALED,
    "sender.attentionData.address.addressPoint.geographicEastingMeasure": personal.SEALED,
    "sender.contactPoint.contactInfo.0.value": personal.SEALED,
    "sender.contactPoint.contactInfo.0.label": PLAIN,
    "sender.contactPoint.contactPointID": PLAIN,
    "sender.representative.representativeID": PSEUDONYMS.ref("CPR", "1304801234"),
    "sender.representative.label": personal.SEALED,
    "recipient.recipientID": PSEUDONYMS.ref("CPR", "1405801234"),
    "recipient.label": personal.SEALED,
    "recipient.attentionData.unstructuredAddress.unstructured": personal.SEALED,
    "recipient.contactPoint.contactInfo.1.value": personal.SEALED,
    "contentData.cprData.cprNumber": PSEUDONYMS.ref("CPR", "1506801234"),
    "contentData.cprData.name": None,  # sealed whole, as before: the clear header has none
    "contentData.cvrData.cvrNumber": PLAIN,
    "contentData.address.city": personal.SEALED,
    "contentData.unstructuredAddress.unstructured": personal.SEALED,
    "contentData.additionalContentData.0.contentDataValue": personal.SEALED,
    "contentData.additionalContentData.0.contentDataName": PLAIN,
    "forwardData.originalSender": PSEUDONYMS.ref("CPR", "1708801234"),
    "forwardData.originalRepresentative": PSEUDONYMS.ref("CPR", "1809801234"),
    "forwardData.originalContentResponsible": personal.SEALED,
    "forwardData.comment": personal.SEALED,
    "replyData.0.senderID": PSEUDONYMS.ref("CPR", "1910801234"),
    "replyData.0.recipientID": PLAIN,
    "replyData.0.comment": personal.SEALED,
    "replyData.0.additionalReplyData.0.value": personal.SEALED,
    "replyData.0.additionalReplyData.0.label": PLAIN,
    "label": PLAIN,
    "notification": PLAIN,
}


@pytest.mark.parametrize(("path", "clear"), CLEAR_HEADER.items(), ids=list(CLEAR_HEADER))
def test_each_field_reads_as_its_pseudonym_or_sealed(path: str, clear: str | None) -> None:
    """Each personal field of the clear header holds a pseudonym or SEALED; public ones stay."""
    letter = personal_letter()
    expected = at(letter.header, path) if clear == PLAIN else clear
    assert at(seal(letter).header, path) == expected


@PROPERTY
@given(envelopes())
def test_any_envelope_round_trips_with_nothing_left_in_clear(envelope: Envelope) -> None:
    """Any envelope, sealed, has no personal field in clear and opens to the original."""
    original = plain(envelope)
    sealed = codec.decode(codec.encode(seal(original)), Envelope)
    assert personal.in_clear(sealed.header) == []
    assert open_(sealed) == original


@PROPERTY
@given(memo_envelopes())
def test_any_memo_message_round_trips(envelope: Envelope) -> None:
    """Every XSD-valid MeMo message comes back from sealing exactly as it was."""
    original = plain(envelope)
    assert open_(codec.decode(codec.encode(seal(original)), Envelope)) == original


@PROPERTY
@given(envelopes())
def test_whatever_the_structure_no_personal_value_is_encoded(envelope: Envelope) -> None:
    """With a unique marker in each personal field of any envelope, no marker is encoded."""
    original, markers = plain(envelope), []
    for n, field in enumerate(personal.fields(original.header)):
        markers.append(f"PII-{n:04d}-Q" if field.kind == personal.DETAIL else f"{n:010d}")
        header = put(original.header, field.path, markers[-1])
        original = dataclasses.replace(original, header=header)
    raw = codec.encode(seal(original))
    assert [m for m in markers if m.encode() in raw] == []
    assert open_(codec.decode(raw, Envelope)) == original


# --- tampering and checks on the sealed form -------------------------------------------
def _with(envelope: Envelope, path: str, value: str) -> Envelope:
    """``envelope`` with the header's text at the dotted ``path`` set to ``value``."""
    steps = tuple(int(s) if s.isdigit() else s for s in path.split("."))
    return dataclasses.replace(envelope, header=put(envelope.header, steps, value))


def test_a_detail_put_back_in_clear_is_refused_by_the_validator_without_echoing_it() -> None:
    """An e-mail address in clear is PERSONAL_DATA_IN_CLEAR; the reason names the field only."""
    sealed = _with(
        seal(personal_letter(True)), "recipient.attentionData.email.emailAddress", "x@y.dk"
    )
    with pytest.raises(Rejection) as caught:
        check_limits(sealed, NOW)
    assert caught.value.reason_code == "PERSONAL_DATA_IN_CLEAR"
    assert "recipient.attentionData.email.emailAddress" in caught.value.message
    assert "x@y.dk" not in f"{caught.value.message} {caught.value.hint}"


def test_a_cpr_put_back_in_clear_is_refused_by_the_validator_without_echoing_it() -> None:
    """A representative's CPR number in clear is refused, and the reason holds no digits of it."""
    sealed = _with(
        seal(personal_letter(True)), "sender.representative.representativeID", "0101801234"
    )
    with pytest.raises(Rejection) as caught:
        check_limits(sealed, NOW)
    assert caught.value.reason_code == "PERSONAL_DATA_IN_CLEAR"
    assert "0101801234" not in f"{caught.value.message} {caught.value.hint}"


def test_a_changed_clear_field_does_not_open() -> None:
    """A detail changed in clear fails to open; so does another person's pseudonym."""
    sealed = seal(personal_letter())
    cases = [
        ("recipient.label", "Mette Modtager", "DECRYPTION_FAILED"),
        ("replyData.0.senderID", PSEUDONYMS.ref("CPR", "0101801234"), "PSEUDONYM_MISMATCH"),
    ]
    for path, value, code in cases:
        with pytest.raises(SecurityError) as caught:
            open_(_with(sealed, path, value))
        assert caught.value.reason_code == code, path


def test_invalid_cvr_reason_does_not_echo_the_number() -> None:
    """A CPR number mislabelled as a CVR is refused without the number in the reason."""
    letter = seal(personal_letter(True))
    sender = dataclasses.replace(letter.header.sender, senderID="0101801234")
    with pytest.raises(Rejection) as caught:
        check_limits(
            dataclasses.replace(letter, header=dataclasses.replace(letter.header, sender=sender)),
            NOW,
        )
    assert caught.value.reason_code == "INVALID_CVR"
    assert "0101801234" not in caught.value.message


def test_a_citizen_senders_name_is_not_a_notification_fact() -> None:
    """DELIVERED's facts (on dp2.lifecycle) carry an authority's name, never a citizen's."""
    assert "senderLabel" not in notification_facts(personal_letter(), "mitpost")
    assert notification_facts(personal_letter(True), "mitpost")["senderLabel"] == "Aarhus Kommune"


# --- owner-only files ------------------------------------------------------------------
@pytest.fixture(params=[0o000, 0o277], ids=["umask-000", "umask-277"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask set to a permissive and to a too strict value, then restored."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_stores_are_created_owner_only(tmp_path: Path, umask: int) -> None:
    """A new SQLite store and its WAL files are 0600 in folders made 0700, whatever the umask."""
    folder = private_dir(tmp_path / "home" / "data")
    db = sqlite.connect(folder / "store.sqlite")
    try:
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
        files = [folder / name for name in ("store.sqlite", "store.sqlite-wal", "store.sqlite-shm")]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        db.close()
    assert (mode(tmp_path / "home"), mode(folder)) == (0o700, 0o700)


def test_key_files_are_created_owner_only(
    tmp_path: Path, umask: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pseudonym key and other secret key files are 0600, their new folder 0700."""
    monkeypatch.delenv("DP2_PSEUDONYM_KEY", raising=False)
    home = tmp_path / "new-home"
    pseudonym_key(home)
    secret_key_file(home / "keys" / "session.key")
    assert mode(home / "pseudonym.key") == mode(home / "keys" / "session.key") == 0o600
    assert mode(home) == mode(home / "keys") == 0o700


def test_blob_files_are_created_owner_only(tmp_path: Path, umask: int) -> None:
    """A stored blob is 0600 and the store's folders it made are 0700."""
    store = FileBlobStore(tmp_path / "blobs")
    path = store.path_of(store.put(b"ciphertext"))
    assert mode(path) == 0o600
    assert mode(path.parent) == mode(tmp_path / "blobs") == 0o700


def test_existing_folders_are_left_as_they_are(tmp_path: Path) -> None:
    """private_dir sets only what it creates: an operator's existing folder keeps its mode."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o750)  # noqa: S103 - an operator's looser folder is the point
    private_dir(shared / "data")
    assert (mode(shared), mode(shared / "data")) == (0o750, 0o700)

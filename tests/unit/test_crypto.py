"""brokers.security: signatures, pseudonyms, and sealing envelopes for a mailbox provider."""

import dataclasses
import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokers.runtime.blobstore import BlobMissingError, FileBlobStore
from brokers.runtime.kafka import SigningProducer, sign_round
from brokers.runtime.records import Output, lifecycle_output
from brokers.security import sealing, signing
from brokers.security.pki import EventSigner, Identity, Pki
from brokers.security.pseudonyms import Pseudonymizer
from brokers.security.signing import SecurityError
from schemas import codec
from schemas.models import (
    BlobContent,
    ContentData,
    CPRdata,
    Envelope,
    File,
    IdType,
    InlineContent,
    LifecycleEvent,
    LifecycleState,
    MainDocument,
    MessageBody,
    MessageHeader,
    MessageType,
    Recipient,
    Sender,
)
from tests.strategies import envelopes, model

CPR = "0707614285"
PSEUDONYMS = Pseudonymizer(b"unit-test-pseudonym-key-32-bytes")
PROVIDER = x25519.X25519PrivateKey.generate()
KEY_ID = "provider-key-1"
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- fixtures and builders -------------------------------------------------------------
@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    """One sender identity per signature algorithm (the RSA key is made once per module)."""
    pki = Pki(tmp_path_factory.mktemp("pki"))
    pki.init(signing.ED25519)
    return {
        algorithm: pki.issue_sender("12345678", f"sender-{i}", algorithm=algorithm)
        for i, algorithm in enumerate(signing.SIGNATURE_ALGORITHMS)
    }


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileBlobStore]:
    """A file blob store shared by the module's tests (blobs are content-addressed)."""
    yield FileBlobStore(tmp_path_factory.mktemp("blobs"))


def letter(*files: bytes, recipient: str = CPR, id_type: IdType = IdType.CPR) -> Envelope:
    """A plain letter from a CVR sender with one file per argument."""
    now = datetime(2025, 3, 1, 12, tzinfo=UTC)
    return Envelope(
        memoVersion="1.2",
        header=MessageHeader(
            messageType=MessageType.DIGITALPOST,
            messageUUID="7d3e4c2a-1b0f-4e8d-9c7b-6a5f4e3d2c1b",
            label="Afgørelse",
            notification="Du har fået post",
            sender=Sender(senderID="55133018", idType=IdType.CVR, label="Aarhus Kommune"),
            recipient=Recipient(recipientID=recipient, idType=id_type),
            contentData=ContentData(cprData=CPRdata(cprNumber=CPR, name="Jens Hansen")),
        ),
        body=MessageBody(
            createdDateTime=now,
            mainDocument=MainDocument(
                file=[
                    File(encodingFormat="pdf", filename=f"{i}.pdf", content=InlineContent(data=d))
                    for i, d in enumerate(files)
                ]
            ),
        ),
    )


def seal(envelope: Envelope, blobs: FileBlobStore, threshold: int = 512 * 1024) -> Envelope:
    return sealing.seal_envelope(
        envelope, PROVIDER.public_key(), KEY_ID, PSEUDONYMS, blobs, threshold
    )


def open_(sealed: Envelope, blobs: FileBlobStore) -> Envelope:
    return sealing.open_envelope(sealed, PROVIDER, blobs, pseudonymizer=PSEUDONYMS)


def plain(envelope: Envelope) -> Envelope:
    """`envelope` made sealable: inline file bytes, no nonces, encryption or signature."""

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


@st.composite
def plain_envelopes(draw: st.DrawFn, min_files: int = 0) -> Envelope:
    """Generated envelopes (any ids, maybe no body) made plain, with at least `min_files`."""
    envelope = plain(draw(envelopes()))
    if min_files:
        body = envelope.body or draw(model(MessageBody))
        extra = draw(st.lists(model(File), min_size=min_files, max_size=min_files + 1))
        main = dataclasses.replace(body.mainDocument, file=[*body.mainDocument.file, *extra])
        envelope = plain(
            dataclasses.replace(envelope, body=dataclasses.replace(body, mainDocument=main))
        )
    return envelope


@st.composite
def secret_envelopes(draw: st.DrawFn) -> Envelope:
    """Plain envelopes to a CPR recipient whose files hold 32 distinct high-entropy bytes."""
    envelope = draw(plain_envelopes(min_files=1))
    salt = draw(st.integers())

    def secret(index: int, file: File) -> File:
        data = hashlib.sha256(f"{salt}:{index}".encode()).digest()
        return dataclasses.replace(file, content=InlineContent(data=data))

    recipient = dataclasses.replace(envelope.header.recipient, recipientID=CPR, idType=IdType.CPR)
    header = dataclasses.replace(envelope.header, recipient=recipient)
    return dataclasses.replace(
        envelope, header=header, body=sealing.map_files(envelope.body, secret)
    )


def expect(code: str, error: pytest.ExceptionInfo[Exception]) -> None:
    assert getattr(error.value, "reason_code", None) == code, error.value


# --- signatures ------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", signing.SIGNATURE_ALGORITHMS)
def test_each_algorithm_signs_and_verifies(algorithm: str, signers: dict[str, Identity]) -> None:
    """An envelope signed with each supported algorithm verifies with its certificate."""
    signer = signers[algorithm]
    signed = signing.sign_envelope(letter(b"doc"), signer.private_key, signer.fingerprint)
    assert signed.signature is not None
    assert signed.signature.algorithm == algorithm
    assert signed.signature.signerCertificate == signer.fingerprint
    signing.verify_envelope(signed, signer.certificate)


@pytest.mark.parametrize("algorithm", signing.SIGNATURE_ALGORITHMS)
def test_changed_envelope_is_signature_invalid(
    algorithm: str, signers: dict[str, Identity]
) -> None:
    """Changing any field after signing makes verification fail with SIGNATURE_INVALID."""
    signer = signers[algorithm]
    signed = signing.sign_envelope(letter(b"doc"), signer.private_key, signer.fingerprint)
    changed = dataclasses.replace(
        signed, header=dataclasses.replace(signed.header, label="Changed")
    )
    with pytest.raises(SecurityError) as error:
        signing.verify_envelope(changed, signer.certificate)
    expect("SIGNATURE_INVALID", error)


def test_unsigned_envelope_is_signature_missing(signers: dict[str, Identity]) -> None:
    """An envelope without a signature fails with SIGNATURE_MISSING."""
    with pytest.raises(SecurityError) as error:
        signing.verify_envelope(letter(b"doc"), signers[signing.ED25519].certificate)
    expect("SIGNATURE_MISSING", error)


def test_other_certificate_is_certificate_mismatch(signers: dict[str, Identity]) -> None:
    """Verifying with a certificate other than the one the signature names is refused."""
    signer, other = signers[signing.ED25519], signers[signing.ECDSA_P256_SHA256]
    signed = signing.sign_envelope(letter(b"doc"), signer.private_key, signer.fingerprint)
    with pytest.raises(SecurityError) as error:
        signing.verify_envelope(signed, other.certificate)
    expect("CERTIFICATE_MISMATCH", error)


@pytest.mark.parametrize("claimed", signing.SIGNATURE_ALGORITHMS)
def test_algorithm_name_must_match_key_type(claimed: str, signers: dict[str, Identity]) -> None:
    """A signature whose algorithm name disagrees with the certificate's key is invalid."""
    actual = signing.ED25519 if claimed != signing.ED25519 else signing.RSA_PSS_SHA256
    signer = signers[actual]
    signed = signing.sign_envelope(letter(b"doc"), signer.private_key, signer.fingerprint)
    assert signed.signature is not None
    relabelled = dataclasses.replace(
        signed, signature=dataclasses.replace(signed.signature, algorithm=claimed)
    )
    with pytest.raises(SecurityError) as error:
        signing.verify_envelope(relabelled, signer.certificate)
    expect("SIGNATURE_INVALID", error)


def test_signing_input_is_the_codec_encoding_without_signature(
    signers: dict[str, Identity],
) -> None:
    """The signed bytes are codec.encode of the envelope with signature None."""
    signer = signers[signing.ED25519]
    unsigned = letter(b"doc")
    signed = signing.sign_envelope(unsigned, signer.private_key, signer.fingerprint)
    assert (
        signing.signing_input(signed) == signing.signing_input(unsigned) == codec.encode(unsigned)
    )


def test_batch_signatures_are_not_accepted_yet(signers: dict[str, Identity]) -> None:
    """A signature that claims a batch root is refused until batch verification exists."""
    signer = signers[signing.ED25519]
    signed = signing.sign_envelope(letter(b"doc"), signer.private_key, signer.fingerprint)
    assert signed.signature is not None
    batch = dataclasses.replace(
        signed, signature=dataclasses.replace(signed.signature, batchRoot=b"\x00" * 32)
    )
    with pytest.raises(SecurityError) as error:
        signing.verify_envelope(batch, signer.certificate)
    expect("SIGNATURE_INVALID", error)


def test_certificate_fingerprint_is_lowercase_sha256_of_der(signers: dict[str, Identity]) -> None:
    """The fingerprint is the lowercase hex SHA-256 of the DER certificate."""
    cert = signers[signing.ED25519].certificate
    expected = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    assert signing.certificate_fingerprint(cert) == expected


def test_sign_envelope_wants_a_fingerprint(signers: dict[str, Identity]) -> None:
    """Naming the signer by anything but a fingerprint is refused with BAD_FINGERPRINT."""
    with pytest.raises(SecurityError) as error:
        signing.sign_envelope(letter(), signers[signing.ED25519].private_key, "sender-0")
    expect("BAD_FINGERPRINT", error)


def test_unknown_algorithm_cannot_make_keys() -> None:
    """generate_signing_key refuses names outside SIGNATURE_ALGORITHMS."""
    with pytest.raises(SecurityError) as error:
        signing.generate_signing_key("DSA")
    expect("UNSUPPORTED_ALGORITHM", error)


def test_weak_or_other_curve_keys_cannot_sign() -> None:
    """P-384 and RSA below 2048 bits are not DP2 signing keys."""
    for key in (
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505 - the point
    ):
        with pytest.raises(SecurityError) as error:
            signing.sign_bytes(key, b"data")
        expect("UNSUPPORTED_KEY", error)


def test_verify_bytes_refuses_a_wrong_signature(signers: dict[str, Identity]) -> None:
    """verify_bytes, used for lifecycle events, rejects a signature over other bytes."""
    signer = signers[signing.ECDSA_P256_SHA256]
    signature = signing.sign_bytes(signer.private_key, b"one")
    signing.verify_bytes(signer.certificate.public_key(), signature, b"one")
    with pytest.raises(SecurityError) as error:
        signing.verify_bytes(signer.certificate.public_key(), signature, b"two")
    expect("SIGNATURE_INVALID", error)


def event(**attributes: str) -> LifecycleEvent:
    """A DELIVERED event with the given attributes."""
    return LifecycleEvent(
        eventId="e1",
        messageUUID="m1",
        state=LifecycleState.DELIVERED,
        actor="mailbox:mitpost",
        occurredAt=datetime(2025, 3, 1, tzinfo=UTC),
        sequence=1,
        attributes=attributes,
    )


@pytest.mark.parametrize("algorithm", signing.SIGNATURE_ALGORITHMS)
def test_signed_event_verifies_even_with_reordered_attributes(
    algorithm: str, signers: dict[str, Identity]
) -> None:
    """sign_event/verify_event round-trip, also after the attribute map is re-ordered."""
    signer = signers[algorithm]
    signed = signing.sign_event(event(b="2", a="1"), signer.private_key, signer.fingerprint)
    signing.verify_event(signed, signer.certificate)
    reordered = dataclasses.replace(signed, attributes=dict(reversed(signed.attributes.items())))
    signing.verify_event(codec.decode(codec.encode(reordered), LifecycleEvent), signer.certificate)


def test_changed_event_is_refused(signers: dict[str, Identity]) -> None:
    """Changing a signed event's state, or dropping or misnaming its signer, is refused."""
    signer, other = signers[signing.ED25519], signers[signing.ECDSA_P256_SHA256]
    signed = signing.sign_event(event(), signer.private_key, signer.fingerprint)
    failed = dataclasses.replace(signed, state=LifecycleState.FAILED)
    cases = [
        (failed, signer, "SIGNATURE_INVALID"),
        (event(), signer, "SIGNATURE_MISSING"),
        (signed, other, "CERTIFICATE_MISMATCH"),
    ]
    for candidate, identity, code in cases:
        with pytest.raises(SecurityError) as error:
            signing.verify_event(candidate, identity.certificate)
        expect(code, error)


def batch(n: int) -> list[LifecycleEvent]:
    return [
        dataclasses.replace(event(n=str(i)), eventId=f"e{i}", messageUUID=f"m{i}") for i in range(n)
    ]


@pytest.mark.parametrize("algorithm", signing.SIGNATURE_ALGORITHMS)
@pytest.mark.parametrize("size", [2, 3, 7, 64, 300])
def test_events_signed_as_a_batch_each_verify_alone_and_offline(
    algorithm: str, size: int, signers: dict[str, Identity]
) -> None:
    """sign_events: one signature per batch of at most MAX_BATCH events; every event,
    re-encoded and read back on its own, verifies with the certificate alone (a receipt
    carries one event, never its batch)."""
    signer = signers[algorithm]
    signed = signing.sign_events(batch(size), signer.private_key, signer.fingerprint)
    assert [e.eventId for e in signed] == [f"e{i}" for i in range(size)]
    signatures = {e.attributes["signature"] for e in signed}
    assert len(signatures) == -(-size // signing.MAX_BATCH)  # one per MAX_BATCH
    for one in signed:
        assert one.attributes["signer"] == signer.fingerprint
        signing.verify_event(codec.decode(codec.encode(one), LifecycleEvent), signer.certificate)


def test_a_batch_of_one_is_a_plain_signature(signers: dict[str, Identity]) -> None:
    signer = signers[signing.ECDSA_P256_SHA256]
    [only] = signing.sign_events(batch(1), signer.private_key, signer.fingerprint)
    assert "batchProof" not in only.attributes
    signing.verify_event(only, signer.certificate)


def test_a_reader_checks_one_signature_per_batch(
    signers: dict[str, Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With VerifiedRoots, the events of one batch after the first cost their audit path
    only: one public-key verify for the batch."""
    signer = signers[signing.ECDSA_P256_SHA256]
    signed = signing.sign_events(batch(50), signer.private_key, signer.fingerprint)
    checks: list[bytes] = []
    real = signing.verify_bytes
    monkeypatch.setattr(
        signing,
        "verify_bytes",
        lambda key, sig, data, *a: (checks.append(data), real(key, sig, data, *a)),
    )
    roots = signing.VerifiedRoots()
    for one in signed:
        signing.verify_event(one, signer.certificate, roots=roots)
    assert len(checks) == 1 and checks[0].startswith(signing.BATCH_DOMAIN)


def test_a_changed_or_misplaced_event_of_a_batch_is_refused_even_after_its_root_was_checked(
    signers: dict[str, Identity],
) -> None:
    """The attacks on batch signatures, each SIGNATURE_INVALID, with the batch's root
    already verified (the cache must not let them through): an event changed after
    signing; one event's proof on another event of the batch; a forged batch reusing
    the real signature over another tree; a proof at another index or size; garbage."""
    signer = signers[signing.ECDSA_P256_SHA256]
    signed = signing.sign_events(batch(8), signer.private_key, signer.fingerprint)
    roots = signing.VerifiedRoots()
    signing.verify_event(signed[0], signer.certificate, roots=roots)  # the root is cached
    proof = signed[1].attributes["batchProof"]
    index, size, path = proof.split(" ")
    forged = signing.sign_events(
        [dataclasses.replace(e, state=LifecycleState.FAILED) for e in batch(8)],
        signer.private_key,
        signer.fingerprint,
    )
    cases = {
        "changed": dataclasses.replace(signed[1], state=LifecycleState.FAILED),
        "proof of another": dataclasses.replace(
            signed[2], attributes={**signed[2].attributes, "batchProof": proof}
        ),
        "reused signature": dataclasses.replace(
            forged[1],
            attributes={**forged[1].attributes, "signature": signed[1].attributes["signature"]},
        ),
        "other index": dataclasses.replace(
            signed[1], attributes={**signed[1].attributes, "batchProof": f"2 {size} {path}"}
        ),
        "other size": dataclasses.replace(
            signed[1], attributes={**signed[1].attributes, "batchProof": f"{index} 9 {path}"}
        ),
        "too big": dataclasses.replace(
            signed[1], attributes={**signed[1].attributes, "batchProof": f"{index} 999 {path}"}
        ),
        "not a proof": dataclasses.replace(
            signed[1], attributes={**signed[1].attributes, "batchProof": "1 8 %%%"}
        ),
        "proof on a plain signature": dataclasses.replace(
            signing.sign_event(event(), signer.private_key, signer.fingerprint),
            attributes={
                **signing.sign_event(event(), signer.private_key, signer.fingerprint).attributes,
                "batchProof": proof,
            },
        ),
    }
    for name, candidate in cases.items():
        with pytest.raises(SecurityError) as error:
            signing.verify_event(candidate, signer.certificate, roots=roots)
        assert getattr(error.value, "reason_code", None) == "SIGNATURE_INVALID", name


async def test_a_round_of_outputs_is_signed_per_signer_and_nothing_else_is_touched(
    signers: dict[str, Identity],
) -> None:
    """kafka.sign_round, what every worker does before it produces a round: the unsigned
    events under the producer's identity share one signature, a provider's own (sign_as)
    another, a record that is not an event and an event signed already stay as they were;
    every signed one verifies alone."""
    own, provider = signers[signing.ECDSA_P256_SHA256], signers[signing.ED25519]
    producer = SigningProducer(EventSigner(own), bootstrap_servers="127.0.0.1:9")
    mine = [lifecycle_output(f"m{i}", LifecycleState.ACCEPTED, "validator") for i in range(3)]
    theirs = [
        dataclasses.replace(
            lifecycle_output(f"m{i}", LifecycleState.DELIVERED, "mailbox"),
            sign_as=EventSigner(provider),
        )
        for i in range(2)
    ]
    already = lifecycle_output("m9", LifecycleState.ROUTED, "router")
    already = Output(already.topic, EventSigner(provider).sign_encoded(already.value), already.key)
    other = Output("dp2.accepted", b"an envelope", b"m1")
    outputs = [mine[0], theirs[0], other, mine[1], already, theirs[1], mine[2]]

    signed = sign_round(producer, outputs)
    await producer.stop()  # never started: it only signs here

    assert signed[2] is other and signed[4].value == already.value
    events = [codec.decode(o.value, LifecycleEvent) for o in signed if o is not other]
    by_signer: dict[str, set[str]] = {}
    for one in events:
        by_signer.setdefault(one.attributes["signer"], set()).add(one.attributes["signature"])
    assert by_signer[own.fingerprint] == {events[0].attributes["signature"]}
    assert len(by_signer[provider.fingerprint]) == 2  # its batch of two, and the one signed before
    for one, output in zip(events, [o for o in signed if o is not other], strict=True):
        identity = own if one.attributes["signer"] == own.fingerprint else provider
        signing.verify_event(one, identity.certificate)
        assert output.event is None and output.sign_as is None


# --- pseudonyms ------------------------------------------------------------------------
def test_pseudonym_format_and_stability() -> None:
    """ref is psn- and 26 lowercase base32 characters, the same for the same input."""
    ref = PSEUDONYMS.ref("CPR", CPR)
    assert re.fullmatch(r"psn-[a-z2-7]{26}", ref)
    assert ref == Pseudonymizer(b"unit-test-pseudonym-key-32-bytes").ref("CPR", CPR)


def test_pseudonym_is_keyed_and_typed() -> None:
    """Another key, identifier or id type gives another pseudonym."""
    ref = PSEUDONYMS.ref("CPR", CPR)
    assert Pseudonymizer(b"another-pseudonym-key-of-32-byte").ref("CPR", CPR) != ref
    assert PSEUDONYMS.ref("CVR", CPR) != ref
    assert PSEUDONYMS.ref("CPR", "0707614286") != ref


def test_pseudonym_matches_the_documented_construction() -> None:
    """ref is exactly base32(HMAC-SHA256(key, "type:id"))[:26].lower() after psn-."""
    import base64  # noqa: PLC0415 - only this test recomputes the construction
    import hmac  # noqa: PLC0415

    mac = hmac.new(b"unit-test-pseudonym-key-32-bytes", f"CPR:{CPR}".encode(), "sha256")
    expected = "psn-" + base64.b32encode(mac.digest()).decode()[:26].lower()
    assert PSEUDONYMS.ref("CPR", CPR) == expected


def test_short_pseudonym_key_is_refused() -> None:
    """A key shorter than 16 bytes is refused, and the key never shows in repr."""
    with pytest.raises(SecurityError) as error:
        Pseudonymizer(b"short")
    expect("WEAK_PSEUDONYM_KEY", error)
    assert "unit-test" not in repr(PSEUDONYMS)


# --- sealing: properties ---------------------------------------------------------------
@PROPERTY
@given(envelope=plain_envelopes(), threshold=st.sampled_from([0, 3, 512 * 1024]))
def test_open_undoes_seal(envelope: Envelope, threshold: int, blobs: FileBlobStore) -> None:
    """open_envelope(seal_envelope(e)) == e for any plain envelope, inline or in blobs."""
    sealed = seal(envelope, blobs, threshold)
    assert open_(sealed, blobs) == envelope
    assert open_(codec.decode(codec.encode(sealed), Envelope), blobs) == envelope


@PROPERTY
@given(envelope=secret_envelopes())
def test_sealed_bytes_hold_no_plaintext_or_cpr(envelope: Envelope, blobs: FileBlobStore) -> None:
    """The encoded sealed envelope contains no file plaintext and not the recipient's CPR."""
    sealed = codec.encode(seal(envelope, blobs))
    for file in sealing.files_of(envelope.body):
        assert isinstance(file.content, InlineContent)
        assert file.content.data not in sealed
    assert CPR.encode() not in sealed


@PROPERTY
@given(envelope=plain_envelopes(min_files=1), data=st.data())
def test_tampered_ciphertext_does_not_open(
    envelope: Envelope, data: st.DataObject, blobs: FileBlobStore
) -> None:
    """Flipping any bit of any file's ciphertext makes opening fail with DECRYPTION_FAILED."""
    sealed = seal(envelope, blobs)
    files = sealing.files_of(sealed.body)
    target = data.draw(st.integers(0, len(files) - 1))
    content = files[target].content
    assert isinstance(content, InlineContent)
    position = data.draw(st.integers(0, len(content.data) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(content.data)
    flipped[position] ^= 1 << bit

    def tamper(index: int, file: File) -> File:
        if index != target:
            return file
        return dataclasses.replace(file, content=InlineContent(data=bytes(flipped)))

    tampered = dataclasses.replace(sealed, body=sealing.map_files(sealed.body, tamper))
    with pytest.raises(SecurityError) as error:
        open_(tampered, blobs)
    expect("DECRYPTION_FAILED", error)


@PROPERTY
@given(envelope=plain_envelopes(min_files=2), data=st.data())
def test_swapped_files_do_not_open(
    envelope: Envelope, data: st.DataObject, blobs: FileBlobStore
) -> None:
    """Swapping two sealed files (content and nonce) makes opening fail."""
    sealed = seal(envelope, blobs)
    files = sealing.files_of(sealed.body)
    first = data.draw(st.integers(0, len(files) - 2))
    second = data.draw(st.integers(first + 1, len(files) - 1))
    order = {first: files[second], second: files[first]}
    swapped = dataclasses.replace(sealed, body=sealing.map_files(sealed.body, order.get))
    with pytest.raises(SecurityError) as error:
        open_(swapped, blobs)
    expect("DECRYPTION_FAILED", error)


@PROPERTY
@given(envelope=plain_envelopes(), other=st.text(max_size=30))
def test_changed_recipient_pseudonym_does_not_open(
    envelope: Envelope, other: str, blobs: FileBlobStore
) -> None:
    """Replacing the clear recipient id of a sealed envelope makes opening fail."""
    sealed = seal(envelope, blobs)
    if other == sealed.header.recipient.recipientID:
        other += "x"
    recipient = dataclasses.replace(sealed.header.recipient, recipientID=other)
    moved = dataclasses.replace(
        sealed, header=dataclasses.replace(sealed.header, recipient=recipient)
    )
    with pytest.raises(SecurityError) as error:
        sealing.open_envelope(moved, PROVIDER, blobs)
    expect("DECRYPTION_FAILED", error)


# --- sealing: the header, the wire fields, the claim check ------------------------------
def test_sealed_header_carries_pseudonyms_not_cpr(blobs: FileBlobStore) -> None:
    """A CPR recipient, a CPR sender and cprData are pseudonymised; texts stay in clear."""
    envelope = letter(b"doc")
    person = Sender(senderID="0101701234", idType=IdType.CPR, label="Borger")
    envelope = dataclasses.replace(
        envelope, header=dataclasses.replace(envelope.header, sender=person)
    )
    header = seal(envelope, blobs).header
    assert header.recipient.recipientID == PSEUDONYMS.ref("CPR", CPR)
    assert header.sender.senderID == PSEUDONYMS.ref("CPR", "0101701234")
    assert header.contentData is not None
    assert header.contentData.cprData == CPRdata(cprNumber=PSEUDONYMS.ref("CPR", CPR))
    assert (header.label, header.notification) == ("Afgørelse", "Du har fået post")


def test_cvr_parties_stay_in_clear(blobs: FileBlobStore) -> None:
    """CVR numbers are public: a CVR recipient and sender keep their ids in the header."""
    header = seal(letter(b"doc", recipient="12345678", id_type=IdType.CVR), blobs).header
    assert header.recipient.recipientID == "12345678"
    assert header.sender.senderID == "55133018"


def test_encryption_fields(blobs: FileBlobStore) -> None:
    """Encryption names the algorithms, the provider key id and a 32-byte ephemeral key."""
    sealed = seal(letter(b"doc"), blobs)
    encryption = sealed.encryption
    assert encryption is not None
    assert encryption.contentAlgorithm == "AES-256-GCM-CHUNKED-64K"
    assert encryption.keyWrapAlgorithm == "X25519-HKDF-SHA256-A256KW"
    assert encryption.recipientKeyId == KEY_ID
    assert encryption.ephemeralPublicKey is not None
    assert len(encryption.ephemeralPublicKey) == 32
    assert len(encryption.wrappedKey) == 40  # RFC 3394: 256-bit key + 64-bit check
    file = sealing.files_of(sealed.body)[0]
    assert file.nonce is not None
    assert len(file.nonce) == 12
    assert sealed.signature is None


def test_every_seal_uses_fresh_keys_and_nonces(blobs: FileBlobStore) -> None:
    """Sealing the same letter twice gives different wrapped keys and ciphertexts."""
    one, two = seal(letter(b"doc"), blobs), seal(letter(b"doc"), blobs)
    assert one.encryption is not None
    assert two.encryption is not None
    assert one.encryption.wrappedKey != two.encryption.wrappedKey
    assert sealing.files_of(one.body)[0] != sealing.files_of(two.body)[0]


def test_large_files_go_to_the_blob_store_encrypted(blobs: FileBlobStore) -> None:
    """A file above the threshold becomes BlobContent over ciphertext, and opens again."""
    document = b"%PDF-" + bytes(range(256)) * 8
    envelope = letter(b"small", document)
    sealed = seal(envelope, blobs, threshold=1024)
    small, large = sealing.files_of(sealed.body)
    assert isinstance(small.content, InlineContent)
    assert isinstance(large.content, BlobContent)
    stored = blobs.get(large.content.ref)
    assert document not in stored
    assert large.content.sha256 == hashlib.sha256(stored).digest()
    assert large.content.size == len(stored) == len(document) + 16
    assert open_(sealed, blobs) == envelope


def test_corrupt_blob_is_blob_corrupt(tmp_path: Path) -> None:
    """A blob whose bytes no longer match the envelope's SHA-256 fails with BLOB_CORRUPT."""
    blobs = FileBlobStore(tmp_path)
    sealed = seal(letter(b"x" * 100), blobs, threshold=10)
    content = sealing.files_of(sealed.body)[0].content
    assert isinstance(content, BlobContent)
    path = blobs.path_of(content.ref)
    damaged = bytearray(path.read_bytes())
    damaged[0] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(SecurityError) as error:
        open_(sealed, blobs)
    expect("BLOB_CORRUPT", error)


def test_missing_blob_is_blob_missing(tmp_path: Path) -> None:
    """Opening with a blob store that lacks the blob fails with BLOB_MISSING."""
    sealed = seal(letter(b"x" * 100), FileBlobStore(tmp_path / "sender"), threshold=10)
    with pytest.raises(BlobMissingError) as error:
        open_(sealed, FileBlobStore(tmp_path / "reader"))
    expect("BLOB_MISSING", error)


def test_another_provider_key_cannot_open(blobs: FileBlobStore) -> None:
    """Only the provider sealed for can open: another X25519 key gives DECRYPTION_FAILED."""
    sealed = seal(letter(b"doc"), blobs)
    with pytest.raises(SecurityError) as error:
        sealing.open_envelope(sealed, x25519.X25519PrivateKey.generate(), blobs)
    expect("DECRYPTION_FAILED", error)


@pytest.mark.parametrize("field", ["messageUUID", "sender"])
def test_changed_binding_does_not_open(field: str, blobs: FileBlobStore) -> None:
    """Changing the message UUID or the sender id of a sealed envelope makes opening fail."""
    sealed = seal(letter(b"doc"), blobs)
    header = sealed.header
    if field == "messageUUID":
        header = dataclasses.replace(header, messageUUID="00000000-0000-0000-0000-000000000000")
    else:
        sender = dataclasses.replace(header.sender, senderID="11111111")
        header = dataclasses.replace(header, sender=sender)
    with pytest.raises(SecurityError) as error:
        open_(dataclasses.replace(sealed, header=header), blobs)
    expect("DECRYPTION_FAILED", error)


def test_pseudonym_check_catches_another_deployment_key(blobs: FileBlobStore) -> None:
    """Opened with a pseudonymizer, ids must match their clear pseudonyms (PSEUDONYM_MISMATCH)."""
    sealed = seal(letter(b"doc"), blobs)
    other = Pseudonymizer(b"another-pseudonym-key-of-32-byte")
    with pytest.raises(SecurityError) as error:
        sealing.open_envelope(sealed, PROVIDER, blobs, pseudonymizer=other)
    expect("PSEUDONYM_MISMATCH", error)


def test_only_plain_envelopes_are_sealed(
    blobs: FileBlobStore, signers: dict[str, Identity]
) -> None:
    """Sealing a signed, sealed or blob-carrying envelope is refused with NOT_PLAIN."""
    signer = signers[signing.ED25519]
    signed = signing.sign_envelope(letter(b"doc"), signer.private_key, signer.fingerprint)
    sealed = seal(letter(b"doc"), blobs)
    for envelope in (signed, sealed, dataclasses.replace(sealed, encryption=None)):
        with pytest.raises(SecurityError) as error:
            seal(envelope, blobs)
        expect("NOT_PLAIN", error)


def test_seal_sign_verify_open(signers: dict[str, Identity], blobs: FileBlobStore) -> None:
    """The SDK's order works end to end: seal, sign, encode, decode, verify, open."""
    signer = signers[signing.RSA_PSS_SHA256]
    envelope = letter(b"doc one", b"doc two")
    signed = signing.sign_envelope(seal(envelope, blobs), signer.private_key, signer.fingerprint)
    received = codec.decode(codec.encode(signed), Envelope)
    signing.verify_envelope(received, signer.certificate)
    assert open_(received, blobs) == envelope


def test_fingerprint_helper_matches_cryptography(signers: dict[str, Identity]) -> None:
    """certificate_fingerprint agrees with cryptography's own SHA-256 fingerprint."""
    cert = signers[signing.ECDSA_P256_SHA256].certificate
    assert signing.certificate_fingerprint(cert) == cert.fingerprint(hashes.SHA256()).hex()

"""The cryptography of the envelope: signatures, pseudonyms, and sealing for a mailbox.

Why it exists: DP2 routes post through a shared backbone that must never see a
document or a CPR number in clear, yet must check who sent each message. This
module is that boundary, as pure functions over models and bytes (no Kafka, no
clock); brokers.pki holds the certificates these functions are given.

Wire choices (changing any of them is a new algorithm name, not an edit):

- Signatures cover ``schemas.codec.encode(envelope without its signature)`` — the
  canonical Avro single-object encoding, never Kafka headers (tracing adds those
  on the way). ``Ed25519`` (64 bytes), ``ECDSA-P256-SHA256`` (DER-encoded
  ECDSA-Sig-Value, as in X.509), ``RSA-PSS-SHA256`` (RSA >= 2048 bits, MGF1-SHA256,
  salt length = 32). The algorithm name must agree with the certificate's key type.
  Lifecycle events (a provider's DELIVERED, a sender's recall) carry theirs in the
  attributes ``signer`` and ``signature`` (base64), over the event without them.
- Sealing, for the recipient's mailbox provider: a fresh 256-bit content key per
  message; every file is AES-256-GCM with its own random 12-byte nonce
  (``File.nonce``); the associated data is a domain label, then messageUUID, the
  header's senderID and recipientID (each a 4-byte big-endian length and UTF-8),
  then the 4-byte file index (main, additional, technical documents in order), so
  a ciphertext is useless in another message, for another party, or in another
  slot. Files above the claim-check threshold go to the blob store as ciphertext
  (``BlobContent``: ref, SHA-256 and size of the ciphertext).
- Personal identifiers move into ``sealedPersonalData`` = nonce (12) || AES-GCM of
  a small JSON object (``recipientID``; ``senderID`` unless the sender is a CVR;
  ``cprData``), under the same content key and the same header binding. In the
  clear header every identifier but a CVR number (public) is replaced by its
  keyed pseudonym. An identifier of unknown type is treated as personal.
- Header texts (label, notification) stay in clear whatever ``labelIsSensitive``
  says: the backbone and the notifier need them. Document bytes never do.
- The content key is wrapped for the provider's X25519 key: ephemeral ECDH,
  HKDF-SHA256 (salt = ephemeral public key || provider public key, info =
  ``dp2-key-wrap-v1`` || messageUUID) to a 256-bit KEK, then AES key wrap
  (RFC 3394). Integrity of the whole envelope is the signature's job; the AEAD
  binding only makes ciphertexts unusable out of place.

Errors are :class:`SecurityError` with the reason codes SIGNATURE_MISSING,
SIGNATURE_INVALID, CERTIFICATE_MISMATCH, NOT_PLAIN, DECRYPTION_FAILED,
PSEUDONYM_MISMATCH, BLOB_CORRUPT, UNSUPPORTED_KEY, BAD_FINGERPRINT and
WEAK_PSEUDONYM_KEY; a missing blob is brokers.blobstore's BLOB_MISSING. Messages
never contain identifiers or key material.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import hmac
import itertools
import json
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from brokers.blobstore import BlobStore
from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import (
    AdditionalDocument,
    BlobContent,
    CPRdata,
    Encryption,
    Envelope,
    File,
    IdType,
    InlineContent,
    LifecycleEvent,
    MainDocument,
    MessageBody,
    MessageHeader,
    Signature,
    TechnicalDocument,
)


class SecurityError(Dp2Error):
    """A signature, certificate, key or ciphertext does not check out."""

    reason_code = "SECURITY_ERROR"
    hint = "See the reason code; security checks never pass on retry."


# --- signatures ---------------------------------------------------------------------
ED25519: Final = "Ed25519"
ECDSA_P256_SHA256: Final = "ECDSA-P256-SHA256"
RSA_PSS_SHA256: Final = "RSA-PSS-SHA256"
SIGNATURE_ALGORITHMS: Final = (ED25519, ECDSA_P256_SHA256, RSA_PSS_SHA256)

# Verification is what the shared backbone pays for every message (the validator, and
# again the mailbox); signing is spread over the senders' own machines. Measured with
# `python -m brokers.bench_crypto --iterations 1000` (cryptography 50, OpenSSL 4.0, one
# core, best of 5 rounds, microseconds per operation over a 1.6 KB signing input;
# four runs, range shown):
#     algorithm          sign        verify    key generation   signature
#     RSA-PSS-SHA256     781-986     35-43     ~100 ms          256 bytes
#     ECDSA-P256-SHA256  38-61       90-119    ~0.1 ms          ~71 bytes
#     Ed25519            60-71       134-203   ~0.3 ms          64 bytes
# So by verification cost RSA-PSS-SHA256 is the default: 2-4x cheaper to verify, which
# is the work that cannot be scaled out by the senders. The price is paid at the
# edge: ~0.9 ms per signature (batch signing is the remedy), slow key generation
# (once per certificate) and ~190 more bytes per envelope. Re-encoding the signing
# input costs ~90 us on top of any verification.
DEFAULT_SIGNATURE_ALGORITHM: Final = RSA_PSS_SHA256

RSA_KEY_BITS: Final = 2048
_PSS: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")

SigningKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""A private key that can sign envelopes (Ed25519, ECDSA P-256 or RSA >= 2048)."""


def generate_signing_key(algorithm: str = DEFAULT_SIGNATURE_ALGORITHM) -> SigningKey:
    """A fresh private key for `algorithm` (one of SIGNATURE_ALGORITHMS)."""
    if algorithm == ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == ECDSA_P256_SHA256:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == RSA_PSS_SHA256:
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    raise SecurityError(
        f"no signature algorithm called {algorithm!r}",
        reason_code="UNSUPPORTED_ALGORITHM",
        hint=f"Choose one of {', '.join(SIGNATURE_ALGORITHMS)}.",
    )


def signature_algorithm(key: SigningKey | CertificatePublicKeyTypes) -> str:
    """The DP2 signature algorithm name for this private or public key."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return ED25519
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return ECDSA_P256_SHA256
    elif isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) and key.key_size >= RSA_KEY_BITS:
        return RSA_PSS_SHA256
    raise SecurityError(
        f"a {type(key).__name__} cannot sign DP2 messages",
        reason_code="UNSUPPORTED_KEY",
        hint="Use an Ed25519, ECDSA P-256 or RSA (2048 bits or more) key; dp2 pki issues them.",
    )


@functools.lru_cache(maxsize=4096)  # the same few signers sign every message
def secret_key_file(path: Path, size: int = 32) -> bytes:
    """A deployment's secret kept in ``path``: made once (random bytes, mode 0600), then read.

    Two processes starting together both end up with the one that was written first.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(os.urandom(size))
    return path.read_bytes()


def sign_claims(key: bytes, kind: str, claims: dict[str, Any]) -> str:
    """``kind.<base64url JSON>.<base64url HMAC-SHA256>``: claims anyone may read and only
    the key's holder can have written (citizen tokens, dashboard sessions)."""
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{kind}.{payload}.{_b64url(_claims_mac(key, kind, payload))}"


def read_claims(key: bytes, kind: str, token: str) -> dict[str, Any] | None:
    """The claims of a token `sign_claims` made with ``key`` and ``kind``; None if it
    is of another kind, damaged or forged."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != kind:
        return None
    try:
        given = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSON errors are ValueErrors
        return None
    if not hmac.compare_digest(given, _claims_mac(key, kind, parts[1])):
        return None
    return claims if isinstance(claims, dict) else None


def _claims_mac(key: bytes, kind: str, payload: str) -> bytes:
    return hmac.new(key, f"{kind}.{payload}".encode(), hashlib.sha256).digest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's DER encoding (how envelopes name signers)."""
    return certificate.fingerprint(hashes.SHA256()).hex()


@functools.lru_cache(maxsize=1024)
def load_certificate_der(der: bytes) -> x509.Certificate:
    """A certificate from DER, parsed once per distinct certificate (ValueError if not DER)."""
    return x509.load_der_x509_certificate(der)


def sign_bytes(private_key: SigningKey, data: bytes) -> bytes:
    """The signature of `data` with the algorithm that `private_key`'s type implies."""
    algorithm = signature_algorithm(private_key)
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    assert algorithm == RSA_PSS_SHA256  # noqa: S101 - signature_algorithm left only RSA
    return private_key.sign(data, _PSS, hashes.SHA256())


def verify_bytes(
    public_key: CertificatePublicKeyTypes,
    signature: bytes,
    data: bytes,
    algorithm: str | None = None,
) -> None:
    """Raise SecurityError SIGNATURE_INVALID unless `signature` is `public_key`'s over `data`.

    When `algorithm` is given it must name the key's type: a signature never chooses
    how it is checked.
    """
    try:
        expected = signature_algorithm(public_key)
    except SecurityError as exc:
        raise _invalid(exc.message) from None
    if algorithm is not None and algorithm != expected:
        raise _invalid(f"the signature claims {algorithm}; the certificate holds a {expected} key")
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, _PSS, hashes.SHA256())
    except InvalidSignature:
        raise _invalid("the signature does not match the signed bytes") from None


def _invalid(message: str) -> SecurityError:
    return SecurityError(
        message,
        reason_code="SIGNATURE_INVALID",
        hint=(
            "Sign the envelope last, after sealing, with the key of the certificate it names, "
            "and send it unchanged (brokers.crypto.sign_envelope)."
        ),
    )


def signing_input(envelope: Envelope) -> bytes:
    """The bytes a signature covers: the canonical encoding of the envelope without it."""
    return codec.encode(dataclasses.replace(envelope, signature=None))


def sign_envelope(
    envelope: Envelope, private_key: SigningKey, certificate_fingerprint: str
) -> Envelope:
    """`envelope` with a Signature by `private_key`, naming the signer's certificate."""
    if _FINGERPRINT.fullmatch(certificate_fingerprint) is None:
        raise SecurityError(
            "the signer certificate must be named by its SHA-256 fingerprint",
            reason_code="BAD_FINGERPRINT",
            hint="Pass Identity.fingerprint (64 lowercase hex digits), not a name or PEM.",
        )
    signature = Signature(
        algorithm=signature_algorithm(private_key),
        value=sign_bytes(private_key, signing_input(envelope)),
        signerCertificate=certificate_fingerprint,
    )
    return dataclasses.replace(envelope, signature=signature)


def verify_envelope(envelope: Envelope, certificate: x509.Certificate) -> None:
    """Raise SecurityError unless `certificate`'s key signed exactly this envelope.

    Checks only the signature; whether the certificate is trusted, valid now and not
    revoked is brokers.pki.TrustStore.verify_certificate's job.
    """
    signature = envelope.signature
    if signature is None:
        raise SecurityError(
            "the envelope is not signed",
            reason_code="SIGNATURE_MISSING",
            hint="Sign the sealed envelope with brokers.crypto.sign_envelope before sending.",
        )
    if signature.signerCertificate != certificate_fingerprint(certificate):
        raise SecurityError(
            "the signature names another certificate than the one given to verify it",
            reason_code="CERTIFICATE_MISMATCH",
            hint="Verify with the certificate whose fingerprint is Signature.signerCertificate.",
        )
    if signature.batchRoot is not None or signature.inclusionProof or signature.leafIndex:
        raise _invalid("batch signatures are not supported by this verifier yet")
    verify_bytes(
        certificate.public_key(), signature.value, signing_input(envelope), signature.algorithm
    )


def _event_signing_input(event: LifecycleEvent) -> bytes:
    """The event encoded without its signature attributes, the rest sorted by key."""
    attributes = {k: v for k, v in sorted(event.attributes.items()) if k not in _EVENT_SIGNATURE}
    return codec.encode(dataclasses.replace(event, attributes=attributes))


_EVENT_SIGNATURE: Final = ("signer", "signature")


def sign_event(
    event: LifecycleEvent, private_key: SigningKey, certificate_fingerprint: str
) -> LifecycleEvent:
    """`event` signed in its attributes: ``signer`` (fingerprint), ``signature`` (base64).

    Lifecycle events have no signature field, so a provider's DELIVERED or a sender's
    recall request carries it in attributes; the other attributes are signed sorted by
    key, so re-ordering the Avro map on the way does not break it.
    """
    value = sign_bytes(private_key, _event_signing_input(event))
    attributes = {
        **event.attributes,
        "signer": certificate_fingerprint,
        "signature": base64.b64encode(value).decode("ascii"),
    }
    return dataclasses.replace(event, attributes=attributes)


def verify_event(event: LifecycleEvent, certificate: x509.Certificate) -> None:
    """Raise SecurityError unless `certificate`'s key signed this event (see sign_event)."""
    signer, encoded = event.attributes.get("signer"), event.attributes.get("signature")
    if signer is None or encoded is None:
        raise SecurityError(
            "the event is not signed",
            reason_code="SIGNATURE_MISSING",
            hint="Sign lifecycle events with brokers.crypto.sign_event.",
        )
    if signer != certificate_fingerprint(certificate):
        raise SecurityError(
            "the event names another certificate than the one given to verify it",
            reason_code="CERTIFICATE_MISMATCH",
            hint="Verify with the certificate named in the event's signer attribute.",
        )
    try:
        value = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise _invalid("the event's signature is not base64") from None
    verify_bytes(certificate.public_key(), value, _event_signing_input(event))


# --- pseudonyms ---------------------------------------------------------------------
class Pseudonymizer:
    """Keyed, stable, one-way references for personal identifiers (CPR numbers).

    ``ref(id_type, identifier)`` is ``psn-`` and the first 26 characters (130 bits)
    of the lowercase base32 HMAC-SHA256 of ``"<id_type>:<identifier>"``. Every
    service of a deployment shares the key (brokers.contacts.pseudonym_key), so one
    person has one pseudonym there; without the key it cannot be reversed or
    recomputed by trying all ten-digit numbers.
    """

    PREFIX: Final = "psn-"

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise SecurityError(
                f"a pseudonym key of {len(key)} bytes is too short to keep CPR numbers secret",
                reason_code="WEAK_PSEUDONYM_KEY",
                hint="Use 32 random bytes (DP2_PSEUDONYM_KEY as hex, or DP2_HOME/pseudonym.key).",
            )
        self._key = bytes(key)

    def __repr__(self) -> str:
        return "Pseudonymizer(<key hidden>)"

    def ref(self, id_type: str, identifier: str) -> str:
        mac = hmac.new(self._key, f"{id_type}:{identifier}".encode(), hashlib.sha256).digest()
        return self.PREFIX + base64.b32encode(mac).decode("ascii")[:26].lower()


# --- sealing ------------------------------------------------------------------------
CONTENT_ALGORITHM: Final = "AES-256-GCM"
KEY_WRAP_ALGORITHM: Final = "X25519-HKDF-SHA256-A256KW"
NONCE_SIZE: Final = 12
DEFAULT_BLOB_THRESHOLD: Final = 512 * 1024
_WRAP_INFO: Final = b"dp2-key-wrap-v1"
_FILE_AAD: Final = b"dp2-file-v1"
_PERSONAL_AAD: Final = b"dp2-personal-v1"


def files_of(body: MessageBody | None) -> list[File]:
    """Every file of the body in sealing order: main, additional, then technical documents."""
    if body is None:
        return []
    documents: list[MainDocument | AdditionalDocument | TechnicalDocument] = [
        body.mainDocument,
        *body.additionalDocument,
        *body.technicalDocument,
    ]
    return [f for document in documents for f in document.file]


def map_files(body: MessageBody | None, fn: Callable[[int, File], File]) -> MessageBody | None:
    """The body with each file replaced by ``fn(index, file)``, indexed in sealing order."""
    if body is None:
        return None
    counter = itertools.count()

    def each(files: list[File]) -> list[File]:
        return [fn(next(counter), f) for f in files]

    main = dataclasses.replace(body.mainDocument, file=each(body.mainDocument.file))
    additional = [dataclasses.replace(d, file=each(d.file)) for d in body.additionalDocument]
    technical = [dataclasses.replace(d, file=each(d.file)) for d in body.technicalDocument]
    return dataclasses.replace(
        body, mainDocument=main, additionalDocument=additional, technicalDocument=technical
    )


def seal_envelope(  # noqa: PLR0917 - the SDK passes the six collaborators in this order
    plain: Envelope,
    provider_key: x25519.X25519PublicKey,
    provider_key_id: str,
    pseudonymizer: Pseudonymizer,
    blob_store: BlobStore,
    blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
) -> Envelope:
    """`plain` as it may travel: documents and identifiers encrypted for one provider.

    The result is unsigned; sign it with sign_envelope. A signed plain envelope is
    refused (NOT_PLAIN): a signature over plaintext that travels beside the
    ciphertext would let anyone confirm a guess of the documents.
    """
    _require_plain(plain)
    header, personal = _pseudonymise(plain.header, pseudonymizer)
    content_key = AESGCM.generate_key(bit_length=256)
    aead = AESGCM(content_key)
    binding = _binding(header)

    def seal_file(index: int, file: File) -> File:
        assert isinstance(file.content, InlineContent)  # noqa: S101 - _require_plain checked
        plaintext = file.content.data
        nonce = os.urandom(NONCE_SIZE)
        ciphertext = aead.encrypt(nonce, plaintext, _file_aad(binding, index))
        content: InlineContent | BlobContent = InlineContent(data=ciphertext)
        if len(plaintext) > blob_threshold:
            content = BlobContent(
                ref=blob_store.put(ciphertext),
                sha256=hashlib.sha256(ciphertext).digest(),
                size=len(ciphertext),
            )
        return dataclasses.replace(file, content=content, nonce=nonce)

    body = map_files(plain.body, seal_file)
    nonce = os.urandom(NONCE_SIZE)
    document = json.dumps(personal, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    sealed_personal = nonce + aead.encrypt(nonce, document.encode(), _PERSONAL_AAD + binding)
    return dataclasses.replace(
        plain,
        header=header,
        body=body,
        encryption=_wrap(content_key, provider_key, provider_key_id, header.messageUUID),
        sealedPersonalData=sealed_personal,
    )


def open_envelope(
    sealed: Envelope,
    provider_private_key: x25519.X25519PrivateKey,
    blob_store: BlobStore,
    *,
    pseudonymizer: Pseudonymizer | None = None,
) -> Envelope:
    """The plain envelope exactly as it was before seal_envelope, but without a signature.

    The signature covers the sealed form, so it is dropped rather than kept on an
    envelope it does not verify against: verify the sealed envelope first. Given the
    deployment's `pseudonymizer`, the identifiers in the sealed personal data must
    also match the pseudonyms in the clear header (PSEUDONYM_MISMATCH), so that a
    sender cannot have a message routed for one person and opened for another.
    """
    encryption = sealed.encryption
    if encryption is None or sealed.sealedPersonalData is None:
        raise _undecryptable("the envelope is not sealed (no encryption or personal data)")
    if (encryption.contentAlgorithm, encryption.keyWrapAlgorithm) != (
        CONTENT_ALGORITHM,
        KEY_WRAP_ALGORITHM,
    ):
        raise _undecryptable(
            f"unsupported algorithms {encryption.contentAlgorithm}/{encryption.keyWrapAlgorithm}"
        )
    aead = AESGCM(unwrap_content_key(encryption, provider_private_key, sealed.header.messageUUID))
    binding = _binding(sealed.header)
    nonce, ciphertext = (
        sealed.sealedPersonalData[:NONCE_SIZE],
        sealed.sealedPersonalData[NONCE_SIZE:],
    )
    personal = _decrypt(aead, nonce, ciphertext, _PERSONAL_AAD + binding, "personal data")

    def open_file(index: int, file: File) -> File:
        if file.nonce is None:
            raise _undecryptable(f"file {index} of a sealed envelope is not encrypted")
        ciphertext = _ciphertext(file.content, blob_store, index)
        aad = _file_aad(binding, index)
        plaintext = _decrypt(aead, file.nonce, ciphertext, aad, f"file {index}")
        return dataclasses.replace(file, content=InlineContent(data=plaintext), nonce=None)

    body = map_files(sealed.body, open_file)
    return dataclasses.replace(
        sealed,
        header=_restore(sealed.header, personal, pseudonymizer),
        body=body,
        encryption=None,
        sealedPersonalData=None,
        signature=None,
    )


def _require_plain(envelope: Envelope) -> None:
    problem = None
    if envelope.signature is not None:
        problem = "it is signed; seal first, then sign the sealed envelope"
    elif envelope.encryption is not None or envelope.sealedPersonalData is not None:
        problem = "it is already sealed"
    elif any(
        f.nonce is not None or not isinstance(f.content, InlineContent)
        for f in files_of(envelope.body)
    ):
        problem = "a file is already encrypted or in the blob store"
    if problem is not None:
        raise SecurityError(
            f"only a plain envelope can be sealed, and {problem}",
            reason_code="NOT_PLAIN",
            hint="Seal the envelope as built (inline file bytes, no nonce, no signature).",
        )


def _pseudonymise(
    header: MessageHeader, pseudonymizer: Pseudonymizer
) -> tuple[MessageHeader, dict[str, Any]]:
    """The clear header with personal identifiers replaced, and the originals."""
    recipient, sender, content = header.recipient, header.sender, header.contentData
    personal: dict[str, Any] = {"recipientID": recipient.recipientID}
    if recipient.idType is not IdType.CVR:
        pseudonym = pseudonymizer.ref(recipient.idType.value, recipient.recipientID)
        recipient = dataclasses.replace(recipient, recipientID=pseudonym)
    if sender.idType is not IdType.CVR:
        personal["senderID"] = sender.senderID
        pseudonym = pseudonymizer.ref(sender.idType.value, sender.senderID)
        sender = dataclasses.replace(sender, senderID=pseudonym)
    if content is not None and content.cprData is not None:
        cpr = content.cprData
        personal["cprData"] = {"cprNumber": cpr.cprNumber, "name": cpr.name}
        pseudonym = pseudonymizer.ref(IdType.CPR.value, cpr.cprNumber)
        content = dataclasses.replace(content, cprData=CPRdata(cprNumber=pseudonym))
    clear = dataclasses.replace(header, recipient=recipient, sender=sender, contentData=content)
    return clear, personal


def _restore(
    header: MessageHeader, personal: bytes, pseudonymizer: Pseudonymizer | None
) -> MessageHeader:
    """The header with the identifiers from the sealed personal data put back."""
    recipient_id, sender_id, cpr_data = _parse_personal(personal)
    recipient, sender, content = header.recipient, header.sender, header.contentData
    clear_cpr = content.cprData if content is not None else None
    if (sender_id is None) != (sender.idType is IdType.CVR) or (cpr_data is None) != (
        clear_cpr is None
    ):
        raise _undecryptable("the sealed personal data does not fit the clear header")
    expected = [(recipient.idType, recipient_id, recipient.recipientID)]
    recipient = dataclasses.replace(recipient, recipientID=recipient_id)
    if sender_id is not None:
        expected.append((sender.idType, sender_id, sender.senderID))
        sender = dataclasses.replace(sender, senderID=sender_id)
    if cpr_data is not None and clear_cpr is not None and content is not None:
        expected.append((IdType.CPR, cpr_data.cprNumber, clear_cpr.cprNumber))
        content = dataclasses.replace(content, cprData=cpr_data)
    for id_type, original, clear in expected:
        if id_type is IdType.CVR:
            consistent = original == clear
        elif pseudonymizer is None:
            continue
        else:
            pseudonym = pseudonymizer.ref(id_type.value, original)
            consistent = hmac.compare_digest(pseudonym.encode(), clear.encode())
        if not consistent:
            raise SecurityError(
                "an identifier in the sealed personal data does not match the clear header",
                reason_code="PSEUDONYM_MISMATCH",
                hint="Seal with brokers.crypto.seal_envelope and this deployment's pseudonym key.",
            )
    return dataclasses.replace(header, recipient=recipient, sender=sender, contentData=content)


def _parse_personal(personal: bytes) -> tuple[str, str | None, CPRdata | None]:
    """(recipientID, senderID, cprData) of the decrypted personal data, types checked."""

    def text(value: object, *, optional: bool = False) -> Any:
        if isinstance(value, str) or (optional and value is None):
            return value
        raise TypeError("an identifier is not a string")

    try:
        data = json.loads(personal.decode())
        recipient_id = text(data["recipientID"])
        sender_id = text(data.get("senderID"), optional=True)
        cpr = data.get("cprData")
        cpr_data = (
            None
            if cpr is None
            else CPRdata(cprNumber=text(cpr["cprNumber"]), name=text(cpr["name"], optional=True))
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _undecryptable(
            f"the sealed personal data is malformed ({type(exc).__name__})"
        ) from None
    return recipient_id, sender_id, cpr_data


def _binding(header: MessageHeader) -> bytes:
    """Message UUID, sender and recipient as they appear in the clear header, length-prefixed."""
    parts = (header.messageUUID, header.sender.senderID, header.recipient.recipientID)
    return b"".join(struct.pack(">I", len(b)) + b for b in (p.encode() for p in parts))


def _file_aad(binding: bytes, index: int) -> bytes:
    return _FILE_AAD + binding + struct.pack(">I", index)


def _ciphertext(content: InlineContent | BlobContent, blob_store: BlobStore, index: int) -> bytes:
    if isinstance(content, InlineContent):
        return content.data
    data = blob_store.get(content.ref)
    digest = hashlib.sha256(data).digest()
    if len(data) != content.size or not hmac.compare_digest(digest, content.sha256):
        raise SecurityError(
            f"the blob of file {index} ({content.ref}) does not match its size and SHA-256",
            reason_code="BLOB_CORRUPT",
            hint="The blob store holds damaged or substituted bytes; have the sender resend.",
        )
    return data


def _decrypt(aead: AESGCM, nonce: bytes, ciphertext: bytes, aad: bytes, what: str) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise _undecryptable(f"the {what} has no {NONCE_SIZE}-byte nonce")
    try:
        return aead.decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise _undecryptable(
            f"the {what} does not decrypt: wrong key, or the ciphertext or its header changed"
        ) from None


def _wrap(
    content_key: bytes,
    provider_key: x25519.X25519PublicKey,
    provider_key_id: str,
    message_uuid: str,
) -> Encryption:
    ephemeral = x25519.X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    kek = _kek(ephemeral.exchange(provider_key), ephemeral_public, provider_key, message_uuid)
    return Encryption(
        contentAlgorithm=CONTENT_ALGORITHM,
        keyWrapAlgorithm=KEY_WRAP_ALGORITHM,
        wrappedKey=aes_key_wrap(kek, content_key),
        recipientKeyId=provider_key_id,
        ephemeralPublicKey=ephemeral_public,
    )


def unwrap_content_key(
    encryption: Encryption, private_key: x25519.X25519PrivateKey, message_uuid: str
) -> bytes:
    """The 256-bit content key of a sealed envelope (the public-key step of opening)."""
    try:
        ephemeral = x25519.X25519PublicKey.from_public_bytes(encryption.ephemeralPublicKey or b"")
        shared = private_key.exchange(ephemeral)  # ValueError for a low-order point
        kek = _kek(shared, ephemeral.public_bytes_raw(), private_key.public_key(), message_uuid)
        content_key = aes_key_unwrap(kek, encryption.wrappedKey)
    except (ValueError, InvalidUnwrap):
        raise _undecryptable(
            "the content key does not unwrap: sealed for another provider key, or tampered"
        ) from None
    if len(content_key) != 32:
        raise _undecryptable("the wrapped content key is not 256 bits")
    return content_key


def _kek(
    shared: bytes,
    ephemeral_public: bytes,
    provider_key: x25519.X25519PublicKey,
    message_uuid: str,
) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral_public + provider_key.public_bytes_raw(),
        info=_WRAP_INFO + message_uuid.encode(),
    ).derive(shared)


def _undecryptable(message: str) -> SecurityError:
    return SecurityError(
        message,
        reason_code="DECRYPTION_FAILED",
        hint=(
            "Open with the private key of the provider named in Encryption.recipientKeyId; "
            "if that is right, the envelope was changed after sealing and must be resent."
        ),
    )

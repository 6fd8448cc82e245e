"""Signatures over envelopes and lifecycle events, and the signing keys behind them.

Why it exists: DP2 routes post through a shared backbone whose participants do not
trust each other, so who sent a message is proven by a signature, never by where a
record came from. These are pure functions over models and bytes (no Kafka, no
clock); brokers.security.trust decides whether the certificate they are given is
trusted.

Wire choices (changing any of them is a new algorithm name, not an edit):

- Signatures cover ``schemas.codec.encode(envelope without its signature)`` — the
  canonical Avro single-object encoding, never Kafka headers (tracing adds those
  on the way). ``Ed25519`` (64 bytes), ``ECDSA-P256-SHA256`` (DER-encoded
  ECDSA-Sig-Value, as in X.509), ``RSA-PSS-SHA256`` (RSA >= 2048 bits, MGF1-SHA256,
  salt length = 32). The algorithm name must agree with the certificate's key type.
- Lifecycle events (a provider's DELIVERED, a sender's recall) carry theirs in the
  attributes ``signer`` and ``signature`` (base64), over the event without them.
- A service signs the lifecycle events of one produce round together
  (:func:`sign_events`): the leaves of an RFC 9162 tree (brokers.security.merkle) are
  the events' signing inputs, ``signature`` covers ``BATCH_DOMAIN || root``, and each
  event carries its audit path in the attribute ``batchProof``:
  ``"<index> <size> <base64 of the path's 32-byte hashes>"``. Each event stays
  verifiable alone and offline (DESIGN.md: amortised public-key work); a reader that
  keeps the roots it verified (:class:`VerifiedRoots`) checks one signature per batch.

Errors are :class:`SecurityError` (the root of every security refusal) with the
reason codes SIGNATURE_MISSING, SIGNATURE_INVALID, CERTIFICATE_MISMATCH,
UNSUPPORTED_KEY, UNSUPPORTED_ALGORITHM, BAD_FINGERPRINT and CERTIFICATE_TOO_LARGE.
Messages never contain identifiers or key material.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from typing import Final, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from brokers.runtime.lru import Lru
from brokers.security import merkle
from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import (
    Envelope,
    LifecycleEvent,
    Signature,
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
# `python -m brokers.bench.crypto --iterations 1000` (cryptography 50, OpenSSL 4.0, one
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


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's DER encoding (how envelopes name signers)."""
    return certificate.fingerprint(hashes.SHA256()).hex()


class Fingerprints:
    """``certificate_fingerprint(cert)``, hashed once per certificate object.

    Keyed by the object's id, and holding the object, so an id is not reused while it
    is remembered: a trust store hands out the same object for every event of a
    signer, and hashing its DER per event was a visible share of judging one."""

    def __init__(self, size: int) -> None:
        self._known: Lru[int, tuple[x509.Certificate, str]] = Lru(size)

    def __call__(self, cert: x509.Certificate) -> str:
        known = self._known.get(id(cert))
        if known is not None and known[0] is cert:
            return known[1]
        return self.remember(cert, certificate_fingerprint(cert))

    def remember(self, cert: x509.Certificate, fingerprint: str) -> str:
        """Note a fingerprint the caller has computed already."""
        self._known.put(id(cert), (cert, fingerprint))
        return fingerprint


#: The largest signer certificate DP2 parses (a DP2 certificate is 0.5-2 KB; OCES ones
#: with long chains of policies stay well below this).
MAX_CERTIFICATE_BYTES: Final = 16 * 1024
#: How many distinct parsed certificates are kept, least recently used out first.
CERTIFICATE_CACHE_SIZE: Final = 256
_certificates: Final[Lru[str, x509.Certificate]] = Lru(CERTIFICATE_CACHE_SIZE)


def load_certificate_der(der: bytes) -> x509.Certificate:
    """A certificate from DER, parsed once per distinct certificate (ValueError if not DER).

    Cached by SHA-256 fingerprint in a bounded LRU (CERTIFICATE_CACHE_SIZE entries of
    at most MAX_CERTIFICATE_BYTES), so distinct certificates in headers cannot grow
    memory; a larger one is refused unparsed (CERTIFICATE_TOO_LARGE).
    """
    if len(der) > MAX_CERTIFICATE_BYTES:
        raise SecurityError(
            f"the signer certificate has {len(der):,} bytes; DP2 reads at most "
            f"{MAX_CERTIFICATE_BYTES:,}",
            reason_code="CERTIFICATE_TOO_LARGE",
            hint="Sign with a certificate issued by this deployment's CA (dp2 pki issue); "
            "they are about 1 KB.",
        )
    fingerprint = hashlib.sha256(der).hexdigest()
    cached = _certificates.get(fingerprint)
    if cached is not None:
        return cached
    return _certificates.put(fingerprint, x509.load_der_x509_certificate(der))


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
            "and send it unchanged (brokers.security.signing.sign_envelope)."
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
    revoked is brokers.security.trust.TrustStore.verify_certificate's job.
    """
    signature = envelope.signature
    if signature is None:
        raise SecurityError(
            "the envelope is not signed",
            reason_code="SIGNATURE_MISSING",
            hint="Sign the sealed envelope with signing.sign_envelope before sending.",
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
    # encode_with: the bytes of encode(replace(event, attributes=...)) without building
    # and validating that copy, which was a third of judging an event.
    return codec.encode_with(event, attributes=attributes)


#: The attributes a signature adds to an event; the signing input leaves them out.
_EVENT_SIGNATURE: Final = ("signer", "signature", "batchProof")
#: What a batch signature covers before the root: never a valid event signing input
#: (those start with the Avro single-object marker), so one cannot stand for the other.
BATCH_DOMAIN: Final = b"dp2-lifecycle-batch-v1\x00"
#: The most events one signature covers: an audit path of at most 8 hashes (344
#: characters of base64 per event), while signing costs a 256th of a signature each.
MAX_BATCH: Final = 256
_MAX_PATH: Final = 8
_BATCH_PROOF: Final = re.compile(r"(\d{1,3}) (\d{1,3}) ([A-Za-z0-9+/=]{0,400})", re.ASCII)


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


def sign_events(
    events: list[LifecycleEvent], private_key: SigningKey, certificate_fingerprint: str
) -> list[LifecycleEvent]:
    """``events`` signed together: one signature per :data:`MAX_BATCH` of them, over the
    root of the hash tree of their signing inputs; each carries its audit path."""
    signed: list[LifecycleEvent] = []
    for start in range(0, len(events), MAX_BATCH):
        batch = events[start : start + MAX_BATCH]
        if len(batch) == 1:  # a batch of one is a plain signature, as sign_event makes
            signed.append(sign_event(batch[0], private_key, certificate_fingerprint))
            continue
        root, paths = merkle.audit_paths(
            [merkle.leaf_hash(_event_signing_input(event)) for event in batch]
        )
        signature = base64.b64encode(sign_bytes(private_key, BATCH_DOMAIN + root)).decode()
        for index, (event, path) in enumerate(zip(batch, paths, strict=True)):
            proof = f"{index} {len(batch)} {base64.b64encode(b''.join(path)).decode()}"
            attributes = {
                **event.attributes,
                "signer": certificate_fingerprint,
                "signature": signature,
                "batchProof": proof,
            }
            signed.append(dataclasses.replace(event, attributes=attributes))
    return signed


class VerifiedRoots:
    """Batch roots whose signature a reader checked: the next event of the same batch
    costs its audit path (a few hashes), not a public-key operation.

    Keyed by (signer fingerprint, signature): a signature stands for one root only, so
    an event whose path leads elsewhere is checked in full — and fails."""

    def __init__(self, size: int = 1024) -> None:
        self._roots: Lru[tuple[str, str], bytes] = Lru(size)

    def get(self, signer: str, signature: str) -> bytes | None:
        return self._roots.get((signer, signature))

    def put(self, signer: str, signature: str, root: bytes) -> None:
        self._roots.put((signer, signature), root)


def _batch_root(event: LifecycleEvent, proof: str) -> bytes:
    """The root an event's ``batchProof`` leads to (SIGNATURE_INVALID if it is no proof)."""
    parts = _BATCH_PROOF.fullmatch(proof)
    if parts is None:
        raise _invalid("the event's batchProof is not '<index> <size> <base64 path>'")
    index, size = int(parts[1]), int(parts[2])
    try:
        path = base64.b64decode(parts[3], validate=True)
    except ValueError:
        raise _invalid("the event's batchProof path is not base64") from None
    if not 1 < size <= MAX_BATCH or len(path) % 32 or len(path) > 32 * _MAX_PATH:
        raise _invalid("the event's batchProof does not fit a batch DP2 signs")
    hashes_ = [path[i : i + 32] for i in range(0, len(path), 32)]
    leaf = merkle.leaf_hash(_event_signing_input(event))
    root = merkle.root_from_inclusion(leaf, index, size, hashes_)
    if root is None:
        raise _invalid("the event's batchProof does not lead to a root")
    return root


def verify_event(
    event: LifecycleEvent,
    certificate: x509.Certificate,
    *,
    fingerprint: str | None = None,
    roots: VerifiedRoots | None = None,
) -> None:
    """Raise SecurityError unless `certificate`'s key signed this event (see sign_event
    and sign_events).

    ``fingerprint`` is the certificate's, when the caller knows it already (a trust
    store that hashed it once); otherwise it is computed here. ``roots`` keeps the
    batch roots checked so far (a reader's, never shared between trust decisions that
    differ: the caller checks the certificate itself first)."""
    signer, encoded = event.attributes.get("signer"), event.attributes.get("signature")
    if signer is None or encoded is None:
        raise SecurityError(
            "the event is not signed",
            reason_code="SIGNATURE_MISSING",
            hint="Sign lifecycle events with brokers.security.signing.sign_event.",
        )
    if signer != (fingerprint or certificate_fingerprint(certificate)):
        raise SecurityError(
            "the event names another certificate than the one given to verify it",
            reason_code="CERTIFICATE_MISMATCH",
            hint="Verify with the certificate named in the event's signer attribute.",
        )
    proof = event.attributes.get("batchProof")
    if proof is not None:
        root = _batch_root(event, proof)
        if roots is not None and roots.get(signer, encoded) == root:
            return
    try:
        value = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise _invalid("the event's signature is not base64") from None
    if proof is None:
        verify_bytes(certificate.public_key(), value, _event_signing_input(event))
        return
    verify_bytes(certificate.public_key(), value, BATCH_DOMAIN + root)
    if roots is not None:
        roots.put(signer, encoded, root)

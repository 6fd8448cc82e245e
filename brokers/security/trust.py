"""The trust store every service checks certificates with, and what a certificate says.

Why it exists apart from brokers.security.pki: issuing certificates is a
development convenience (``dp2 pki``), while checking them is what every service
does for every message — in production an OCES-style CA replaces the issuing side
and only this module matters. It reads the layout brokers.security.pki writes (the
CA certificate, its CRL, every issued certificate by fingerprint, the providers'
published encryption certificates) and answers: is this certificate issued by the
CA, valid now and not revoked; which CVR numbers may it send for; which key does a
provider receive post under.

A certificate's kind is its subject's OU (``sender``, ``vendor``, ``provider``,
``provider-encryption``); a sender carries ``serialNumber=CVR:<8 digits>``; a
vendor lists the CVRs it may send for in the extension ON_BEHALF_OF_OID (a DER
UTF8String of comma-separated CVR numbers). A provider certificate issued as a
*citizen gateway* (CITIZEN_GATEWAY_OID, a DER UTF8String ``citizens``) belongs to a
connector that authenticates each citizen itself — self-service forms, the mail
submission server — and may send for any citizen; every other provider may send
only for the citizens the register names it for (brokers.validator.rules).

Errors are brokers.security.signing.SecurityError: PKI_NOT_INITIALISED, CRL_MISSING,
CRL_INVALID, UNKNOWN_CERTIFICATE, UNTRUSTED_ISSUER, CERTIFICATE_NOT_YET_VALID,
CERTIFICATE_EXPIRED, CERTIFICATE_REVOKED, UNKNOWN_PROVIDER.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.x509.oid import NameOID, ObjectIdentifier

from brokers.runtime.lru import Lru
from brokers.security.signing import (
    Fingerprints,
    SecurityError,
    certificate_fingerprint,
)

ON_BEHALF_OF_OID: Final = ObjectIdentifier("1.3.6.1.4.1.55555.1.1")
CITIZEN_GATEWAY_OID: Final = ObjectIdentifier("1.3.6.1.4.1.55555.1.2")
#: The value of CITIZEN_GATEWAY_OID: what the gateway may act for.
CITIZEN_GATEWAY_SCOPE: Final = "citizens"
SENDER, VENDOR, PROVIDER = "sender", "vendor", "provider"
#: DP2's own services and the Kafka broker: a Kafka principal and, with issue 14, a signer.
SERVICE: Final = "service"
PROVIDER_ENCRYPTION: Final = "provider-encryption"
CVR_PATTERN: Final = re.compile(r"[0-9]{8}")
FINGERPRINT_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def security_error(code: str, message: str, hint: str) -> SecurityError:
    """A refusal of the PKI or the trust store, with its reason code and how to fix it."""
    return SecurityError(message, reason_code=code, hint=hint)


# --- the checking side -----------------------------------------------------------------
_Stamp = tuple[int, int, int]
_ISSUER_KEYS: Final = (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey, rsa.RSAPublicKey)


@dataclass(frozen=True, slots=True)
class _Rejection:
    code: str
    message: str
    hint: str


@dataclass(frozen=True, slots=True)
class _Verdict:
    rejection: _Rejection | None


#: Verdicts and sender lists kept per certificate fingerprint (least recently used out).
VERDICT_CACHE_SIZE: Final = 4096


class TrustStore:
    """What every service checks certificates against: the CA, its CRL, issued certs.

    Read lazily from a :class:`Pki` root. ``reload()`` costs two ``stat`` calls and
    re-reads the CA or CRL only when the file changed, so services call it once per
    message. Verdicts (issuer and revocation) are cached per (fingerprint, CRL
    version), so the hot path is a dict lookup plus a validity-window comparison.
    Not thread-safe: one per event loop.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._ca: x509.Certificate | None = None
        self._ca_stamp: _Stamp | None = None
        self._crl_stamp: _Stamp | None = None
        self._crl_version = 0
        self._revoked: frozenset[int] = frozenset()
        self._certs: dict[str, x509.Certificate] = {}
        # Keyed by what records carry: bounded, so distinct certificates cannot grow them.
        self._verdicts: Lru[tuple[str, int], _Verdict] = Lru(VERDICT_CACHE_SIZE)
        self._senders: Lru[str, frozenset[str]] = Lru(VERDICT_CACHE_SIZE)
        self._providers: dict[str, tuple[_Stamp, x509.Certificate]] = {}
        # A certificate's fingerprint by the object's identity (the object is kept with
        # it, so an id is never mistaken for a later object's): the certificates come
        # from caches, so the same objects recur, and hashing the DER per event was a
        # tenth of the tracing service's time in `dp2 bench`.
        self._fingerprints = Fingerprints(VERDICT_CACHE_SIZE)
        self._ca_path = root / "ca" / "cert.pem"
        self._crl_path = root / "crl.pem"

    @property
    def crl_version(self) -> int:
        """Goes up each time a changed CRL is read."""
        return self._crl_version

    def reload(self) -> None:
        """Re-read the CA and the CRL if their files changed since the last look."""
        ca_path = self._ca_path
        ca_stamp = _stamp(ca_path)
        if ca_stamp is None:
            raise security_error(
                "PKI_NOT_INITIALISED", f"there is no CA in {self.root}", "Run: dp2 pki init"
            )
        if ca_stamp != self._ca_stamp:
            self._ca = load_certificate(ca_path)
            self._ca_stamp, self._crl_stamp = ca_stamp, None
            self._certs.clear()
            self._senders.clear()
            self._providers.clear()
        crl_path = self._crl_path
        crl_stamp = _stamp(crl_path)
        if crl_stamp != self._crl_stamp or crl_stamp is None:
            crl = read_crl(crl_path)  # fails closed: a deleted CRL must not un-revoke anything
            ca = self._require_ca()
            public = ca.public_key()
            signed = isinstance(public, _ISSUER_KEYS) and crl.is_signature_valid(public)
            if crl.issuer != ca.subject or not signed:
                raise security_error(
                    "CRL_INVALID",
                    f"{crl_path} is not signed by the CA",
                    "Restore the CRL written by dp2 pki, or revoke again with dp2 pki revoke.",
                )
            self._revoked = frozenset(r.serial_number for r in crl)
            self._crl_stamp = crl_stamp
            self._crl_version += 1
            self._verdicts.clear()

    def certificate(self, fingerprint: str) -> x509.Certificate:
        """The issued certificate with this SHA-256 fingerprint (not yet verified)."""
        cert = self._certs.get(fingerprint)
        if cert is not None:
            return cert
        path = self.root / "certs" / f"{fingerprint}.pem"
        if FINGERPRINT_PATTERN.fullmatch(fingerprint) is None or not path.exists():
            raise security_error(
                "UNKNOWN_CERTIFICATE",
                f"no certificate with fingerprint {fingerprint[:64]!r} was issued here",
                "Sign with a certificate issued by this deployment's CA (dp2 pki issue).",
            )
        cert = load_certificate(path)
        if certificate_fingerprint(cert) != fingerprint:
            raise security_error(
                "UNKNOWN_CERTIFICATE",
                f"{path} holds another certificate than its name says",
                "Remove the file; dp2 pki writes certs/<fingerprint>.pem itself.",
            )
        self._certs[fingerprint] = cert
        self._fingerprints.remember(cert, fingerprint)
        return cert

    def fingerprint(self, cert: x509.Certificate) -> str:
        """``certificate_fingerprint(cert)``, hashed once per certificate object."""
        return self._fingerprints(cert)

    def verify_certificate(self, cert: x509.Certificate, at: datetime) -> None:
        """Raise SecurityError unless `cert` is issued by our CA, unrevoked and valid `at`."""
        ca = self._require_ca()
        key = (self.fingerprint(cert), self._crl_version)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts.put(key, _Verdict(self._judge(cert, ca)))
        rejection = verdict.rejection
        if rejection is not None:
            raise security_error(rejection.code, rejection.message, rejection.hint)
        if at < cert.not_valid_before_utc:
            raise security_error(
                "CERTIFICATE_NOT_YET_VALID",
                f"the certificate is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                "Check the clocks of sender and backbone, or wait until the certificate is valid.",
            )
        if at > cert.not_valid_after_utc:
            raise security_error(
                "CERTIFICATE_EXPIRED",
                f"the certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
                "Have a new certificate issued (dp2 pki issue ... --force) and sign with it.",
            )

    def may_send_as(self, cert: x509.Certificate, cvr: str) -> bool:
        """May `cert` sign for the organisation `cvr`? (Verify the certificate first.)"""
        fingerprint = self.fingerprint(cert)
        allowed = self._senders.get(fingerprint)
        if allowed is None:
            allowed = self._senders.put(fingerprint, sender_cvrs(cert))
        return cvr in allowed

    def provider_key(
        self, provider_id: str, at: datetime | None = None
    ) -> tuple[str, x25519.X25519PublicKey]:
        """(key id, key) to seal for `provider_id`; the key id is its certificate's fingerprint.

        The published certificate is verified like any other (CA, validity, CRL).
        """
        path = self.root / "providers" / f"{provider_id}.pem"
        stamp = _stamp(path) if NAME_PATTERN.fullmatch(provider_id) else None
        if stamp is None:
            raise security_error(
                "UNKNOWN_PROVIDER",
                f"no mailbox provider {provider_id!r} has published an encryption key",
                f"Issue one with: dp2 pki issue provider --id {provider_id}",
            )
        cached = self._providers.get(provider_id)
        if cached is not None and cached[0] == stamp:
            cert = cached[1]
        else:
            cert = load_certificate(path)
            self._providers[provider_id] = (stamp, cert)
        self.verify_certificate(cert, at or datetime.now(UTC))
        public_key = cert.public_key()
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if (
            not isinstance(public_key, x25519.X25519PublicKey)
            or not usage.key_agreement
            or _common_name(cert) != provider_id
        ):
            raise security_error(
                "UNKNOWN_PROVIDER",
                f"{path} is not the X25519 key-agreement certificate of {provider_id!r}",
                f"Re-issue it with: dp2 pki issue provider --id {provider_id} --force",
            )
        return certificate_fingerprint(cert), public_key

    def _require_ca(self) -> x509.Certificate:
        if self._ca is None:
            self.reload()
        assert self._ca is not None  # noqa: S101 - reload sets it or raises
        return self._ca

    def _judge(self, cert: x509.Certificate, ca: x509.Certificate) -> _Rejection | None:
        try:
            cert.verify_directly_issued_by(ca)
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            is_ca = True
        if is_ca:
            return _Rejection(
                "UNTRUSTED_ISSUER",
                "the certificate is not an end-entity certificate issued by this DP2 CA",
                "Use a certificate issued by this deployment's CA (dp2 pki issue).",
            )
        if cert.serial_number in self._revoked:
            return _Rejection(
                "CERTIFICATE_REVOKED",
                "the certificate is revoked",
                "Have a new certificate issued and sign with it; revoked ones stay revoked.",
            )
        return None


def principal_name(cert: x509.Certificate) -> str:
    """``kind:name`` of a certificate (its OU and CN), as Kafka names its principal."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    return f"{kind_of(cert)}:{common_name}"


def kind_of(cert: x509.Certificate) -> str:
    """sender, vendor, provider or provider-encryption (the subject's OU); "" if none."""
    values = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(values[0].value) if values else ""


def sender_cvrs(cert: x509.Certificate) -> frozenset[str]:
    """The CVR numbers a certificate may sign for: its own, or a vendor's listed ones."""
    cvrs = {
        str(a.value).removeprefix("CVR:")
        for a in cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
        if str(a.value).startswith("CVR:")
    }
    try:
        extension = cert.extensions.get_extension_for_oid(ON_BEHALF_OF_OID).value
    except x509.ExtensionNotFound:
        extension = None
    if isinstance(extension, x509.UnrecognizedExtension):
        listed = _parse_der_utf8(extension.value)
        cvrs.update(listed.split(",") if listed else [])
    return frozenset(c for c in cvrs if CVR_PATTERN.fullmatch(c))


def is_citizen_gateway(cert: x509.Certificate) -> bool:
    """Is this a provider certificate issued as a citizen gateway (forms, mail submission)?

    Fails closed: another kind, a missing extension or any other value is no gateway.
    """
    if kind_of(cert) != PROVIDER:
        return False
    try:
        extension = cert.extensions.get_extension_for_oid(CITIZEN_GATEWAY_OID).value
    except x509.ExtensionNotFound:
        return False
    return (
        isinstance(extension, x509.UnrecognizedExtension)
        and _parse_der_utf8(extension.value) == CITIZEN_GATEWAY_SCOPE
    )


# --- helpers ---------------------------------------------------------------------------
def _common_name(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def _parse_der_utf8(der: bytes) -> str:
    """The text of a DER UTF8String; "" for anything else (fails closed: no CVRs)."""
    if len(der) < 2 or der[0] != 0x0C:
        return ""
    start, size = 2, der[1]
    if size & 0x80:
        start = 2 + (size & 0x7F)
        size = int.from_bytes(der[2:start], "big")
    if start + size != len(der):
        return ""
    try:
        return der[start:].decode()
    except UnicodeDecodeError:
        return ""


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def read_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        raise security_error(
            "CRL_MISSING",
            f"{path} is missing",
            "Restore it, or run dp2 pki init --force to start a new PKI.",
        ) from None


def _stamp(path: Path) -> _Stamp | None:
    """What changes when a file is replaced: inode, mtime and size; None if it is missing."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)

"""A development PKI on disk: ``dp2 pki`` makes a CA and issues every party's certificates.

Why it exists: every envelope is signed by an organisation or a vendor connector,
and every mailbox provider publishes a key to seal documents for. ``dp2 pki``
makes a root CA and issues those certificates, so a laptop runs the same checks
as production; in production an OCES-style CA takes its place and only
brokers.security.trust matters.

Layout under the root (``$DP2_HOME/pki`` by the callers' convention)::

    ca/cert.pem, ca/key.pem          the root CA (key 0600), 10 years
    crl.pem                          the CRL, signed by the CA, rewritten on revoke
    identities/<name>/cert.pem       signing certificate; key.pem (0600)
    identities/<name>/enc-cert.pem   providers only: X25519 key-agreement certificate;
                                     enc-key.pem (0600)
    certs/<fingerprint>.pem          every issued certificate, by SHA-256 of its DER
    providers/<provider_id>.pem      each provider's encryption certificate, published

Certificates: the subject's OU names the kind (``sender``, ``vendor``,
``provider``, ``provider-encryption``, ``service`` for DP2's own services and the
Kafka broker). Every signing certificate is also its holder's Kafka principal:
the broker maps a client certificate to ``<kind>:<CN>`` (brokers.stack.access).
A sender carries ``serialNumber=CVR:<8 digits>`` as OCES certificates do. A vendor
lists the CVRs it may send for in a non-critical extension, OID
1.3.6.1.4.1.55555.1.1 (a private arc), whose value is a DER UTF8String of the
comma-separated CVR numbers; a provider issued as a citizen gateway (a connector
that logs citizens in itself) carries 1.3.6.1.4.1.55555.1.2 = UTF8String
``citizens``. A provider has a signing certificate (it signs
DELIVERED events) and a second certificate for its X25519 key with KeyUsage
keyAgreement only; cryptography signs X25519 keys into certificates directly, so
no other format is needed. Keys are unencrypted PKCS#8 PEM: a development PKI,
protected by file mode only (0600 keys, 0700 folders).

Errors are brokers.security.signing.SecurityError: PKI_NOT_INITIALISED, INVALID_CVR,
INVALID_NAME, INVALID_VALIDITY, IDENTITY_EXISTS, UNKNOWN_IDENTITY, BAD_KEY,
CRL_MISSING, CRL_INVALID, UNKNOWN_CERTIFICATE, UNTRUSTED_ISSUER,
CERTIFICATE_NOT_YET_VALID, CERTIFICATE_EXPIRED, CERTIFICATE_REVOKED, UNKNOWN_PROVIDER.

Why one module over 500 lines: issuing is one file layout written by one class; the
checking side is brokers.security.trust.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, TypedDict, Unpack

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from brokers.security.signing import (
    DEFAULT_SIGNATURE_ALGORITHM,
    ECDSA_P256_SHA256,
    SigningKey,
    certificate_fingerprint,
    generate_signing_key,
    sign_event,
    sign_events,
    signature_algorithm,
)
from brokers.security.trust import (
    CITIZEN_GATEWAY_OID,
    CITIZEN_GATEWAY_SCOPE,
    CVR_PATTERN,
    FINGERPRINT_PATTERN,
    NAME_PATTERN,
    ON_BEHALF_OF_OID,
    PROVIDER,
    PROVIDER_ENCRYPTION,
    SENDER,
    SERVICE,
    VENDOR,
    kind_of,
    load_certificate,
    read_crl,
    security_error,
)
from schemas import codec
from schemas.models import LifecycleEvent

CA_DAYS: Final = 3650
CRL_DAYS: Final = 365
_CLOCK_SKEW: Final = timedelta(minutes=5)


def provider_identity_name(provider_id: str) -> str:
    """The identity name under which a provider's keys are kept."""
    return f"provider-{provider_id}"


@dataclass(frozen=True, slots=True)
class Identity:
    """One party's certificate and keys, as issued by :class:`Pki`."""

    name: str
    kind: str
    certificate: x509.Certificate
    private_key: SigningKey = field(repr=False)
    fingerprint: str
    encryption_key: x25519.X25519PrivateKey | None = field(default=None, repr=False)
    encryption_certificate: x509.Certificate | None = None


class IssueOptions(TypedDict, total=False):
    """Options of every issue_* method: validity (days, or explicit bounds for tests),
    signature algorithm (default: the CA's) and whether to replace an existing identity."""

    days: int
    not_before: datetime | None
    not_after: datetime | None
    algorithm: str | None
    force: bool


@dataclass(frozen=True, slots=True)
class EventSigner:
    """Signs the lifecycle events one identity emits."""

    identity: Identity

    @classmethod
    def from_pki(cls, pki_dir: Path, name: str) -> EventSigner:
        """The signer of identity ``name`` (loaded once per process)."""
        return _signer(pki_dir, name)

    def sign(self, event: LifecycleEvent) -> LifecycleEvent:
        if "signature" in event.attributes:
            return event  # signed by the party that made it (a provider's DELIVERED, say)
        return sign_event(event, self.identity.private_key, self.identity.fingerprint)

    def sign_all(self, events: list[LifecycleEvent]) -> list[LifecycleEvent]:
        """``events`` with the unsigned ones signed together (signing.sign_events: one
        signature over their hash tree); those signed already are left as they are."""
        unsigned = [e for e in events if "signature" not in e.attributes]
        if not unsigned:
            return events
        signed = iter(sign_events(unsigned, self.identity.private_key, self.identity.fingerprint))
        return [next(signed) if "signature" not in e.attributes else e for e in events]

    def sign_encoded(self, value: bytes) -> bytes:
        """An encoded lifecycle event, signed (the same bytes if it was signed already)."""
        event = codec.decode(value, LifecycleEvent)
        signed = self.sign(event)
        return value if signed is event else codec.encode(signed)


@functools.lru_cache(maxsize=64)
def _signer(pki_dir: Path, name: str) -> EventSigner:
    return EventSigner(Pki(pki_dir).identity(name))


# --- the issuing side ------------------------------------------------------------------
class Pki:
    """The development CA under `root`: issues, lists and revokes certificates."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_cert_path = root / "ca" / "cert.pem"
        self.ca_key_path = root / "ca" / "key.pem"
        self.crl_path = root / "crl.pem"

    # -- CA and CRL
    def init(
        self, algorithm: str = DEFAULT_SIGNATURE_ALGORITHM, *, force: bool = False
    ) -> x509.Certificate:
        """The root CA, made with an empty CRL unless it exists (or `force` replaces it)."""
        if self.ca_cert_path.exists() and not force:
            return self.ca_certificate()
        key = generate_signing_key(algorithm)
        now = datetime.now(UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "DK"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "DP2 development"),
                # A random suffix tells two development CAs apart in error reports.
                x509.NameAttribute(
                    NameOID.COMMON_NAME, f"DP2 development root CA {os.urandom(4).hex()}"
                ),
            ]
        )
        public = key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )
        digest, pss = _sign_params(key)
        cert = builder.sign(key, digest, rsa_padding=pss)
        _write(self.ca_key_path, _private_pem(key), private=True)
        _write(self.ca_cert_path, cert.public_bytes(serialization.Encoding.PEM))
        self._write_crl(key, cert, [], number=0)
        return cert

    def ca_certificate(self) -> x509.Certificate:
        return load_certificate(self._require_ca())

    def revoked_serials(self) -> frozenset[int]:
        """Serial numbers on the current CRL."""
        return frozenset(r.serial_number for r in self._load_crl())

    def revoke(self, name_or_fingerprint: str) -> list[str]:
        """Put an identity's certificates (or one certificate) on the CRL.

        Returns the fingerprints newly revoked; [] when they already were. A
        provider's signing and encryption certificates are revoked together.
        """
        certificates = self._certificates_of(name_or_fingerprint)
        crl = self._load_crl()
        entries = [(r.serial_number, r.revocation_date_utc) for r in crl]
        known = {serial for serial, _ in entries}
        fresh = [c for c in certificates if c.serial_number not in known]
        if not fresh:
            return []
        now = datetime.now(UTC)
        entries += [(c.serial_number, now) for c in fresh]
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        self._write_crl(self._ca_key(), self.ca_certificate(), entries, number=number + 1)
        return [certificate_fingerprint(c) for c in fresh]

    # -- issuing
    def issue_sender(self, cvr: str, name: str, **options: Unpack[IssueOptions]) -> Identity:
        """An organisation's signing certificate, CVR in the subject's serialNumber."""
        _check_cvr(cvr)
        subject = _subject(name, SENDER, serial_number=f"CVR:{cvr}")
        return self._issue(name, SENDER, subject, [], **options)

    def issue_vendor(
        self, name: str, on_behalf_of: list[str], **options: Unpack[IssueOptions]
    ) -> Identity:
        """A vendor connector's signing certificate, allowed to send for the listed CVRs."""
        if not on_behalf_of:
            raise security_error(
                "INVALID_CVR",
                "a vendor certificate needs at least one CVR to send on behalf of",
                "Pass --on-behalf-of CVR[,CVR...].",
            )
        for cvr in on_behalf_of:
            _check_cvr(cvr)
        value = _der_utf8(",".join(dict.fromkeys(on_behalf_of)))
        extension = x509.UnrecognizedExtension(ON_BEHALF_OF_OID, value)
        subject = _subject(name, VENDOR)
        return self._issue(name, VENDOR, subject, [extension], **options)

    def issue_provider(
        self,
        provider_id: str,
        *,
        citizen_gateway: bool = False,
        **options: Unpack[IssueOptions],
    ) -> Identity:
        """A mailbox provider: a signing certificate plus an X25519 key-agreement certificate.

        The encryption certificate is also published as providers/<provider_id>.pem,
        where senders' trust stores find it. ``citizen_gateway``: the connector logs
        each citizen in itself (forms, mail submission) and may send for any citizen
        (brokers.security.trust.is_citizen_gateway); a plain provider sends only for
        the citizens the register names it for.
        """
        name = provider_identity_name(provider_id)
        _check_name(provider_id)
        # A provider signs an event for every message it receives (DELIVERED, READ,
        # PRINTED...) and few verify them, so the cheapest signer is its default:
        # ECDSA signs in ~50 us where RSA-PSS takes ~900 us (brokers.security's table).
        if not options.get("algorithm"):
            options["algorithm"] = ECDSA_P256_SHA256
        rights: list[x509.ExtensionType] = []
        if citizen_gateway:
            value = _der_utf8(CITIZEN_GATEWAY_SCOPE)
            rights.append(x509.UnrecognizedExtension(CITIZEN_GATEWAY_OID, value))
        subject = _subject(provider_id, PROVIDER)
        signing = self._issue(name, PROVIDER, subject, rights, **options)
        key = x25519.X25519PrivateKey.generate()
        validity = (
            signing.certificate.not_valid_before_utc,
            signing.certificate.not_valid_after_utc,
        )
        subject = _subject(provider_id, PROVIDER_ENCRYPTION)
        cert = self._certify(subject, key.public_key(), validity, [], encrypt=True)
        folder = self.root / "identities" / name
        pem = cert.public_bytes(serialization.Encoding.PEM)
        _write(folder / "enc-key.pem", _private_pem(key), private=True)
        _write(folder / "enc-cert.pem", pem)
        _write(self.root / "providers" / f"{provider_id}.pem", pem)
        return self.identity(name)

    def issue_service(
        self, name: str, hosts: Iterable[str] = (), **options: Unpack[IssueOptions]
    ) -> Identity:
        """A certificate for one of DP2's own services (or the Kafka broker).

        Each service is its own Kafka principal (``service:<name>``, see
        brokers.stack.access). ``hosts`` go into the subjectAltName, which a TLS
        *server* such as the broker needs so clients can check its name.
        """
        if not options.get("algorithm"):
            options["algorithm"] = ECDSA_P256_SHA256  # cheap TLS handshakes and signatures
        extensions: list[x509.ExtensionType] = []
        names = list(hosts)
        if names:
            extensions.append(x509.SubjectAlternativeName([_general_name(h) for h in names]))
        return self._issue(name, SERVICE, _subject(name, SERVICE), extensions, **options)

    def _issue(
        self,
        name: str,
        kind: str,
        subject: x509.Name,
        extensions: list[x509.ExtensionType],
        *,
        days: int = 365,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        algorithm: str | None = None,
        force: bool = False,
    ) -> Identity:
        _check_name(name)
        folder = self.root / "identities" / name
        if (folder / "cert.pem").exists() and not force:
            raise security_error(
                "IDENTITY_EXISTS",
                f"an identity called {name!r} exists already",
                "Choose another name, or re-issue with --force (revoke the old one first).",
            )
        key = generate_signing_key(algorithm or signature_algorithm(self._ca_key()))
        start = not_before or datetime.now(UTC) - _CLOCK_SKEW
        end = not_after or start + timedelta(days=days)
        cert = self._certify(subject, key.public_key(), (start, end), extensions, encrypt=False)
        _write(folder / "key.pem", _private_pem(key), private=True)
        _write(folder / "cert.pem", cert.public_bytes(serialization.Encoding.PEM))
        return self.identity(name)

    def _certify(
        self,
        subject: x509.Name,
        public_key: CertificatePublicKeyTypes,
        validity: tuple[datetime, datetime],
        extensions: list[x509.ExtensionType],
        *,
        encrypt: bool,
    ) -> x509.Certificate:
        """A certificate signed by the CA, also stored under certs/<fingerprint>.pem."""
        if validity[1] <= validity[0]:
            raise security_error(
                "INVALID_VALIDITY",
                "the certificate would expire before it becomes valid",
                "Give a positive --days, or a not_after later than not_before.",
            )
        ca_key, ca_cert = self._ca_key(), self.ca_certificate()
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity[0])
            .not_valid_after(validity[1])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(agreement=True) if encrypt else _key_usage(signing=True), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        algorithm, pss = _sign_params(ca_key)
        cert = builder.sign(ca_key, algorithm, rsa_padding=pss)
        pem = cert.public_bytes(serialization.Encoding.PEM)
        _write(self.root / "certs" / f"{certificate_fingerprint(cert)}.pem", pem)
        return cert

    # -- reading
    def identity(self, name: str) -> Identity:
        """The identity issued under `name` (for a provider: provider_identity_name(id))."""
        folder = self.root / "identities" / name
        if NAME_PATTERN.fullmatch(name) is None or not (folder / "cert.pem").exists():
            raise security_error(
                "UNKNOWN_IDENTITY",
                f"no identity called {name!r} in {self.root}",
                "List identities with: dp2 pki list; issue one with: dp2 pki issue.",
            )
        cert = load_certificate(folder / "cert.pem")
        key = _load_key(folder / "key.pem")
        if isinstance(key, x25519.X25519PrivateKey) or key.public_key() != cert.public_key():
            raise security_error(
                "BAD_KEY",
                f"{name}/key.pem is not the signing key of {name}/cert.pem",
                f"Re-issue the identity with --force and revoke the old certificate ({name}).",
            )
        encryption_key = encryption_cert = None
        if (folder / "enc-cert.pem").exists():
            encryption_cert = load_certificate(folder / "enc-cert.pem")
            loaded = _load_key(folder / "enc-key.pem")
            if not isinstance(loaded, x25519.X25519PrivateKey):
                raise security_error(
                    "BAD_KEY", f"{name}/enc-key.pem is not an X25519 key", "Re-issue it."
                )
            encryption_key = loaded
        return Identity(
            name=name,
            kind=kind_of(cert),
            certificate=cert,
            private_key=key,
            fingerprint=certificate_fingerprint(cert),
            encryption_key=encryption_key,
            encryption_certificate=encryption_cert,
        )

    def names(self) -> list[str]:
        """The names of every issued identity, sorted."""
        folder = self.root / "identities"
        return (
            sorted(p.name for p in folder.iterdir() if (p / "cert.pem").exists())
            if folder.exists()
            else []
        )

    def _certificates_of(self, name_or_fingerprint: str) -> list[x509.Certificate]:
        path = self.root / "certs" / f"{name_or_fingerprint}.pem"
        if FINGERPRINT_PATTERN.fullmatch(name_or_fingerprint) and path.exists():
            return [load_certificate(path)]
        identity = self.identity(name_or_fingerprint)
        return [c for c in (identity.certificate, identity.encryption_certificate) if c is not None]

    def _require_ca(self) -> Path:
        if not self.ca_cert_path.exists():
            raise security_error(
                "PKI_NOT_INITIALISED",
                f"there is no CA in {self.root}",
                "Run: dp2 pki init",
            )
        return self.ca_cert_path

    def _ca_key(self) -> SigningKey:
        self._require_ca()
        key = _load_key(self.ca_key_path)
        if isinstance(key, x25519.X25519PrivateKey):
            raise security_error(
                "BAD_KEY", "the CA key is not a signing key", "Run: dp2 pki init --force"
            )
        return key

    def _load_crl(self) -> x509.CertificateRevocationList:
        self._require_ca()
        return read_crl(self.crl_path)

    def _write_crl(
        self,
        key: SigningKey,
        ca: x509.Certificate,
        entries: Iterable[tuple[int, datetime]],
        *,
        number: int,
    ) -> None:
        now = datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.subject)
            .last_update(now)
            .next_update(now + timedelta(days=CRL_DAYS))
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        for serial, when in entries:
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
            builder = builder.add_revoked_certificate(entry.build())
        algorithm, pss = _sign_params(key)
        crl = builder.sign(key, algorithm, rsa_padding=pss)
        _write(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))


# --- helpers ---------------------------------------------------------------------------
def _check_cvr(cvr: str) -> None:
    if not isinstance(cvr, str) or CVR_PATTERN.fullmatch(cvr) is None:
        raise security_error(
            "INVALID_CVR",
            f"{cvr!r} is not a CVR number",
            "Give the CVR number as a string of 8 digits, with its leading zeros.",
        )


def _check_name(name: str) -> None:
    if NAME_PATTERN.fullmatch(name) is None:
        raise security_error(
            "INVALID_NAME",
            f"{name!r} cannot name an identity",
            "Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )


def _subject(name: str, kind: str, *, serial_number: str | None = None) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DK"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
        x509.NameAttribute(NameOID.COMMON_NAME, name),
    ]
    if serial_number is not None:
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number))
    return x509.Name(attributes)


def _key_usage(
    *, signing: bool = False, agreement: bool = False, cert_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signing,
        content_commitment=signing,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=agreement,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _sign_params(key: SigningKey) -> tuple[hashes.SHA256 | None, padding.PSS | None]:
    """(hash, rsa_padding) for signing certificates and CRLs with the CA key."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None, None
    if isinstance(key, rsa.RSAPrivateKey):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
        return hashes.SHA256(), pss
    return hashes.SHA256(), None


def _general_name(host: str) -> x509.GeneralName:
    """An IP address or a DNS name for a subjectAltName."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _der_utf8(text: str) -> bytes:
    """DER UTF8String (tag 12) of `text`, with a short or long-form length."""
    data = text.encode()
    if len(data) < 0x80:
        return bytes([0x0C, len(data)]) + data
    size = len(data).to_bytes((len(data).bit_length() + 7) // 8, "big")
    return bytes([0x0C, 0x80 | len(size)]) + size + data


def _private_pem(key: SigningKey | x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> SigningKey | x25519.X25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if isinstance(key, x25519.X25519PrivateKey):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        signature_algorithm(key)  # raises for a curve or key size DP2 does not accept
        return key
    raise security_error("BAD_KEY", f"{path} holds an unsupported key", "Re-issue it.")


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write `data` atomically (temp file + rename); mode 0600 for keys, 0644 otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o755)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

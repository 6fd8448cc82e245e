"""brokers.security.pki and .trust: the development CA, the verdicts, the dp2 pki commands."""

import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import x25519

from brokers.cli import build_parser
from brokers.runtime.blobstore import MemoryBlobStore
from brokers.runtime.settings import Settings
from brokers.security import sealing, signing
from brokers.security.pki import Identity, Pki
from brokers.security.pseudonyms import Pseudonymizer
from brokers.security.signing import SecurityError
from brokers.security.trust import ON_BEHALF_OF_OID, TrustStore, kind_of, sender_cvrs
from tests.unit.test_crypto import letter


def now() -> datetime:
    """The time of the check itself: certificates are issued a few minutes back-dated,
    and a clock read at import would fall behind them in a long test session."""
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """An Ed25519 development CA (fast keys) shared by this module's read-only tests."""
    pki = Pki(tmp_path_factory.mktemp("pki"))
    pki.init(signing.ED25519)
    return pki


@pytest.fixture(scope="module")
def sender(pki: Pki) -> Identity:
    """Aarhus Kommune's signing identity."""
    return pki.issue_sender("55133018", "aarhus")


@pytest.fixture(scope="module")
def vendor(pki: Pki) -> Identity:
    """A vendor connector sending for two organisations."""
    return pki.issue_vendor("esdh-vendor", ["55133018", "00012345"])


@pytest.fixture(scope="module")
def provider(pki: Pki) -> Identity:
    """The mailbox provider mitpost."""
    return pki.issue_provider("mitpost")


@pytest.fixture
def fresh_pki(tmp_path: Path) -> Pki:
    """An Ed25519 CA of its own, for tests that revoke or replace things."""
    pki = Pki(tmp_path / "pki")
    pki.init(signing.ED25519)
    return pki


def reason(call: Callable[[], object]) -> str:
    """The reason code of the SecurityError that `call` raises."""
    with pytest.raises(SecurityError) as error:
        call()
    return error.value.reason_code


# --- issuing and verifying each kind ---------------------------------------------------
def test_each_kind_verifies(
    pki: Pki, sender: Identity, vendor: Identity, provider: Identity
) -> None:
    """Sender, vendor and both provider certificates are trusted and valid now."""
    trust = TrustStore(pki.root)
    assert provider.encryption_certificate is not None
    for cert in (
        sender.certificate,
        vendor.certificate,
        provider.certificate,
        provider.encryption_certificate,
    ):
        trust.verify_certificate(cert, now())
    assert [kind_of(i.certificate) for i in (sender, vendor, provider)] == [
        "sender",
        "vendor",
        "provider",
    ]


def test_sender_subject_carries_the_cvr(sender: Identity) -> None:
    """A sender certificate's subject has serialNumber=CVR:<8 digits>."""
    serial = sender.certificate.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)
    assert [a.value for a in serial] == ["CVR:55133018"]


def test_vendor_extension_is_non_critical_der_utf8(vendor: Identity) -> None:
    """The on-behalf-of extension is non-critical and holds a DER UTF8String of the CVRs."""
    extension = vendor.certificate.extensions.get_extension_for_oid(ON_BEHALF_OF_OID)
    assert not extension.critical
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    assert extension.value.value == b"\x0c\x1155133018,00012345"


def test_many_cvrs_use_a_long_form_length(pki: Pki) -> None:
    """A vendor for 30 organisations (over 127 bytes of text) still lists them all."""
    cvrs = [f"{n:08d}" for n in range(30)]
    vendor = pki.issue_vendor("big-vendor", cvrs)
    assert sender_cvrs(vendor.certificate) == frozenset(cvrs)


def test_identity_reads_back_as_issued(pki: Pki, provider: Identity) -> None:
    """Pki.identity returns the certificate and keys that issue_provider wrote."""
    loaded = pki.identity("provider-mitpost")
    assert loaded.fingerprint == provider.fingerprint
    assert loaded.kind == "provider"
    assert isinstance(loaded.encryption_key, x25519.X25519PrivateKey)
    assert loaded.encryption_certificate == provider.encryption_certificate


def test_provider_key_is_the_published_encryption_key(pki: Pki, provider: Identity) -> None:
    """provider_key returns the encryption certificate's fingerprint and X25519 key."""
    assert provider.encryption_key is not None
    assert provider.encryption_certificate is not None
    key_id, key = TrustStore(pki.root).provider_key("mitpost")
    assert key_id == signing.certificate_fingerprint(provider.encryption_certificate)
    assert key.public_bytes_raw() == provider.encryption_key.public_key().public_bytes_raw()


def test_provider_can_open_what_is_sealed_for_it(pki: Pki, provider: Identity) -> None:
    """A letter sealed with the trust store's provider key opens with the identity's key."""
    assert provider.encryption_key is not None
    key_id, key = TrustStore(pki.root).provider_key("mitpost")
    pseudonyms, blobs = Pseudonymizer(b"p" * 32), MemoryBlobStore()
    sealed = sealing.seal_envelope(letter(b"doc"), key, key_id, pseudonyms, blobs)
    assert sealing.open_envelope(sealed, provider.encryption_key, blobs) == letter(b"doc")


def test_unknown_provider(pki: Pki) -> None:
    """A provider that published no key, or a path-like id, gives UNKNOWN_PROVIDER."""
    trust = TrustStore(pki.root)
    assert reason(lambda: trust.provider_key("nobody")) == "UNKNOWN_PROVIDER"
    assert reason(lambda: trust.provider_key("../ca/cert")) == "UNKNOWN_PROVIDER"


def test_certificate_lookup(pki: Pki, sender: Identity) -> None:
    """certificate(fp) finds issued certificates; unknown or path-like names fail."""
    trust = TrustStore(pki.root)
    assert trust.certificate(sender.fingerprint) == sender.certificate
    assert reason(lambda: trust.certificate("0" * 64)) == "UNKNOWN_CERTIFICATE"
    assert reason(lambda: trust.certificate("../ca/cert")) == "UNKNOWN_CERTIFICATE"


@pytest.mark.parametrize("algorithm", signing.SIGNATURE_ALGORITHMS)
def test_every_ca_algorithm_issues_verifiable_certificates(algorithm: str, tmp_path: Path) -> None:
    """A CA of each algorithm signs certificates and CRLs the trust store accepts."""
    pki = Pki(tmp_path)
    pki.init(algorithm)
    identity = pki.issue_sender("12345678", "org", algorithm=signing.ED25519)
    trust = TrustStore(tmp_path)
    trust.verify_certificate(identity.certificate, now())
    pki.revoke("org")
    trust.reload()
    assert reason(lambda: trust.verify_certificate(identity.certificate, now())) == (
        "CERTIFICATE_REVOKED"
    )


def test_issued_keys_follow_the_ca_algorithm(fresh_pki: Pki) -> None:
    """Without --algorithm, an identity gets a key of the CA's algorithm."""
    identity = fresh_pki.issue_sender("12345678", "org")
    assert signing.signature_algorithm(identity.private_key) == signing.ED25519


# --- rejections ------------------------------------------------------------------------
def test_expired_certificate(fresh_pki: Pki) -> None:
    """A certificate past its not_after is CERTIFICATE_EXPIRED."""
    old = fresh_pki.issue_sender(
        "12345678",
        "old",
        not_before=now() - timedelta(days=30),
        not_after=now() - timedelta(days=1),
    )
    trust = TrustStore(fresh_pki.root)
    assert reason(lambda: trust.verify_certificate(old.certificate, now())) == "CERTIFICATE_EXPIRED"


def test_not_yet_valid_certificate(fresh_pki: Pki) -> None:
    """A certificate before its not_before is CERTIFICATE_NOT_YET_VALID."""
    early = fresh_pki.issue_sender("12345678", "early", not_before=now() + timedelta(days=1))
    trust = TrustStore(fresh_pki.root)
    assert reason(lambda: trust.verify_certificate(early.certificate, now())) == (
        "CERTIFICATE_NOT_YET_VALID"
    )
    trust.verify_certificate(early.certificate, now() + timedelta(days=2))


def test_revoked_certificate(fresh_pki: Pki) -> None:
    """A revoked certificate is CERTIFICATE_REVOKED; revoking again changes nothing."""
    identity = fresh_pki.issue_sender("12345678", "gone")
    assert fresh_pki.revoke("gone") == [identity.fingerprint]
    assert fresh_pki.revoke(identity.fingerprint) == []
    trust = TrustStore(fresh_pki.root)
    assert reason(lambda: trust.verify_certificate(identity.certificate, now())) == (
        "CERTIFICATE_REVOKED"
    )


def test_revoking_a_provider_revokes_its_encryption_key(fresh_pki: Pki) -> None:
    """After revoking a provider, nobody can seal for it any more."""
    fresh_pki.issue_provider("closing")
    assert len(fresh_pki.revoke("provider-closing")) == 2
    trust = TrustStore(fresh_pki.root)
    assert reason(lambda: trust.provider_key("closing")) == "CERTIFICATE_REVOKED"


def test_other_ca_is_untrusted_issuer(fresh_pki: Pki, tmp_path: Path) -> None:
    """A certificate from another CA, even with the same names, is UNTRUSTED_ISSUER."""
    other = Pki(tmp_path / "other")
    other.init(signing.ED25519)
    stranger = other.issue_sender("12345678", "org")
    trust = TrustStore(fresh_pki.root)
    assert reason(lambda: trust.verify_certificate(stranger.certificate, now())) == (
        "UNTRUSTED_ISSUER"
    )


def test_ca_certificate_cannot_sign_messages(fresh_pki: Pki) -> None:
    """The self-signed CA certificate is not accepted as an end-entity certificate."""
    trust = TrustStore(fresh_pki.root)
    ca = fresh_pki.ca_certificate()
    assert reason(lambda: trust.verify_certificate(ca, now())) == "UNTRUSTED_ISSUER"


def test_crl_from_another_ca_is_refused(fresh_pki: Pki, tmp_path: Path) -> None:
    """A CRL not signed by our CA (e.g. copied over to un-revoke) fails with CRL_INVALID."""
    other = Pki(tmp_path / "other")
    other.init(signing.ED25519)
    fresh_pki.crl_path.write_bytes(other.crl_path.read_bytes())
    assert reason(TrustStore(fresh_pki.root).reload) == "CRL_INVALID"


def test_deleted_crl_fails_closed(fresh_pki: Pki) -> None:
    """Without a CRL the trust store refuses to work rather than trust revoked certificates."""
    fresh_pki.crl_path.unlink()
    assert reason(TrustStore(fresh_pki.root).reload) == "CRL_MISSING"


def test_uninitialised_pki(tmp_path: Path) -> None:
    """Issuing or trusting before dp2 pki init says to run it."""
    assert reason(lambda: Pki(tmp_path).issue_sender("12345678", "org")) == "PKI_NOT_INITIALISED"
    assert reason(TrustStore(tmp_path).reload) == "PKI_NOT_INITIALISED"


@pytest.mark.parametrize(
    "cvr",
    [
        "1234567",
        "123456789",
        "1234567a",
        "\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18",
        " 12345678",
    ],
)
def test_invalid_cvr(fresh_pki: Pki, cvr: str) -> None:
    """A CVR must be exactly 8 ASCII digits, for senders and vendors alike."""
    assert reason(lambda: fresh_pki.issue_sender(cvr, "org")) == "INVALID_CVR"
    assert reason(lambda: fresh_pki.issue_vendor("vendor", [cvr])) == "INVALID_CVR"


def test_leading_zeros_are_kept(fresh_pki: Pki) -> None:
    """CVR 00012345 stays 00012345 in the certificate."""
    identity = fresh_pki.issue_sender("00012345", "zeros")
    assert sender_cvrs(identity.certificate) == {"00012345"}


def test_identity_names_are_checked_and_not_overwritten(fresh_pki: Pki) -> None:
    """Path-like names are refused; an existing identity is replaced only with force."""
    assert reason(lambda: fresh_pki.issue_sender("12345678", "../x")) == "INVALID_NAME"
    first = fresh_pki.issue_sender("12345678", "org")
    assert reason(lambda: fresh_pki.issue_sender("12345678", "org")) == "IDENTITY_EXISTS"
    second = fresh_pki.issue_sender("12345678", "org", force=True)
    assert second.fingerprint != first.fingerprint


def test_identity_with_a_foreign_key_is_refused(fresh_pki: Pki) -> None:
    """A key.pem that does not belong to its cert.pem (a half-done re-issue) is BAD_KEY."""
    fresh_pki.issue_sender("12345678", "one")
    fresh_pki.issue_sender("12345678", "two")
    folder = fresh_pki.root / "identities"
    (folder / "one" / "key.pem").write_bytes((folder / "two" / "key.pem").read_bytes())
    assert reason(lambda: fresh_pki.identity("one")) == "BAD_KEY"


def test_init_is_idempotent_unless_forced(fresh_pki: Pki) -> None:
    """A second init keeps the CA; force makes a new one, which no longer trusts old certs."""
    ca = fresh_pki.ca_certificate()
    identity = fresh_pki.issue_sender("12345678", "org")
    assert fresh_pki.init(signing.ED25519) == ca
    assert fresh_pki.init(signing.ED25519, force=True) != ca
    trust = TrustStore(fresh_pki.root)
    assert reason(lambda: trust.verify_certificate(identity.certificate, now())) == (
        "UNTRUSTED_ISSUER"
    )


# --- sending rights --------------------------------------------------------------------
def test_vendor_may_send_only_for_its_cvrs(pki: Pki, vendor: Identity) -> None:
    """A vendor may send for each listed CVR and for no other."""
    trust = TrustStore(pki.root)
    assert trust.may_send_as(vendor.certificate, "55133018")
    assert trust.may_send_as(vendor.certificate, "00012345")
    assert not trust.may_send_as(vendor.certificate, "12345678")
    assert not trust.may_send_as(vendor.certificate, "0001234")


def test_sender_may_send_only_as_itself(pki: Pki, sender: Identity, provider: Identity) -> None:
    """A sender may send for its own CVR; a provider for none."""
    trust = TrustStore(pki.root)
    assert trust.may_send_as(sender.certificate, "55133018")
    assert not trust.may_send_as(sender.certificate, "00012345")
    assert not trust.may_send_as(provider.certificate, "55133018")


# --- reload and caching ----------------------------------------------------------------
def test_reload_sees_a_revocation(fresh_pki: Pki) -> None:
    """A running trust store picks up a revocation at its next reload()."""
    identity = fresh_pki.issue_sender("12345678", "org")
    trust = TrustStore(fresh_pki.root)
    trust.verify_certificate(identity.certificate, now())
    version = trust.crl_version
    trust.reload()
    assert trust.crl_version == version  # nothing changed: nothing re-read
    fresh_pki.revoke("org")
    trust.reload()
    assert trust.crl_version == version + 1
    assert reason(lambda: trust.verify_certificate(identity.certificate, now())) == (
        "CERTIFICATE_REVOKED"
    )


def test_reload_sees_a_new_provider_key(fresh_pki: Pki) -> None:
    """Re-issuing a provider replaces the key that senders seal for."""
    trust = TrustStore(fresh_pki.root)
    fresh_pki.issue_provider("mitpost")
    first, _ = trust.provider_key("mitpost")
    fresh_pki.issue_provider("mitpost", force=True)
    second, _ = trust.provider_key("mitpost")
    assert first != second


# --- dp2 pki ---------------------------------------------------------------------------
def run(home: Path, *argv: str) -> int:
    """Parse `dp2 pki ...` with the registered commands and run it against `home`."""
    settings = Settings.from_env({"DP2_HOME": str(home)})
    args = build_parser(["pki", *argv]).parse_args(["pki", *argv])
    code: int = args.func(settings, args)
    return code


def test_cli_creates_identities_with_private_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """dp2 pki init/issue write the layout, with every private key at mode 0600."""
    assert run(tmp_path, "init", "--algorithm", "Ed25519") == 0
    assert run(tmp_path, "issue", "sender", "--cvr", "55133018", "--name", "aarhus") == 0
    assert (
        run(tmp_path, "issue", "vendor", "--name", "v", "--on-behalf-of", "55133018,00012345") == 0
    )
    assert run(tmp_path, "issue", "provider", "--id", "mitpost") == 0
    root = tmp_path / "pki"
    keys = [
        root / "ca" / "key.pem",
        root / "identities" / "aarhus" / "key.pem",
        root / "identities" / "v" / "key.pem",
        root / "identities" / "provider-mitpost" / "key.pem",
        root / "identities" / "provider-mitpost" / "enc-key.pem",
    ]
    for key in keys:
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, key
    assert (root / "providers" / "mitpost.pem").exists()
    assert (root / "crl.pem").exists()
    assert len(list((root / "certs").glob("*.pem"))) == 4
    identity = Pki(root).identity("aarhus")
    assert identity.fingerprint in capsys.readouterr().out


def test_cli_revoke_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """dp2 pki revoke marks an identity revoked in dp2 pki list; a second revoke is a no-op."""
    run(tmp_path, "init", "--algorithm", "Ed25519")
    run(tmp_path, "issue", "sender", "--cvr", "55133018", "--name", "aarhus")
    capsys.readouterr()
    assert run(tmp_path, "revoke", "aarhus") == 0
    assert "revoked" in capsys.readouterr().out
    assert run(tmp_path, "revoke", "aarhus") == 0
    assert "already revoked" in capsys.readouterr().out
    assert run(tmp_path, "list") == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("aarhus") and "revoked" in line and "55133018" in line

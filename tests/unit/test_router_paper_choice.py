"""The router honours a sender's signed choice of paper, and never prints a digital letter.

SF1601's ``Fysisk Post`` is sealed for the print provider even for a recipient on
digital post; ``Digital Post`` is sealed for the recipient's mailbox provider. The
router's rules decide on the register and the envelope's key id (covered by the
sender's signature), with a real PKI and trust store and no broker.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from brokers.contacts.register import ContactRegister
from brokers.router.rules import Router
from brokers.router.schedule import ScheduleStore
from brokers.security.pki import Pki
from brokers.security.pseudonyms import Pseudonymizer
from brokers.security.trust import TrustStore
from schemas import codec
from schemas.models import (
    ContactRecord,
    ContactStatus,
    Encryption,
    Envelope,
    IdType,
    LifecycleEvent,
    MessageHeader,
    MessageType,
    Recipient,
    Sender,
)
from schemas.vocabulary import PRINT_PROVIDER, PRINT_TOPIC, provider_topic

REF = "psn-registered"


class _Directory:
    """The register as the router reads it: one record per pseudonym."""

    def __init__(self, status: ContactStatus) -> None:
        self._record = ContactRecord(
            recipientRef=REF,
            idType=IdType.CPR,
            status=status,
            mailboxProvider="mitpost" if status is ContactStatus.REGISTERED else None,
            updatedAt=datetime.now(UTC),
        )

    def get(self, ref: str) -> ContactRecord | None:
        return self._record if ref == REF else None


@pytest.fixture(scope="module")
def trust(tmp_path_factory: pytest.TempPathFactory) -> TrustStore:
    """A development PKI with the print provider and one mailbox provider published."""
    pki = Pki(tmp_path_factory.mktemp("pki"))
    pki.init()
    pki.issue_provider(PRINT_PROVIDER)
    pki.issue_provider("mitpost")
    return TrustStore(pki.root)


def _router(trust: TrustStore, status: ContactStatus, tmp_path: Path) -> Router:
    return Router(
        contacts=cast(ContactRegister, _Directory(status)),
        trust=trust,
        pseudonyms=Pseudonymizer(b"unit-test-pseudonym-key-32-bytes"),
        schedule=ScheduleStore(tmp_path / "router.sqlite"),
    )


def _sealed_for(trust: TrustStore, provider: str) -> Envelope:
    key_id, _ = trust.provider_key(provider)
    return Envelope(
        memoVersion="1.2",
        header=MessageHeader(
            messageType=MessageType.DIGITALPOST,
            messageUUID="7d3e4c2a-1b0f-4e8d-9c7b-6a5f4e3d2c1b",
            label="Afgørelse",
            sender=Sender(senderID="29189846", idType=IdType.CVR, label="Aarhus Kommune"),
            recipient=Recipient(recipientID=REF, idType=IdType.CPR),
        ),
        encryption=Encryption(
            contentAlgorithm="AES-256-GCM",
            keyWrapAlgorithm="X25519-HKDF-SHA256-AESKW",
            wrappedKey=b"\0" * 40,
            recipientKeyId=key_id,
        ),
    )


def _routed(outputs: list[Any]) -> tuple[str, LifecycleEvent]:
    *letters, event = outputs
    decoded = codec.decode(event.value, LifecycleEvent)
    return (letters[0].topic if letters else ""), decoded


def test_a_letter_sealed_for_print_is_printed_though_the_recipient_is_registered(
    trust: TrustStore, tmp_path: Path
) -> None:
    """Sealed for print, registered recipient: dp2.print, ROUTED on channel print."""
    router = _router(trust, ContactStatus.REGISTERED, tmp_path)
    topic, event = _routed(router.route_now(_sealed_for(trust, PRINT_PROVIDER), b"raw", REF))
    assert topic == PRINT_TOPIC
    assert event.state.value == "ROUTED" and event.channel == "print"
    assert event.attributes["provider"] == PRINT_PROVIDER
    assert event.reasonText == "the sender sealed it for print"


def test_a_letter_sealed_for_the_mailbox_is_delivered_digitally(
    trust: TrustStore, tmp_path: Path
) -> None:
    """Sealed for the recipient's mailbox provider: its delivery topic, channel digital."""
    router = _router(trust, ContactStatus.REGISTERED, tmp_path)
    topic, event = _routed(router.route_now(_sealed_for(trust, "mitpost"), b"raw", REF))
    assert topic == provider_topic("mitpost").name and event.channel == "digital"


def test_a_digital_letter_never_falls_back_to_paper(trust: TrustStore, tmp_path: Path) -> None:
    """Sealed for a mailbox, recipient now exempt: FAILED ENCRYPTED_FOR_OTHER_PROVIDER."""
    router = _router(trust, ContactStatus.EXEMPT, tmp_path)
    [failed] = router.route_now(_sealed_for(trust, "mitpost"), b"raw", REF)
    event = codec.decode(failed.value, LifecycleEvent)
    assert event.state.value == "FAILED" and event.reasonCode == "ENCRYPTED_FOR_OTHER_PROVIDER"


def test_a_letter_sealed_for_print_to_an_exempt_recipient_is_printed(
    trust: TrustStore, tmp_path: Path
) -> None:
    """The usual paper route is unchanged: exempt and sealed for print goes to dp2.print."""
    router = _router(trust, ContactStatus.EXEMPT, tmp_path)
    topic, event = _routed(router.route_now(_sealed_for(trust, PRINT_PROVIDER), b"raw", REF))
    assert topic == PRINT_TOPIC and event.reasonText == "recipient EXEMPT"

"""Evidence anyone can verify (issue 14): signed lifecycle events, one authority table.

Every attack here worked on the old code (tried first): an unsigned READ and DELIVERED
turned a SCHEDULED letter's trace to READ, a forged DELIVERED queued an SMS, garbage
with a victim's UUID in a header turned its trace to REJECTED, and a badly signed
record squatted a UUID so the genuine letter was answered DUPLICATE. Each test forges
through the public interface (a principal that may write the topic) and asserts that
the trace, the notifier's SMTP and SMS peers and the ESDH receipts show nothing of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import urllib.request
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from brokers.runtime.host import ServiceHost
from brokers.runtime.records import CLAIMED_UUID_ATTRIBUTE, position_uuid_of
from brokers.security import signing
from brokers.security.pki import Pki
from connectors.sdk import Document, build_message
from schemas import codec
from schemas.models import LifecycleEvent, LifecycleState
from schemas.vocabulary import LIFECYCLE_TOPIC, MESSAGE_UUID_HEADER, SUBMITTED_TOPIC
from tests.integration.conftest import (
    PROVIDER,
    REGISTERED_CPR,
    SENDER,
    SENDER_CVR,
    Esdh,
    Stack,
)
from tests.integration.test_notify import Peers, new_recipient, notifier, peers  # noqa: F401
from tracing.quarantine import QuarantineStore

pytestmark = pytest.mark.kafka

S = LifecycleState
INTRUDER = "andenpost"  # a provider that exists, but to which nothing was routed
SERVICE_STATES = {
    S.ACCEPTED,
    S.DUPLICATE,
    S.REJECTED,
    S.ROUTED,
    S.SCHEDULED,
    S.RECALLED,
    S.EXPIRED,
    S.NOTIFIED,
    S.NOTIFICATION_FAILED,
}
TABLE_STATES = [s for s in S if s is not S.UNKNOWN]


async def _intruder(stack: Stack) -> str:
    name = f"provider-{INTRUDER}"
    if name not in stack.pki.names():
        stack.pki.issue_provider(INTRUDER)
        await stack.apply_acls()
    return name


async def _produce(stack: Stack, as_identity: str, topic: str, value: bytes, **kw: Any) -> str:
    """A raw producer of ``as_identity`` (nothing signs on the way, unlike DP2's own);
    returns where the record landed, ``topic/partition/offset``."""
    producer = AIOKafkaProducer(**stack.kafka(as_identity).client_options(), acks="all")
    await producer.start()
    try:
        metadata = await producer.send_and_wait(topic, value, **kw)
    finally:
        await producer.stop()
    return f"{metadata.topic}/{metadata.partition}/{metadata.offset}"


def _event(message_uuid: str, state: LifecycleState, **kw: Any) -> LifecycleEvent:
    return LifecycleEvent(
        eventId=str(uuid.uuid4()),
        messageUUID=message_uuid,
        state=state,
        actor=kw.pop("actor", f"mailbox:{PROVIDER}"),
        occurredAt=datetime.now(UTC),
        sequence=1,
        senderID=kw.pop("senderID", SENDER_CVR),
        **kw,
    )


def _signed_by(stack: Stack, identity: str, event: LifecycleEvent) -> LifecycleEvent:
    signer = stack.pki.identity(identity)
    return signing.sign_event(event, signer.private_key, signer.fingerprint)


def _quarantine(stack: Stack) -> QuarantineStore:
    return QuarantineStore(stack.settings.home / "data" / "quarantine.sqlite")


async def _quarantined(stack: Stack, event_ids: set[str], timeout: float = 30) -> dict[str, str]:
    """event id -> reason code, once every one of ``event_ids`` is in the quarantine."""
    store = _quarantine(stack)
    try:
        async with asyncio.timeout(timeout):
            while True:
                found = {q.event_id: q.reason_code for q in store.recent(limit=10_000)}
                if event_ids <= set(found):
                    return {e: found[e] for e in event_ids}
                await asyncio.sleep(0.2)
    finally:
        store.close()


async def _scheduled_letter(stack: Stack) -> str:
    async with stack.client() as client:
        receipt = await client.send(
            build_message(
                sender_cvr=SENDER_CVR,
                sender_label="Aarhus Kommune",
                recipient_id=REGISTERED_CPR,
                label="Indkaldelse",
                documents=[Document("brev.txt", "text/plain", b"Hej")],
                do_not_deliver_until=date.today() + timedelta(days=30),
            )
        )
    await stack.wait_trace(receipt.message_uuid, "SCHEDULED")
    return receipt.message_uuid


def _timeline(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["eventId"], e["state"]) for e in doc["timeline"]]


async def test_no_forged_event_of_any_state_changes_a_trace(stack: Stack) -> None:
    """For every state: unsigned, signed by the wrong actor, tampered, and signed by an
    unknown CA are each quarantined with their own reason; the victim's trace is unchanged."""
    intruder = await _intruder(stack)
    victim = await _scheduled_letter(stack)
    before = await asyncio.to_thread(stack.trace, victim)
    assert before is not None and before["state"] == "SCHEDULED"
    other_ca = Pki(stack.settings.home / f"other-ca-{uuid.uuid4().hex[:6]}")
    other_ca.init()
    stranger = other_ca.issue_provider(PROVIDER)  # the right name, from the wrong CA
    expected: dict[str, str] = {}
    for state in TABLE_STATES:
        unsigned = _event(victim, state)
        wrong_signer = intruder if state in SERVICE_STATES else "dp2-notifier"
        wrong = _signed_by(stack, wrong_signer, _event(victim, state))
        genuine = _signed_by(stack, "dp2-router", _event(victim, state))
        tampered = dataclasses.replace(genuine, reasonText="rewritten after signing")
        unknown = signing.sign_event(
            _event(victim, state), stranger.private_key, stranger.fingerprint
        )
        for event, code in (
            (unsigned, "EVENT_UNSIGNED"),
            (wrong, "EVENT_WRONG_ACTOR"),
            (tampered, "EVENT_SIGNATURE_INVALID"),
            (unknown, "EVENT_SIGNER_UNKNOWN"),
        ):
            await _produce(
                stack, intruder, LIFECYCLE_TOPIC, codec.encode(event), key=victim.encode()
            )
            expected[event.eventId] = code
    reasons = await _quarantined(stack, set(expected))
    wrong_codes = {
        e: (reasons[e], expected[e])
        for e in expected
        if reasons[e] != expected[e]
        # DELIVERED & co. by a provider to whom nothing was routed is the sharper reason.
        and not (expected[e] == "EVENT_WRONG_ACTOR" and reasons[e] == "EVENT_NOT_ROUTED_HERE")
    }
    assert not wrong_codes
    after = await asyncio.to_thread(stack.trace, victim)
    assert after is not None and after["state"] == "SCHEDULED"
    assert _timeline(after) == _timeline(before)


async def test_another_provider_and_a_revoked_sender_are_not_believed(stack: Stack) -> None:
    """DELIVERED and READ from a provider the letter was not routed to, and SUBMITTED
    signed by a revoked certificate that could send for the CVR, are quarantined."""
    intruder = await _intruder(stack)
    victim = await _scheduled_letter(stack)
    name = f"revoked-{uuid.uuid4().hex[:6]}"
    stack.pki.issue_sender(SENDER_CVR, name)
    stack.pki.revoke(name)
    delivered = _signed_by(stack, intruder, _event(victim, S.DELIVERED))
    read = _signed_by(stack, intruder, _event(victim, S.READ))
    revoked = _signed_by(stack, name, _event(victim, S.SUBMITTED))
    events = {
        delivered.eventId: "EVENT_NOT_ROUTED_HERE",
        read.eventId: "EVENT_NOT_ROUTED_HERE",
        revoked.eventId: "EVENT_SIGNER_NOT_TRUSTED",
    }
    for event in (delivered, read, revoked):
        await _produce(stack, intruder, LIFECYCLE_TOPIC, codec.encode(event), key=victim.encode())
    assert await _quarantined(stack, set(events)) == events
    doc = await asyncio.to_thread(stack.trace, victim)
    assert doc is not None and doc["state"] == "SCHEDULED"


async def _metric(host: ServiceHost, name: str) -> float:
    """A counter's total over its labels, read from the service's /metrics (off the loop
    that serves it)."""
    assert host.url is not None
    text = await asyncio.to_thread(_get, f"{host.url}/metrics")
    return sum(float(v) for v in re.findall(rf"^{name}_total{{[^}}]*}} (\S+)$", text, re.M))


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - 127.0.0.1
        text: str = response.read().decode()
    return text


async def test_a_forged_delivered_sends_no_notification(
    stack: Stack,
    peers: Peers,  # noqa: F811 - the fixture imported above
    notifier: ServiceHost,  # noqa: F811
) -> None:
    """An unsigned DELIVERED with a NemSMS text, and one by another provider, for a held
    letter to a registered citizen with e-mail and SMS: no e-mail, no SMS, both refused."""
    intruder = await _intruder(stack)
    recipient = await new_recipient(stack)
    ref = stack.pseudonyms.ref("CPR", recipient.cpr)
    async with stack.client() as client:
        receipt = await client.send(
            build_message(
                sender_cvr=SENDER_CVR,
                sender_label="Aarhus Kommune",
                recipient_id=recipient.cpr,
                label="Venter",
                documents=[Document("brev.txt", "text/plain", b"Hej")],
                do_not_deliver_until=date.today() + timedelta(days=30),
            )
        )
        await client.wait_for(receipt.message_uuid, {"SCHEDULED"})
    victim = receipt.message_uuid
    before = await _metric(notifier, "dp2_notifier_unbelieved_events")
    forged = [
        _event(victim, S.DELIVERED, recipientRef=ref, attributes={"nemSmsText": "Betal nu"}),
        _signed_by(stack, intruder, _event(victim, S.DELIVERED, recipientRef=ref)),
    ]
    for event in forged:
        await _produce(stack, intruder, LIFECYCLE_TOPIC, codec.encode(event), key=victim.encode())
    async with asyncio.timeout(120):  # a notifier started now reads the session's events first
        while await _metric(notifier, "dp2_notifier_unbelieved_events") < before + 2:
            await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # the dispatch loop would have sent by now (poll 0.5 s)
    assert peers.smtp.to(recipient.email) == []
    assert not [m for m in peers.a.sent + peers.b.sent if m.get("to") == recipient.phone]


async def test_a_forged_event_is_no_business_receipt(stack: Stack, esdh: Esdh) -> None:
    """A DELIVERED and READ on the authority's letter by a provider it was not routed to,
    and an unsigned one, never reach the case system as receipts."""
    intruder = await _intruder(stack)
    message = build_message(
        sender_cvr="29189846",
        sender_label="Aarhus Kommune",
        recipient_id=REGISTERED_CPR,
        label="Venter på dato",
        documents=[Document("brev.txt", "text/plain", b"Hej")],
        do_not_deliver_until=date.today() + timedelta(days=30),
    )
    from schemas import memo  # noqa: PLC0415 - only this test writes MeMo

    status, body = await esdh.post(memo.to_xml(message))
    assert status == 202, body
    victim = body["messageUUID"]
    await stack.wait_trace(victim, "SCHEDULED")
    before = await _metric(esdh.host, "dp2_esdh_unbelieved_events")
    for event in (
        _event(victim, S.DELIVERED, senderID="29189846"),
        _signed_by(stack, intruder, _event(victim, S.READ, senderID="29189846")),
    ):
        await _produce(stack, intruder, LIFECYCLE_TOPIC, codec.encode(event), key=victim.encode())
    async with asyncio.timeout(30):
        while await _metric(esdh.host, "dp2_esdh_unbelieved_events") < before + 2:
            await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # the receipts loop polls every 0.2 s
    states = esdh.peer.states_of(victim)
    assert "SCHEDULED" in states
    assert "DELIVERED" not in states and "READ" not in states


async def test_garbage_naming_a_delivered_letter_is_not_pinned_on_it(stack: Stack) -> None:
    """Undecodable bytes on dp2.submitted with a header naming a delivered letter are
    REJECTED on their own timeline; the letter's trace keeps DELIVERED and gains nothing."""
    async with stack.client() as client:
        receipt = await client.send(
            build_message(
                sender_cvr=SENDER_CVR,
                sender_label="Aarhus Kommune",
                recipient_id=REGISTERED_CPR,
                label="Leveret",
                documents=[Document("brev.txt", "text/plain", b"Hej")],
            )
        )
    victim = receipt.message_uuid
    before = await stack.wait_trace(victim, "DELIVERED")
    source = await _produce(
        stack,
        SENDER,
        SUBMITTED_TOPIC,
        os.urandom(64),
        key=b"psn-x",
        headers=[(MESSAGE_UUID_HEADER, victim.encode())],
    )
    # The REJECTED lands on a timeline of its own, derived from where the record was.
    own = await stack.wait_trace(position_uuid_of(source), "REJECTED")
    assert own["state"] == "REJECTED"
    after = await asyncio.to_thread(stack.trace, victim)
    assert after is not None and after["state"] == "DELIVERED"
    assert _timeline(after) == _timeline(before)


async def test_a_badly_signed_record_cannot_squat_a_uuid(stack: Stack) -> None:
    """A record with a fresh UUID and a bad signature is REJECTED on its own timeline;
    the genuine letter with that UUID, sent later, is DELIVERED (not DUPLICATE)."""
    async with stack.client() as client:
        genuine = build_message(
            sender_cvr=SENDER_CVR,
            sender_label="Aarhus Kommune",
            recipient_id=REGISTERED_CPR,
            label="Ægte",
            documents=[Document("brev.txt", "text/plain", b"Hej")],
        )
        signed, ref = client.seal_and_sign(genuine)
        assert signed.signature is not None
        forged = dataclasses.replace(
            signed, signature=dataclasses.replace(signed.signature, value=os.urandom(64))
        )
        squat = await client.submit(
            codec.encode(forged), signed.header.messageUUID, ref, sender_id=SENDER_CVR
        )
        rejected = await client.wait_for(squat.message_uuid, {"REJECTED"})
        assert rejected.reasonCode == "SIGNATURE_INVALID"
        assert rejected.messageUUID != signed.header.messageUUID  # its own timeline
        assert rejected.attributes[CLAIMED_UUID_ATTRIBUTE] == signed.header.messageUUID
        receipt = await client.send(genuine)
        delivered = await client.wait_for(receipt.message_uuid, {"DELIVERED", "DUPLICATE"})
        assert delivered.state is S.DELIVERED
    doc = await stack.wait_trace(receipt.message_uuid, "DELIVERED")
    assert doc["state"] == "DELIVERED"
    assert "REJECTED" not in [e["state"] for e in doc["timeline"]]


def test_the_quarantine_store_keeps_one_row_per_position(tmp_path: Path) -> None:
    """Re-reading a refused event (a restart) adds no second quarantine row."""
    from brokers.security.authority import Verdict  # noqa: PLC0415

    store = QuarantineStore(tmp_path / "q.sqlite")
    event = _event(str(uuid.uuid4()), S.DELIVERED)
    verdict = Verdict(ok=False, signer="", reason_code="EVENT_UNSIGNED", reason="no signature")
    assert store.add(event, verdict, "dp2.lifecycle/0/7")
    assert not store.add(event, verdict, "dp2.lifecycle/0/7")
    assert [q.reason_code for q in store.of_message(event.messageUUID)] == ["EVENT_UNSIGNED"]
    store.close()

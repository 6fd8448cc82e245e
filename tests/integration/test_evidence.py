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
import base64
import dataclasses
import json
import os
import re
import sqlite3
import subprocess
import sys
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
from schemas.models import ContactStatus, Envelope, IdType, LifecycleEvent, LifecycleState, Sender
from schemas.vocabulary import (
    DIRECTORY_TOPIC,
    LIFECYCLE_TOPIC,
    MESSAGE_UUID_HEADER,
    REGISTER_SIGNATURE_HEADER,
    SUBMITTED_TOPIC,
)
from tests.integration.conftest import (
    AUTHORITY_CVR,
    ESDH_PROVIDER,
    EXEMPT_CPR,
    PROVIDER,
    REGISTERED_CPR,
    SENDER,
    SENDER_CVR,
    Esdh,
    Stack,
)
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


async def test_a_batch_signature_cannot_be_borrowed_through_kafka(stack: Stack) -> None:
    """The router's events signed as one batch (as its rounds are, signing.sign_events)
    are believed; then an intruder publishes on dp2.lifecycle: one of them moved onto
    the victim's letter with its signature and proof, one carrying another's proof,
    and a tree of its own under the router's real signature. Tracing has checked the
    batch's root already; each is quarantined EVENT_SIGNATURE_INVALID, the victim's
    trace is unchanged."""
    intruder = await _intruder(stack)
    victim = await _scheduled_letter(stack)
    before = await asyncio.to_thread(stack.trace, victim)
    router = stack.pki.identity("dp2-router")
    others = [str(uuid.uuid4()) for _ in range(3)]
    batch = signing.sign_events(
        [_event(m, S.SCHEDULED, actor="router") for m in others],
        router.private_key,
        router.fingerprint,
    )
    for event in batch:
        await _produce(
            stack,
            "dp2-router",
            LIFECYCLE_TOPIC,
            codec.encode(event),
            key=event.messageUUID.encode(),
        )
    for event in batch:
        await stack.wait_trace(event.messageUUID, "SCHEDULED")
    own = [_event(victim, S.RECALLED, actor="router") for _ in range(3)]
    forged_tree = signing.sign_events(own, *_own_key(stack, intruder))
    signature = batch[0].attributes["signature"]
    attacks = [
        dataclasses.replace(batch[0], messageUUID=victim, state=S.RECALLED),
        dataclasses.replace(
            batch[1],
            attributes={**batch[1].attributes, "batchProof": batch[2].attributes["batchProof"]},
        ),
        *(
            dataclasses.replace(
                e, attributes={**e.attributes, "signer": router.fingerprint, "signature": signature}
            )
            for e in forged_tree
        ),
    ]
    for event in attacks:
        await _produce(stack, intruder, LIFECYCLE_TOPIC, codec.encode(event), key=victim.encode())
    reasons = await _quarantined(stack, {e.eventId for e in attacks})
    assert set(reasons.values()) == {"EVENT_SIGNATURE_INVALID"}, reasons
    after = await asyncio.to_thread(stack.trace, victim)
    assert after is not None and _timeline(after) == _timeline(before)


def _own_key(stack: Stack, identity: str) -> tuple[signing.SigningKey, str]:
    """An identity's own key and fingerprint (the intruder builds trees, as anyone can)."""
    own = stack.pki.identity(identity)
    return own.private_key, own.fingerprint


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


async def test_an_envelope_that_skipped_the_validator_is_refused_at_delivery(
    stack: Stack,
) -> None:
    """A vendor-signed envelope with a sender CVR the vendor may not use, produced straight
    to the provider's delivery topic (as a compromised router could), is FAILED
    SENDER_NOT_AUTHORISED by the mailbox and never stored."""
    vendor = f"vendor-{uuid.uuid4().hex[:6]}"
    stack.pki.issue_vendor(vendor, on_behalf_of=["11111111"])
    await stack.apply_acls()
    async with stack.client(vendor) as client:
        signed, ref = client.seal_and_sign(
            build_message(
                sender_cvr=SENDER_CVR,  # not among the vendor's CVRs
                sender_label="Aarhus Kommune",
                recipient_id=REGISTERED_CPR,
                label="Forbi validatoren",
                documents=[Document("brev.txt", "text/plain", b"Hej")],
            )
        )
        message_uuid = signed.header.messageUUID
        producer = AIOKafkaProducer(**stack.admin.client_options(), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                f"dp2.deliver.{PROVIDER}", codec.encode(signed), key=ref.encode()
            )
        finally:
            await producer.stop()
        failed = await client.wait_for(message_uuid, {"FAILED", "DELIVERED"})
    assert failed.state is S.FAILED and failed.reasonCode == "SENDER_NOT_AUTHORISED"
    assert stack.mailbox_store().get(message_uuid) is None


def _citizen_question(cpr: str, label: str) -> Envelope:
    """A citizen's message to the test authority (what a mailbox app or form sends)."""
    message = build_message(
        sender_cvr=AUTHORITY_CVR,  # replaced below: the sender is the citizen
        sender_label="Borger",
        recipient_id=AUTHORITY_CVR,
        recipient_id_type=IdType.CVR,
        label=label,
        documents=[Document("spoergsmaal.txt", "text/plain", b"Hvornaar?")],
    )
    citizen = Sender(senderID=cpr, idType=IdType.CPR, label="Karen Jensen")
    return dataclasses.replace(message, header=dataclasses.replace(message.header, sender=citizen))


async def test_a_citizen_message_from_another_provider_is_refused(stack: Stack, esdh: Esdh) -> None:
    """A provider certificate that is not the citizen's own (the register names mitpost)
    and no citizen gateway may not send as that citizen: REJECTED NOT_CITIZENS_PROVIDER
    by the validator, and the same envelope produced straight to the authority's
    delivery topic is FAILED NOT_CITIZENS_PROVIDER there and never journaled. Nor may
    the right provider send for a citizen it has no mailbox for (EXEMPT)."""
    intruder = await _intruder(stack)
    async with stack.client(intruder) as client:
        forged = _citizen_question(REGISTERED_CPR, "Ikke min udbyder")
        signed, ref = client.seal_and_sign(forged)
        message_uuid = signed.header.messageUUID
        await client.submit(codec.encode(signed), message_uuid, ref)
        rejected = await client.wait_for(message_uuid, {"REJECTED", "ACCEPTED"})
        assert (rejected.state, rejected.reasonCode) == (S.REJECTED, "NOT_CITIZENS_PROVIDER")
        assert rejected.reasonText and "--citizen-gateway" in rejected.reasonText

        past_validator = _citizen_question(REGISTERED_CPR, "Forbi validatoren")
        signed, ref = client.seal_and_sign(past_validator)
        skipped = signed.header.messageUUID
        producer = AIOKafkaProducer(**stack.admin.client_options(), acks="all")
        await producer.start()
        try:  # as a compromised router could
            await producer.send_and_wait(
                f"dp2.deliver.{ESDH_PROVIDER}", codec.encode(signed), key=ref.encode()
            )
        finally:
            await producer.stop()
        failed = await client.wait_for(skipped, {"FAILED", "DELIVERED"})
    assert (failed.state, failed.reasonCode) == (S.FAILED, "NOT_CITIZENS_PROVIDER")

    async with stack.client(f"provider-{PROVIDER}") as own_provider:
        not_a_customer = _citizen_question(EXEMPT_CPR, "Ikke paa digital post")
        receipt = await own_provider.send(not_a_customer)
        refused = await own_provider.wait_for(receipt.message_uuid, {"REJECTED", "ACCEPTED"})
        assert (refused.state, refused.reasonCode) == (S.REJECTED, "NOT_CITIZENS_PROVIDER")
        assert refused.reasonText and "no mailbox" in refused.reasonText
        # The citizen's own provider is believed (the mailbox app's reply path).
        genuine = await own_provider.send(_citizen_question(REGISTERED_CPR, "Min udbyder"))
    # Journaled after the refused ones were judged: the journal queue is past them.
    await stack.wait_trace(genuine.message_uuid, "JOURNALED")
    journaled = {entry["messageUUID"] for entry in esdh.peer.journal}
    assert genuine.message_uuid in journaled
    assert message_uuid not in journaled and skipped not in journaled


# --- the verifiable log and receipts ---------------------------------------------------------
async def _delivered(stack: Stack, label: str) -> str:
    async with stack.client() as client:
        receipt = await client.send(
            build_message(
                sender_cvr=SENDER_CVR,
                sender_label="Aarhus Kommune",
                recipient_id=REGISTERED_CPR,
                label=label,
                documents=[Document("brev.txt", "text/plain", b"Hej")],
            )
        )
    await stack.wait_trace(receipt.message_uuid, "DELIVERED")
    return receipt.message_uuid


def _receipt_of(stack: Stack, message_uuid: str) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - our own service on 127.0.0.1
        f"{stack.tracing_url}/messages/{message_uuid}/receipt",
        headers={"Authorization": f"Bearer {stack.operator_token()}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        doc: dict[str, Any] = json.loads(response.read())
    return doc


def _dp2(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DP2_HOME": str(stack.settings.home),
        "DP2_PKI": str(stack.settings.pki_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "brokers.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_receipt_verifies_offline_and_any_change_to_it_is_found(
    stack: Stack, tmp_path: Path
) -> None:
    """The receipt of a delivered letter holds its four events and verifies with the CA
    alone; one changed byte, a dropped event, or another CA each make it fail."""
    message_uuid = await _delivered(stack, "Kvittering")
    await asyncio.sleep(0.5)  # tracing logs the DELIVERED it just showed
    doc = await asyncio.to_thread(_receipt_of, stack, message_uuid)
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(doc))
    ca = tmp_path / "ca.pem"
    ca.write_bytes((stack.settings.pki_dir / "ca" / "cert.pem").read_bytes())
    good = await asyncio.to_thread(_dp2, stack, "receipt", "verify", str(path), "--ca", str(ca))
    assert good.returncode == 0, good.stderr
    for state in ("SUBMITTED", "ACCEPTED", "ROUTED", "DELIVERED"):
        assert state in good.stdout

    raw = bytearray(base64.b64decode(doc["events"][-1]["event"]))
    raw[len(raw) // 2] ^= 1
    flipped = json.loads(json.dumps(doc))
    flipped["events"][-1]["event"] = base64.b64encode(bytes(raw)).decode()
    dropped = json.loads(json.dumps(doc))
    dropped["events"].pop(1)
    other = Pki(tmp_path / "other-ca")
    other.init()
    for name, variant, ca_path in (
        ("flipped", flipped, ca),
        ("dropped", dropped, ca),
        ("other-ca", doc, other.ca_cert_path),
    ):
        changed = tmp_path / f"{name}.json"
        changed.write_text(json.dumps(variant))
        bad = await asyncio.to_thread(
            _dp2, stack, "receipt", "verify", str(changed), "--ca", str(ca_path)
        )
        assert bad.returncode == 1, (name, bad.stdout)
        assert "NOT VALID" in bad.stderr, name


async def test_log_verify_names_a_rewritten_entry(stack: Stack, tmp_path: Path) -> None:
    """dp2 log verify passes on the stored log and names the entry altered in a copy of it."""
    await _delivered(stack, "Til loggen")
    await asyncio.sleep(6)  # a tree head over it (every 5 s)
    live = stack.settings.home / "data" / "evidence.sqlite"
    copy = tmp_path / "evidence.sqlite"
    source = sqlite3.connect(live)
    target = sqlite3.connect(copy)
    source.backup(target)
    source.close()
    ok = await asyncio.to_thread(_dp2, stack, "log", "verify", "--log", str(copy))
    assert ok.returncode == 0, ok.stderr
    idx, raw = target.execute(
        "SELECT idx, event FROM entries ORDER BY idx LIMIT 1 OFFSET 2"
    ).fetchone()
    event = codec.decode(bytes(raw), LifecycleEvent)
    forged = codec.encode(dataclasses.replace(event, reasonText="rewritten later"))
    from brokers.security.merkle import leaf_hash  # noqa: PLC0415

    target.execute(  # the forger keeps the leaf hash consistent; the signature still tells
        "UPDATE entries SET event = ?, leaf = ? WHERE idx = ?", (forged, leaf_hash(forged), idx)
    )
    target.commit()
    target.close()
    bad = await asyncio.to_thread(_dp2, stack, "log", "verify", "--log", str(copy))
    assert bad.returncode == 1
    assert f"entry {idx}" in bad.stderr and "LOG_INVALID" in bad.stderr


async def test_a_forged_register_record_changes_no_routing(stack: Stack) -> None:
    """A directory record that moves a registered citizen to paper, unsigned or signed by
    someone other than the register operator, is ignored: the next letter is DELIVERED."""
    ref = stack.pseudonyms.ref("CPR", REGISTERED_CPR)
    genuine = stack.contacts.get(ref)
    assert genuine is not None and genuine.mailboxProvider == PROVIDER
    forged = dataclasses.replace(genuine, status=ContactStatus.EXEMPT, mailboxProvider=None)
    value = codec.encode(forged)
    sender = stack.pki.identity(SENDER)
    wrong = signing.sign_bytes(
        sender.private_key,
        b"dp2-register|" + DIRECTORY_TOPIC.encode() + b"|" + ref.encode() + b"|" + value,
    )
    before = stack.contacts.ignored
    for headers in (
        [],
        [
            (
                REGISTER_SIGNATURE_HEADER,
                f"{sender.fingerprint}:{base64.b64encode(wrong).decode()}".encode(),
            )
        ],
    ):
        await _produce(
            stack, "dp2-admin", DIRECTORY_TOPIC, value, key=ref.encode(), headers=headers
        )
    async with asyncio.timeout(20):
        while stack.contacts.ignored < before + 2:
            await asyncio.sleep(0.1)
    assert stack.contacts.get(ref) == genuine
    await _delivered(stack, "Stadig digital")  # the router still routes it to the mailbox

"""The signed, encrypted pipeline end to end on the real broker, with its traces."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from brokers.runtime.kafka import behind, new_consumer, read_from_start
from brokers.security import signing
from brokers.security.pki import Pki
from brokers.stack.registry import build_service
from connectors.sdk import Document, Dp2Client, build_message
from schemas import codec
from schemas.models import (
    AdditionalDocument,
    Address,
    AttentionData,
    AttentionPerson,
    BlobContent,
    EMail,
    Envelope,
    File,
    IdType,
    InlineContent,
    Representative,
    Sender,
    Telephone,
)
from schemas.vocabulary import CONTACTS_TOPIC
from tests.integration.conftest import (
    EXEMPT_CPR,
    PROVIDER,
    REGISTERED_CPR,
    SENDER,
    SENDER_CVR,
    UNKNOWN_CPR,
    Stack,
)

pytestmark = pytest.mark.kafka

PLAINTEXT = "Kære Karen Jensen, din ansøgning om boligstøtte er bevilget.".encode()


def letter(
    recipient: str = REGISTERED_CPR, *, data: bytes = PLAINTEXT, **kwargs: object
) -> Envelope:
    return build_message(
        sender_cvr=SENDER_CVR,
        sender_label="Aarhus Kommune",
        recipient_id=recipient,
        label="Afgørelse om boligstøtte",
        documents=[Document("afgoerelse.txt", "text/plain", data)],
        notification="Du har fået post fra Aarhus Kommune",
        **kwargs,  # type: ignore[arg-type]
    )


def states(doc: dict[str, object]) -> list[str]:
    return [e["state"] for e in doc["timeline"]]  # type: ignore[index,union-attr]


async def test_happy_path_delivers_and_traces(stack: Stack) -> None:
    """A signed letter is DELIVERED, traced in order, and the mailbox holds its plaintext."""
    async with stack.client() as client:
        receipt = await client.send(letter())
        await client.wait_for(receipt.message_uuid, {"DELIVERED"})
    doc = await stack.wait_trace(receipt.message_uuid, "DELIVERED")
    assert states(doc) == ["SUBMITTED", "ACCEPTED", "ROUTED", "DELIVERED"]
    assert doc["state"] == "DELIVERED"
    stored = stack.mailbox_store().get(receipt.message_uuid)
    assert stored is not None
    assert stored.header.recipient.recipientID == REGISTERED_CPR
    content = stored.body.mainDocument.file[0].content
    assert isinstance(content, InlineContent) and content.data == PLAINTEXT


async def _rejected_with(stack: Stack, client: Dp2Client, raw: bytes, message_uuid: str) -> str:
    receipt = await client.submit(raw, message_uuid, "psn-test")
    event = await client.wait_for(receipt.message_uuid, {"REJECTED", "ACCEPTED", "DUPLICATE"})
    assert event.state.value == "REJECTED", f"{event.state} {event.reasonCode}"
    assert event.reasonText and len(event.reasonText) > 20, "every rejection says how to fix it"
    return event.reasonCode or ""


async def _good_message_still_delivered(client: Dp2Client) -> None:
    receipt = await client.send(letter())
    await client.wait_for(receipt.message_uuid, {"DELIVERED"}, timeout=30)


def _resign(client: Dp2Client, envelope: Envelope) -> bytes:
    signed = signing.sign_envelope(
        dataclasses.replace(envelope, signature=None),
        client.identity.private_key,
        client.identity.fingerprint,
    )
    return codec.encode(signed)


async def test_each_fault_is_rejected_with_its_own_reason(stack: Stack, tmp_path: Path) -> None:
    """Tampering, certificates, authorisation and limits each get their code; post flows on."""
    pki: Pki = stack.pki
    other_ca = Pki(tmp_path / "other-ca")
    other_ca.init()
    other_ca.issue_sender(SENDER_CVR, "impostor")
    now = datetime.now(UTC)
    pki.issue_sender(
        SENDER_CVR,
        "expired",
        not_before=now - timedelta(days=10),
        not_after=now - timedelta(days=1),
    )
    pki.issue_sender(SENDER_CVR, "revoked")
    pki.revoke("revoked")
    pki.issue_vendor("vendor-elsewhere", on_behalf_of=["11111111"])
    await stack.apply_acls()

    async with stack.client() as client:
        codes: dict[str, str] = {}

        signed, _ = client.seal_and_sign(letter())
        body = signed.body
        assert body is not None
        file = body.mainDocument.file[0]
        assert isinstance(file.content, InlineContent)
        flipped = bytes([file.content.data[0] ^ 1]) + file.content.data[1:]
        tampered_body = dataclasses.replace(
            signed,
            body=dataclasses.replace(
                body,
                mainDocument=dataclasses.replace(
                    body.mainDocument,
                    file=[dataclasses.replace(file, content=InlineContent(data=flipped))],
                ),
            ),
        )
        codes["tampered body"] = await _rejected_with(
            stack, client, codec.encode(tampered_body), signed.header.messageUUID
        )

        signed, _ = client.seal_and_sign(letter())
        tampered_header = dataclasses.replace(
            signed, header=dataclasses.replace(signed.header, label="Rettet afgørelse")
        )
        codes["tampered header"] = await _rejected_with(
            stack, client, codec.encode(tampered_header), signed.header.messageUUID
        )

        signed, _ = client.seal_and_sign(letter())
        assert signed.signature is not None
        wrong = dataclasses.replace(
            signed, signature=dataclasses.replace(signed.signature, value=os.urandom(64))
        )
        codes["wrong signature"] = await _rejected_with(
            stack, client, codec.encode(wrong), signed.header.messageUUID
        )

        for name, identity_pki in (("impostor", other_ca), ("expired", pki), ("revoked", pki)):
            # Signed by a key DP2 must not trust, carried over a connection that may
            # write (such a certificate could not connect to Kafka itself).
            async with Dp2Client(
                kafka=stack.kafka(SENDER),
                identity=identity_pki.identity(name),
                trust=client._trust,
                pseudonyms=stack.pseudonyms,
                blob_store=client._blobs,
                contacts=stack.contacts,
            ) as other:
                message, _ = other.seal_and_sign(letter())
                codes[name] = await _rejected_with(
                    stack, other, codec.encode(message), message.header.messageUUID
                )

        async with stack.client("vendor-elsewhere") as vendor:
            message, _ = vendor.seal_and_sign(letter())
            codes["not allowed"] = await _rejected_with(
                stack, vendor, codec.encode(message), message.header.messageUUID
            )

        # An authority's key may not speak for a citizen (only a provider's may).
        plain = letter(EXEMPT_CPR)
        as_citizen = dataclasses.replace(
            plain,
            header=dataclasses.replace(
                plain.header,
                sender=Sender(senderID=UNKNOWN_CPR, idType=IdType.CPR, label="Borger"),
            ),
        )
        message, _ = client.seal_and_sign(as_citizen)
        codes["authority as citizen"] = await _rejected_with(
            stack, client, codec.encode(message), message.header.messageUUID
        )

        signed, _ = client.seal_and_sign(letter())
        assert signed.body is not None
        main_file = signed.body.mainDocument.file[0]
        huge = dataclasses.replace(
            signed,
            body=dataclasses.replace(
                signed.body,
                mainDocument=dataclasses.replace(
                    signed.body.mainDocument,
                    file=[
                        dataclasses.replace(
                            main_file,
                            # Over 99.5 MB of document even without the encryption's
                            # overhead (the limit counts the documents' own bytes).
                            content=BlobContent(
                                ref="sha256:" + "0" * 64, sha256=b"\0" * 32, size=100_000_000
                            ),
                        )
                    ],
                ),
            ),
        )
        codes["oversize"] = await _rejected_with(
            stack, client, _resign(client, huge), signed.header.messageUUID
        )

        many = letter()
        assert many.body is not None
        eleven = [
            AdditionalDocument(
                label=f"bilag {i}",
                file=[
                    File(
                        encodingFormat="text/plain",
                        filename=f"bilag{i}.txt",
                        content=InlineContent(data=b"bilag"),
                    )
                ],
            )
            for i in range(11)
        ]
        many = dataclasses.replace(
            many, body=dataclasses.replace(many.body, additionalDocument=eleven)
        )
        message, _ = client.seal_and_sign(many)
        codes["too many attachments"] = await _rejected_with(
            stack, client, codec.encode(message), message.header.messageUUID
        )

        long_note = letter()
        long_note = dataclasses.replace(
            long_note, header=dataclasses.replace(long_note.header, notification="x" * 161)
        )
        message, _ = client.seal_and_sign(long_note)
        codes["long notification"] = await _rejected_with(
            stack, client, codec.encode(message), message.header.messageUUID
        )

        garbage_uuid = "7d4cf8a3-9a3b-4c1e-8f5e-2b6f1f0a9c11"
        codes["malformed"] = await _rejected_with(
            stack, client, b"definitely not avro", garbage_uuid
        )
        await _good_message_still_delivered(client)

    assert codes == {
        "tampered body": "SIGNATURE_INVALID",
        "tampered header": "SIGNATURE_INVALID",
        "wrong signature": "SIGNATURE_INVALID",
        "impostor": "UNTRUSTED_ISSUER",
        "expired": "CERTIFICATE_EXPIRED",
        "revoked": "CERTIFICATE_REVOKED",
        "not allowed": "SENDER_NOT_AUTHORISED",
        "authority as citizen": "SENDER_NOT_AUTHORISED",
        "oversize": "MESSAGE_TOO_LARGE",
        "too many attachments": "TOO_MANY_ATTACHMENTS",
        "long notification": "NOTIFICATION_TOO_LONG",
        "malformed": "MALFORMED_RECORD",
    }
    # Undecodable bytes name no message anyone vouches for: the REJECTED is on the
    # record's own timeline (issue 14), and the UUID it claimed gets none.
    claimed = await asyncio.to_thread(stack.trace, garbage_uuid)
    assert claimed is None or "REJECTED" not in [e["state"] for e in claimed["timeline"]]


async def test_replayed_uuid_is_a_duplicate_and_delivered_once(stack: Stack) -> None:
    """The same signed bytes submitted twice: DUPLICATE on the first timeline, one delivery."""
    async with stack.client() as client:
        signed, ref = client.seal_and_sign(letter())
        raw = codec.encode(signed)
        first = await client.submit(raw, signed.header.messageUUID, ref)
        await client.wait_for(first.message_uuid, {"DELIVERED"})
        await client.submit(raw, signed.header.messageUUID, ref)
        duplicate = await client.wait_for(first.message_uuid, {"DUPLICATE"})
    assert duplicate.relatedMessageUUID == first.message_uuid
    assert "ACCEPTED" in (duplicate.reasonText or "")
    doc = await stack.wait_trace(first.message_uuid, "DUPLICATE")
    assert states(doc).count("DELIVERED") == 1
    assert doc["state"] == "DELIVERED"


async def _print_topic_keys(stack: Stack) -> list[bytes]:
    consumer = new_consumer(
        stack.admin,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        await read_from_start(consumer, ["dp2.print"])
        batch = await consumer.getmany(timeout_ms=3000)
        return [m.key for records in batch.values() for m in records]
    finally:
        await consumer.stop()


async def test_exempt_and_unknown_recipients_go_to_print(stack: Stack) -> None:
    """EXEMPT and unregistered recipients are ROUTED to dp2.print, not to a mailbox."""
    async with stack.client() as client:
        exempt = await client.send(letter(EXEMPT_CPR))
        unknown = await client.send(letter(UNKNOWN_CPR))
        for receipt in (exempt, unknown):
            routed = await client.wait_for(receipt.message_uuid, {"ROUTED", "REJECTED"})
            assert routed.state.value == "ROUTED"
            assert routed.channel == "print"
            assert routed.attributes["topic"] == "dp2.print"
    keys = await _print_topic_keys(stack)
    assert stack.pseudonyms.ref("CPR", EXEMPT_CPR).encode() in keys
    assert stack.pseudonyms.ref("CPR", UNKNOWN_CPR).encode() in keys


async def test_scheduled_waits_for_its_date_and_recall_stops_it(stack: Stack) -> None:
    """Scheduled post is held until its date; a recalled one is never delivered."""
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    async with stack.client() as client:
        waiting = await client.send(letter(do_not_deliver_until=tomorrow))
        recalled = await client.send(letter(do_not_deliver_until=tomorrow))
        await client.wait_for(waiting.message_uuid, {"SCHEDULED"})
        await client.wait_for(recalled.message_uuid, {"SCHEDULED"})
        await client.recall(recalled.message_uuid, SENDER_CVR)
        await client.wait_for(recalled.message_uuid, {"RECALLED"})
        # Still held a few release rounds later: nothing is delivered before the date.
        await stack.wait_trace(waiting.message_uuid, "SCHEDULED")
        assert "DELIVERED" not in states(await stack.wait_trace(waiting.message_uuid, "SCHEDULED"))
        stack.clock.offset = timedelta(days=2)
        try:
            await client.wait_for(waiting.message_uuid, {"DELIVERED"}, timeout=30)
        finally:
            stack.clock.offset = timedelta()
    recalled_doc = await stack.wait_trace(recalled.message_uuid, "RECALLED")
    assert "DELIVERED" not in states(recalled_doc) and "ROUTED" not in states(recalled_doc)
    assert recalled_doc["state"] == "RECALLED"


async def test_a_failed_release_round_does_not_stop_later_releases(stack: Stack) -> None:
    """The schedule's store locked by another process: that release round fails, the
    router shows 'degraded' on /healthz, and once the lock is gone the letter goes out."""
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    router = stack.hosts["router"]
    async with stack.client() as client:
        held = await client.send(letter(do_not_deliver_until=tomorrow))
        await client.wait_for(held.message_uuid, {"SCHEDULED"})
        # Another writer holds the schedule: marking the letter released fails (after
        # SQLite's busy timeout), which ended the old release loop for good.
        blocker = sqlite3.connect(stack.settings.home / "data" / "router.sqlite", timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            stack.clock.offset = timedelta(days=2)
            async with asyncio.timeout(60):
                while router.health()["status"] != "degraded":
                    await asyncio.sleep(0.2)
            assert "DELIVERED" not in states(await stack.wait_trace(held.message_uuid, "SCHEDULED"))
        finally:
            blocker.rollback()
            blocker.close()
        try:
            await client.wait_for(held.message_uuid, {"DELIVERED"}, timeout=60)
        finally:
            stack.clock.offset = timedelta()
    async with asyncio.timeout(30):
        while router.health()["status"] != "ok":
            await asyncio.sleep(0.2)


async def test_large_document_travels_through_the_blob_store(stack: Stack) -> None:
    """A 50 MB document goes by claim check and arrives byte for byte, kept in the
    mailbox's own plaintext folder by reference (the stored row stays small)."""
    document = os.urandom(50 * 1024 * 1024)
    async with stack.client() as client:
        signed, _ = client.seal_and_sign(letter(data=document))
        assert signed.body is not None
        content = signed.body.mainDocument.file[0].content
        assert isinstance(content, BlobContent) and content.size >= len(document)
        receipt = await client.send(letter(data=document))
        await client.wait_for(receipt.message_uuid, {"DELIVERED"}, timeout=60)
    mailbox = stack.mailbox_store()
    stored = mailbox.get(receipt.message_uuid)
    assert stored is not None and stored.body is not None
    file = stored.body.mainDocument.file[0]
    assert isinstance(file.content, BlobContent) and file.nonce is None, "kept by reference"
    data = mailbox.read(file)
    assert len(data) == len(document) and data == document


async def test_no_plaintext_or_cpr_in_any_topic(stack: Stack) -> None:
    """No dp2.* topic holds document plaintext or a CPR number, nor (but the register's
    dp2.contacts) the letter's attention name, address, e-mail, phone or representative."""
    marker = f"HEMMELIGT-{os.urandom(4).hex()}".encode()
    tag = os.urandom(4).hex()
    personal = {
        "attention name": f"Karen Attention {tag}",
        "attention address": f"Hemmeligvej {tag}",
        "attention e-mail": f"karen.{tag}@privat.example",
        "attention phone": f"+45 {int(tag, 16) % 10**8:08d}",
        "representative CPR": f"{int.from_bytes(os.urandom(5), 'big') % 10**10:010d}",
    }
    attention = AttentionData(
        attentionPerson=AttentionPerson(personID=REGISTERED_CPR, label=personal["attention name"]),
        email=EMail(emailAddress=personal["attention e-mail"]),
        telephone=Telephone(telephoneNumber=personal["attention phone"]),
        address=Address(
            addressLabel=personal["attention address"], houseNumber="7", zipCode="8000"
        ),
    )
    plain = letter(data=marker + PLAINTEXT)
    header = plain.header
    plain = dataclasses.replace(
        plain,
        header=dataclasses.replace(
            header,
            recipient=dataclasses.replace(header.recipient, attentionData=attention),
            sender=dataclasses.replace(
                header.sender,
                representative=Representative(
                    representativeID=personal["representative CPR"], idType=IdType.CPR
                ),
            ),
        ),
    )
    async with stack.client() as client:
        receipt = await client.send(plain)
        await client.wait_for(receipt.message_uuid, {"DELIVERED"})
    stored = stack.mailbox_store().get(receipt.message_uuid)
    assert stored is not None and stored.header == plain.header, "opened field for field"
    consumer = new_consumer(
        stack.admin,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        topics = [t for t in await consumer.topics() if t.startswith("dp2.")]
        partitions = await read_from_start(consumer, topics)
        end = await consumer.end_offsets(partitions)
        seen = 0
        cprs = [REGISTERED_CPR, EXEMPT_CPR, UNKNOWN_CPR]
        while await behind(consumer, end):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    seen += 1
                    blob = (
                        (record.value or b"")
                        + (record.key or b"")
                        + b"".join(v for _, v in record.headers)
                    )
                    assert marker not in blob, f"plaintext in {record.topic}"
                    for cpr in cprs:
                        assert cpr.encode() not in blob, f"CPR in clear in {record.topic}"
                    if record.topic == CONTACTS_TOPIC:
                        # The contact register: by design it holds the register's own names,
                        # addresses and channels (for the notifier and print), so it is the
                        # one topic where personal data may be in clear. The letter's values
                        # are unique to this run and not in the register either.
                        continue
                    for what, value in personal.items():
                        assert value.encode() not in blob, f"{what} in clear in {record.topic}"
    finally:
        await consumer.stop()
    assert seen > 10
    assert {"dp2.submitted", "dp2.accepted", "dp2.lifecycle", f"dp2.deliver.{PROVIDER}"} <= set(
        topics
    )


async def test_mailbox_restarted_before_commit_delivers_once(stack: Stack) -> None:
    """Re-reading a delivered message (offsets rewound) adds no second row nor DELIVERED."""
    async with stack.client() as client:
        receipt = await client.send(letter())
        await client.wait_for(receipt.message_uuid, {"DELIVERED"})
    mailbox = stack.hosts.pop("mailbox")
    group = mailbox.workers[0]._group_id
    await mailbox.stop()
    # As if the mailbox died after storing and emitting, before committing: rewind.
    topic = f"dp2.deliver.{PROVIDER}"
    rewind = new_consumer(
        stack.admin,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await rewind.start()
    try:
        partitions = await read_from_start(rewind, [topic])
        await rewind.commit({tp: 0 for tp in partitions})
        backlog = sum((await rewind.end_offsets(partitions)).values())
    finally:
        await rewind.stop()
    restarted = await build_service(
        "mailbox",
        stack.settings,
        provider=PROVIDER,
        group_suffix=group.removeprefix(f"dp2.mailbox-{PROVIDER}"),
    )
    await restarted.start()
    stack.hosts["mailbox"] = restarted
    worker = restarted.workers[0]
    async with asyncio.timeout(60):
        while worker.processed < backlog:
            await asyncio.sleep(0.2)
    store = stack.mailbox_store()
    assert store.count(receipt.message_uuid) == 1
    await asyncio.sleep(1.0)  # give a second DELIVERED, were there one, time to be traced
    doc = await stack.wait_trace(receipt.message_uuid, "DELIVERED")
    assert states(doc).count("DELIVERED") == 1


@pytest.mark.parametrize("kind", ["tracing", "validator", "router", "notifier"])
async def test_every_built_in_service_starts_with_async_with_and_stops_twice(
    stack: Stack, kind: str
) -> None:
    """Each service of the registry works as ``async with`` and a second stop is harmless."""
    host = await build_service(kind, stack.settings, group_suffix=f".lifecycle-{kind}")
    async with host:
        assert host.health()["status"] in {"ok", "degraded"}
    await host.stop()
    await host.stop()

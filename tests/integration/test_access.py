"""Who may connect and who may do what, on the real broker with mTLS and ACLs (issue 13).

Every attack here was tried on the old, open broker first: there each one wrote or
read what it wanted. Each test asserts the refusal *and* that nothing changed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAuthorizationFailedError
from prometheus_client import CollectorRegistry

from brokers.contacts.register import ContactRegister
from brokers.runtime.kafka import (
    AclBinding,
    KafkaRefusal,
    Operation,
    PatternType,
    Permission,
    ResourceType,
    describe_acls,
    new_consumer,
    new_producer,
    refusal,
    sync_acls,
)
from brokers.runtime.metrics import ServiceMetrics
from brokers.runtime.records import Output
from brokers.runtime.settings import KafkaAccess
from brokers.runtime.worker import KafkaWorker
from brokers.security.pki import Pki
from brokers.stack.access import acl_matrix, principal
from connectors import sdk
from connectors.base import read_config
from connectors.sdk import Document, Dp2Client, build_message
from schemas.errors import Dp2Error
from schemas.vocabulary import (
    ACCEPTED_TOPIC,
    CONTACTS_TOPIC,
    DEADLETTER_TOPIC,
    DIRECTORY_TOPIC,
    LIFECYCLE_TOPIC,
    PRINT_TOPIC,
    SUBMITTED_TOPIC,
    provider_topic,
)
from tests.integration.conftest import PROVIDER, REGISTERED_CPR, SENDER, SENDER_CVR, Stack

pytestmark = pytest.mark.kafka

OTHER_PROVIDER = "andenpost"


def _letter() -> object:
    return build_message(
        sender_cvr=SENDER_CVR,
        sender_label="Aarhus Kommune",
        recipient_id=REGISTERED_CPR,
        label="Afgørelse",
        documents=[Document("brev.txt", "text/plain", b"Hej")],
    )


def _ports(bootstrap: str) -> list[tuple[str, int]]:
    """The client port and, one above it, the controller port (brokers.stack.kafka)."""
    _host, _, port = bootstrap.split(",", maxsplit=1)[0].rpartition(":")
    return [("client", int(port)), ("controller", int(port) + 1)]


async def _end_offsets(admin: KafkaAccess, topic: str) -> dict[TopicPartition, int]:
    consumer = new_consumer(admin, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not partitions:
            await consumer.topics()
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []
            ]
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


@pytest.mark.parametrize("listener", ["client", "controller"])
async def test_a_plaintext_client_is_refused_on_every_listener(
    kafka_bootstrap: str, listener: str
) -> None:
    """No listener speaks Kafka to a client that does not do TLS."""
    port = dict(_ports(kafka_bootstrap))[listener]
    admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=3000)
    with pytest.raises(KafkaConnectionError):
        await admin.start()
    await admin.close()


@pytest.mark.parametrize("listener", ["client", "controller"])
def test_tls_without_a_client_certificate_is_refused_on_every_listener(
    kafka_bootstrap: str, kafka_pki: Path, listener: str
) -> None:
    """The broker's TLS is available to anyone, but without a DP2 certificate it ends there."""
    port = dict(_ports(kafka_bootstrap))[listener]
    context = ssl.create_default_context(cafile=str(kafka_pki / "ca" / "cert.pem"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        # TLS 1.3 reports a refused client certificate on the first read.
        tls.sendall(b"\x00\x00\x00\x00")
        if tls.recv(1) == b"":
            raise ConnectionError("closed without an answer")


async def test_a_certificate_from_another_ca_is_refused(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A client certificate DP2's CA did not issue cannot connect at all."""
    other = Pki(tmp_path / "other")
    other.init()
    other.issue_service("dp2-admin")
    access = KafkaAccess(kafka_bootstrap, "dp2-admin", tmp_path / "other")
    producer = AIOKafkaProducer(**access.client_options(), request_timeout_ms=3000)
    with pytest.raises(KafkaError):
        await producer.start()
    await producer.stop()


@pytest.mark.parametrize(
    "topic",
    [
        ACCEPTED_TOPIC,
        provider_topic(PROVIDER).name,
        PRINT_TOPIC,
        DIRECTORY_TOPIC,
        CONTACTS_TOPIC,
        DEADLETTER_TOPIC,
    ],
)
async def test_a_connector_may_not_write_past_the_validator(stack: Stack, topic: str) -> None:
    """A sender's connector writing past dp2.submitted is refused; the topic is unchanged."""
    before = await _end_offsets(stack.admin, topic)
    producer = new_producer(stack.kafka(SENDER))
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError) as refused:
            await producer.send_and_wait(topic, b"forged", key=b"psn-x")
    finally:
        await producer.stop()
    error = refusal(refused.value, stack.kafka(SENDER), f"writing to {topic}")
    assert error.reason_code == "KAFKA_NOT_AUTHORISED"
    assert "dp2 kafka acls" in error.hint
    assert await _end_offsets(stack.admin, topic) == before


async def _can_read(access: KafkaAccess, topic: str) -> bool:
    """Whether ``access`` gets at the records of ``topic`` (partition 0, from the start)."""
    consumer = new_consumer(access, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return False  # Kafka hides a topic from a principal that may not describe it
        consumer.assign([TopicPartition(topic, 0)])
        try:
            for _ in range(8):
                await consumer.getmany(timeout_ms=250)
        except TopicAuthorizationFailedError:
            return False
        return True
    finally:
        await consumer.stop()


async def test_a_provider_may_not_read_another_providers_post(stack: Stack) -> None:
    """Provider andenpost reading dp2.deliver.mitpost is refused."""
    if f"provider-{OTHER_PROVIDER}" not in stack.pki.names():
        stack.pki.issue_provider(OTHER_PROVIDER)
        await stack.apply_acls()
    topic = provider_topic(PROVIDER).name
    assert await _can_read(stack.kafka(f"provider-{PROVIDER}"), topic)
    assert not await _can_read(stack.kafka(f"provider-{OTHER_PROVIDER}"), topic)


@pytest.mark.parametrize("topic", [CONTACTS_TOPIC, SUBMITTED_TOPIC, DEADLETTER_TOPIC])
async def test_a_connector_may_not_read_contact_details_or_others_post(
    stack: Stack, topic: str
) -> None:
    """A sender's connector reading citizens' contact details or raw submissions is refused."""
    assert await _can_read(stack.admin, topic)
    assert not await _can_read(stack.kafka(SENDER), topic)


async def test_a_connector_reads_the_directory_it_routes_by(stack: Stack) -> None:
    """The same connector does read the routing directory (so the refusals are not blanket)."""
    assert await _can_read(stack.kafka(SENDER), DIRECTORY_TOPIC)


async def test_a_connector_cannot_follow_contact_details_and_is_told_why(stack: Stack) -> None:
    """The register cache refuses to start on dp2.contacts for a connector, naming the ACLs."""
    register = ContactRegister(stack.kafka(SENDER), topic=CONTACTS_TOPIC)
    with pytest.raises(Dp2Error) as refused:
        await register.start(timeout=3)
    assert "dp2 kafka acls" in refused.value.hint


async def test_the_sdk_turns_a_refusal_into_a_clear_error_and_sends_nothing(
    stack: Stack,
) -> None:
    """A client whose Kafka principal may not submit gets KAFKA_NOT_AUTHORISED; no trace."""
    before = await _end_offsets(stack.admin, SUBMITTED_TOPIC)
    client = Dp2Client(
        kafka=stack.kafka("dp2-notifier"),  # a principal without WRITE on dp2.submitted
        identity=stack.pki.identity(SENDER),
        trust=stack.client()._trust,
        pseudonyms=stack.pseudonyms,
        blob_store=stack.client()._blobs,
        contacts=stack.contacts,
    )
    async with client:
        message = _letter()
        with pytest.raises(KafkaRefusal) as refused:
            await client.send(message)  # type: ignore[arg-type]
    assert refused.value.reason_code == "KAFKA_NOT_AUTHORISED"
    assert "service:dp2-notifier" in str(refused.value) or "dp2-notifier" in str(refused.value)
    assert await _end_offsets(stack.admin, SUBMITTED_TOPIC) == before
    uuid = message.header.messageUUID  # type: ignore[attr-defined]
    assert await asyncio.to_thread(stack.trace, uuid) is None


def _worker(access: KafkaAccess, topic: str, group: str, seen: list[object]) -> KafkaWorker:
    async def handler(record: object) -> list[object]:
        seen.append(record)
        return []

    return KafkaWorker(
        "intruder",
        access,
        [topic],
        group_id=group,
        handler=handler,  # type: ignore[arg-type]
        metrics=ServiceMetrics(CollectorRegistry()),
    )


async def test_a_worker_without_its_group_fails_to_start_with_a_clear_error(
    stack: Stack,
) -> None:
    """Joining a consumer group the principal has no right to is KAFKA_NOT_AUTHORISED."""
    worker = _worker(stack.kafka(SENDER), ACCEPTED_TOPIC, "dp2.router.stolen", [])
    with pytest.raises(KafkaRefusal) as refused:
        await worker.start()
    assert "dp2.router.stolen" in str(refused.value)
    await worker.stop()  # safe after a failed start


async def test_a_worker_refused_its_topic_stays_up_and_says_why(stack: Stack) -> None:
    """A provider's worker on dp2.submitted keeps running, reports the refusal, reads nothing."""
    seen: list[object] = []
    worker = _worker(
        stack.kafka(f"provider-{PROVIDER}"), SUBMITTED_TOPIC, f"dp2.mailbox-{PROVIDER}.x", seen
    )
    await worker.start()
    try:
        for _ in range(80):
            if worker.last_error:
                break
            await asyncio.sleep(0.25)
        assert worker.health()["running"] is True
        assert "Kafka refused read" in (worker.last_error or ""), worker.last_error
        assert seen == []
    finally:
        await worker.stop()


async def test_a_worker_whose_writes_keep_failing_is_degraded_and_replaces_its_producer(
    stack: Stack,
) -> None:
    """Every produce round refused (a provider may not write dp2.accepted): the batch
    is never committed (the same records come again), the worker says ``degraded``
    with the reason, and after three failed rounds it starts a fresh producer."""
    seen: list[object] = []

    async def handler(record: ConsumerRecord[bytes, bytes]) -> list[Output]:
        seen.append((record.partition, record.offset))
        return [Output(ACCEPTED_TOPIC, b"not allowed here", key=record.key)]

    worker = KafkaWorker(
        "writer",
        stack.kafka(f"provider-{PROVIDER}"),
        [DIRECTORY_TOPIC],
        group_id=f"dp2.mailbox-{PROVIDER}.writer-{uuid.uuid4().hex[:6]}",
        handler=handler,
        metrics=ServiceMetrics(CollectorRegistry()),
    )
    await worker.start()
    try:
        async with asyncio.timeout(90):
            while worker.producers_replaced < 1:
                await asyncio.sleep(0.25)
        health = worker.health()
        assert health["running"] is True and health["degraded"] is True, health
        assert "Kafka refused" in (health["last_error"] or ""), health
        assert worker.failures >= 3
        first = seen[0]
        assert seen.count(first) >= 3, "nothing committed: the same record is handled again"
    finally:
        await worker.stop()


async def test_a_retried_round_does_not_send_again_what_kafka_took(stack: Stack) -> None:
    """A round whose one record lands (dp2.submitted, which a provider may write) and
    whose other is refused (dp2.accepted) is retried, but the landed record is written
    once, however often the round is retried."""
    marker = uuid.uuid4().hex.encode()
    handled: list[int] = []

    async def handler(record: ConsumerRecord[bytes, bytes]) -> list[Output]:
        handled.append(record.offset)
        if len(handled) > 1 and handled[-1] != handled[0]:
            return []  # only the first record's round matters here
        return [
            Output(SUBMITTED_TOPIC, b"landed once " + marker, key=marker),
            Output(ACCEPTED_TOPIC, b"refused", key=marker),
        ]

    worker = KafkaWorker(
        "partial",
        stack.kafka(f"provider-{PROVIDER}"),
        [DIRECTORY_TOPIC],
        group_id=f"dp2.mailbox-{PROVIDER}.partial-{uuid.uuid4().hex[:6]}",
        handler=handler,
        metrics=ServiceMetrics(CollectorRegistry()),
        batch_size=1,
    )
    await worker.start()
    try:
        async with asyncio.timeout(90):
            while handled.count(handled[0] if handled else -1) < 4:
                await asyncio.sleep(0.25)
    finally:
        await worker.stop()
    landed = await _records_with(stack.admin, SUBMITTED_TOPIC, marker)
    assert landed == 1, f"the landed record was written {landed} times over 4 rounds"


async def _records_with(access: KafkaAccess, topic: str, key: bytes) -> int:
    consumer = new_consumer(access, topic, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    count, idle = 0, 0
    try:
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=1000)
            idle = 0 if batch else idle + 1
            count += sum(1 for rs in batch.values() for r in rs if r.key == key)
    finally:
        await consumer.stop()
    return count


async def test_the_acls_on_the_broker_are_exactly_the_deployments(stack: Stack) -> None:
    """What dp2 up applied is what acl_matrix derives from the PKI and connectors.toml."""
    await stack.apply_acls()
    wanted = acl_matrix(stack.pki, read_config(stack.settings))
    live = await describe_acls(stack.admin)
    assert set(live) == set(wanted)
    senders = {b.resource_name for b in wanted if b.principal == f"User:sender:{SENDER}"}
    assert SUBMITTED_TOPIC in senders and ACCEPTED_TOPIC not in senders


def _deny_the_senders_events(stack: Stack) -> AclBinding:
    return AclBinding(
        principal(stack.pki.identity(SENDER).certificate),
        ResourceType.TOPIC,
        LIFECYCLE_TOPIC,
        PatternType.LITERAL,
        Operation.WRITE,
        Permission.DENY,
    )


async def test_a_submitted_event_kafka_refused_is_sent_again_until_the_trace_has_it(
    stack: Stack,
) -> None:
    """The envelope lands but Kafka refuses its SUBMITTED event (here: a DENY on
    dp2.lifecycle, as a broker's failure or a replaced producer would lose it). The
    client keeps the signed event and sends it again, with no further send from the
    caller, once Kafka takes it: the timeline is complete, with SUBMITTED once."""
    async with stack.client() as client:
        await sync_acls(
            stack.admin, [*await describe_acls(stack.admin), _deny_the_senders_events(stack)]
        )
        try:
            receipt = await client.send(_letter())  # type: ignore[arg-type]
            async with asyncio.timeout(30):
                while client.unsent_events == 0:
                    await asyncio.sleep(0.1)
            await stack.wait_trace(receipt.message_uuid, "DELIVERED")  # the letter went on
            doc = await asyncio.to_thread(stack.trace, receipt.message_uuid)
            assert doc is not None and "SUBMITTED" not in [e["state"] for e in doc["timeline"]]
        finally:
            await stack.apply_acls()
        doc = await stack.wait_trace(receipt.message_uuid, "SUBMITTED", timeout=60)
        assert client.unsent_events == 0
    timeline = [e["state"] for e in doc["timeline"]]
    assert timeline.count("SUBMITTED") == 1 and timeline[0] == "SUBMITTED", timeline


async def test_a_client_stopping_while_kafka_refuses_its_events_says_how_many_it_lost(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """stop() keeps trying for STOP_RESEND_S, then gives up loudly: the count is in
    ``unsent_events`` and in an error log line, never silently dropped."""
    monkeypatch.setattr(sdk, "STOP_RESEND_S", 3.0)
    client = stack.client()
    await client.start()
    await sync_acls(
        stack.admin, [*await describe_acls(stack.admin), _deny_the_senders_events(stack)]
    )
    try:
        await client.send(_letter())  # type: ignore[arg-type]
        with caplog.at_level(logging.WARNING, logger="dp2.sdk"):
            async with asyncio.timeout(30):
                await client.stop()
    finally:
        await stack.apply_acls()
    assert client.unsent_events == 1
    assert any("sdk_events_lost 1 " in r.getMessage() for r in caplog.records), caplog.text

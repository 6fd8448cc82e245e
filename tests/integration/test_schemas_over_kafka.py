"""Every schema's records survive a real trip through Kafka unchanged."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from hypothesis import HealthCheck, given, settings

from brokers.runtime.settings import KafkaAccess
from schemas import codec
from tests.conftest import TopicFactory
from tests.strategies import records

pytestmark = pytest.mark.kafka


def _generate(count: int) -> list[object]:
    """Draw `count` hypothesis records across all five schemas."""
    drawn: list[object] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
    )
    @given(records())
    def collect(record: object) -> None:
        drawn.append(record)

    collect()
    return drawn


async def test_records_of_every_schema_round_trip_through_kafka(
    kafka_admin: KafkaAccess, new_topic: TopicFactory, group_id: str
) -> None:
    """encode -> produce -> consume -> decode gives back the very record, for all schemas."""
    sent = _generate(150)
    assert {type(r).__name__ for r in sent} >= {
        "Envelope",
        "LifecycleEvent",
        "NotificationRequest",
        "NotificationResult",
        "ContactRecord",
    }
    topic = await new_topic("roundtrip", partitions=1)
    producer = AIOKafkaProducer(
        **kafka_admin.client_options(),
        enable_idempotence=True,
        acks="all",
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, codec.encode(record)) for record in sent]
        await producer.flush()
        for future in futures:
            await future
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        **kafka_admin.client_options(),
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    received: list[object] = []
    try:
        while len(received) < len(sent):
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"no records after {len(received)} of {len(sent)}"
            for messages in batch.values():
                received.extend(codec.decode(m.value) for m in messages)
    finally:
        await consumer.stop()

    for index, (before, after) in enumerate(zip(sent, received, strict=True)):
        assert after == before, f"record {index} ({type(before).__name__}) changed in transit"

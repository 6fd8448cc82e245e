"""The Kafka clients DP2 uses, configured once: the producer, group-less readers, topics.

Why one place: every service and the SDK must produce with the same guarantees
(idempotent, ``acks=all``) and read a topic from its start the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.vocabulary import TopicSpec


async def read_from_start(
    consumer: AIOKafkaConsumer,
    topics: Sequence[str],
    *,
    to_end: bool = False,
    wait_s: float = 30.0,
) -> list[TopicPartition]:
    """Subscribe a group-less consumer to every partition of ``topics`` and seek.

    Without a group, aiokafka assigns all partitions on subscribe; but only once
    it has fetched metadata, so wait for the assignment. Seeks to the beginning,
    or to the end with ``to_end`` (to see only what comes next).

    Create the consumer with ``auto_offset_reset`` "earliest" (or "latest" with
    ``to_end``): the assignment's own offset reset can land after our seek.
    """
    consumer.subscribe(list(topics))
    async with asyncio.timeout(wait_s):
        while not consumer.assignment():
            await asyncio.sleep(0.05)
    partitions = sorted(consumer.assignment())
    if to_end:
        await consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the position now, before anything is produced
            await consumer.position(tp)
    else:
        await consumer.seek_to_beginning(*partitions)
    return partitions


async def behind(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    """True while the consumer's position is before ``end`` on any partition."""
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return True
    return False


def new_producer(bootstrap: str, **overrides: Any) -> AIOKafkaProducer:
    """The one producer configuration DP2 uses: idempotent, acks=all, batched."""
    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 5,
        "max_request_size": 8 * 1024 * 1024,
        "compression_type": None,
    }
    settings.update(overrides)
    return AIOKafkaProducer(**settings)


async def ensure_topics(
    bootstrap: str, topics: tuple[TopicSpec, ...] | list[TopicSpec], replication: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; returns the names it created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(t.name, t.partitions, replication, topic_configs=t.config)
                    for t in missing
                ]
            )
        return [t.name for t in missing]
    finally:
        await admin.close()

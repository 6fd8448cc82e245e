"""The worker on the session's real broker: a rebalance mid-batch, a record over its fetch limit.

A rebalance in the middle of a batch: the worker goes on, and no record is lost.

Found by the whole-deployment fault run (tests/integration/test_faults.py): a second
instance joined while the first was handling a batch, the first's commit was refused
for a partition it no longer owned, and its retry then tried to rewind that partition
and stopped the worker for good. Here, on the session's real broker: worker ``one`` is
held inside its first batch until worker ``two`` of the same group has taken a
partition from it; then ``one`` finishes the batch.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry

from brokers.runtime.kafka import new_producer
from brokers.runtime.metrics import ServiceMetrics
from brokers.runtime.records import Output
from brokers.runtime.settings import KafkaAccess
from brokers.runtime.worker import FETCH_PARTITION_BYTES, KafkaWorker
from tests.conftest import TopicFactory

pytestmark = [pytest.mark.kafka]
RECORDS = 40


async def test_a_partition_taken_away_mid_batch_is_handled_by_its_new_owner(
    kafka_admin: KafkaAccess, new_topic: TopicFactory, group_id: str
) -> None:
    """Which partition the group gives the newcomer is the group's choice: the scenario
    is run again (fresh topic and group) until ``one`` lost a partition it held records
    of in its held batch, the case that stopped the worker."""
    for attempt in range(5):
        if await _scenario(
            kafka_admin, await new_topic("rebalance", partitions=2), f"{group_id}-{attempt}"
        ):
            return
    pytest.fail("in five tries the group never took a partition of the held batch away")


async def _scenario(kafka_admin: KafkaAccess, topic: str, group: str) -> bool:
    """One run; True when a partition of ``one``'s held batch went to ``two``."""
    producer = new_producer(kafka_admin)
    await producer.start()
    try:
        for n in range(RECORDS):
            await producer.send_and_wait(topic, f"r{n}".encode(), partition=n % 2)
    finally:
        await producer.stop()

    seen: dict[str, set[str]] = {"one": set(), "two": set()}
    held_batch: set[int] = set()  # partitions of the records ``one`` handled while held
    in_first_batch, release = asyncio.Event(), asyncio.Event()

    def handler_of(name: str):  # type: ignore[no-untyped-def]
        async def handle(record: ConsumerRecord[bytes, bytes]) -> list[Output]:
            if name == "one" and not release.is_set():
                in_first_batch.set()
                await release.wait()  # held until the partition is gone
            if name == "one" and one.processed == 0:
                held_batch.add(record.partition)  # still the first batch
            seen[name].add((record.value or b"").decode())
            return []

        return handle

    def worker(name: str) -> KafkaWorker:
        return KafkaWorker(
            name,
            kafka_admin,
            [topic],
            group_id=group,
            handler=handler_of(name),
            metrics=ServiceMetrics(CollectorRegistry()),
        )

    one, two = worker("one"), worker("two")
    await one.start()
    try:
        async with asyncio.timeout(60):
            await in_first_batch.wait()
        await two.start()
        async with asyncio.timeout(60):
            while not two._require_consumer().assignment():
                await asyncio.sleep(0.2)
        taken = {tp.partition for tp in two._require_consumer().assignment()}
        release.set()
        async with asyncio.timeout(90):
            while len(seen["one"] | seen["two"]) < RECORDS:
                await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # time for a stopped worker to show it
        assert one.health()["running"], one.health()
        assert two.health()["running"], two.health()
        assert seen["one"] | seen["two"] == {f"r{n}" for n in range(RECORDS)}
        return bool(held_batch & taken)
    finally:
        await two.stop()
        await one.stop()


async def test_a_record_larger_than_the_fetch_limits_reaches_its_handler_in_order(
    kafka_admin: KafkaAccess, new_topic: TopicFactory, group_id: str
) -> None:
    """A worker fetches ahead at most FETCH_PARTITION_BYTES per partition, so that a
    lagging service's memory stays bounded; a record three times that size (a letter
    with its files inline) must still come through, between its neighbours."""
    topic = await new_topic("big-record", partitions=1)
    big = os.urandom(3 * FETCH_PARTITION_BYTES)
    sent = [b"before-1", b"before-2", big, b"after"]
    producer = new_producer(kafka_admin)
    await producer.start()
    try:
        for value in sent:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()

    handled: list[bytes] = []

    async def handle(record: ConsumerRecord[bytes, bytes]) -> list[Output]:
        handled.append(record.value or b"")
        return []

    worker = KafkaWorker(
        "big",
        kafka_admin,
        [topic],
        group_id=group_id,
        handler=handle,
        metrics=ServiceMetrics(CollectorRegistry()),
    )
    await worker.start()
    try:
        async with asyncio.timeout(60):
            while len(handled) < len(sent):
                await asyncio.sleep(0.2)
    finally:
        await worker.stop()
    assert [len(v) for v in handled] == [len(v) for v in sent]
    assert handled == sent

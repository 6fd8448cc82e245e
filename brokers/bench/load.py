"""The load generator: the bench's senders, its closed and open loops, and the Collector.

Why it exists: what is submitted, when, and when each stage of each message was seen
decides every throughput and latency figure; keeping the prepared messages, the loops
that submit them and the one reader of dp2.lifecycle together keeps those clocks in
one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from brokers.bench import report
from brokers.bench.config import PROVIDER, Config, Phase
from brokers.runtime.kafka import new_consumer, read_from_start
from brokers.runtime.settings import KafkaAccess
from connectors.sdk import Document, Dp2Client, build_message
from schemas import codec
from schemas.errors import Dp2Error, SchemaError
from schemas.models import LifecycleEvent
from schemas.vocabulary import LIFECYCLE_TOPIC

FAILURE_STATES = ("REJECTED", "FAILED", "NOTIFICATION_FAILED")
_STALL_S = 60.0


# --- collecting the lifecycle -----------------------------------------------------------
class Collector:
    """Reads dp2.lifecycle from its end and keeps, per bench message, when each stage came."""

    def __init__(self, kafka: KafkaAccess, uuids: Sequence[str]) -> None:
        self._kafka = kafka
        self._index = {u.encode(): i for i, u in enumerate(uuids)}
        n = len(uuids)
        self.submitted: list[float | None] = [None] * n
        self.receipt: list[float | None] = [None] * n
        self.at: dict[str, list[float | None]] = {s: [None] * n for s in report.STAGES}
        self.channel: list[str | None] = [None] * n
        self.failed: dict[int, str] = {}
        # Fixed keys: the sampler thread copies this dict while the loop updates it.
        self.counts = dict.fromkeys(("submitted", *report.STAGES, "failed", "other"), 0)
        self.last_event = time.monotonic()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = new_consumer(
            self._kafka,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        await read_from_start(consumer, [LIFECYCLE_TOPIC], to_end=True)
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(consumer), name="bench:lifecycle")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for record in records:
                    index = self._index.get(record.key or b"")
                    if index is not None:
                        self._apply(index, record.value or b"")

    def _apply(self, index: int, value: bytes) -> None:
        try:
            event = codec.decode(value, LifecycleEvent)
        except SchemaError:
            return
        state = event.state.value
        self.last_event = time.monotonic()
        stamps = self.at.get(state)
        if stamps is not None:
            if stamps[index] is None:
                stamps[index] = event.occurredAt.timestamp()
                self.counts[state] += 1
                if state == "NOTIFIED":
                    self.channel[index] = event.channel
        elif state in FAILURE_STATES:
            if index not in self.failed:
                self.failed[index] = f"{state}:{event.reasonCode}"
                self.counts["failed"] += 1
        elif state != "SUBMITTED":
            self.counts["other"] += 1

    def finished(self, index: int) -> bool:
        return self.at["NOTIFIED"][index] is not None or index in self.failed

    async def wait_done(self, phase: Phase, timeout_s: float) -> bool:
        """Wait until every message of ``phase`` is notified or failed (False on timeout
        or when no event came for a minute)."""
        pending = list(range(phase.start, phase.start + phase.count))
        deadline = time.monotonic() + timeout_s
        while True:
            pending = [i for i in pending if not self.finished(i)]
            if not pending:
                return True
            now = time.monotonic()
            if now > deadline or now - self.last_event > _STALL_S:
                return False
            await asyncio.sleep(0.25)


# --- the senders ------------------------------------------------------------------------
class Sender(Dp2Client):
    """A connector that does not follow its receipts: the bench reads dp2.lifecycle once
    for all senders, instead of K followers competing with the services for the cores."""

    async def _start_following(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Prepared:
    raw: bytes
    uuid: str
    key: str
    sender: int
    sender_cvr: str  # the SUBMITTED event names it, so the authority table believes it


def sender_names(count: int) -> list[tuple[str, str]]:
    """(identity name, CVR) of each bench sender."""
    return [(f"bench-sender-{k + 1}", f"{55100000 + k + 1:08d}") for k in range(count)]


def contact_rows(count: int, sms_share: float) -> list[dict[str, Any]]:
    """Generated CPR recipients, all with the bench provider; an SMS number for the
    first ``sms_share`` of them, an e-mail address for the rest."""
    sms = round(count * sms_share)
    rows = []
    for i in range(count):
        channel = (
            {"channel": "SMS", "address": f"+4520{i:06d}"}
            if i < sms
            else {"channel": "EMAIL", "address": f"borger{i:05d}@bench.example"}
        )
        rows.append(
            {
                "id": f"0101{i:06d}",
                "idType": "CPR",
                "status": "REGISTERED",
                "provider": PROVIDER,
                "name": f"Bench Borger {i}",
                "channels": [channel],
                "language": "da",
            }
        )
    return rows


async def prepare(
    clients: Sequence[Dp2Client], config: Config
) -> tuple[list[Prepared], dict[str, Any]]:
    """Build, seal, sign and encode every message; the sender's cost per message."""
    from tqdm import tqdm  # noqa: PLC0415 - the bench extra

    senders = sender_names(len(clients))
    recipients = [row["id"] for row in contact_rows(config.recipients, config.sms_share)]
    data = (bytes(range(256)) * (config.document_size // 256 + 1))[: config.document_size]
    document = Document("afgoerelse.pdf", "application/pdf", data)
    prepared: list[Prepared] = []
    seal_us: list[float] = []
    encode_us: list[float] = []
    for j in tqdm(
        range(config.total), desc="prepare", unit="msg", disable=not config.progress, ascii=True
    ):
        k = j % len(clients)
        message = build_message(
            sender_cvr=senders[k][1],
            sender_label=f"Bench Kommune {k + 1}",
            recipient_id=recipients[j % len(recipients)],
            label="Afgørelse om boligstøtte",
            documents=[document],
            notification="Du har fået post fra Bench Kommune",
        )
        started = time.perf_counter()
        signed, ref = clients[k].seal_and_sign(message)
        sealed = time.perf_counter()
        raw = codec.encode(signed)
        seal_us.append((sealed - started) * 1e6)
        encode_us.append((time.perf_counter() - sealed) * 1e6)
        prepared.append(Prepared(raw, signed.header.messageUUID, ref, k, senders[k][1]))
        if j % 100 == 99:
            await asyncio.sleep(0)  # let the clients' connections breathe
    cost = {
        "seal_sign_us": report.percentiles(seal_us),
        "encode_us": report.percentiles(encode_us),
        "record_bytes_mean": round(sum(len(p.raw) for p in prepared) / len(prepared), 1),
    }
    return prepared, cost


async def _submit(client: Dp2Client, item: Prepared, index: int, collector: Collector) -> None:
    collector.submitted[index] = time.time()
    collector.counts["submitted"] += 1
    try:
        await client.submit(item.raw, item.uuid, item.key, sender_id=item.sender_cvr)
    except (KafkaError, Dp2Error) as exc:
        collector.failed.setdefault(index, f"SUBMIT_FAILED:{type(exc).__name__}")
        collector.counts["failed"] += 1
        return
    collector.receipt[index] = time.time()


async def closed_loop(
    clients: Sequence[Dp2Client],
    prepared: Sequence[Prepared],
    phase: Phase,
    collector: Collector,
    inflight: int,
) -> None:
    """Each sender keeps ``inflight`` submits outstanding until its share is sent."""
    indices = range(phase.start, phase.start + phase.count)
    shares = [iter([i for i in indices if prepared[i].sender == k]) for k in range(len(clients))]

    async def worker(k: int) -> None:
        for index in shares[k]:  # the workers of one sender share its iterator
            await _submit(clients[k], prepared[index], index, collector)

    await asyncio.gather(*(worker(k) for k in range(len(clients)) for _ in range(inflight)))


async def open_loop(
    clients: Sequence[Dp2Client], prepared: Sequence[Prepared], phase: Phase, collector: Collector
) -> float:
    """Submit at ``phase.rate`` whatever the answers take; returns the worst lateness (ms)."""
    assert phase.rate is not None  # noqa: S101 - open loop phases have a rate
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending: set[asyncio.Task[None]] = set()
    late = 0.0
    sent = 0
    while sent < phase.count:
        now = loop.time()
        due = min(phase.count, int((now - started) * phase.rate) + 1)
        for i in range(sent, due):
            late = max(late, now - (started + i / phase.rate))
            index = phase.start + i
            item = prepared[index]
            task = asyncio.create_task(_submit(clients[item.sender], item, index, collector))
            pending.add(task)
            task.add_done_callback(pending.discard)
        sent = max(sent, due)
        if sent < phase.count:
            await asyncio.sleep(max(0.0, started + sent / phase.rate - loop.time()))
    await asyncio.gather(*pending)
    return late * 1000


async def show_progress(collector: Collector, phase: Phase, enabled: bool) -> None:
    from tqdm import tqdm  # noqa: PLC0415 - the bench extra

    base = dict(collector.counts)
    bar = tqdm(
        total=phase.count, desc=phase.name, unit="msg", disable=not enabled, ascii=True, leave=True
    )
    try:
        while True:
            counts = collector.counts
            bar.update(counts["DELIVERED"] - base["DELIVERED"] - bar.n)
            bar.set_postfix(
                submitted=counts["submitted"] - base["submitted"],
                notified=counts["NOTIFIED"] - base["NOTIFIED"],
                failed=counts["failed"] - base["failed"],
                refresh=False,
            )
            await asyncio.sleep(0.5)
    finally:
        bar.close()

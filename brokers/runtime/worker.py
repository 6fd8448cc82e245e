"""The consume → handle → produce loop that every DP2 service runs, written once.

Why one loop: the guarantees operators rely on must not depend on which service a
message is in. Here they are, for every worker:

* **At least once, idempotent effects.** A batch's outputs are produced (idempotent
  producer, ``acks=all``) and acknowledged *before* its offsets are committed; a
  crash in between redelivers the batch, and handlers de-duplicate by message UUID
  or event id.
* **A poison record never stops a consumer and never disappears.** Bytes that do
  not decode, or a handler that raises an unexpected error, send the original
  record (a tombstone as a tombstone) to ``dp2.deadletter`` with its reason
  (headers ``dp2-reason-code``, ``dp2-reason``, ``dp2-source``), count it, and put
  a REJECTED event on the message's timeline (the UUID from the ``dp2-message-uuid``
  header, or a stable UUID derived from topic/partition/offset) — then the loop goes on.
* **A rebalance mid-batch is not an error.** Offsets are committed only for the
  partitions the worker still owns; the new owner of a revoked one handles its
  records again (at least once, as after a crash).
* **Retriable trouble waits, it does not drop.** A :class:`Dp2Error` with
  ``retriable = True`` (Kafka unavailable, a store busy) leaves the batch
  uncommitted and is retried with capped exponential backoff.
* **A broken producer is replaced.** After a broker failure an idempotent producer
  can be left unusable (``OutOfOrderSequenceNumber``, ``ProducerFenced``,
  ``UnknownProducerId``, ``InvalidProducerEpoch``): retrying with it fails forever.
  On such an error, or after ``REPLACE_AFTER`` failed rounds in a row, the worker
  closes its producer and starts a fresh one (a new producer id) before the retry;
  until a round succeeds again it is ``degraded`` in its health (/healthz, ``dp2
  status``), with the reason.
* **Headers stay within the budget** (brokers.runtime.headers): an output carries
  DP2's own headers first and others only while they fit; the rest is dropped and
  logged (``headers_dropped``), never carried on to the next hop.
* **Trace context travels.** ``traceparent`` is read from each record and a child
  is written on every output; ``message_id`` is bound in structlog's contextvars.
  Each record is an OpenTelemetry CONSUMER span (brokers.runtime.telemetry),
  exported over OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.
* **Metrics**: ``dp2_records_in_total``, ``dp2_records_out_total``,
  ``dp2_rejections_total{reason}``, ``dp2_deadletters_total{reason}``,
  ``dp2_processing_seconds`` and ``dp2_consumer_lag`` per service, in an injected
  registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from brokers.runtime import context, telemetry
from brokers.runtime.headers import size_of, within_budget
from brokers.runtime.kafka import (
    AUTHORIZATION_ERRORS,
    BROKEN_PRODUCER_ERRORS,
    is_refusal,
    new_consumer,
    new_producer,
    refusal,
    sign_round,
)
from brokers.runtime.metrics import ServiceMetrics
from brokers.runtime.records import (
    Handler,
    Output,
    lifecycle_first,
    message_uuid_header,
    position_uuid,
    source_of,
    unverified_rejection,
)
from brokers.runtime.settings import KafkaAccess
from brokers.runtime.tasks import Backoff, cancel_and_wait
from schemas.errors import Dp2Error, SchemaError
from schemas.vocabulary import (
    DEADLETTER_TOPIC,
    MESSAGE_UUID_HEADER,
    REASON_CODE_HEADER,
    REASON_HEADER,
    SERVICE_HEADER,
    SOURCE_HEADER,
)

_MAX_BACKOFF_S = 30.0
#: What a consumer fetches ahead (per partition, per fetch) stays in memory until
#: handled: a lagging worker held all of 8/16 MiB. 1 MiB is still ~1,400 events or 500
#: envelopes, over a batch; a bigger record still comes (the broker sends the first).
FETCH_PARTITION_BYTES = 1024 * 1024
FETCH_BYTES = 4 * 1024 * 1024
#: Failed produce rounds in a row after which the producer is replaced anyway.
REPLACE_AFTER = 3

log = structlog.get_logger("dp2.service")


class KafkaWorker:
    """Consumes ``topics`` as consumer group ``group_id`` and runs ``handler`` per record.

    ``start()``/``stop()`` are safe to call twice; ``async with`` works too.
    """

    def __init__(
        self,
        name: str,
        kafka: KafkaAccess,
        topics: Sequence[str],
        *,
        group_id: str,
        handler: Handler,
        metrics: ServiceMetrics,
        producer: AIOKafkaProducer | None = None,
        batch_size: int = 500,
        auto_offset_reset: str = "earliest",
        batch: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
        wants: Callable[[ConsumerRecord[bytes, bytes]], bool] | None = None,
    ) -> None:
        self.name = name
        self._kafka = kafka
        self._topics = list(topics)
        self._group_id = group_id
        self._handler = handler
        self._metrics = metrics
        self._own_producer = producer is None
        self._producer = producer or new_producer(kafka)
        self._batch_size = batch_size
        self._auto_offset_reset = auto_offset_reset
        self._batch = batch
        # A cheap look at a record (a peek at its state, never a decode) that says the
        # handler would do nothing with it: skipped before the span, the log context
        # and the handler, and committed with its batch. Records it cannot judge are
        # handled (so a poison record is still parked).
        self._wants = wants
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.processed = 0
        self.last_error: str | None = None
        #: Failed rounds in a row (0: healthy); the producer is replaced along the way.
        self.failures = 0
        self.producers_replaced = 0
        #: Outputs of a failed round that Kafka did take, by (topic, key, value digest).
        self._already_acked: Counter[tuple[str, bytes | None, bytes]] = Counter()

    async def __aenter__(self) -> KafkaWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._own_producer:
            await self._producer.start()
        self._consumer = new_consumer(
            self._kafka,
            *self._topics,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset=self._auto_offset_reset,
            max_poll_records=self._batch_size,
            fetch_max_bytes=FETCH_BYTES,
            max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
        )
        try:
            await self._consumer.start()
        except AUTHORIZATION_ERRORS as exc:  # e.g. no right to the consumer group
            consumer, self._consumer = self._consumer, None
            await consumer.stop()
            if self._own_producer:
                await self._producer.stop()
            raise refusal(exc, self._kafka, f"consuming as group {self._group_id}") from exc
        self._task = asyncio.create_task(self._run(), name=f"worker:{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await consumer.stop()
            except KafkaError as exc:
                # A fetch in flight to a broker that stopped answering: nothing of ours
                # is lost (offsets are committed per batch, never on stop), and the
                # group drops this member after its session timeout. Stop the rest.
                log.warning("worker_consumer_stop_failed", worker=self.name, error=repr(exc))
        if self._own_producer:
            await self._producer.stop()

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError(f"worker {self.name} is not started")
        return self._consumer

    def health(self) -> dict[str, Any]:
        running = self._task is not None and not self._task.done()
        return {
            "worker": self.name,
            "running": running,
            "degraded": self.failures > 0,
            "processed": self.processed,
            "last_error": self.last_error,
            "producers_replaced": self.producers_replaced,
        }

    async def _run(self) -> None:
        consumer = self._require_consumer()
        backoff = Backoff(first=0.5, cap=_MAX_BACKOFF_S)
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                # A refusal to read (no ACL) or a broker hiccup: the service stays up,
                # /healthz says why, and it tries again (the operator may fix the ACLs).
                await asyncio.sleep(self._note_failure(exc, backoff, "read"))
                continue
            if batch:
                try:
                    await self._process_batch(batch)
                    backoff.reset()
                    self.failures = 0
                except (Dp2Error, KafkaError) as exc:
                    # Only retriable errors get here (see _handle_one). Nothing of the
                    # batch was committed: rewind it and try again later.
                    self.failures += 1
                    wait_s = self._note_failure(exc, backoff, "write")
                    owned = consumer.assignment()
                    for tp, records in batch.items():
                        if tp in owned:  # else revoked meanwhile: its new owner reads it
                            consumer.seek(tp, records[0].offset)
                    if isinstance(exc, KafkaError) and (
                        isinstance(exc, BROKEN_PRODUCER_ERRORS) or self.failures >= REPLACE_AFTER
                    ):
                        await self._replace_producer()
                    await asyncio.sleep(wait_s)
            await self._update_lag(consumer)

    async def _replace_producer(self) -> None:
        """A fresh producer (new producer id, sequence numbers from 0) for the retry."""
        if not self._own_producer:
            return  # the owner of a shared producer decides (it sees the same errors)
        old, self._producer = self._producer, new_producer(self._kafka)
        with contextlib.suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(10):
                await old.stop()
        await self._producer.start()
        self.producers_replaced += 1
        log.warning("producer_replaced", service=self.name, failures=self.failures)

    def _note_failure(self, exc: BaseException, backoff: Backoff, what: str) -> float:
        """Record why this round failed (a Kafka refusal in DP2's words); the wait."""
        error = refusal(exc, self._kafka, f"{what} for {self.name}") if is_refusal(exc) else exc
        self.last_error = str(error) if isinstance(error, Dp2Error) else repr(error)
        wait_s = backoff.next()
        log.warning(
            "batch_retry",
            service=self.name,
            reason_code=getattr(error, "reason_code", type(exc).__name__),
            error=str(error),
            wait_s=wait_s,
        )
        return wait_s

    async def _process_batch(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        """Handle every record of a fetch, produce all outputs, then commit once.

        One produce round and one offset commit per fetch, not per partition or
        record: the broker's work per message is what bounds throughput here. The
        loop yields between records so /healthz, /metrics and heartbeats are served
        while a large batch is handled.

        With ``batch`` (a service's store transaction: one commit per fetch instead of
        one per record) the records are handled inside it, and it commits before the
        outputs are produced and the offsets committed (a failure rolls it back and the
        batch is retried whole). The loop does not yield while it is open, and the
        handler must not suspend, so no other task of the service reads or writes
        inside the uncommitted transaction.
        """
        consumer = self._require_consumer()
        outputs: list[Output] = []
        count = 0
        with self._batch() if self._batch is not None else contextlib.nullcontext():
            for records in batch.values():
                if not records:
                    continue
                records_in = self._metrics.records_in.labels(self.name, records[0].topic)
                for record in records:
                    records_in.inc()
                    count += 1
                    if self._wants is not None and not self._wants(record):
                        continue
                    outputs.extend(await self._handle_one(record))
                    if count % 50 == 0 and self._batch is None:
                        await asyncio.sleep(0)
        await self._produce(outputs)
        self._already_acked.clear()  # the batch is through: nothing to skip any more
        # Outputs acknowledged: only now are the inputs done.
        await self._commit(consumer, batch)
        self.processed += count

    async def _commit(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        """Commit the batch's offsets for the partitions this worker still owns.

        A rebalance can take partitions away while a batch is handled (another instance
        joined, or this one was too slow): their offsets are not this worker's to commit
        any more, and their records are handled again by the new owner — at least once,
        as after a crash; every handler's effects are idempotent. A commit that the
        group refuses for the same reason is the same case, not a failure.
        """
        owned = consumer.assignment()
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if tp in owned}
        if len(offsets) < len(batch):
            log.info("partitions_revoked_mid_batch", revoked=len(batch) - len(offsets))
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.info("commit_lost_to_rebalance", error=str(exc))

    async def _handle_one(self, record: ConsumerRecord[bytes, bytes]) -> list[Output]:
        parent = context.from_headers(record.headers)
        message_uuid = message_uuid_header(record)
        bound = {"service": self.name, "trace_id": context.trace_id(parent)}
        if message_uuid:
            bound["message_id"] = message_uuid
        span = telemetry.process_span(record, self._group_id, message_uuid)
        # The next hop's parent: this span when it is exported, else DP2's own child.
        child_parent = telemetry.traceparent_of(span) or context.child_of(parent)
        try:
            produced = await self._handled(record, bound)
        finally:
            span.end()
        child = (context.HEADER, child_parent.encode())
        return [_budgeted(o, child) for o in produced]

    async def _handled(
        self, record: ConsumerRecord[bytes, bytes], bound: dict[str, Any]
    ) -> list[Output]:
        """The handler's outputs for ``record``, or its dead letter (see the docstring)."""
        with structlog.contextvars.bound_contextvars(**bound):
            started = time.perf_counter()
            try:
                produced = list(await self._handler(record))
            except SchemaError as exc:
                produced = self._dead_letter(record, exc)
            except Dp2Error as exc:
                if exc.retriable:
                    raise
                produced = self._dead_letter(record, exc)
            except KafkaError:
                raise
            except Exception as exc:  # a bug must not stop the line: park the record
                log.exception("handler_failed", topic=record.topic, offset=record.offset)
                produced = self._dead_letter(
                    record,
                    Dp2Error(
                        f"{self.name} failed on this record: {exc!r}",
                        reason_code="PROCESSING_FAILED",
                        hint="Operators: inspect the dead letter and re-drive it once fixed.",
                    ),
                )
            finally:
                self._metrics.processing.labels(self.name).observe(time.perf_counter() - started)
        return produced

    def _dead_letter(self, record: ConsumerRecord[bytes, bytes], error: Dp2Error) -> list[Output]:
        source = source_of(record)
        # A header names a message, but anyone can write a header: the record's REJECTED
        # goes on its own timeline (records.unverified_rejection), never on the named one.
        claimed = message_uuid_header(record)
        message_uuid = position_uuid(record)
        self.last_error = f"{error.reason_code} at {source}"
        self._metrics.deadletters.labels(self.name, error.reason_code).inc()
        log.warning(
            "dead_letter", source=source, reason_code=error.reason_code, message_id=message_uuid
        )
        headers = [(k, v) for k, v in (record.headers or ()) if k != context.HEADER] + [
            (REASON_CODE_HEADER, error.reason_code.encode()),
            (REASON_HEADER, f"{error.message} {error.hint}".encode()),
            (SOURCE_HEADER, source.encode()),
            (SERVICE_HEADER, self.name.encode()),
        ]
        if claimed is None:  # link the parked record to its own timeline
            headers.append((MESSAGE_UUID_HEADER, message_uuid.encode()))
        return [
            Output(
                DEADLETTER_TOPIC,
                record.value or b"",
                record.key,
                headers,
                tombstone=record.value is None,  # parked as it came: a tombstone stays one
            ),
            unverified_rejection(record, self.name, error, claimed),
        ]

    async def _produce(self, outputs: Iterable[Output]) -> None:
        """Lifecycle events first (acknowledged), then the records that move on.

        Whoever acts on a record downstream may assert a state only if this service's
        event came first: the provider's DELIVERED is believed only after the router's
        ROUTED (brokers.security.authority). Both go to the same dp2.lifecycle
        partition, but a record on another topic could otherwise be read, and its
        DELIVERED written, before the ROUTED of the same produce round landed.
        """
        for round_ in lifecycle_first(list(outputs)):
            await self._send_all(round_)

    async def _send_all(self, outputs: list[Output]) -> None:
        """Produce ``outputs`` and await every acknowledgement.

        When a round fails part-way, the records Kafka did take are remembered: the
        retry of the same batch recomputes the same outputs and sends only the rest,
        so a flaky broker does not multiply a batch's records on the healthy
        partitions. (Lifecycle events are recomputed with a new time, so they are
        sent again; their event ids are the same and every reader de-duplicates.)
        """
        sent: list[tuple[Output, asyncio.Future[Any]]] = []
        skip = Counter(self._already_acked)  # taken in an earlier try of this batch
        if skip:  # only while retrying: no hashing on the hot path
            outputs = [o for o in outputs if not _skipped(o, skip)]
        try:
            # The round's lifecycle events signed together: one signature over their
            # hash tree. (Identities above are of the unsigned outputs, which a retry
            # recomputes; a signature differs every time.)
            for output, signed in zip(outputs, sign_round(self._producer, outputs), strict=True):
                if output.rejection is not None:
                    self._metrics.rejections.labels(self.name, output.rejection).inc()
                future = await self._producer.send(
                    signed.topic,
                    None if signed.tombstone else signed.value,
                    key=signed.key,
                    headers=signed.headers,
                )
                sent.append((output, future))
                self._metrics.records_out.labels(self.name, output.topic).inc()
            for _, future in sent:
                await future
        except KafkaError:
            # What was handed to the producer may still land: let it settle first.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._kafka.topology.producer_timeout_ms / 1000):
                    await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
            for output, future in sent:
                if future.done() and not future.cancelled() and future.exception() is None:
                    self._already_acked[_identity(output)] += 1
            raise

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            position = await consumer.position(tp)
            self._metrics.lag.labels(self.name, tp.topic, str(tp.partition)).set(
                max(highwater - position, 0)
            )


def _skipped(output: Output, skip: Counter[tuple[str, bytes | None, bytes]]) -> bool:
    """Did an earlier try of this batch send ``output`` already? (Counts it off.)"""
    identity = _identity(output)
    if skip[identity] > 0:
        skip[identity] -= 1
        return True
    return False


def _identity(output: Output) -> tuple[str, bytes | None, bytes]:
    """What makes two outputs the same record (headers aside: the traceparent differs)."""
    value = b"" if output.tombstone else output.value
    return output.topic, output.key, hashlib.sha256(value).digest()


def _budgeted(output: Output, traceparent: tuple[str, bytes]) -> Output:
    """`output` with the next hop's traceparent, its headers held to the budget."""
    headers = [*output.headers, traceparent]
    kept = within_budget(headers)
    if len(kept) != len(headers):
        log.warning(
            "headers_dropped",
            topic=output.topic,
            dropped=len(headers) - len(kept),
            dropped_bytes=size_of(headers) - size_of(kept),
        )
    return dataclasses.replace(output, headers=kept)

"""The register: who is on digital post with which provider, and how to reach them.

Two compacted topics, because their readers differ (issue 13):

- ``dp2.directory`` — status, mailbox provider, language and read-receipt consent:
  what a sender and the router need to route and seal a letter. Every connector
  may read it.
- ``dp2.contacts`` — the same record *with* name, postal address and notification
  channels: personal data that only the notifier and remote print may read (the
  Kafka ACLs say so, brokers.stack.access).

Both are signed by the register operator (``service:dp2-register``, the identity
``dp2 contacts load`` publishes as): each record carries
``dp2-register-signature`` over its topic, key and value. Every cache verifies it
against the deployment's CA and ignores (and counts, ``ignored``) anything else, so a
forged record changes no routing and no notification even if something got to write
the topic.

Why compacted topics: every service that needs the register keeps a local cache
rebuilt by reading its topic from the start; Kafka keeps the latest record per
recipient forever, so there is no extra database to run and the register can be
replayed like every other projection.

Records are keyed by the recipient's keyed pseudonym (``psn-…``), never by a CPR
number: the topic, the caches and the logs hold no CPR in clear. ``dp2 contacts
load FILE`` pseudonymises the CPR/CVR numbers of a CSV or JSON file on the way in.

File format (JSON: a list of objects; CSV: the same keys as columns, channels as
``email:addr;sms:+45…``)::

    {"id": "0101011234", "idType": "CPR", "status": "REGISTERED",
     "provider": "eboks", "name": "Jens Hansen",
     "address": {"street": "Vestergade 1", "postcode": "8000", "city": "Aarhus C"},
     "channels": [{"channel": "EMAIL", "address": "jens@example.dk"}],
     "language": "da", "readReceiptsConsent": true}
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from brokers.runtime import context
from brokers.runtime.kafka import behind, new_consumer, new_producer, read_from_start
from brokers.runtime.settings import KafkaAccess
from brokers.runtime.tasks import AsyncResource, cancel_and_wait
from brokers.security import signing
from brokers.security.pki import Identity, Pki
from brokers.security.trust import TrustStore, principal_name
from schemas import codec
from schemas.errors import Dp2Error, SchemaError
from schemas.models import (
    ContactRecord,
)
from schemas.vocabulary import CONTACTS_TOPIC, DIRECTORY_TOPIC, REGISTER_SIGNATURE_HEADER

log = structlog.get_logger("dp2.contacts")


def directory_entry(record: ContactRecord) -> ContactRecord:
    """The record without its contact details: what the routing directory holds."""
    return dataclasses.replace(record, name=None, address=None, channels=[])


REGISTER_SIGNER: Final = "service:dp2-register"


def _signing_input(topic: str, key: bytes, value: bytes | None) -> bytes:
    return b"dp2-register|" + topic.encode() + b"|" + key + b"|" + (value or b"")


def _signature_header(
    identity: Identity, topic: str, key: bytes, value: bytes | None
) -> tuple[str, bytes]:
    """The ``dp2-register-signature`` header of one register record."""
    signature = signing.sign_bytes(identity.private_key, _signing_input(topic, key, value))
    encoded = f"{identity.fingerprint}:{base64.b64encode(signature).decode()}".encode()
    return REGISTER_SIGNATURE_HEADER, encoded


async def publish_contacts(
    kafka: KafkaAccess,
    records: Iterable[ContactRecord],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Publish each record to the directory (stripped) and to the contact details,
    signed by ``kafka``'s identity (the register operator's). ``progress`` is told
    the count every ``PROGRESS_EVERY`` records acknowledged by Kafka (a national
    register is millions: the pending sends are awaited in batches, never all held)."""
    if kafka.pki_dir is None or not kafka.identity:
        raise Dp2Error(
            "the register is published by the register operator's identity",
            reason_code="REGISTER_SIGNER_MISSING",
            hint="Publish with dp2 contacts load (it signs as dp2-register).",
        )
    identity = Pki(kafka.pki_dir).identity(kafka.identity)
    producer = new_producer(kafka)
    await producer.start()
    futures: list[asyncio.Future[Any]] = []
    published = 0
    try:
        for r in records:
            key = r.recipientRef.encode()
            entry, details = codec.encode(directory_entry(r)), codec.encode(r)
            entry_signed = [_signature_header(identity, DIRECTORY_TOPIC, key, entry)]
            details_signed = [_signature_header(identity, CONTACTS_TOPIC, key, details)]
            futures.append(
                await producer.send(DIRECTORY_TOPIC, entry, key=key, headers=entry_signed)
            )
            futures.append(
                await producer.send(CONTACTS_TOPIC, details, key=key, headers=details_signed)
            )
            if len(futures) >= 2 * PROGRESS_EVERY:
                published += await _acknowledged(futures)
                if progress is not None:
                    progress(published)
        published += await _acknowledged(futures)
    finally:
        await producer.stop()
    return published


#: How often publish_contacts reports, and how many sends it keeps pending at most.
PROGRESS_EVERY: Final = 10_000


async def _acknowledged(futures: list[asyncio.Future[Any]]) -> int:
    """Await and clear the pending sends; the number of records (two sends each)."""
    for future in futures:
        await future
    count = len(futures) // 2
    futures.clear()
    return count


class ContactRegister(AsyncResource):
    """A local, continuously updated cache of the directory (no consumer group).

    ``start()`` returns once the cache has caught up with the topic's end as it was
    at start, so the first lookups already see every record loaded before. Pass
    ``topic=CONTACTS_TOPIC`` for the contact details (notifier and print only).
    """

    def __init__(self, kafka: KafkaAccess, topic: str = DIRECTORY_TOPIC) -> None:
        self._kafka = kafka
        # Without DP2's PKI (DP2_KAFKA_TLS=0, a cluster outside it) nothing can be checked.
        self._trust = TrustStore(kafka.pki_dir) if kafka.pki_dir is not None else None
        #: Records refused because the register operator did not sign them.
        self.ignored = 0
        self._topic = topic
        self._records: dict[str, ContactRecord] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def get(self, recipient_ref: str) -> ContactRecord | None:
        return self._records.get(recipient_ref)

    def __len__(self) -> int:
        return len(self._records)

    async def start(self, timeout: float = 30.0) -> None:
        if self._consumer is not None:
            return
        consumer = new_consumer(
            self._kafka,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",  # see read_from_start
        )
        await consumer.start()
        self._consumer = consumer
        try:
            partitions = await read_from_start(consumer, [self._topic], wait_s=timeout)
        except TimeoutError as exc:
            await consumer.stop()
            self._consumer = None
            raise Dp2Error(
                f"topic {self._topic} shows no partitions to Kafka principal "
                f"{self._kafka.identity or '(anonymous)'}: it does not exist, or this "
                "principal may not read it (Kafka hides such topics)",
                reason_code="TOPIC_MISSING",
                hint="Run dp2 up (it creates DP2's topics and ACLs) before starting services; "
                "dp2 kafka acls shows who may read what (only the notifier and print read "
                "contact details).",
            ) from exc
        end = await consumer.end_offsets(partitions)
        async with asyncio.timeout(timeout):
            while await behind(consumer, end):
                self._apply(await consumer.getmany(timeout_ms=200))
        self._task = asyncio.create_task(self._follow(), name="contacts:follow")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def _follow(self) -> None:
        assert self._consumer is not None  # noqa: S101 - set before the task starts
        while True:
            self._apply(await self._consumer.getmany(timeout_ms=1000))

    def _signed_by_register(self, message: Any) -> bool:
        if self._trust is None:
            return True
        raw = context.header_value(message.headers, REGISTER_SIGNATURE_HEADER)
        try:
            fingerprint, _, encoded = (raw or b"").decode("ascii").partition(":")
            cert = self._trust.certificate(fingerprint)
            self._trust.verify_certificate(cert, datetime.now(UTC))
            if principal_name(cert) != REGISTER_SIGNER:
                return False
            signing.verify_bytes(
                cert.public_key(),
                base64.b64decode(encoded, validate=True),
                _signing_input(self._topic, message.key or b"", message.value),
            )
        except (ValueError, Dp2Error):
            return False
        return True

    def _apply(self, batch: dict[TopicPartition, list[Any]]) -> None:
        for records in batch.values():
            for message in records:
                if not self._signed_by_register(message):
                    self.ignored += 1
                    log.warning("register_record_ignored", topic=self._topic, offset=message.offset)
                    continue
                if message.value is None:  # a tombstone: the recipient was removed
                    self._records.pop(message.key.decode(), None)
                    continue
                try:
                    record = codec.decode(message.value, ContactRecord)
                except SchemaError as exc:
                    log.warning("contact_record_skipped", offset=message.offset, reason=str(exc))
                    continue
                self._records[record.recipientRef] = record

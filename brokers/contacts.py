"""The contact register: who is on digital post, with which provider and channels.

Why a compacted topic: every service that needs the register (router, notifier,
SDK) keeps a local cache rebuilt by reading ``dp2.contacts`` from the start; Kafka
keeps the latest record per recipient forever, so there is no extra database to
run and the register can be replayed like every other projection.

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
import contextlib
import csv
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from brokers.crypto import Pseudonymizer, secret_key_file
from brokers.service import behind, new_producer, read_from_start
from schemas import codec
from schemas.errors import Dp2Error, SchemaError
from schemas.models import (
    ContactChannel,
    ContactRecord,
    ContactStatus,
    Envelope,
    IdType,
    NotificationChannel,
    PostalAddress,
)

CONTACTS_TOPIC = "dp2.contacts"
log = structlog.get_logger("dp2.contacts")


class ContactFileError(Dp2Error):
    reason_code = "BAD_CONTACT_FILE"
    hint = "Fix the named row of the contact file and load it again."


def pseudonym_key(home: Path) -> bytes:
    """The deployment's pseudonym key: DP2_PSEUDONYM_KEY (hex) or ``$DP2_HOME/pseudonym.key``.

    Made on first use (32 random bytes, mode 0600). Every service and connector of
    one deployment must share it, so that a CPR number maps to one pseudonym.
    """
    from_env = os.environ.get("DP2_PSEUDONYM_KEY")
    if from_env:
        return bytes.fromhex(from_env)
    return secret_key_file(home / "pseudonym.key")


def _id_type(value: str, row: int) -> IdType:
    try:
        return IdType(value.upper())
    except ValueError as exc:
        raise ContactFileError(f"row {row}: idType {value!r} is not CPR or CVR") from exc


def _check_id(identifier: str, id_type: IdType, row: int) -> None:
    digits = 10 if id_type is IdType.CPR else 8
    if len(identifier) != digits or not identifier.isdigit():
        raise ContactFileError(
            f"row {row}: a {id_type.value} number is {digits} digits as text "
            f"(leading zeros kept); got {len(identifier)} characters"
        )


def record_from_row(row: dict[str, Any], number: int, pseudonyms: Pseudonymizer) -> ContactRecord:
    """One contact record from a JSON object or CSV row (raises ContactFileError)."""
    identifier = str(row.get("id", "")).strip()
    id_type = _id_type(str(row.get("idType", "CPR")), number)
    _check_id(identifier, id_type, number)
    try:
        status = ContactStatus(str(row.get("status", "REGISTERED")).upper())
    except ValueError as exc:
        raise ContactFileError(
            f"row {number}: status {row.get('status')!r} is not REGISTERED, EXEMPT or UNKNOWN"
        ) from exc
    provider = row.get("provider") or None
    if status is ContactStatus.REGISTERED and not provider:
        raise ContactFileError(f"row {number}: a REGISTERED recipient needs a provider")
    channels_raw = row.get("channels") or []
    if isinstance(channels_raw, str):  # CSV: "email:a@b.dk;sms:+4512345678"
        channels_raw = [
            {"channel": part.split(":", 1)[0], "address": part.split(":", 1)[1]}
            for part in channels_raw.split(";")
            if ":" in part
        ]
    channels = [
        ContactChannel(channel=NotificationChannel(c["channel"].upper()), address=c["address"])
        for c in channels_raw
    ]
    address_raw = row.get("address")
    if isinstance(address_raw, dict):
        address: PostalAddress | None = PostalAddress(**address_raw)
    elif row.get("street"):
        address = PostalAddress(
            street=row["street"], postcode=row.get("postcode", ""), city=row.get("city", "")
        )
    else:
        address = None
    consent = row.get("readReceiptsConsent", False)
    return ContactRecord(
        recipientRef=pseudonyms.ref(id_type.value, identifier),
        idType=id_type,
        status=status,
        statusReason=row.get("statusReason") or None,
        mailboxProvider=provider,
        name=row.get("name") or None,
        address=address,
        channels=channels,
        language=row.get("language") or "da",
        readReceiptsConsent=consent if isinstance(consent, bool) else str(consent) == "true",
        updatedAt=datetime.now(UTC),
    )


def read_contact_file(path: Path, pseudonyms: Pseudonymizer) -> list[ContactRecord]:
    """Parse a JSON or CSV contact file into pseudonymised records."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        rows: list[dict[str, Any]] = list(csv.DictReader(text.splitlines()))
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContactFileError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(rows, list):
            raise ContactFileError(f"{path} must hold a JSON list of contact objects")
    return [record_from_row(row, n, pseudonyms) for n, row in enumerate(rows, start=1)]


async def publish_contacts(bootstrap: str, records: Iterable[ContactRecord]) -> int:
    producer = new_producer(bootstrap)
    await producer.start()
    count = 0
    try:
        futures = [
            await producer.send(CONTACTS_TOPIC, codec.encode(r), key=r.recipientRef.encode())
            for r in records
        ]
        for future in futures:
            await future
            count += 1
    finally:
        await producer.stop()
    return count


class ContactRegister:
    """A local, continuously updated cache of ``dp2.contacts`` (no consumer group).

    ``start()`` returns once the cache has caught up with the topic's end as it was
    at start, so the first lookups already see every record loaded before.
    """

    def __init__(self, bootstrap: str, topic: str = CONTACTS_TOPIC) -> None:
        self._bootstrap = bootstrap
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
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
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
                f"topic {self._topic} has no partitions (does it exist?)",
                reason_code="TOPIC_MISSING",
                hint="Run dp2 up (it creates DP2's topics) before starting services.",
            ) from exc
        end = await consumer.end_offsets(partitions)
        async with asyncio.timeout(timeout):
            while await behind(consumer, end):
                self._apply(await consumer.getmany(timeout_ms=200))
        self._task = asyncio.create_task(self._follow(), name="contacts:follow")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def _follow(self) -> None:
        assert self._consumer is not None  # noqa: S101 - set before the task starts
        while True:
            self._apply(await self._consumer.getmany(timeout_ms=1000))

    def _apply(self, batch: dict[TopicPartition, list[Any]]) -> None:
        for records in batch.values():
            for message in records:
                if message.value is None:  # a tombstone: the recipient was removed
                    self._records.pop(message.key.decode(), None)
                    continue
                try:
                    record = codec.decode(message.value, ContactRecord)
                except SchemaError as exc:
                    log.warning("contact_record_skipped", offset=message.offset, reason=str(exc))
                    continue
                self._records[record.recipientRef] = record


def recipient_ref(envelope: Envelope, pseudonyms: Pseudonymizer) -> str:
    """The contact-register key of a sealed envelope's recipient.

    A sealed envelope already carries a CPR recipient as its pseudonym; CVR numbers
    are public and travel in clear, so they are pseudonymised here.
    """
    recipient = envelope.header.recipient
    if recipient.idType is IdType.CPR:
        return recipient.recipientID
    return pseudonyms.ref(recipient.idType.value, recipient.recipientID)

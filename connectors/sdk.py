"""The DP2 SDK for connectors: build, seal, sign and submit messages; follow them.

Why this exists: a connector vendor should not have to know Avro, AES-GCM, X.509 or
Kafka's delivery semantics to send post safely. Three steps::

    message = build_message(sender_cvr="29189846", sender_label="Aarhus Kommune",
                            recipient_id="0101011234", label="Afgørelse",
                            documents=[Document("brev.pdf", "application/pdf", pdf)])
    async with Dp2Client.from_settings(settings, identity_name="aarhus") as client:
        receipt = await client.send(message)              # synchronous receipt
        event = await client.wait_for(receipt.message_uuid, {"DELIVERED", "REJECTED"})

``send`` checks what only the plaintext shows (CPR is 10 digits, CVR 8), looks the
recipient up in the contact register, encrypts the documents for the recipient's
mailbox provider (or the print provider), moves CPR numbers and every other
personal value of the header (brokers.security.personal) into the sealed part,
signs the canonical envelope, and publishes it idempotently (``acks=all``). The
receipt carries the message UUID and the Kafka position; the business receipts
(ACCEPTED, ROUTED, DELIVERED, ...) arrive as lifecycle events the client follows.

Why one module over 500 lines: it is the vendors' one import — building, sealing,
signing, submitting and following share the client's identity, producer and trust
store, and a vendor reads one file to know what a send promises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError
from cryptography.hazmat.primitives.serialization import Encoding

from brokers.contacts.register import ContactRegister
from brokers.runtime import context
from brokers.runtime.blobstore import BlobStore, FileBlobStore
from brokers.runtime.kafka import (
    AUTHORIZATION_ERRORS,
    BROKEN_PRODUCER_ERRORS,
    new_consumer,
    new_producer,
    read_from_start,
    refusal,
)
from brokers.runtime.records import CLAIMED_UUID_ATTRIBUTE, lifecycle_output
from brokers.runtime.settings import KafkaAccess, Settings
from brokers.runtime.tasks import cancel_and_wait
from brokers.security import sealing, signing
from brokers.security.pki import EventSigner, Identity, Pki
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from brokers.security.trust import TrustStore
from schemas import codec
from schemas.errors import Dp2Error, SchemaError
from schemas.models import (
    AdditionalDocument,
    CaseID,
    ContactStatus,
    ContentData,
    Envelope,
    File,
    IdType,
    InlineContent,
    LifecycleEvent,
    LifecycleState,
    MainDocument,
    MessageBody,
    MessageHeader,
    MessageType,
    Recipient,
    Sender,
)
from schemas.values import canonical_uuid, is_ascii_digits
from schemas.vocabulary import (
    COMMANDS_TOPIC,
    LIFECYCLE_TOPIC,
    MESSAGE_UUID_HEADER,
    PRINT_PROVIDER,
    SIGNER_CERT_HEADER,
    SUBMITTED_TOPIC,
)

log = logging.getLogger("dp2.sdk")
#: Failed sends in a row after which the client starts a fresh producer anyway.
REPLACE_AFTER = 3
#: Seconds between attempts at the SUBMITTED events Kafka did not take.
RESEND_EVERY_S = 1.0
#: How long stop() keeps trying them before it gives up (and says how many).
STOP_RESEND_S = 30.0


@dataclass(frozen=True)
class _Event:
    """A signed lifecycle event the client writes, kept until Kafka has it."""

    topic: str
    value: bytes
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class MessageError(Dp2Error):
    """The message cannot be sent as built; nothing was published."""

    reason_code = "INVALID_MESSAGE"


@dataclass(frozen=True, slots=True)
class Document:
    filename: str
    mime_type: str
    data: bytes
    label: str | None = None
    language: str = "da"


@dataclass(frozen=True, slots=True)
class Receipt:
    """The synchronous receipt: the message is durably on the backbone."""

    message_uuid: str
    topic: str
    partition: int
    offset: int
    submitted_at: datetime
    traceparent: str


#: MeMo's CaseID needs a case system next to the case id; when the sender cannot name
#: it (a citizen quoting a case number, a caller that gave none) DP2 writes this.
UNNAMED_CASE_SYSTEM = "ukendt"


def build_message(
    *,
    sender_cvr: str,
    sender_label: str,
    recipient_id: str,
    label: str,
    documents: Sequence[Document] = (),
    recipient_id_type: IdType = IdType.CPR,
    notification: str | None = None,
    message_uuid: str | None = None,
    message_type: MessageType = MessageType.DIGITALPOST,
    do_not_deliver_until: date | None = None,
    reply: bool = False,
    case_id: str | None = None,
    case_system: str | None = None,
    label_is_sensitive: bool = True,
) -> Envelope:
    """A plain (unsealed, unsigned) MeMo 1.2 message from values.

    ``case_id`` and ``case_system`` become ContentData's CaseID (MeMo requires both;
    without ``case_system`` it is :data:`UNNAMED_CASE_SYSTEM`)."""
    body = None
    if message_type is MessageType.DIGITALPOST:
        body = message_body(label, documents[:1], documents[1:])
    return Envelope(
        memoVersion="1.2",
        header=MessageHeader(
            messageType=message_type,
            messageUUID=message_uuid or str(uuid.uuid4()),
            label=label,
            notification=notification,
            reply=reply,
            doNotDeliverUntilDate=do_not_deliver_until,
            sender=Sender(senderID=sender_cvr, idType=IdType.CVR, label=sender_label),
            recipient=Recipient(recipientID=recipient_id, idType=recipient_id_type),
            contentData=ContentData(
                caseID=CaseID(caseID=case_id, caseSystem=case_system or UNNAMED_CASE_SYSTEM)
            )
            if case_id
            else None,
            labelIsSensitive=label_is_sensitive,
        ),
        body=body,
    )


def message_body(
    label: str,
    main: Sequence[Document],
    attachments: Sequence[Document] = (),
    created: datetime | None = None,
) -> MessageBody:
    """A MeMo body: ``main`` as the MainDocument's files, each attachment its own document."""
    return MessageBody(
        createdDateTime=created or datetime.now(UTC),
        mainDocument=MainDocument(label=label, file=[_file(d) for d in main]),
        additionalDocument=[
            AdditionalDocument(label=d.label or d.filename, file=[_file(d)]) for d in attachments
        ],
    )


def _file(document: Document) -> File:
    return File(
        encodingFormat=document.mime_type,
        filename=document.filename,
        language=document.language,
        content=InlineContent(data=document.data),
    )


def check_plain(message: Envelope) -> None:
    """What only the plaintext shows; the validator checks the rest after sealing."""
    for role, identifier, id_type in (
        ("sender", message.header.sender.senderID, message.header.sender.idType),
        ("recipient", message.header.recipient.recipientID, message.header.recipient.idType),
    ):
        digits = {IdType.CPR: 10, IdType.CVR: 8}.get(id_type)
        if digits is None or not is_ascii_digits(identifier, digits):
            code = {IdType.CPR: "INVALID_CPR", IdType.CVR: "INVALID_CVR"}.get(id_type)
            raise MessageError(
                f"the {role}'s {id_type.value} number must be {digits or '8 or 10'} digits "
                f"as a string; got {len(identifier)} characters",
                reason_code=code or "INVALID_ID",
                hint="Keep CPR (10) and CVR (8) numbers as strings with their leading zeros.",
            )


class Dp2Client:
    """A connector's connection to the backbone: ``start()``/``stop()``, ``async with``."""

    def __init__(
        self,
        *,
        kafka: KafkaAccess,
        identity: Identity,
        trust: TrustStore,
        pseudonyms: Pseudonymizer,
        blob_store: BlobStore,
        contacts: ContactRegister | None = None,
        actor: str | None = None,
        blob_threshold: int = 512 * 1024,
    ) -> None:
        self._kafka = kafka
        self.identity = identity
        self._trust = trust
        self._pseudonyms = pseudonyms
        self._blobs = blob_store
        self._contacts = contacts if contacts is not None else ContactRegister(kafka)
        self._owns_contacts = contacts is None
        self.actor = actor or f"connector:{identity.name}"
        self._threshold = blob_threshold
        self._producer: AIOKafkaProducer | None = None
        self._replacing = asyncio.Lock()
        self._failed_sends = 0  # in a row
        #: Fresh producers started after one could not recover (_after_failed_send).
        self.producers_replaced = 0
        self._events: dict[str, list[LifecycleEvent]] = {}
        self._submitted: set[str] = set()
        self._changed = asyncio.Condition()
        self._follower: AIOKafkaConsumer | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self._cert_der = identity.certificate.public_bytes(Encoding.DER)
        self._signer = EventSigner(identity)  # SUBMITTED and recalls: the sender's own word
        #: SUBMITTED events Kafka refused or lost (a broker's failure, a replaced
        #: producer): sent again until it takes them, the same signed bytes each time.
        self._unsent: deque[_Event] = deque()
        self._in_flight: dict[asyncio.Future[Any], tuple[_Event, AIOKafkaProducer]] = {}
        self._failed_event: tuple[AIOKafkaProducer, KafkaError] | None = None
        self._resend_wanted = asyncio.Event()
        self._resend_task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, identity_name: str, **kwargs: Any) -> Dp2Client:
        pki = Pki(settings.pki_dir)
        return cls(
            kafka=settings.kafka_as(identity_name),
            identity=pki.identity(identity_name),
            trust=TrustStore(settings.pki_dir),
            pseudonyms=Pseudonymizer(pseudonym_key(settings.home)),
            blob_store=FileBlobStore(settings.home / "blobs"),
            **kwargs,
        )

    async def __aenter__(self) -> Dp2Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._producer is not None:
            return
        self._producer = new_producer(self._kafka)
        await self._producer.start()
        if self._owns_contacts:
            await self._contacts.start()
        await self._start_following()
        self._resend_task = asyncio.create_task(self._resend_forever(), name="sdk:resend")

    async def stop(self) -> None:
        """Stop, once every SUBMITTED event is in Kafka (or STOP_RESEND_S have passed)."""
        resender, self._resend_task = self._resend_task, None
        await cancel_and_wait(resender)
        if self._producer is not None:
            await self._settle_events()
        task, self._follow_task = self._follow_task, None
        await cancel_and_wait(task)
        follower, self._follower = self._follower, None
        if follower is not None:
            await follower.stop()
        if self._owns_contacts:
            await self._contacts.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            # A letter answered NotSubmitted may still sit in the producer, retried
            # until a broker takes it: with Kafka down, stopping must not wait for ever.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(producer.stop(), STOP_RESEND_S)

    # --- sending ---------------------------------------------------------------
    def seal_and_sign(self, message: Envelope) -> tuple[Envelope, str]:
        """The envelope as it travels (encrypted, pseudonymised, signed) and its key."""
        check_plain(message)
        recipient = message.header.recipient
        ref = self._pseudonyms.ref(recipient.idType.value, recipient.recipientID)
        contact = self._contacts.get(ref)
        provider = (
            contact.mailboxProvider
            if contact is not None
            and contact.status is ContactStatus.REGISTERED
            and contact.mailboxProvider
            else PRINT_PROVIDER
        )
        key_id, key = self._trust.provider_key(provider)
        sealed = sealing.seal_envelope(
            message, key, key_id, self._pseudonyms, self._blobs, self._threshold
        )
        signed = signing.sign_envelope(sealed, self.identity.private_key, self.identity.fingerprint)
        return signed, ref

    async def send(self, message: Envelope) -> Receipt:
        """Seal, sign and publish; returns once Kafka has the message (acks=all)."""
        signed, ref = self.seal_and_sign(message)
        return await self.submit(
            codec.encode(signed),
            signed.header.messageUUID,
            ref,
            sender_id=signed.header.sender.senderID,
        )

    async def submit(
        self, raw: bytes, message_uuid: str, key: str, *, sender_id: str | None = None
    ) -> Receipt:
        """Publish already encoded bytes (``send`` does this; tests use it for bad input).

        The SUBMITTED event is signed by this client's identity and names ``sender_id``:
        the authority table (brokers.security.authority) believes it only if that
        identity may send as that sender."""
        message_uuid = canonical_uuid(message_uuid)
        producer = self._require_producer()
        self._submitted.add(message_uuid)
        traceparent = context.new_traceparent()
        headers = [
            (context.HEADER, traceparent.encode()),
            (MESSAGE_UUID_HEADER, message_uuid.encode()),
            (SIGNER_CERT_HEADER, self._cert_der),
        ]
        # Its time is the submission's, so the timeline shows it before ACCEPTED even
        # when the validator's event lands first (SUBMITTED is written after the ack).
        submitted = lifecycle_output(
            message_uuid, LifecycleState.SUBMITTED, self.actor, sender_id=sender_id
        )
        # The envelope first: SUBMITTED is said only of an envelope Kafka holds, and
        # the answer is the envelope's: an error means it is not in dp2.submitted
        # (send it again, with the same UUID: a duplicate is caught), a receipt means
        # it is, whatever becomes of the event after it.
        try:
            delivery = await producer.send(SUBMITTED_TOPIC, raw, key=key.encode(), headers=headers)
            metadata = await self._answer_to(delivery)
        except AUTHORIZATION_ERRORS as exc:  # nothing was sent: not even SUBMITTED
            raise refusal(exc, self._kafka, f"writing to {SUBMITTED_TOPIC}") from exc
        except KafkaError as exc:
            await self._after_failed_send(producer, exc)
            raise NotSubmitted(
                f"Kafka did not take message {message_uuid}: {type(exc).__name__}"
            ) from exc
        self._failed_sends = 0
        # Not awaited (one round trip per send, not two): one Kafka does not take is
        # kept and sent again (_resend_forever), and stop() waits for them all.
        await self._send_event(
            _Event(
                submitted.topic,
                self._signer.sign_encoded(submitted.value),
                submitted.key,
                ((context.HEADER, context.child_of(traceparent).encode()),),
            )
        )
        return Receipt(
            message_uuid=message_uuid,
            topic=metadata.topic,
            partition=metadata.partition,
            offset=metadata.offset,
            submitted_at=datetime.now(UTC),
            traceparent=traceparent,
        )

    async def recall(self, message_uuid: str, sender_id: str) -> None:
        """Ask the router to recall a scheduled message (signed; RECALLED follows).

        Only a message still waiting for its doNotDeliverUntilDate can be recalled,
        and only by a certificate that may send as its sender; ``wait_for(uuid,
        {"RECALLED"})`` tells whether it worked.
        """
        request = lifecycle_output(
            message_uuid, LifecycleState.RECALLED, self.actor, sender_id=sender_id
        )
        await self._require_producer().send_and_wait(
            COMMANDS_TOPIC, self._signer.sign_encoded(request.value), key=message_uuid.encode()
        )

    async def _answer_to(self, delivery: asyncio.Future[Any]) -> Any:
        """Kafka's answer to an envelope, within the producer timeout. An idempotent
        producer never gives a batch up (aiokafka retries it until a broker takes
        it), so with every broker down a send would wait for ever; the caller hears
        NotSubmitted instead, and a resend with the same UUID is caught as a duplicate
        if the first try lands after all."""
        timeout = self._kafka.topology.producer_timeout_ms / 1000
        try:
            return await asyncio.wait_for(asyncio.shield(delivery), timeout)
        except TimeoutError:
            delivery.add_done_callback(_retrieved)  # its late answer is nobody's now
            raise KafkaTimeoutError(f"no answer from Kafka within {timeout:g} s") from None

    async def _after_failed_send(self, producer: AIOKafkaProducer, exc: KafkaError) -> None:
        """Start a fresh producer when this one cannot recover: an idempotent producer
        whose sequence broke with a broker's failure (BROKEN_PRODUCER_ERRORS) fails
        every send after it, so does one that failed REPLACE_AFTER sends in a row. The
        caller's NotSubmitted resend then goes through the new one (a new producer id);
        several sends failing at once replace it once."""
        self._failed_sends += 1
        if not isinstance(exc, BROKEN_PRODUCER_ERRORS) and self._failed_sends < REPLACE_AFTER:
            return
        stop_broken = producer.stop
        async with self._replacing:
            if self._producer is not producer:
                return  # another failed send replaced it already
            fresh = new_producer(self._kafka)
            try:
                await fresh.start()
            except KafkaError:
                # No broker answers (Kafka is down): keep the old one, and try again
                # at the next failed send; the caller's NotSubmitted stands.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(fresh.stop(), timeout=5)
                return
            self._producer, self._failed_sends = fresh, 0
            self.producers_replaced += 1
            log.warning("sdk_producer_replaced after %s", type(exc).__name__)
        with contextlib.suppress(Exception):  # its pending sends fail: they are resent
            await asyncio.wait_for(stop_broken(), timeout=5)
        # An event a broken producer never answered (it was stopped before it could)
        # would wait forever: it is sent again through the fresh one.
        for delivery, (event, owner) in list(self._in_flight.items()):
            if owner is producer and not delivery.done():
                del self._in_flight[delivery]
                self._event_not_taken(event, None)

    @property
    def unsent_events(self) -> int:
        """SUBMITTED events Kafka has not confirmed yet (sent again every RESEND_EVERY_S)."""
        return len(self._unsent) + len(self._in_flight)

    async def _send_event(self, event: _Event) -> None:
        """Hand ``event`` to the producer without waiting for Kafka: its answer comes
        to _event_answered, which keeps it for a resend if Kafka did not take it."""
        producer = self._require_producer()
        try:
            delivery = await producer.send(
                event.topic, event.value, key=event.key, headers=list(event.headers)
            )
        except KafkaError as exc:
            self._event_not_taken(event, exc, producer)
        else:
            self._in_flight[delivery] = (event, producer)
            delivery.add_done_callback(self._event_answered)

    def _event_answered(self, delivery: asyncio.Future[Any]) -> None:
        sent = self._in_flight.pop(delivery, None)
        if sent is None:
            return  # given up on already: its producer was replaced (_after_failed_send)
        event, producer = sent
        if delivery.cancelled():
            self._event_not_taken(event, None, producer)
        elif delivery.exception() is not None:
            self._event_not_taken(event, delivery.exception(), producer)

    def _event_not_taken(
        self,
        event: _Event,
        exc: BaseException | None,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        # The letter is in Kafka all the same; only its trace waits for this event.
        log.warning("sdk_event_unsent, sending it again: %r", exc)
        self._unsent.append(event)
        if isinstance(exc, KafkaError) and producer is not None:
            self._failed_event = (producer, exc)
        self._resend_wanted.set()

    async def _resend_forever(self) -> None:
        while True:
            await self._resend_wanted.wait()
            await asyncio.sleep(RESEND_EVERY_S)
            self._resend_wanted.clear()
            try:
                await self._resend_unsent()
            except Exception:  # the next attempt may go better; never stop trying
                log.exception("sdk_resend_failed")
                self._resend_wanted.set()

    async def _resend_unsent(self) -> None:
        """Send every unsent event again, the same signed bytes (the trace ignores one
        it holds already). A producer that failed an event is treated as one that
        failed an envelope: replaced when it cannot recover."""
        failed, self._failed_event = self._failed_event, None
        if failed is not None:
            await self._after_failed_send(*failed)
        for _ in range(len(self._unsent)):
            await self._send_event(self._unsent.popleft())

    async def _settle_events(self) -> None:
        """Wait until Kafka has taken every event, sending the ones it did not take
        again, for up to STOP_RESEND_S; say how many are left when it gives up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_RESEND_S
        while self.unsent_events and loop.time() < deadline:
            await self._resend_unsent()
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(
                    self._require_producer().flush(), timeout=max(0.1, deadline - loop.time())
                )
            await asyncio.sleep(0)  # the answers' callbacks run
            if self._unsent:
                await asyncio.sleep(min(RESEND_EVERY_S, max(0.0, deadline - loop.time())))
        if self.unsent_events:
            log.error(
                "sdk_events_lost %d SUBMITTED events never reached Kafka; their letters "
                "did, and their traces begin at ACCEPTED",
                self.unsent_events,
            )

    def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise Dp2Error(
                "the client is not started",
                reason_code="CLIENT_NOT_STARTED",
                hint="Use 'async with Dp2Client(...)' or call start() first.",
            )
        return self._producer

    # --- following -------------------------------------------------------------
    async def _start_following(self) -> None:
        """Read dp2.lifecycle from its current end: the events of what we send next."""
        follower = new_consumer(self._kafka, group_id=None, enable_auto_commit=False)
        await follower.start()
        await read_from_start(follower, [LIFECYCLE_TOPIC], to_end=True)
        self._follower = follower
        self._follow_task = asyncio.create_task(self._follow(follower), name="sdk:follow")

    async def _follow(self, follower: AIOKafkaConsumer) -> None:
        while True:
            batch = await follower.getmany(timeout_ms=500)
            if not batch:
                continue
            async with self._changed:
                for records in batch.values():
                    for record in records:
                        try:
                            event = codec.decode(record.value or b"", LifecycleEvent)
                        except SchemaError:
                            continue
                        self._events.setdefault(event.messageUUID, []).append(event)
                        # A record of ours the validator could not vouch for is REJECTED on
                        # its own timeline, naming the UUID it claimed (records.py).
                        claimed = event.attributes.get(CLAIMED_UUID_ATTRIBUTE)
                        if claimed in self._submitted:
                            self._events.setdefault(claimed, []).append(event)
                self._changed.notify_all()

    def events(self, message_uuid: str) -> list[LifecycleEvent]:
        """Lifecycle events seen so far for a message, in arrival order."""
        return list(self._events.get(canonical_uuid(message_uuid), []))

    async def wait_for(
        self, message_uuid: str, states: Iterable[str | LifecycleState], timeout: float = 30.0
    ) -> LifecycleEvent:
        """The first event of ``message_uuid`` in one of ``states`` (raises on timeout)."""
        message_uuid = canonical_uuid(message_uuid)
        wanted = {LifecycleState(s) for s in states}

        def found() -> LifecycleEvent | None:
            return next((e for e in self._events.get(message_uuid, []) if e.state in wanted), None)

        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: found() is not None)
            except TimeoutError as exc:
                seen = [
                    e.state.value + (f" {e.reasonCode}" if e.reasonCode else "")
                    for e in self._events.get(message_uuid, [])
                ]
                raise Dp2Error(
                    f"no {sorted(s.value for s in wanted)} for {message_uuid} within "
                    f"{timeout:.0f} s (seen: {seen})",
                    reason_code="RECEIPT_TIMEOUT",
                    hint="The message is pending, not failed: check dp2 trace UUID.",
                ) from exc
        event = found()
        assert event is not None  # noqa: S101 - wait_for returned because it exists
        return event


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Take a future's outcome, so asyncio does not report it as never retrieved."""
    if not future.cancelled():
        future.exception()


class NotSubmitted(Dp2Error):
    """Kafka did not acknowledge the envelope: the letter was not accepted."""

    reason_code = "NOT_SUBMITTED"
    hint = (
        "Nothing was accepted; send it again with the same messageUUID (if it did "
        "arrive after all, the resend is answered DUPLICATE, never delivered twice)."
    )
    retriable = True


__all__ = [
    "Document",
    "Dp2Client",
    "MessageError",
    "NotSubmitted",
    "Receipt",
    "build_message",
    "check_plain",
    "message_body",
]

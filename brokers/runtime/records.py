"""What a handler returns, and the lifecycle events every service emits.

Why apart from the worker loop: the SDK and connectors build lifecycle events too,
and must not import the worker, its HTTP host or its metrics to do it.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRecord

from brokers.runtime import context
from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import LifecycleEvent, LifecycleState
from schemas.vocabulary import LIFECYCLE_TOPIC, MESSAGE_UUID_HEADER

if TYPE_CHECKING:
    from brokers.security.pki import EventSigner

_EVENT_NAMESPACE = uuid.UUID("0c5d3a8e-8f0e-4b8e-a3c6-6d1f4f2f9b21")


@dataclass(frozen=True, slots=True)
class Output:
    """One record a handler wants produced; ``traceparent`` is filled in by the loop."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    #: Set on a REJECTED event, so the worker counts rejections by reason.
    rejection: str | None = None
    #: Produce a tombstone (no value; ``value`` is then empty): the dead letter of a
    #: tombstone stays one, so that a re-drive sends a tombstone again.
    tombstone: bool = False
    #: The lifecycle event ``value`` encodes, unsigned (lifecycle_output sets it): the
    #: producing round signs it with the others (brokers.runtime.kafka.sign_round)
    #: without decoding it again.
    event: LifecycleEvent | None = field(default=None, compare=False, repr=False)
    #: Who signs that event (a provider signs its own DELIVERED); None: the producer's
    #: identity.
    sign_as: EventSigner | None = field(default=None, compare=False, repr=False)


Handler = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[Sequence[Output]]]


def lifecycle_first(outputs: Sequence[Output]) -> list[list[Output]]:
    """The rounds to produce ``outputs`` in: lifecycle events first, acknowledged before
    the records that move on (a provider's DELIVERED is believed only after the
    router's ROUTED, brokers.security.authority); one round when there is one kind."""
    events = [o for o in outputs if o.topic == LIFECYCLE_TOPIC]
    others = [o for o in outputs if o.topic != LIFECYCLE_TOPIC]
    return [events, others] if events and others else [list(outputs)]


def now() -> datetime:
    return datetime.now(UTC)


def iso_z(moment: datetime, timespec: str = "microseconds") -> str:
    """ISO 8601 in UTC with a Z, e.g. 2025-01-31T12:00:00.000000Z (``timespec`` as in
    ``datetime.isoformat``: "auto" leaves out zero microseconds)."""
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def source_of(record: ConsumerRecord[bytes, bytes]) -> str:
    """Where a record came from: ``topic/partition/offset``."""
    return f"{record.topic}/{record.partition}/{record.offset}"


def lifecycle_output(
    message_uuid: str,
    state: LifecycleState,
    actor: str,
    *,
    reason_code: str | None = None,
    reason_text: str | None = None,
    sender_id: str | None = None,
    recipient_ref: str | None = None,
    channel: str | None = None,
    related: str | None = None,
    attributes: dict[str, str] | None = None,
    occurred_at: datetime | None = None,
    source: str | None = None,
) -> Output:
    """A lifecycle event as an output record on dp2.lifecycle, keyed by message UUID.

    With ``source`` (the input's topic/partition/offset) the event id is derived
    from actor, message, state and source, so re-processing a redelivered input
    re-emits the *same* event, which the trace store keeps once.
    """
    event_id = (
        uuid.uuid5(_EVENT_NAMESPACE, f"{actor}|{message_uuid}|{state.value}|{source}")
        if source
        else uuid.uuid4()
    )
    event = LifecycleEvent(
        eventId=str(event_id),
        messageUUID=message_uuid,
        state=state,
        reasonCode=reason_code,
        reasonText=reason_text,
        actor=actor,
        occurredAt=occurred_at or now(),
        # Per-actor ordering hint for events within the same microsecond.
        sequence=time.monotonic_ns(),
        senderID=sender_id,
        recipientRef=recipient_ref,
        channel=channel,
        relatedMessageUUID=related,
        attributes=attributes or {},
    )
    # The model folds the UUID to lower case: the key is the canonical form too.
    return Output(LIFECYCLE_TOPIC, codec.encode(event), key=event.messageUUID.encode(), event=event)


def rejection_output(message_uuid: str, actor: str, error: Dp2Error, **kwargs: Any) -> Output:
    """REJECTED with the error's stable reason code and its how-to-fix sentence."""
    output = lifecycle_output(
        message_uuid,
        LifecycleState.REJECTED,
        actor,
        reason_code=error.reason_code,
        reason_text=f"{error.message.rstrip('.')}. {error.hint}",
        **kwargs,
    )
    return dataclasses.replace(output, rejection=error.reason_code)


_POSITION_NAMESPACE = uuid.UUID("5b1f0e4c-3c1b-4d0e-9b59-2f1d5f3b7a10")  # as before

#: The attribute of a REJECTED on a record's own timeline: the UUID the record claimed.
CLAIMED_UUID_ATTRIBUTE = "claimedMessageUUID"


def position_uuid(record: ConsumerRecord[bytes, bytes]) -> str:
    """A message UUID of a record's own, derived from where it was read."""
    return position_uuid_of(source_of(record))


def position_uuid_of(source: str) -> str:
    """The timeline of the record at ``topic/partition/offset``."""
    return str(uuid.uuid5(_POSITION_NAMESPACE, source))


def unverified_rejection(
    record: ConsumerRecord[bytes, bytes], actor: str, error: Dp2Error, claimed: str | None
) -> Output:
    """REJECTED for a record whose bytes nobody vouches for (undecodable, or its
    signature does not hold), on a timeline derived from its position — never on
    the message it names, which a forger could choose (DESIGN.md). The UUID it
    claimed is kept as an attribute, which the sender's SDK watches."""
    source = source_of(record)
    attributes = {"deadLetter": source}
    if claimed:
        attributes[CLAIMED_UUID_ATTRIBUTE] = claimed
    return rejection_output(
        position_uuid(record), actor, error, attributes=attributes, source=source
    )


def message_uuid_header(record: ConsumerRecord[bytes, bytes]) -> str | None:
    raw = context.header_value(record.headers, MESSAGE_UUID_HEADER)
    if raw is None:
        return None
    try:
        return str(uuid.UUID(raw.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        return None

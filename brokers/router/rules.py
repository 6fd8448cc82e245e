"""The router's rules: where an accepted message goes — a provider, print, or later.

Pure apart from what is injected (the contact register, the trust store, the
schedule and a clock); brokers.router.service wires them to Kafka. See that
module's docstring for the routes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka import ConsumerRecord

from brokers.contacts.records import recipient_ref
from brokers.contacts.register import ContactRegister
from brokers.router.schedule import Schedule
from brokers.runtime.records import Output, lifecycle_output
from brokers.security import signing
from brokers.security.pseudonyms import Pseudonymizer
from brokers.security.trust import TrustStore
from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import ContactStatus, Envelope, LifecycleEvent, LifecycleState
from schemas.vocabulary import (
    PRINT_PROVIDER,
    PRINT_TOPIC,
    SCHEDULED_TOPIC,
    TRACEPARENT_HEADER,
    provider_topic,
)

log = structlog.get_logger("dp2.router")


def _forwarded(record: ConsumerRecord[bytes, bytes]) -> list[tuple[str, bytes]]:
    """The connector's headers travel on (message UUID, signer certificate); the
    worker adds a fresh traceparent."""
    return [(k, v) for k, v in record.headers or () if k != TRACEPARENT_HEADER]


class Router:
    """Routing decisions; pure apart from the injected register, schedule and clock."""

    actor = "router"

    def __init__(
        self,
        *,
        contacts: ContactRegister,
        trust: TrustStore,
        pseudonyms: Pseudonymizer,
        schedule: Schedule,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._contacts = contacts
        self._trust = trust
        self._pseudonyms = pseudonyms
        self._schedule = schedule
        self._clock = clock
        self.provider_topics: set[str] = set()

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> Sequence[Output]:
        envelope = codec.decode(record.value or b"", Envelope)
        header = envelope.header
        ref = recipient_ref(envelope, self._pseudonyms)
        due = header.doNotDeliverUntilDate
        if due is not None and due > self._clock().date():
            self._schedule.hold(header.messageUUID, due, header.sender.senderID, ref, record.value)
            return [
                Output(
                    SCHEDULED_TOPIC,
                    record.value,
                    key=header.messageUUID.encode(),
                    headers=_forwarded(record),
                ),
                lifecycle_output(
                    header.messageUUID,
                    LifecycleState.SCHEDULED,
                    self.actor,
                    sender_id=header.sender.senderID,
                    recipient_ref=ref,
                    attributes={"doNotDeliverUntilDate": due.isoformat()},
                ),
            ]
        return self.route_now(envelope, record.value, ref, _forwarded(record))

    async def restore(self, record: ConsumerRecord[bytes, bytes]) -> Sequence[Output]:
        """A record of dp2.scheduled: hold it if the schedule does not know it yet.

        The schedule is a projection of dp2.scheduled. :meth:`handle` holds a letter
        before producing it there, so normally this finds it known and does nothing;
        a router instance whose store lacks it (a new instance, a store restored from
        a backup) gets it back. A letter already released or recalled stays so.
        """
        envelope = codec.decode(record.value or b"", Envelope)
        header = envelope.header
        due = header.doNotDeliverUntilDate
        if due is not None:
            ref = recipient_ref(envelope, self._pseudonyms)
            self._schedule.hold(header.messageUUID, due, header.sender.senderID, ref, record.value)
        return []

    def route_now(
        self,
        envelope: Envelope,
        raw: bytes,
        ref: str,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> list[Output]:
        header = envelope.header
        contact = self._contacts.get(ref)
        digital = contact is not None and contact.status is ContactStatus.REGISTERED
        provider = contact.mailboxProvider if digital and contact else PRINT_PROVIDER
        topic = provider_topic(provider).name if digital and provider else PRINT_TOPIC
        common: dict[str, Any] = {"sender_id": header.sender.senderID, "recipient_ref": ref}
        key_id = envelope.encryption.recipientKeyId if envelope.encryption else None
        try:
            expected_key_id, _ = self._trust.provider_key(provider or PRINT_PROVIDER)
        except Dp2Error as exc:
            return [self._failed(header.messageUUID, exc.reason_code, exc.message, common)]
        chose_paper = False
        if key_id is not None and key_id != expected_key_id:
            # Sealed for print although the recipient is registered: the sender chose
            # paper (SF1601's Fysisk Post), and the key id is under its signature.
            chose_paper = digital and self._is_print_key(key_id)
            if not chose_paper:
                return [
                    self._failed(
                        header.messageUUID,
                        "ENCRYPTED_FOR_OTHER_PROVIDER",
                        f"the documents are encrypted for key {key_id[:12]}…, not for "
                        f"{provider!r} (key {expected_key_id[:12]}…), where the recipient "
                        "receives post now. Look the recipient up again and send the message "
                        "anew",
                        common,
                    )
                ]
            digital, provider, topic = False, PRINT_PROVIDER, PRINT_TOPIC
        if digital:
            self.provider_topics.add(topic)
        channel = "digital" if digital else "print"
        reason = (
            None
            if digital
            else "the sender sealed it for print"
            if chose_paper
            else f"recipient {contact.status.value if contact else 'UNKNOWN'}"
        )
        return [
            Output(topic, raw, key=ref.encode(), headers=headers or []),
            lifecycle_output(
                header.messageUUID,
                LifecycleState.ROUTED,
                self.actor,
                channel=channel,
                reason_text=reason,
                attributes={"topic": topic, "provider": provider or PRINT_PROVIDER},
                **common,
            ),
        ]

    def _is_print_key(self, key_id: str) -> bool:
        try:
            print_key_id, _ = self._trust.provider_key(PRINT_PROVIDER)
        except Dp2Error:
            return False
        return key_id == print_key_id

    def _failed(self, message_uuid: str, code: str, text: str, common: dict[str, Any]) -> Output:
        return lifecycle_output(
            message_uuid,
            LifecycleState.FAILED,
            self.actor,
            reason_code=code,
            reason_text=text,
            **common,
        )

    def release_due(self) -> list[Output]:
        """Outputs for every held message whose date has come (marks them released)."""
        outputs: list[Output] = []
        for message_uuid, raw in self._schedule.due(self._clock().date()):
            envelope = codec.decode(raw, Envelope)
            if self._schedule.mark(message_uuid, "released"):
                outputs += self.route_now(envelope, raw, recipient_ref(envelope, self._pseudonyms))
        return outputs

    def recall(self, message_uuid: str, requester_may_send_as: Callable[[str], bool]) -> Output:
        """RECALLED if the message still waits and the requester may act for its sender."""
        held = self._schedule.sender_of(message_uuid)
        if held is None or held[1] != "waiting":
            state = "unknown" if held is None else held[1]
            raise Dp2Error(
                f"message {message_uuid} is not waiting for delivery (it is {state})",
                reason_code="NOT_RECALLABLE",
                hint="Only a scheduled message can be recalled, before its delivery date.",
            )
        sender_id = held[0]
        if not requester_may_send_as(sender_id):
            raise Dp2Error(
                f"the requester may not act for sender {sender_id}",
                reason_code="RECALL_NOT_ALLOWED",
                hint="Recall with the certificate of the sender or its authorised vendor.",
            )
        if not self._schedule.mark(message_uuid, "recalled"):
            # Another router instance released (or recalled) it since the check above.
            raise Dp2Error(
                f"message {message_uuid} is no longer waiting for delivery",
                reason_code="NOT_RECALLABLE",
                hint="Only a scheduled message can be recalled, before its delivery date.",
            )
        return lifecycle_output(
            message_uuid, LifecycleState.RECALLED, self.actor, sender_id=sender_id
        )

    async def handle_command(self, record: ConsumerRecord[bytes, bytes]) -> Sequence[Output]:
        """A signed recall request (a RECALLED event from the sender's connector)."""
        request = codec.decode(record.value or b"", LifecycleEvent)
        if request.state is not LifecycleState.RECALLED:
            return []
        try:
            self._trust.reload()
            certificate = self._trust.certificate(request.attributes.get("signer", ""))
            self._trust.verify_certificate(certificate, self._clock())
            signing.verify_event(request, certificate)
            return [
                self.recall(
                    request.messageUUID, lambda cvr: self._trust.may_send_as(certificate, cvr)
                )
            ]
        except Dp2Error as exc:
            if exc.retriable:
                raise
            log.warning(
                "recall_refused", message_id=request.messageUUID, reason_code=exc.reason_code
            )
            return []

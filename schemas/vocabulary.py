"""The backbone's vocabulary: every topic and header name DP2 uses, declared once.

Why one module: every service, connector, the SDK, the tests and ``dp2 up`` must
agree on names, keys, partition counts and retention. No topic or header name is
written as a literal anywhere else (tests/unit/test_architecture.py checks it, and
that every declared topic is produced and consumed by some service).

Keys (DESIGN.md): recipient pseudonym where order per recipient matters, message
UUID on ``dp2.lifecycle``, recipient pseudonym on the compacted ``dp2.contacts``.
Pure: creating the topics is brokers.runtime.kafka's ``ensure_topics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from schemas.errors import Dp2Error

# --- topics --------------------------------------------------------------------------
SUBMITTED_TOPIC: Final = "dp2.submitted"
ACCEPTED_TOPIC: Final = "dp2.accepted"
SCHEDULED_TOPIC: Final = "dp2.scheduled"
PRINT_TOPIC: Final = "dp2.print"
LIFECYCLE_TOPIC: Final = "dp2.lifecycle"
#: The routing directory: recipient pseudonym -> status and mailbox provider (senders read it).
DIRECTORY_TOPIC: Final = "dp2.directory"
#: Contact details (name, address, notification channels): only the notifier and print read it.
CONTACTS_TOPIC: Final = "dp2.contacts"
DEADLETTER_TOPIC: Final = "dp2.deadletter"
COMMANDS_TOPIC: Final = "dp2.commands"
DELIVER_TOPIC_PREFIX: Final = "dp2.deliver."

#: The provider id under which remote print receives post (its key seals printed letters).
PRINT_PROVIDER: Final = "print"

# --- headers -------------------------------------------------------------------------
#: The message a record is about, for logs and dead letters (never trusted for more).
MESSAGE_UUID_HEADER: Final = "dp2-message-uuid"
#: The signer's certificate (DER), so a verifier need not look it up by fingerprint.
SIGNER_CERT_HEADER: Final = "dp2-signer-cert"
#: A register record's signature: ``<signer fingerprint>:<base64 signature>`` over the
#: topic, key and value (brokers.contacts.register).
REGISTER_SIGNATURE_HEADER: Final = "dp2-register-signature"
#: W3C trace context (brokers.runtime.context).
TRACEPARENT_HEADER: Final = "traceparent"
#: Why a record was parked on dp2.deadletter, where it came from, and by whom.
REASON_CODE_HEADER: Final = "dp2-reason-code"
REASON_HEADER: Final = "dp2-reason"
SOURCE_HEADER: Final = "dp2-source"
SERVICE_HEADER: Final = "dp2-service"
DEADLETTER_HEADERS: Final = frozenset(
    {REASON_CODE_HEADER, REASON_HEADER, SOURCE_HEADER, SERVICE_HEADER}
)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    key: str
    purpose: str
    partitions: int = 3
    config: dict[str, str] = field(default_factory=dict)


_WEEK_MS = str(7 * 24 * 3600 * 1000)
_YEAR_MS = str(365 * 24 * 3600 * 1000)

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(SUBMITTED_TOPIC, "recipient pseudonym", "signed envelopes from connectors"),
    TopicSpec(ACCEPTED_TOPIC, "recipient pseudonym", "envelopes the validator accepted"),
    TopicSpec(SCHEDULED_TOPIC, "message UUID", "held until doNotDeliverUntilDate"),
    TopicSpec(PRINT_TOPIC, "recipient pseudonym", "envelopes for remote print"),
    TopicSpec(
        LIFECYCLE_TOPIC,
        "message UUID",
        "every lifecycle event of every message: the source of every trace",
        config={"retention.ms": _YEAR_MS},
    ),
    TopicSpec(
        DIRECTORY_TOPIC,
        "recipient pseudonym",
        "routing directory: latest status and provider per recipient, no contact details",
        partitions=1,
        config={"cleanup.policy": "compact"},
    ),
    TopicSpec(
        CONTACTS_TOPIC,
        "recipient pseudonym",
        "contact details: latest name, address and channels per recipient",
        partitions=1,
        config={"cleanup.policy": "compact"},
    ),
    TopicSpec(
        DEADLETTER_TOPIC,
        "source topic and offset",
        "records no service could decode or process, with their reason",
        partitions=1,
        config={"retention.ms": _YEAR_MS},
    ),
    TopicSpec(
        COMMANDS_TOPIC,
        "message UUID",
        "signed requests of senders about their own messages (recall)",
    ),
)


def provider_topic(provider_id: str) -> TopicSpec:
    """The delivery topic of one mailbox provider: ``dp2.deliver.<provider>``."""
    # ASCII only: Kafka topic names are [a-zA-Z0-9._-], and str.isalnum is true for "é".
    if not provider_id or not all(c.isascii() and (c.isalnum() or c in "-_") for c in provider_id):
        raise Dp2Error(
            f"mailbox provider id {provider_id!r} cannot name a Kafka topic",
            hint="Use letters, digits, '-' and '_' only.",
            reason_code="BAD_PROVIDER_ID",
        )
    return TopicSpec(
        f"{DELIVER_TOPIC_PREFIX}{provider_id}",
        "recipient pseudonym",
        f"envelopes for mailbox provider {provider_id}",
        config={"retention.ms": _WEEK_MS},
    )


def is_delivery_topic(topic: str) -> bool:
    return topic.startswith(DELIVER_TOPIC_PREFIX)


def provider_of(topic: str) -> str:
    """The provider id of a delivery topic (``dp2.deliver.mitpost`` -> ``mitpost``)."""
    return topic.removeprefix(DELIVER_TOPIC_PREFIX)

"""The topics of the DP2 backbone, declared once, and the code that creates them.

Why one declaration: every service, the tests and ``dp2 up`` must agree on names,
keys, partition counts and retention; a consistency test checks that each topic
declared here has a producer and a consumer once the services exist.

Keys (DESIGN.md): recipient pseudonym where order per recipient matters,
message UUID on ``dp2.lifecycle``, recipient pseudonym on the compacted
``dp2.contacts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.errors import Dp2Error


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
    TopicSpec("dp2.submitted", "recipient pseudonym", "signed envelopes from connectors"),
    TopicSpec("dp2.accepted", "recipient pseudonym", "envelopes the validator accepted"),
    TopicSpec("dp2.scheduled", "message UUID", "held until doNotDeliverUntilDate"),
    TopicSpec("dp2.print", "recipient pseudonym", "envelopes for remote print"),
    TopicSpec(
        "dp2.lifecycle",
        "message UUID",
        "every lifecycle event of every message: the source of every trace",
        config={"retention.ms": _YEAR_MS},
    ),
    TopicSpec(
        "dp2.contacts",
        "recipient pseudonym",
        "contact register: latest record per recipient",
        partitions=1,
        config={"cleanup.policy": "compact"},
    ),
    TopicSpec(
        "dp2.deadletter",
        "source topic and offset",
        "records no service could decode or process, with their reason",
        partitions=1,
        config={"retention.ms": _YEAR_MS},
    ),
    TopicSpec("dp2.notify", "recipient pseudonym", "notification requests"),
    TopicSpec(
        "dp2.commands",
        "message UUID",
        "signed requests of senders about their own messages (recall)",
    ),
)


def provider_topic(provider_id: str) -> TopicSpec:
    """The delivery topic of one mailbox provider: ``dp2.deliver.<provider>``."""
    if not provider_id or not all(c.isalnum() or c in "-_" for c in provider_id):
        raise Dp2Error(
            f"mailbox provider id {provider_id!r} cannot name a Kafka topic",
            hint="Use letters, digits, '-' and '_' only.",
            reason_code="BAD_PROVIDER_ID",
        )
    return TopicSpec(
        f"dp2.deliver.{provider_id}",
        "recipient pseudonym",
        f"envelopes for mailbox provider {provider_id}",
        config={"retention.ms": _WEEK_MS},
    )


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

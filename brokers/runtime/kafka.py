"""The Kafka clients DP2 uses, configured once: producer, consumers, topics and ACLs.

Why one place: every service and the SDK must produce with the same guarantees
(idempotent, ``acks=all``), authenticate the same way (mTLS with the process's own
PKI identity, brokers.runtime.settings.KafkaAccess), read a topic from its start
the same way, and turn Kafka's refusals into a Dp2Error that says what to do.

Every lifecycle event a DP2 producer sends is signed by the identity it connects
as (:class:`SigningProducer`): the certificate that is a party's Kafka principal
also signs what it asserts on dp2.lifecycle, which brokers.security.authority
checks. An event signed already (a provider's DELIVERED) is sent as it is.

ACLs: aiokafka's admin client has no ACL calls, so :func:`create_acls`,
:func:`describe_acls` and :func:`delete_acls` send Kafka's CreateAcls (v1),
DescribeAcls (v1) and DeleteAcls (v1) requests through its protocol layer.
Which ACLs a deployment needs is brokers.stack.access's business.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TopicAuthorizationFailedError,
    UnknownProducerId,
)
from aiokafka.protocol.admin import (
    CreateAclsRequest_v1,
    DeleteAclsRequest_v1,
    DescribeAclsRequest_v1,
)
from aiokafka.protocol.api import Request

from brokers.runtime.records import Output
from brokers.runtime.settings import KafkaAccess
from brokers.security.pki import EventSigner
from schemas import codec
from schemas.errors import ConfigError, Dp2Error, SchemaError
from schemas.models import LifecycleEvent
from schemas.vocabulary import LIFECYCLE_TOPIC, TopicSpec

#: Kafka's refusals of a request the principal has no ACL for.
AUTHORIZATION_ERRORS = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)
#: Errors after which an idempotent producer does not recover by retrying (after a
#: broker failure): the worker and the SDK start a fresh producer (a new producer id).
BROKEN_PRODUCER_ERRORS = (
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
    InvalidProducerEpoch,
)


class KafkaRefusal(Dp2Error):
    """Kafka refused this principal a right; nothing was written."""

    reason_code = "KAFKA_NOT_AUTHORISED"
    retriable = False


def refusal(exc: BaseException, access: KafkaAccess, what: str) -> KafkaRefusal:
    """Kafka's authorisation error, as a Dp2Error that names the principal and the fix."""
    return KafkaRefusal(
        f"Kafka refused {what} to principal {principal_of(access)!r} ({type(exc).__name__})",
        hint="Rights follow from the deployment: dp2 kafka acls shows them. Use the "
        "identity meant for this (its kind and connectors.toml decide), or ask the "
        "operator to add it to connectors.toml and run dp2 kafka acls --apply.",
    )


def is_refusal(exc: BaseException) -> bool:
    """True for Kafka's authorisation errors, also when wrapped in another KafkaError."""
    return isinstance(exc, AUTHORIZATION_ERRORS) or (
        isinstance(exc, KafkaError) and isinstance(exc.__cause__, AUTHORIZATION_ERRORS)
    )


def principal_of(access: KafkaAccess) -> str:
    """The principal name the broker gives this client (``kind:name``), if known."""
    return access.identity or "(anonymous)"


def new_consumer(access: KafkaAccess, *topics: str, **settings: Any) -> AIOKafkaConsumer:
    """A consumer that authenticates as ``access``'s identity."""
    return AIOKafkaConsumer(*topics, **access.client_options(), **settings)


def new_admin(access: KafkaAccess, **settings: Any) -> AIOKafkaAdminClient:
    """An admin client that authenticates as ``access``'s identity."""
    return AIOKafkaAdminClient(**access.client_options(), **settings)


async def read_from_start(
    consumer: AIOKafkaConsumer,
    topics: Sequence[str],
    *,
    to_end: bool = False,
    wait_s: float = 30.0,
) -> list[TopicPartition]:
    """Subscribe a group-less consumer to every partition of ``topics`` and seek.

    Without a group, aiokafka assigns all partitions on subscribe; but only once
    it has fetched metadata, so wait for the assignment. Seeks to the beginning,
    or to the end with ``to_end`` (to see only what comes next).

    Create the consumer with ``auto_offset_reset`` "earliest" (or "latest" with
    ``to_end``): the assignment's own offset reset can land after our seek.
    """
    consumer.subscribe(list(topics))
    async with asyncio.timeout(wait_s):
        while not consumer.assignment():
            await asyncio.sleep(0.05)
    partitions = sorted(consumer.assignment())
    if to_end:
        await consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the position now, before anything is produced
            await consumer.position(tp)
    else:
        await consumer.seek_to_beginning(*partitions)
    return partitions


async def behind(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    """True while the consumer's position is before ``end`` on any partition."""
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return True
    return False


class SigningProducer(AIOKafkaProducer):  # type: ignore[misc] # aiokafka is untyped here
    """A producer that signs every unsigned lifecycle event with its identity's key.

    One at a time in ``send``; a round of outputs together with :func:`sign_round`
    first (one signature over their hash tree), and ``send`` then passes those on
    without decoding them again."""

    def __init__(self, signer: EventSigner, **settings: Any) -> None:
        super().__init__(**settings)
        self.signer = signer
        # Values sign_round signed, by id (held here, so the id is not reused until
        # send takes it out). Only a shortcut: a signed event is never signed again.
        self._presigned: dict[int, bytes] = {}

    def presigned(self, value: bytes) -> None:
        if len(self._presigned) >= _PRESIGNED_MAX:  # rounds that failed before sending
            self._presigned.clear()
        self._presigned[id(value)] = value

    async def send(  # noqa: PLR0917 - the signature of AIOKafkaProducer.send
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        if topic == LIFECYCLE_TOPIC and value and self._presigned.pop(id(value), None) is not value:
            value = self.signer.sign_encoded(value)
        return await super().send(topic, value, key, partition, timestamp_ms, headers)


_PRESIGNED_MAX = 8192


def sign_round(producer: AIOKafkaProducer, outputs: Sequence[Output]) -> list[Output]:
    """``outputs`` with their unsigned lifecycle events signed, together per signer: each
    output's ``sign_as``, else the producer's identity (a SigningProducer's).

    One signature per round and signer instead of one per event, for the signer here
    and for every reader that keeps the roots it verified (signing.VerifiedRoots).
    Events nobody here can sign are left for ``send`` (which signs them, or sends them
    unsigned without an identity, as before)."""
    own = producer.signer if isinstance(producer, SigningProducer) else None
    groups: dict[str, tuple[EventSigner, list[int]]] = {}  # by certificate fingerprint
    events: dict[int, LifecycleEvent] = {}
    for i, output in enumerate(outputs):
        signer = output.sign_as or own
        if output.topic != LIFECYCLE_TOPIC or output.tombstone or signer is None:
            continue
        event = output.event or _decoded(output.value)
        if event is None or "signature" in event.attributes:
            continue
        events[i] = event
        groups.setdefault(signer.identity.fingerprint, (signer, []))[1].append(i)
    if not events:
        return list(outputs)
    signed = list(outputs)
    for signer, indices in groups.values():
        for i, event in zip(indices, signer.sign_all([events[i] for i in indices]), strict=True):
            value = codec.encode(event)
            if isinstance(producer, SigningProducer):
                producer.presigned(value)
            signed[i] = dataclasses.replace(outputs[i], value=value, event=None, sign_as=None)
    return signed


def _decoded(value: bytes) -> LifecycleEvent | None:
    try:
        return codec.decode(value, LifecycleEvent)
    except SchemaError:
        return None  # send signs it or fails on it, as for any other


#: A partition's batch, under Kafka's 1 MiB; 16 KiB starved busy senders (bench/README.md).
PRODUCER_BATCH_BYTES: Final = 512 * 1024


def new_producer(access: KafkaAccess, **overrides: Any) -> AIOKafkaProducer:
    """The one producer configuration DP2 uses: idempotent, acks=all (DP2_ACKS), batched,
    mTLS, and (with an identity) lifecycle events signed by that identity."""
    acks: Any = "all" if access.topology.acks == "all" else int(access.topology.acks)
    settings: dict[str, Any] = {
        **access.client_options(),
        "enable_idempotence": acks == "all",  # Kafka's idempotence needs acks=all
        "acks": acks,
        "linger_ms": 5,
        "max_batch_size": PRODUCER_BATCH_BYTES,
        "max_request_size": 8 * 1024 * 1024,
        "compression_type": None,
        "request_timeout_ms": access.topology.producer_timeout_ms,
    }
    settings.update(overrides)
    if access.pki_dir is not None and access.identity:
        return SigningProducer(EventSigner.from_pki(access.pki_dir, access.identity), **settings)
    return AIOKafkaProducer(**settings)


async def ensure_topics(
    access: KafkaAccess, topics: tuple[TopicSpec, ...] | list[TopicSpec]
) -> list[str]:
    """Create the topics that do not exist yet; returns the names it created.

    Laid out by ``access.topology``: replication 3 and min.insync.replicas 2 on a
    cluster of three or more brokers (fewer: one replica per broker, min ISR 1),
    unless DP2_REPLICATION / DP2_MIN_INSYNC_REPLICAS say otherwise; DP2_PARTITIONS
    for the topics that have more than one partition.
    """
    admin = new_admin(access)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        if missing:
            brokers = len((await admin.describe_cluster()).get("brokers", []))
            replication, isr = _layout(access, brokers)
            await admin.create_topics(
                [
                    NewTopic(
                        t.name,
                        access.topology.partitions or t.partitions
                        if t.partitions > 1
                        else t.partitions,
                        replication,
                        topic_configs={**t.config, "min.insync.replicas": str(isr)},
                    )
                    for t in missing
                ]
            )
        return [t.name for t in missing]
    finally:
        await admin.close()


def _layout(access: KafkaAccess, brokers: int) -> tuple[int, int]:
    """(replication, min.insync.replicas) for new topics on ``brokers`` brokers."""
    replication = access.topology.replication_for(brokers)
    if brokers and replication > brokers:
        raise ConfigError(
            f"DP2_REPLICATION={replication} but the cluster has {brokers} broker(s)",
            hint="Set DP2_REPLICATION to at most the number of brokers, or unset it.",
        )
    return replication, access.topology.min_insync_for(replication)


async def under_replicated(access: KafkaAccess, prefix: str = "dp2.") -> list[str]:
    """A sentence for each existing DP2 topic with fewer replicas than the topology wants
    on this cluster (a topic made before the cluster grew, or with DP2_REPLICATION=1)."""
    admin = new_admin(access)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster()).get("brokers", []))
        wanted, _ = _layout(access, brokers)
        names = [n for n in await admin.list_topics() if n.startswith(prefix)]
        described = await admin.describe_topics(names) if names else []
    finally:
        await admin.close()
    found = []
    for topic in described:
        name = topic.get("topic") or topic.get("name")
        replicas = [len(p.get("replicas", [])) for p in topic.get("partitions", [])]
        if replicas and min(replicas) < wanted:
            found.append(
                f"{name} has {min(replicas)} replica(s) per partition where the cluster "
                f"wants {wanted}: reassign it with Kafka's kafka-reassign-partitions "
                "(docs/operators.md, 'Running on a cluster')"
            )
    return sorted(found)


# --- ACLs ------------------------------------------------------------------------------
class ResourceType(enum.IntEnum):
    """Kafka's ACL resource types (the wire values)."""

    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4


class PatternType(enum.IntEnum):
    ANY = 1
    LITERAL = 3
    PREFIXED = 4


class Operation(enum.IntEnum):
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12


class Permission(enum.IntEnum):
    ANY = 1
    DENY = 2
    ALLOW = 3


@dataclass(frozen=True, slots=True, order=True)
class AclBinding:
    """One ALLOW (or DENY) rule: principal may do operation on a resource (or prefix)."""

    principal: str  # "User:<kind>:<name>"
    resource_type: ResourceType
    resource_name: str
    pattern: PatternType
    operation: Operation
    permission: Permission = Permission.ALLOW
    host: str = "*"

    def as_row(self) -> dict[str, str]:
        """A JSON-friendly row (``dp2 kafka acls --json``)."""
        return {
            "principal": self.principal,
            "resource": self.resource_type.name.lower(),
            "name": self.resource_name,
            "pattern": self.pattern.name.lower(),
            "operation": self.operation.name.lower(),
            "permission": self.permission.name.lower(),
        }

    def _wire(self) -> tuple[int, str, int, str, str, int, int]:
        return (
            int(self.resource_type),
            self.resource_name,
            int(self.pattern),
            self.principal,
            self.host,
            int(self.operation),
            int(self.permission),
        )


class _CreateAcls(Request[CreateAclsRequest_v1]):  # type: ignore[misc] # untyped base
    API_KEY = 30

    def __init__(self, bindings: Sequence[AclBinding]) -> None:
        self._creations = [b._wire() for b in bindings]

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class(self._creations)


class _DeleteAcls(Request[DeleteAclsRequest_v1]):  # type: ignore[misc] # untyped base
    API_KEY = 31

    def __init__(self, bindings: Sequence[AclBinding]) -> None:
        self._filters = [b._wire() for b in bindings]

    def build(self, request_struct_class: type[DeleteAclsRequest_v1]) -> DeleteAclsRequest_v1:
        return request_struct_class(self._filters)


class _DescribeAllAcls(Request[DescribeAclsRequest_v1]):  # type: ignore[misc] # untyped
    API_KEY = 29

    def build(self, request_struct_class: type[DescribeAclsRequest_v1]) -> DescribeAclsRequest_v1:
        # Match everything: any resource, any pattern, any principal/host/operation.
        return request_struct_class(
            int(ResourceType.ANY), None, int(PatternType.ANY), None, None, 1, 1
        )


def _raise_for_errors(codes: Iterable[tuple[int, str | None]], what: str) -> None:
    failures = [f"{code}: {message}" for code, message in codes if code != 0]
    if failures:
        raise Dp2Error(
            f"Kafka refused to {what}: {'; '.join(failures[:3])}",
            reason_code="ACL_UPDATE_FAILED",
            hint="Run it with the admin identity (dp2 up uses dp2-admin), and check "
            "that the broker runs with an authorizer (deploy/kafka).",
        )


async def _admin_call(access: KafkaAccess, request: Request[Any]) -> Any:
    admin = new_admin(access)
    await admin.start()
    try:
        return await admin._send_request(request)
    finally:
        await admin.close()


async def describe_acls(access: KafkaAccess) -> list[AclBinding]:
    """Every ACL the cluster holds."""
    response = await _admin_call(access, _DescribeAllAcls())
    _raise_for_errors([(response.error_code, response.error_message)], "list ACLs")
    found = []
    for resource_type, name, pattern, acls in response.resources:
        for principal, host, operation, permission in acls:
            found.append(
                AclBinding(
                    principal,
                    ResourceType(resource_type),
                    name,
                    PatternType(pattern),
                    Operation(operation),
                    Permission(permission),
                    host,
                )
            )
    return sorted(found)


async def create_acls(access: KafkaAccess, bindings: Sequence[AclBinding]) -> None:
    """Add ``bindings`` (Kafka ignores ones that exist already)."""
    if bindings:
        response = await _admin_call(access, _CreateAcls(bindings))
        _raise_for_errors(response.creation_responses, "create ACLs")


async def delete_acls(access: KafkaAccess, bindings: Sequence[AclBinding]) -> None:
    """Remove exactly ``bindings``."""
    if bindings:
        response = await _admin_call(access, _DeleteAcls(bindings))
        _raise_for_errors(
            [(code, message) for code, message, _matching in response.filter_responses],
            "delete ACLs",
        )


async def sync_acls(access: KafkaAccess, wanted: Sequence[AclBinding]) -> tuple[int, int]:
    """Make the cluster's ACLs exactly ``wanted``: returns (added, removed)."""
    current = set(await describe_acls(access))
    target = set(wanted)
    extra = sorted(current - target)
    missing = sorted(target - current)
    await create_acls(access, missing)
    await delete_acls(access, extra)
    if missing or extra:
        await _until_acls_are(access, target)
    return len(missing), len(extra)


async def _until_acls_are(access: KafkaAccess, target: set[AclBinding], wait_s: float = 15) -> None:
    """Return once the broker's authorizer answers with exactly ``target``.

    CreateAcls returns when the controller has the change; the brokers apply it a
    moment later, and a client that uses its new right at once may still be refused.
    """
    async with asyncio.timeout(wait_s):
        while set(await describe_acls(access)) != target:
            await asyncio.sleep(0.1)

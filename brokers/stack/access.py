"""Who may do what on Kafka: the ACLs, derived from the deployment, never written by hand.

Why this exists: DP2's backbone is shared by vendors who do not trust each other
(DESIGN.md, "Who may do what"). Every party connects with a certificate of DP2's
PKI, which the broker maps to the principal ``User:<kind>:<name>`` (the subject's
OU and CN, deploy/kafka/server.properties.template). This module turns the
deployment — the identities in the PKI and the connectors in connectors.toml —
into the exact set of ACLs that lets each principal do its job and nothing else.
``dp2 up`` applies them (:func:`apply`), ``dp2 kafka acls`` shows them.

| principal | may write | may read |
|---|---|---|
| service:dp2-validator | accepted, lifecycle, deadletter | submitted, directory |
| service:dp2-router | deliver.*, print, scheduled, lifecycle, deadletter | accepted, commands |
| service:dp2-tracing | lifecycle; consumed topics (re-drive) | lifecycle, deadletter |
| service:dp2-notifier | lifecycle, deadletter | lifecycle, contacts |
| service:dp2-register | directory, contacts | directory, contacts |
| sender:X, vendor:X | submitted, commands, lifecycle | directory, lifecycle |
| provider:P | submitted (citizens' post), lifecycle | deliver.P, directory, lifecycle |
| provider:print | lifecycle | print, contacts, directory |
| a connector in connectors.toml | as its identity's kind | plus deliver.<its provider> |
| ... with ``contact_details = true`` | | plus contacts (e.g. mail forwarding) |

``service:kafka-broker`` (the nodes) and ``service:dp2-admin`` (topics and ACLs)
are super users. Consumer groups are per principal: ``dp2.<service>``,
``dp2.mailbox-<provider>``, ``dp2.connector.<name>.`` (prefixes). A revoked
identity gets no ACL at all.

Kafka cannot check *what* a principal writes to dp2.lifecycle (which states, which
messages): that is the signature's job (issue 14). What the ACLs close is the rest:
no connector writes past the validator, reads another provider's post or reads
citizens' contact details.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from brokers.runtime.kafka import (
    AclBinding,
    Operation,
    PatternType,
    ResourceType,
    sync_acls,
)
from brokers.runtime.settings import KafkaAccess
from brokers.security.pki import Pki, provider_identity_name
from brokers.security.trust import PROVIDER, SENDER, SERVICE, VENDOR, kind_of
from connectors.base import connector_identity, connector_provider
from schemas.vocabulary import (
    ACCEPTED_TOPIC,
    COMMANDS_TOPIC,
    CONTACTS_TOPIC,
    DEADLETTER_TOPIC,
    DELIVER_TOPIC_PREFIX,
    DIRECTORY_TOPIC,
    LIFECYCLE_TOPIC,
    PRINT_PROVIDER,
    PRINT_TOPIC,
    SCHEDULED_TOPIC,
    SUBMITTED_TOPIC,
    provider_topic,
)

#: DP2's own services, by the kind ``dp2 run`` knows them under -> their PKI identity.
SERVICE_IDENTITIES: Final = {
    "tracing": "dp2-tracing",
    "validator": "dp2-validator",
    "router": "dp2-router",
    "notifier": "dp2-notifier",
}
#: Who loads the register (``dp2 contacts load``, the demo).
REGISTER_IDENTITY: Final = "dp2-register"
#: The nodes' own identity and the admin identity (both super users, brokers.stack.kafka).
BROKER_IDENTITY: Final = "kafka-broker"
ADMIN_IDENTITY: Final = "dp2-admin"

_R, _W = (Operation.READ,), (Operation.WRITE,)
_RW = (Operation.READ, Operation.WRITE)


def principal(certificate: x509.Certificate) -> str:
    """The Kafka principal the broker derives from a certificate: ``User:<kind>:<CN>``."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    return f"User:{kind_of(certificate)}:{common_name}"


def service_identity(kind: str, provider: str | None = None) -> str:
    """The PKI identity a built-in service connects to Kafka as."""
    if kind == "mailbox" and provider:
        return provider_identity_name(provider)
    return SERVICE_IDENTITIES[kind]


def ensure_service_identities(pki: Pki) -> list[str]:
    """Issue DP2's own service identities that are missing; returns the new ones."""
    pki.init()
    existing = set(pki.names())
    wanted = [*SERVICE_IDENTITIES.values(), REGISTER_IDENTITY, ADMIN_IDENTITY]
    fresh = [name for name in wanted if name not in existing]
    for name in fresh:
        pki.issue_service(name, days=3650)
    return fresh


@dataclass(frozen=True, slots=True)
class _Rules:
    """The ACLs of one principal, built up rule by rule."""

    principal: str
    bindings: list[AclBinding]

    def topic(self, name: str, operations: Iterable[Operation]) -> None:
        for operation in operations:
            self.bindings.append(
                AclBinding(self.principal, ResourceType.TOPIC, name, PatternType.LITERAL, operation)
            )

    def topics_prefixed(self, prefix: str, operations: Iterable[Operation]) -> None:
        for operation in operations:
            self.bindings.append(
                AclBinding(
                    self.principal, ResourceType.TOPIC, prefix, PatternType.PREFIXED, operation
                )
            )

    def groups(self, prefix: str) -> None:
        self.bindings.append(
            AclBinding(
                self.principal, ResourceType.GROUP, prefix, PatternType.PREFIXED, Operation.READ
            )
        )


def _service_rules(rules: _Rules, kind: str) -> None:
    consumed = (SUBMITTED_TOPIC, ACCEPTED_TOPIC, SCHEDULED_TOPIC, COMMANDS_TOPIC, PRINT_TOPIC)
    if kind == "validator":
        for topic in (SUBMITTED_TOPIC, DIRECTORY_TOPIC):  # the directory: whose citizen
            rules.topic(topic, _R)
        for topic in (ACCEPTED_TOPIC, LIFECYCLE_TOPIC, DEADLETTER_TOPIC):
            rules.topic(topic, _W)
    elif kind == "router":
        for topic in (ACCEPTED_TOPIC, COMMANDS_TOPIC, DIRECTORY_TOPIC):
            rules.topic(topic, _R)
        rules.topic(SCHEDULED_TOPIC, _RW)
        for topic in (PRINT_TOPIC, LIFECYCLE_TOPIC, DEADLETTER_TOPIC):
            rules.topic(topic, _W)
        rules.topics_prefixed(DELIVER_TOPIC_PREFIX, (Operation.WRITE, Operation.CREATE))
    elif kind == "tracing":
        rules.topic(DEADLETTER_TOPIC, _R)
        rules.topic(LIFECYCLE_TOPIC, _RW)
        for topic in consumed:  # an operator's re-drive puts a record back where it was
            rules.topic(topic, _W)
        rules.topics_prefixed(DELIVER_TOPIC_PREFIX, _W)
    elif kind == "notifier":
        rules.topic(CONTACTS_TOPIC, _R)
        rules.topic(LIFECYCLE_TOPIC, _RW)
        rules.topic(DEADLETTER_TOPIC, _W)
    rules.groups(f"dp2.{kind}")


def _party_rules(rules: _Rules, kind: str) -> None:
    """What every sender, vendor or provider may do, whatever it runs."""
    rules.topic(DIRECTORY_TOPIC, _R)
    rules.topic(LIFECYCLE_TOPIC, _RW)  # SUBMITTED, DELIVERED...; follows its own letters
    if kind in (SENDER, VENDOR, PROVIDER):
        rules.topic(SUBMITTED_TOPIC, _W)  # a provider sends its citizens' post
    if kind in (SENDER, VENDOR):
        rules.topic(COMMANDS_TOPIC, _W)


def _receiving_rules(rules: _Rules, provider: str) -> None:
    """What the one party that receives ``provider``'s post may read."""
    if provider == PRINT_PROVIDER:
        rules.topic(PRINT_TOPIC, _R)
        rules.topic(CONTACTS_TOPIC, _R)  # the postal address
    else:
        topic = provider_topic(provider).name
        rules.topic(topic, (Operation.READ, Operation.CREATE))
    rules.groups(f"dp2.mailbox-{provider}")


def acl_matrix(pki: Pki, connectors: Mapping[str, Mapping[str, Any]]) -> list[AclBinding]:
    """Every ACL the deployment needs: from the PKI's identities and connectors.toml."""
    revoked = pki.revoked_serials()
    by_name: dict[str, _Rules] = {}
    provider_of_identity: dict[str, str] = {}
    bindings: list[AclBinding] = []
    for name in pki.names():
        identity = pki.identity(name)
        if identity.certificate.serial_number in revoked:
            continue
        rules = _Rules(principal(identity.certificate), bindings)
        by_name[name] = rules
        kind = identity.kind
        if kind == SERVICE:
            service = next((k for k, v in SERVICE_IDENTITIES.items() if v == name), None)
            if service is not None:
                _service_rules(rules, service)
            elif name == REGISTER_IDENTITY:
                rules.topic(DIRECTORY_TOPIC, _RW)
                rules.topic(CONTACTS_TOPIC, _RW)
            continue  # the broker and admin are super users; others get nothing
        _party_rules(rules, kind)
        if kind == PROVIDER:
            provider = name.removeprefix(provider_identity_name(""))
            provider_of_identity[name] = provider
            _receiving_rules(rules, provider)
    for connector, table in connectors.items():
        if not table.get("enabled", True):
            continue
        rules_or_none = by_name.get(connector_identity(connector, table))
        if rules_or_none is None:
            continue  # not issued yet (or revoked): nothing to allow
        rules_or_none.groups(f"dp2.connector.{connector}.")
        if table.get("contact_details") is True:  # the operator's explicit grant
            rules_or_none.topic(CONTACTS_TOPIC, _R)
        receives = connector_provider(connector, table)
        if receives and provider_of_identity.get(connector_identity(connector, table)) != receives:
            _receiving_rules(rules_or_none, receives)
    return sorted(set(bindings))


async def apply(admin: KafkaAccess, wanted: list[AclBinding]) -> tuple[int, int]:
    """Make the cluster's ACLs exactly ``wanted`` (as the admin): (added, removed)."""
    return await sync_acls(admin, wanted)

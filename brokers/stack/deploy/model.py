"""What a cluster deployment of DP2 holds, read from the code's own declarations.

Why: the compose file and the Kubernetes manifests must say what the code says —
the topics of schemas.vocabulary, the services of brokers.stack.registry on the
ports brokers.stack.supervisor hands out, the ACLs brokers.stack.access derives —
and keep saying it when the code changes. :func:`deployment` reads all of it into
one :class:`Deployment`; brokers.stack.deploy.compose and .kubernetes only lay it
out, and tests/unit/test_deploy_files.py checks the committed files against it.

The committed files are for the example deployment (:func:`example_deployment`):
the parties of the embedded default (``make run``) — the demo municipality, the
mailbox provider ``mitpost``, remote print and the connectors of
brokers.stack.demo.DEFAULT_CONNECTORS. An operator generates theirs from their
own PKI and connectors.toml (``python -m brokers.stack.deploy --pki DIR
--connectors FILE``).
"""

from __future__ import annotations

import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from brokers.runtime.kafka import AclBinding
from brokers.runtime.settings import PROJECT_ROOT, Settings
from brokers.security.pki import Pki, provider_identity_name
from brokers.security.signing import ECDSA_P256_SHA256
from brokers.stack import demo
from brokers.stack.access import (
    ADMIN_IDENTITY,
    BROKER_IDENTITY,
    acl_matrix,
    ensure_service_identities,
    service_identity,
)
from brokers.stack.kafka import ClusterSpec
from brokers.stack.registry import SERVICES
from brokers.stack.supervisor import ServiceSpec, stack_services
from connectors.base import connector_identity, connector_provider
from schemas.errors import ConfigError
from schemas.vocabulary import PRINT_PROVIDER, TOPICS, TopicSpec, provider_topic

#: On a cluster (three brokers), as brokers.runtime.settings.Topology picks by itself.
BROKERS: Final = 3
REPLICATION: Final = 3
MIN_INSYNC_REPLICAS: Final = 2
#: Every DP2 process runs twice: one consumer group, two members (issue 17).
REPLICAS: Final = 2
#: Where the containers keep DP2's state and its PKI.
HOME: Final = "/var/lib/dp2"
PKI: Final = "/etc/dp2/pki"
#: The address the services' HTTP servers listen on inside a container: /healthz
#: and /metrics must answer the kubelet and Prometheus, not only 127.0.0.1.
BIND_HOST_SETTING: Final = "DP2_BIND_HOST"
#: PostgreSQL behind the store Protocols (issue 17, part 3).
DATABASE_SETTING: Final = "DP2_DATABASE_URL"
#: Services of the embedded default only: they never run on a cluster.
EMBEDDED_ONLY: Final = frozenset({"capture"})


def _pom_kafka_version() -> str:
    """The Kafka release DP2 runs locally (deploy/kafka/pom.xml): the image's tag."""
    return ClusterSpec(root=Path(), deploy_dir=PROJECT_ROOT / "deploy" / "kafka").kafka_version


@dataclass(frozen=True, slots=True)
class ClusterTopic:
    """A topic as DP2 creates it on a cluster (brokers.runtime.kafka.ensure_topics)."""

    name: str
    partitions: int
    replicas: int
    config: dict[str, str]


@dataclass(frozen=True, slots=True)
class Process:
    """One DP2 process kind: ``dp2 run ...`` on its port, as its identities."""

    name: str  # as dp2 status names it: validator, mailbox-mitpost, connector-esdh
    args: tuple[str, ...]  # after ``dp2``
    port: int
    #: The PKI identities whose private keys it holds; the first is its Kafka principal.
    identities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Deployment:
    topics: tuple[ClusterTopic, ...]
    processes: tuple[Process, ...]
    #: Kafka ACLs by principal (``User:<kind>:<CN>``), from access.acl_matrix.
    acls: dict[str, tuple[AclBinding, ...]]
    #: Every identity of the PKI, and the principals that are super users of the cluster.
    identities: tuple[str, ...]
    super_users: tuple[str, ...] = (
        f"User:service:{BROKER_IDENTITY}",
        f"User:service:{ADMIN_IDENTITY}",
    )
    connectors_toml: str = ""
    kafka_version: str = field(default_factory=_pom_kafka_version)
    dp2_version: str = "0.1.0"

    @property
    def bootstrap_port(self) -> int:
        return 9093

    def process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)


def bind_env() -> dict[str, str]:
    """The environment that opens a container's /healthz and /metrics to its network."""
    return {BIND_HOST_SETTING: "0.0.0.0"}  # noqa: S104 - inside a container, on purpose


def cluster_topic(spec: TopicSpec) -> ClusterTopic:
    """``spec`` laid out for a cluster: three replicas, min ISR 2 (ensure_topics' rules)."""
    config = {**spec.config, "min.insync.replicas": str(MIN_INSYNC_REPLICAS)}
    return ClusterTopic(spec.name, spec.partitions, REPLICATION, config)


def mailbox_providers(
    pki_providers: list[str], connectors: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """The providers that get DP2's reference mailbox, as ``dp2 up`` chooses them
    (brokers.cli.stack): every provider of the PKI but print, unless a connector
    receives its post or signs as it (forms, mail)."""
    served = {str(t["provider"]) for t in connectors.values() if "provider" in t}
    prefix = provider_identity_name("")
    served |= {
        str(t["identity"]).removeprefix(prefix)
        for t in connectors.values()
        if str(t.get("identity", "")).startswith(prefix)
    }
    return [p for p in pki_providers if p != PRINT_PROVIDER and p not in served]


def _process(spec: ServiceSpec, connectors: Mapping[str, Mapping[str, Any]]) -> Process:
    args: tuple[str, ...]
    if spec.connector:
        table = connectors[spec.connector]
        identities = [connector_identity(spec.connector, table)]
        receives = connector_provider(spec.connector, table)
        if receives and provider_identity_name(receives) not in identities:
            identities.append(provider_identity_name(receives))  # its key opens the post
        args = ("run", "connector", "--port", str(spec.port), "--name", spec.connector)
    elif spec.provider:
        identities = [service_identity("mailbox", spec.provider)]
        args = ("run", "mailbox", "--port", str(spec.port), "--provider", spec.provider)
    else:
        if spec.name not in SERVICES:
            raise ConfigError(
                f"no service called {spec.name!r}", hint="See brokers.stack.registry."
            )
        identities = [service_identity(spec.name)]
        args = ("run", spec.name, "--port", str(spec.port))
    return Process(spec.name, args, spec.port, tuple(identities))


def deployment(
    pki: Pki, connectors: Mapping[str, Mapping[str, Any]], *, connectors_toml: str = ""
) -> Deployment:
    """The deployment of ``pki``'s identities and ``connectors`` (connectors.toml tables)."""
    enabled = {n: t for n, t in connectors.items() if t.get("enabled", True)}
    root = pki.root / "providers"
    in_pki = sorted(p.stem for p in root.glob("*.pem")) if root.exists() else []
    providers = mailbox_providers(in_pki, enabled)
    specs = stack_services(
        providers,
        Settings.from_env({}).port_base,
        connectors=[(n, t.get("port")) for n, t in enabled.items()],
    )
    processes = tuple(_process(s, enabled) for s in specs if s.name not in EMBEDDED_ONLY)
    receiving = {connector_provider(n, t) for n, t in enabled.items()} - {None, PRINT_PROVIDER}
    delivery = sorted({*providers, *(str(p) for p in receiving)})
    topics = tuple(cluster_topic(t) for t in (*TOPICS, *(provider_topic(p) for p in delivery)))
    acls: dict[str, list[AclBinding]] = {}
    for binding in acl_matrix(pki, enabled):
        acls.setdefault(binding.principal, []).append(binding)
    return Deployment(
        topics=topics,
        processes=processes,
        acls={name: tuple(bindings) for name, bindings in sorted(acls.items())},
        identities=tuple(pki.names()),
        connectors_toml=connectors_toml,
    )


def example_deployment() -> Deployment:
    """The embedded default's parties on a cluster: what the committed files describe.

    Its PKI is made in a temporary folder (ECDSA, so it takes a moment) and thrown
    away: only names, kinds and ACLs end up in the files, never a key.
    """
    with tempfile.TemporaryDirectory(prefix="dp2-deploy-") as folder:
        settings = Settings.from_env({"DP2_HOME": folder})
        pki = Pki(settings.pki_dir)
        pki.init(ECDSA_P256_SHA256)
        demo.ensure_development_pki(settings, lambda _: None)
        ensure_service_identities(pki)
        pki.issue_service(BROKER_IDENTITY)
        text = demo.DEFAULT_CONNECTORS
        return deployment(pki, tomllib.loads(text)["connectors"], connectors_toml=text)


def from_files(pki_dir: Path, connectors_file: Path) -> Deployment:
    """An operator's own deployment: their PKI and connectors.toml."""
    text = connectors_file.read_text(encoding="utf-8")
    return deployment(Pki(pki_dir), tomllib.loads(text).get("connectors", {}), connectors_toml=text)

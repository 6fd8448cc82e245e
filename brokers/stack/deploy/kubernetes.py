"""deploy/k8s/: DP2 on Kubernetes with a Strimzi-operated Kafka.

Laid out from a brokers.stack.deploy.model.Deployment:

- ``kafka.yaml``: a Strimzi ``Kafka`` (KRaft, one ``KafkaNodePool`` of three nodes
  that are brokers and controllers) whose client listener asks for a certificate
  of DP2's CA (secret ``dp2-ca``) and presents the broker certificate DP2's PKI
  issued (secret ``dp2-kafka-listener``). The listener maps a subject
  ``…,CN=<name>,OU=<kind>,…`` to ``CN=<kind>.<name>`` with the regular expression
  of deploy/kafka/server.properties.template, so every DP2 identity is the Strimzi
  user ``<kind>.<name>`` (``User:CN=service.dp2-validator`` where ``dp2 kafka acls``
  says ``User:service:dp2-validator``);
- ``topics.yaml``: a ``KafkaTopic`` per topic, three replicas, min ISR 2;
- ``users.yaml``: a ``KafkaUser`` per principal (``tls-external``: the certificate is
  DP2's, not Strimzi's) with the ACLs of brokers.stack.access.acl_matrix;
- ``dp2.yaml``: settings, connectors.toml, the shared DP2_HOME volume, and per
  process a Deployment (two replicas, probes on ``/healthz``) and a Service;
- ``monitoring.yaml``: a ``ServiceMonitor`` (Prometheus Operator) over those Services.

Each pod holds only its own private keys: the public half of the PKI comes from the
secret ``dp2-pki-public`` (a tar of the PKI without any ``*key.pem``), each
identity's folder from the secret ``dp2-identity-<name>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from brokers.runtime.kafka import AclBinding, PatternType, Permission
from brokers.runtime.settings import PROJECT_ROOT
from brokers.security.trust import SERVICE
from brokers.stack.access import ADMIN_IDENTITY
from brokers.stack.deploy.model import (
    BROKERS,
    DATABASE_SETTING,
    HOME,
    MIN_INSYNC_REPLICAS,
    PKI,
    REPLICAS,
    REPLICATION,
    Deployment,
    Process,
    bind_env,
)
from schemas.errors import ConfigError

NAMESPACE: Final = "dp2"
CLUSTER: Final = "dp2-kafka"
NODE_POOL: Final = "nodes"
STRIMZI_API: Final = "kafka.strimzi.io/v1beta2"
LISTENER: Final = "tls"
CA_MOUNT: Final = "/mnt/dp2-ca"  # Strimzi mounts additional volumes under /mnt only
PART_OF: Final = {"app.kubernetes.io/part-of": "dp2"}
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def bootstrap(deployment: Deployment) -> str:
    return f"{CLUSTER}-kafka-bootstrap.{NAMESPACE}.svc:{deployment.bootstrap_port}"


def listener_hosts() -> list[str]:
    """The names DP2's clients reach the Strimzi listener by: the broker certificate's SANs."""
    hosts = []
    for suffix in (f"{NAMESPACE}.svc", f"{NAMESPACE}.svc.cluster.local"):
        hosts += [f"{CLUSTER}-kafka-bootstrap.{suffix}", f"*.{CLUSTER}-kafka-brokers.{suffix}"]
    return hosts


def principal_mapping_rule() -> str:
    """deploy/kafka's mapping rule, writing Strimzi's ``CN=<kind>.<name>`` instead."""
    template = (PROJECT_ROOT / "deploy" / "kafka" / "server.properties.template").read_text()
    line = next(x for x in template.splitlines() if x.startswith("ssl.principal.mapping.rules="))
    rule = line.partition("=")[2].replace("$$", "$")
    if "/$2:$1/" not in rule:
        raise ConfigError(
            "deploy/kafka/server.properties.template maps principals in a way the "
            "Kubernetes files do not know",
            hint="Update brokers/stack/deploy/kubernetes.py with the new rule.",
        )
    return rule.replace("/$2:$1/", "/CN=$2.$1/")


def user_name(principal: str) -> str:
    """``User:<kind>:<name>`` -> the Strimzi user (and KafkaUser) ``<kind>.<name>``."""
    _, kind, name = principal.split(":", 2)
    user = f"{kind}.{name}"
    if len(user) > 253 or not _DNS_SUBDOMAIN.fullmatch(user):
        raise ConfigError(
            f"the Kafka principal {principal!r} cannot name a KafkaUser",
            hint="Kubernetes names are lower-case letters, digits, '-' and '.': "
            "issue identities with such names for a Kubernetes deployment.",
        )
    return user


def _metadata(name: str, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if labels:
        meta["labels"] = labels
    return meta


def kafka(deployment: Deployment) -> list[dict[str, Any]]:
    pool = {
        "apiVersion": STRIMZI_API,
        "kind": "KafkaNodePool",
        "metadata": _metadata(NODE_POOL, **{"strimzi.io/cluster": CLUSTER}),
        "spec": {
            "replicas": BROKERS,
            "roles": ["controller", "broker"],
            "storage": {
                "type": "jbod",
                "volumes": [
                    {
                        "id": 0,
                        "type": "persistent-claim",
                        "size": "100Gi",
                        "deleteClaim": False,
                        "kraftMetadata": "shared",
                    }
                ],
            },
        },
    }
    listener = {
        "name": LISTENER,
        "port": deployment.bootstrap_port,
        "type": "internal",
        "tls": True,
        "authentication": {
            "type": "custom",
            "sasl": False,
            "listenerConfig": {
                "ssl.client.auth": "required",
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": f"{CA_MOUNT}/ca.crt",
                "ssl.principal.mapping.rules": principal_mapping_rule(),
            },
        },
        "configuration": {
            "brokerCertChainAndKey": {
                "secretName": "dp2-kafka-listener",
                "certificate": "tls.crt",
                "key": "tls.key",
            }
        },
    }
    cluster = {
        "apiVersion": STRIMZI_API,
        "kind": "Kafka",
        "metadata": {
            **_metadata(CLUSTER),
            "annotations": {"strimzi.io/node-pools": "enabled", "strimzi.io/kraft": "enabled"},
        },
        "spec": {
            "kafka": {
                "listeners": [listener],
                "authorization": {
                    "type": "simple",
                    "superUsers": [f"CN={SERVICE}.{ADMIN_IDENTITY}"],
                },
                "config": {
                    "default.replication.factor": REPLICATION,
                    "min.insync.replicas": MIN_INSYNC_REPLICAS,
                    "offsets.topic.replication.factor": REPLICATION,
                    "transaction.state.log.replication.factor": REPLICATION,
                    "transaction.state.log.min.isr": MIN_INSYNC_REPLICAS,
                    "auto.create.topics.enable": False,
                    "message.max.bytes": 8388608,
                    "replica.fetch.max.bytes": 8388608,
                },
                "template": {
                    "pod": {"volumes": [{"name": "dp2-ca", "secret": {"secretName": "dp2-ca"}}]},
                    "kafkaContainer": {
                        "volumeMounts": [
                            {"name": "dp2-ca", "mountPath": CA_MOUNT, "readOnly": True}
                        ]
                    },
                },
            },
            "entityOperator": {"topicOperator": {}, "userOperator": {}},
        },
    }
    return [pool, cluster]


def topics(deployment: Deployment) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": STRIMZI_API,
            "kind": "KafkaTopic",
            # Kubernetes names have no '_': the topic's own name is spec.topicName.
            "metadata": _metadata(
                t.name.replace("_", "-").lower(), **{"strimzi.io/cluster": CLUSTER}
            ),
            "spec": {
                "topicName": t.name,
                "partitions": t.partitions,
                "replicas": t.replicas,
                "config": dict(t.config),
            },
        }
        for t in deployment.topics
    ]


def _acl_rules(bindings: Iterable[AclBinding]) -> list[dict[str, Any]]:
    """Strimzi's ACL rules: one per resource and permission, with its operations."""
    grouped: dict[tuple[Any, ...], list[str]] = {}
    for b in bindings:
        key = (b.resource_type, b.resource_name, b.pattern, b.permission, b.host)
        operation = "".join(word.capitalize() for word in b.operation.name.split("_"))
        grouped.setdefault(key, []).append(operation)
    return [
        {
            "resource": {
                "type": resource_type.name.lower(),
                "name": name,
                "patternType": "prefix" if pattern == PatternType.PREFIXED else "literal",
            },
            "operations": operations,
            "host": host,
            "type": "allow" if permission == Permission.ALLOW else "deny",
        }
        for (resource_type, name, pattern, permission, host), operations in grouped.items()
    ]


def users(deployment: Deployment) -> list[dict[str, Any]]:
    admin = f"User:{SERVICE}:{ADMIN_IDENTITY}"
    documents = []
    for principal in [admin, *deployment.acls]:
        spec: dict[str, Any] = {"authentication": {"type": "tls-external"}}
        if principal != admin:  # the admin is a super user: no ACLs to list
            spec["authorization"] = {
                "type": "simple",
                "acls": _acl_rules(deployment.acls[principal]),
            }
        documents.append(
            {
                "apiVersion": STRIMZI_API,
                "kind": "KafkaUser",
                "metadata": _metadata(user_name(principal), **{"strimzi.io/cluster": CLUSTER}),
                "spec": spec,
            }
        )
    return documents


def _labels(process: Process) -> dict[str, str]:
    return {"app.kubernetes.io/name": "dp2", "app.kubernetes.io/component": process.name}


def _volumes(process: Process) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, the container's mounts): home, connectors.toml, the PKI, its own keys."""
    volumes: list[dict[str, Any]] = [
        {"name": "home", "persistentVolumeClaim": {"claimName": "dp2-home"}},
        {"name": "connectors", "configMap": {"name": "dp2-connectors"}},
        {"name": "pki", "emptyDir": {}},
        {"name": "pki-public", "secret": {"secretName": "dp2-pki-public"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "home", "mountPath": HOME},
        {
            "name": "connectors",
            "mountPath": f"{HOME}/connectors.toml",
            "subPath": "connectors.toml",
            "readOnly": True,
        },
        {"name": "pki", "mountPath": PKI},  # the identities' secrets mount inside it
    ]
    for identity in process.identities:
        volumes.append(
            {
                "name": f"identity-{identity}",
                # 0440: readable by the pod's group (fsGroup), nobody else.
                "secret": {"secretName": f"dp2-identity-{identity}", "defaultMode": 0o440},
            }
        )
        mounts.append(
            {
                "name": f"identity-{identity}",
                "mountPath": f"{PKI}/identities/{identity}",
                "readOnly": True,
            }
        )
    return volumes, mounts


def _probe(port: int, *, delay: int, period: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/healthz", "port": port},
        "initialDelaySeconds": delay,
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }


def deployment_of(deployment: Deployment, process: Process) -> dict[str, Any]:
    volumes, mounts = _volumes(process)
    image = f"dp2:{deployment.dp2_version}"
    env: list[dict[str, Any]] = [
        {
            "name": DATABASE_SETTING,
            "valueFrom": {"secretKeyRef": {"name": "dp2-database", "key": "url"}},
        }
    ]
    env_from: list[dict[str, Any]] = [{"configMapRef": {"name": "dp2-settings"}}]
    if process.name == "notifier":  # DP2_SMTP_*, DP2_SMS_PROVIDERS: the operator's secret
        env_from.append({"secretRef": {"name": "dp2-notifier", "optional": True}})
    container = {
        "name": process.name,
        "image": image,
        "command": ["dp2"],
        "args": list(process.args),
        "ports": [{"name": "http", "containerPort": process.port}],
        "envFrom": env_from,
        "env": env,
        "readinessProbe": _probe(process.port, delay=5, period=10),
        "livenessProbe": _probe(process.port, delay=30, period=20),
        "volumeMounts": mounts,
    }
    unpack = {
        "name": "pki",
        "image": image,
        "command": ["tar", "-xf", "/var/run/dp2/pki-public/pki.tar", "-C", PKI],
        "volumeMounts": [
            {"name": "pki-public", "mountPath": "/var/run/dp2/pki-public", "readOnly": True},
            {"name": "pki", "mountPath": PKI},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(f"dp2-{process.name}", **_labels(process), **PART_OF),
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": _labels(process)},
            "template": {
                "metadata": {"labels": {**_labels(process), **PART_OF}},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
                    "initContainers": [unpack],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def service_of(process: Process) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(f"dp2-{process.name}", **_labels(process), **PART_OF),
        "spec": {
            "selector": _labels(process),
            "ports": [{"name": "http", "port": process.port, "targetPort": process.port}],
        },
    }


def dp2(deployment: Deployment) -> list[dict[str, Any]]:
    settings = {
        "DP2_HOME": HOME,
        "DP2_PKI": PKI,
        "DP2_KAFKA_BOOTSTRAP": bootstrap(deployment),
        "DP2_REPLICATION": str(REPLICATION),
        "DP2_MIN_INSYNC_REPLICAS": str(MIN_INSYNC_REPLICAS),
        "DP2_ACKS": "all",
        "DP2_LOG_FORMAT": "json",
        **bind_env(),
    }
    documents: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata("dp2-settings", **PART_OF),
            "data": settings,
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata("dp2-connectors", **PART_OF),
            "data": {"connectors.toml": deployment.connectors_toml},
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            # Shared by every pod: blobs and the deployment's keys (pseudonyms, tokens).
            "metadata": _metadata("dp2-home", **PART_OF),
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "50Gi"}},
            },
        },
    ]
    for process in deployment.processes:
        documents += [deployment_of(deployment, process), service_of(process)]
    return documents


def namespace() -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]


def monitoring() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": _metadata("dp2", **PART_OF),
            "spec": {
                "selector": {"matchLabels": dict(PART_OF)},
                "endpoints": [
                    {"port": "http", "path": "/metrics", "interval": "15s", "honorLabels": True}
                ],
                "targetLabels": ["app.kubernetes.io/component"],
            },
        }
    ]

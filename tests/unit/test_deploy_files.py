"""The deployment files under deploy/compose and deploy/k8s say what the code declares.

They are generated (brokers.stack.deploy); these tests hold the committed files to
the generator, and both to the code's topics (schemas.vocabulary), services
(brokers.stack.registry, ports of brokers.stack.supervisor) and ACLs
(brokers.stack.access), and validate them offline: the built-in Kubernetes kinds
against Kubernetes' own schemas (kubernetes-validate), the Strimzi and Prometheus
Operator resources and the compose file by their required structure.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from brokers.runtime.kafka import Operation, PatternType, ResourceType
from brokers.security.pki import Pki
from brokers.security.signing import ECDSA_P256_SHA256
from brokers.stack.access import principal
from brokers.stack.deploy import kubernetes
from brokers.stack.deploy.files import DEPLOY_DIR, K8S_FILES, generated, stale
from brokers.stack.deploy.model import (
    EMBEDDED_ONLY,
    MIN_INSYNC_REPLICAS,
    REPLICAS,
    REPLICATION,
    Deployment,
    example_deployment,
)
from brokers.stack.deploy.yamltext import dump
from brokers.stack.registry import SERVICES
from schemas.vocabulary import TOPICS

KUBERNETES_VERSION = "1.33.0"
STRIMZI_OPERATIONS = {
    "Read", "Write", "Create", "Delete", "Alter", "Describe", "ClusterAction",
    "AlterConfigs", "DescribeConfigs", "IdempotentWrite", "All",
}  # fmt: skip
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    return example_deployment()


@pytest.fixture(scope="module")
def compose_file() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY_DIR / "compose" / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    documents = []
    for name in K8S_FILES:
        documents += [d for d in yaml.safe_load_all((DEPLOY_DIR / "k8s" / name).read_text()) if d]
    return documents


def _kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def test_the_committed_files_are_what_the_generator_writes(deployment: Deployment) -> None:
    """Regenerating changes nothing: run `python -m brokers.stack.deploy` when this fails."""
    assert stale(deployment) == [], "stale: run .venv/bin/python -m brokers.stack.deploy"


def test_the_generated_yaml_reads_back_as_what_was_written(deployment: Deployment) -> None:
    """Every generated YAML file parses to the values it was made from (quoting holds)."""
    tricky = {"a": ["yes", "no", "on", "3", "1.0", "-x", "a: b", "#c", "", "x\ny\n"], "b": {}}
    assert yaml.safe_load(dump(tricky)) == tricky
    for relative, text in generated(deployment).items():
        if relative.endswith((".yaml", ".yml")):
            assert list(yaml.safe_load_all(text)), relative


def test_every_service_runs_twice_in_compose_with_a_healthcheck_on_its_port(
    deployment: Deployment, compose_file: dict[str, Any]
) -> None:
    """Each DP2 process is a compose service: `dp2 run` on its port, 2 replicas, /healthz."""
    services = compose_file["services"]
    kinds = set()
    for process in deployment.processes:
        service = services[process.name]
        kinds.add(process.args[1])
        assert service["command"] == ["dp2", *process.args]
        assert process.args[process.args.index("--port") + 1] == str(process.port)
        assert service["deploy"]["replicas"] == REPLICAS == 2
        assert f"127.0.0.1:{process.port}/healthz" in " ".join(service["healthcheck"]["test"])
        env = service["environment"]
        assert env["DP2_REPLICATION"] == str(REPLICATION) == "3"
        assert env["DP2_MIN_INSYNC_REPLICAS"] == str(MIN_INSYNC_REPLICAS) == "2"
        assert env["DP2_ACKS"] == "all"
        assert env["DP2_DATABASE_URL"].startswith("postgresql://")
        assert env["DP2_KAFKA_BOOTSTRAP"] == "kafka-1:9093,kafka-2:9093,kafka-3:9093"
    assert kinds == {*SERVICES, "connector"} - EMBEDDED_ONLY
    assert not set(EMBEDDED_ONLY) & set(services)


def test_compose_has_three_kraft_brokers_postgres_prometheus_and_grafana(
    deployment: Deployment, compose_file: dict[str, Any]
) -> None:
    """The brokers run the official image with DP2's mTLS config; dependencies are sound."""
    services = compose_file["services"]
    for node in (1, 2, 3):
        broker = services[f"kafka-{node}"]
        assert broker["image"] == f"apache/kafka:{deployment.kafka_version}"
        assert "healthcheck" in broker
        config = dict(
            line.split("=", 1)
            for line in (DEPLOY_DIR / "compose" / "kafka" / f"server-{node}.properties")
            .read_text()
            .splitlines()
            if line and not line.startswith("#")
        )
        assert config["node.id"] == str(node)
        assert config["process.roles"] == "broker,controller"
        assert config["controller.quorum.voters"].count("@kafka-") == 3
        assert config["advertised.listeners"] == f"SSL://kafka-{node}:9093"
        assert config["ssl.client.auth"] == "required"
        assert config["allow.everyone.if.no.acl.found"] == "false"
        assert config["default.replication.factor"] == "3"
        assert config["min.insync.replicas"] == "2"
        assert "User:service:dp2-admin" in config["super.users"]
    for name in ("postgres", "prometheus", "grafana", "setup"):
        assert name in services
    assert services["postgres"]["image"].startswith("postgres:")
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                if source != "./pki":  # the operator's own (README)
                    assert (DEPLOY_DIR / "compose" / source).exists(), f"{name}: {source}"
            else:
                assert source in compose_file["volumes"], f"{name}: volume {source}"
    build = services["setup"]["build"]
    assert (DEPLOY_DIR / "compose" / build["context"] / build["dockerfile"]).is_file()
    env_example = (DEPLOY_DIR / "compose" / ".env.example").read_text()
    compose_text = (DEPLOY_DIR / "compose" / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", compose_text))
    assert used and all(f"{name}=" in env_example for name in used), used


def test_prometheus_in_compose_scrapes_every_process(
    deployment: Deployment,
) -> None:
    """One job per process, on its port, found by the service's DNS name (every replica)."""
    config = yaml.safe_load((DEPLOY_DIR / "compose" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for process in deployment.processes:
        sd = jobs[f"dp2-{process.name}"]["dns_sd_configs"][0]
        assert sd == {"names": [process.name], "type": "A", "port": process.port}


def test_the_built_in_kinds_are_valid_kubernetes(k8s: list[dict[str, Any]]) -> None:
    """Namespace, ConfigMaps, the volume claim, Deployments and Services pass
    Kubernetes' own schemas, strictly (no unknown fields)."""
    built_in = [d for d in k8s if "." not in d["apiVersion"].split("/")[0]]
    assert {d["kind"] for d in built_in} >= {"Namespace", "ConfigMap", "Deployment", "Service"}
    for document in built_in:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_every_topic_is_a_kafka_topic_with_three_replicas(
    deployment: Deployment, k8s: list[dict[str, Any]]
) -> None:
    """Each declared topic (and each delivery topic) is a KafkaTopic: 3 replicas, min ISR 2."""
    topics = {d["spec"]["topicName"]: d for d in _kind(k8s, "KafkaTopic").values()}
    declared = {t.name: t for t in TOPICS}
    assert set(declared) <= set(topics)
    assert set(topics) == {t.name for t in deployment.topics}
    for name, topic in topics.items():
        assert topic["apiVersion"] == kubernetes.STRIMZI_API
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kubernetes.CLUSTER
        assert _DNS_SUBDOMAIN.fullmatch(topic["metadata"]["name"])
        assert topic["spec"]["replicas"] == 3
        assert topic["spec"]["config"]["min.insync.replicas"] == "2"
        if name in declared:
            assert topic["spec"]["partitions"] == declared[name].partitions
            assert declared[name].config.items() <= topic["spec"]["config"].items()


def test_the_strimzi_cluster_has_what_strimzi_requires(k8s: list[dict[str, Any]]) -> None:
    """Kafka and KafkaNodePool carry their required fields; the listener asks for mTLS."""
    (cluster,) = _kind(k8s, "Kafka").values()
    (pool,) = _kind(k8s, "KafkaNodePool").values()
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == cluster["metadata"]["name"]
    assert pool["spec"]["replicas"] == 3
    assert set(pool["spec"]["roles"]) == {"broker", "controller"}
    assert pool["spec"]["storage"]["type"] in {"jbod", "persistent-claim", "ephemeral"}
    spec = cluster["spec"]["kafka"]
    for listener in spec["listeners"]:
        assert {"name", "port", "type", "tls"} <= set(listener)
        assert listener["tls"] is True
        assert listener["authentication"]["listenerConfig"]["ssl.client.auth"] == "required"
    assert spec["authorization"]["type"] == "simple"
    assert spec["config"]["default.replication.factor"] == 3
    assert spec["config"]["min.insync.replicas"] == 2
    assert "entityOperator" in cluster["spec"]


def test_every_principal_is_a_kafka_user_with_exactly_its_acls(
    tmp_path: Path, deployment: Deployment, k8s: list[dict[str, Any]]
) -> None:
    """The KafkaUsers' ACLs are acl_matrix's, and the listener maps each DP2 certificate
    to exactly the user its ACLs are written for."""
    users = _kind(k8s, "KafkaUser")
    for principal_name, bindings in deployment.acls.items():
        user = users[kubernetes.user_name(principal_name)]
        assert user["spec"]["authentication"]["type"] == "tls-external"
        listed = set()
        for rule in user["spec"]["authorization"]["acls"]:
            assert set(rule["operations"]) <= STRIMZI_OPERATIONS
            resource = rule["resource"]
            assert resource["patternType"] in {"literal", "prefix"}
            for operation in rule["operations"]:
                listed.add((resource["type"], resource["name"], resource["patternType"], operation))
        wanted = {
            (
                b.resource_type.name.lower(),
                b.resource_name,
                "prefix" if b.pattern == PatternType.PREFIXED else "literal",
                "".join(w.capitalize() for w in b.operation.name.split("_")),
            )
            for b in bindings
        }
        assert listed == wanted, principal_name
    # The mapping: a real DP2 certificate becomes the KafkaUser of its principal.
    pki = Pki(tmp_path / "pki")
    pki.init(ECDSA_P256_SHA256)
    pki.issue_service("dp2-validator")
    pki.issue_provider("mitpost")
    (cluster,) = _kind(k8s, "Kafka").values()
    rules = cluster["spec"]["kafka"]["listeners"][0]["authentication"]["listenerConfig"]
    pattern, replacement = re.fullmatch(
        r"RULE:(.*)/(.*)/,DEFAULT", rules["ssl.principal.mapping.rules"]
    ).groups()  # type: ignore[union-attr]
    for name in ("dp2-validator", "provider-mitpost"):
        certificate = pki.identity(name).certificate
        subject = certificate.subject.rfc4514_string()  # Kafka's RFC 2253 form
        mapped = re.sub(pattern, re.sub(r"\$(\d)", r"\\\1", replacement), subject)
        assert mapped == f"CN={kubernetes.user_name(principal(certificate))}"
        assert principal(certificate) in deployment.acls
    admin = cluster["spec"]["kafka"]["authorization"]["superUsers"]
    assert admin == ["CN=service.dp2-admin"] and "service.dp2-admin" in users


def test_every_service_is_a_deployment_with_probes_and_a_service(
    deployment: Deployment, k8s: list[dict[str, Any]]
) -> None:
    """Two replicas of `dp2 run` on its port, /healthz probes there, its own keys only,
    a Service on that port, and the ServiceMonitor selects every Service."""
    deployments, services = _kind(k8s, "Deployment"), _kind(k8s, "Service")
    (monitor,) = _kind(k8s, "ServiceMonitor").values()
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert len(deployments) == len(deployment.processes)
    for process in deployment.processes:
        workload = deployments[f"dp2-{process.name}"]
        assert workload["spec"]["replicas"] == 2
        pod = workload["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        (container,) = pod["spec"]["containers"]
        assert [*container["command"], *container["args"]] == ["dp2", *process.args]
        assert container["ports"][0]["containerPort"] == process.port
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": process.port}
        env = {e["name"] for e in container["env"]}
        assert "DP2_DATABASE_URL" in env
        secrets = {v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v} - {
            "dp2-pki-public"
        }
        assert secrets == {f"dp2-identity-{name}" for name in process.identities}
        service = services[f"dp2-{process.name}"]
        assert service["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
        assert service["spec"]["ports"][0]["port"] == process.port
        assert service["spec"]["ports"][0]["name"] == monitor["spec"]["endpoints"][0]["port"]
        assert selector.items() <= service["metadata"]["labels"].items()
    (settings,) = [d for d in k8s if d["metadata"]["name"] == "dp2-settings"]
    assert settings["data"]["DP2_REPLICATION"] == "3"
    assert settings["data"]["DP2_MIN_INSYNC_REPLICAS"] == "2"
    assert settings["data"]["DP2_KAFKA_BOOTSTRAP"] == kubernetes.bootstrap(deployment)


def test_the_acl_operations_are_ones_strimzi_knows() -> None:
    """Every operation, resource and pattern DP2's ACLs can use has a Strimzi spelling."""
    for operation in Operation:
        if operation is not Operation.ANY:
            name = "".join(w.capitalize() for w in operation.name.split("_"))
            assert name in STRIMZI_OPERATIONS, name
    assert {r.name.lower() for r in ResourceType} - {"any"} <= {"topic", "group", "cluster"}

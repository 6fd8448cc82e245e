"""`dp2 kafka start | status | stop` from the command line, as an operator runs them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from brokers.runtime.kafka import new_admin, new_consumer, new_producer
from brokers.runtime.settings import KafkaAccess
from brokers.stack.access import ADMIN_IDENTITY
from brokers.stack.kafka import LOCAL_KAFKA_PORTS, free_base_port
from tests.integration.conftest import free_http_base, run_dp2

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def dp2(
    home: Path, *args: str, timeout: float = 180, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DP2_HOME": str(home), "DP2_LOG_FORMAT": "json", **extra}
    env.pop("DP2_KAFKA_BOOTSTRAP", None)
    return run_dp2(env, *args, timeout=timeout)


def _admin(home: Path, bootstrap: str) -> KafkaAccess:
    """The admin identity ``dp2 kafka start`` issued into the home's PKI."""
    return KafkaAccess(bootstrap, ADMIN_IDENTITY, home / "pki")


async def _produce_one(access: KafkaAccess, topic: str, replication: int = 1) -> None:
    admin = new_admin(access)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, replication)])
    finally:
        await admin.close()
    producer = new_producer(access)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"kept across restarts", key=b"k")
    finally:
        await producer.stop()


async def _consume_all(access: KafkaAccess, topic: str) -> list[bytes]:
    consumer = new_consumer(access, topic, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
        return [m.value for messages in batch.values() for m in messages]
    finally:
        await consumer.stop()


def test_start_status_stop_and_data_survives_restart(tmp_path: Path) -> None:
    """A started broker reports itself, keeps its data over a stop/start, and stops cleanly."""
    port = str(free_base_port())
    started = dp2(tmp_path, "kafka", "start", "--port", port)
    try:
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip()
        assert bootstrap == f"127.0.0.1:{port}"

        status = dp2(tmp_path, "kafka", "status", "--port", port, "--json")
        assert status.returncode == 0, status.stderr
        [cluster] = json.loads(status.stdout)
        assert cluster["health"] == "up"
        assert cluster["nodes"][0]["running"] is True
        assert cluster["nodes"][0]["data_dir"].startswith(str(tmp_path))

        overall = dp2(tmp_path, "status", "--json")
        assert overall.returncode == 0
        assert json.loads(overall.stdout)["services"][0]["name"] == "kafka"

        again = dp2(tmp_path, "kafka", "start", "--port", port)
        assert again.returncode == 0 and "already running" in again.stderr

        asyncio.run(_produce_one(_admin(tmp_path, bootstrap), "restart-check"))
        stopped = dp2(tmp_path, "kafka", "stop", "--port", port)
        assert stopped.returncode == 0, stopped.stderr
        down = dp2(tmp_path, "kafka", "status", "--port", port)
        assert down.returncode == 1

        restarted = dp2(tmp_path, "kafka", "start", "--port", port)
        assert restarted.returncode == 0, restarted.stderr
        assert "formatting" not in restarted.stderr
        kept = asyncio.run(_consume_all(_admin(tmp_path, bootstrap), "restart-check"))
        assert kept == [b"kept across restarts"]
    finally:
        final = dp2(tmp_path, "kafka", "stop", "--port", port)
    assert final.returncode == 0
    assert dp2(tmp_path, "kafka", "stop", "--port", port).returncode == 0, "stop is safe twice"


def test_port_in_use_and_stale_pid_get_clear_messages(tmp_path: Path) -> None:
    """A taken port is a two-line error naming the port; a stale pid file is cleaned up."""
    port = free_base_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    try:
        result = dp2(tmp_path, "kafka", "start", "--port", str(port))
    finally:
        blocker.close()
    assert result.returncode == 2
    assert f"port {port}" in result.stderr and "how to fix" in result.stderr
    assert "Traceback" not in result.stderr

    node_dir = tmp_path / "kafka" / "1-node" / "node-1"
    node_dir.mkdir(parents=True, exist_ok=True)
    (node_dir / "kafka.pid").write_text("999999\n")
    try:
        started = dp2(tmp_path, "kafka", "start", "--port", str(port))
        assert started.returncode == 0, started.stderr
        assert "stale pid file" in started.stderr
    finally:
        dp2(tmp_path, "kafka", "stop", "--port", str(port))


def test_a_test_broker_never_takes_a_port_of_a_test_stack() -> None:
    """A stack's HTTP ports (and its capture's SMTP port, DP2_PORT_BASE + 25) are
    checked free before its broker starts. CI once drew the broker 26025..26225 and the
    stack 26000..26029: the capture could not bind SMTP and never became healthy."""
    for _ in range(200):
        base = free_base_port(nodes=3)
        broker_ports = [base + 100 * node + offset for node in range(3) for offset in (0, 1)]
        assert max(broker_ports) < LOCAL_KAFKA_PORTS.stop, broker_ports
    with pytest.raises(AssertionError):  # and no stack's ports start below that
        free_http_base(LOCAL_KAFKA_PORTS.start)


def test_three_node_cluster_replicates_and_dp2_up_comes_back_on_it(tmp_path: Path) -> None:
    """`--nodes 3` starts three brokers that replicate a topic three ways; `dp2 up` then
    runs on that cluster (not a new 1-node one), lays DP2's topics out with replication
    3 and min.insync.replicas 2, warns about a topic with fewer replicas, and after
    `dp2 down` the next `dp2 up` brings the 3-node cluster back."""
    port = free_base_port(nodes=3)
    http_base = free_http_base(26000)
    extra = {"DP2_KAFKA_PORT": str(port), "DP2_PORT_BASE": str(http_base)}
    started = dp2(tmp_path, "kafka", "start", "--nodes", "3", "--port", str(port), timeout=300)
    try:
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip()
        assert bootstrap.count(",") == 2
        admin = _admin(tmp_path, bootstrap)
        asyncio.run(_produce_one(admin, "replicated", replication=3))
        kept = asyncio.run(_consume_all(admin, "replicated"))
        assert kept == [b"kept across restarts"]
        status = json.loads(dp2(tmp_path, "kafka", "status", "--port", str(port), "--json").stdout)
        assert [n["running"] for n in status[0]["nodes"]] == [True, True, True]
        asyncio.run(_produce_one(admin, "dp2.deliver.legacy", replication=1))

        # The core services only: this is about the cluster, not the connectors.
        (tmp_path / "connectors.toml").write_text("# no connectors\n")
        up = dp2(tmp_path, "up", "--detach", timeout=400, **extra)
        assert up.returncode == 0, up.stderr
        assert "dp2.deliver.legacy has 1 replica(s) per partition where the cluster wants 3" in (
            up.stderr
        )
        layout = asyncio.run(_layout(admin, "dp2.submitted"))
        assert layout == ([3, 3, 3], "2"), layout
        assert dp2(tmp_path, "down", timeout=300, **extra).returncode == 0

        again = dp2(tmp_path, "up", "--detach", timeout=400, **extra)
        assert again.returncode == 0, again.stderr
        assert "Unable to bootstrap" not in again.stderr
        status = json.loads(dp2(tmp_path, "kafka", "status", "--port", str(port), "--json").stdout)
        assert [n["running"] for n in status[0]["nodes"]] == [True, True, True]
        services = json.loads(dp2(tmp_path, "status", "--json", **extra).stdout)["services"]
        assert all(s["health"] == "up" for s in services), services
    finally:
        stopped = dp2(tmp_path, "down", timeout=300, **extra)
    assert stopped.returncode == 0, stopped.stderr


async def _layout(access: KafkaAccess, topic: str) -> tuple[list[int], str | None]:
    """(replicas per partition, min.insync.replicas) of ``topic``."""
    admin = new_admin(access)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
        replicas = sorted(len(p["replicas"]) for p in described[0]["partitions"])
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    entries = configs[0].resources[0][4]
    isr = next((e[1] for e in entries if e[0] == "min.insync.replicas"), None)
    return replicas, isr


def test_missing_jdk_or_maven_gets_a_clear_message(tmp_path: Path) -> None:
    """No java on PATH, or no mvn when the jars are missing: exit 2 with what to install."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {**os.environ, "DP2_HOME": str(tmp_path), "PATH": str(empty_bin)}
    no_java = subprocess.run(
        [sys.executable, "-m", "brokers.cli", "kafka", "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert no_java.returncode == 2
    assert "no 'java' on PATH" in no_java.stderr and "JDK 17" in no_java.stderr
    assert "Traceback" not in no_java.stderr

    java = shutil.which("java")
    assert java is not None
    (empty_bin / "java").symlink_to(java)
    env["DP2_KAFKA_LIBS"] = str(tmp_path / "no-jars-yet")
    no_maven = subprocess.run(
        [sys.executable, "-m", "brokers.cli", "kafka", "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert no_maven.returncode == 2
    assert "no 'mvn'" in no_maven.stderr and "Install Maven" in no_maven.stderr
    assert "Traceback" not in no_maven.stderr

"""Shared fixtures: one real Kafka per test session, fresh topics and groups per test.

Where the broker comes from, in order:

1. ``DP2_KAFKA_BOOTSTRAP`` — an external cluster you already run;
2. ``DP2_TEST_DOCKER=1`` and a Docker engine that answers — testcontainers (its
   broker has no authentication: set ``DP2_KAFKA_TLS=0`` too, and expect the
   authorisation tests to fail there; the local broker is the reference);
3. otherwise the local JVM broker from deploy/kafka, started on free ports in a
   temporary folder (so it never touches a ``make run`` broker on 9092) and
   stopped when the session ends.

The local broker is the secure one ``make run`` starts: mTLS on every listener
with a session PKI (``kafka_pki``) and ACLs only. Tests reach it as the admin
(``kafka_admin``) or as the identity a test is about.

PostgreSQL, for the stores' contract suites and whatever else runs on it, is one
real server per session as well (tests.postgres_server: ``DP2_TEST_DATABASE_URL``,
or one started from the distribution's binaries); ``database_url`` is a fresh,
empty database on it for one test.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import NewTopic

from brokers.runtime.kafka import new_admin
from brokers.runtime.settings import KafkaAccess, Settings
from brokers.stack.access import ADMIN_IDENTITY
from brokers.stack.kafka import ClusterSpec, LocalKafka, free_base_port
from tests.postgres_server import fresh_database, postgres_server

TopicFactory = Callable[..., Awaitable[str]]


def _docker_answers() -> bool:
    """Ping the Docker engine's socket; testcontainers has no helper for this."""
    path = "/var/run/docker.sock"
    if not os.path.exists(path):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"OK" in sock.recv(1024)
    except OSError:
        return False


def _log(text: str) -> None:
    print(f"[kafka fixture] {text}", file=sys.stderr)


@pytest.fixture(scope="session")
def kafka_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's PKI: the broker trusts its CA, every test identity is issued here."""
    return Path(os.environ.get("DP2_PKI") or tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str, kafka_pki: Path) -> KafkaAccess:
    """Kafka access as the admin identity (a super user)."""
    tls = os.environ.get("DP2_KAFKA_TLS", "1") not in {"0", "false", "no", "off"}
    return KafkaAccess(kafka_bootstrap, ADMIN_IDENTITY, kafka_pki if tls else None)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory, kafka_pki: Path) -> Iterator[str]:
    """Bootstrap address of the session's real Kafka broker."""
    external = os.environ.get("DP2_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    if os.environ.get("DP2_TEST_DOCKER") == "1":
        if _docker_answers():
            from testcontainers.kafka import KafkaContainer  # noqa: PLC0415 - optional extra

            with KafkaContainer().with_kraft() as container:
                yield container.get_bootstrap_server()
            return
        _log("DP2_TEST_DOCKER=1 but no Docker engine answers; using the local JVM broker")
    settings = Settings.from_env({})
    spec = ClusterSpec(
        root=tmp_path_factory.mktemp("kafka"),
        nodes=1,
        base_port=free_base_port(),
        heap_mb=512,
        libs=settings.kafka_libs,
        deploy_dir=settings.kafka_deploy_dir,
        pki_dir=kafka_pki,
    )
    kafka = LocalKafka(spec, progress=_log)
    kafka.start()
    try:
        yield kafka.bootstrap
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """URL of the session's real PostgreSQL server (its maintenance database)."""
    with postgres_server() as url:
        yield url


@pytest.fixture
def database_url(postgres: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with fresh_database(postgres) as url:
        yield url


@pytest.fixture
def unique() -> str:
    """A short random suffix for names that must not collide between tests."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def group_id(unique: str) -> str:
    """A consumer group that no other test uses."""
    return f"test-group-{unique}"


@pytest.fixture
async def new_topic(kafka_admin: KafkaAccess, unique: str) -> AsyncIterator[TopicFactory]:
    """Create fresh topics for one test (``await new_topic("name")``); deleted afterwards."""
    admin = new_admin(kafka_admin)
    await admin.start()
    created: list[str] = []

    async def create(
        base: str = "t", partitions: int = 1, config: dict[str, str] | None = None
    ) -> str:
        name = f"test.{base}.{unique}.{len(created)}"
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config or {})])
        created.append(name)
        return name

    try:
        yield create
    finally:
        if created:
            await admin.delete_topics(created)
        await admin.close()


@pytest.fixture
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent

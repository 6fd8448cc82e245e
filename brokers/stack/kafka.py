"""Run Apache Kafka locally from its Maven Central jars, without Docker.

Why this exists: DP2's embedded default and its whole test suite need a *real*
broker, and this machine (like many a vendor's laptop and CI runner) has Java and
Maven but no container engine. ``deploy/kafka/pom.xml`` copies the broker, its
storage tool and the perf tools into ``deploy/kafka/libs``; this module formats
KRaft storage on first use, starts one or three combined broker+controller nodes
on 127.0.0.1, waits until a topic can really be created, and stops them cleanly.

Layout under the cluster root (``$DP2_HOME/kafka/<n>-node`` by default)::

    cluster.json               cluster id (shared by every node) and base port, from
                               the first start; status and stop read the port here
    node-<id>/server.properties rendered from deploy/kafka/server.properties.template
    node-<id>/keystore.pem     the node's key and certificate chain (0600), from the PKI
    node-<id>/truststore.pem   the DP2 CA: the only issuer a client certificate may have
    node-<id>/data/            log.dirs: survives restarts
    node-<id>/logs/            server.log (log4j2) and console.log (JVM stdout/err)
    node-<id>/kafka.pid

Ports: node *i* (1-based) listens on ``base + 100*(i-1)`` for clients and one
above that for its controller: 9092/9093, 9192/9193, 9292/9293 by default.

Security: every listener (clients and controllers) is TLS with client
certificates from DP2's PKI (``ClusterSpec.pki_dir``); the runner issues the
nodes' ``service:kafka-broker`` certificate and the ``service:dp2-admin``
identity (both super users) if they are missing. Everyone else may do only what
the ACLs say (brokers.stack.access, applied by ``dp2 up``).

Every foreseeable failure (no JDK, no Maven, a port in use, a node that dies on
start) raises :class:`KafkaRunnerError` with a sentence saying what to do.

Why one module over 500 lines: fetching the jars, writing each node's configuration
and supervising the JVMs are one lifecycle of a local cluster.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Final

from aiokafka.admin import NewTopic

from brokers.runtime.kafka import new_admin
from brokers.runtime.settings import KafkaAccess
from brokers.security.pki import Pki
from brokers.stack.access import ADMIN_IDENTITY, BROKER_IDENTITY
from schemas.errors import Dp2Error

#: Kafka's version is pinned in the pom; the runner reads it from there.
_POM_VERSION = re.compile(r"<kafka\.version>([^<]+)</kafka\.version>")
_READY_TOPIC_PREFIX = "__dp2_ready_"
_JAVA_MIN_MAJOR = 17

Progress = Callable[[str], None]


class KafkaRunnerError(Dp2Error):
    """The local Kafka could not be fetched, started, reached or stopped."""

    reason_code = "KAFKA_UNAVAILABLE"
    hint = "Run dp2 kafka status, and read the node logs under DP2_HOME/kafka."


def _silent(_: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class NodeSpec:
    node_id: int
    broker_port: int
    controller_port: int
    directory: Path

    @property
    def config_path(self) -> Path:
        return self.directory / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def logs_dir(self) -> Path:
        return self.directory / "logs"

    @property
    def pid_path(self) -> Path:
        return self.directory / "kafka.pid"


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: int
    pid: int | None
    running: bool
    listening: bool
    broker_port: int
    data_dir: str


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """Where and how a local cluster lives; pure data, no processes."""

    root: Path
    nodes: int = 1
    base_port: int = 9092
    heap_mb: int = 512
    libs: Path = Path("deploy/kafka/libs")
    deploy_dir: Path = Path("deploy/kafka")
    #: DP2's PKI: issues the nodes' certificates and is the one CA the nodes trust.
    pki_dir: Path = Path("var/pki")

    def __post_init__(self) -> None:
        if self.nodes not in (1, 3):
            raise KafkaRunnerError(
                f"{self.nodes} nodes is not a supported local cluster size",
                hint="Use --nodes 1 (the default) or --nodes 3 (for fault tests).",
            )

    @property
    def node_specs(self) -> list[NodeSpec]:
        return [
            NodeSpec(
                node_id=i,
                broker_port=self.base_port + 100 * (i - 1),
                controller_port=self.base_port + 100 * (i - 1) + 1,
                directory=self.root / f"node-{i}",
            )
            for i in range(1, self.nodes + 1)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.broker_port}" for n in self.node_specs)

    @property
    def admin(self) -> KafkaAccess:
        """Kafka access as the admin identity (a super user of this cluster)."""
        return KafkaAccess(self.bootstrap, ADMIN_IDENTITY, self.pki_dir)

    @property
    def kafka_version(self) -> str:
        match = _POM_VERSION.search((self.deploy_dir / "pom.xml").read_text())
        if not match:
            raise KafkaRunnerError(
                f"{self.deploy_dir / 'pom.xml'} names no <kafka.version>",
                hint="Restore deploy/kafka/pom.xml from git.",
            )
        return match.group(1)


def recorded_base_port(root: Path) -> int | None:
    """The base port a cluster under ``root`` was last started on, if any."""
    try:
        return int(json.loads((root / "cluster.json").read_text())["base_port"])
    except (OSError, ValueError, KeyError):
        return None


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, base64url, no padding (22 chars).

    Kafka's own ``random-uuid`` avoids ids that start with '-' (they read as a
    command-line flag); so do we. Doing it here saves a JVM start.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_is_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def ephemeral_ports_start(default: int = 32768) -> int:
    """The first port the kernel hands out to outgoing connections (Linux: the low
    end of net.ipv4.ip_local_port_range; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


#: Local brokers that tests and the bench start take their ports from here; the HTTP
#: ports of the ``dp2 up`` stacks they run (and the capture's SMTP port) lie from
#: LOCAL_KAFKA_PORTS.stop upwards. Disjoint, because a stack's HTTP ports are checked
#: free before its broker binds: a broker drawn from the same range once took the
#: capture's SMTP port, and the capture never came up.
LOCAL_KAFKA_PORTS: Final = range(20000, 24000)


def free_base_port(
    nodes: int = 1, start: int = LOCAL_KAFKA_PORTS.start, stop: int | None = None
) -> int:
    """A base port whose client and controller ports are free for every node.

    Used by tests so that their broker never collides with a developer's
    ``make run`` broker on 9092, nor with the HTTP ports of a test's stack (see
    LOCAL_KAFKA_PORTS). The ports lie below the kernel's ephemeral range too: a port
    in it that is free when checked can be taken by any process's outgoing
    connection before the broker binds it.
    """
    if stop is None:
        stop = min(LOCAL_KAFKA_PORTS.stop, ephemeral_ports_start())
    stop = max(start + 1000, stop)
    rng = int.from_bytes(os.urandom(2), "big")
    span = stop - start - 100 * nodes
    for attempt in range(200):
        base = start + (rng + attempt * 997) % span
        ports = [base + 100 * i + offset for i in range(nodes) for offset in (0, 1)]
        if all(port_is_free(p) for p in ports):
            return base
    raise KafkaRunnerError(
        "no free port range found for a local Kafka",
        hint=f"Free some ports between {start} and {stop}, or set DP2_KAFKA_BOOTSTRAP.",
    )


def check_java() -> str:
    """Path of a Java 17+ executable, or a clear error."""
    java = shutil.which("java")
    if java is None:
        raise KafkaRunnerError(
            "no 'java' on PATH: Kafka needs a Java runtime",
            hint="Install JDK 17 or newer (Debian: apt-get install openjdk-17-jdk-headless).",
        )
    out = subprocess.run(  # noqa: S603 - fixed argv, our own PATH lookup
        [java, "-version"], capture_output=True, text=True, check=False
    )
    match = re.search(r'version "(\d+)', out.stderr + out.stdout)
    major = int(match.group(1)) if match else 0
    if major < _JAVA_MIN_MAJOR:
        raise KafkaRunnerError(
            f"{java} is Java {major or 'of unknown version'}; Kafka 4 needs 17 or newer",
            hint="Install JDK 17+ and put it first on PATH.",
        )
    return java


def ensure_jars(spec: ClusterSpec, progress: Progress = _silent) -> Path:
    """Copy the Kafka jars from Maven Central once; later calls are instant."""
    version = spec.kafka_version
    marker = spec.libs / ".complete"
    if marker.exists() and marker.read_text().strip() == version:
        return spec.libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaRunnerError(
            "the Kafka jars are not there yet and there is no 'mvn' to fetch them",
            hint="Install Maven (Debian: apt-get install maven), or point "
            "DP2_KAFKA_LIBS at a folder that holds the Kafka jars.",
        )
    progress(f"fetching Apache Kafka {version} from Maven Central into {spec.libs} (once)")
    if spec.libs.exists():
        shutil.rmtree(spec.libs)  # a half-copied folder from an interrupted run
    result = subprocess.run(  # noqa: S603 - fixed argv
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(spec.deploy_dir / "pom.xml"),
            "dependency:copy-dependencies",
            f"-Dkafka.libs.dir={spec.libs}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not any(spec.libs.glob("kafka_2.13-*.jar")):
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise KafkaRunnerError(
            f"Maven could not fetch the Kafka jars:\n{tail}",
            hint="Check that Maven Central is reachable (mvn -v; ~/.m2/settings.xml).",
        )
    marker.write_text(version + "\n")
    return spec.libs


def _read_pid(node: NodeSpec) -> int | None:
    try:
        return int(node.pid_path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _is_our_kafka(pid: int, node: NodeSpec) -> bool:
    """True if pid is alive and is the Kafka started with this node's config."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline and str(node.config_path).encode() in cmdline


def _log_tail(node: NodeSpec, lines: int = 20) -> str:
    chunks = []
    for name in ("console.log", "server.log"):
        path = node.logs_dir / name
        if path.exists():
            text = path.read_text(errors="replace").splitlines()
            chunks.append(f"--- {path} ---\n" + "\n".join(text[-lines:]))
    return "\n".join(chunks)


class LocalKafka:
    """A local Kafka cluster of one or three nodes; ``start`` and ``stop`` are idempotent."""

    def __init__(self, spec: ClusterSpec, progress: Progress = _silent) -> None:
        self.spec = spec
        self._progress = progress
        # Handles of the nodes this object launched: polled for early exits and
        # waited on at stop, so no zombie or "still running" warning is left.
        self._processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def bootstrap(self) -> str:
        return self.spec.bootstrap

    @property
    def admin(self) -> KafkaAccess:
        return self.spec.admin

    # --- status -----------------------------------------------------------
    def status(self) -> list[NodeStatus]:
        result = []
        for node in self.spec.node_specs:
            pid = _read_pid(node)
            running = pid is not None and _is_our_kafka(pid, node)
            result.append(
                NodeStatus(
                    node_id=node.node_id,
                    pid=pid if running else None,
                    running=running,
                    listening=running and port_is_listening(node.broker_port),
                    broker_port=node.broker_port,
                    data_dir=str(node.data_dir),
                )
            )
        return result

    def is_running(self) -> bool:
        return all(s.running for s in self.status())

    # --- start ------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        java = check_java()
        libs = ensure_jars(self.spec, self._progress)
        cluster_id = self._cluster_id()
        to_start = []
        for node in self.spec.node_specs:
            pid = _read_pid(node)
            if pid is not None and _is_our_kafka(pid, node):
                continue
            if pid is not None:
                self._progress(f"node {node.node_id}: removing stale pid file (pid {pid} is gone)")
                node.pid_path.unlink(missing_ok=True)
            to_start.append(node)
        if not to_start:
            self._progress(f"Kafka already running at {self.bootstrap}")
            return
        for node in to_start:
            for port in (node.broker_port, node.controller_port):
                if not port_is_free(port):
                    raise KafkaRunnerError(
                        f"port {port} on 127.0.0.1 is in use by another process, "
                        f"so Kafka node {node.node_id} cannot listen there",
                        hint="Stop that process (ss -ltnp | grep :PORT shows it), "
                        "or choose other ports with --port / DP2_KAFKA_PORT.",
                    )
        self._ensure_identities()
        for node in to_start:
            self._render_config(node)
            self._format_storage(java, libs, node, cluster_id)
        launched = {node: self._launch(java, libs, node) for node in to_start}
        self._processes.update({node.node_id: p for node, p in launched.items()})
        self._wait_ready(launched, timeout)
        self._progress(f"Kafka {self.spec.kafka_version} ready at {self.bootstrap}")

    def _cluster_id(self) -> str:
        """The cluster id from cluster.json (made on first start); records the port too."""
        path = self.spec.root / "cluster.json"
        known = json.loads(path.read_text()) if path.exists() else {}
        cluster_id = str(known.get("cluster_id") or new_cluster_id())
        self.spec.root.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "cluster_id": cluster_id,
                    "nodes": self.spec.nodes,
                    "base_port": self.spec.base_port,
                }
            )
            + "\n"
        )
        return cluster_id

    def _ensure_identities(self) -> None:
        """The CA, the nodes' TLS certificate and the admin identity, issued once."""
        pki = Pki(self.spec.pki_dir)
        pki.init()
        names = set(pki.names())
        if BROKER_IDENTITY not in names:
            pki.issue_service(BROKER_IDENTITY, hosts=["127.0.0.1", "localhost"], days=3650)
        if ADMIN_IDENTITY not in names:
            pki.issue_service(ADMIN_IDENTITY, days=3650)

    def _write_stores(self, node: NodeSpec) -> tuple[Path, Path]:
        """keystore.pem (key, certificate, CA) and truststore.pem (CA) for one node."""
        identity = self.spec.pki_dir / "identities" / BROKER_IDENTITY
        ca = (self.spec.pki_dir / "ca" / "cert.pem").read_bytes()
        keystore, truststore = node.directory / "keystore.pem", node.directory / "truststore.pem"
        fd = os.open(keystore, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write((identity / "key.pem").read_bytes())
            handle.write((identity / "cert.pem").read_bytes())
            handle.write(ca)
        os.chmod(keystore, 0o600)
        truststore.write_bytes(ca)
        return keystore, truststore

    def _render_config(self, node: NodeSpec) -> None:
        template = Template((self.spec.deploy_dir / "server.properties.template").read_text())
        voters = ",".join(
            f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.spec.node_specs
        )
        replication = min(self.spec.nodes, 3)
        node.directory.mkdir(parents=True, exist_ok=True)
        node.logs_dir.mkdir(exist_ok=True)
        keystore, truststore = self._write_stores(node)
        node.config_path.write_text(
            template.substitute(
                node_id=node.node_id,
                quorum_voters=voters,
                broker_port=node.broker_port,
                controller_port=node.controller_port,
                data_dir=node.data_dir,
                replication_factor=replication,
                min_isr=2 if replication >= 3 else 1,
                keystore=keystore,
                truststore=truststore,
            )
        )

    def _format_storage(self, java: str, libs: Path, node: NodeSpec, cluster_id: str) -> None:
        if (node.data_dir / "meta.properties").exists():
            return
        self._progress(f"node {node.node_id}: formatting storage in {node.data_dir}")
        result = subprocess.run(  # noqa: S603 - argv built from our own paths
            [
                java,
                "-cp",
                f"{libs}/*",
                f"-Dlog4j2.configurationFile={self.spec.deploy_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={node.logs_dir}",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(node.config_path),
                "--ignore-formatted",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise KafkaRunnerError(
                f"formatting Kafka storage for node {node.node_id} failed:\n"
                + (result.stdout + result.stderr)[-2000:],
                hint=f"If {node.data_dir} belongs to another cluster, remove it "
                "(dp2 kafka stop; rm -r the folder) and start again.",
            )

    def _launch(self, java: str, libs: Path, node: NodeSpec) -> subprocess.Popen[bytes]:
        heap = f"{self.spec.heap_mb}m"
        argv = [
            java,
            f"-Xms{heap}",
            f"-Xmx{heap}",
            # Kafka's own start script flags.
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={node.logs_dir}",
            f"-Dlog4j2.configurationFile={self.spec.deploy_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(node.config_path),
        ]
        with open(node.logs_dir / "console.log", "ab") as console:
            process = subprocess.Popen(  # noqa: S603 - argv built from our own paths
                argv,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the CLI; Ctrl-C in a shell won't hit it
            )
        node.pid_path.write_text(f"{process.pid}\n")
        self._progress(
            f"node {node.node_id}: started pid {process.pid} on 127.0.0.1:{node.broker_port}"
        )
        return process

    def _wait_ready(self, started: dict[NodeSpec, subprocess.Popen[bytes]], timeout: float) -> None:
        # Poll the Popen handles, not /proc: right after fork the child's cmdline
        # is still ours, and an exited child must be reaped to read its status.
        deadline = time.monotonic() + timeout
        while True:
            for node, process in started.items():
                if process.poll() is not None:
                    node.pid_path.unlink(missing_ok=True)
                    raise KafkaRunnerError(
                        f"Kafka node {node.node_id} exited during start-up "
                        f"(exit code {process.returncode}):\n{_log_tail(node)}",
                        hint="Read the log above; a port taken since, a corrupt data dir "
                        "or too little memory are the usual causes.",
                    )
            if all(port_is_listening(n.broker_port) for n in started):
                try:
                    asyncio.run(_probe_topic(self.admin, self.spec.nodes))
                    return
                except Exception as exc:  # any failure means "not ready yet"
                    last_error: Exception | None = exc
            else:
                last_error = None
            if time.monotonic() > deadline:
                raise KafkaRunnerError(
                    f"Kafka at {self.bootstrap} did not accept a topic within {timeout:.0f} s"
                    + (f" (last error: {last_error!r})" if last_error else ""),
                    hint="See the node logs under " + str(self.spec.root),
                )
            time.sleep(0.3)

    # --- stop -------------------------------------------------------------
    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM every node (controlled shutdown), SIGKILL what outlives the timeout."""
        live: list[tuple[NodeSpec, int]] = []
        for node in self.spec.node_specs:
            pid = _read_pid(node)
            if pid is not None and _is_our_kafka(pid, node):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                live.append((node, pid))
            else:
                node.pid_path.unlink(missing_ok=True)
        deadline = time.monotonic() + timeout
        for node, pid in live:
            if not self._wait_exit(node, pid, deadline):
                self._progress(f"node {node.node_id}: no clean exit in {timeout:.0f} s, killing")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_exit(node, pid, None)
            self._progress(f"node {node.node_id}: stopped")

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would (for fault tests)."""
        node = self.spec.node_specs[node_id - 1]
        pid = _read_pid(node)
        if pid is not None and _is_our_kafka(pid, node):
            os.kill(pid, signal.SIGKILL)
            self._wait_exit(node, pid, None)

    def _wait_exit(self, node: NodeSpec, pid: int, deadline: float | None) -> bool:
        """Wait until the node's process is gone (and reaped, if it is our child)."""
        while _is_our_kafka(pid, node):
            if deadline is not None and time.monotonic() > deadline:
                return False
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # a child of another LocalKafka object
            time.sleep(0.1)
        process = self._processes.pop(node.node_id, None)
        if process is not None:
            process.wait()  # it has exited: this only collects the status
        node.pid_path.unlink(missing_ok=True)
        return True


def write_client_properties(access: KafkaAccess, folder: Path) -> Path:
    """A Java client configuration (for Kafka's own tools) that connects as ``access``.

    Writes ``<identity>.keystore.pem`` (key and certificate, 0600) and
    ``<identity>.properties`` into ``folder``; returns the properties file.
    """
    if access.pki_dir is None:
        path = folder / "plaintext.properties"
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text("security.protocol=PLAINTEXT\n")
        return path
    identity = access.pki_dir / "identities" / access.identity
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    keystore = folder / f"{access.identity}.keystore.pem"
    fd = os.open(keystore, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write((identity / "key.pem").read_bytes())
        handle.write((identity / "cert.pem").read_bytes())
    path = folder / f"{access.identity}.properties"
    path.write_text(
        "security.protocol=SSL\n"
        "ssl.keystore.type=PEM\n"
        f"ssl.keystore.location={keystore}\n"
        "ssl.truststore.type=PEM\n"
        f"ssl.truststore.location={access.pki_dir / 'ca' / 'cert.pem'}\n"
    )
    return path


async def _probe_topic(access: KafkaAccess, replication: int) -> None:
    """Create and delete a throwaway topic: the broker is ready when that works."""
    admin = new_admin(access, request_timeout_ms=5000)
    await admin.start()
    try:
        name = f"{_READY_TOPIC_PREFIX}{uuid.uuid4().hex[:12]}"
        response = await admin.create_topics([NewTopic(name, 1, replication)])
        for _topic, code, *_rest in getattr(response, "topic_errors", []):
            if code != 0:
                raise RuntimeError(f"create_topics error code {code}")
        await admin.delete_topics([name])
    finally:
        await admin.close()

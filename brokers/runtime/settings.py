"""One frozen settings object per process, read once from the environment.

Every knob is an environment variable with the ``DP2_`` prefix, so the same
services run unchanged on a laptop, in CI and in Kubernetes. ``Settings.from_env``
fails fast with a :class:`ConfigError` that names the variable and says what a
valid value looks like, instead of letting a typo surface later as a timeout.

| variable | default | meaning |
|---|---|---|
| DP2_HOME | ``<checkout>/var`` | project-local state: Kafka data, stores, run files |
| DP2_KAFKA_BOOTSTRAP | ``127.0.0.1:<DP2_KAFKA_PORT>`` | an existing cluster to use |
| DP2_KAFKA_IDENTITY | per service | the PKI identity this process is to Kafka |
| DP2_KAFKA_TLS | ``1`` | mTLS with DP2's PKI; ``0`` only for a cluster outside it |
| DP2_PKI | ``$DP2_HOME/pki`` | the PKI folder (``dp2 pki``) |
| DP2_PORT_BASE | 8470 | HTTP ports of the services: tracing, validator, router, mailboxes… |
| DP2_KAFKA_PORT | 9092 | first broker port of the local Kafka (controller: +1) |
| DP2_KAFKA_HEAP_MB | 512 | heap per local Kafka node |
| DP2_KAFKA_LIBS | ``deploy/kafka/libs`` | where Maven copies the Kafka jars |
| DP2_SMTP_HOST / _PORT | unset / 25 | SMTP server for notification e-mail |
| DP2_SMTP_STARTTLS, _USER, _PASSWORD | off | SMTP security |
| DP2_SMS_PROVIDERS | unset | ``name=url,name=url``: SMS providers in order of preference |
| DP2_SMS_RATE_PER_S | 10 | SMS a second at most per provider (its contract's limit) |
| DP2_DIGEST_WINDOW_S | 300 | notifications of one recipient within this window become one |
| DP2_NOTIFY_CONCURRENCY | 16 | notifications in flight at once (the SMTP connections kept open) |
| DP2_QUIET_HOURS | unset | ``22-7``: SMS held during these hours |
| DP2_LOG_FORMAT | ``auto`` | ``json``, ``console`` or ``auto`` (console on a terminal) |
| DP2_REPLICATION | auto | new topics' replicas: 3 on 3 or more brokers, else one per broker |
| DP2_MIN_INSYNC_REPLICAS | auto | topics' min.insync.replicas: 2 with 3 replicas or more, else 1 |
| DP2_PARTITIONS | per topic (3) | partitions of the topics that have more than one |
| DP2_ACKS | ``all`` | producer acks: ``all`` (the guarantee the tests prove), ``1`` or ``0`` |
| DP2_PRODUCER_TIMEOUT_MS | 30000 | how long a produce request may wait for the brokers |
| DP2_BIND_HOST | ``127.0.0.1`` | where the HTTP ports listen (``0.0.0.0`` in a container) |
| DP2_DATABASE_URL | unset | ``postgresql://...``: trace store, submission log in PostgreSQL |
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from schemas.errors import ConfigError
from schemas.values import is_ascii_digits, parse_ascii_int

#: The checkout this package runs from; deploy/ and var/ are found relative to it.
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # brokers/runtime/settings.py


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = parse_ascii_int(raw)  # ASCII digits only: int() also reads "٣" and "1_0"
    if value is None or not low <= value <= high:
        raise ConfigError(
            f"{name}={raw!r} is not a whole number from {low} to {high}",
            hint=f"Set {name} to a number in that range, or unset it to use {default}.",
        )
    return value


def is_database_url(url: str) -> bool:
    """True when ``url`` names a PostgreSQL database (postgresql://...)."""
    try:
        return urlsplit(url).scheme in {"postgresql", "postgres"}
    except ValueError:
        return False


def redacted(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(an unreadable URL)"
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@functools.lru_cache(maxsize=64)
def _client_ssl_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """One TLS context per identity and process: verifies the broker, presents our cert."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


@dataclass(frozen=True, slots=True)
class Topology:
    """How DP2's topics are laid out and written: replication, ISR, partitions, acks.

    ``None`` means "follow the cluster": brokers.runtime.kafka.ensure_topics counts
    the brokers and picks replication 3 (min ISR 2) on three or more, so the same
    settings are right for the embedded default and for a cluster.
    """

    replication: int | None = None
    min_insync_replicas: int | None = None
    partitions: int | None = None
    acks: str = "all"
    producer_timeout_ms: int = 30_000

    def replication_for(self, brokers: int) -> int:
        return self.replication or max(1, min(3, brokers))

    def min_insync_for(self, replication: int) -> int:
        if self.min_insync_replicas is not None:
            return min(self.min_insync_replicas, replication)
        return 2 if replication >= 3 else 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Topology:
        acks = env.get("DP2_ACKS") or "all"
        if acks not in {"all", "1", "0"}:
            raise ConfigError(
                f"DP2_ACKS={acks!r} is not all, 1 or 0",
                hint="Leave it unset (all): only acks=all keeps a letter through a broker loss.",
            )
        replication = _int(env, "DP2_REPLICATION", 0, 0, 7) or None
        partitions = _int(env, "DP2_PARTITIONS", 0, 0, 1000) or None
        isr = env.get("DP2_MIN_INSYNC_REPLICAS")
        return cls(
            replication=replication,
            min_insync_replicas=_int(env, "DP2_MIN_INSYNC_REPLICAS", 1, 1, 7) if isr else None,
            partitions=partitions,
            acks=acks,
            producer_timeout_ms=_int(env, "DP2_PRODUCER_TIMEOUT_MS", 30_000, 1000, 600_000),
        )


@dataclass(frozen=True, slots=True)
class KafkaAccess:
    """Where Kafka is and who this client is to it.

    With TLS on (the default), the client presents the PKI identity's certificate:
    the broker maps it to the principal ``<kind>:<name>`` and authorises each
    request by the ACLs ``dp2 up`` derived from the deployment (brokers.stack.access).
    """

    bootstrap: str
    identity: str = ""
    pki_dir: Path | None = None
    topology: Topology = field(default_factory=Topology)

    @property
    def tls(self) -> bool:
        return self.pki_dir is not None

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka client (producer, consumer, admin)."""
        if self.pki_dir is None:
            return {"bootstrap_servers": self.bootstrap}
        if not self.identity:
            raise ConfigError(
                "no Kafka identity is set for this process",
                hint="Set DP2_KAFKA_IDENTITY to a PKI identity (dp2 pki list), "
                "or run it through dp2 up / dp2 run, which choose one per service.",
            )
        folder = self.pki_dir / "identities" / self.identity
        files = (self.pki_dir / "ca" / "cert.pem", folder / "cert.pem", folder / "key.pem")
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise ConfigError(
                f"the Kafka identity {self.identity!r} has no certificate: "
                f"{', '.join(missing)} missing",
                hint="Issue it with dp2 pki issue (dp2 up issues DP2's own), "
                "or point DP2_PKI at the folder that holds it.",
            )
        try:
            context = _client_ssl_context(*files)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"the certificate or key of Kafka identity {self.identity!r} "
                f"cannot be used for TLS: {exc}",
                hint="Re-issue the identity with dp2 pki issue ... --force.",
            ) from exc
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SSL",
            "ssl_context": context,
        }


@dataclass(frozen=True, slots=True)
class Settings:
    """What a DP2 process needs to know about its surroundings."""

    home: Path
    kafka_port: int
    port_base: int
    kafka_bootstrap: str
    kafka_heap_mb: int
    kafka_libs: Path
    kafka_deploy_dir: Path
    log_format: str
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    sms_providers: tuple[tuple[str, str], ...] = ()
    sms_rate_per_s: int = 10
    digest_window_s: int = 300
    notify_concurrency: int = 16
    quiet_hours: tuple[int, int] | None = None
    kafka_identity: str = ""
    kafka_tls: bool = True
    pki_dir_override: Path | None = None
    topology: Topology = field(default_factory=Topology)
    #: PostgreSQL for every store (several instances share it); None: SQLite files.
    database_url: str | None = field(default=None, repr=False)
    bind_host: str = "127.0.0.1"

    @property
    def pki_dir(self) -> Path:
        """The PKI folder: $DP2_PKI, else $DP2_HOME/pki."""
        return self.pki_dir_override or self.home / "pki"

    @property
    def kafka(self) -> KafkaAccess:
        """How this process reaches Kafka, as its own principal."""
        return KafkaAccess(
            self.kafka_bootstrap,
            self.kafka_identity,
            self.pki_dir if self.kafka_tls else None,
            self.topology,
        )

    def as_identity(self, identity: str) -> Settings:
        """The same settings for a service that is the Kafka principal ``identity``."""
        return dataclasses.replace(self, kafka_identity=identity)

    def kafka_as(self, identity: str) -> KafkaAccess:
        """Kafka access as another of this deployment's identities."""
        return self.as_identity(identity).kafka

    @property
    def tracing_url(self) -> str:
        """Where ``dp2 up`` runs the traceability service (its first port)."""
        return f"http://127.0.0.1:{self.port_base}"

    @property
    def kafka_is_external(self) -> bool:
        """True when DP2_KAFKA_BOOTSTRAP points at a cluster we did not start."""
        return self.kafka_bootstrap != f"127.0.0.1:{self.kafka_port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("DP2_HOME") or PROJECT_ROOT / "var").resolve()
        port = _int(env, "DP2_KAFKA_PORT", 9092, 1024, 65000)
        heap = _int(env, "DP2_KAFKA_HEAP_MB", 512, 128, 16384)
        port_base = _int(env, "DP2_PORT_BASE", 8470, 1024, 65000)
        bootstrap = env.get("DP2_KAFKA_BOOTSTRAP") or f"127.0.0.1:{port}"
        for address in bootstrap.split(","):
            host, _, port_text = address.strip().rpartition(":")
            if not host or not is_ascii_digits(port_text):
                raise ConfigError(
                    f"DP2_KAFKA_BOOTSTRAP={bootstrap!r} is not a list of host:port",
                    hint="Write it as host:port[,host:port...], e.g. 127.0.0.1:9092.",
                )
        log_format = env.get("DP2_LOG_FORMAT", "auto")
        if log_format not in {"auto", "json", "console"}:
            raise ConfigError(
                f"DP2_LOG_FORMAT={log_format!r} is not a known log format",
                hint="Use json, console or auto.",
            )
        providers = []
        for item in filter(None, (env.get("DP2_SMS_PROVIDERS") or "").split(",")):
            name, _, url = item.partition("=")
            if not name or not url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"DP2_SMS_PROVIDERS entry {item!r} is not name=http(s)://url",
                    hint="Write it as a=http://127.0.0.1:9001/sms,b=https://sms.example/send.",
                )
            providers.append((name.strip(), url.strip()))
        quiet = env.get("DP2_QUIET_HOURS")
        quiet_hours = None
        if quiet:
            start, _, end = quiet.partition("-")
            if not (
                is_ascii_digits(start) and is_ascii_digits(end) and 0 <= int(start) < 24 > int(end)
            ):
                raise ConfigError(
                    f"DP2_QUIET_HOURS={quiet!r} is not start-end hours",
                    hint="Write it as 22-7 (from 22:00 to 07:00), or unset it.",
                )
            quiet_hours = (int(start), int(end))
        database_url = env.get("DP2_DATABASE_URL") or None
        if database_url is not None and not is_database_url(database_url):
            raise ConfigError(
                f"DP2_DATABASE_URL={redacted(database_url)!r} is not a PostgreSQL URL",
                hint="Write it as postgresql://user:password@host:5432/dbname, "
                "or unset it to keep the stores in SQLite files under DP2_HOME.",
            )
        bind_host = env.get("DP2_BIND_HOST") or "127.0.0.1"
        try:
            ipaddress.ip_address(bind_host)
        except ValueError:
            raise ConfigError(
                f"DP2_BIND_HOST={bind_host!r} is not an IP address",
                hint="Use 127.0.0.1 (this machine only, the default) or 0.0.0.0 (a container).",
            ) from None
        deploy = PROJECT_ROOT / "deploy" / "kafka"
        return cls(
            home=home,
            kafka_port=port,
            port_base=port_base,
            kafka_bootstrap=bootstrap,
            kafka_heap_mb=heap,
            kafka_libs=Path(env.get("DP2_KAFKA_LIBS") or deploy / "libs").resolve(),
            kafka_deploy_dir=deploy,
            log_format=log_format,
            smtp_host=env.get("DP2_SMTP_HOST") or None,
            smtp_port=_int(env, "DP2_SMTP_PORT", 25, 1, 65535),
            smtp_starttls=env.get("DP2_SMTP_STARTTLS", "") in {"1", "true", "yes"},
            smtp_username=env.get("DP2_SMTP_USER") or None,
            smtp_password=env.get("DP2_SMTP_PASSWORD") or None,
            sms_providers=tuple(providers),
            sms_rate_per_s=_int(env, "DP2_SMS_RATE_PER_S", 10, 1, 10_000),
            digest_window_s=_int(env, "DP2_DIGEST_WINDOW_S", 300, 0, 86400),
            notify_concurrency=_int(env, "DP2_NOTIFY_CONCURRENCY", 16, 1, 256),
            quiet_hours=quiet_hours,
            kafka_identity=env.get("DP2_KAFKA_IDENTITY", ""),
            kafka_tls=env.get("DP2_KAFKA_TLS", "1") not in {"0", "false", "no", "off"},
            pki_dir_override=Path(env["DP2_PKI"]).resolve() if env.get("DP2_PKI") else None,
            topology=Topology.from_env(env),
            database_url=database_url,
            bind_host=bind_host,
        )

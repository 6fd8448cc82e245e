"""What a connector is, how DP2 finds an installed one, and how it is configured.

Why this exists: DP2 is one backbone with many vendors' connectors. A vendor ships
a Python package; the operator installs it and adds a table to
``$DP2_HOME/connectors.toml``; ``dp2 up`` then runs it like any built-in service,
with ``/healthz``, ``/metrics`` and its own HTTP routes — no change to DP2's code.

The contract is small on purpose::

    class Connector(Protocol):          # every connector
        name: str
        async def start(self) -> None   # open connections, start background tasks
        async def stop(self) -> None    # safe to call twice
        def health(self) -> Mapping[str, Any]   # {"status": "ok" | "degraded" | "failing", ...}

    class ReceivingConnector(Connector, Protocol):   # one that gets post
        provider_id: str                # reads dp2.deliver.<provider_id>
        async def receive(self, message: Envelope) -> None

    class HttpConnector(Connector, Protocol):        # one with an HTTP API
        def routes(self) -> Iterable[web.AbstractRouteDef]

A factory ``create(context: ConnectorContext) -> Connector`` is published in the
``dp2.connectors`` entry-point group of the vendor's package::

    [project.entry-points."dp2.connectors"]
    folder = "dp2_folder_connector:create"

``receive`` is handed a message whose signature, certificate chain and revocation
have been checked and whose documents are decrypted (see connectors.delivery). It
must store the message durably before it returns — the Kafka offset is committed
after it — and be idempotent, because after a crash the same message comes again.
Raise a ``Dp2Error`` subclass with ``retriable = True`` to have it retried later.
A receiving connector that sets ``documents`` (a brokers.runtime.blobstore.BlobStore
of its own, private, for plaintext) gets big documents decrypted a chunk at a time
into it and named by reference, not inline; it reads them with connectors.documents.
"""

from __future__ import annotations

import tomllib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from aiohttp import web
from prometheus_client import CollectorRegistry

from brokers.runtime.host import ServiceHost
from brokers.runtime.kafka import ensure_topics
from brokers.runtime.metrics import ServiceMetrics
from brokers.runtime.private import private_dir
from brokers.runtime.records import Handler
from brokers.runtime.settings import Settings
from brokers.runtime.worker import KafkaWorker
from brokers.security.pki import provider_identity_name
from connectors.delivery import DeliveryHandler
from schemas.errors import ConfigError, Dp2Error
from schemas.models import Envelope
from schemas.vocabulary import PRINT_PROVIDER, provider_topic

ENTRY_POINT_GROUP = "dp2.connectors"
CONFIG_FILE = "connectors.toml"


@runtime_checkable
class Connector(Protocol):
    """Every connector: a name, start/stop, and a health report."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> Mapping[str, Any]: ...


@runtime_checkable
class ReceivingConnector(Connector, Protocol):
    """A connector that receives post as the mailbox provider ``provider_id``."""

    provider_id: str

    async def receive(self, message: Envelope) -> None: ...


@runtime_checkable
class HttpConnector(Connector, Protocol):
    """A connector with HTTP routes, served next to its /healthz and /metrics."""

    def routes(self) -> Iterable[web.AbstractRouteDef]: ...


@dataclass(frozen=True, slots=True)
class ConnectorContext:
    """What DP2 hands a connector's factory: its name, settings, configuration, registry."""

    name: str
    settings: Settings
    config: Mapping[str, Any]
    registry: CollectorRegistry
    metrics: ServiceMetrics
    group_suffix: str = ""

    @property
    def data_dir(self) -> Path:
        """A directory of the connector's own for its state (created on first use, 0700)."""
        return private_dir(self.settings.home / "data" / "connectors" / self.name)

    def require(self, key: str) -> Any:
        """A configuration value that must be present."""
        if key not in self.config:
            raise ConfigError(
                f"connector {self.name!r} needs the setting {key!r}",
                hint=f"Add {key} = ... to the [connectors.{self.name}] table of "
                f"{config_path(self.settings)}.",
            )
        return self.config[key]

    def option(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    def worker(self, role: str, topics: list[str], handler: Handler, **kw: Any) -> KafkaWorker:
        """A consumer-group worker of this connector (the connector starts and stops it)."""
        return KafkaWorker(
            f"connector-{self.name}-{role}",
            self.settings.kafka,
            topics,
            group_id=f"dp2.connector.{self.name}.{role}{self.group_suffix}",
            handler=handler,
            metrics=self.metrics,
            **kw,
        )


def connector_provider(name: str, table: Mapping[str, Any]) -> str | None:
    """The provider a configured connector receives post as, if any."""
    provider = table.get("provider") or table.get("mailbox")
    if provider:
        return str(provider)
    return PRINT_PROVIDER if name == "print" else None


def connector_identity(name: str, table: Mapping[str, Any]) -> str:
    """The PKI identity a configured connector connects to Kafka as.

    ``kafka_identity`` if set, else the identity it signs with, else its
    provider's identity (a receiving connector without a sending identity).
    """
    for key in ("kafka_identity", "identity"):
        if table.get(key):
            return str(table[key])
    provider = connector_provider(name, table)
    if provider:
        return provider_identity_name(provider)
    raise ConfigError(
        f"connector {name!r} names no identity to connect to Kafka with",
        hint=f'Add identity = "NAME" (or kafka_identity) to [connectors.{name}] in '
        "connectors.toml; dp2 pki list shows the identities.",
    )


ConnectorFactory = Callable[[ConnectorContext], Connector]


class UnknownConnectorError(Dp2Error):
    reason_code = "UNKNOWN_CONNECTOR"


def config_path(settings: Settings) -> Path:
    return settings.home / CONFIG_FILE


def read_config(settings: Settings) -> dict[str, dict[str, Any]]:
    """The ``[connectors.<name>]`` tables of ``$DP2_HOME/connectors.toml`` (none if absent)."""
    path = config_path(settings)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path} is not valid TOML: {exc}",
            hint="Fix the file; each connector is a [connectors.NAME] table.",
        ) from exc
    tables = data.get("connectors", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ConfigError(
            f"{path} must hold [connectors.NAME] tables",
            hint="Write one table per connector, e.g. [connectors.esdh] with its settings.",
        )
    return tables


def discover() -> dict[str, EntryPoint]:
    """Installed connectors by name, from the ``dp2.connectors`` entry-point group."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def configured(settings: Settings) -> list[str]:
    """Connectors that ``dp2 up`` runs: installed, configured, and not ``enabled = false``."""
    installed = discover()
    return [
        name
        for name, table in read_config(settings).items()
        if name in installed and table.get("enabled", True)
    ]


def create(context: ConnectorContext) -> Connector:
    """Load the named connector's factory through its entry point and build it."""
    installed = discover()
    entry = installed.get(context.name)
    if entry is None:
        raise UnknownConnectorError(
            f"no connector called {context.name!r} is installed "
            f"(installed: {', '.join(sorted(installed)) or 'none'})",
            hint="pip install the connector's package; it must declare an entry point in "
            f"the {ENTRY_POINT_GROUP!r} group.",
        )
    factory: ConnectorFactory = entry.load()
    connector = factory(context)
    if not isinstance(connector, Connector):
        raise ConfigError(
            f"the factory of connector {context.name!r} returned {type(connector).__name__}, "
            "which lacks name/start/stop/health",
            hint="Return an object that implements connectors.base.Connector.",
        )
    return connector


async def build_connector_service(
    name: str, settings: Settings, *, port: int = 0, group_suffix: str = ""
) -> ServiceHost:
    """The connector ``name`` as a DP2 service (``dp2 run connector NAME`` and ``dp2 up``).

    A receiving connector gets a worker on its provider's delivery topic that does
    the security work (connectors.delivery) before calling ``receive``; an HTTP
    connector's routes are served next to /healthz and /metrics, and its health
    report is part of /healthz.
    """
    registry = CollectorRegistry()
    table = read_config(settings).get(name, {})
    if not settings.kafka_identity:  # every connector is its own Kafka principal
        settings = settings.as_identity(connector_identity(name, table))
    context = ConnectorContext(
        name,
        settings,
        table,
        registry,
        ServiceMetrics(registry),
        group_suffix,
    )
    connector = create(context)
    # The host runs the connector's own workers (if it lists them) and its deliveries.
    workers: list[KafkaWorker] = []
    on_stop: list[Callable[[], Awaitable[None]]] = []
    if isinstance(connector, ReceivingConnector):
        provider = connector.provider_id
        await ensure_topics(settings.kafka, [provider_topic(provider)])
        handler = DeliveryHandler.for_provider(
            settings,
            provider,
            connector,
            actor=f"connector:{name}",
            documents=getattr(connector, "documents", None),  # opt-in: its plaintext store
        )
        workers.append(
            context.worker("deliveries", [provider_topic(provider).name], handler.handle)
        )
        on_stop.append(handler.close)
    return ServiceHost.serve(
        connector,
        registry,
        port=port,
        workers=workers,
        app=web.Application(client_max_size=_MAX_REQUEST_BYTES),
        on_stop=on_stop,
        host=settings.bind_host,
    )


# MeMo allows 99.5 MB of documents from an authority; base64 in XML adds a third.
_MAX_REQUEST_BYTES = 140 * 1024 * 1024


def error_body(error: Dp2Error, violations: Iterable[Any] = ()) -> dict[str, Any]:
    """The JSON every DP2 connector answers an error with: code, what, how to fix."""
    body: dict[str, Any] = {
        "reasonCode": error.reason_code,
        "message": error.message,
        "hint": error.hint,
    }
    listed = [v.as_dict() for v in violations]
    if listed:
        body["violations"] = listed
    return body


def error_response(status: int, error: Dp2Error, violations: Iterable[Any] = ()) -> web.Response:
    return web.json_response(error_body(error, violations), status=status)

"""The composition root: which factory makes which service, and how one is run.

Why a registry: every built-in service has the shape of a connector (name, start,
stop, health, workers, optional routes — brokers.runtime.host.Service) and a
factory ``create(ctx)`` in its own package. This table is the one place that names
them; ``dp2 run KIND``, ``dp2 up`` (through brokers.stack.supervisor) and the
tests build services through :func:`build_service`. Connectors are found through
their entry points instead (connectors.base).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from datetime import datetime

from prometheus_client import CollectorRegistry

from brokers.router import service as router_service
from brokers.runtime import telemetry
from brokers.runtime.host import Service, ServiceContext, ServiceHost
from brokers.runtime.metrics import ServiceMetrics
from brokers.runtime.settings import Settings
from brokers.stack import capture
from brokers.stack.access import service_identity
from brokers.validator import service as validator_service
from connectors import mailbox
from connectors.base import build_connector_service
from connectors.notify import service as notifier_service
from schemas.errors import ConfigError, Dp2Error
from tracing import service as tracing_service

ServiceFactory = Callable[[ServiceContext], Service]

#: Every built-in service, by the name ``dp2 run`` knows it under.
SERVICES: dict[str, ServiceFactory] = {
    "tracing": tracing_service.create,
    "validator": validator_service.create,
    "router": router_service.create,
    "mailbox": mailbox.create,
    "notifier": notifier_service.create,
    "capture": capture.create,  # the embedded default's local SMTP and SMS, no Kafka
}
#: Services that never talk to Kafka, so they have no principal of their own.
_WITHOUT_KAFKA = frozenset({"capture"})
#: What ``dp2 run`` accepts: the built-in services and any installed connector.
SERVICE_KINDS = (*SERVICES, "connector")


async def build_service(
    kind: str,
    settings: Settings,
    *,
    port: int = 0,
    provider: str | None = None,
    connector: str | None = None,
    group_suffix: str = "",
    clock: Callable[[], datetime] | None = None,
) -> ServiceHost:
    """One service, wired from settings; the caller starts and stops it."""
    if kind == "connector":
        if not connector:
            raise ConfigError(
                "a connector service needs --name",
                hint="Run: dp2 run connector --name NAME (see dp2 connectors list).",
            )
        return await build_connector_service(
            connector, settings, port=port, group_suffix=group_suffix
        )  # it connects as connector_identity (connectors.base)
    factory = SERVICES.get(kind)
    if factory is None:
        raise Dp2Error(
            f"no service called {kind!r}",
            reason_code="UNKNOWN_SERVICE",
            hint=f"Choose one of {', '.join(SERVICE_KINDS)}.",
        )
    registry = CollectorRegistry()
    if not settings.kafka_identity and kind not in _WITHOUT_KAFKA:  # its own principal
        settings = settings.as_identity(service_identity(kind, provider))
    ctx = ServiceContext(
        kind,
        settings,
        registry,
        ServiceMetrics(registry),
        group_suffix=group_suffix,
        provider=provider,
        clock=clock,
    )
    return ServiceHost.serve(factory(ctx), registry, port=port, host=settings.bind_host)


async def run_service(
    kind: str, settings: Settings, port: int, provider: str | None, connector: str | None = None
) -> None:
    """Run one service until SIGTERM/SIGINT (``dp2 run``); its spans go to the OTLP
    endpoint of OTEL_EXPORTER_OTLP_ENDPOINT when that is set (brokers.runtime.telemetry)."""
    telemetry.configure(connector or (f"mailbox-{provider}" if provider else kind))
    host = await build_service(kind, settings, port=port, provider=provider, connector=connector)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with host:
        await stop.wait()

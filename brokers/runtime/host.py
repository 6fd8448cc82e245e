"""The process around a service: its workers, its HTTP endpoints, /healthz and /metrics.

Why: every DP2 service and every connector runs the same way — ``dp2 run`` makes
one host per process, tests run several in one event loop — so operators get the
same /healthz (ok, degraded or failing) and /metrics from each.

A built-in service has the shape of a connector (connectors.base)::

    class Service(Protocol):
        name: str
        workers: Sequence[KafkaWorker]      # consumer-group loops the host runs
        async def start(self) -> None       # before the workers; safe twice
        async def stop(self) -> None        # after the workers; safe twice
        def health(self) -> Mapping[str, Any]
        def routes(self) -> Iterable[web.AbstractRouteDef]   # optional
        def app(self) -> web.Application    # optional: a service's own application

and is made by a factory ``create(context: ServiceContext) -> Service`` that
brokers.stack.registry names. :meth:`ServiceHost.serve` hosts one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
)

from brokers.runtime.metrics import ServiceMetrics
from brokers.runtime.private import private_dir
from brokers.runtime.records import Handler
from brokers.runtime.settings import Settings
from brokers.runtime.worker import KafkaWorker

log = structlog.get_logger("dp2.service")


@runtime_checkable
class Service(Protocol):
    """What a built-in service (and, through connectors.base, a connector) is."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> Mapping[str, Any]: ...


@runtime_checkable
class HasRoutes(Protocol):
    def routes(self) -> Iterable[web.AbstractRouteDef]: ...


@dataclass(frozen=True, slots=True)
class ServiceContext:
    """What DP2 hands a service's factory: its name, settings, metrics and options."""

    name: str
    settings: Settings
    registry: CollectorRegistry
    metrics: ServiceMetrics
    config: Mapping[str, Any] = field(default_factory=dict)
    group_suffix: str = ""
    #: The mailbox provider a provider-bound service serves (``dp2 run mailbox --provider``).
    provider: str | None = None
    #: Tests freeze time through this; services default to the wall clock.
    clock: Callable[[], datetime] | None = None

    @property
    def data_dir(self) -> Path:
        """Where the service's stores live (created on first use, 0700)."""
        return private_dir(self.settings.home / "data")

    def worker(self, name: str, topics: list[str], handler: Handler, **kw: Any) -> KafkaWorker:
        """A worker in consumer group ``dp2.<name>`` (one group per role, shared by instances)."""
        return KafkaWorker(
            name,
            self.settings.kafka,
            topics,
            group_id=f"dp2.{name}{self.group_suffix}",
            handler=handler,
            metrics=self.metrics,
            **kw,
        )


class ServiceHost:
    """Runs a service's workers plus its HTTP endpoints (/healthz, /metrics, extras).

    One per process under ``dp2 run``; tests run several in one event loop.
    """

    def __init__(
        self,
        name: str,
        workers: Sequence[KafkaWorker],
        registry: CollectorRegistry,
        *,
        port: int = 0,
        app: web.Application | None = None,
        on_start: Sequence[Callable[[], Awaitable[None]]] = (),
        on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
        checks: Sequence[Callable[[], Mapping[str, Any]]] = (),
        host: str = "127.0.0.1",
    ) -> None:
        self.name = name
        self._host = host  # DP2_BIND_HOST: 0.0.0.0 in a container, for probes and scrapes
        self._checks = list(checks)
        self.workers = list(workers)
        self._registry = registry
        self._port = port
        self._app = app or web.Application()
        self._app.router.add_get("/healthz", self._healthz)
        self._app.router.add_get("/metrics", self._metrics)
        self._on_start = list(on_start)
        self._on_stop = list(on_stop)
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    @classmethod
    def serve(
        cls,
        service: Service,
        registry: CollectorRegistry,
        *,
        port: int = 0,
        workers: Sequence[KafkaWorker] = (),
        app: web.Application | None = None,
        on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
        host: str = "127.0.0.1",
    ) -> ServiceHost:
        """Host ``service``: its start/stop around its workers, its routes, its health;
        ``on_stop``: more to close after the service stopped."""
        if app is None:  # a service that builds its own application (tracing) offers app()
            make_app = getattr(service, "app", None)
            app = make_app() if callable(make_app) else web.Application()
        if isinstance(service, HasRoutes):
            app.add_routes(list(service.routes()))
        return cls(
            service.name,
            [*getattr(service, "workers", ()), *workers],
            registry,
            port=port,
            app=app,
            on_start=[service.start],
            on_stop=[service.stop, *on_stop],
            checks=[service.health],
            host=host,
        )

    async def start(self) -> None:
        if self._runner is not None:
            return
        for hook in self._on_start:
            await hook()
        for worker in self.workers:
            await worker.start()
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = self._runner.addresses[0][1]  # the real port when 0 asked for any
        local = "127.0.0.1" if self._host in {"0.0.0.0", "::"} else self._host  # noqa: S104
        self.url = f"http://{local}:{port}"
        log.info("service_started", service=self.name, url=self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        for worker in self.workers:
            await worker.stop()
        for hook in self._on_stop:
            await hook()

    async def __aenter__(self) -> ServiceHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def health(self) -> dict[str, Any]:
        """ok, degraded (working, but something waits: still HTTP 200) or failing (503)."""
        workers = [w.health() for w in self.workers]
        checks = [dict(check()) for check in self._checks]
        states = {c.get("status", "ok") for c in checks}
        if not all(w["running"] for w in workers) or "failing" in states:
            status = "failing"
        elif "degraded" in states or any(w.get("degraded") for w in workers):
            status = "degraded"  # working, but retrying: still HTTP 200
        else:
            status = "ok"
        report: dict[str, Any] = {"service": self.name, "status": status, "workers": workers}
        if checks:
            report["checks"] = checks
        return report

    async def _healthz(self, _: web.Request) -> web.Response:
        report = self.health()
        return web.json_response(report, status=503 if report["status"] == "failing" else 200)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

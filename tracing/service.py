"""The tracing service: every message's timeline, its HTTP API and the operators' dashboard.

Why one service: the trace is a projection of ``dp2.lifecycle`` (and the parked
records of ``dp2.deadletter``), and the API and dashboard read that projection, so
they live in the process that keeps it. brokers.stack.registry names
:func:`create` as the factory of ``dp2 run tracing``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiokafka import ConsumerRecord

from brokers.runtime.host import ServiceContext
from brokers.runtime.kafka import new_producer
from brokers.runtime.records import Output
from brokers.runtime.tasks import AsyncResource
from schemas import codec
from schemas.models import LifecycleEvent
from schemas.vocabulary import DEADLETTER_TOPIC, LIFECYCLE_TOPIC
from tracing.access import Users
from tracing.api import TraceService, make_app
from tracing.dashboard import Dashboard
from tracing.deadletters import DeadLetterStore
from tracing.store import SqliteTraceStore


class TracingService(AsyncResource):
    """Ingests lifecycle events and dead letters; serves the trace API and dashboard."""

    name = "tracing"

    def __init__(self, ctx: ServiceContext) -> None:
        settings = ctx.settings
        self.store = SqliteTraceStore(ctx.data_dir / "trace.sqlite")
        self.trace = TraceService(self.store, ctx.registry)
        self.deadletters = DeadLetterStore(ctx.data_dir / "deadletters.sqlite")
        self._producer = new_producer(settings.kafka)  # re-drives dead letters
        self._users = Users(settings.home)
        self._dashboard = Dashboard(
            self.store,
            self.deadletters,
            self._users,
            run_dir=settings.home / "run",
            producer=self._producer,
        )
        self.workers = [
            ctx.worker("tracing", [LIFECYCLE_TOPIC], self._ingest, producer=self._producer),
            ctx.worker(
                "tracing-deadletters", [DEADLETTER_TOPIC], self._park, producer=self._producer
            ),
        ]

    def app(self) -> web.Application:
        """The trace API with the dashboard's routes (the host adds /healthz, /metrics)."""
        app = make_app(self.trace, self._users)
        app.add_routes(self._dashboard.routes())
        return app

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()
        self.store.close()
        self.deadletters.close()

    def health(self) -> dict[str, Any]:
        return {"status": "ok"}

    async def _ingest(self, record: ConsumerRecord[bytes, bytes]) -> list[Output]:
        self.trace.ingest(codec.decode(record.value or b"", LifecycleEvent))
        return []

    async def _park(self, record: ConsumerRecord[bytes, bytes]) -> list[Output]:
        self.deadletters.park(record)
        return []


def create(ctx: ServiceContext) -> TracingService:
    return TracingService(ctx)

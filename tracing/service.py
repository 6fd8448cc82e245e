"""The tracing service: every message's timeline, its HTTP API and the operators' dashboard.

Why one service: the trace is a projection of ``dp2.lifecycle`` (and the parked
records of ``dp2.deadletter``), and the API and dashboard read that projection, so
they live in the process that keeps it. Only events the authority table accepts
(brokers.security.authority) enter the trace; the others are quarantined
(tracing.quarantine) with their reason. brokers.stack.registry names
:func:`create` as the factory of ``dp2 run tracing``.

With DP2_DATABASE_URL every store of the service is in PostgreSQL: the trace store
(tracing.store_postgres), the evidence log (tracing.evidence_log), the dead letters,
the quarantine and the route book, so several instances of tracing, each given some
partitions, together keep one trace, one verifiable log with gap-free indices, one
quarantine and one dead-letter list, and every instance answers every query and
hands out every receipt. Unset, each is a SQLite file under ``$DP2_HOME/data``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import structlog
from aiohttp import web
from aiokafka import ConsumerRecord
from prometheus_client import Counter

from brokers.runtime.host import ServiceContext
from brokers.runtime.kafka import new_producer
from brokers.runtime.records import Output, source_of
from brokers.runtime.tasks import AsyncResource, PeriodicTask
from brokers.security.authority import EventJudge, open_route_book, report_refusal
from brokers.security.pki import Pki
from brokers.security.signing import SecurityError
from brokers.security.trust import TrustStore, principal_name
from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import LifecycleEvent
from schemas.vocabulary import DEADLETTER_TOPIC, LIFECYCLE_TOPIC
from tracing.access import Users
from tracing.api import TraceService, make_app
from tracing.dashboard import Dashboard
from tracing.deadletters import open_deadletters
from tracing.evidence_log import open_evidence_log
from tracing.quarantine import open_quarantine
from tracing.store import SqliteTraceStore, TraceStore
from tracing.store_postgres import PgTraceStore

log = structlog.get_logger("dp2.tracing")
#: How often a new tree head is signed over what was logged since the last one.
TREE_HEAD_INTERVAL_S = 5.0


class TracingService(AsyncResource):
    """Ingests lifecycle events and dead letters; serves the trace API and dashboard."""

    name = "tracing"

    def __init__(self, ctx: ServiceContext) -> None:
        settings = ctx.settings
        # DP2_DATABASE_URL: the trace in PostgreSQL, shared by every tracing instance.
        self.store: TraceStore = (
            PgTraceStore(settings.database_url)
            if settings.database_url
            else SqliteTraceStore(ctx.data_dir / "trace.sqlite")
        )
        self.trace = TraceService(self.store, ctx.registry)
        self.deadletters = open_deadletters(settings, ctx.data_dir / "deadletters.sqlite")
        self.quarantine = open_quarantine(settings, ctx.data_dir / "quarantine.sqlite")
        self.evidence = open_evidence_log(settings, ctx.data_dir / "evidence.sqlite")
        # The log signs its tree heads as this service (its Kafka identity).
        self._identity = (
            Pki(settings.pki_dir).identity(settings.kafka_identity)
            if settings.kafka_identity
            else None
        )
        if self._identity is not None:
            self.evidence.keep_certificate(self._identity.certificate)
        self.tree_heads = PeriodicTask(
            "tracing-tree-head", self._sign_head, TREE_HEAD_INTERVAL_S, metrics=ctx.metrics
        )
        self._routes = open_route_book(
            settings, ctx.data_dir / "tracing-routes.sqlite", book="tracing"
        )
        self._trust = TrustStore(settings.pki_dir)
        self._reloaded = False  # True inside a batch whose _batch re-read the CA and CRL
        self._judge = EventJudge(self._trust, self._routes)
        self._quarantined = Counter(
            "dp2_quarantined_events",
            "Lifecycle events refused by the authority table, by reason",
            ["reason"],
            registry=ctx.registry,
        )
        self._producer = new_producer(settings.kafka)  # re-drives dead letters
        self._users = Users.of(settings)
        self._dashboard = Dashboard(
            self.store,
            self.deadletters,
            self._users,
            run_dir=settings.home / "run",
            producer=self._producer,
            quarantine=self.quarantine,
            signer_of=self._signer_of,
            receipt_of=self._receipt_of,
        )
        self.workers = [
            ctx.worker(
                "tracing",
                [LIFECYCLE_TOPIC],
                self._ingest,
                producer=self._producer,
                batch=self._batch,  # _ingest never suspends: see KafkaWorker
            ),
            ctx.worker(
                "tracing-deadletters", [DEADLETTER_TOPIC], self._park, producer=self._producer
            ),
        ]

    def app(self) -> web.Application:
        """The trace API with the dashboard's routes (the host adds /healthz, /metrics)."""
        app = make_app(self.trace, self._users, receipt_of=self._receipt_of)
        app.add_routes(self._dashboard.routes())
        return app

    def _signer_of(self, fingerprint: str) -> str:
        """The principal of a certificate fingerprint (the events were verified on ingest)."""
        try:
            return principal_name(self._trust.certificate(fingerprint))
        except Dp2Error:
            return "(unknown)"

    def _receipt_of(self, message_uuid: str) -> dict[str, Any] | None:
        if self._identity is None:
            return None
        return self.evidence.receipt(message_uuid, self._identity)

    async def _sign_head(self) -> None:
        if self._identity is not None:
            self.evidence.sign_head(self._identity)

    async def start(self) -> None:
        await self._producer.start()
        await self.tree_heads.start()

    async def stop(self) -> None:
        await self.tree_heads.stop()
        await self._producer.stop()
        self.evidence.close()
        self.store.close()
        self.deadletters.close()
        self.quarantine.close()
        self._routes.close()
        self._users.close()

    def health(self) -> dict[str, Any]:
        return {"status": "ok"}

    async def _ingest(self, record: ConsumerRecord[bytes, bytes]) -> list[Output]:
        event = codec.decode(record.value or b"", LifecycleEvent)
        verdict = self._judge.judge(event, reload=not self._reloaded)
        if verdict.ok:
            self.trace.ingest(event, record.value)
            if verdict.certificate is not None:
                # Logged once per event id: a record read again (a retried batch, a
                # partition moved to another instance) keeps its first index, and one
                # whose trace row was stored before a crash is logged now.
                self.evidence.append(event, record.value or b"", verdict.certificate)
        elif self.quarantine.add(event, verdict, source_of(record)):  # once per position
            report_refusal(log, self._quarantined, event, verdict, "event_quarantined")
        return []

    @contextlib.contextmanager
    def _batch(self) -> Iterator[None]:
        """One transaction per fetched batch in the trace store and in the evidence log;
        the CA and the CRL re-read once for the batch (a revocation counts from the next)."""
        try:
            self._trust.reload()
            self._reloaded = True
        except SecurityError:  # each event's judgement re-reads them, and says what failed
            self._reloaded = False
        try:
            with self.store.batch(), self.evidence.batch():
                yield
        finally:
            self._reloaded = False

    async def _park(self, record: ConsumerRecord[bytes, bytes]) -> list[Output]:
        self.deadletters.park(record)
        return []


def create(ctx: ServiceContext) -> TracingService:
    return TracingService(ctx)

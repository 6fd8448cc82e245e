"""The notifier as a service: DELIVERED in, SMS and e-mail out, NOTIFIED on the trace.

Wiring only (connectors.notify.notifier holds the rules, connectors.notify.outbox
the outbox): the contact register, the SMTP sender and SMS providers from settings,
a worker on ``dp2.lifecycle`` and the periodic dispatch of due notifications. With
DP2_DATABASE_URL the outbox and the route book are in PostgreSQL, so several
notifier instances share them and each notification is still sent once.
brokers.stack.registry names :func:`create` as the factory of ``dp2 run notifier``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp
import structlog
from aiokafka import ConsumerRecord
from prometheus_client import Counter

from brokers.contacts.register import ContactRegister
from brokers.runtime.host import ServiceContext
from brokers.runtime.kafka import new_producer
from brokers.runtime.records import Output
from brokers.runtime.tasks import AsyncResource, PeriodicTask
from brokers.security.authority import EventJudge, open_route_book, report_refusal
from brokers.security.trust import TrustStore
from connectors.notify.channels import EmailSender, HttpSmsProvider, SmsProvider, SmsRouter
from connectors.notify.notifier import Notifier, NotifierConfig, NotifierMetrics
from connectors.notify.outbox import open_outbox
from schemas import codec
from schemas.models import LifecycleEvent, LifecycleState
from schemas.vocabulary import CONTACTS_TOPIC, LIFECYCLE_TOPIC

log = structlog.get_logger("dp2.notifier")


class NotifierService(AsyncResource):
    """Consumes DELIVERED, sends through SMTP and the SMS providers, exactly once."""

    name = "notifier"

    def __init__(self, ctx: ServiceContext) -> None:
        settings = ctx.settings
        self._settings = settings
        self._registry = ctx.registry
        # Notification channels are contact details, not directory entries.
        self._contacts = ContactRegister(settings.kafka, topic=CONTACTS_TOPIC)
        # DP2_DATABASE_URL: outbox and route book in PostgreSQL, shared by every instance.
        self._outbox = open_outbox(settings, ctx.data_dir / "notifier.sqlite")
        self._routes = open_route_book(
            settings, ctx.data_dir / "notifier-routes.sqlite", book="notifier"
        )
        self._judge = EventJudge(TrustStore(settings.pki_dir), self._routes)
        self._unbelieved = Counter(
            "dp2_notifier_unbelieved_events",
            "Lifecycle events the notifier did not act on: refused by the authority table",
            ["reason"],
            registry=ctx.registry,
        )
        self._producer = new_producer(settings.kafka)
        self._session: aiohttp.ClientSession | None = None
        self._notifier: Notifier | None = None
        self._config = NotifierConfig(
            digest_window_s=float(settings.digest_window_s),
            quiet_hours=settings.quiet_hours,
            concurrency=settings.notify_concurrency,
        )
        self._email = (
            EmailSender(
                settings.smtp_host,
                settings.smtp_port,
                starttls=settings.smtp_starttls,
                username=settings.smtp_username,
                password=settings.smtp_password,
                connections=max(1, settings.notify_concurrency),
            )
            if settings.smtp_host
            else None
        )
        self.dispatch = PeriodicTask(
            "notifier-dispatch", self._dispatch_due, self._config.poll_s, metrics=ctx.metrics
        )
        self.workers = [
            ctx.worker(
                "notifier",
                [LIFECYCLE_TOPIC],
                self._handle,
                producer=self._producer,
                wants=_acted_on,
            )
        ]

    async def start(self) -> None:
        if self._notifier is not None:
            return
        await self._contacts.start()
        await self._producer.start()
        sms = None
        if self._settings.sms_providers:
            # The HTTP session belongs to the running event loop, so it is made here.
            self._session = aiohttp.ClientSession()
            providers: list[SmsProvider] = [
                HttpSmsProvider(name, url, self._session)
                for name, url in self._settings.sms_providers
            ]
            rate = self._settings.sms_rate_per_s
            sms = SmsRouter(providers, rate_per_s=rate, burst=rate, registry=self._registry)
        self._notifier = Notifier(
            outbox=self._outbox,
            contacts=self._contacts,
            email=self._email,
            sms=sms,
            metrics=NotifierMetrics(self._registry),
            config=self._config,
            wake=self.dispatch.wake,
        )
        await self.dispatch.start()

    async def stop(self) -> None:
        await self.dispatch.stop()
        if self._notifier is not None:
            try:
                await self._notifier.stop(self._producer)
            except Exception as exc:  # Kafka gone: announced by the next start instead
                log.warning("notifier_stop_unannounced", error=repr(exc))
        if self._email is not None:
            await self._email.close()
        await self._producer.stop()
        await self._contacts.stop()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        self._outbox.close()
        self._routes.close()

    def health(self) -> dict[str, Any]:
        dispatch = self.dispatch.health()
        return {"status": dispatch["status"], "tasks": [dispatch]}

    def _require(self) -> Notifier:
        if self._notifier is None:
            raise RuntimeError("the notifier service is not started")
        return self._notifier

    async def _handle(self, record: ConsumerRecord[bytes, bytes]) -> Sequence[Output]:
        """Only a DELIVERED the authority table believes is notified (and only the
        router's ROUTED says which provider may assert it)."""
        event = codec.decode(record.value or b"", LifecycleEvent)
        if event.state not in (LifecycleState.ROUTED, LifecycleState.DELIVERED):
            return []
        verdict = self._judge.judge(event)
        if not verdict.ok:
            report_refusal(log, self._unbelieved, event, verdict, "event_not_believed")
            return []
        if event.state is LifecycleState.ROUTED:
            return []
        return await self._require().handle(record)

    async def _dispatch_due(self) -> None:
        await self._require().dispatch_due(self._producer)


#: The states the notifier acts on; a letter's other events (most of dp2.lifecycle)
#: are skipped by a peek at their state, without decoding or judging them.
_ACTED_ON = frozenset({LifecycleState.ROUTED.value, LifecycleState.DELIVERED.value})


def _acted_on(record: ConsumerRecord[bytes, bytes]) -> bool:
    state = codec.peek_enum(record.value or b"", LifecycleEvent, "state")
    return state is None or state in _ACTED_ON  # None: decode it, and say what is wrong


def create(ctx: ServiceContext) -> NotifierService:
    return NotifierService(ctx)

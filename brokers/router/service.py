"""Router: decides where an accepted message goes — digital, print, or later.

Why a separate service: routing depends on the contact register and on time
(``doNotDeliverUntilDate``), not on the message's validity; keeping it apart from
the validator lets each scale and fail on its own.

* REGISTERED recipient → ``dp2.deliver.<provider>`` and ROUTED (channel digital);
* EXEMPT or UNKNOWN recipient, or none in the register → ``dp2.print`` and ROUTED
  (channel print);
* an envelope sealed for the print provider → ``dp2.print`` even for a REGISTERED
  recipient: the sender chose paper (SF1601's Fysisk Post; the key id is signed);
* ``doNotDeliverUntilDate`` in the future → held in a durable schedule
  (brokers.router.schedule: SQLite, or PostgreSQL with DP2_DATABASE_URL; and the
  envelope on ``dp2.scheduled``) with SCHEDULED; released on the date (ROUTED then
  follows) unless its sender recalls it first (RECALLED; it is never delivered).
  Releases and recalls are claimed in the schedule, so several router instances
  release each letter once, and never one that was recalled.

The envelope must be encrypted for the provider it is routed to; one encrypted for
another provider (the register changed after the sender looked) is FAILED with
``ENCRYPTED_FOR_OTHER_PROVIDER`` so the sender re-sends, never misdelivered; so a
letter sealed for a mailbox can never fall back to paper on its own.
"""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord

from brokers.contacts.register import ContactRegister
from brokers.router.rules import Router
from brokers.router.schedule import open_schedule
from brokers.runtime.host import ServiceContext
from brokers.runtime.kafka import ensure_topics, new_producer, sign_round
from brokers.runtime.records import Output, lifecycle_first
from brokers.runtime.tasks import AsyncResource, PeriodicTask
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from brokers.security.trust import TrustStore
from schemas.vocabulary import (
    ACCEPTED_TOPIC,
    COMMANDS_TOPIC,
    SCHEDULED_TOPIC,
    is_delivery_topic,
    provider_of,
    provider_topic,
)


class RouterService(AsyncResource):
    """The router as a service: accepted letters and recall commands in, routes out,
    and a periodic release of scheduled letters whose date has come."""

    name = "router"

    def __init__(self, ctx: ServiceContext, *, release_interval_s: float = 1.0) -> None:
        settings = ctx.settings
        self._kafka = settings.kafka
        self._contacts = ContactRegister(self._kafka)
        # DP2_DATABASE_URL: the schedule in PostgreSQL, shared by every router instance.
        self._schedule = open_schedule(settings, ctx.data_dir / "router.sqlite")
        self.router = Router(
            contacts=self._contacts,
            trust=TrustStore(settings.pki_dir),
            pseudonyms=Pseudonymizer(pseudonym_key(settings.home)),
            schedule=self._schedule,
            **({"clock": ctx.clock} if ctx.clock else {}),
        )
        self._producer = new_producer(self._kafka)
        self._created_topics: set[str] = set()
        self.release = PeriodicTask(
            "router-release", self._release_due, release_interval_s, metrics=ctx.metrics
        )
        self.workers = [
            ctx.worker("router", [ACCEPTED_TOPIC], self._route, producer=self._producer),
            ctx.worker("router-schedule", [SCHEDULED_TOPIC], self.router.restore),
            ctx.worker(
                "router-commands",
                [COMMANDS_TOPIC],
                self.router.handle_command,
                producer=self._producer,
            ),
        ]

    async def start(self) -> None:
        await self._contacts.start()
        await self._producer.start()
        await self.release.start()

    async def stop(self) -> None:
        await self.release.stop()
        await self._producer.stop()
        await self._contacts.stop()
        self._schedule.close()

    def health(self) -> dict[str, Any]:
        release = self.release.health()
        return {"status": release["status"], "tasks": [release]}

    async def _route(self, record: ConsumerRecord[bytes, bytes]) -> list[Output]:
        outputs = list(await self.router.handle(record))
        await self._ensure_provider_topics(outputs)
        return outputs

    async def _release_due(self) -> None:
        """Send every held letter whose doNotDeliverUntilDate has come."""
        outputs = self.router.release_due()
        if not outputs:
            return
        await self._ensure_provider_topics(outputs)
        # ROUTED before the letter moves on, as in the worker (KafkaWorker._produce).
        for batch in lifecycle_first(outputs):
            signed = sign_round(self._producer, batch)
            futures = [await self._producer.send(o.topic, o.value, key=o.key) for o in signed]
            for future in futures:
                await future

    async def _ensure_provider_topics(self, outputs: list[Output]) -> None:
        """Create a provider's delivery topic the first time the router sends to it."""
        missing = {o.topic for o in outputs if is_delivery_topic(o.topic)} - self._created_topics
        if missing:
            await ensure_topics(self._kafka, [provider_topic(provider_of(t)) for t in missing])
            self._created_topics.update(missing)


def create(ctx: ServiceContext) -> RouterService:
    return RouterService(ctx)

"""The notifier: one SMS or e-mail per delivered letter (or per digest), exactly once.

Why it is built this way:

* **Input** is DELIVERED on ``dp2.lifecycle``; the mailbox puts what a notification
  may say in the event's attributes (sender label, the label only when the sender
  marked it non-sensitive, the NemSMS text). Channels, addresses and language come
  from the contact register. Never document content, never a CPR number.
* **Exactly-once effect.** Every (message UUID, channel) is a row in a durable
  outbox (connectors.notify.outbox: SQLite, or PostgreSQL with DP2_DATABASE_URL,
  shared by every notifier instance), inserted once however often DELIVERED
  arrives. Before a send the row is *claimed* — moved to ``sending`` with this
  notifier as its owner and a lease, in one statement, so of two notifiers only
  one sends it — after the send the NOTIFIED event is acknowledged by Kafka, and
  only then is the row ``sent``. A crash in between leaves ``sending``: once the
  lease runs out (``lease_s``) a notifier sends again *with the same idempotency
  key* (HTTP ``Idempotency-Key``/reference for SMS providers, the same
  ``Message-ID`` for e-mail), which providers and mailboxes use to drop the repeat.
* **Digest.** A row waits ``digest_window_s`` (default 5 minutes); when the first
  row of a recipient and channel falls due, every pending row of that pair goes
  out as one notification that names the count. A window of 0 turns it off.
* **Quiet hours** (SMS, off by default): a due SMS is held until they end.
* **Retries.** Temporary and technical failures back off exponentially with jitter
  (capped), until ``max_retry_s`` (24 h) has passed since the first failure; then
  NOTIFICATION_FAILED. Permanent failures (invalid number or address) fail at once.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from aiokafka import AIOKafkaProducer, ConsumerRecord
from prometheus_client import CollectorRegistry, Counter, Gauge

from brokers.contacts.register import ContactRegister
from brokers.runtime.kafka import sign_round
from brokers.runtime.records import Output, lifecycle_output
from brokers.runtime.tasks import cancel_and_wait
from connectors.notify import templates
from connectors.notify.channels import EmailSender, NotificationError, SmsRouter
from connectors.notify.outbox import Handed, NotificationOutbox, Row
from schemas import codec
from schemas.models import LifecycleEvent, LifecycleState, NotificationChannel

log = structlog.get_logger("dp2.notify")

#: How much of a notification's words NOTIFIED carries for the dashboard.
MAX_SHOWN_TEXT = 200
#: Due notifications fetched per send slot at a time: enough to refill the slots
#: between polls, few enough that a fetch stays cheap with a large backlog.
QUEUED_PER_SLOT = 4


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    digest_window_s: float = 300.0
    quiet_hours: tuple[int, int] | None = None  # (start hour, end hour), local clock
    max_retry_s: float = 24 * 3600.0
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 3600.0
    poll_s: float = 0.2
    # Notifications in flight at once (DP2_NOTIFY_CONCURRENCY). Each waits on an SMTP
    # or SMS round trip, so one at a time leaves the notifier mostly idle (about 30/s
    # in `dp2 bench`); more overlap the waits. A notifier killed mid-send repeats only
    # the sends that the channel had taken but whose ``handed`` was not yet committed
    # (connectors.notify.outbox) — the moment between the server's yes and one local
    # commit — so more in flight costs next to nothing in repeats (SMS providers drop
    # them by idempotency key; e-mail has its Message-ID).
    concurrency: int = 16
    # How long a claim of outbox rows holds without being renewed (connectors.notify.
    # outbox). The owner renews it every third of it while it sends; only a notifier
    # that died stops renewing, and its rows are sent by another after this long.
    lease_s: float = 30.0


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sent = Counter(
            "dp2_notifications_sent",
            "Notifications sent",
            ["channel", "provider"],
            registry=registry,
        )
        self.failed = Counter(
            "dp2_notifications_failed",
            "Notifications given up",
            ["channel", "reason"],
            registry=registry,
        )
        self.retry_backlog = Gauge(
            "dp2_notify_retry_backlog", "Notifications waiting for a retry", registry=registry
        )
        self.in_flight = Gauge(
            "dp2_notify_in_flight", "Notifications being sent right now", registry=registry
        )


def _group_key(rows: Sequence[Row]) -> str:
    """One idempotency key per notification: the same rows give the same key."""
    return hashlib.sha256("\n".join(r.key for r in rows).encode()).hexdigest()[:32]


class Notifier:
    """Turns DELIVERED into outbox rows, and due rows into sends and lifecycle events."""

    actor = "notifier"

    def __init__(
        self,
        *,
        outbox: NotificationOutbox,
        contacts: ContactRegister,
        email: EmailSender | None,
        sms: SmsRouter | None,
        metrics: NotifierMetrics,
        config: NotifierConfig = NotifierConfig(),
        clock: Callable[[], float] = time.time,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._outbox = outbox
        self._contacts = contacts
        self._email = email
        self._sms = sms
        self._metrics = metrics
        self._config = config
        self._clock = clock
        #: The sends in flight and the outbox keys each one claims.
        self._in_flight: dict[asyncio.Task[bool], frozenset[str]] = {}
        self._in_flight_keys: frozenset[str] = frozenset()
        self._renewing: asyncio.Task[None] | None = None
        #: Due notifications fetched and not started yet, longest due first.
        self._queue: deque[list[Row]] = deque()
        #: Runs dispatch_due again at once (the service's PeriodicTask.wake).
        self._wake = wake

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> Sequence[Output]:
        """Record the notifications a DELIVERED event calls for (idempotent)."""
        event = codec.decode(record.value or b"", LifecycleEvent)
        if event.state is not LifecycleState.DELIVERED or not event.recipientRef:
            return []
        contact = self._contacts.get(event.recipientRef)
        if contact is None:
            return []
        nemsms = event.attributes.get("nemSmsText")
        now = self._clock()
        outputs: list[Output] = []
        channels = [
            c
            for c in contact.channels
            if c.channel in (NotificationChannel.EMAIL, NotificationChannel.SMS)
        ]
        if nemsms is not None:
            channels = [c for c in channels if c.channel is NotificationChannel.SMS][:1]
            if not channels:
                return [
                    self._failed_output(
                        event.messageUUID,
                        "SMS",
                        "NO_SMS_NUMBER",
                        "a NemSMS needs an SMS number in the contact register",
                        kind="permanent",
                    )
                ]
        for channel in channels:
            recorded = self._outbox.add(
                Row(
                    key=f"{event.messageUUID}|{channel.channel.value}",
                    message_uuid=event.messageUUID,
                    recipient_ref=event.recipientRef,
                    channel=channel.channel.value,
                    address=channel.address,
                    language=contact.language,
                    sender_label=event.attributes.get("senderLabel"),
                    label=event.attributes.get("label"),
                    nemsms_text=nemsms,
                    state="pending",
                    attempts=0,
                    next_at=now if nemsms is not None else now + self._config.digest_window_s,
                    first_failure_at=None,
                )
            )
            log.info("notification_recorded", channel=channel.channel.value, new=recorded)
        return outputs

    async def dispatch_due(self, producer: AIOKafkaProducer) -> int:
        """Announce what the channels took since the last call, then start sending due
        notifications until ``concurrency`` are in flight; returns how many it started.

        Called every ``poll_s`` (and at once when its queue of due notifications ran
        dry while a slot is free) and never waits for a send: each send that ends hands
        its slot to the next due notification (``_sent``), so a slow one (an SMS held
        by its provider's rate) holds up no other. What the sends handed over is
        announced in one produce per call."""
        # Sent before a crash (or a failed produce) or since the last call: announce.
        await self._announce(producer, self._outbox.unannounced(self._clock()))
        if not self._queue:
            digest = self._config.digest_window_s > 0  # 0 turns the digest off
            limit = QUEUED_PER_SLOT * max(1, self._config.concurrency)
            self._queue.extend(self._outbox.due_groups(self._clock(), digest=digest, limit=limit))
        started = self._fill(producer)
        if self._in_flight and (self._renewing is None or self._renewing.done()):
            self._renewing = asyncio.create_task(self._renew_claims(), name="notify:renew")
        self._metrics.retry_backlog.set(self._outbox.retry_backlog())
        return started

    def _fill(self, producer: AIOKafkaProducer) -> int:
        """Start queued notifications while a slot is free; how many it started."""
        started = 0
        while self._queue and len(self._in_flight) < max(1, self._config.concurrency):
            rows = self._queue.popleft()
            keys = frozenset(r.key for r in rows)
            if keys & self._in_flight_keys:
                continue  # fetched before its send began: that send has it
            task = asyncio.create_task(self._dispatch_group(producer, rows), name="notify:send")
            self._in_flight[task] = keys
            self._in_flight_keys |= keys
            task.add_done_callback(functools.partial(self._sent, producer))
            started += 1
        self._metrics.in_flight.set(len(self._in_flight))
        return started

    def _sent(self, producer: AIOKafkaProducer, task: asyncio.Task[bool]) -> None:
        """A send ended: give back the rows of one that failed, and take the next."""
        keys = self._in_flight.pop(task, frozenset())
        self._in_flight_keys -= keys
        if not task.cancelled() and task.exception() is not None:
            log.error("dispatch_failed", error=repr(task.exception()))
            try:  # due again at once (one the channel took is 'handed': never resent)
                now = self._clock()
                self._outbox.defer(sorted(keys), now, now)
            except Exception as exc:  # the store too: the claim's lease frees them
                log.error("dispatch_give_back_failed", error=repr(exc))
        if task.cancelled():
            return  # stopping: nothing new is started
        if self._queue:
            self._fill(producer)
        else:
            self._metrics.in_flight.set(len(self._in_flight))
            if self._wake is not None:
                self._wake()  # fetch the next due notifications now, not at the next poll

    async def stop(self, producer: AIOKafkaProducer, timeout_s: float = 10.0) -> None:
        """Let the sends in flight finish (for up to ``timeout_s``) and announce them.
        One cut short stays claimed and is sent again, with its idempotency key, after
        a restart (or by another notifier once the lease is over)."""
        self._queue.clear()
        tasks = list(self._in_flight)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await cancel_and_wait(self._renewing)
        self._renewing = None
        await self._announce(producer, self._outbox.unannounced(self._clock()))

    async def _renew_claims(self) -> None:
        """While sends are in flight, keep this notifier's claims from running out."""
        while self._in_flight:
            await asyncio.sleep(self._config.lease_s / 3)
            self._outbox.renew(self._clock() + self._config.lease_s)

    async def _dispatch_group(self, producer: AIOKafkaProducer, rows: list[Row]) -> bool:
        """Send one notification (one row, or a digest of several); True when sent.

        Only the rows this notifier claims are sent: another notifier sharing the
        outbox may have claimed some or all of them (connectors.notify.outbox)."""
        now = self._clock()
        keys = [r.key for r in rows]
        held_until = self._quiet_until(rows[0].channel)
        if held_until is not None:
            self._outbox.defer(keys, now, held_until)
            return False
        claimed = set(self._outbox.claim(keys, now, now + self._config.lease_s))
        rows = [r for r in rows if r.key in claimed]
        if not rows:
            return False
        keys = [r.key for r in rows]
        try:
            provider, shown = await self._send(rows)
        except NotificationError as exc:
            await self._failure(producer, rows, exc)
            return False
        # Taken by the channel: never sent again, only announced (connectors.notify.outbox)
        # by the next dispatch_due, with every other row handed since: one produce.
        self._outbox.settle(keys, "handed", provider=provider, shown=shown, digest_size=len(rows))
        self._metrics.sent.labels(rows[0].channel, provider).inc()
        log.info(
            "notification_sent", channel=rows[0].channel, provider=provider, messages=len(rows)
        )
        return True

    async def _announce(self, producer: AIOKafkaProducer, handed: Sequence[Handed]) -> None:
        """NOTIFIED for rows the channel took, then they are ``sent``."""
        if not handed:
            return
        outputs = [
            lifecycle_output(
                h.message_uuid,
                LifecycleState.NOTIFIED,
                self.actor,
                channel=h.channel,
                recipient_ref=h.recipient_ref,
                attributes={
                    "provider": h.provider,
                    "digestSize": str(h.digest_size),
                    "text": h.shown,
                },
                source=f"notified:{h.channel}",  # the same event id, however often announced
            )
            for h in handed
        ]
        await _produce(producer, outputs)
        self._outbox.announced([h.key for h in handed])

    async def _send(self, rows: Sequence[Row]) -> tuple[str, str]:
        """Send; returns the provider and the text the trace may show of what was sent:
        the template's words (sender label, a non-sensitive label), never a NemSMS's
        own text, which is the message itself."""
        first = rows[0]
        key = _group_key(rows)
        if first.channel == "SMS":
            if self._sms is None:
                raise NotificationError(
                    "no SMS provider is configured",
                    kind="permanent",
                    reason_code="SMS_NOT_CONFIGURED",
                )
            if first.nemsms_text is not None:
                text, shown = templates.nemsms(first.nemsms_text).text, "(the NemSMS text)"
            else:
                text = shown = self._render(rows).text
            return await self._sms.send(first.address, text, key), shown[:MAX_SHOWN_TEXT]
        if self._email is None:
            raise NotificationError(
                "no SMTP server is configured", kind="permanent", reason_code="EMAIL_NOT_CONFIGURED"
            )
        rendered = self._render(rows)
        await self._email.send(first.address, rendered.subject or "", rendered.text, key)
        return "smtp", (rendered.subject or rendered.text)[:MAX_SHOWN_TEXT]

    def _render(self, rows: Sequence[Row]) -> templates.Rendered:
        first = rows[0]
        single = len(rows) == 1
        return templates.render(
            first.channel,
            first.language,
            count=len(rows),
            sender_label=first.sender_label if single else None,
            label=first.label if single else None,
        )

    async def _failure(
        self, producer: AIOKafkaProducer, rows: Sequence[Row], error: NotificationError
    ) -> None:
        now = self._clock()
        keys = [r.key for r in rows]
        first_failure = rows[0].first_failure_at or now
        gave_up = error.kind == "permanent" or now - first_failure >= self._config.max_retry_s
        log.warning(
            "notification_failed",
            channel=rows[0].channel,
            kind=error.kind,
            reason_code=error.reason_code,
            final=gave_up,
            count=len(rows),
        )
        if not gave_up:
            delay = min(
                self._config.backoff_cap_s, self._config.backoff_base_s * 2 ** rows[0].attempts
            )
            delay *= random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not cryptography
            self._outbox.settle(
                keys,
                "pending",
                next_at=now + delay,
                first_failure_at=first_failure,
                reason_code=error.reason_code,
            )
            return
        outputs = [
            self._failed_output(
                r.message_uuid,
                r.channel,
                error.reason_code,
                error.message,
                kind=error.kind,
                recipient_ref=r.recipient_ref,
            )
            for r in rows
        ]
        await _produce(producer, outputs)
        self._outbox.settle(keys, "failed", reason_code=error.reason_code)
        self._metrics.failed.labels(rows[0].channel, error.reason_code).inc()

    def _failed_output(
        self,
        message_uuid: str,
        channel: str,
        code: str,
        text: str,
        *,
        kind: str,
        recipient_ref: str | None = None,
    ) -> Output:
        return lifecycle_output(
            message_uuid,
            LifecycleState.NOTIFICATION_FAILED,
            self.actor,
            reason_code=code,
            reason_text=f"{text} ({kind})",
            channel=channel,
            recipient_ref=recipient_ref,
            attributes={"kind": kind},
            source=f"notification-failed:{channel}",
        )

    def _quiet_until(self, channel: str) -> float | None:
        """When an SMS due now must wait for quiet hours to end, the time they end."""
        if channel != "SMS" or self._config.quiet_hours is None:
            return None
        ends = quiet_hours_end(
            datetime.fromtimestamp(self._clock()).astimezone(), self._config.quiet_hours
        )
        return None if ends is None else ends.timestamp()


def quiet_hours_end(now: datetime, hours: tuple[int, int]) -> datetime | None:
    """The end of the quiet period ``now`` falls in, or None outside it.

    ``(22, 7)`` is quiet from 22:00 to 07:00 the next morning; ``(1, 5)`` within a day.
    """
    start, end = hours
    hour = now.hour
    quiet = (start <= hour or hour < end) if start > end else (start <= hour < end)
    if not quiet:
        return None
    ends = now.replace(hour=end, minute=0, second=0, microsecond=0)
    return ends if ends > now else ends + timedelta(days=1)


async def _produce(producer: AIOKafkaProducer, outputs: Sequence[Output]) -> None:
    signed = sign_round(producer, outputs)  # the NOTIFIED events of a round: one signature
    futures = [await producer.send(o.topic, o.value, key=o.key) for o in signed]
    for future in futures:
        await future

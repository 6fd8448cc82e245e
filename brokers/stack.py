"""The whole stack on one machine: build each service, run it, supervise them all.

Why: ``make run`` / ``dp2 up`` must bring up Kafka and every DP2 service with one
command, each service in its own process (so one can be killed, restarted and
scaled like in production), each with ``/healthz`` and ``/metrics`` on a fixed
port. ``build_service`` is also what tests use to run services in-process.

| service | port | consumes | produces |
|---|---|---|---|
| tracing | 8470 | dp2.lifecycle | HTTP API, dashboard later |
| validator | 8471 | dp2.submitted | dp2.accepted, dp2.lifecycle, dp2.deadletter |
| router | 8472 | dp2.accepted | dp2.deliver.*, dp2.print, dp2.scheduled |
| mailbox-<id> | 8473+ | dp2.deliver.<id> | dp2.lifecycle (DELIVERED) |
| notifier | after the mailboxes | dp2.lifecycle (DELIVERED) | SMS, e-mail; NOTIFIED |
| connector-<name> | ``port`` or next | its delivery topic, its own | its work |

Connectors are whatever is installed in the ``dp2.connectors`` entry-point group
and configured in ``$DP2_HOME/connectors.toml`` (connectors.base); a receiving
connector is its provider's mailbox, so no reference mailbox runs for that provider.

Run files live in ``$DP2_HOME/run/<service>.json`` (pid, url); logs in
``$DP2_HOME/logs/<service>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from brokers.contacts import ContactRegister, pseudonym_key
from brokers.crypto import Pseudonymizer
from brokers.pki import TrustStore
from brokers.router import Router, ScheduleStore, release_loop
from brokers.service import KafkaWorker, Output, ServiceHost, ServiceMetrics, new_producer
from brokers.settings import Settings
from brokers.topics import TOPICS, ensure_topics, provider_topic
from brokers.validator import SubmissionLog, Validator
from connectors.base import build_connector_service
from connectors.delivery import DeliveryHandler
from connectors.mailbox import MailboxStore, notification_facts
from connectors.notify.channels import EmailSender, HttpSmsProvider, SmsRouter
from connectors.notify.service import (
    Notifier,
    NotifierConfig,
    NotifierMetrics,
    Outbox,
    dispatch_loop,
)
from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import LifecycleEvent
from tracing.access import Users
from tracing.api import TraceService, make_app
from tracing.dashboard import Dashboard
from tracing.deadletters import DeadLetterStore
from tracing.store import SqliteTraceStore

#: Offsets from DP2_PORT_BASE (default 8470); mailboxes follow the router.
PORT_OFFSETS = {"tracing": 0, "validator": 1, "router": 2}


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    port: int
    provider: str | None = None
    connector: str | None = None

    @property
    def argv(self) -> list[str]:
        kind, extra = self.name, []
        if self.provider:
            kind, extra = "mailbox", ["--provider", self.provider]
        elif self.connector:
            kind, extra = "connector", ["--name", self.connector]
        return [sys.executable, "-m", "brokers.cli", "run", kind, "--port", str(self.port), *extra]


def stack_services(
    providers: list[str],
    port_base: int,
    *,
    notifier: bool = False,
    connectors: Sequence[tuple[str, int | None]] = (),
) -> list[ServiceSpec]:
    """The services of ``dp2 up``: the core, a mailbox per provider, the notifier
    once SMTP or SMS is configured, then every configured connector (on its own
    ``port`` from connectors.toml, or the next free one)."""
    specs = [ServiceSpec(name, port_base + offset) for name, offset in PORT_OFFSETS.items()]
    specs += [ServiceSpec(f"mailbox-{p}", 0, provider=p) for p in providers]
    if notifier:
        specs.append(ServiceSpec("notifier", 0))
    specs += [ServiceSpec(f"connector-{n}", port or 0, connector=n) for n, port in connectors]
    taken = {s.port for s in specs}
    next_port = port_base + len(PORT_OFFSETS)
    numbered = []
    for spec in specs:
        if spec.port == 0:
            while next_port in taken:
                next_port += 1
            spec = dataclasses.replace(spec, port=next_port)  # noqa: PLW2901 - numbering
            taken.add(next_port)
        numbered.append(spec)
    return numbered


def _data_dir(settings: Settings) -> Path:
    path = settings.home / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    bootstrap = settings.kafka_bootstrap
    pki_root = settings.home / "pki"
    data = _data_dir(settings)

    def worker(name: str, topics: list[str], handler: Any, **kw: Any) -> KafkaWorker:
        return KafkaWorker(
            name,
            bootstrap,
            topics,
            group_id=f"dp2.{name}{group_suffix}",
            handler=handler,
            metrics=metrics,
            **kw,
        )

    if kind == "tracing":
        return _tracing(settings, registry, worker, port=port, data=data)
    if kind == "validator":
        submissions = SubmissionLog(data / "validator.sqlite")
        validator = Validator(TrustStore(pki_root), submissions)
        return ServiceHost(
            "validator",
            [worker("validator", ["dp2.submitted"], validator.handle)],
            registry,
            port=port,
            on_stop=[_async(submissions.close)],
        )
    if kind == "router":
        contacts = ContactRegister(bootstrap)
        schedule = ScheduleStore(data / "router.sqlite")
        router = Router(
            contacts=contacts,
            trust=TrustStore(pki_root),
            pseudonyms=Pseudonymizer(pseudonym_key(settings.home)),
            schedule=schedule,
            **({"clock": clock} if clock else {}),
        )
        producer = new_producer(bootstrap)
        tasks: list[asyncio.Task[None]] = []

        async def send(outputs: list[Output]) -> None:
            await _ensure_provider_topics(bootstrap, router, outputs)
            futures = [await producer.send(o.topic, o.value, key=o.key) for o in outputs]
            for future in futures:
                await future

        async def route(record: Any) -> list[Output]:
            outputs = list(await router.handle(record))
            await _ensure_provider_topics(bootstrap, router, outputs)
            return outputs

        async def start() -> None:
            await contacts.start()
            await producer.start()
            tasks.append(asyncio.create_task(release_loop(router, send)))

        async def stop() -> None:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await producer.stop()
            await contacts.stop()
            schedule.close()

        return ServiceHost(
            "router",
            [
                worker("router", ["dp2.accepted"], route, producer=producer),
                worker(
                    "router-commands", ["dp2.commands"], router.handle_command, producer=producer
                ),
            ],
            registry,
            port=port,
            on_start=[start],
            on_stop=[stop],
        )
    if kind == "mailbox":
        if not provider:
            raise Dp2Error(
                "a mailbox needs --provider",
                reason_code="BAD_CONFIG",
                hint="Run: dp2 run mailbox --provider ID",
            )
        return await _mailbox(provider, settings, registry, worker, port=port, data=data)
    if kind == "notifier":
        return _notifier(settings, registry, worker, port=port, data=data)
    if kind == "connector":
        if not connector:
            raise Dp2Error(
                "a connector service needs --name",
                reason_code="BAD_CONFIG",
                hint="Run: dp2 run connector --name NAME (see dp2 connectors list).",
            )
        return await build_connector_service(
            connector, settings, port=port, group_suffix=group_suffix
        )
    raise Dp2Error(
        f"no service called {kind!r}",
        reason_code="UNKNOWN_SERVICE",
        hint="Choose tracing, validator, router, mailbox, notifier or connector.",
    )


def _tracing(
    settings: Settings,
    registry: CollectorRegistry,
    worker: Callable[..., KafkaWorker],
    *,
    port: int,
    data: Path,
) -> ServiceHost:
    """The trace of every message, its HTTP API and the operators' dashboard."""
    store = SqliteTraceStore(data / "trace.sqlite")
    trace = TraceService(store, registry)
    deadletters = DeadLetterStore(data / "deadletters.sqlite")
    producer = new_producer(settings.kafka_bootstrap)  # re-drives dead letters
    dashboard = Dashboard(
        store, deadletters, Users(settings.home), run_dir=run_dir(settings), producer=producer
    )
    app = make_app(trace)
    app.add_routes(dashboard.routes())

    async def ingest(record: Any) -> list[Output]:
        trace.ingest(codec.decode(record.value or b"", LifecycleEvent))
        return []

    async def park(record: Any) -> list[Output]:
        deadletters.park(record)
        return []

    return ServiceHost(
        "tracing",
        [
            worker("tracing", ["dp2.lifecycle"], ingest, producer=producer),
            worker("tracing-deadletters", ["dp2.deadletter"], park, producer=producer),
        ],
        registry,
        port=port,
        app=app,
        on_start=[producer.start],
        on_stop=[producer.stop, _async(store.close), _async(deadletters.close)],
    )


async def _mailbox(
    provider: str,
    settings: Settings,
    registry: CollectorRegistry,
    worker: Callable[..., KafkaWorker],
    *,
    port: int,
    data: Path,
) -> ServiceHost:
    """The reference mailbox of ``provider``: connectors.delivery into a MailboxStore."""
    topic = provider_topic(provider).name
    await ensure_topics(settings.kafka_bootstrap, [provider_topic(provider)])
    mailbox_store = MailboxStore(data / f"mailbox-{provider}.sqlite")
    mailbox = DeliveryHandler.for_provider(
        settings, provider, mailbox_store, facts=lambda plain: notification_facts(plain, provider)
    )
    return ServiceHost(
        f"mailbox-{provider}",
        [worker(f"mailbox-{provider}", [topic], mailbox.handle)],
        registry,
        port=port,
        on_stop=[_async(mailbox_store.close)],
    )


def _notifier(
    settings: Settings,
    registry: CollectorRegistry,
    worker: Callable[..., KafkaWorker],
    *,
    port: int,
    data: Path,
) -> ServiceHost:
    """The notifier: consumes DELIVERED, sends through SMTP and the SMS providers."""
    contacts = ContactRegister(settings.kafka_bootstrap)
    outbox = Outbox(data / "notifier.sqlite")
    session: list[aiohttp.ClientSession] = []
    email = (
        EmailSender(
            settings.smtp_host,
            settings.smtp_port,
            starttls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=settings.smtp_password,
        )
        if settings.smtp_host
        else None
    )
    sms_holder: list[SmsRouter] = []
    notifier_holder: list[Notifier] = []
    producer = new_producer(settings.kafka_bootstrap)
    tasks: list[asyncio.Task[None]] = []
    config = NotifierConfig(
        digest_window_s=float(settings.digest_window_s),
        quiet_hours=settings.quiet_hours,
        concurrency=settings.notify_concurrency,
    )

    async def start() -> None:
        await contacts.start()
        await producer.start()
        if settings.sms_providers:
            session.append(aiohttp.ClientSession())
            sms_holder.append(
                SmsRouter(
                    [
                        HttpSmsProvider(name, url, session[0])
                        for name, url in settings.sms_providers
                    ],
                    registry=registry,
                )
            )
        notifier = Notifier(
            outbox=outbox,
            contacts=contacts,
            email=email,
            sms=sms_holder[0] if sms_holder else None,
            metrics=NotifierMetrics(registry),
            config=config,
        )
        notifier_holder.append(notifier)
        tasks.append(asyncio.create_task(dispatch_loop(notifier, producer, config.poll_s)))

    async def handle(record: Any) -> Sequence[Output]:
        return await notifier_holder[0].handle(record)

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await producer.stop()
        await contacts.stop()
        for open_session in session:
            await open_session.close()
        outbox.close()

    return ServiceHost(
        "notifier",
        [worker("notifier", ["dp2.lifecycle"], handle, producer=producer)],
        registry,
        port=port,
        on_start=[start],
        on_stop=[stop],
    )


def _async(function: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        function()

    return call


_created_topics: set[str] = set()


async def _ensure_provider_topics(bootstrap: str, router: Router, outputs: list[Output]) -> None:
    """Create a provider's delivery topic the first time the router sends to it."""
    missing = {o.topic for o in outputs if o.topic.startswith("dp2.deliver.")} - _created_topics
    if missing:
        specs = [provider_topic(t.removeprefix("dp2.deliver.")) for t in missing]
        await ensure_topics(bootstrap, specs)
        _created_topics.update(missing)


async def run_service(
    kind: str, settings: Settings, port: int, provider: str | None, connector: str | None = None
) -> None:
    """Run one service until SIGTERM/SIGINT (``dp2 run``)."""
    host = await build_service(kind, settings, port=port, provider=provider, connector=connector)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await host.start()
    try:
        await stop.wait()
    finally:
        await host.stop()


# --- supervising processes (dp2 up / down / status) ------------------------------------
def run_dir(settings: Settings) -> Path:
    path = settings.home / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_processes(
    settings: Settings, specs: list[ServiceSpec], say: Callable[[str], None]
) -> None:
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        info = read_run_file(settings, spec.name)
        if info and _alive(info["pid"]):
            say(f"{spec.name}: already running (pid {info['pid']})")
            continue
        with open(logs / f"{spec.name}.log", "ab") as log_file:
            process = subprocess.Popen(  # noqa: S603 - our own command line
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "DP2_LOG_FORMAT": "json"},
            )
        (run_dir(settings) / f"{spec.name}.json").write_text(
            json.dumps(
                {"name": spec.name, "pid": process.pid, "url": f"http://127.0.0.1:{spec.port}"}
            )
        )
        say(f"{spec.name}: started pid {process.pid} on http://127.0.0.1:{spec.port}")
    deadline = time.monotonic() + 60
    for spec in specs:
        while health(f"http://127.0.0.1:{spec.port}") != "up":
            if time.monotonic() > deadline:
                raise Dp2Error(
                    f"{spec.name} did not become healthy within 60 s",
                    reason_code="SERVICE_UNHEALTHY",
                    hint=f"Read {logs / (spec.name + '.log')}.",
                )
            time.sleep(0.3)


def read_run_file(settings: Settings, name: str) -> dict[str, Any] | None:
    path = run_dir(settings) / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def running_services(settings: Settings) -> list[dict[str, Any]]:
    result = []
    for path in sorted(run_dir(settings).glob("*.json")):
        info = read_run_file(settings, path.stem)
        if info:
            alive = _alive(info["pid"])
            info["health"] = health(info["url"]) if alive else "down"
            result.append(info)
    return result


def stop_processes(settings: Settings, say: Callable[[str], None]) -> None:
    for info in running_services(settings):
        pid = info["pid"]
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            say(f"{info['name']}: stopped")
        (run_dir(settings) / f"{info['name']}.json").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def health(url: str) -> str:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:  # noqa: S310
            return "up" if response.status == 200 else "failing"
    except urllib.error.HTTPError:
        return "failing"
    except OSError:
        return "down"


async def prepare_topics(settings: Settings, providers: list[str]) -> list[str]:
    specs = [*TOPICS, *(provider_topic(p) for p in providers)]
    return await ensure_topics(settings.kafka_bootstrap, specs)


def providers_in_pki(settings: Settings) -> list[str]:
    root = settings.home / "pki" / "providers"
    return sorted(p.stem for p in root.glob("*.pem")) if root.exists() else []

"""``dp2 bench`` / ``make bench``: the end-to-end benchmark of the whole pipeline (issue 8).

Why it exists: DP2 promises ≥5,000 letters a second from submit to DELIVERED, a p99
of ≤100 ms at 500 a second, a validator that gets ≥80% of what one core can verify,
and services that stay under 200 MB. Those claims are only worth something measured
the same way every time, on the real broker, next to the ceilings that bound them.
This harness does that in one command and keeps every run as a JSON file.

What a run does:

1. Builds its own stack in a temporary DP2_HOME: a local Kafka on free ports (or
   ``--bootstrap`` / DP2_KAFKA_BOOTSTRAP: a broker no other DP2 stack uses), a
   development PKI with K sender identities and one mailbox provider, R generated
   CPR recipients registered there (e-mail, or SMS for ``--sms-share`` of them), a
   local SMTP server (aiosmtpd) and HTTP SMS provider (aiohttp) in a child process,
   and every service as its own process exactly as ``dp2 up`` starts them
   (brokers.stack.start_processes), with the digest off so each letter is notified.
2. Prepares every message before the clock starts (build, seal, sign, encode; a
   1 KB document, RSA/ECDSA/Ed25519 as the PKI issues): in production that cost is
   on the vendors' machines, so it is reported apart, as µs per message.
3. Runs the timed phase(s): closed loop (default: K senders, each ``--inflight``
   submits outstanding), ``--rate R[,R2...]`` open loop at fixed rates, or
   ``--soak SECONDS`` at one rate. Every lifecycle event is read from dp2.lifecycle
   (no consumer group); each process's CPU and RSS (psutil) and each service's
   ``dp2_consumer_lag`` (from /metrics) are sampled every second.
4. Measures the ceilings on the same machine: Kafka's own ProducerPerformance and
   ConsumerPerformance (jars in deploy/kafka/libs) for the same record size, and the
   one-core verify rate of the signature algorithm in use (brokers.bench.crypto).
5. Writes ``bench/results/bench-<UTC>.json`` and ``.png`` and prints the report.

How to read the report:

* ``msg/s`` of a stage: messages that reached it ÷ (the last one's event - the first
  submit): sustained end-to-end rate, draining included.
* latency: the stage event's ``occurredAt`` (set by the service) - the sender's clock
  just before ``submit`` (one machine, one clock). "receipt" is the sender's own
  wait for acks=all, so queueing in the sender shows there, not in the pipeline.
* per process: CPU seconds over the phase, CPU µs per message (where the time goes),
  % of one core, peak RSS and max consumer lag. ``bench`` is this load generator,
  ``peers`` the SMTP/SMS stand-ins; both share the machine with the services.
* ratios: DP2's delivered/s against Kafka's raw producer and consumer rates, and
  the validator's accepted/s against one core's verify rate (plus the same per
  CPU-second of the validator, which a loaded machine does not distort).
* targets: measured vs target; nothing is asserted.

Exit code: 0 when every message was delivered and notified, 1 when some were not
within ``--drain-timeout`` (the figures are written all the same), 2 for an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from brokers.bench import crypto, report
from brokers.contacts.records import record_from_row
from brokers.contacts.register import ContactRegister, publish_contacts
from brokers.runtime.kafka import ensure_topics, read_from_start
from brokers.runtime.logs import configure_logging
from brokers.runtime.settings import PROJECT_ROOT, Settings
from brokers.security import signing
from brokers.security.pki import Pki
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from brokers.stack import supervisor
from brokers.stack.kafka import ClusterSpec, LocalKafka, check_java, free_base_port, port_is_free
from connectors.sdk import Document, Dp2Client, build_message
from schemas import codec
from schemas.errors import Dp2Error, SchemaError
from schemas.models import LifecycleEvent
from schemas.vocabulary import LIFECYCLE_TOPIC, PRINT_PROVIDER, TopicSpec

PROVIDER = "benchpost"
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
DEFAULT_SOAK_RATE = 50.0
FAILURE_STATES = ("REJECTED", "FAILED", "NOTIFICATION_FAILED")
MACHINE = "machine"  # in CPU figures: every busy CPU second of the machine
_STALL_S = 60.0


def _say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


class BenchError(Dp2Error):
    reason_code = "BENCH_FAILED"
    hint = "Read the message; run with --keep-home to inspect the services' logs."


# --- configuration ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    mode: str  # closed | rate | soak
    rate: float | None
    start: int  # first index into the prepared messages
    count: int


@dataclass(frozen=True, slots=True)
class Config:
    messages: int
    senders: int
    inflight: int
    warmup: int
    recipients: int
    sms_share: float
    document_size: int
    phases: tuple[Phase, ...]
    perf_records: int
    crypto_iterations: int
    drain_timeout_s: float
    results_dir: Path
    bootstrap: str | None
    progress: bool
    keep_home: bool
    notify_concurrency: int = 16

    @property
    def total(self) -> int:
        return self.warmup + sum(p.count for p in self.phases)


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        rates = []
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of rates like 100,500,1000")
    return rates


def config_from_args(settings: Settings, args: argparse.Namespace) -> Config:
    """Resolve --quick and the defaults into one frozen configuration."""
    quick = bool(args.quick)
    messages = args.messages or (200 if quick else 5000)
    warmup = args.warmup if args.warmup is not None else (20 if quick else 200)
    rates: list[float] = args.rate or []
    phases: tuple[Phase, ...]
    if args.soak:
        if len(rates) > 1:
            raise BenchError("--soak runs at one rate", hint="Give --rate a single value.")
        rate = rates[0] if rates else DEFAULT_SOAK_RATE
        count = max(1, round(rate * args.soak))
        phases = (Phase(f"soak {args.soak:.0f} s at {rate:g}/s", "soak", rate, warmup, count),)
    elif rates:
        phases = tuple(
            Phase(f"rate {r:g}/s", "rate", r, warmup + i * messages, messages)
            for i, r in enumerate(rates)
        )
    else:
        phases = (Phase("closed-loop", "closed", None, warmup, messages),)
    bootstrap = args.bootstrap or (settings.kafka_bootstrap if settings.kafka_is_external else None)
    return Config(
        messages=messages,
        senders=args.senders or (2 if quick else 4),
        inflight=args.inflight,
        warmup=warmup,
        recipients=args.recipients or (50 if quick else 300),
        sms_share=args.sms_share,
        notify_concurrency=args.notify_concurrency,
        document_size=args.document_size,
        phases=phases,
        perf_records=args.perf_records or (2000 if quick else 100_000),
        crypto_iterations=args.crypto_iterations or (30 if quick else 300),
        drain_timeout_s=args.drain_timeout or (120.0 if quick else 300.0),
        results_dir=Path(args.results_dir) if args.results_dir else RESULTS_DIR,
        bootstrap=bootstrap,
        progress=not args.no_progress,
        keep_home=args.keep_home,
    )


def _require_extras() -> None:
    missing = []
    for module in ("psutil", "tqdm", "matplotlib", "aiosmtpd"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise BenchError(
            f"the benchmark needs {', '.join(missing)}",
            reason_code="BENCH_EXTRA_MISSING",
            hint="Run: make bench (or .venv/bin/pip install -e '.[dev,bench]').",
        )


# --- the SMTP server and SMS provider, in a child process ---------------------------------
class _CountingSmtp:
    """aiosmtpd handler that accepts and counts every message."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 OK"


def _peers_main(conn: Connection, smtp_port: int) -> None:
    """Entry of the peers process: serve SMTP and SMS until told to stop."""
    asyncio.run(_serve_peers(conn, smtp_port))


async def _serve_peers(conn: Connection, smtp_port: int) -> None:
    from aiohttp import web  # noqa: PLC0415 - only the child needs the servers
    from aiosmtpd.controller import Controller  # noqa: PLC0415

    smtp = _CountingSmtp()
    controller = Controller(smtp, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    sms = [0]

    async def send_sms(request: web.Request) -> web.Response:
        await request.read()
        sms[0] += 1
        return web.json_response({"status": "queued"})

    app = web.Application()
    app.router.add_post("/sms", send_sms)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    conn.send({"sms_url": f"http://127.0.0.1:{runner.addresses[0][1]}/sms"})
    try:
        while await asyncio.to_thread(conn.recv) == "counts":
            conn.send({"emails": smtp.count, "sms": sms[0]})
    except EOFError:
        pass  # the bench went away
    finally:
        await runner.cleanup()
        controller.stop()


class Peers:
    """The notification peers' child process (so their CPU is not the services')."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.smtp_port = _free_port()
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=_peers_main, args=(child, self.smtp_port), name="dp2-bench-peers", daemon=True
        )
        self.process.start()
        child.close()
        if not self._conn.poll(60):
            self.stop()
            raise BenchError("the SMTP/SMS peers did not start within 60 s")
        self.sms_url: str = self._conn.recv()["sms_url"]

    @property
    def pid(self) -> int:
        assert self.process.pid is not None  # noqa: S101 - started in __init__
        return self.process.pid

    def counts(self) -> dict[str, int]:
        with contextlib.suppress(OSError, EOFError):
            self._conn.send("counts")
            if self._conn.poll(10):
                counts: dict[str, int] = self._conn.recv()
                return counts
        return {}

    def stop(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._conn.send("stop")
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self._conn.close()


def _free_port() -> int:
    for _ in range(200):
        port = 20000 + int.from_bytes(os.urandom(2), "big") % 40000
        if port_is_free(port):
            return port
    raise BenchError("no free TCP port on 127.0.0.1")


# --- sampling CPU, RSS and lag ------------------------------------------------------------
class Sampler:
    """Samples each process's CPU seconds and RSS, and each service's consumer lag.

    Two threads: a service busy with a batch answers /metrics late, and that must not
    stretch the CPU and RSS sampling.
    """

    def __init__(
        self, pids: dict[str, int], metrics_urls: dict[str, str], interval_s: float = 1.0
    ) -> None:
        import psutil  # noqa: PLC0415 - the bench extra

        self._psutil = psutil
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._no_process = (psutil.NoSuchProcess, psutil.AccessDenied)
        self._urls = metrics_urls
        self._interval = interval_s
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(metrics_urls)))
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name="bench-sampler", daemon=True),
            threading.Thread(target=self._lag_loop, name="bench-lag", daemon=True),
        ]
        self.samples: list[dict[str, Any]] = []
        self.lags: list[dict[str, Any]] = []

    def start(self) -> None:
        self.samples.append(self._sample())
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(10)
        self._pool.shutdown(wait=False)

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) of every process, now; ``machine``: all busy CPU
        seconds of the machine (every process, ours or not)."""
        result = {}
        for name, process in self._processes.items():
            with contextlib.suppress(*self._no_process):
                times = process.cpu_times()
                result[name] = times.user + times.system
        total = self._psutil.cpu_times()
        busy = ("user", "nice", "system", "irq", "softirq", "steal")  # guest is in user
        result[MACHINE] = sum(getattr(total, field, 0.0) for field in busy)
        return result

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.samples.append(self._sample())

    def _lag_loop(self) -> None:
        while not self._stop.wait(self._interval):
            at = time.time()
            lags = self._pool.map(_scrape_lag, self._urls.values())
            self.lags.append({"t": at, "lag": dict(zip(self._urls, lags, strict=True))})

    def _sample(self) -> dict[str, Any]:
        at = time.time()
        rss = {}
        for name, process in self._processes.items():
            with contextlib.suppress(*self._no_process):
                rss[name] = process.memory_info().rss
        return {"t": at, "cpu": self.cpu(), "rss": rss}


def _scrape_lag(url: str) -> float | None:
    """The sum of a service's ``dp2_consumer_lag`` gauges, from its /metrics."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=0.8) as response:  # noqa: S310
            text = response.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("dp2_consumer_lag{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- collecting the lifecycle -----------------------------------------------------------
class Collector:
    """Reads dp2.lifecycle from its end and keeps, per bench message, when each stage came."""

    def __init__(self, bootstrap: str, uuids: Sequence[str]) -> None:
        self._bootstrap = bootstrap
        self._index = {u.encode(): i for i, u in enumerate(uuids)}
        n = len(uuids)
        self.submitted: list[float | None] = [None] * n
        self.receipt: list[float | None] = [None] * n
        self.at: dict[str, list[float | None]] = {s: [None] * n for s in report.STAGES}
        self.channel: list[str | None] = [None] * n
        self.failed: dict[int, str] = {}
        # Fixed keys: the sampler thread copies this dict while the loop updates it.
        self.counts = dict.fromkeys(("submitted", *report.STAGES, "failed", "other"), 0)
        self.last_event = time.monotonic()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        await read_from_start(consumer, [LIFECYCLE_TOPIC], to_end=True)
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(consumer), name="bench:lifecycle")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for record in records:
                    index = self._index.get(record.key or b"")
                    if index is not None:
                        self._apply(index, record.value or b"")

    def _apply(self, index: int, value: bytes) -> None:
        try:
            event = codec.decode(value, LifecycleEvent)
        except SchemaError:
            return
        state = event.state.value
        self.last_event = time.monotonic()
        stamps = self.at.get(state)
        if stamps is not None:
            if stamps[index] is None:
                stamps[index] = event.occurredAt.timestamp()
                self.counts[state] += 1
                if state == "NOTIFIED":
                    self.channel[index] = event.channel
        elif state in FAILURE_STATES:
            if index not in self.failed:
                self.failed[index] = f"{state}:{event.reasonCode}"
                self.counts["failed"] += 1
        elif state != "SUBMITTED":
            self.counts["other"] += 1

    def finished(self, index: int) -> bool:
        return self.at["NOTIFIED"][index] is not None or index in self.failed

    async def wait_done(self, phase: Phase, timeout_s: float) -> bool:
        """Wait until every message of ``phase`` is notified or failed (False on timeout
        or when no event came for a minute)."""
        pending = list(range(phase.start, phase.start + phase.count))
        deadline = time.monotonic() + timeout_s
        while True:
            pending = [i for i in pending if not self.finished(i)]
            if not pending:
                return True
            now = time.monotonic()
            if now > deadline or now - self.last_event > _STALL_S:
                return False
            await asyncio.sleep(0.25)


# --- the senders ------------------------------------------------------------------------
class _Sender(Dp2Client):
    """A connector that does not follow its receipts: the bench reads dp2.lifecycle once
    for all senders, instead of K followers competing with the services for the cores."""

    async def _start_following(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Prepared:
    raw: bytes
    uuid: str
    key: str
    sender: int


def sender_names(count: int) -> list[tuple[str, str]]:
    """(identity name, CVR) of each bench sender."""
    return [(f"bench-sender-{k + 1}", f"{55100000 + k + 1:08d}") for k in range(count)]


def contact_rows(count: int, sms_share: float) -> list[dict[str, Any]]:
    """Generated CPR recipients, all with the bench provider; an SMS number for the
    first ``sms_share`` of them, an e-mail address for the rest."""
    sms = round(count * sms_share)
    rows = []
    for i in range(count):
        channel = (
            {"channel": "SMS", "address": f"+4520{i:06d}"}
            if i < sms
            else {"channel": "EMAIL", "address": f"borger{i:05d}@bench.example"}
        )
        rows.append(
            {
                "id": f"0101{i:06d}",
                "idType": "CPR",
                "status": "REGISTERED",
                "provider": PROVIDER,
                "name": f"Bench Borger {i}",
                "channels": [channel],
                "language": "da",
            }
        )
    return rows


async def prepare(
    clients: Sequence[Dp2Client], config: Config
) -> tuple[list[Prepared], dict[str, Any]]:
    """Build, seal, sign and encode every message; the sender's cost per message."""
    from tqdm import tqdm  # noqa: PLC0415 - the bench extra

    senders = sender_names(len(clients))
    recipients = [row["id"] for row in contact_rows(config.recipients, config.sms_share)]
    data = (bytes(range(256)) * (config.document_size // 256 + 1))[: config.document_size]
    document = Document("afgoerelse.pdf", "application/pdf", data)
    prepared: list[Prepared] = []
    seal_us: list[float] = []
    encode_us: list[float] = []
    for j in tqdm(
        range(config.total), desc="prepare", unit="msg", disable=not config.progress, ascii=True
    ):
        k = j % len(clients)
        message = build_message(
            sender_cvr=senders[k][1],
            sender_label=f"Bench Kommune {k + 1}",
            recipient_id=recipients[j % len(recipients)],
            label="Afgørelse om boligstøtte",
            documents=[document],
            notification="Du har fået post fra Bench Kommune",
        )
        started = time.perf_counter()
        signed, ref = clients[k].seal_and_sign(message)
        sealed = time.perf_counter()
        raw = codec.encode(signed)
        seal_us.append((sealed - started) * 1e6)
        encode_us.append((time.perf_counter() - sealed) * 1e6)
        prepared.append(Prepared(raw, signed.header.messageUUID, ref, k))
        if j % 100 == 99:
            await asyncio.sleep(0)  # let the clients' connections breathe
    cost = {
        "seal_sign_us": report.percentiles(seal_us),
        "encode_us": report.percentiles(encode_us),
        "record_bytes_mean": round(sum(len(p.raw) for p in prepared) / len(prepared), 1),
    }
    return prepared, cost


async def _submit(client: Dp2Client, item: Prepared, index: int, collector: Collector) -> None:
    collector.submitted[index] = time.time()
    collector.counts["submitted"] += 1
    try:
        await client.submit(item.raw, item.uuid, item.key)
    except (KafkaError, Dp2Error) as exc:
        collector.failed.setdefault(index, f"SUBMIT_FAILED:{type(exc).__name__}")
        collector.counts["failed"] += 1
        return
    collector.receipt[index] = time.time()


async def closed_loop(
    clients: Sequence[Dp2Client],
    prepared: Sequence[Prepared],
    phase: Phase,
    collector: Collector,
    inflight: int,
) -> None:
    """Each sender keeps ``inflight`` submits outstanding until its share is sent."""
    indices = range(phase.start, phase.start + phase.count)
    shares = [iter([i for i in indices if prepared[i].sender == k]) for k in range(len(clients))]

    async def worker(k: int) -> None:
        for index in shares[k]:  # the workers of one sender share its iterator
            await _submit(clients[k], prepared[index], index, collector)

    await asyncio.gather(*(worker(k) for k in range(len(clients)) for _ in range(inflight)))


async def open_loop(
    clients: Sequence[Dp2Client], prepared: Sequence[Prepared], phase: Phase, collector: Collector
) -> float:
    """Submit at ``phase.rate`` whatever the answers take; returns the worst lateness (ms)."""
    assert phase.rate is not None  # noqa: S101 - open loop phases have a rate
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending: set[asyncio.Task[None]] = set()
    late = 0.0
    sent = 0
    while sent < phase.count:
        now = loop.time()
        due = min(phase.count, int((now - started) * phase.rate) + 1)
        for i in range(sent, due):
            late = max(late, now - (started + i / phase.rate))
            index = phase.start + i
            item = prepared[index]
            task = asyncio.create_task(_submit(clients[item.sender], item, index, collector))
            pending.add(task)
            task.add_done_callback(pending.discard)
        sent = max(sent, due)
        if sent < phase.count:
            await asyncio.sleep(max(0.0, started + sent / phase.rate - loop.time()))
    await asyncio.gather(*pending)
    return late * 1000


async def _progress(collector: Collector, phase: Phase, enabled: bool) -> None:
    from tqdm import tqdm  # noqa: PLC0415 - the bench extra

    base = dict(collector.counts)
    bar = tqdm(
        total=phase.count, desc=phase.name, unit="msg", disable=not enabled, ascii=True, leave=True
    )
    try:
        while True:
            counts = collector.counts
            bar.update(counts["DELIVERED"] - base["DELIVERED"] - bar.n)
            bar.set_postfix(
                submitted=counts["submitted"] - base["submitted"],
                notified=counts["NOTIFIED"] - base["NOTIFIED"],
                failed=counts["failed"] - base["failed"],
                refresh=False,
            )
            await asyncio.sleep(0.5)
    finally:
        bar.close()


# --- figures of one phase ---------------------------------------------------------------
def _window(samples: list[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    return [s for s in samples if start - 0.5 <= s["t"] <= end + 0.5]


def phase_figures(
    phase: Phase,
    collector: Collector,
    window: tuple[float, float],
    cpu: tuple[dict[str, float], dict[str, float]],
    sampler: Sampler,
) -> dict[str, Any]:
    """Throughput, latency per stage, failures, CPU/RSS/lag per process of one phase."""
    indices = range(phase.start, phase.start + phase.count)
    submits = [collector.submitted[i] for i in indices]
    sent = [s for s in submits if s is not None]
    first = min(sent) if sent else window[0]
    latency: dict[str, Any] = {}
    throughput: dict[str, float | None] = {}
    stamps: dict[str, list[float | None]] = {
        "RECEIPT": collector.receipt,
        **collector.at,
    }
    for stage, values in stamps.items():
        pairs = [(values[i], collector.submitted[i]) for i in indices]
        reached = [(t, s) for t, s in pairs if t is not None and s is not None]
        latency[stage] = report.percentiles([(t - s) * 1000 for t, s in reached])
        last = max((t for t, _ in reached), default=None)
        throughput[stage] = (
            round(len(reached) / (last - first), 1) if last is not None and last > first else None
        )
    for channel in ("EMAIL", "SMS"):
        reached_at = [
            (collector.at["NOTIFIED"][i], collector.submitted[i])
            for i in indices
            if collector.channel[i] == channel
        ]
        latency[f"NOTIFIED_{channel}"] = report.percentiles(
            [(t - s) * 1000 for t, s in reached_at if t is not None and s is not None]
        )
    failures: dict[str, int] = {}
    for i in indices:
        if i in collector.failed:
            failures[collector.failed[i]] = failures.get(collector.failed[i], 0) + 1
    wall = window[1] - window[0]
    return {
        "name": phase.name,
        "mode": phase.mode,
        "rate": phase.rate,
        "messages": phase.count,
        "submit_s": round(max(sent) - first, 3) if sent else 0.0,
        "submit_rate_per_s": (round(len(sent) / (max(sent) - first), 1) if len(sent) > 1 else None),
        "wall_s": round(wall, 3),
        "counts": {stage: latency[stage]["count"] for stage in stamps},
        "failures": failures,
        "throughput_per_s": throughput,
        "latency_ms": latency,
        "services": _process_figures(phase, window, cpu, _window(list(sampler.samples), *window)),
        "machine": _machine_figures(window, cpu),
        "lag_max": _lag_max(_window(list(sampler.lags), *window)),
    }


def _process_figures(
    phase: Phase,
    window: tuple[float, float],
    cpu: tuple[dict[str, float], dict[str, float]],
    samples: list[dict[str, Any]],
) -> dict[str, dict[str, float | None]]:
    start, end = window
    wall = max(end - start, 1e-9)
    figures = {}
    for name in cpu[1]:
        if name == MACHINE:
            continue
        used = cpu[1][name] - cpu[0].get(name, cpu[1][name])
        rss = [s["rss"][name] for s in samples if name in s["rss"]]
        first = [s["rss"][name] for s in samples if name in s["rss"] and s["t"] <= start + 60]
        last = [s["rss"][name] for s in samples if name in s["rss"] and s["t"] >= end - 60]
        mb = 2**20
        figures[name] = {
            "cpu_s": round(used, 3),
            "cpu_us_per_msg": round(used * 1e6 / phase.count, 1),
            "cpu_share_pct": round(100 * used / wall, 1),
            "rss_peak_mb": round(max(rss) / mb, 1) if rss else None,
            "rss_first_min_mb": round(max(first) / mb, 1) if first else None,
            "rss_last_min_mb": round(max(last) / mb, 1) if last else None,
        }
    return figures


def _machine_figures(
    window: tuple[float, float], cpu: tuple[dict[str, float], dict[str, float]]
) -> dict[str, float]:
    """How busy the whole machine was, and how much of that was not this benchmark."""
    wall = max(window[1] - window[0], 1e-9)
    busy = cpu[1][MACHINE] - cpu[0][MACHINE]
    ours = sum(cpu[1][n] - cpu[0].get(n, cpu[1][n]) for n in cpu[1] if n != MACHINE)
    cores = os.cpu_count() or 1
    return {
        "busy_pct_of_all_cores": round(100 * busy / (wall * cores), 1),
        "others_cpu_s": round(max(busy - ours, 0.0), 1),
        "others_pct_of_a_core": round(100 * max(busy - ours, 0.0) / wall, 1),
    }


def _lag_max(samples: list[dict[str, Any]]) -> dict[str, float | None]:
    names = {name for s in samples for name in s["lag"]}
    return {
        name: max((s["lag"].get(name) or 0.0 for s in samples), default=None)
        for name in sorted(names)
    }


def run_series(collector: Collector, start: float) -> dict[str, list[float]]:
    """Events per second since ``start``: submitted, and each stage reached."""
    columns: dict[str, list[float | None]] = {"submitted": collector.submitted, **collector.at}
    last = max((t for values in columns.values() for t in values if t is not None), default=start)
    seconds = int(last - start) + 1
    series: dict[str, list[float]] = {"t": [float(s) for s in range(seconds)]}
    for name, values in columns.items():
        counts = [0.0] * seconds
        for t in values:
            if t is not None and t >= start:
                counts[int(t - start)] += 1
        series[name] = counts
    return series


def sample_series(sampler: Sampler, start: float) -> dict[str, Any]:
    """The sampler's series, seconds since ``start``: CPU s, RSS MB, lag (own clock)."""
    samples, lags = list(sampler.samples), list(sampler.lags)
    names = sorted({n for s in samples for n in s["rss"]})
    services = sorted({n for s in lags for n in s["lag"]})
    return {
        "t": [round(s["t"] - start, 2) for s in samples],
        "cpu_s": {n: [round(s["cpu"].get(n, 0.0), 3) for s in samples] for n in [*names, MACHINE]},
        "rss_mb": {n: [round(s["rss"].get(n, 0) / 2**20, 1) for s in samples] for n in names},
        "lag_t": [round(s["t"] - start, 2) for s in lags],
        "lag": {n: [s["lag"].get(n) for s in lags] for n in services},
    }


# --- ceilings ---------------------------------------------------------------------------
def _java_tool(java: str, settings: Settings, main: str, args: list[str], logs: Path) -> str:
    """Run one of Kafka's tools from the jars; its log goes to ``logs``, its report to stdout."""
    logs.mkdir(parents=True, exist_ok=True)
    argv = [
        java,
        "-Xmx512m",
        f"-Dlog4j2.configurationFile={settings.kafka_deploy_dir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={logs}",
        "-cp",
        f"{settings.kafka_libs}/*",
        main,
        *args,
    ]
    try:
        done = subprocess.run(  # noqa: S603 - the JDK kafka_runner found, our own arguments
            argv, capture_output=True, text=True, timeout=900, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{main} did not finish within 900 s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-5:])
        raise BenchError(f"{main.rsplit('.', 1)[1]} failed (exit {done.returncode}): {tail}")
    return done.stdout


def parse_producer(text: str) -> dict[str, float]:
    """The final summary line of ProducerPerformance."""
    pattern = re.compile(
        r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency,"
        r" ([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th"
    )
    matches = pattern.findall(text)
    if not matches:
        raise BenchError(f"no summary in ProducerPerformance's output: {text[-300:]!r}")
    sent, rate, mb, avg, worst, p50, p95, p99 = (float(x) for x in matches[-1])
    return {
        "records": sent,
        "records_per_s": rate,
        "mb_per_s": mb,
        "avg_ms": avg,
        "max_ms": worst,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
    }


def parse_consumer(text: str) -> dict[str, float]:
    """The CSV line of ConsumerPerformance (header ``start.time, end.time, ...``)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if line.startswith("start.time"):
            row = dict(zip(line.split(", "), lines[i + 1].split(", "), strict=False))
            return {
                "records": float(row["data.consumed.in.nMsg"]),
                "records_per_s": float(row["fetch.nMsg.sec"]),
                "records_per_s_total": float(row["nMsg.sec"]),
                "mb_per_s": float(row["fetch.MB.sec"]),
                "rebalance_ms": float(row["rebalance.time.ms"]),
            }
    raise BenchError(f"no result in ConsumerPerformance's output: {text[-300:]!r}")


def parse_latency(text: str) -> dict[str, float]:
    """EndToEndLatency's average and percentiles (ms)."""
    average = re.search(r"Avg latency: ([\d.]+) ms", text)
    shares = re.search(r"50th = (\d+), 99th = (\d+), 99\.9th = (\d+)", text)
    if not average or not shares:
        raise BenchError(f"no result in EndToEndLatency's output: {text[-300:]!r}")
    p50, p99, p999 = (float(x) for x in shares.groups())
    return {"avg_ms": float(average.group(1)), "p50_ms": p50, "p99_ms": p99, "p999_ms": p999}


def kafka_ceilings(
    java: str, settings: Settings, bootstrap: str, *, record_size: int, records: int, logs: Path
) -> dict[str, Any]:
    """Kafka's own perf tools: producer and consumer against a fresh 3-partition topic,
    and the one-hop produce-to-consume latency, one record at a time."""
    topic = f"dp2.bench.perf.{uuid.uuid4().hex[:8]}"
    hop = f"{topic}.latency"
    specs = [TopicSpec(topic, "none", "bench ceiling"), TopicSpec(hop, "none", "one hop", 1)]
    asyncio.run(ensure_topics(bootstrap, specs))
    result: dict[str, Any] = {}
    try:
        _say(f"ceiling: ProducerPerformance, {records} records of {record_size} bytes, acks=all")
        out = _java_tool(
            java,
            settings,
            "org.apache.kafka.tools.ProducerPerformance",
            f"--bootstrap-server {bootstrap} --topic {topic} --num-records {records}"
            f" --record-size {record_size} --throughput -1 --command-property acks=all".split(),
            logs,
        )
        result["kafka_producer"] = {"record_size": record_size, **parse_producer(out)}
        _say(f"ceiling: ConsumerPerformance, {records} records")
        out = _java_tool(
            java,
            settings,
            "org.apache.kafka.tools.ConsumerPerformance",
            f"--bootstrap-server {bootstrap} --topic {topic} --num-records {records}"
            f" --group dp2-bench-perf-{uuid.uuid4().hex[:8]} --timeout 60000".split(),
            logs,
        )
        result["kafka_consumer"] = parse_consumer(out)
        hops = max(100, min(records // 50, 1000))
        _say(f"ceiling: EndToEndLatency, {hops} records one at a time")
        out = _java_tool(
            java,
            settings,
            "org.apache.kafka.tools.EndToEndLatency",
            f"--bootstrap-server {bootstrap} --topic {hop} --num-records {hops}"
            f" --producer-acks all --record-size {record_size}".split(),
            logs,
        )
        result["kafka_hop_latency"] = {"records": hops, **parse_latency(out)}
    except BenchError as exc:
        result.setdefault("kafka_producer", {"record_size": record_size, "error": exc.message})
        result.setdefault("kafka_consumer", {"error": exc.message})
        result.setdefault("kafka_hop_latency", {"error": exc.message})
    finally:
        asyncio.run(_delete_topics(bootstrap, [topic, hop]))
    return result


async def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    except KafkaError:
        pass  # the perf topic is only litter in a broker the bench started itself
    finally:
        await admin.close()


def verify_ceiling(algorithm: str, iterations: int) -> dict[str, Any]:
    """One core's verify rate of ``algorithm`` (brokers.bench.crypto, best of 5 rounds)."""
    _say(f"ceiling: crypto micro-benchmark, {iterations} iterations")
    measured = crypto.measure(iterations)
    verify_us = measured["verify"][algorithm]
    return {
        "algorithm": algorithm,
        "verify_us": round(verify_us, 2),
        "per_s": round(1e6 / verify_us, 1),
        "signing_input_us": round(measured["envelope"]["signing input (Avro encode)"], 2),
        "bench_crypto": measured,
    }


# --- the run ----------------------------------------------------------------------------
@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ as ``env`` for a while: start_processes hands it to the services."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _service_ports() -> tuple[int, list[supervisor.ServiceSpec]]:
    for _ in range(200):
        base = 30000 + int.from_bytes(os.urandom(2), "big") % 25000
        specs = supervisor.stack_services([PROVIDER], base, notifier=True)
        if all(port_is_free(s.port) for s in specs):
            return base, specs
    raise BenchError("no free range of HTTP ports for the services")


def _service_env(
    home: Path,
    bootstrap: str,
    *,
    kafka_port: int,
    port_base: int,
    peers: Peers,
    libs: Path,
    notify_concurrency: int = 16,
) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("DP2_") or k == "DP2_PSEUDONYM_KEY"
    }
    env.update(
        {
            "DP2_HOME": str(home),
            "DP2_KAFKA_BOOTSTRAP": bootstrap,
            "DP2_KAFKA_PORT": str(kafka_port),
            "DP2_KAFKA_LIBS": str(libs),
            "DP2_PORT_BASE": str(port_base),
            "DP2_SMTP_HOST": "127.0.0.1",
            "DP2_SMTP_PORT": str(peers.smtp_port),
            "DP2_SMS_PROVIDERS": f"bench={peers.sms_url}",
            "DP2_DIGEST_WINDOW_S": "0",
            "DP2_NOTIFY_CONCURRENCY": str(notify_concurrency),
            "DP2_LOG_FORMAT": "json",
        }
    )
    return env


def _issue_identities(settings: Settings, senders: int) -> str:
    """CA, sender identities and providers; returns the senders' signature algorithm."""
    pki = Pki(settings.home / "pki")
    pki.init()
    identity = None
    for name, cvr in sender_names(senders):
        identity = pki.issue_sender(cvr, name)
    for provider in (PROVIDER, PRINT_PROVIDER):
        pki.issue_provider(provider)
    assert identity is not None  # noqa: S101 - at least one sender
    return signing.signature_algorithm(identity.private_key)


async def _load_register(settings: Settings, config: Config) -> None:
    await supervisor.prepare_topics(settings, [PROVIDER])
    pseudonyms = Pseudonymizer(pseudonym_key(settings.home))
    rows = contact_rows(config.recipients, config.sms_share)
    records = [record_from_row(row, n, pseudonyms) for n, row in enumerate(rows, start=1)]
    await publish_contacts(settings.kafka_bootstrap, records)


@dataclass
class Drive:
    """What the timed part produced."""

    collector: Collector
    phases: list[dict[str, Any]]
    sender_cost: dict[str, Any]
    record_size: int
    started: float
    complete: bool


async def drive(settings: Settings, config: Config, sampler: Sampler) -> Drive:
    """Prepare every message, then run each phase and wait for its messages to finish."""
    contacts = ContactRegister(settings.kafka_bootstrap)
    await contacts.start()
    clients = [
        _Sender.from_settings(settings, name, contacts=contacts)
        for name, _ in sender_names(config.senders)
    ]
    collector: Collector | None = None
    try:
        for client in clients:
            await client.start()
        _say(f"preparing {config.total} messages (seal, sign, encode) before the clock starts")
        prepared, cost = await prepare(clients, config)
        collector = Collector(settings.kafka_bootstrap, [p.uuid for p in prepared])
        await collector.start()
        if config.warmup:
            # Services report healthy before their consumer groups have joined and the
            # broker's JIT has warmed up; these messages pay for that, unmeasured.
            warmup = Phase("warm-up", "warmup", None, 0, config.warmup)
            ticker = asyncio.create_task(_progress(collector, warmup, config.progress))
            await closed_loop(clients, prepared, warmup, collector, config.inflight)
            await collector.wait_done(warmup, config.drain_timeout_s)
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        phases = []
        complete = True
        started = time.time()
        for phase in config.phases:
            cpu_before, window_start = sampler.cpu(), time.time()
            ticker = asyncio.create_task(_progress(collector, phase, config.progress))
            late = None
            if phase.mode == "closed":
                await closed_loop(clients, prepared, phase, collector, config.inflight)
            else:
                late = await open_loop(clients, prepared, phase, collector)
            done = await collector.wait_done(phase, config.drain_timeout_s)
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            window = (window_start, time.time())
            await asyncio.sleep(1.1)  # one more sample inside the window
            figures = phase_figures(phase, collector, window, (cpu_before, sampler.cpu()), sampler)
            figures["complete"] = done
            figures["schedule_late_max_ms"] = None if late is None else round(late, 1)
            phases.append(figures)
            complete = complete and done
            if not done:
                _say(f"{phase.name}: not every message finished within the drain timeout")
        record_size = round(sum(len(p.raw) for p in prepared) / len(prepared))
        return Drive(collector, phases, cost, record_size, started, complete)
    finally:
        if collector is not None:
            await collector.stop()
        for client in clients:
            await client.stop()
        await contacts.stop()


def run_bench(settings: Settings, config: Config) -> int:
    """The whole benchmark; everything it starts is stopped before it returns."""
    _require_extras()
    started_at = datetime.now(UTC)
    java = check_java()
    home = Path(tempfile.mkdtemp(prefix="dp2-bench-"))
    _say(f"working in {home}")
    failed = True
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(_remove_home, home, lambda: config.keep_home or failed)
        pids: dict[str, int] = {}
        cluster = ClusterSpec(
            root=home / "kafka" / "1-node",
            base_port=free_base_port(),
            heap_mb=settings.kafka_heap_mb,
            libs=settings.kafka_libs,
            deploy_dir=settings.kafka_deploy_dir,
        )
        bootstrap = config.bootstrap
        if bootstrap is None:
            kafka = LocalKafka(cluster, progress=_say)
            cleanup.callback(kafka.stop)
            kafka.start()
            bootstrap = kafka.bootstrap
            pids["kafka"] = next(n.pid for n in kafka.status() if n.pid is not None)
        peers = Peers()
        cleanup.callback(peers.stop)
        port_base, specs = _service_ports()
        env = _service_env(
            home,
            bootstrap,
            kafka_port=cluster.base_port,
            port_base=port_base,
            peers=peers,
            libs=settings.kafka_libs,
            notify_concurrency=config.notify_concurrency,
        )
        bench_settings = Settings.from_env(env)
        algorithm = _issue_identities(bench_settings, config.senders)
        asyncio.run(_load_register(bench_settings, config))
        cleanup.callback(supervisor.stop_processes, bench_settings, _say)
        with _environment(env):  # start_processes hands os.environ to the services
            supervisor.start_processes(bench_settings, specs, _say)
        for spec in specs:
            info = supervisor.read_run_file(bench_settings, spec.name)
            if info:
                pids[spec.name] = int(info["pid"])
        pids |= {"bench": os.getpid(), "peers": peers.pid}
        sampler = Sampler(pids, {s.name: f"http://127.0.0.1:{s.port}" for s in specs})
        sampler.start()
        cleanup.callback(sampler.stop)
        outcome = asyncio.run(drive(bench_settings, config, sampler))
        sampler.stop()
        peer_counts = peers.counts()
        supervisor.stop_processes(bench_settings, _say)
        ceilings = kafka_ceilings(
            java,
            settings,
            bootstrap,
            record_size=outcome.record_size,
            records=config.perf_records,
            logs=home / "logs" / "perf",
        )
        ceilings["verify"] = verify_ceiling(algorithm, config.crypto_iterations)
        result = _result(
            config,
            outcome,
            ceilings=ceilings,
            sampler=sampler,
            started_at=started_at,
            java=java,
            cluster=cluster,
        )
        result["parameters"] |= {"broker": bootstrap, "signature_algorithm": algorithm}
        result["peers"] = peer_counts
        result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        result["ratios"] = report.ratios(result)
        result["targets"] = report.targets(result)
        report.write(result, config.results_dir, report.result_stem(started_at))
        failed = False
    print(report.render(result), flush=True)
    return 0 if outcome.complete else 1


def _remove_home(home: Path, keep: Any) -> None:
    if keep():
        _say(f"kept {home} (logs under logs/)")
    else:
        shutil.rmtree(home, ignore_errors=True)


def _result(
    config: Config,
    outcome: Drive,
    *,
    ceilings: dict[str, Any],
    sampler: Sampler,
    started_at: datetime,
    java: str,
    cluster: ClusterSpec,
) -> dict[str, Any]:
    finished = datetime.now(UTC)
    return {
        "schema": "dp2-bench/1",
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
        "duration_s": round((finished - started_at).total_seconds(), 1),
        "git": report.git_revision(),
        "machine": report.machine_facts(java, cluster.kafka_version),
        "parameters": {
            "messages_per_phase": config.messages,
            "senders": config.senders,
            "inflight": config.inflight,
            "warmup": config.warmup,
            "recipients": config.recipients,
            "sms_share": config.sms_share,
            "notify_concurrency": config.notify_concurrency,
            "document_size": config.document_size,
            "record_size": outcome.record_size,
            "phases": [
                {"name": p.name, "mode": p.mode, "rate": p.rate, "messages": p.count}
                for p in config.phases
            ],
            "perf_records": config.perf_records,
            "crypto_iterations": config.crypto_iterations,
            "drain_timeout_s": config.drain_timeout_s,
        },
        "sender_cost": outcome.sender_cost,
        "phases": outcome.phases,
        "complete": outcome.complete,
        "series": run_series(outcome.collector, outcome.started),
        "samples": sample_series(sampler, outcome.started),
        "ceilings": ceilings,
    }


# --- command line -----------------------------------------------------------------------
def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    """``dp2 bench``: run the benchmark and print its report."""
    return run_bench(settings, config_from_args(settings, args))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("-n", "--messages", type=int, help="messages (per rate with --rate); default 5000")
    add("-k", "--senders", type=int, help="concurrent sender connectors; default 4")
    add("--inflight", type=int, default=50, help="closed loop: submits outstanding per sender")
    add("--warmup", type=int, help="messages sent and finished before the clock starts (200)")
    add("--recipients", type=int, help="generated CPR recipients; default 300")
    add("--sms-share", type=float, default=0.1, help="share of recipients notified by SMS")
    add(
        "--notify-concurrency",
        type=int,
        default=16,
        help="DP2_NOTIFY_CONCURRENCY of the notifier under test (default 16)",
    )
    add("--document-size", type=int, default=1024, help="bytes of the letter's document")
    add("--rate", type=_rates, help="open loop at these msg/s, e.g. 100,500,1000,2000")
    add(
        "--soak",
        type=float,
        metavar="SECONDS",
        help=f"soak at --rate (default {DEFAULT_SOAK_RATE:g})",
    )
    add("--quick", action="store_true", help="smoke run: N=200, K=2, small perf-tool runs")
    add("--results-dir", help=f"where the JSON and PNG go (default {RESULTS_DIR})")
    add("--bootstrap", help="use this broker (no other DP2 stack on it) instead of starting one")
    add("--perf-records", type=int, help="records for the Kafka perf tools; default 100000")
    add("--crypto-iterations", type=int, help="bench_crypto iterations; default 300")
    add("--drain-timeout", type=float, help="seconds to wait for stragglers; default 300")
    add("--no-progress", action="store_true", help="no progress bars")
    add("--keep-home", action="store_true", help="keep the temporary DP2_HOME (logs, stores)")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m brokers.bench``: the same command without the dp2 front end."""
    parser = argparse.ArgumentParser(prog="python -m brokers.bench", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_format)
        return cmd_bench(settings, args)
    except Dp2Error as exc:
        print(f"dp2 bench: error: {exc.reason_code}: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  how to fix: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

"""``dp2 bench`` / ``make bench``: the end-to-end benchmark of the whole pipeline (issue 8).

Why it exists: the cost of a letter decides how many machines a deployment needs,
and issue 18 sets the targets on two cores: ≥1,000 letters a second submit →
DELIVERED with NOTIFIED keeping pace (≥90%, each letter once), a p99 of ≤100 ms at
500 a second, ≤2 ms of CPU per letter for DP2 and Kafka, and services that stay under
200 MB. Those claims are only worth something measured the same way every time, on
the real broker, next to the ceilings that bound them.
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

``--big-document-mb N`` replaces steps 2-5 with one letter of an N MB document
(brokers.bench.big): seal time, the Kafka record's size, time to DELIVERED (or to
REJECTED MESSAGE_TOO_LARGE above 99.5 MB), and every process's peak RSS growth;
written to ``bench-<UTC>-big.json``.

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
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from brokers.bench import big, report
from brokers.bench.ceilings import kafka_ceilings, verify_ceiling
from brokers.bench.config import BenchError, Config, Phase, say
from brokers.bench.figures import phase_figures, run_series, sample_series
from brokers.bench.load import (
    Collector,
    Sender,
    closed_loop,
    open_loop,
    prepare,
    sender_names,
    show_progress,
)
from brokers.bench.peers import Peers
from brokers.bench.stack import (
    Sampler,
    environment,
    issue_identities,
    load_register,
    refused_events,
    service_env,
    service_ports,
)
from brokers.contacts.register import ContactRegister
from brokers.runtime.logs import configure_logging
from brokers.runtime.settings import PROJECT_ROOT, Settings
from brokers.stack import supervisor
from brokers.stack.access import ADMIN_IDENTITY
from brokers.stack.kafka import ClusterSpec, LocalKafka, check_java, free_base_port
from schemas.errors import Dp2Error

RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
DEFAULT_SOAK_RATE = 50.0


# --- configuration from the command line ----------------------------------------------
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
        big_document_mb=args.big_document_mb,
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


# --- the run ----------------------------------------------------------------------------
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
    # The bench observes as the admin: it reads the directory and every lifecycle event.
    observer = settings.kafka_as(ADMIN_IDENTITY)
    contacts = ContactRegister(observer)
    await contacts.start()
    clients = [
        Sender.from_settings(settings, name, contacts=contacts)
        for name, _ in sender_names(config.senders)
    ]
    collector: Collector | None = None
    try:
        for client in clients:
            await client.start()
        say(f"preparing {config.total} messages (seal, sign, encode) before the clock starts")
        prepared, cost = await prepare(clients, config)
        collector = Collector(observer, [p.uuid for p in prepared])
        await collector.start()
        if config.warmup:
            # Services report healthy before their consumer groups have joined and the
            # broker's JIT has warmed up; these messages pay for that, unmeasured.
            warmup = Phase("warm-up", "warmup", None, 0, config.warmup)
            ticker = asyncio.create_task(show_progress(collector, warmup, config.progress))
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
            ticker = asyncio.create_task(show_progress(collector, phase, config.progress))
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
                say(f"{phase.name}: not every message finished within the drain timeout")
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
    say(f"working in {home}")
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
            pki_dir=home / "pki",
        )
        bootstrap = config.bootstrap
        if bootstrap is None:
            kafka = LocalKafka(cluster, progress=say)
            cleanup.callback(kafka.stop)
            kafka.start()
            bootstrap = kafka.bootstrap
            pids["kafka"] = next(n.pid for n in kafka.status() if n.pid is not None)
        peers = Peers()
        cleanup.callback(peers.stop)
        port_base, specs = service_ports()
        env = service_env(
            home,
            bootstrap,
            kafka_port=cluster.base_port,
            port_base=port_base,
            peers=peers,
            libs=settings.kafka_libs,
            notify_concurrency=config.notify_concurrency,
        )
        bench_settings = Settings.from_env(env)
        algorithm = issue_identities(bench_settings, config.senders)
        asyncio.run(load_register(bench_settings, config))
        cleanup.callback(supervisor.stop_processes, bench_settings, say)
        with environment(env):  # start_processes hands os.environ to the services
            supervisor.start_processes(bench_settings, specs, say)
        for spec in specs:
            info = supervisor.read_run_file(bench_settings, spec.name)
            if info:
                pids[spec.name] = int(info["pid"])
        pids |= {"bench": os.getpid(), "peers": peers.pid}
        if config.big_document_mb:
            figures = asyncio.run(big.big_document(bench_settings, config, pids))
            big.write(figures, config.results_dir, report.result_stem(started_at))
            failed = False
            print(big.render(figures), flush=True)
            return 0 if figures["as_expected"] else 1
        metrics_urls = {s.name: f"http://127.0.0.1:{s.port}" for s in specs}
        sampler = Sampler(pids, metrics_urls)
        sampler.start()
        cleanup.callback(sampler.stop)
        outcome = asyncio.run(drive(bench_settings, config, sampler))
        sampler.stop()
        peer_counts = peers.counts()
        refused = refused_events(metrics_urls)
        supervisor.stop_processes(bench_settings, say)
        ceilings = kafka_ceilings(
            java,
            bench_settings,
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
        result["refused_events"] = refused
        result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        result["ratios"] = report.ratios(result)
        result["targets"] = report.targets(result)
        report.write(result, config.results_dir, report.result_stem(started_at))
        failed = False
    print(report.render(result), flush=True)
    return 0 if outcome.complete else 1


def _remove_home(home: Path, keep: Any) -> None:
    if keep():
        say(f"kept {home} (logs under logs/)")
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
    add(
        "--big-document-mb",
        type=float,
        metavar="N",
        help="instead of the load phases: one N MB document through the SDK and the blob "
        "store, with each process's peak RSS (1000 for the 1 GB run)",
    )


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

"""The ceilings DP2 is compared with, measured on the same machine as the run.

Why it exists: a DP2 rate means little alone; next to Kafka's own ProducerPerformance,
ConsumerPerformance and EndToEndLatency (jars in deploy/kafka/libs) for the same record
size, and one core's verify rate of the signature algorithm, it shows how much of what
the broker and the CPU allow the pipeline gets.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from brokers.bench import crypto
from brokers.bench.config import BenchError, say
from brokers.runtime.kafka import ensure_topics, new_admin
from brokers.runtime.settings import KafkaAccess, Settings
from brokers.stack.access import ADMIN_IDENTITY
from brokers.stack.kafka import write_client_properties
from schemas.vocabulary import TopicSpec


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
    admin = settings.kafka_as(ADMIN_IDENTITY)
    asyncio.run(ensure_topics(admin, specs))
    # Same TLS and principal checks as DP2's own clients pay: a fair ceiling.
    client = f"--command-config {write_client_properties(admin, logs / 'client')}"
    result: dict[str, Any] = {}
    try:
        say(f"ceiling: ProducerPerformance, {records} records of {record_size} bytes, acks=all")
        out = _java_tool(
            java,
            settings,
            "org.apache.kafka.tools.ProducerPerformance",
            f"--bootstrap-server {bootstrap} --topic {topic} --num-records {records}"
            f" --record-size {record_size} --throughput -1 --command-property acks=all"
            f" {client}".split(),
            logs,
        )
        result["kafka_producer"] = {"record_size": record_size, **parse_producer(out)}
        say(f"ceiling: ConsumerPerformance, {records} records")
        out = _java_tool(
            java,
            settings,
            "org.apache.kafka.tools.ConsumerPerformance",
            f"--bootstrap-server {bootstrap} --topic {topic} --num-records {records}"
            f" --group dp2-bench-perf-{uuid.uuid4().hex[:8]} --timeout 60000 {client}".split(),
            logs,
        )
        result["kafka_consumer"] = parse_consumer(out)
        hops = max(100, min(records // 50, 1000))
        say(f"ceiling: EndToEndLatency, {hops} records one at a time")
        out = _java_tool(
            java,
            settings,
            "org.apache.kafka.tools.EndToEndLatency",
            f"--bootstrap-server {bootstrap} --topic {hop} --num-records {hops}"
            f" --producer-acks all --record-size {record_size} {client}".split(),
            logs,
        )
        result["kafka_hop_latency"] = {"records": hops, **parse_latency(out)}
    except BenchError as exc:
        result.setdefault("kafka_producer", {"record_size": record_size, "error": exc.message})
        result.setdefault("kafka_consumer", {"error": exc.message})
        result.setdefault("kafka_hop_latency", {"error": exc.message})
    finally:
        asyncio.run(_delete_topics(admin, [topic, hop]))
    return result


async def _delete_topics(access: KafkaAccess, topics: list[str]) -> None:
    admin = new_admin(access)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    except KafkaError:
        pass  # the perf topic is only litter in a broker the bench started itself
    finally:
        await admin.close()


def verify_ceiling(algorithm: str, iterations: int) -> dict[str, Any]:
    """One core's verify rate of ``algorithm`` (brokers.bench.crypto, best of 5 rounds)."""
    say(f"ceiling: crypto micro-benchmark, {iterations} iterations")
    measured = crypto.measure(iterations)
    verify_us = measured["verify"][algorithm]
    return {
        "algorithm": algorithm,
        "verify_us": round(verify_us, 2),
        "per_s": round(1e6 / verify_us, 1),
        "signing_input_us": round(measured["envelope"]["signing input (Avro encode)"], 2),
        "bench_crypto": measured,
    }

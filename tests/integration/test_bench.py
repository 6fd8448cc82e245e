"""``python -m brokers.bench --quick``: the benchmark harness as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_quick_bench_writes_a_complete_result(tmp_path: Path) -> None:
    """A quick run on its own Kafka and services delivers and notifies all 200 messages,
    then writes one JSON result with every figure (throughput, per-stage latency, CPU
    and RSS per service, ceilings and DP2's ratio to each, targets) and its PNG plot."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DP2_")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "brokers.bench",
            "--quick",
            "--no-progress",
            "--results-dir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,  # a loaded CI machine; a quick run takes about a minute
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    [result_file] = tmp_path.glob("bench-*.json")
    result = json.loads(result_file.read_text())

    assert {
        "git",
        "machine",
        "parameters",
        "sender_cost",
        "phases",
        "ceilings",
        "ratios",
        "targets",
        "series",
        "samples",
    } <= set(result)
    assert result["complete"] is True
    assert result["git"]["revision"] and result["machine"]["cpu_count"] >= 1
    assert result["sender_cost"]["seal_sign_us"]["p50"] > 0

    [phase] = result["phases"]
    assert phase["messages"] == 200
    assert phase["counts"]["DELIVERED"] == 200, phase["failures"]
    assert phase["counts"]["NOTIFIED"] == 200, phase["failures"]
    assert phase["throughput_per_s"]["DELIVERED"] > 0
    for stage in ("ACCEPTED", "ROUTED", "DELIVERED", "NOTIFIED"):
        latency = phase["latency_ms"][stage]
        assert 0 < latency["p50"] <= latency["p99"] <= latency["max"], stage
    services = phase["services"]
    assert {"tracing", "validator", "router", "notifier", "kafka"} <= set(services)
    assert all(services[name]["rss_peak_mb"] > 0 for name in services)
    sent = 200 + result["parameters"]["warmup"]
    assert sum(result["peers"].values()) == sent, "each letter notified once, warm-up included"
    # Every event of the load is believed: a SUBMITTED that names no sender (the bench
    # once sent those) is quarantined by tracing, and its trace has no SUBMITTED.
    assert {"tracing", "notifier"} <= set(result["refused_events"])
    assert not any(result["refused_events"].values()), result["refused_events"]

    assert result["ceilings"]["kafka_producer"]["records_per_s"] > 0
    assert result["ceilings"]["kafka_consumer"]["records_per_s"] > 0
    assert result["ceilings"]["kafka_hop_latency"]["p99_ms"] >= 0
    assert result["ceilings"]["verify"]["per_s"] > 0
    for ratio in (
        "delivered_vs_kafka_producer",
        "delivered_vs_kafka_consumer",
        "validator_vs_verify_ceiling",
        "validator_cpu_vs_verify",
    ):
        assert result["ratios"][ratio] > 0, ratio
    by_name = {t["target"]: t for t in result["targets"]}
    assert len(by_name) == 6
    assert by_name["every letter notified exactly once"]["status"] == "met"
    assert by_name["CPU per letter, DP2's services and Kafka"]["measured"] > 0

    plot = Path(result["plot_path"])
    assert plot.parent == tmp_path and plot.read_bytes().startswith(b"\x89PNG")
    assert "targets (issue 18)" in run.stdout and str(result_file) in run.stdout

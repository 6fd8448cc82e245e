"""The figures of one phase, and the time series of a run, from what was collected.

Why it exists: turning the Collector's timestamps and the Sampler's samples into
throughput, latency percentiles and per-process CPU/RSS/lag is pure arithmetic that
is easier to check on its own than inside the code that drives the load.
"""

from __future__ import annotations

import os
from typing import Any

from brokers.bench import report
from brokers.bench.config import MACHINE, Phase
from brokers.bench.load import Collector
from brokers.bench.stack import Sampler


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

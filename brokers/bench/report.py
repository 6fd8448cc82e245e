"""Figures, targets, text report, JSON file and plot of ``dp2 bench`` (the run: bench/run.py).

Pure functions over the result dictionary that brokers/bench/run.py assembles, so the
report can be re-rendered from a stored JSON file::

    python -c "import json,sys; from brokers.bench.report import render; \
print(render(json.load(open(sys.argv[1]))))" bench/results/bench-20250101T120000Z.json

Targets (issue 18, which sharpened issue 8's) are reported as measured against target,
never asserted: a run on a shared laptop is evidence, not a gate.

Why one module over 500 lines: figures, targets, text and plot all read the same
result dictionary, and a reader checking what a printed figure means finds its
computation and its rendering side by side.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from brokers.runtime.settings import PROJECT_ROOT

#: The stages every digital letter passes, in order (lifecycle states).
STAGES = ("ACCEPTED", "ROUTED", "DELIVERED", "NOTIFIED")
#: Processes measured that are not DP2 services (the RSS target is for services only).
NOT_SERVICES = frozenset({"kafka", "bench", "peers"})

TARGET_DELIVERED_PER_S = 1000.0  # closed loop, submit -> DELIVERED
TARGET_NOTIFIED_SHARE = 0.90  # NOTIFIED/s as a share of DELIVERED/s, same phase
TARGET_P99_MS = 100.0
TARGET_P99_AT_RATE = 500.0
TARGET_CPU_US_PER_LETTER = 2000.0  # DP2's services and Kafka together
TARGET_RSS_MB = 200.0
TARGET_RSS_GROWTH = 0.10  # "flat": the soak's last-minute peak within 10% of its first
TARGET_SOAK_S = 600.0


# --- figures ---------------------------------------------------------------------------
def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """count, mean, p50, p95, p99 and max of ``values`` (nearest rank); None when empty."""
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return round(ordered[min(n - 1, max(0, math.ceil(q * n) - 1))], 3)

    return {
        "count": n,
        "mean": round(sum(ordered) / n, 3),
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": round(ordered[-1], 3),
    }


def _div(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 4)


def headline(result: dict[str, Any]) -> dict[str, Any] | None:
    """The phase the throughput figures speak of: the closed loop, else the fastest phase."""
    phases: list[dict[str, Any]] = result.get("phases", [])
    pool = [p for p in phases if p["mode"] == "closed"] or phases
    if not pool:
        return None
    return max(pool, key=lambda p: p["throughput_per_s"].get("DELIVERED") or 0.0)


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    """DP2's throughput as a share of each ceiling measured in the same run."""
    phase = headline(result)
    ceilings = result.get("ceilings", {})
    if phase is None:
        return {}
    delivered = phase["throughput_per_s"].get("DELIVERED")
    accepted = phase["throughput_per_s"].get("ACCEPTED")
    verify = ceilings.get("verify", {})
    validator = phase["services"].get("validator", {})
    return {
        "delivered_vs_kafka_producer": _div(
            delivered, ceilings.get("kafka_producer", {}).get("records_per_s")
        ),
        "delivered_vs_kafka_consumer": _div(
            delivered, ceilings.get("kafka_consumer", {}).get("records_per_s")
        ),
        "validator_vs_verify_ceiling": _div(accepted, verify.get("per_s")),
        # How close the validator's own CPU per message comes to the bare verify cost:
        # its rate per CPU-second against the ceiling, whatever else shares the cores.
        "validator_cpu_vs_verify": _div(verify.get("verify_us"), validator.get("cpu_us_per_msg")),
    }


def _status(measured: float | None, target: float, *, at_least: bool) -> str:
    if measured is None:
        return "not measured"
    return "met" if (measured >= target if at_least else measured <= target) else "not met"


def _target(
    name: str, goal: str, measured: float | None, unit: str, *, status: str, note: str = ""
) -> dict[str, Any]:
    return {
        "target": name,
        "goal": goal,
        "measured": measured,
        "unit": unit,
        "status": status,
        "note": note,
    }


def dp2_cpu_us_per_letter(phase: dict[str, Any]) -> float | None:
    """CPU µs per letter of DP2's services and Kafka together (the load generator and
    the SMTP/SMS stand-ins counted apart, as in production they are not ours)."""
    used = [
        s["cpu_us_per_msg"]
        for name, s in phase["services"].items()
        if name not in ("bench", "peers") and s.get("cpu_us_per_msg") is not None
    ]
    return round(sum(used), 1) if used else None


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 18 with what this run measured for it (never an assertion)."""
    phases: list[dict[str, Any]] = result.get("phases", [])
    phase = headline(result)
    where = f"phase {phase['name']}" if phase else ""
    closed = phase is not None and phase["mode"] == "closed"
    found: list[dict[str, Any]] = []

    delivered = phase["throughput_per_s"].get("DELIVERED") if phase else None
    found.append(
        _target(
            "closed loop submit->DELIVERED",
            f">= {TARGET_DELIVERED_PER_S:,.0f} msg/s",
            delivered,
            "msg/s",
            status=_status(delivered, TARGET_DELIVERED_PER_S, at_least=True)
            if closed
            else "not measured",
            note=where if closed else "run without --rate for the closed loop",
        )
    )

    notified = phase["throughput_per_s"].get("NOTIFIED") if phase else None
    share = _div(notified, delivered)
    found.append(
        _target(
            "NOTIFIED/s as a share of DELIVERED/s",
            f">= {TARGET_NOTIFIED_SHARE:.0%}",
            None if share is None else round(share * 100, 1),
            "%",
            status=_status(share, TARGET_NOTIFIED_SHARE, at_least=True),
            note=where,
        )
    )

    peers = result.get("peers")
    letters = sum(p["messages"] for p in phases) + result.get("parameters", {}).get("warmup", 0)
    sent = sum(peers.values()) if peers else None
    found.append(
        _target(
            "every letter notified exactly once",
            f"= {letters:,} sent",
            sent,
            "sent",
            status="not measured" if sent is None else ("met" if sent == letters else "not met"),
            note="notifications the SMTP and SMS peers received, warm-up included",
        )
    )

    at_rate = [
        p for p in phases if p["mode"] in ("rate", "soak") and p["rate"] == TARGET_P99_AT_RATE
    ]
    p99 = at_rate[0]["latency_ms"]["DELIVERED"]["p99"] if at_rate else None
    found.append(
        _target(
            f"p99 submit->DELIVERED at {TARGET_P99_AT_RATE:.0f} msg/s",
            f"<= {TARGET_P99_MS:.0f} ms",
            p99,
            "ms",
            status=_status(p99, TARGET_P99_MS, at_least=False),
            note="" if at_rate else f"run with --rate {TARGET_P99_AT_RATE:.0f}",
        )
    )

    cpu = dp2_cpu_us_per_letter(phase) if phase else None
    found.append(
        _target(
            "CPU per letter, DP2's services and Kafka",
            f"<= {TARGET_CPU_US_PER_LETTER:,.0f} us",
            cpu,
            "us",
            status=_status(cpu, TARGET_CPU_US_PER_LETTER, at_least=False),
            note=where,
        )
    )

    soaks = [p for p in phases if p["mode"] == "soak"]
    pool = soaks or phases
    services = [
        s
        for p in pool
        for name, s in p["services"].items()
        if name not in NOT_SERVICES and s.get("rss_peak_mb") is not None
    ]
    worst = max((s["rss_peak_mb"] for s in services), default=None)
    growths = [
        (s["rss_last_min_mb"] - s["rss_first_min_mb"]) / s["rss_first_min_mb"]
        for s in services
        if s.get("rss_first_min_mb") and s.get("rss_last_min_mb") is not None
    ]
    growth = max(growths, default=None)
    if soaks:
        duration = soaks[0]["wall_s"]
        flat = growth is not None and growth <= TARGET_RSS_GROWTH
        status = (
            "met"
            if _status(worst, TARGET_RSS_MB, at_least=False) == "met" and flat
            else ("not met")
        )
        note = f"soak of {duration:.0f} s" + (
            "" if duration >= TARGET_SOAK_S else f" (shorter than {TARGET_SOAK_S:.0f} s)"
        )
        if growth is not None:
            note += f"; largest growth first->last minute {growth:+.0%}"
    else:
        status = "not measured"
        note = f"peak of this run; the target needs --soak {TARGET_SOAK_S:.0f}"
    found.append(
        _target(
            "peak RSS of every DP2 service, flat",
            f"<= {TARGET_RSS_MB:.0f} MB, +{TARGET_RSS_GROWTH:.0%}",
            worst,
            "MB",
            status=status,
            note=note,
        )
    )
    return found


# --- facts about the run ---------------------------------------------------------------
def git_revision(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """HEAD's revision and whether tracked files differ from it (read-only git)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(  # noqa: S603 - fixed argv
                ["git", *args],  # noqa: S607 - git from PATH, like a developer's shell
                cwd=root,
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    revision = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"revision": revision, "dirty": None if status is None else bool(status)}


def machine_facts(java: str | None, kafka_version: str | None) -> dict[str, Any]:
    """CPU, memory, load and the versions that shape the figures."""
    import psutil  # noqa: PLC0415 - the bench extra; dp2's other commands work without it

    model = None
    with_cpuinfo = Path("/proc/cpuinfo")
    if with_cpuinfo.exists():
        match = re.search(r"^model name\s*:\s*(.+)$", with_cpuinfo.read_text(), re.MULTILINE)
        model = match.group(1).strip() if match else None
    java_version = None
    if java:
        try:
            out = subprocess.run(  # noqa: S603 - the JDK kafka_runner found
                [java, "-version"], capture_output=True, text=True, timeout=30, check=False
            )
            java_version = (out.stderr or out.stdout).splitlines()[0].strip()
        except (OSError, subprocess.TimeoutExpired, IndexError):
            java_version = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "niceness": os.nice(0),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "java": java_version,
        "kafka": kafka_version,
    }


# --- text report -----------------------------------------------------------------------
def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _stage_rows(phase: dict[str, Any]) -> list[str]:
    rows = [
        f"  {'stage':<22}{'reached':>9}{'msg/s':>10}{'p50 ms':>10}"
        f"{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}"
    ]
    latency = phase["latency_ms"]
    names = [("receipt (acks=all)", "RECEIPT"), *((f"submit->{s}", s) for s in STAGES)]
    names += [("  NOTIFIED by e-mail", "NOTIFIED_EMAIL"), ("  NOTIFIED by SMS", "NOTIFIED_SMS")]
    for label, key in names:
        stats = latency.get(key)
        if stats is None:
            continue
        rate = phase["throughput_per_s"].get(key)
        rows.append(
            f"  {label:<22}{stats['count']:>9}{_num(rate):>10}{_num(stats['p50'], 1):>10}"
            f"{_num(stats['p95'], 1):>10}{_num(stats['p99'], 1):>10}{_num(stats['max'], 1):>10}"
        )
    return rows


def _service_rows(phase: dict[str, Any]) -> list[str]:
    rows = [
        f"  {'process':<22}{'CPU s':>8}{'us/msg':>9}{'% core':>8}{'peak RSS MB':>13}"
        f"{'RSS 1st/last min':>18}{'max lag':>9}"
    ]
    for name, s in phase["services"].items():
        label = {"bench": "bench (load gen.)", "peers": "peers (SMTP+SMS)"}.get(name, name)
        first_last = f"{_num(s.get('rss_first_min_mb'))}/{_num(s.get('rss_last_min_mb'))}"
        lag = phase["lag_max"].get(name)
        rows.append(
            f"  {label:<22}{_num(s.get('cpu_s'), 1):>8}{_num(s.get('cpu_us_per_msg')):>9}"
            f"{_num(s.get('cpu_share_pct')):>8}{_num(s.get('rss_peak_mb')):>13}"
            f"{first_last:>18}{_num(lag):>9}"
        )
    services = phase["services"].values()
    rows.append(
        f"  {'all of the above':<22}{_num(sum(s.get('cpu_s') or 0 for s in services), 1):>8}"
        f"{_num(sum(s.get('cpu_us_per_msg') or 0 for s in services)):>9}"
        f"{_num(sum(s.get('cpu_share_pct') or 0 for s in services)):>8}"
    )
    return rows


def _phase_lines(phase: dict[str, Any]) -> list[str]:
    counts = phase["counts"]
    offered = f"offered {phase['rate']:,.0f} msg/s, " if phase["rate"] else ""
    lines = [
        "",
        f"phase {phase['name']}: {phase['messages']:,} messages, {offered}"
        f"submitted at {_num(phase['submit_rate_per_s'])} msg/s over {phase['submit_s']:.1f} s, "
        f"wall {phase['wall_s']:.1f} s" + ("" if phase["complete"] else "  ** INCOMPLETE **"),
    ]
    if phase.get("schedule_late_max_ms") is not None:
        lines.append(f"  open loop: latest submit {phase['schedule_late_max_ms']:.1f} ms behind")
    lines += _stage_rows(phase)
    failures = phase["failures"]
    lines.append(
        "  failures: "
        + (", ".join(f"{k} x{v}" for k, v in failures.items()) if failures else "none")
        + f"; not DELIVERED: {phase['messages'] - counts.get('DELIVERED', 0)}"
        + f", not NOTIFIED: {phase['messages'] - counts.get('NOTIFIED', 0)}"
    )
    lines += _service_rows(phase)
    machine = phase.get("machine")
    if machine:
        lines.append(
            f"  machine: {machine['busy_pct_of_all_cores']:.0f}% of all cores busy; processes "
            f"outside this benchmark used {machine['others_cpu_s']:.1f} CPU s "
            f"({machine['others_pct_of_a_core']:.0f}% of a core)"
        )
    return lines


def _ceiling_lines(result: dict[str, Any]) -> list[str]:
    ceilings = result.get("ceilings", {})
    producer = ceilings.get("kafka_producer", {})
    consumer = ceilings.get("kafka_consumer", {})
    verify = ceilings.get("verify", {})
    hop = ceilings.get("kafka_hop_latency", {})
    r = result.get("ratios", {})
    size = producer.get("record_size")

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    return [
        "",
        "ceilings (same machine, same run) and DP2 as a share of them",
        f"  Kafka ProducerPerformance  {producer.get('records', '-')} x {size} B, acks=all: "
        f"{_num(producer.get('records_per_s'))} rec/s, p99 {_num(producer.get('p99_ms'))} ms"
        f"{'  (' + producer['error'] + ')' if producer.get('error') else ''}"
        f"   DP2 delivered/s = {pct(r.get('delivered_vs_kafka_producer'))}",
        f"  Kafka ConsumerPerformance  {consumer.get('records', '-')} records: "
        f"{_num(consumer.get('records_per_s'))} rec/s (fetch), "
        f"{_num(consumer.get('records_per_s_total'))} rec/s with the group join"
        f"{'  (' + consumer['error'] + ')' if consumer.get('error') else ''}"
        f"   DP2 delivered/s = {pct(r.get('delivered_vs_kafka_consumer'))}",
        f"  Kafka EndToEndLatency      {hop.get('records', '-')} records one at a time, one hop: "
        f"p50 {_num(hop.get('p50_ms'))} ms, p99 {_num(hop.get('p99_ms'))} ms"
        f"{'  (' + hop['error'] + ')' if hop.get('error') else ''}"
        "   (submit->DELIVERED crosses 4 hops)",
        f"  verify {verify.get('algorithm')} on one core: {_num(verify.get('verify_us'), 1)} us"
        f" = {_num(verify.get('per_s'))} /s (+{_num(verify.get('signing_input_us'), 1)} us to"
        f" re-encode the signing input)   validator = {pct(r.get('validator_vs_verify_ceiling'))}"
        f", per validator CPU-second = {pct(r.get('validator_cpu_vs_verify'))}",
        *_event_signature_lines(verify.get("bench_crypto", {}).get("events", {})),
    ]


def _event_signature_lines(events: dict[str, float]) -> list[str]:
    """The lifecycle event's signature per event, alone and in a batch (if measured)."""
    if not events:
        return []
    figures = "; ".join(f"{step} {_num(us, 1)} us" for step, us in events.items())
    return [f"  ECDSA P-256 per lifecycle event: {figures}"]


def _rate_table(result: dict[str, Any]) -> list[str]:
    phases = [p for p in result["phases"] if p["mode"] == "rate"]
    if len(phases) < 2:
        return []
    lines = [
        "",
        "latency against load (submit->DELIVERED)",
        f"  {'offered':>9}{'delivered/s':>13}{'notified/s':>12}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'p99 ms':>9}{'max ms':>9}",
    ]
    for p in phases:
        d = p["latency_ms"]["DELIVERED"]
        lines.append(
            f"  {p['rate']:>9,.0f}{_num(p['throughput_per_s'].get('DELIVERED')):>13}"
            f"{_num(p['throughput_per_s'].get('NOTIFIED')):>12}{_num(d['p50'], 1):>9}"
            f"{_num(d['p95'], 1):>9}{_num(d['p99'], 1):>9}{_num(d['max'], 1):>9}"
        )
    return lines


def render(result: dict[str, Any]) -> str:
    """The human report: parameters, sender cost, each phase, ceilings, targets."""
    machine = result.get("machine", {})
    git = result.get("git", {})
    params = result.get("parameters", {})
    cost = result.get("sender_cost", {})
    lines = [
        f"DP2 bench {result.get('started_at', '')}  rev {str(git.get('revision'))[:12]}"
        + (" (dirty)" if git.get("dirty") else ""),
        f"machine: {machine.get('cpu_count')} CPUs ({machine.get('cpu_model')}), "
        f"{machine.get('memory_gb')} GB, load {machine.get('load_average')} at start, "
        f"nice {machine.get('niceness')}; Python {machine.get('python')}; "
        f"{machine.get('java')}; Kafka {machine.get('kafka')}",
        f"parameters: {params.get('senders')} senders x {params.get('inflight')} in flight "
        f"(closed loop), {params.get('warmup')} warm-up messages, {params.get('recipients')} "
        "recipients "
        f"({params.get('sms_share', 0):.0%} SMS, the rest e-mail), "
        f"{params.get('document_size')}-byte document, {params.get('signature_algorithm')}, "
        f"digest off, notifier concurrency {params.get('notify_concurrency', 1)}, "
        f"broker {params.get('broker')}",
        "",
        "sender cost per message (before the timed phase; on vendors' machines in production)",
        f"  seal+sign  p50 {_num(cost.get('seal_sign_us', {}).get('p50'))} us, "
        f"mean {_num(cost.get('seal_sign_us', {}).get('mean'))} us; "
        f"encode p50 {_num(cost.get('encode_us', {}).get('p50'))} us; "
        f"record {_num(cost.get('record_bytes_mean'))} bytes",
    ]
    for phase in result.get("phases", []):
        lines += _phase_lines(phase)
    lines += _rate_table(result)
    lines += _ceiling_lines(result)
    peers = result.get("peers", {})
    if peers:
        lines += ["", f"peers received: {peers.get('emails')} e-mails, {peers.get('sms')} SMS"]
    refused = result.get("refused_events")
    if refused is not None:
        counts = ", ".join(f"{name} {count:,.0f}" for name, count in sorted(refused.items()))
        warning = "" if not any(refused.values()) else "  <- the load or a service is wrong"
        lines.append(f"lifecycle events refused by the authority table: {counts}{warning}")
    lines += [
        "",
        "targets (issue 18) - measured vs target, nothing asserted",
        f"  {'target':<44}{'goal':>14}{'measured':>14}  status",
    ]
    for t in result.get("targets", []):
        measured = "-" if t["measured"] is None else f"{t['measured']:,.1f} {t['unit']}"
        note = f"  ({t['note']})" if t["note"] else ""
        lines.append(f"  {t['target']:<44}{t['goal']:>14}{measured:>14}  {t['status']}{note}")
    if result.get("json_path"):
        lines += ["", f"results: {result['json_path']}", f"plot:    {result.get('plot_path')}"]
    return "\n".join(lines)


# --- files -----------------------------------------------------------------------------
def result_stem(started: datetime) -> str:
    return "bench-" + started.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def write(result: dict[str, Any], results_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.png`` into ``results_dir``; returns both paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{stem}.json"
    png_path = results_dir / f"{stem}.png"
    result["json_path"] = str(json_path)
    result["plot_path"] = str(png_path)
    plot(result, png_path)
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return json_path, png_path


def plot(result: dict[str, Any], path: Path) -> None:
    """Throughput and latency against load (--rate), else throughput, lag and RSS over time."""
    import matplotlib  # noqa: PLC0415 - the bench extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rate_phases = [p for p in result["phases"] if p["mode"] == "rate"]
    if len(rate_phases) >= 2:
        figure, axes = plt.subplots(3, 1, figsize=(9, 11))
        offered = [p["rate"] for p in rate_phases]
        top, middle = axes[0], axes[1]
        top.plot(offered, offered, ":", color="grey", label="offered")
        for stage in ("DELIVERED", "NOTIFIED"):
            top.plot(
                offered,
                [p["throughput_per_s"].get(stage) or 0 for p in rate_phases],
                "o-",
                label=f"submit->{stage}",
            )
        top.set(xlabel="offered load (msg/s)", ylabel="achieved (msg/s)", title="Throughput")
        top.legend()
        for q in ("p50", "p95", "p99"):
            middle.plot(
                offered,
                [p["latency_ms"]["DELIVERED"][q] or 0 for p in rate_phases],
                "o-",
                label=f"{q} submit->DELIVERED",
            )
        middle.axhline(TARGET_P99_MS, ls="--", color="red", label="p99 target")
        middle.set(xlabel="offered load (msg/s)", ylabel="ms", title="Latency", yscale="log")
        middle.legend()
        _over_time(axes[2], result, "lag", "consumer lag (records)")
        axes[2].set_xlabel("seconds since the first submit")
    else:
        figure, axes = plt.subplots(3, 1, figsize=(9, 11), sharex=True)
        series = result.get("series", {})
        for key in ("submitted", "DELIVERED", "NOTIFIED"):
            axes[0].plot(series.get("t", []), series.get(key, []), label=key)
        axes[0].set(ylabel="messages per second", title="Throughput over time")
        axes[0].legend()
        _over_time(axes[1], result, "lag", "consumer lag (records)")
        _over_time(axes[2], result, "rss_mb", "RSS (MB)")
        axes[2].axhline(TARGET_RSS_MB, ls="--", color="red", label="RSS target")
        axes[2].legend(fontsize="small")
        axes[2].set_xlabel("seconds since the first submit")
    figure.suptitle(f"DP2 bench {result.get('started_at', '')}")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _over_time(axis: Any, result: dict[str, Any], key: str, label: str) -> None:
    samples = result.get("samples", {})
    times = samples.get("lag_t" if key == "lag" else "t", [])
    for name, values in samples.get(key, {}).items():
        if key == "rss_mb" and name == "kafka":
            continue  # a JVM with a fixed heap; its own scale would flatten the services
        axis.plot(times, [v if v is not None else float("nan") for v in values], label=name)
    axis.set(ylabel=label, title=label[0].upper() + label[1:] + " per process")
    if samples.get(key):
        axis.legend(fontsize="small")

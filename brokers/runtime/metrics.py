"""The metrics every worker exports, registered in an injected registry (never the global one)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)


class ServiceMetrics:
    """The metrics every worker exports, registered in an injected registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records_in = Counter(
            "dp2_records_in", "Records consumed", ["service", "topic"], registry=registry
        )
        self.records_out = Counter(
            "dp2_records_out", "Records produced", ["service", "topic"], registry=registry
        )
        self.rejections = Counter(
            "dp2_rejections", "Messages rejected", ["service", "reason"], registry=registry
        )
        self.deadletters = Counter(
            "dp2_deadletters",
            "Records sent to the dead-letter topic",
            ["service", "reason"],
            registry=registry,
        )
        self.processing = Histogram(
            "dp2_processing_seconds",
            "Handler time per record",
            ["service"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
        )
        self.periodic_failures = Counter(
            "dp2_periodic_failures",
            "Failed steps of periodic tasks (each is retried after a back-off)",
            ["task"],
            registry=registry,
        )
        self.lag = Gauge(
            "dp2_consumer_lag",
            "Records not yet consumed",
            ["service", "topic", "partition"],
            registry=registry,
        )

"""What every module of the benchmark shares: its configuration, its error and its voice.

Why it exists: the load generator, the stack and the figures all read the same frozen
``Config`` and ``Phase`` and report through the same ``BenchError`` and ``[bench]``
lines; kept apart from brokers/bench/run.py so those modules need not import the
command line (which imports them).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import Dp2Error

PROVIDER = "benchpost"
MACHINE = "machine"  # in CPU figures: every busy CPU second of the machine


def say(text: str) -> None:
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
    #: ``--big-document-mb``: instead of the load phases, one document of this size
    #: (brokers.bench.big).
    big_document_mb: float | None = None

    @property
    def total(self) -> int:
        return self.warmup + sum(p.count for p in self.phases)

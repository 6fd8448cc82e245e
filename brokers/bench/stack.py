"""The DP2 stack under test, and the sampling of what each of its processes costs.

Why it exists: a benchmark figure is only comparable when the stack is set up the same
way every time, so this module holds how the bench configures and seeds the services
it starts (environment, ports, PKI, contact register) and the ``Sampler`` that reads
each process's CPU seconds and RSS and each service's consumer lag while it runs.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from brokers.bench.config import MACHINE, PROVIDER, BenchError, Config
from brokers.bench.load import contact_rows, sender_names
from brokers.bench.peers import Peers
from brokers.contacts.records import record_from_row
from brokers.contacts.register import publish_contacts
from brokers.runtime.settings import Settings
from brokers.security import signing
from brokers.security.pki import Pki
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from brokers.stack import supervisor
from brokers.stack.access import REGISTER_IDENTITY
from brokers.stack.kafka import port_is_free
from schemas.vocabulary import PRINT_PROVIDER


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
    return _scrape_sum(url, ("dp2_consumer_lag{",))


#: Counters of lifecycle events a service refused (the authority table did not believe
#: them). A bench run whose load is honest leaves every one at zero.
REFUSAL_COUNTERS = ("dp2_quarantined_events_total{", "dp2_notifier_unbelieved_events_total{")


def refused_events(metrics_urls: dict[str, str]) -> dict[str, float]:
    """Lifecycle events each service refused so far (services that answered)."""
    refused = {}
    for name, url in metrics_urls.items():
        count = _scrape_sum(url, REFUSAL_COUNTERS, timeout_s=5.0)
        if count is not None:
            refused[name] = count
    return refused


def _scrape_sum(url: str, prefixes: tuple[str, ...], timeout_s: float = 0.8) -> float | None:
    """The sum of the samples whose line starts with one of ``prefixes``, from /metrics."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout_s) as response:  # noqa: S310
            text = response.read().decode()
    except OSError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefixes)
    )


# --- the stack under test ------------------------------------------------------------
@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ as ``env`` for a while: start_processes hands it to the services."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def service_ports() -> tuple[int, list[supervisor.ServiceSpec]]:
    for _ in range(200):
        base = 30000 + int.from_bytes(os.urandom(2), "big") % 25000
        specs = supervisor.stack_services([PROVIDER], base)
        if all(port_is_free(s.port) for s in specs):
            return base, specs
    raise BenchError("no free range of HTTP ports for the services")


def service_env(
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
            # The bench's SMS peer has no limit of its own; a provider's 10/s default
            # would measure that limit, not DP2 (10% of 150 letters/s is 15 SMS/s).
            "DP2_SMS_RATE_PER_S": "1000",
            "DP2_DIGEST_WINDOW_S": "0",
            "DP2_NOTIFY_CONCURRENCY": str(notify_concurrency),
            "DP2_LOG_FORMAT": "json",
        }
    )
    return env


def issue_identities(settings: Settings, senders: int) -> str:
    """CA, sender identities and providers; returns the senders' signature algorithm."""
    pki = Pki(settings.pki_dir)
    pki.init()
    identity = None
    for name, cvr in sender_names(senders):
        identity = pki.issue_sender(cvr, name)
    for provider in (PROVIDER, PRINT_PROVIDER):
        pki.issue_provider(provider)
    assert identity is not None  # noqa: S101 - at least one sender
    return signing.signature_algorithm(identity.private_key)


async def load_register(settings: Settings, config: Config) -> None:
    await supervisor.prepare_kafka(settings, [PROVIDER])  # service identities, topics, ACLs
    pseudonyms = Pseudonymizer(pseudonym_key(settings.home))
    rows = contact_rows(config.recipients, config.sms_share)
    records = [record_from_row(row, n, pseudonyms) for n, row in enumerate(rows, start=1)]
    await publish_contacts(settings.kafka_as(REGISTER_IDENTITY), records)

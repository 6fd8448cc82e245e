"""Supervising the stack's processes: ``dp2 up`` starts them, ``dp2 down`` stops them.

Why each service is its own process: one can be killed, restarted and scaled like
in production, each with ``/healthz`` and ``/metrics`` on a fixed port.

| service | port | consumes | produces |
|---|---|---|---|
| tracing | 8470 | dp2.lifecycle, dp2.deadletter | HTTP API, dashboard |
| validator | 8471 | dp2.submitted | dp2.accepted, dp2.lifecycle, dp2.deadletter |
| router | 8472 | dp2.accepted, dp2.commands | dp2.deliver.*, dp2.print, dp2.scheduled |
| mailbox-<id> | 8473+ | dp2.deliver.<id> | dp2.lifecycle (DELIVERED) |
| notifier | after the mailboxes | dp2.lifecycle (DELIVERED) | SMS, e-mail; NOTIFIED |
| capture | next (SMTP: base + 25) | e-mail and SMS from the notifier | kept locally |
| connector-<name> | ``port`` or next | its delivery topic, its own | its work |

Connectors are whatever is installed in the ``dp2.connectors`` entry-point group
and configured in ``$DP2_HOME/connectors.toml`` (connectors.base); a receiving
connector is its provider's mailbox, so no reference mailbox runs for that provider.

Run files live in ``$DP2_HOME/run/<service>.json`` (pid, url); logs in
``$DP2_HOME/logs/<service>.log``.
"""

from __future__ import annotations

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brokers.runtime.kafka import ensure_topics, under_replicated
from brokers.runtime.settings import Settings
from brokers.security.pki import Pki
from brokers.stack.access import ADMIN_IDENTITY, acl_matrix, ensure_service_identities
from brokers.stack.access import apply as apply_acls
from brokers.stack.capture import smtp_port_of
from connectors.base import read_config
from schemas.errors import Dp2Error
from schemas.vocabulary import TOPICS, provider_topic

#: How long dp2 up waits for every service to answer /healthz (a busy 2-core machine
#: starting a dozen processes and three brokers needs more than a minute).
HEALTHY_WITHIN_S = 120.0
#: Offsets from DP2_PORT_BASE (default 8470); mailboxes follow the router.
PORT_OFFSETS = {"tracing": 0, "validator": 1, "router": 2}


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    port: int
    provider: str | None = None
    connector: str | None = None
    #: Environment of this service's process on top of dp2 up's own.
    env: tuple[tuple[str, str], ...] = ()
    #: What ``dp2 run`` runs, when the name is not it (a second instance: validator-2).
    kind: str | None = None

    @property
    def argv(self) -> list[str]:
        kind, extra = self.kind or self.name, []
        if self.provider:
            kind, extra = "mailbox", ["--provider", self.provider]
        elif self.connector:
            kind, extra = "connector", ["--name", self.connector]
        return [sys.executable, "-m", "brokers.cli", "run", kind, "--port", str(self.port), *extra]


def stack_services(
    providers: list[str],
    port_base: int,
    *,
    capture: bool = False,
    connectors: Sequence[tuple[str, int | None]] = (),
    notifier_env: Mapping[str, str] | None = None,
    instances: int = 1,
    shared_stores: bool = False,
) -> list[ServiceSpec]:
    """The services of ``dp2 up``: the core, a mailbox per provider, the notifier —
    with ``capture``, also the local SMTP and SMS capture it sends to — then every
    configured connector (on its own ``port`` from connectors.toml, or the next
    free one). ``notifier_env``: the notifier's environment when it sends to the
    capture (no digest window unless the caller's environment sets one).

    ``instances``: how many processes of each scalable service (validator, router,
    the mailboxes, the notifier) run in one consumer group, sharing their stores in
    DP2_HOME (SQLite, one writer at a time, across processes) — the second is
    ``validator-2``. Tracing is one on SQLite (its evidence log has one writer) and
    scales too with ``shared_stores`` (DP2_DATABASE_URL: every store in PostgreSQL)."""
    specs = [ServiceSpec(name, port_base + offset) for name, offset in PORT_OFFSETS.items()]
    specs += [ServiceSpec(f"mailbox-{p}", 0, provider=p) for p in providers]
    specs.append(ServiceSpec("notifier", 0))
    scalable = [s for s in specs if shared_stores or s.name != "tracing"]
    specs += [
        dataclasses.replace(s, name=f"{s.name}-{n}", port=0, kind=s.kind or s.name)
        for n in range(2, instances + 1)
        for s in scalable
    ]
    if capture:
        specs.append(ServiceSpec("capture", 0))
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
    if capture:
        capture_port = next(s.port for s in numbered if s.name == "capture")
        env = {
            "DP2_SMTP_HOST": "127.0.0.1",
            "DP2_SMTP_PORT": str(smtp_port_of(port_base)),
            "DP2_SMS_PROVIDERS": f"capture=http://127.0.0.1:{capture_port}/sms",
            **(notifier_env or {}),
        }
        numbered = [
            dataclasses.replace(s, env=tuple(env.items()))
            if (s.kind or s.name) == "notifier"
            else s
            for s in numbered
        ]
    return numbered


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
                # Each service chooses its own Kafka identity (brokers.stack.access).
                env={
                    **{k: v for k, v in os.environ.items() if k != "DP2_KAFKA_IDENTITY"},
                    "DP2_LOG_FORMAT": "json",
                    **dict(spec.env),
                },
            )
        (run_dir(settings) / f"{spec.name}.json").write_text(
            json.dumps(
                {"name": spec.name, "pid": process.pid, "url": f"http://127.0.0.1:{spec.port}"}
            )
        )
        say(f"{spec.name}: started pid {process.pid} on http://127.0.0.1:{spec.port}")
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    for spec in specs:
        while health(f"http://127.0.0.1:{spec.port}") not in ("up", "degraded"):
            if time.monotonic() > deadline:
                raise Dp2Error(
                    f"{spec.name} did not become healthy within {HEALTHY_WITHIN_S:.0f} s",
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
    """up, degraded (working but retrying: dp2 status says so), failing or down."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:  # noqa: S310
            if response.status != 200:
                return "failing"
            with contextlib.suppress(ValueError):
                if json.loads(response.read()).get("status") == "degraded":
                    return "degraded"
            return "up"
    except urllib.error.HTTPError:
        return "failing"
    except OSError:
        return "down"


async def prepare_topics(settings: Settings, providers: list[str]) -> list[str]:
    """Create DP2's topics and the providers' delivery topics (as the admin identity)."""
    specs = [*TOPICS, *(provider_topic(p) for p in providers)]
    return await ensure_topics(settings.kafka_as(ADMIN_IDENTITY), specs)


async def prepare_kafka(
    settings: Settings, providers: list[str], say: Callable[[str], None] = print
) -> tuple[list[str], int, int]:
    """Everything Kafka needs before the services start: DP2's service identities,
    the topics, and the ACLs that follow from the PKI and connectors.toml.

    Returns (topics created, ACLs added, ACLs removed). With DP2_KAFKA_TLS=0 (a
    cluster outside DP2's PKI) the ACLs are that cluster's operators' business.
    """
    pki = Pki(settings.pki_dir)
    ensure_service_identities(pki)
    created = await prepare_topics(settings, providers)
    for problem in await under_replicated(settings.kafka_as(ADMIN_IDENTITY)):
        say(f"warning: {problem}")
    if not settings.kafka_tls:
        return created, 0, 0
    wanted = acl_matrix(pki, read_config(settings))
    added, removed = await apply_acls(settings.kafka_as(ADMIN_IDENTITY), wanted)
    return created, added, removed


def providers_in_pki(settings: Settings) -> list[str]:
    root = settings.pki_dir / "providers"
    return sorted(p.stem for p in root.glob("*.pem")) if root.exists() else []

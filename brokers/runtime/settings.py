"""One frozen settings object per process, read once from the environment.

Every knob is an environment variable with the ``DP2_`` prefix, so the same
services run unchanged on a laptop, in CI and in Kubernetes. ``Settings.from_env``
fails fast with a :class:`ConfigError` that names the variable and says what a
valid value looks like, instead of letting a typo surface later as a timeout.

| variable | default | meaning |
|---|---|---|
| DP2_HOME | ``<checkout>/var`` | project-local state: Kafka data, stores, run files |
| DP2_KAFKA_BOOTSTRAP | ``127.0.0.1:<DP2_KAFKA_PORT>`` | an existing cluster to use |
| DP2_PORT_BASE | 8470 | HTTP ports of the services: tracing, validator, router, mailboxes… |
| DP2_KAFKA_PORT | 9092 | first broker port of the local Kafka (controller: +1) |
| DP2_KAFKA_HEAP_MB | 512 | heap per local Kafka node |
| DP2_KAFKA_LIBS | ``deploy/kafka/libs`` | where Maven copies the Kafka jars |
| DP2_SMTP_HOST / _PORT | unset / 25 | SMTP server for notification e-mail |
| DP2_SMTP_STARTTLS, _USER, _PASSWORD | off | SMTP security |
| DP2_SMS_PROVIDERS | unset | ``name=url,name=url``: SMS providers in order of preference |
| DP2_DIGEST_WINDOW_S | 300 | notifications of one recipient within this window become one |
| DP2_NOTIFY_CONCURRENCY | 1 | notifications in flight; a crash may repeat that many |
| DP2_QUIET_HOURS | unset | ``22-7``: SMS held during these hours |
| DP2_LOG_FORMAT | ``auto`` | ``json``, ``console`` or ``auto`` (console on a terminal) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import ConfigError

#: The checkout this package runs from; deploy/ and var/ are found relative to it.
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # brokers/runtime/settings.py


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigError(
            f"{name}={raw!r} is not a whole number from {low} to {high}",
            hint=f"Set {name} to a number in that range, or unset it to use {default}.",
        )
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """What a DP2 process needs to know about its surroundings."""

    home: Path
    kafka_port: int
    port_base: int
    kafka_bootstrap: str
    kafka_heap_mb: int
    kafka_libs: Path
    kafka_deploy_dir: Path
    log_format: str
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    sms_providers: tuple[tuple[str, str], ...] = ()
    digest_window_s: int = 300
    notify_concurrency: int = 1
    quiet_hours: tuple[int, int] | None = None

    @property
    def tracing_url(self) -> str:
        """Where ``dp2 up`` runs the traceability service (its first port)."""
        return f"http://127.0.0.1:{self.port_base}"

    @property
    def kafka_is_external(self) -> bool:
        """True when DP2_KAFKA_BOOTSTRAP points at a cluster we did not start."""
        return self.kafka_bootstrap != f"127.0.0.1:{self.kafka_port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("DP2_HOME") or PROJECT_ROOT / "var").resolve()
        port = _int(env, "DP2_KAFKA_PORT", 9092, 1024, 65000)
        heap = _int(env, "DP2_KAFKA_HEAP_MB", 512, 128, 16384)
        port_base = _int(env, "DP2_PORT_BASE", 8470, 1024, 65000)
        bootstrap = env.get("DP2_KAFKA_BOOTSTRAP") or f"127.0.0.1:{port}"
        for address in bootstrap.split(","):
            host, _, port_text = address.strip().rpartition(":")
            if not host or not port_text.isdigit():
                raise ConfigError(
                    f"DP2_KAFKA_BOOTSTRAP={bootstrap!r} is not a list of host:port",
                    hint="Write it as host:port[,host:port...], e.g. 127.0.0.1:9092.",
                )
        log_format = env.get("DP2_LOG_FORMAT", "auto")
        if log_format not in {"auto", "json", "console"}:
            raise ConfigError(
                f"DP2_LOG_FORMAT={log_format!r} is not a known log format",
                hint="Use json, console or auto.",
            )
        providers = []
        for item in filter(None, (env.get("DP2_SMS_PROVIDERS") or "").split(",")):
            name, _, url = item.partition("=")
            if not name or not url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"DP2_SMS_PROVIDERS entry {item!r} is not name=http(s)://url",
                    hint="Write it as a=http://127.0.0.1:9001/sms,b=https://sms.example/send.",
                )
            providers.append((name.strip(), url.strip()))
        quiet = env.get("DP2_QUIET_HOURS")
        quiet_hours = None
        if quiet:
            start, _, end = quiet.partition("-")
            if not (start.isdigit() and end.isdigit() and 0 <= int(start) < 24 > int(end)):
                raise ConfigError(
                    f"DP2_QUIET_HOURS={quiet!r} is not start-end hours",
                    hint="Write it as 22-7 (from 22:00 to 07:00), or unset it.",
                )
            quiet_hours = (int(start), int(end))
        deploy = PROJECT_ROOT / "deploy" / "kafka"
        return cls(
            home=home,
            kafka_port=port,
            port_base=port_base,
            kafka_bootstrap=bootstrap,
            kafka_heap_mb=heap,
            kafka_libs=Path(env.get("DP2_KAFKA_LIBS") or deploy / "libs").resolve(),
            kafka_deploy_dir=deploy,
            log_format=log_format,
            smtp_host=env.get("DP2_SMTP_HOST") or None,
            smtp_port=_int(env, "DP2_SMTP_PORT", 25, 1, 65535),
            smtp_starttls=env.get("DP2_SMTP_STARTTLS", "") in {"1", "true", "yes"},
            smtp_username=env.get("DP2_SMTP_USER") or None,
            smtp_password=env.get("DP2_SMTP_PASSWORD") or None,
            sms_providers=tuple(providers),
            digest_window_s=_int(env, "DP2_DIGEST_WINDOW_S", 300, 0, 86400),
            notify_concurrency=_int(env, "DP2_NOTIFY_CONCURRENCY", 1, 1, 256),
            quiet_hours=quiet_hours,
        )

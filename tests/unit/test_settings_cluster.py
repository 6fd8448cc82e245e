"""The cluster settings (issue 17): topology from DP2_*, the bind host of every service."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from brokers.runtime.host import ServiceHost
from brokers.runtime.settings import Settings, Topology
from schemas.errors import ConfigError


def test_the_topology_follows_the_cluster_unless_told() -> None:
    auto = Settings.from_env({}).topology
    assert (auto.replication_for(1), auto.replication_for(3), auto.replication_for(5)) == (1, 3, 3)
    assert (auto.min_insync_for(1), auto.min_insync_for(3)) == (1, 2)
    told = Topology.from_env({"DP2_REPLICATION": "2", "DP2_MIN_INSYNC_REPLICAS": "3"})
    assert told.replication_for(5) == 2 and told.min_insync_for(2) == 2, "ISR never above RF"
    assert Topology.from_env({"DP2_ACKS": "1"}).acks == "1"


@pytest.mark.parametrize(
    ("name", "value"),
    [("DP2_ACKS", "some"), ("DP2_REPLICATION", "٣"), ("DP2_BIND_HOST", "anywhere")],
)
def test_a_bad_cluster_setting_is_refused_with_its_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({name: value})
    assert name in refused.value.message and refused.value.hint


class _Idle:
    name = "idle"

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""

    def health(self) -> dict[str, str]:
        return {"status": "ok"}


async def test_a_service_bound_to_every_address_answers_its_probe() -> None:
    """DP2_BIND_HOST=0.0.0.0 (a container): /healthz answers; the URL stays usable."""
    host = ServiceHost.serve(_Idle(), CollectorRegistry(), host="0.0.0.0")  # noqa: S104
    async with host:
        assert host.url is not None and host.url.startswith("http://127.0.0.1:")
        assert await asyncio.to_thread(_status, f"{host.url}/healthz") == 200


def _status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - 127.0.0.1
        return int(answer.status)
